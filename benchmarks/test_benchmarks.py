"""The suite's cases under pytest-benchmark: one benchmark per case and peer (see conftest.py).

The timings are ``gmk bench``'s own (harness._timings_ms: on CUDA, CUDA events around each call with L2
flushed and the host queued ahead; on CPU, time.perf_counter around each call, after the same warm-up),
handed to pytest-benchmark by replaying them through its timer, so ``--benchmark-json``,
``--benchmark-compare`` and ``--benchmark-histogram`` show the figures gmk bench would. Under
``--benchmark-disable`` each peer runs once, as a test that it runs: a peer that raises fails, except one
that the case skips on purpose (PeerSkipped) and torch.compile of the reference (torch's compiler, not
this library: skipped with its error).
"""
from __future__ import annotations

import functools

import pytest
import torch

from .conftest import bench_settings
from .harness import COMPILED, PeerSkipped, _timings_ms, case_repeats, family_cases


@functools.lru_cache(maxsize=1)  # one family's inputs alive at a time
def _cases(family: str, device: str, quick: bool) -> dict:
    torch.manual_seed(0)
    return {case.name: case for case in family_cases(family, device, quick)}


class ReplayClock:
    """A pytest-benchmark timer that replays measured durations: each (start, end) pair of readings is
    one duration apart, so its statistics are those of the timings replayed."""

    __name__ = "gmk bench timer (replayed)"

    def __init__(self, durations_s: list[float]):
        self.durations, self.now, self.readings = list(durations_s), 0.0, 0

    def __call__(self) -> float:
        if self.readings % 2:
            self.now += self.durations[self.readings // 2]
        self.readings += 1
        return self.now


def replay(benchmark, times_ms: list[float]) -> None:
    """Records ``times_ms`` as the benchmark's rounds (pytest-benchmark reads its timer from ``_timer``)."""
    benchmark._timer = ReplayClock([t / 1e3 for t in times_ms])
    benchmark.pedantic(lambda: None, rounds=len(times_ms), iterations=1)


def _run_once(benchmark, fn, peer: str) -> None:
    """One call (pytest-benchmark's pedantic calls its target once when disabled)."""
    try:
        benchmark.pedantic(fn)
    except PeerSkipped as reason:
        pytest.skip(str(reason))
    except Exception as error:
        _skip_failed_compile(peer, error)


def _skip_failed_compile(peer: str, error: Exception) -> None:
    """torch.compile's failures are torch's (e.g. it cannot differentiate its compiled backward again):
    that peer is skipped, as gmk bench records it; the other peers must run."""
    if peer != COMPILED:
        raise error
    pytest.skip(f"torch.compile of the reference failed: {type(error).__name__}: {str(error)[:200]}")


def test_peer(benchmark, bench_peer, request):
    family, name, peer = bench_peer
    settings = bench_settings(request.config)
    case = _cases(family, settings["device"], settings["quick"])[name]
    benchmark.group = f"{family}: {name}"
    benchmark.extra_info.update({"family": family, "case": name, "peer": peer, "bytes": case.bytes,
                                 "flops": case.flops, "device": settings["device"]})
    fn = case.peers[peer]
    torch.compiler.reset()  # each peer compiles its own graphs, as in gmk bench
    if benchmark.disabled:
        _run_once(benchmark, fn, peer)
        return
    try:
        times_ms, launch_ms = _timings_ms(fn, settings["device"], case_repeats(case, settings["repeats"]))
    except PeerSkipped as reason:
        pytest.skip(str(reason))
    except Exception as error:
        _skip_failed_compile(peer, error)
    benchmark.extra_info["launch_ms"] = launch_ms if settings["device"] == "cuda" else None
    replay(benchmark, times_ms)
