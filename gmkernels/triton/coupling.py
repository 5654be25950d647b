"""Triton kernels of the coupling layer and their launchers: the ops gmk_triton::coupling{,_backward}, declared
in ops/coupling.py.

The tensors are those of the C++ ops: x (N, C, S) and h (N, C or C/2, S), any strides. Each program
takes BLOCK elements m = c * S + s of one sample's x_b: it reads x_a, x_b, r and t once, writes
y_a = x_a and y_b into the contiguous y (no concatenation), and its partial sum of log s into one
slot per program; the slots of a sample are then added by ``sum`` (a fixed-order reduction, so the
result is the same on every run, with no atomics and no host synchronisation). Checkerboard layouts
(x (N, C, H, W), h (N, 2C or C, H, W)): a program takes BLOCK elements m = c * H * W + p of one
sample's x, transforms the x_b positions and copies the x_a ones.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference.coupling import CHECKERBOARD_LAYOUTS, TRANSFORMS
from ._common import log1p, on_device

GLOW, REALNVP, ADDITIVE = 0, 1, 2
BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _glow_scale(r):
    """s = σ(v), 1 - s, log s and (1 - s)/s = e^-v at v = r + 2, without cancellation (gmk/coupling.h)."""
    v = r + 2.0
    positive = v >= 0.0
    e = tl.exp(-tl.abs(v))
    p = 1.0 / (1.0 + e)
    q = e * p
    s = tl.where(positive, p, q)
    one_minus_s = tl.where(positive, q, p)
    log_s = tl.minimum(v, 0.0) - log1p(e)
    ratio = tl.where(positive, e, 1.0 / e)
    return s, one_minus_s, log_s, ratio


@triton.jit
def _forward_math(z, r, t, TRANSFORM: tl.constexpr, REVERSE: tl.constexpr):
    """(image of z, log s) for one transform and direction (log s 0 for additive)."""
    if TRANSFORM == 2:
        log_s = tl.zeros_like(z)
        if REVERSE:
            out = z - t
        else:
            out = z + t
    elif TRANSFORM == 0:
        s, one_minus_s, log_s, ratio = _glow_scale(r)
        if REVERSE:
            out = z * (1.0 + ratio) - t
        else:
            out = (z + t) * s
    else:
        log_s = r
        if REVERSE:
            out = (z - t) * tl.exp(-r)
        else:
            out = z * tl.exp(r) + t
    return out, log_s


@triton.jit
def _backward_math(z, r, t, g, gl, TRANSFORM: tl.constexpr, REVERSE: tl.constexpr):
    """The gradients of z, r and t of gmk::coupling::backward (gmk/coupling.h), written out per transform."""
    if TRANSFORM == 2:
        grad_z = g
        grad_r = tl.zeros_like(g)
        if REVERSE:
            grad_t = -g
        else:
            grad_t = g
    elif TRANSFORM == 0:
        s, one_minus_s, log_s, ratio = _glow_scale(r)
        if REVERSE:
            grad_z = g * (1.0 + ratio)
            grad_t = -g
            grad_r = -(g * z * ratio + gl * one_minus_s)
        else:
            grad_z = g * s
            grad_t = grad_z
            grad_r = (g * (z + t) * s + gl) * one_minus_s
    else:
        if REVERSE:
            grad_z = g * tl.exp(-r)
            grad_t = -grad_z
            grad_r = -(grad_z * (z - t) + gl)
        else:
            grad_z = g * tl.exp(r)
            grad_t = g
            grad_r = grad_z * z + gl
    return grad_z, grad_r, grad_t


@triton.jit
def _offsets(o, m, half, inner, sx_outer, sx_channel, sx_inner, sh_outer, sh_channel, sh_inner,
             TRANSFORM: tl.constexpr, INTERLEAVED: tl.constexpr, ROWS: tl.constexpr):
    """Offsets of x_a, x_b, r, t (strided), of y_a/y_b (contiguous x shape) and of r, t in a contiguous h.

    m = c * inner + i is int32 (the launcher checks half * inner + BLOCK <= 2^31); the offsets are
    int64. ROWS: x and h have rows of contiguous channels (unit inner stride, channel stride inner)
    and r, t are whole halves of h (or t is h), so every offset is a row start plus m, no division.
    """
    if TRANSFORM == 2:
        h_channels = half
    else:
        h_channels = 2 * half
    if ROWS:
        xa = o * sx_outer + m
        xb = xa + half * inner
        r = o * sh_outer + m
        ya = o * 2 * half * inner + m
        gr = o * h_channels * inner + m
        if TRANSFORM == 2:
            t = r
            gt = gr
        else:
            t = r + half * inner
            gt = gr + half * inner
    else:
        c = m // inner
        i = (m - c * inner).to(tl.int64)
        c = c.to(tl.int64)
        if TRANSFORM == 2:
            r_c = c  # unused
            t_c = c
        elif INTERLEAVED:
            r_c = 2 * c + 1
            t_c = 2 * c
        else:
            r_c = c
            t_c = half + c
        xa = o * sx_outer + c * sx_channel + i * sx_inner
        xb = o * sx_outer + (c + half) * sx_channel + i * sx_inner  # int64: half * sx_channel may pass 2^31
        r = o * sh_outer + r_c * sh_channel + i * sh_inner
        t = o * sh_outer + t_c * sh_channel + i * sh_inner
        ya = (o * 2 * half + c) * inner + i
        gr = (o * h_channels + r_c) * inner + i
        gt = (o * h_channels + t_c) * inner + i
    yb = ya + half * inner
    return xa, xb, r, t, ya, yb, gr, gt


@triton.jit
def _load_r_t(h_ptr, r_off, t_off, mask, TRANSFORM: tl.constexpr):
    """r and t of h at the offsets, in float32 (t twice for additive, which has no r)."""
    t = tl.load(h_ptr + t_off, mask=mask, other=0.0).to(tl.float32)
    if TRANSFORM == 2:
        r = t  # unused
    else:
        r = tl.load(h_ptr + r_off, mask=mask, other=0.0).to(tl.float32)
    return r, t


@triton.jit
def _gradients(g, grad_logdet_ptr, x_ptr, h_ptr, o, z_off, r_off, t_off, mask, TRANSFORM: tl.constexpr,
               REVERSE: tl.constexpr):
    """grad_z, grad_r, grad_t at the elements of x_b (offsets z_off into x) given their grad_y g."""
    z = tl.load(x_ptr + z_off, mask=mask, other=0.0).to(tl.float32)
    r, t = _load_r_t(h_ptr, r_off, t_off, mask, TRANSFORM)
    gl = tl.load(grad_logdet_ptr + o).to(tl.float32)
    return _backward_math(z, r, t, g, gl, TRANSFORM, REVERSE)


@triton.jit
def _program_elements(blocks_per_sample, half, inner, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    o = (pid // blocks_per_sample).to(tl.int64)
    m = (pid % blocks_per_sample) * BLOCK + tl.arange(0, BLOCK)
    return pid, o, m, m < half * inner


@triton.jit
def _coupling_forward_kernel(x_ptr, h_ptr, y_ptr, sums_ptr, blocks_per_sample, half, inner,
                             sx_outer, sx_channel, sx_inner, sh_outer, sh_channel, sh_inner,
                             TRANSFORM: tl.constexpr, INTERLEAVED: tl.constexpr, REVERSE: tl.constexpr,
                             ROWS: tl.constexpr, BLOCK: tl.constexpr):
    pid, o, m, mask = _program_elements(blocks_per_sample, half, inner, BLOCK)
    xa, xb, r_off, t_off, ya, yb, _, _ = _offsets(o, m, half, inner, sx_outer, sx_channel, sx_inner, sh_outer,
                                                  sh_channel, sh_inner, TRANSFORM, INTERLEAVED, ROWS)
    tl.store(y_ptr + ya, tl.load(x_ptr + xa, mask=mask), mask=mask)
    z = tl.load(x_ptr + xb, mask=mask, other=0.0).to(tl.float32)
    r, t = _load_r_t(h_ptr, r_off, t_off, mask, TRANSFORM)
    out, log_s = _forward_math(z, r, t, TRANSFORM, REVERSE)
    if TRANSFORM != 2:
        tl.store(sums_ptr + pid, tl.sum(tl.where(mask, log_s, 0.0), axis=0))
    tl.store(y_ptr + yb, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _coupling_backward_kernel(grad_y_ptr, grad_logdet_ptr, x_ptr, h_ptr, grad_x_ptr, grad_h_ptr,
                              blocks_per_sample, half, inner,
                              sx_outer, sx_channel, sx_inner, sh_outer, sh_channel, sh_inner,
                              TRANSFORM: tl.constexpr, INTERLEAVED: tl.constexpr, REVERSE: tl.constexpr,
                              ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """The gradients of gmk::coupling::backward (gmk/coupling.h), written out per transform."""
    pid, o, m, mask = _program_elements(blocks_per_sample, half, inner, BLOCK)
    xa, xb, r_off, t_off, ya, yb, gr, gt = _offsets(o, m, half, inner, sx_outer, sx_channel, sx_inner,
                                                    sh_outer, sh_channel, sh_inner, TRANSFORM, INTERLEAVED,
                                                    ROWS)
    tl.store(grad_x_ptr + ya, tl.load(grad_y_ptr + ya, mask=mask), mask=mask)
    g = tl.load(grad_y_ptr + yb, mask=mask, other=0.0).to(tl.float32)
    grad_z, grad_r, grad_t = _gradients(g, grad_logdet_ptr, x_ptr, h_ptr, o, xb, r_off, t_off, mask, TRANSFORM,
                                        REVERSE)
    out_type = grad_x_ptr.dtype.element_ty
    if TRANSFORM != 2:
        tl.store(grad_h_ptr + gr, grad_r.to(out_type), mask=mask)
    tl.store(grad_x_ptr + yb, grad_z.to(out_type), mask=mask)
    tl.store(grad_h_ptr + gt, grad_t.to(out_type), mask=mask)


@triton.jit
def _checkerboard_elements(blocks_per_sample, channels, inner, width, sx_outer, sx_channel, sx_inner, sh_outer,
                           sh_channel, sh_inner, TRANSFORM: tl.constexpr, ODD: tl.constexpr, BLOCK: tl.constexpr):
    """The program's elements m = c * inner + p of sample o's x (int32, as in _offsets): the program id, o,
    the mask; offsets of x, r, t (strided), of y (contiguous), of r, t in a contiguous h (additive: h is t
    alone); and whether the element is in x_b."""
    pid, o, m, mask = _program_elements(blocks_per_sample, channels, inner, BLOCK)
    c = m // inner
    p = m - c * inner
    i = p // width
    in_b = ((i + (p - i * width) + ODD) % 2) == 1
    c = c.to(tl.int64)
    p = p.to(tl.int64)
    x = o * sx_outer + c * sx_channel + p * sx_inner
    r = o * sh_outer + c * sh_channel + p * sh_inner
    t = r + channels * sh_channel
    y = o * channels * inner + m
    gr = o * 2 * channels * inner + m
    gt = gr + channels * inner
    if TRANSFORM == 2:
        t = r
        gt = y
    return pid, o, mask, x, r, t, y, gr, gt, in_b


@triton.jit
def _checkerboard_forward_kernel(x_ptr, h_ptr, y_ptr, sums_ptr, blocks_per_sample, channels, inner, width,
                                 sx_outer, sx_channel, sx_inner, sh_outer, sh_channel, sh_inner,
                                 TRANSFORM: tl.constexpr, ODD: tl.constexpr, REVERSE: tl.constexpr,
                                 BLOCK: tl.constexpr):
    pid, o, mask, x_off, r_off, t_off, y_off, _, _, in_b = _checkerboard_elements(
        blocks_per_sample, channels, inner, width, sx_outer, sx_channel, sx_inner, sh_outer, sh_channel, sh_inner,
        TRANSFORM, ODD, BLOCK)
    load_b = mask & in_b
    x = tl.load(x_ptr + x_off, mask=mask)
    z = x.to(tl.float32)
    r, t = _load_r_t(h_ptr, r_off, t_off, load_b, TRANSFORM)
    out, log_s = _forward_math(z, r, t, TRANSFORM, REVERSE)
    if TRANSFORM != 2:
        tl.store(sums_ptr + pid, tl.sum(tl.where(load_b, log_s, 0.0), axis=0))
    tl.store(y_ptr + y_off, tl.where(in_b, out.to(y_ptr.dtype.element_ty), x), mask=mask)


@triton.jit
def _checkerboard_backward_kernel(grad_y_ptr, grad_logdet_ptr, x_ptr, h_ptr, grad_x_ptr, grad_h_ptr,
                                  blocks_per_sample, channels, inner, width,
                                  sx_outer, sx_channel, sx_inner, sh_outer, sh_channel, sh_inner,
                                  TRANSFORM: tl.constexpr, ODD: tl.constexpr, REVERSE: tl.constexpr,
                                  BLOCK: tl.constexpr):
    pid, o, mask, x_off, r_off, t_off, y_off, gr, gt, in_b = _checkerboard_elements(
        blocks_per_sample, channels, inner, width, sx_outer, sx_channel, sx_inner, sh_outer, sh_channel, sh_inner,
        TRANSFORM, ODD, BLOCK)
    load_b = mask & in_b
    grad_y = tl.load(grad_y_ptr + y_off, mask=mask)
    grad_z, grad_r, grad_t = _gradients(grad_y.to(tl.float32), grad_logdet_ptr, x_ptr, h_ptr, o, x_off, r_off,
                                        t_off, load_b, TRANSFORM, REVERSE)
    out_type = grad_x_ptr.dtype.element_ty
    if TRANSFORM != 2:
        tl.store(grad_h_ptr + gr, tl.where(in_b, grad_r, 0.0).to(out_type), mask=mask)
    tl.store(grad_x_ptr + y_off, tl.where(in_b, grad_z.to(out_type), grad_y), mask=mask)
    tl.store(grad_h_ptr + gt, tl.where(in_b, grad_t, 0.0).to(out_type), mask=mask)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    """Strides with those of size-1 dimensions normalised (a size-1 dimension is never stepped)."""
    return tuple(0 if size == 1 else stride for size, stride in zip(t.shape, t.stride()))


def _is_rows(t: torch.Tensor, strides: tuple[int, int, int]) -> bool:
    """Element (o, c, i) at o * outer_stride + c * inner + i (normalised strides: see _strides).

    A channel stride of 0 qualifies only where the normalisation made it (one channel): a tensor
    expanded along its channels has stride 0 there too, and every channel at the same address.
    """
    _, channel, inner_stride = strides
    channels, inner = t.shape[1], t.shape[2]
    if channels == 1:
        return inner == 1 or inner_stride == 1
    if inner == 1:
        return channel == 1
    return inner_stride == 1 and channel == inner


def _launch(kernel, leading: tuple, x: torch.Tensor, h: torch.Tensor, transform: str, layout: str,
            reverse: bool) -> None:
    if layout in CHECKERBOARD_LAYOUTS:
        _launch_checkerboard(kernel, leading, x, h, transform, layout, reverse)
        return
    outer, channels, inner = x.shape
    half = channels // 2
    if half * inner > 2**31 - BLOCK:  # m = c * inner + i, and its last program's lanes, in int32
        raise ValueError(f"gmk_triton::coupling: C/2 * positions must be below 2^31 - {BLOCK}, "
                         f"got {half * inner}")
    x_strides, h_strides = _strides(x), _strides(h)
    rows = (_is_rows(x, x_strides) and _is_rows(h, h_strides)
            and (transform == "additive" or layout == "halves"))
    blocks_per_sample = triton.cdiv(half * inner, BLOCK)
    with on_device(x):
        kernel[(outer * blocks_per_sample,)](
            *leading, blocks_per_sample, half, inner, *x_strides, *h_strides,
            TRANSFORM=TRANSFORMS.index(transform), INTERLEAVED=layout == "interleaved", REVERSE=reverse,
            ROWS=rows, BLOCK=BLOCK, num_warps=NUM_WARPS)


def _launch_checkerboard(kernel, leading: tuple, x: torch.Tensor, h: torch.Tensor, transform: str, layout: str,
                         reverse: bool) -> None:
    """x, h (outer, C, height, width) as (outer, C, height * width) (a copy where no view exists)."""
    outer, channels, height, width = x.shape
    inner = height * width
    if channels * inner > 2**31 - BLOCK:
        raise ValueError(f"gmk_triton::coupling: C * positions must be below 2^31 - {BLOCK}, "
                         f"got {channels * inner}")
    x3, h3 = x.reshape(outer, channels, inner), h.reshape(outer, h.shape[1], inner)
    blocks_per_sample = triton.cdiv(channels * inner, BLOCK)
    with on_device(x):
        kernel[(outer * blocks_per_sample,)](
            *leading[:-4], x3, h3, *leading[-2:], blocks_per_sample, channels, inner, width,
            *_strides(x3), *_strides(h3), TRANSFORM=TRANSFORMS.index(transform),
            ODD=int(layout == "checkerboard_odd"), REVERSE=reverse, BLOCK=BLOCK, num_warps=NUM_WARPS)


_KERNELS = {False: (_coupling_forward_kernel, _coupling_backward_kernel),
            True: (_checkerboard_forward_kernel, _checkerboard_backward_kernel)}


def _transformed_elements(x: torch.Tensor, layout: str) -> int:
    """Elements of x_b per sample, or of x for a checkerboard (the kernels' m range)."""
    per_sample = x[0].numel() if x.shape[0] else 0
    return per_sample if layout in CHECKERBOARD_LAYOUTS else per_sample // 2


def coupling(x: torch.Tensor, h: torch.Tensor, transform: str, layout: str,
             reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    outer = x.shape[0]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    blocks_per_sample = triton.cdiv(_transformed_elements(x, layout), BLOCK)
    if transform == "additive" or x.numel() == 0:
        sums = torch.zeros(outer, 1, dtype=torch.float32, device=x.device)
    else:
        sums = torch.empty(outer, blocks_per_sample, dtype=torch.float32, device=x.device)
    if x.numel() > 0:
        forward_kernel = _KERNELS[layout in CHECKERBOARD_LAYOUTS][0]
        _launch(forward_kernel, (x, h, y, sums), x, h, transform, layout, reverse)
    logdet = sums.sum(dim=1, dtype=torch.float64).float()  # the blocks' float32 sums added in float64, as on CUDA
    return y, -logdet if reverse else logdet


def coupling_backward(grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor, h: torch.Tensor,
                      transform: str, layout: str, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    grad_h = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    if x.numel() > 0:
        leading = (grad_y.contiguous(), grad_logdet.contiguous(), x, h, grad_x, grad_h)
        backward_kernel = _KERNELS[layout in CHECKERBOARD_LAYOUTS][1]
        _launch(backward_kernel, leading, x, h, transform, layout, reverse)
    return grad_x, grad_h
