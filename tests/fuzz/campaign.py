"""The fuzz campaign: every op's fuzz test in a child process of its own, so that a crash or a hang (the
per-draw deadline kills the child) is counted against that op and the others still run; then
tests/fuzz/REPORT.md from the children's counts, rewritten after every op (the ops not run yet listed as
such), so that a campaign stopped early leaves a true partial report.

    GMK_FUZZ_EXAMPLES=1000 python -m tests.fuzz.campaign [--jobs 2] [--only OP ...] [--resume | --report-only]

Each op's result is kept in build/fuzz-campaign/<examples>/<op>.json (git-ignored); ``--resume`` reuses
the ones there (same number of draws) and runs only the other ops; ``--report-only`` writes REPORT.md from
them and runs nothing (the others listed as not run yet).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

from .harness import DEADLINE_S, FAILURES, OUTCOMES
from .modules import MODULES
from .ops import OPS

ROOT = Path(__file__).resolve().parents[2]
REPORT = Path(__file__).with_name("REPORT.md")
RESULTS = ROOT / "build" / "fuzz-campaign"  # per draws count, one JSON per op (build/ is git-ignored)
MEMORY_LIMIT = 16 * 2**30  # address space per child (torch and Triton reserve a few GB of it)


def run_op(name: str, examples: int) -> dict:
    """One op's fuzz test in a child: its counts, its failures' text, and crash/hang if it died."""
    with tempfile.TemporaryDirectory() as scratch:
        counts_path = Path(scratch) / "counts.json"
        env = {**os.environ, "GMK_FUZZ_EXAMPLES": str(examples), "GMK_FUZZ_COUNTS": str(counts_path),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        start = time.time()
        child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                f"tests/fuzz/test_fuzz_ops.py::test_fuzz[{name}]"], cwd=ROOT, env=env,
                               capture_output=True, text=True, preexec_fn=_limit_memory)
        seconds = time.time() - start
        rows = json.loads(counts_path.read_text()) if counts_path.exists() else []
    output = child.stdout + child.stderr
    died = None
    if "Timeout (" in output:  # faulthandler's trace of a draw past the deadline
        died = "hang"
    elif child.returncode < 0 or child.returncode > 1 or "Fatal Python error" in output:
        died = "crash"
    return {"op": name, "rows": rows, "returncode": child.returncode, "died": died, "seconds": seconds,
            "failures": _failure_lines(output) if child.returncode else [], "commit": _commit()}


def _commit() -> str:
    """The checkout's short commit, "+changes" when gmkernels/, csrc/ or tests/fuzz/ (but the report the
    campaign itself rewrites) differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    changed = git("status", "--porcelain", "--", "gmkernels", "csrc", "tests/fuzz", ":(exclude)tests/fuzz/REPORT.md")
    return (git("rev-parse", "--short", "HEAD") or "?") + ("+changes" if changed else "")


def _limit_memory() -> None:
    """A child that allocates past MEMORY_LIMIT gets a MemoryError (counted) rather than the machine's OOM killer."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _failure_lines(output: str) -> list[str]:
    return [line[1:].strip() for line in output.splitlines() if line.startswith("E ")][:40]


def table(results: list[dict], examples: int, pending: list[str] = ()) -> str:
    lines = ["| op | backend | draws | clear error | matched reference | known open issue | " + " | ".join(FAILURES)
             + " | commit |", "|---|---|---:|---:|---:|---:|" + "---:|" * len(FAILURES) + "---|"]
    for name in pending:
        lines.append(f"| {name} | not run yet | 0 |" + " |" * (4 + len(FAILURES)))
    for result in results:
        rows = result["rows"] or [{"op": result["op"], "backend": "?"}]
        commit = result.get("commit", "not recorded")
        for row in rows:
            counts = {outcome: row.get(outcome, 0) for outcome in OUTCOMES}
            if result["died"]:
                counts[result["died"]] += 1
            draws = sum(counts.values())
            lines.append(f"| {row['op']} | {row['backend']} | {draws} | {counts['error']} | {counts['match']} | "
                         f"{counts['known']} | "
                         + " | ".join(str(counts[f]) for f in FAILURES) + f" | {commit} |")
    return "\n".join(lines)


def write_report(results: list[dict], examples: int, seconds: float | None, pending: list[str] = ()) -> None:
    failing = [r for r in results if r["returncode"] or r["died"]]
    total = {outcome: sum(row.get(outcome, 0) for r in results for row in r["rows"]) for outcome in OUTCOMES}
    text = [
        "# Fuzz campaign report",
        "",
        "Written by `python -m tests.fuzz.campaign` (tests/fuzz/campaign.py); do not edit by hand.",
        "",
        f"- draws per op: {examples} (GMK_FUZZ_EXAMPLES; hypothesis derandomized: the same draws on every run)",
        f"- backends: every one that runs on this machine's CPU tensors (Triton under TRITON_INTERPRET=1); "
        f"plain torch functions run once (backend `torch`)",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, Python "
        f"{platform.python_version()}; per-draw deadline {DEADLINE_S:.0f} s; "
        + (f"campaign wall time {seconds / 60:.1f} min" if seconds is not None else
           "written from the ops' kept results (--report-only)")
        + f" (the ops' own run times summed: {sum(r['seconds'] for r in results) / 60:.1f} min)",
        *([f"- **partial**: {len(pending)} of {len(pending) + len(results)} ops not run yet (listed first)"]
          if pending else []),
        f"- totals over ops x backends: clear error {total['error']}, matched reference {total['match']}, "
        f"known open issue {total['known']}, "
        + ", ".join(f"{f} {total[f] + sum(r['died'] == f for r in results)}" for f in FAILURES),
        "",
        "A draw is one call: shapes with 0, 1, odd and prime sizes; float32/64/16, bfloat16 and in half the "
        "draws one bad argument (integer, bool or complex dtype, wrong rank, size, type or device; negative, "
        "zero, huge, NaN/inf or wrongly typed options); every tensor argument contiguous, transposed, "
        "permuted, sliced with steps, expanded (stride 0), overlapping (as_strided) or misaligned, inside a "
        "NaN-filled fence. Outcomes per backend: *clear error* (ValueError/TypeError/RuntimeError naming the "
        "op and an argument), *matched reference* (outputs and gradients within the op's tolerance of the "
        "reference in float64 on the same values; the reference's own row counts its returns), *known open "
        "issue* (a mismatch at NaN/inf inputs of an op with an open issue, docs/finite-ranges.md), or a failure: "
        "*unclear error*, *mismatch*, *written* (a fence or an input changed), *crash*, *hang*.",
        "",
        table(results, examples, pending),
        "",
    ]
    if failing:
        text += ["## Failures", ""]
        for result in failing:
            text += [f"### {result['op']}", "", "```", *result["failures"], "```", ""]
    REPORT.write_text("\n".join(text))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1, help="ops run at the same time")
    parser.add_argument("--only", nargs="*", help="these ops only (names as in tests/fuzz/ops.py)")
    parser.add_argument("--resume", action="store_true", help="reuse the ops' results kept from an earlier run")
    parser.add_argument("--report-only", action="store_true", help="write REPORT.md from the kept results only")
    args = parser.parse_args(argv)
    examples = int(os.environ.get("GMK_FUZZ_EXAMPLES", "200"))
    names = [op.name for op in OPS + MODULES if not args.only or op.name in args.only]
    kept = RESULTS / str(examples)
    kept.mkdir(parents=True, exist_ok=True)
    results = {name: json.loads((kept / f"{name}.json").read_text()) for name in names
               if (args.resume or args.report_only) and (kept / f"{name}.json").exists()}
    start = time.time()

    def report() -> None:  # in the table's order; the ops still running or queued listed as not run yet
        write_report([results[n] for n in names if n in results], examples,
                     None if args.report_only else time.time() - start, [n for n in names if n not in results])

    with ThreadPoolExecutor(args.jobs) as pool:
        running = [pool.submit(run_op, name, examples) for name in names
                   if name not in results and not args.report_only]
        for done in as_completed(running):
            result = done.result()
            state = result["died"] or ("failed" if result["returncode"] else "ok")
            print(f"{result['op']:40s} {state:7s} {result['seconds']:7.1f} s", flush=True)
            for line in result["failures"][:6]:
                print("    " + line[:300], flush=True)
            results[result["op"]] = result
            (kept / f"{result['op']}.json").write_text(json.dumps(result))
            report()
    report()
    results = list(results.values())
    print(f"wrote {REPORT}")
    return int(any(r["returncode"] or r["died"] for r in results))


if __name__ == "__main__":
    sys.exit(main())
