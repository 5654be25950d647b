"""Plain-PyTorch ground truth of every op: the tests' reference and the benchmarks' eager baseline."""
from . import gated

__all__ = ["gated"]
