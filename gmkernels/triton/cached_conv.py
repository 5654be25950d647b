"""Triton kernel of cached_conv2d and its launcher: the op gmk_triton::cached_conv2d, declared in
ops/cached_conv.py.

One program per (sample n, output column t) and BLOCK_O output channels: the window's taps are read in
blocks of BLOCK_K through rows' strides, multiplied with the weight rows (Cout, K) and summed in float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import on_device

BLOCK_O = 32
BLOCK_K = 128
NUM_WARPS = 4


@triton.jit
def _kernel(rows_ptr, weight_ptr, bias_ptr, out_ptr, out_channels, taps, count, kh, kw, stride,
            s_batch, s_channel, s_row, s_column,
            HAS_BIAS: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr):
    pair = tl.program_id(0).to(tl.int64)
    n = pair // count
    t = pair % count
    o = tl.program_id(1).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_mask = o < out_channels
    acc = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for k0 in range(0, taps, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        k_mask = k < taps
        b = k % kw
        a = (k // kw) % kh
        c = k // (kw * kh)
        x = tl.load(rows_ptr + n * s_batch + c * s_channel + a * s_row + (t * stride + b) * s_column,
                    mask=k_mask, other=0.0).to(tl.float32)
        w = tl.load(weight_ptr + o[:, None] * taps + k[None, :], mask=o_mask[:, None] & k_mask[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(w * x[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=o_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + (n * out_channels + o) * count + t, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


def cached_conv2d(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, column: int,
                  count: int, stride: int) -> torch.Tensor:
    out_channels, _, kh, kw = weight.shape
    out = torch.empty((rows.shape[0], out_channels, count), dtype=rows.dtype, device=rows.device)
    if out.numel() == 0:
        return out
    window = rows[:, :, rows.shape[2] - kh:, column:]  # its first element is the window's
    weight = weight.contiguous()
    bias_arg = bias.contiguous() if bias is not None else weight  # not read without HAS_BIAS
    grid = (rows.shape[0] * count, triton.cdiv(out_channels, BLOCK_O))
    with on_device(rows):
        _kernel[grid](window, weight, bias_arg, out, out_channels, weight[0].numel(), count, kh, kw, stride,
                      *window.stride(), HAS_BIAS=bias is not None, BLOCK_O=BLOCK_O, BLOCK_K=BLOCK_K,
                      num_warps=NUM_WARPS)
    return out
