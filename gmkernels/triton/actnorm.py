"""Triton kernels of actnorm and their launchers: the ops gmk_triton::actnorm{,_backward}, declared in
ops/actnorm.py.

The tensors are (N, C, positions) as for the C++ ops, parameters float32. Forward: one program per
BLOCK elements of the contiguous output. Backward: program b works on channel b // parts and the part
b % parts of its N · positions elements, writes the gradient of the input there and one partial sum of
grad_out and of grad_out · in; the partial sums are added here (deterministic, no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import on_device, strides_3d

BLOCK = 1024
NUM_WARPS = 4
ELEMENTS_PER_PART = 2048
MAX_PROGRAMS = 65536


@triton.jit
def _coefficients(bias_ptr, log_scale_ptr, c, REVERSE: tl.constexpr):
    """out = (in + pre_shift) · scale + post_shift: forward (in + b) e^s, reverse in e^-s - b (gmk/actnorm.h:
    not folded into in · e^s + b e^s, which gives inf - inf where e^s overflows)."""
    b = tl.load(bias_ptr + c)
    log_s = tl.load(log_scale_ptr + c)
    if REVERSE:
        pre_shift, scale, post_shift = 0.0, tl.exp(-log_s), -b
    else:
        pre_shift, scale, post_shift = b, tl.exp(log_s), 0.0
    return pre_shift, scale, post_shift


@triton.jit
def _forward_kernel(in_ptr, bias_ptr, log_scale_ptr, out_ptr, total, channels, inner,
                    s_outer, s_channel, s_inner, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < total
    i = e % inner
    row = e // inner
    c = row % channels
    o = row // channels
    pre_shift, scale, post_shift = _coefficients(bias_ptr, log_scale_ptr, c, REVERSE)
    v = tl.load(in_ptr + o * s_outer + c * s_channel + i * s_inner, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + e, ((v + pre_shift) * scale + post_shift).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(grad_out_ptr, in_ptr, bias_ptr, log_scale_ptr, grad_in_ptr, sums_ptr, parts, per_part,
                     count, channels, inner, s_outer, s_channel, s_inner,
                     REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    c = (pid // parts).to(tl.int64)  # c * s_channel may pass 2^31
    begin = (pid % parts).to(tl.int64) * per_part
    _, scale, _ = _coefficients(bias_ptr, log_scale_ptr, c, REVERSE)
    g_acc = tl.zeros((BLOCK,), dtype=tl.float32)
    h_acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, per_part, BLOCK):
        e = begin + start + tl.arange(0, BLOCK)
        mask = (e < count) & (start + tl.arange(0, BLOCK) < per_part)
        o = e // inner
        i = e % inner
        dense = (o * channels + c) * inner + i
        g = tl.load(grad_out_ptr + dense, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(in_ptr + o * s_outer + c * s_channel + i * s_inner, mask=mask, other=0.0).to(tl.float32)
        g_acc += g
        h_acc += g * v
        tl.store(grad_in_ptr + dense, (g * scale).to(grad_in_ptr.dtype.element_ty), mask=mask)
    tl.store(sums_ptr + 2 * pid, tl.sum(g_acc, axis=0))
    tl.store(sums_ptr + 2 * pid + 1, tl.sum(h_acc, axis=0))


def actnorm(x: torch.Tensor, bias: torch.Tensor, log_scale: torch.Tensor, reverse: bool) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        bias, log_scale = bias.contiguous(), log_scale.contiguous()
        with on_device(x):
            _forward_kernel[(triton.cdiv(x.numel(), BLOCK),)](
                x, bias, log_scale, out, x.numel(), x.shape[1], x.shape[2], *strides_3d(x),
                REVERSE=reverse, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out


def actnorm_backward(grad_out: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, log_scale: torch.Tensor,
                     reverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of in, bias, log_scale from G = Σ grad_out, H = Σ grad_out · in per channel:
    forward d/db = e^s G, d/dlog_s = e^s (H + b G); reverse d/db = -G, d/dlog_s = -e^-s H."""
    n, channels, inner = x.shape
    grad_in = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    count = n * inner
    parts = max(1, min(triton.cdiv(count, ELEMENTS_PER_PART), MAX_PROGRAMS // max(channels, 1)))
    sums = torch.zeros(channels, parts, 2, dtype=torch.float32, device=x.device)
    bias, log_scale = bias.contiguous(), log_scale.contiguous()
    if x.numel():
        with on_device(x):
            _backward_kernel[(channels * parts,)](
                grad_out.contiguous(), x, bias, log_scale, grad_in, sums, parts, triton.cdiv(count, parts),
                count, channels, inner, *strides_3d(x), REVERSE=reverse, BLOCK=BLOCK, num_warps=NUM_WARPS)
    g, h = sums.sum(1).unbind(1)
    if reverse:
        return grad_in, -g, -torch.exp(-log_scale) * h
    scale = torch.exp(log_scale)
    return grad_in, scale * g, scale * (h + bias * g)
