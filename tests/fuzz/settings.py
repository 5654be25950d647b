"""The fuzz suite's hypothesis settings: GMK_FUZZ_EXAMPLES draws per op (a small default for CI), fixed
seeds (derandomize: the same draws on every run), no deadline of hypothesis' own (harness.DEADLINE_S kills a
hung draw), no example database (nothing written into the repo)."""
import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("GMK_FUZZ_EXAMPLES", "20"))
# Set by tests/fuzz/campaign.py: every draw is judged and counted; the failures are listed at the end rather
# than shrunk (which would stop the op's run at its first failure).
CAMPAIGN = os.environ.get("GMK_FUZZ_COUNTS") is not None

FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=False,
                suppress_health_check=list(HealthCheck))
