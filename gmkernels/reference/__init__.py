"""Plain-PyTorch ground truth of every op: the tests' reference and the benchmarks' eager baseline."""
from . import actnorm, causal_conv, coupling, gated, invconv, logistic_mixture, masked_conv, wavenet_generate

__all__ = ["actnorm", "causal_conv", "coupling", "gated", "invconv", "logistic_mixture", "masked_conv",
           "wavenet_generate"]
