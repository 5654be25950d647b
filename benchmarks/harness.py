"""The benchmark harness: times every peer of every case, writes a JSON record and a markdown table.

An op family is a module ``benchmarks/ops/<family>.py`` with ``cases(device, quick) -> list[Case]``;
every module in that folder is a family that ``gmk bench --ops`` can run. A case holds zero-argument
callables, its peers, all doing the same work on the same inputs; the harness warms each up (which
compiles what ``torch.compile`` has to compile), times it, and compares it with the case's baselines:
the eager reference and ``torch.compile`` of the reference.

Timing: on CUDA ``triton.testing.do_bench`` (CUDA events, L2 flushed before every call); on CPU
``time.perf_counter`` around each call. Achieved bandwidth is set against a device-to-device ``copy_``
timed the same way in the same run. Only GPU figures are performance; the CPU run exercises the suite.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import json
import math
import os
import pkgutil
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import gmkernels

from . import ops as families

EAGER = "reference"
COMPILED = "torch.compile(reference)"
DIRECTIONS = ("forward", "forward+backward")
DEFAULT_REPEATS = {"cpu": 20, "cuda": 100}
COPY_MIB = {"cpu": 64, "cuda": 1024}  # size of the tensor copied to measure the copy bandwidth
WARMUP_CALLS = 3  # after the first call, which compiles


@dataclass
class Case:
    """One op, shape, dtype and direction, and the peers timed on it.

    ``bytes`` is counted by hand: every input read once and every output written once, for the
    direction timed. ``peers`` maps a name (``gmk:<backend>``, ``reference``, ...) to a zero-argument
    callable doing the work.
    """

    name: str
    family: str
    params: dict
    bytes: int
    peers: dict[str, Callable[[], object]]
    flops: int | None = None
    baseline: str = EAGER
    compiled_baseline: str = COMPILED


# --- helpers for the op families ---------------------------------------------------------------


def nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.nbytes for t in tensors if t is not None)


def elementwise_bytes(direction: str, read: int, written: int) -> int:
    """Bytes moved by an op whose backward recomputes from its inputs.

    Forward reads the inputs (``read`` bytes) and writes the outputs (``written``); backward reads
    the output gradients and the inputs again, and writes one gradient per input.
    """
    forward = read + written
    return forward if direction == "forward" else forward + written + read + read


def reference_peers(reference: Callable) -> dict[str, Callable]:
    """The two baselines of every case: the eager reference and its ``torch.compile``."""
    return {EAGER: reference, COMPILED: torch.compile(reference, dynamic=False)}


def gmk_peers(op: Callable, device: str, **kwargs) -> dict[str, Callable]:
    """``op`` on every gmk backend that runs on ``device``, named ``gmk:<backend>``.

    The ``reference`` backend is left out: it is timed as the eager baseline.
    """
    return {f"gmk:{backend}": functools.partial(op, backend=backend, **kwargs)
            for backend in gmkernels.available_backends(device) if backend != "reference"}


def direction_call(fn: Callable, inputs: tuple[torch.Tensor, ...], direction: str,
                   grad_output: torch.Tensor | None = None) -> Callable[[], object]:
    """The zero-argument call timed for ``direction``.

    ``forward``: ``fn(*inputs)`` under ``no_grad``. ``forward+backward``: ``fn(*inputs)``, then the
    gradient of every input for ``grad_output`` (``autograd.grad``: no ``.grad`` accumulates between
    calls). The inputs must require grad for the latter.
    """
    if direction == "forward":
        def forward():
            with torch.no_grad():
                return fn(*inputs)
        return forward

    def forward_backward():
        return torch.autograd.grad(fn(*inputs), inputs, grad_output)
    return forward_backward


# --- timing ------------------------------------------------------------------------------------


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _warm_up(fn: Callable, device: str) -> float:
    """Calls ``fn`` once (compiling what needs compiling), then a few times; returns ms per call."""
    fn()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(WARMUP_CALLS):
        fn()
    _synchronize(device)
    return (time.perf_counter() - start) * 1e3 / WARMUP_CALLS


def _timings_ms(fn: Callable, device: str, repeats: int) -> list[float]:
    """Warms ``fn`` up, then times about ``repeats`` calls; returns the time of every call in ms."""
    ms_per_call = _warm_up(fn, device)
    if device == "cuda":
        from triton.testing import do_bench

        # do_bench repeats for a time budget: ask for the budget of `repeats` calls.
        return do_bench(fn, rep=math.ceil(repeats * ms_per_call), return_mode="all")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _summary(times_ms: list[float]) -> dict:
    times = torch.tensor(times_ms, dtype=torch.float64)
    p20, median, p80 = times.quantile(torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)).tolist()
    return {"median_ms": median, "p20_ms": p20, "p80_ms": p80, "min_ms": times.min().item(),
            "max_ms": times.max().item(), "timed_calls": len(times_ms)}


def _peak_mib(fn: Callable, device: str) -> float | None:
    """Memory one call allocates at its peak, above what was allocated before it (CUDA only)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def measure_copy_gbps(device: str, repeats: int) -> float:
    """Bandwidth of a large device-to-device ``copy_``, timed like the peers; bytes = read + written."""
    source = torch.randn(COPY_MIB[device] * 2**18, device=device)  # float32: 2**18 elements per MiB
    target = torch.empty_like(source)
    copy = functools.partial(target.copy_, source)
    median_ms = _summary(_timings_ms(copy, device, repeats))["median_ms"]
    return 2 * source.nbytes / (median_ms * 1e6)


# --- running -----------------------------------------------------------------------------------


def _error_line(error: Exception) -> str:
    message = str(error).strip()
    return f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"


def _run_peer(name: str, fn: Callable, case: Case, device: str, repeats: int, copy_gbps: float) -> dict:
    """Times one peer; a peer that raises is recorded as skipped, with the error."""
    try:
        stats = _summary(_timings_ms(fn, device, repeats))
        peak_mib = _peak_mib(fn, device)
    except Exception as error:  # a backend that cannot run here, a compile failure, out of memory, ...
        if device == "cuda":
            torch.cuda.empty_cache()
        return {"peer": name, "status": "skipped", "reason": _error_line(error)}
    gbps = case.bytes / (stats["median_ms"] * 1e6)
    return {"peer": name, "status": "ok", **stats, "gbps": gbps, "fraction_of_copy_bandwidth": gbps / copy_gbps,
            "peak_mib": peak_mib}


def _speedup(baseline: dict | None, result: dict) -> float | None:
    if baseline is None or baseline["status"] != "ok":
        return None
    return baseline["median_ms"] / result["median_ms"]


def run_case(case: Case, device: str, repeats: int, copy_gbps: float) -> dict:
    torch.compiler.reset()  # each case compiles its own graphs: no recompile limit, no dynamic shapes
    results = []
    for name, fn in case.peers.items():
        result = _run_peer(name, fn, case, device, repeats, copy_gbps)
        outcome = f"{result['median_ms']:.4g} ms" if result["status"] == "ok" else f"skipped: {result['reason']}"
        print(f"{case.name} · {name}: {outcome}", file=sys.stderr)
        results.append(result)
    by_peer = {result["peer"]: result for result in results}
    for result in results:
        if result["status"] == "ok":
            result["speedup_vs_eager"] = _speedup(by_peer.get(case.baseline), result)
            result["speedup_vs_compiled"] = _speedup(by_peer.get(case.compiled_baseline), result)
    return {"name": case.name, "family": case.family, "params": case.params, "bytes": case.bytes,
            "flops": case.flops, "baseline": case.baseline, "compiled_baseline": case.compiled_baseline,
            "results": results}


def family_names() -> list[str]:
    return sorted(module.name for module in pkgutil.iter_modules(families.__path__))


def run_family(family: str, device: str, quick: bool, repeats: int, copy_gbps: float) -> list[dict]:
    module = importlib.import_module(f"{families.__name__}.{family}")
    return [run_case(case, device, repeats, copy_gbps) for case in module.cases(device, quick)]


# --- environment -------------------------------------------------------------------------------


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(Path(__file__).parent), *args],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _versions() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"gmkernels": gmkernels.__version__, "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "python": platform.python_version()}


def _build_info() -> dict | None:
    try:
        return gmkernels.build_info()
    except Exception:  # the extension is not built
        return None


def environment(device: str, copy_gbps: float) -> dict:
    commit = _git("rev-parse", "HEAD") or "unknown"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": _device_name(device),
        "git_commit": commit,
        "git_dirty": None if commit == "unknown" else bool(_git("status", "--porcelain", "--untracked-files=no")),
        "versions": _versions(),
        "build_info": _build_info(),
        "copy_bandwidth_gbps": copy_gbps,
        "copy_mib": COPY_MIB[device],
        "timer": ("triton.testing.do_bench: CUDA events, L2 flushed before each call" if device == "cuda"
                  else "time.perf_counter around each call"),
    }


# --- output ------------------------------------------------------------------------------------


def _cell(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _row(case: dict, result: dict) -> str:
    if result["status"] != "ok":
        reason = result["reason"][:100].replace("|", "\\|")
        return f"| {case['name']} | {result['peer']} | skipped: {reason} | | | | | |"
    cells = [_cell(result["median_ms"], ".4g"), _cell(result["gbps"], ".1f"),
             _cell(100 * result["fraction_of_copy_bandwidth"], ".0f"), _cell(result["speedup_vs_eager"], ".2f"),
             _cell(result["speedup_vs_compiled"], ".2f"), _cell(result["peak_mib"], ".1f")]
    return f"| {case['name']} | {result['peer']} | " + " | ".join(cells) + " |"


def markdown_table(record: dict) -> str:
    env, versions = record["environment"], record["environment"]["versions"]
    commit = env["git_commit"][:12] + (" (uncommitted changes)" if env["git_dirty"] else "")
    lines = [
        f"# gmk bench: {env['device']}, {env['device_name']}",
        "",
        f"{env['date']} · commit {commit} · gmkernels {versions['gmkernels']} · torch {versions['torch']}"
        f" · triton {versions['triton']} · CUDA {versions['cuda']}",
        f"copy bandwidth {env['copy_bandwidth_gbps']:.1f} GB/s · {env['timer']}",
        "",
        "| case | peer | median ms | GB/s | % copy BW | × eager | × compile | peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_row(case, result) for case in record["cases"] for result in case["results"]]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_record(record: dict, out_dir: Path) -> Path:
    """Writes ``<device>-<device name>-<commit>-<timestamp>.json`` and the table next to it (``.md``)."""
    env = record["environment"]
    timestamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem = f"{env['device']}-{_slug(env['device_name'])}-{env['git_commit'][:7]}-{timestamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(markdown_table(record))
    return json_path


def default_out_dir() -> Path:
    results = Path(__file__).resolve().parent / "results"
    writable = os.access(results if results.exists() else results.parent, os.W_OK)
    return results if writable else Path.cwd()


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gmk bench", description="Time gmkernels ops against their peers.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", type=lambda text: text.split(","), default=family_names(),
                        help=f"comma-separated op families (default: all of {','.join(family_names())})")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller cases")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the JSON record and table (default: benchmarks/results, else .)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed calls per peer (default: {DEFAULT_REPEATS})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.ops) - set(family_names()))
    if unknown:
        parser.error(f"unknown op families {unknown}; known: {family_names()}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repeats = args.repeats or DEFAULT_REPEATS[args.device]
    torch.manual_seed(0)
    copy_gbps = measure_copy_gbps(args.device, repeats)
    cases = [case for family in args.ops for case in run_family(family, args.device, args.quick, repeats, copy_gbps)]
    record = {
        "schema": 1,
        "environment": environment(args.device, copy_gbps),
        "settings": {"ops": args.ops, "quick": args.quick, "repeats": repeats},
        "cases": cases,
    }
    json_path = write_record(record, args.out or default_out_dir())
    print(markdown_table(record))
    print(f"wrote {json_path} and {json_path.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
