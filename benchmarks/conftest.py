"""pytest-benchmark over the suite's cases: ``python -m pytest benchmarks --benchmark-only``.

One test per case and peer, parametrised from every family's ``cases(device, quick)`` (see
test_benchmarks.py). Options: ``--bench-device`` (default: cuda when available, else cpu), ``--bench-ops``
(comma-separated families, default all), ``--bench-full`` (the full sizes on CPU; CPU runs the quick
cases by default, CUDA the full ones) and ``--bench-repeats`` (timed calls per peer).
"""
from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    group = parser.getgroup("gmk bench", "gmkernels benchmark cases")
    group.addoption("--bench-device", choices=("cpu", "cuda"), default=None,
                    help="device of the cases (default: cuda when available, else cpu)")
    group.addoption("--bench-ops", default=None, help="comma-separated families (default: all)")
    group.addoption("--bench-full", action="store_true",
                    help="full sizes on CPU too (default there: --quick)")
    group.addoption("--bench-repeats", type=int, default=None,
                    help="timed calls per peer (default: gmk bench's, 20 on CPU, 100 on CUDA)")


def bench_settings(config) -> dict:
    from .harness import DEFAULT_REPEATS, family_names

    device = config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    ops = config.getoption("--bench-ops")
    families = ops.split(",") if ops else family_names()
    unknown = sorted(set(families) - set(family_names()))
    if unknown:
        raise pytest.UsageError(f"--bench-ops: unknown families {unknown}; known: {family_names()}")
    if device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda: CUDA is not available here")
    return {"device": device, "families": families,
            "quick": device == "cpu" and not config.getoption("--bench-full"),
            "repeats": config.getoption("--bench-repeats") or DEFAULT_REPEATS[device]}


def pytest_generate_tests(metafunc):
    if "bench_peer" not in metafunc.fixturenames:
        return
    from .harness import list_cases

    settings = bench_settings(metafunc.config)
    torch.manual_seed(0)
    peers = [(family, name, peer) for family, name, peer_names in
             list_cases(settings["families"], settings["device"], settings["quick"]) for peer in peer_names]
    ids = [_ascii(f"{family}/{name}/{peer}") for family, name, peer in peers]
    metafunc.parametrize("bench_peer", peers, ids=ids)


def _ascii(text: str) -> str:
    """Test ids in ASCII (pytest escapes the rest): 8×12 -> 8x12."""
    return text.replace("×", "x").encode("ascii", "replace").decode()
