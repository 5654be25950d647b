"""Triton kernel of upfirdn2d and its launcher, the op gmk_triton::upfirdn2d (declared, with its checks,
in gmkernels/ops/upfirdn2d.py; math: docs/conventions.md, "upfirdn2d").

Each program computes BLOCK outputs in the output's memory order (NCHW, or channels_last where x is):
each sums the filter taps that land on the upsampling grid inside the image, x read through its strides.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import on_device

BLOCK = 256
NUM_WARPS = 4


@triton.jit
def _upfirdn2d_kernel(x_ptr, f_ptr, out_ptr, total, channels, height, width, out_h, out_w,
                      sx_n, sx_c, sx_h, sx_w, fh, fw, upx, upy, downx, downy, padx0, pady0, gain,
                      FLIP: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    u = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = u < total
    if CHANNELS_LAST:
        c = u % channels
        ox = (u // channels) % out_w
        oy = (u // (channels * out_w)) % out_h
        n = u // (channels * out_w * out_h)
    else:
        ox = u % out_w
        oy = (u // out_w) % out_h
        c = (u // (out_w * out_h)) % channels
        n = u // (out_w * out_h * channels)
    base = n * sx_n + c * sx_c
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(0, fh):
        r = oy * downy + j - pady0
        row_ok = (r >= 0) & (r < height * upy) & (r % upy == 0)
        iy = tl.where(row_ok, r, 0) // upy
        if FLIP:
            fj = j
        else:
            fj = fh - 1 - j
        for k in range(0, fw):
            s = ox * downx + k - padx0
            ok = mask & row_ok & (s >= 0) & (s < width * upx) & (s % upx == 0)
            ix = tl.where(ok, s, 0) // upx
            if FLIP:
                fk = k
            else:
                fk = fw - 1 - k
            tap = tl.load(f_ptr + fj * fw + fk).to(tl.float32)
            acc += tap * tl.load(x_ptr + base + iy * sx_h + ix * sx_w, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + u, (acc * gain).to(out_ptr.dtype.element_ty), mask=mask)


def _output_size(size: int, up: int, pad0: int, pad1: int, taps: int, down: int) -> int:
    return (size * up + pad0 + pad1 - taps) // down + 1


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up, down, padding, flip_filter: bool, gain: float) -> torch.Tensor:
    (upx, upy), (downx, downy), (padx0, padx1, pady0, pady1) = up, down, padding
    batch, channels, height, width = x.shape
    fh, fw = f.shape
    out_h = _output_size(height, upy, pady0, pady1, fh, downy)
    out_w = _output_size(width, upx, padx0, padx1, fw, downx)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = x.new_empty(batch, channels, out_h, out_w).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    total = out.numel()
    if total == 0:
        return out
    f = f.contiguous()
    with on_device(x):
        _upfirdn2d_kernel[(triton.cdiv(total, BLOCK),)](
            x, f, out, total, channels, height, width, out_h, out_w, *x.stride(), fh, fw, upx, upy, downx, downy,
            padx0, pady0, float(gain), FLIP=flip_filter, CHANNELS_LAST=channels_last, BLOCK=BLOCK,
            num_warps=NUM_WARPS)
    return out
