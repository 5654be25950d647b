"""Triton kernel of upfirdn2d and its launcher, the op gmk_triton::upfirdn2d (declared, with its checks,
in gmkernels/ops/upfirdn2d.py; math: docs/conventions.md, "upfirdn2d").

Each program computes BLOCK outputs in the output's memory order (NCHW, or channels_last where x is):
each visits the filter taps on the upsampling grid only (every up-th from its phase) and sums those
inside the image, x read through its strides.
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
    # only the taps on the upsampling grid: j = j0 + up_y * t from each output's phase (likewise k)
    ry = oy * downy - pady0
    rx = ox * downx - padx0
    j0 = ((-ry) % upy + upy) % upy
    k0 = ((-rx) % upx + upx) % upx
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for t in range(0, (fh + upy - 1) // upy):
        j = j0 + t * upy
        iy = (ry + j) // upy  # an exact division
        row_ok = mask & (j < fh) & (iy >= 0) & (iy < height)
        if FLIP:
            fj = j
        else:
            fj = fh - 1 - j
        for s in range(0, (fw + upx - 1) // upx):
            k = k0 + s * upx
            ix = (rx + k) // upx
            ok = row_ok & (k < fw) & (ix >= 0) & (ix < width)
            if FLIP:
                fk = k
            else:
                fk = fw - 1 - k
            tap = tl.load(f_ptr + tl.where(ok, fj * fw + fk, 0), mask=ok, other=0.0).to(tl.float32)
            pixel = tl.load(x_ptr + base + tl.where(ok, iy * sx_h + ix * sx_w, 0), mask=ok, other=0.0)
            acc += tap * pixel.to(tl.float32)
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
