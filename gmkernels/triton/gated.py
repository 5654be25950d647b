"""Triton kernels of the gated activation and their launchers, the ops gmk_triton::gated{,_backward}
(declared, with their checks, in gmkernels/ops/gated.py).

The tensors are (outer, 2C, inner) as for the C++ ops. Each program takes BLOCK elements of one
row o of the output, m = c * inner + i in [0, C * inner): when each half of a row of x is
contiguous ("rows" layout) its loads are contiguous runs; otherwise m is split into (c, i).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreted
from ._common import on_device, strides_3d, tanh

COND_NONE, COND_ROWS, COND_STRIDED = 0, 1, 2
BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _halves_offsets(o, m, half, inner, s_outer, s_channel, s_inner, ROWS: tl.constexpr):
    """Offsets of a (channel c) and b (channel c + half) at (o, m = c * inner + i)."""
    if ROWS:
        a_offset = o * s_outer + m
        b_offset = a_offset + half * inner
    else:
        c = m // inner
        i = m - c * inner
        a_offset = o * s_outer + c * s_channel + i * s_inner
        b_offset = a_offset + half * s_channel
    return a_offset, b_offset


@triton.jit
def _load_halves(x_ptr, cond_ptr, blocks_per_row, half, inner,
                 sx_outer, sx_channel, sx_inner, sc_outer, sc_channel, sc_inner,
                 X_ROWS: tl.constexpr, COND: tl.constexpr, BLOCK: tl.constexpr):
    """This program's row o and elements m of the output (mask: those in the row), and the halves a, b
    of x + cond there, in float32."""
    pid = tl.program_id(0)
    o = (pid // blocks_per_row).to(tl.int64)
    m = (pid % blocks_per_row) * BLOCK + tl.arange(0, BLOCK)
    mask = m < half * inner
    a_offset, b_offset = _halves_offsets(o, m, half, inner, sx_outer, sx_channel, sx_inner, X_ROWS)
    a = tl.load(x_ptr + a_offset, mask=mask).to(tl.float32)
    b = tl.load(x_ptr + b_offset, mask=mask).to(tl.float32)
    if COND != 0:
        ca_offset, cb_offset = _halves_offsets(o, m, half, inner, sc_outer, sc_channel, sc_inner, COND == 1)
        a += tl.load(cond_ptr + ca_offset, mask=mask).to(tl.float32)
        b += tl.load(cond_ptr + cb_offset, mask=mask).to(tl.float32)
    return o, m, mask, a, b


@triton.jit
def _gated_kernel(x_ptr, cond_ptr, grad_y_ptr, out_ptr, blocks_per_row, half, inner,
                  sx_outer, sx_channel, sx_inner, sc_outer, sc_channel, sc_inner,
                  BACKWARD: tl.constexpr, TANH: tl.constexpr, X_ROWS: tl.constexpr, COND: tl.constexpr,
                  INTERPRETED: tl.constexpr, BLOCK: tl.constexpr):
    """Forward: out = y (outer, C, inner). Backward: out = grad_h (outer, 2C, inner) from grad_y."""
    o, m, mask, a, b = _load_halves(x_ptr, cond_ptr, blocks_per_row, half, inner, sx_outer, sx_channel,
                                    sx_inner, sc_outer, sc_channel, sc_inner, X_ROWS, COND, BLOCK)
    half_len = half * inner
    s = tl.sigmoid(b)
    f = tanh(a, INTERPRETED) if TANH else a
    out_type = out_ptr.dtype.element_ty
    if BACKWARD:
        grad_y = tl.load(grad_y_ptr + o * half_len + m, mask=mask).to(tl.float32)
        if TANH:
            df = 1.0 - f * f
        else:
            df = 1.0
        grad_a = grad_y * df * s
        grad_b = grad_y * f * s * (1.0 - s)
        tl.store(out_ptr + o * 2 * half_len + m, grad_a.to(out_type), mask=mask)
        tl.store(out_ptr + o * 2 * half_len + half_len + m, grad_b.to(out_type), mask=mask)
    else:
        tl.store(out_ptr + o * half_len + m, (f * s).to(out_type), mask=mask)


def _is_rows(strides: tuple[int, int, int], inner: int) -> bool:
    return strides[2] == 1 and strides[1] == inner


def _launch(x: torch.Tensor, cond: torch.Tensor | None, grad_y: torch.Tensor | None, out: torch.Tensor,
            activation: str):
    """out = y (grad_y None) or grad_h."""
    outer, channels, inner = x.shape
    half = channels // 2
    if x.numel() == 0:
        return
    x_strides = strides_3d(x)
    cond_strides = (0, 0, 0) if cond is None else strides_3d(cond)
    cond_mode = COND_NONE if cond is None else COND_ROWS if _is_rows(cond_strides, inner) else COND_STRIDED
    blocks_per_row = triton.cdiv(half * inner, BLOCK)
    with on_device(x):
        _gated_kernel[(outer * blocks_per_row,)](
            x, x if cond is None else cond, x if grad_y is None else grad_y, out, blocks_per_row, half, inner,
            *x_strides, *cond_strides, BACKWARD=grad_y is not None, TANH=activation == "tanh",
            X_ROWS=_is_rows(x_strides, inner), COND=cond_mode, INTERPRETED=triton_interpreted(), BLOCK=BLOCK, num_warps=NUM_WARPS)


def gated(x: torch.Tensor, cond: torch.Tensor | None, activation: str) -> torch.Tensor:
    y = x.new_empty(x.shape[0], x.shape[1] // 2, x.shape[2])
    _launch(x, cond, None, y, activation)
    return y


def gated_backward(grad_y: torch.Tensor, x: torch.Tensor, cond: torch.Tensor | None,
                   activation: str) -> torch.Tensor:
    grad_h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    grad_y = grad_y.contiguous()
    _launch(x, cond, grad_y, grad_h, activation)
    return grad_h
