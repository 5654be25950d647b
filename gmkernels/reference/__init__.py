"""Plain-PyTorch ground truth of every op: the tests' reference and the benchmarks' eager baseline."""
from . import actnorm, bias_act, cached_conv, causal_conv, coupling, gated, invconv, logistic_mixture, masked_conv, upfirdn2d, vector_quantize, wavenet_generate

__all__ = ["actnorm", "causal_conv", "coupling", "gated", "invconv", "logistic_mixture", "masked_conv",
           "wavenet_generate", "bias_act", "cached_conv", "upfirdn2d", "vector_quantize"]
