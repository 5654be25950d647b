"""Plain-PyTorch ground truth of every op: the tests' reference and the benchmarks' eager baseline."""
from . import causal_conv, gated, logistic_mixture, masked_conv, wavenet_generate

__all__ = ["causal_conv", "gated", "logistic_mixture", "masked_conv", "wavenet_generate"]
