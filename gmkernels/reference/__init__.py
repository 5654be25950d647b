"""Plain-PyTorch ground truth of every op: the tests' reference and the benchmarks' eager baseline."""
from . import actnorm, coupling, gated, invconv, logistic_mixture, masked_conv

__all__ = ["actnorm", "coupling", "gated", "invconv", "logistic_mixture", "masked_conv"]
