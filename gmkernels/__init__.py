"""gmkernels: fast, tested kernels for classic deep generative models.

    import gmkernels as gmk
    y = gmk.gated_activation(x, cond, activation="tanh")      # any backend, with autograd
    with gmk.use_backend("triton"): ...                       # or backend= per call, or $GMK_BACKEND
    nll = gmk.discretized_logistic_mixture_nll(params, x)     # PixelCNN++'s loss, fused
    y = gmk.masked_conv2d(x, weight, bias, mask_type="A")    # PixelCNN's masked conv, live taps only
    y, logdet = gmk.affine_coupling(x, h, transform="glow")  # Glow/RealNVP coupling, one pass
    x, skip = gmk.wavenet_layer(x, cw, cb, rw, rb, sw, sb, cond, dilation=8)   # WaveNet's layer, fused
"""
__version__ = "0.1.0"

from . import nn, reference
from ._backend import BACKENDS, available_backends, use_backend
from ._extension import build_info, has_extension
from .ops.actnorm import actnorm
from .ops.bias_act import bias_act
from .ops.cached_conv import cached_conv2d
from .ops.causal_conv import causal_conv1d, wavenet_layer
from .ops.coupling import affine_coupling
from .ops.gated import gated_activation
from .ops.invconv import actnorm_conv1x1, actnorm_conv1x1_lu, invertible_conv1x1, invertible_conv1x1_lu
from .ops.logistic_mixture import (bits_per_dim, discretized_logistic_mixture_nll,
                                   discretized_logistic_mixture_sample)
from .ops.masked_conv import conv_mask, masked_conv2d, shifted_conv2d
from .ops.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d
from .ops.vector_quantize import vector_quantize, vector_quantize_statistics
from .mu_law import mu_law_decode, mu_law_encode
from . import models  # noqa: E402  (after the ops: models are built on them)
from . import data  # noqa: E402
from . import metrics  # noqa: E402

__all__ = [
    "actnorm", "actnorm_conv1x1", "actnorm_conv1x1_lu", "affine_coupling", "BACKENDS", "available_backends",
    "bits_per_dim", "build_info", "causal_conv1d", "conv_mask", "data", "metrics",
    "discretized_logistic_mixture_nll", "discretized_logistic_mixture_sample", "gated_activation", "has_extension",
    "invertible_conv1x1", "invertible_conv1x1_lu", "masked_conv2d", "models", "mu_law_decode", "mu_law_encode", "nn", "reference", "shifted_conv2d",
    "use_backend", "wavenet_layer",
    "bias_act", "cached_conv2d", "downsample2d", "filter2d", "setup_filter", "upfirdn2d", "upsample2d",
    "vector_quantize", "vector_quantize_statistics",
]
