"""What a record says, for a reader: the summary, the legend, the full table, the warnings, the long CSV.

A record (``harness.main``) holds per case the timings of every peer; this module turns it into text.
The warnings say when a figure is not to be trusted, from what the record holds:

- the spread: p20–p80 wider than ``SPREAD_LIMIT`` of the median;
- the machine's load: the 1-minute load average, at the case's start or end, above the cores this
  process may use (other processes took cores from the timed calls);
- the timer: a median under ``RESOLUTION_FACTOR`` times the timer's resolution;
- time slices: most calls lasting a whole multiple of a scheduler quantum (4, 8, 10 ms, ...), the sign
  of a process that waited for a core rather than computed (a busy 2-core machine gave medians of
  exactly 8, 16 and 24 ms);
- above copy bandwidth: more bytes per second than the same run's large copy, which only data held in
  a cache (small CPU cases) or a mistimed call gives; the table then shows ">100".

A ratio (× eager, × compile, × peer) carries the warnings of both of its timings.
"""
from __future__ import annotations

import csv
from pathlib import Path

EAGER = "reference"
COMPILED = "torch.compile(reference)"
GMK_PREFIX = "gmk:"
SPREAD_LIMIT = 0.25  # (p80 - p20) / median above which a timing is flagged
RESOLUTION_FACTOR = 100  # a median under this many timer ticks is flagged
WARNING_MARK = "⚠"
CSV_NAME = "all_benchmark_data.csv"
CSV_FIELDS = ("kernel", "case", "provider", "mode", "metric", "unit", "x", "p20", "p50", "p80",
              "device", "gpu", "commit", "version", "torch", "date")
CPU_NOTE = ("On CPU these figures exercise the suite (every case and peer runs and is timed); they are not "
            "the library's performance, which is its GPU kernels' (GPU figures: only from a CUDA run).")

LEGEND = (
    ("case", "the op or model, the shape, dtype and direction timed"),
    ("peer", "who does the work: gmk:<backend> is this library; reference is the eager PyTorch of the same "
             "math; torch.compile(reference) its compiled form; other names are named external peers"),
    ("median ms", "median time of one call over the timed calls (CUDA: device time from CUDA events, L2 "
                  "flushed before each call; CPU: time.perf_counter around each call)"),
    ("p20–p80", "the 20th and 80th percentiles of the same calls: the spread of the median"),
    ("GB/s", "bytes the work must move (counted by hand: inputs read once, outputs written once) per second"),
    ("% copy BW", "GB/s over the bandwidth of a large device-to-device copy timed in the same run; "
                  "'>100' (with a warning) only comes from data held in a cache or a mistimed call"),
    ("TFLOP/s", "floating-point operations counted by hand, per second (cases that count them)"),
    ("× eager", "the eager baseline's median over this peer's: above 1, this peer is faster"),
    ("× compile", "the same against torch.compile of the reference (or the case's compiled baseline)"),
    ("peak MiB", "memory one call allocates at its peak (CUDA only)"),
    ("launch ms", "host time to queue one call (CUDA only): the launch overhead kept out of the device time"),
    ("µs/sample", "generation cases: µs per generated sample of one stream"),
    ("× real time", "generation cases: samples per second of one stream over the sample rate"),
    ("notes", f"{WARNING_MARK} warnings: why a figure is not to be trusted (spread, machine load, timer "
              "resolution, scheduler time slices, above copy bandwidth)"),
)


# --- warnings ------------------------------------------------------------------------------------


def names(peers: str | list | tuple) -> tuple[str, ...]:
    return (peers,) if isinstance(peers, str) else tuple(peers)


def warning_kinds(result: dict, case: dict, environment: dict) -> dict[str, tuple[float, str]]:
    """Why one peer's timing is not to be trusted, by kind: (how bad, the text); see the module doc."""
    if result.get("status") != "ok":
        return {}
    found = {}
    median = result["median_ms"]
    spread = (result["p80_ms"] - result["p20_ms"]) / median if median > 0 else float("inf")
    if spread > SPREAD_LIMIT:
        found["spread"] = (spread, f"spread {100 * spread:.0f}% of the median")
    load, cores = case.get("load_1min"), environment.get("cpu_count")
    if load is not None and cores and load > cores:
        found["load"] = (load, f"machine loaded (load {load:.1f} on {cores} cores)")
    resolution = environment.get("timer_resolution_ms")
    if resolution and median < RESOLUTION_FACTOR * resolution:
        found["resolution"] = (-median, f"near the timer's resolution ({1e3 * resolution:.2g} µs)")
    if result.get("quantum_ms"):
        found["slices"] = (result["quantum_ms"],
                           f"calls last whole {result['quantum_ms']:g} ms time slices (waited for a core)")
    fraction = result.get("fraction_of_copy_bandwidth") or 0
    if fraction > 1:
        found["copy"] = (fraction, "above copy bandwidth (cache-resident or mistimed)")
    return found


def timing_warnings(result: dict, case: dict, environment: dict) -> list[str]:
    """The texts of :func:`warning_kinds`."""
    return [text for _, text in warning_kinds(result, case, environment).values()]


def merged_warnings(results: list[dict], case: dict, environment: dict) -> list[str]:
    """The warnings of several timings (a ratio's), one per kind: the worst."""
    worst: dict[str, tuple[float, str]] = {}
    for result in results:
        for kind, (badness, text) in warning_kinds(result, case, environment).items():
            if kind not in worst or badness > worst[kind][0]:
                worst[kind] = (badness, text)
    return [text for _, text in worst.values()]


def _peer_results(case: dict) -> dict[str, dict]:
    return {result["peer"]: result for result in case["results"]}


def fastest(case: dict, peers: str | tuple) -> dict | None:
    """The fastest of ``peers`` that ran, or None."""
    by_peer = _peer_results(case)
    ran = [by_peer[name] for name in names(peers) if by_peer.get(name, {}).get("status") == "ok"]
    return min(ran, key=lambda result: result["median_ms"], default=None)


def gmk_result(case: dict) -> dict | None:
    """The fastest gmk peer of a case that ran."""
    return fastest(case, tuple(name for name in _peer_results(case) if name.startswith(GMK_PREFIX)))


def external_peers(case: dict) -> list[str]:
    """Peers that are neither gmk's nor the case's eager or compiled baselines (cuDNN, a library, ...)."""
    baselines = set(names(case.get("baseline", EAGER))) | set(names(case.get("compiled_baseline", COMPILED)))
    return [name for name in _peer_results(case) if not name.startswith(GMK_PREFIX) and name not in baselines]


# --- summary -------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.4g} ms"


def _spread(result: dict) -> str:
    return f"p20–p80 {result['p20_ms']:.4g}–{result['p80_ms']:.4g}"


def _ratio(label: str, other: dict | None, mine: dict) -> str | None:
    return None if other is None else f"{other['median_ms'] / mine['median_ms']:.2f}× {label}"


def summary_line(case: dict, environment: dict) -> str:
    """One line: the gmk time with its spread and its ratios to eager, compile and the external peers."""
    mine = gmk_result(case)
    if mine is None:
        return f"- {case['name']}: no gmk peer ran"
    others = [("eager", fastest(case, case.get("baseline", EAGER))),
              ("compile", fastest(case, case.get("compiled_baseline", COMPILED)))]
    others += [(name, fastest(case, name)) for name in external_peers(case)]
    ratios = [text for label, other in others if (text := _ratio(label, other, mine))]
    timings = [mine] + [other for _, other in others if other is not None]
    warnings = merged_warnings(timings, case, environment)
    parts = [f"{mine['peer']} {_ms(mine['median_ms'])} ({_spread(mine)})", *ratios]
    line = f"- {case['name']}: " + " · ".join(parts)
    return line + (f" {WARNING_MARK} " + "; ".join(warnings) if warnings else "")


def untrusted_cases(record: dict) -> int:
    return sum(WARNING_MARK in summary_line(case, record["environment"]) for case in record["cases"])


def summary(record: dict) -> str:
    env = record["environment"]
    lines = ["## Summary", "",
             "Per case: gmk's fastest peer, its median time (p20–p80), and how many times faster it is than "
             "eager, torch.compile and any named external peer (below 1: slower)."]
    if env["device"] == "cpu":
        lines += ["", f"**{CPU_NOTE}**"]
    flagged = untrusted_cases(record)
    if flagged:
        lines += ["", f"{WARNING_MARK} {flagged} of {len(record['cases'])} cases carry warnings: their "
                      "figures are not to be trusted (see notes)."]
    load = env.get("load_1min")
    if load is not None and env.get("cpu_count") and load > env["cpu_count"]:
        lines += ["", f"{WARNING_MARK} the machine was loaded at the start: load {load:.1f} on "
                      f"{env['cpu_count']} cores."]
    lines += [""] + [summary_line(case, env) for case in record["cases"]]
    return "\n".join(lines) + "\n"


# --- full table ----------------------------------------------------------------------------------

COLUMNS = ("case", "peer", "median ms", "p20–p80", "GB/s", "% copy BW", "TFLOP/s", "× eager", "× compile",
           "peak MiB", "launch ms", "µs/sample", "× real time", "notes")


def _cell(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _copy_cell(fraction: float | None) -> str:
    if fraction is None:
        return "–"
    return ">100" if fraction > 1 else f"{100 * fraction:.0f}"


def _realtime_cell(result: dict) -> str:
    factors = result.get("realtime_factor") or {}
    return ", ".join(f"{factor:.3g} @{int(rate) // 1000} kHz" for rate, factor in factors.items()) or "–"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _row(case: dict, result: dict, environment: dict) -> str:
    if result["status"] == "ok":
        warnings = timing_warnings(result, case, environment)
        cells = [_cell(result["median_ms"], ".4g"), f"{result['p20_ms']:.4g}–{result['p80_ms']:.4g}",
                 _cell(result["gbps"], ".1f"), _copy_cell(result["fraction_of_copy_bandwidth"]),
                 _cell(result.get("tflops"), ".2f"), _cell(result.get("speedup_vs_eager"), ".2f"),
                 _cell(result.get("speedup_vs_compiled"), ".2f"), _cell(result["peak_mib"], ".1f"),
                 _cell(result["launch_ms"], ".3f"), _cell(result.get("us_per_sample"), ".4g"),
                 _realtime_cell(result), (WARNING_MARK + " " + "; ".join(warnings)) if warnings else ""]
    else:
        cells = ["skipped: " + _escape(result["reason"][:100])] + [""] * (len(COLUMNS) - 3)
    return "| " + " | ".join([_escape(case["name"]), _escape(result["peer"]), *cells]) + " |"


def legend() -> str:
    return "\n".join(["Columns:", ""] + [f"- **{name}**: {text}" for name, text in LEGEND]) + "\n"


def header(record: dict) -> list[str]:
    env, versions = record["environment"], record["environment"]["versions"]
    commit = env["git_commit"][:12] + (" (uncommitted changes)" if env["git_dirty"] else "")
    load = env.get("load_1min")
    machine = (f" · load {load:.1f} on {env['cpu_count']} cores, {env.get('torch_threads')} torch threads"
               if load is not None and env.get("cpu_count") else "")
    return [f"# gmk bench: {env['device']}, {env['device_name']}", "",
            f"{env['date']} · commit {commit} · gmkernels {versions['gmkernels']} · torch {versions['torch']}"
            f" · triton {versions['triton']} · CUDA {versions['cuda']}",
            f"copy bandwidth {env['copy_bandwidth_gbps']:.1f} GB/s · {env['timer']}{machine}", ""]


def full_table(record: dict) -> str:
    lines = ["## All peers", "", "| " + " | ".join(COLUMNS) + " |",
             "|---|---|" + "---:|" * (len(COLUMNS) - 3) + "---|"]
    lines += [_row(case, result, record["environment"])
              for case in record["cases"] for result in case["results"]]
    return "\n".join(lines) + "\n"


def markdown(record: dict, plots: list[Path] = ()) -> str:
    """The record as a reader gets it: header, summary, plots, the full table, the legend."""
    parts = ["\n".join(header(record)), summary(record)]
    if plots:
        parts.append("Plots: " + ", ".join(f"[{path.name}]({path.name})" for path in plots) + "\n")
    parts += [full_table(record), legend()]
    return "\n".join(parts)


# --- long CSV ------------------------------------------------------------------------------------


def _mode(case: dict) -> str:
    params = case.get("params") or {}
    return str(params.get("direction") or params.get("kind") or "")


def csv_rows(record: dict) -> list[dict]:
    """One row per case, peer and metric, in Liger-Kernel's long format (time in ms; peak memory on CUDA)."""
    env = record["environment"]
    common = {"device": env["device"], "gpu": env["device_name"], "commit": env["git_commit"],
              "version": env["versions"]["gmkernels"], "torch": env["versions"]["torch"], "date": env["date"]}
    rows = []
    for case in record["cases"]:
        for result in case["results"]:
            if result["status"] != "ok":
                continue
            base = {"kernel": case["family"], "case": case["name"], "provider": result["peer"],
                    "mode": _mode(case), "x": case["name"], **common}
            rows.append({**base, "metric": "time", "unit": "ms", "p20": result["p20_ms"],
                         "p50": result["median_ms"], "p80": result["p80_ms"]})
            if result.get("peak_mib") is not None:
                rows.append({**base, "metric": "memory", "unit": "MiB", "p20": result["peak_mib"],
                             "p50": result["peak_mib"], "p80": result["peak_mib"]})
    return rows


def append_csv(record: dict, path: Path) -> Path:
    """Appends the record's rows to ``path`` (with the header when the file is new)."""
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(csv_rows(record))
    return path
