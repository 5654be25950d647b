"""The benchmark harness: times every peer of every case, writes a JSON record and a markdown table.

A family is a module ``benchmarks/ops/<family>.py`` (an op family) or ``benchmarks/models/<model>.py``
(a whole model: training, generation) with ``cases(device, quick) -> list[Case]``; every module in those
folders is a family that ``gmk bench --ops`` can run. A case holds zero-argument
callables, its peers, all doing the same work on the same inputs; the harness warms each up (which
compiles what ``torch.compile`` has to compile), times it, and compares it with the case's baselines:
the eager reference and ``torch.compile`` of the reference.

Timing: on CUDA, device time from CUDA events around each call, L2 flushed before each (as in
``triton.testing.do_bench``), with the host queueing calls ahead of the device so that launch overhead
is reported apart (``launch_ms``) rather than mixed into the device time; on CPU ``time.perf_counter``
around each call. Achieved bandwidth is set against a device-to-device ``copy_`` timed the same way in
the same run. Only GPU figures are performance; the CPU run exercises the suite.

What a reader gets (``report.py``): a summary line per case first, then the full table with a legend and
warnings where a figure is not to be trusted; plots beside the record (``plots.py``); the record's rows
appended to a long CSV (``report.CSV_NAME``). ``--list`` names the cases, ``--compare OLD NEW`` sets two
records side by side (``compare.py``), ``--static`` reports the kernels' resources (``static.py``).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import json
import os
import pkgutil
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import gmkernels

from . import models as model_families
from . import ops as op_families
from . import report
from .report import COMPILED, EAGER

DIRECTIONS = ("forward", "forward+backward")
DEFAULT_REPEATS = {"cpu": 20, "cuda": 100}
COPY_MIB = {"cpu": 64, "cuda": 1024}  # size of the tensor copied to measure the copy bandwidth
WARMUP_CALLS = 10  # after the first call, which compiles
L2_FLUSH_BYTES = 256 * 2**20  # more than any GPU's L2 cache; written before every timed call
SLEEP_CYCLES_PER_MS = 2_000_000  # a ~2 GHz SM clock, to size the GPU sleep that precedes timed calls
CUDA_EVENT_RESOLUTION_MS = 0.5e-3  # "a resolution of around 0.5 microseconds" (CUDA runtime API)
TIME_SLICES_MS = (16, 10, 8, 4)  # scheduler quanta that a waiting process's calls come to last
TIME_SLICE_SHARE = 0.6  # this share of calls within TIME_SLICE_TOLERANCE of a multiple: flagged
TIME_SLICE_TOLERANCE = 0.03


@dataclass
class Case:
    """One op, shape, dtype and direction, and the peers timed on it.

    ``bytes`` is counted by hand: every input read once and every output written once, for the
    direction timed; ``flops``, where the op does arithmetic worth counting, likewise (reported as
    TFLOP/s). ``peers`` maps a name (``gmk:<backend>``, ``reference``, ...) to a zero-argument
    callable doing the work. ``baseline`` (``compiled_baseline``) names the eager (compiled) peer that
    speedups are against, or a tuple of such peers (the same work in different layouts, say), of
    which the fastest counts.
    """

    name: str
    family: str
    params: dict
    bytes: int
    peers: dict[str, Callable[[], object]]
    flops: int | None = None
    baseline: str | tuple[str, ...] = EAGER
    compiled_baseline: str | tuple[str, ...] = COMPILED
    # Generation cases: audio samples produced per call over all ``streams`` (the batch), reported as
    # µs per sample of one stream, aggregate samples/s, and real-time factors at ``sample_rates`` (Hz).
    samples: int | None = None
    streams: int = 1
    sample_rates: tuple[int, ...] = ()
    repeats: int | None = None  # at most this many timed calls (cases whose eager peer takes seconds)


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


class PeerSkipped(Exception):
    """Raised by a peer that is listed in the record but deliberately not timed."""


def skipped_peer(reason: str) -> Callable:
    def skip(*args, **kwargs):
        raise PeerSkipped(reason)
    return skip


def gmk_peers(op: Callable, device: str, **kwargs) -> dict[str, Callable]:
    """``op`` on every gmk backend that runs on ``device``, named ``gmk:<backend>``.

    The ``reference`` backend is left out: it is timed as the eager baseline.
    """
    peers = {}
    for backend in gmkernels.available_backends(device):
        if backend == "triton" and device == "cpu":
            peers["gmk:triton"] = skipped_peer("on CPU Triton runs in its interpreter: for tests, not timing")
        elif backend != "reference":
            peers[f"gmk:{backend}"] = functools.partial(op, backend=backend, **kwargs)
    return peers


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


def _host_times_ms(fn: Callable, calls: int) -> list[float]:
    """Host time of each of ``calls`` calls: the time to launch it on CUDA, to run it on CPU."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _warm_up(fn: Callable, device: str) -> float:
    """Calls ``fn`` once (compiling what needs compiling), then a few times; returns the median host ms."""
    fn()
    _synchronize(device)
    host_ms = statistics.median(_host_times_ms(fn, WARMUP_CALLS))
    _synchronize(device)
    return host_ms


def _cuda_timings_ms(fn: Callable, repeats: int, launch_ms: float) -> list[float]:
    """CUDA events around each call, L2 flushed before each one (as triton.testing.do_bench does).

    A GPU sleep queued first keeps the device busy while the host queues the timed calls, so
    that launch overhead is not timed as device time: do_bench alone times the host whenever it
    is slower than the kernels (measured on an H100: torch.compile forward+backward of the gated
    reference, 0.26 ms on the device, timed at 0.55-0.70 ms by do_bench).
    """
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    events = [[torch.cuda.Event(enable_timing=True) for _ in range(2)] for _ in range(repeats)]
    torch.cuda._sleep(int(2 * repeats * launch_ms * SLEEP_CYCLES_PER_MS))
    for start, end in events:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def _timings_ms(fn: Callable, device: str, repeats: int) -> tuple[list[float], float]:
    """Warms ``fn`` up and times ``repeats`` calls; returns their times in ms and the host ms per call."""
    host_ms = _warm_up(fn, device)
    if device == "cuda":
        return _cuda_timings_ms(fn, repeats, host_ms), host_ms
    return _host_times_ms(fn, repeats), host_ms


def timer_resolution_ms(device: str) -> float:
    """The smallest step the timer shows: CUDA's documented event resolution; on CPU the smallest
    non-zero difference of two consecutive ``time.perf_counter`` readings."""
    if device == "cuda":
        return CUDA_EVENT_RESOLUTION_MS
    steps = []
    for _ in range(1000):
        first = time.perf_counter()
        second = time.perf_counter()
        if second > first:
            steps.append(second - first)
    return 1e3 * min(steps, default=time.get_clock_info("perf_counter").resolution)


def time_slice_ms(times_ms: list[float]) -> float | None:
    """The scheduler quantum that most calls last a whole multiple of, or None.

    On a machine with more runnable threads than cores a call's time is set by the time slices it waits
    for, not by its work: a busy 2-core machine gave medians of exactly 8, 16 and 24 ms.
    """
    for quantum in TIME_SLICES_MS:
        on_slices = [t for t in times_ms
                     if t >= quantum * (1 - TIME_SLICE_TOLERANCE)
                     and abs(t - quantum * round(t / quantum)) <= TIME_SLICE_TOLERANCE * quantum]
        if times_ms and len(on_slices) >= TIME_SLICE_SHARE * len(times_ms):
            return quantum
    return None


def load_1min() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
    median_ms = _summary(_timings_ms(copy, device, repeats)[0])["median_ms"]
    return 2 * source.nbytes / (median_ms * 1e6)


# --- running -----------------------------------------------------------------------------------


def _error_line(error: Exception) -> str:
    message = str(error).strip()
    return f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"


def _run_peer(name: str, fn: Callable, case: Case, device: str, repeats: int, copy_gbps: float) -> dict:
    """Times one peer; a peer that raises is recorded as skipped, with the error."""
    try:
        times_ms, host_ms = _timings_ms(fn, device, repeats)
        stats = _summary(times_ms)
        peak_mib = _peak_mib(fn, device)
    except Exception as error:  # a backend that cannot run here, a compile failure, out of memory, ...
        if device == "cuda":
            torch.cuda.empty_cache()
        return {"peer": name, "status": "skipped", "reason": _error_line(error)}
    gbps = case.bytes / (stats["median_ms"] * 1e6)
    tflops = case.flops / (stats["median_ms"] * 1e9) if case.flops else None
    quantum = time_slice_ms(times_ms) if device == "cpu" else None
    return {"peer": name, "status": "ok", **stats, "quantum_ms": quantum, "gbps": gbps, "fraction_of_copy_bandwidth": gbps / copy_gbps,
            "tflops": tflops, "peak_mib": peak_mib, "launch_ms": host_ms if device == "cuda" else None,
            **_generation_rates(case, stats["median_ms"])}


def _generation_rates(case: Case, median_ms: float) -> dict:
    """µs per sample of one stream, aggregate samples/s, and real-time factors of a generation case."""
    if not case.samples:
        return {}
    per_stream = case.samples / case.streams
    seconds = median_ms / 1e3
    return {"us_per_sample": 1e6 * seconds / per_stream, "samples_per_s": case.samples / seconds,
            "realtime_factor": {str(rate): per_stream / seconds / rate for rate in case.sample_rates}}


def _fastest(by_peer: dict, names: str | tuple[str, ...]) -> dict | None:
    """The fastest of the peers ``names`` that ran, or None."""
    ran = [by_peer[name] for name in ((names,) if isinstance(names, str) else names)
           if name in by_peer and by_peer[name]["status"] == "ok"]
    return min(ran, key=lambda result: result["median_ms"], default=None)


def _speedup(baseline: dict | None, result: dict) -> float | None:
    if baseline is None:
        return None
    return baseline["median_ms"] / result["median_ms"]


def case_repeats(case: Case, repeats: int) -> int:
    return min(repeats, case.repeats) if case.repeats else repeats


def run_case(case: Case, device: str, repeats: int, copy_gbps: float, log: Callable[[str], None] | None = None
             ) -> dict:
    """Times every peer of ``case``; ``log`` gets a line per peer (default: stderr)."""
    log = log or functools.partial(print, file=sys.stderr)
    torch.compiler.reset()  # each case compiles its own graphs: no recompile limit, no dynamic shapes
    repeats = case_repeats(case, repeats)
    loads = [load_1min()]
    results = []
    for name, fn in case.peers.items():
        result = _run_peer(name, fn, case, device, repeats, copy_gbps)
        outcome = f"{result['median_ms']:.4g} ms" if result["status"] == "ok" else result["reason"]
        log(f"{case.name} · {name}: {outcome}")
        results.append(result)
    loads.append(load_1min())
    by_peer = {result["peer"]: result for result in results}
    baseline, compiled_baseline = _fastest(by_peer, case.baseline), _fastest(by_peer, case.compiled_baseline)
    for result in results:
        if result["status"] == "ok":
            result["speedup_vs_eager"] = _speedup(baseline, result)
            result["speedup_vs_compiled"] = _speedup(compiled_baseline, result)
    known_loads = [load for load in loads if load is not None]
    return {"name": case.name, "family": case.family, "params": case.params, "bytes": case.bytes,
            "flops": case.flops, "baseline": case.baseline, "compiled_baseline": case.compiled_baseline,
            "samples": case.samples, "streams": case.streams,
            "load_1min": max(known_loads) if known_loads else None, "results": results}


def _family_modules() -> dict[str, str]:
    """Each family's module: benchmarks/ops/<family>.py and benchmarks/models/<model>.py."""
    return {module.name: f"{package.__name__}.{module.name}" for package in (op_families, model_families)
            for module in pkgutil.iter_modules(package.__path__)}


def family_names() -> list[str]:
    return sorted(_family_modules())


def family_cases(family: str, device: str, quick: bool) -> list[Case]:
    """The cases of one family (their inputs built on ``device``)."""
    return importlib.import_module(_family_modules()[family]).cases(device, quick)


def run_family(family: str, device: str, quick: bool, repeats: int, copy_gbps: float,
               progress=None) -> list[dict]:
    """Runs one family's cases; ``progress`` (a tqdm bar) advances by one per case."""
    log = functools.partial(progress.write, file=sys.stderr) if progress is not None else None
    results = []
    for case in family_cases(family, device, quick):
        if progress is not None:
            progress.set_postfix_str(case.name[:60])
        results.append(run_case(case, device, repeats, copy_gbps, log))
        if progress is not None:
            progress.update()
    return results


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


def _measured_package() -> Path:
    """The folder of the gmkernels package being timed (its checkout, not necessarily this harness's)."""
    return Path(gmkernels.__file__).parent


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(_measured_package()), *args],
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


def _commit() -> str | None:
    """The commit of the checkout holding the timed package; None when it is not tracked (an installed copy)."""
    tracked = _git("ls-files", "--error-unmatch", "__init__.py") is not None
    return _git("rev-parse", "HEAD") if tracked else None


def environment(device: str, copy_gbps: float) -> dict:
    commit = _commit()
    dirty = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": _device_name(device),
        # A copy without .git (a GPU machine's) can be told its commit through $GMK_GIT_COMMIT.
        "git_commit": commit or os.environ.get("GMK_GIT_COMMIT", "unknown"),
        "git_dirty": dirty,
        "versions": _versions(),
        "build_info": _build_info(),
        "copy_bandwidth_gbps": copy_gbps,
        "copy_mib": COPY_MIB[device],
        "cpu_count": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "load_1min": load_1min(),
        "timer_resolution_ms": timer_resolution_ms(device),
        "timer": ("CUDA events around each call, L2 flushed, host queued ahead" if device == "cuda"
                  else "time.perf_counter around each call"),
    }


# --- output ------------------------------------------------------------------------------------


def markdown_table(record: dict, plots: list[Path] = ()) -> str:
    """The record for a reader: the summary first, then the full table and its legend (report.py)."""
    return report.markdown(record, plots)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def record_stem(record: dict) -> str:
    env = record["environment"]
    timestamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{env['device']}-{_slug(env['device_name'])}-{env['git_commit'][:7]}-{timestamp}"


def write_record(record: dict, out_dir: Path, with_plots: bool = True) -> Path:
    """Writes ``<device>-<device name>-<commit>-<timestamp>.json``, its plots (``<stem>-*.png``, when
    matplotlib is installed) and the markdown next to it (``.md``); appends the rows to the long CSV."""
    stem = record_stem(record)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    plot_paths = []
    if with_plots:
        from . import plots
        plot_paths = plots.write_plots(record, out_dir, stem)
    json_path.with_suffix(".md").write_text(markdown_table(record, plot_paths))
    report.append_csv(record, out_dir / report.CSV_NAME)
    return json_path


def default_out_dir() -> Path:
    results = Path(__file__).resolve().parent / "results"
    writable = os.access(results if results.exists() else results.parent, os.W_OK)
    return results if writable else Path.cwd()


def _progress_bar(total: int):
    """A tqdm bar over the cases on stderr; None without tqdm (then a line per peer is printed)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True, desc="gmk bench")


def list_cases(families: list[str], device: str, quick: bool) -> list[tuple[str, str, list[str]]]:
    """(family, case, peers) of every case, without timing anything."""
    return [(family, case.name, list(case.peers)) for family in families
            for case in family_cases(family, device, quick)]


# --- command line ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _threshold(text: str) -> float:
    """``5%`` or ``0.05`` as a fraction."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r} (e.g. 5%)") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0: {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="gmk bench", description="Time gmkernels ops against their peers.")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", type=lambda text: text.split(","), default=family_names(),
                        help=f"comma-separated op families (default: all of {','.join(family_names())})")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller cases")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the JSON record, table, plots and the long CSV "
                             f"{report.CSV_NAME} (default: benchmarks/results, else .)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per peer (default: {cpu} on CPU, {cuda} on CUDA)".format(**DEFAULT_REPEATS))
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="write no PNG plots")
    parser.add_argument("--list", action="store_true", help="print the cases and their peers; time nothing")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD.json", "NEW.json"),
                        help="compare two records case by case; time nothing")
    parser.add_argument("--fail-above", type=_threshold, default=None, metavar="PERCENT",
                        help="with --compare: exit 1 when a gmk peer of a case is slower by more than this "
                             "(e.g. 5%%)")
    parser.add_argument("--static", action="store_true",
                        help="registers, spills, shared memory and sm_90 occupancy of every CUDA kernel in the "
                             "built _C and every Triton kernel the sm_90 compile check compiled; time nothing")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.ops) - set(family_names()))
    if unknown:
        parser.error(f"unknown op families {unknown}; known: {family_names()}")
    if args.fail_above is not None and args.compare is None:
        parser.error("--fail-above needs --compare OLD.json NEW.json")
    if args.device == "cuda" and not torch.cuda.is_available() and not (args.compare or args.static):
        parser.error("--device cuda: CUDA is not available here")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _print_list(args: argparse.Namespace) -> int:
    rows = list_cases(args.ops, args.device, args.quick)
    for family, name, peers in rows:
        print(f"{family:<18} {name}  [{', '.join(peers)}]")
    print(f"{len(rows)} cases, {sum(len(peers) for _, _, peers in rows)} peers "
          f"({args.device}{', quick' if args.quick else ''})")
    return 0


def run(args: argparse.Namespace) -> dict:
    """Times every case of ``args.ops`` and returns the record."""
    repeats = args.repeats or DEFAULT_REPEATS[args.device]
    torch.manual_seed(0)
    total = sum(len(family_cases(family, args.device, args.quick)) for family in args.ops)
    torch.manual_seed(0)
    copy_gbps = measure_copy_gbps(args.device, repeats)
    record = {"schema": 2, "environment": environment(args.device, copy_gbps),
              "settings": {"ops": args.ops, "quick": args.quick, "repeats": repeats}, "cases": []}
    env = record["environment"]
    if env["load_1min"] is not None and env["load_1min"] > env["cpu_count"]:
        print(f"gmk bench: warning: load {env['load_1min']:.1f} on {env['cpu_count']} cores: other processes take "
              "the cores; the timings will carry warnings", file=sys.stderr)
    bar = _progress_bar(total)
    try:
        for family in args.ops:
            record["cases"] += run_family(family, args.device, args.quick, repeats, copy_gbps, bar)
    finally:
        if bar is not None:
            bar.close()
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare:
        from . import compare
        return compare.main(*args.compare, args.fail_above)
    if args.static:
        from . import static
        return static.main()
    if args.list:
        return _print_list(args)
    record = run(args)
    json_path = write_record(record, args.out or default_out_dir(), with_plots=args.plots)
    print(json_path.with_suffix(".md").read_text())
    print(f"wrote {json_path}, {json_path.with_suffix('.md').name}, its plots, and appended to "
          f"{json_path.parent / report.CSV_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
