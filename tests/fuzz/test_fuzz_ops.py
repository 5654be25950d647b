"""Issue 16 (1): every public op and nn module on drawn shapes, dtypes, layouts and options, on every backend that runs
here: a clear error naming the op and an argument, or the reference's result within tolerance; never a write
outside the outputs (NaN fences around every input), a crash or a hang (harness.DEADLINE_S per draw).

GMK_FUZZ_EXAMPLES draws per op (20 by default); the campaign (tests/fuzz/campaign.py) runs more and writes
tests/fuzz/REPORT.md.
"""
import pytest
from hypothesis import given

from .harness import failures_of, judge
from .modules import MODULES
from .ops import OPS
from .settings import CAMPAIGN, FUZZ


@pytest.mark.parametrize("op", OPS + MODULES, ids=lambda op: op.name)
def test_fuzz(op):
    found: list[str] = []

    @FUZZ
    @given(draw=op.strategy)
    def check(draw):
        failures = failures_of(judge(op, draw))
        if failures and CAMPAIGN:
            found.append(f"{draw}\n    " + "\n    ".join(failures))
        else:
            assert not failures, "\n".join(failures)

    check()
    assert not found, f"{len(found)} failing draws:\n" + "\n".join(found[:20])
