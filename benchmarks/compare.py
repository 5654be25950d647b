"""``gmk bench --compare OLD.json NEW.json [--fail-above 5%]``: two records side by side.

Per case and peer present in both: the old and new medians and new / old (above 1: slower now). With
``--fail-above``, the exit status is 1 when a gmk peer of some case got slower by more than the
threshold (the baselines are torch's: their changes are reported, not failed on). A changed device or
commit is named in the header; a ratio whose timings carry a warning (report.py) is marked, since
noise alone can move it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from . import report

SLOWER = "slower"


class RecordError(ValueError):
    """A file that is not a gmk bench record."""


def load_record(path: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except OSError as error:
        raise RecordError(f"cannot read {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise RecordError(f"{path} is not JSON: {error.msg} at line {error.lineno}") from None
    if not isinstance(record, dict) or "cases" not in record or "environment" not in record:
        raise RecordError(f"{path} is not a gmk bench record (no 'cases' and 'environment')")
    return record


def _results(record: dict) -> dict[tuple[str, str], tuple[dict, dict]]:
    """(case, peer) -> (case, result) of every peer that ran."""
    return {(case["name"], result["peer"]): (case, result) for case in record["cases"]
            for result in case["results"] if result.get("status") == "ok"}


def comparisons(old: dict, new: dict) -> list[dict]:
    """One row per (case, peer) that ran in both records, in the new record's order."""
    old_results, rows = _results(old), []
    for key, (case, result) in _results(new).items():
        if key not in old_results:
            continue
        old_case, old_result = old_results[key]
        warned = (report.timing_warnings(old_result, old_case, old["environment"])
                  or report.timing_warnings(result, case, new["environment"]))
        rows.append({"case": key[0], "peer": key[1], "old_ms": old_result["median_ms"],
                     "new_ms": result["median_ms"], "ratio": result["median_ms"] / old_result["median_ms"],
                     "gmk": key[1].startswith(report.GMK_PREFIX), "warned": bool(warned)})
    return rows


def regressions(rows: list[dict], threshold: float) -> list[dict]:
    """gmk peers slower by more than ``threshold`` (0.05: 5 %)."""
    return [row for row in rows if row["gmk"] and row["ratio"] > 1 + threshold]


def _describe(record: dict) -> str:
    env = record["environment"]
    return f"{env['device_name']} ({env['device']}), commit {env['git_commit'][:12]}, {env['date']}"


def table(old: dict, new: dict, rows: list[dict], threshold: float | None) -> str:
    lines = [f"old: {_describe(old)}", f"new: {_describe(new)}"]
    if old["environment"]["device_name"] != new["environment"]["device_name"]:
        lines.append("note: the records come from different devices")
    lines += ["", "| case | peer | old ms | new ms | new / old | |", "|---|---|---:|---:|---:|---|"]
    for row in rows:
        flags = []
        if threshold is not None and row in regressions([row], threshold):
            flags.append(f"{SLOWER} by {100 * (row['ratio'] - 1):.1f}%")
        if row["warned"]:
            flags.append(f"{report.WARNING_MARK} noisy")
        lines.append(f"| {row['case']} | {row['peer']} | {row['old_ms']:.4g} | {row['new_ms']:.4g} | "
                     f"{row['ratio']:.3f} | {'; '.join(flags)} |")
    return "\n".join(lines) + "\n"


def main(old_path: Path, new_path: Path, threshold: float | None) -> int:
    """Prints the comparison; 0, or 1 when a gmk peer slowed past ``threshold``, 2 on unusable input."""
    try:
        old, new = load_record(old_path), load_record(new_path)
    except RecordError as error:
        print(f"gmk bench: error: {error}", file=sys.stderr)
        return 2
    rows = comparisons(old, new)
    if not rows:
        print("gmk bench: error: the records have no case and peer in common", file=sys.stderr)
        return 2
    print(table(old, new, rows, threshold))
    if threshold is None:
        return 0
    slower = regressions(rows, threshold)
    print(f"{len(slower)} of {sum(row['gmk'] for row in rows)} gmk timings slower by more than "
          f"{100 * threshold:g}%")
    return 1 if slower else 0
