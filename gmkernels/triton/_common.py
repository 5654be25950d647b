"""Helpers shared by the Triton families: jit functions the kernels call, and the launchers' device,
precision and stride rules."""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreted

try:
    from triton.language.extra.libdevice import tanh as _libdevice_tanh
except ImportError:  # older Triton
    from triton.language.extra.cuda.libdevice import tanh as _libdevice_tanh


# --- jit functions -------------------------------------------------------------------------------

@triton.jit
def tanh(v, INTERPRETED: tl.constexpr):
    if INTERPRETED:  # the interpreter has no libdevice; this form is exact enough in float32 there
        return 2.0 * tl.sigmoid(2.0 * v) - 1.0
    else:
        return _libdevice_tanh(v)


@triton.jit
def log1p(e):
    """log(1 + e) for e >= 0, accurate where e is below an ulp of 1: log(u) · e / (u − 1) with u = 1 + e
    rounded (Goldberg's correction; e itself where u rounds to 1)."""
    u = 1.0 + e
    d = u - 1.0
    return tl.where(d == 0.0, e, tl.log(u) * (e / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """acc + a @ b, accumulated in float32; PRECISION is tl.dot's input_precision ("ieee", "tf32")."""
    if INTERPRETED:  # the interpreter's half-precision matmul gives NaN: multiply in float32 there
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


# --- launchers -----------------------------------------------------------------------------------

def on_device(t: torch.Tensor):
    """The context a launch for ``t`` runs in: its CUDA device current, or nothing on CPU (interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision for float32 convolutions: TF32 when cuDNN may use it (F.conv's rule)."""
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def parallelism() -> int:
    """Programs that fill the device: two per SM on a GPU; a few under the interpreter (so that the CPU
    tests exercise the split reductions)."""
    if triton_interpreted() or not torch.cuda.is_available():
        return 4
    return 2 * torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


def strides_3d(t: torch.Tensor) -> tuple[int, int, int]:
    """The strides of an (outer, channels, inner) tensor with those of size-1 dimensions normalised (outer
    0, inner 1), so that layout tests see through them; the channel stride as it is."""
    outer, channel, inner = t.stride()
    return (0 if t.size(0) == 1 else outer, channel, 1 if t.size(2) == 1 else inner)
