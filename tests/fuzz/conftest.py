"""Triton's interpreter with exact bfloat16 casts (tests/fuzz/interpreter.py); writes the fuzz run's counts
(op, backend, outcome) to $GMK_FUZZ_COUNTS as JSON when it is set (the campaign, tests/fuzz/campaign.py,
merges them into tests/fuzz/REPORT.md)."""
import json
import os

from .interpreter import install

install()


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("GMK_FUZZ_COUNTS")
    if not path:
        return
    from .harness import COUNTS
    rows = [{"op": op, "backend": backend, **counts} for (op, backend), counts in sorted(COUNTS.items())]
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
