"""Plain-PyTorch ground truth of every op: the tests' reference and the benchmarks' eager baseline."""
from . import gated, logistic_mixture, masked_conv

__all__ = ["gated", "logistic_mixture", "masked_conv"]
