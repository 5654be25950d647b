"""gmkernels: fast, tested kernels for classic deep generative models.

    import gmkernels as gmk
    y = gmk.gated_activation(x, cond, activation="tanh")      # any backend, with autograd
    with gmk.use_backend("triton"): ...                       # or backend= per call, or $GMK_BACKEND
"""
__version__ = "0.1.0"

from . import nn, reference
from ._backend import BACKENDS, available_backends, use_backend
from ._extension import build_info, has_extension
from .ops.gated import gated_activation

__all__ = [
    "BACKENDS", "available_backends", "build_info", "gated_activation", "has_extension", "nn", "reference",
    "use_backend",
]
