"""gmk cached_conv2d: the declaration of gmkernels::cached_conv2d and the public function.

A convolution evaluated from a cache of its input's last rows, at one output position or along one row
(cached PixelCNN sampling, Ramachandran et al. 2017; semantics in gmkernels/reference/cached_conv.py). The
op has no backward kernel: sampling needs none; it is differentiable through the reference formula.
"""
from __future__ import annotations

import torch

from .._backend import OpBackends
from .._validation import check_int
from ..reference import cached_conv as reference
from ._common import check_tensor
from ._declare import Op, triton_family

_triton = triton_family("cached_conv")


def _check_like_rows(function: str, name: str, t, rows: torch.Tensor, shape) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{function}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != rows.dtype:
        raise TypeError(f"{function}: {name} must have rows' dtype {rows.dtype}, got {t.dtype}")
    if t.device != rows.device:
        raise ValueError(f"{function}: {name} must be on rows' device {rows.device}, got {t.device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{function}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_cached_conv(function: str, rows, weight, bias, column, count, stride) -> None:
    check_tensor(function, "rows", rows, 4, "(N, Cin, R, Wp)")
    _check_like_rows(function, "weight", weight, rows, None)
    if weight.dim() != 4 or weight.shape[1] != rows.shape[1]:
        raise ValueError(f"{function}: weight must be (Cout, Cin={rows.shape[1]}, kh, kw), got shape "
                         f"{tuple(weight.shape)}")
    kh, kw = weight.shape[2:]
    if not 1 <= kh <= rows.shape[2] or kw < 1:
        raise ValueError(f"{function}: weight's kernel must have 1 <= kh <= R={rows.shape[2]} (rows' rows) "
                         f"and kw >= 1, got {kh} x {kw}")
    if bias is not None:
        _check_like_rows(function, "bias", bias, rows, (weight.shape[0],))
    check_int(function, "column", column, 0)
    check_int(function, "count", count, 1)
    check_int(function, "stride", stride, 1)
    if column + (count - 1) * stride + kw > rows.shape[3]:
        raise ValueError(f"{function}: the window (column {column}, count {count}, stride {stride}, kw {kw}) "
                         f"must lie in rows' {rows.shape[3]} columns")


def _fake(rows, weight, bias, column, count, stride):
    return rows.new_empty((rows.shape[0], weight.shape[0], count))


_SCHEMA = "(Tensor rows, Tensor weight, Tensor? bias, int column, int count, int stride) -> Tensor"
CACHED_CONV = Op("cached_conv2d", _SCHEMA, check=check_cached_conv, fake=_fake,
                 triton=_triton and _triton.cached_conv2d, formula=reference.cached_conv2d,
                 backends=OpBackends("gmk.cached_conv2d"))


def cached_conv2d(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  column: int = 0, count: int = 1, stride: int = 1, backend: str = "auto") -> torch.Tensor:
    """The convolution of the last kh rows of ``rows`` (N, Cin, R, Wp) with ``weight`` (Cout, Cin, kh, kw) at
    window columns ``column + t·stride``, t < ``count``: (N, Cout, count), no padding (the cache holds it).

    ``rows`` is a cache of a map's last R >= kh rows with their zero padding columns, any strides; a masked
    kernel is passed multiplied by its mask and cut to its rows at and above the output. Arithmetic in float32
    (float64 for float64).
    """
    function = "cached_conv2d"
    CACHED_CONV.check(function, rows, weight, bias, column, count, stride)
    name = CACHED_CONV.select(backend, rows.device, rows.dtype)
    if name == "reference":
        return reference.cached_conv2d(rows, weight, bias, column, count, stride)
    return CACHED_CONV.run(name, rows, weight, bias, column, count, stride)
