"""Triton kernels of bias_act and their launchers, the ops gmk_triton::bias_act{,_backward,_backward2}
(declared, with their checks, in gmkernels/ops/bias_act.py; math: docs/conventions.md, "Bias and activation").

As the C++ kernels: every tensor takes the output's dense layout and is walked in memory order as a
contiguous (outer, channels, inner) array, so the bias index of element m is (m // inner) % channels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreted
from ._common import log1p, on_device, tanh

ACT_CODES = {name: code for code, name in enumerate(
    ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"))}
SMOOTH_FROM = 3  # codes from tanh on are the smooth acts, whose derivatives read x + b
MODE_FORWARD, MODE_BACKWARD, MODE_BACKWARD2 = 0, 1, 2
# constants the kernels read (jit functions see module globals only as tl.constexpr)
SELU_SCALE = tl.constexpr(1.0507009873554804934193349852946)
SELU_ALPHA = tl.constexpr(1.6732632423543772848170429916717)
SOFTPLUS_THRESHOLD = tl.constexpr(20.0)
FIRST_SMOOTH = tl.constexpr(SMOOTH_FROM)
BLOCK = 1024


@triton.jit
def _activate(v, alpha, ACT: tl.constexpr, INTERPRETED: tl.constexpr):
    if ACT == 0:
        a = v
    elif ACT == 1:
        a = tl.where(v < 0.0, 0.0, v)
    elif ACT == 2:
        a = tl.where(v > 0.0, v, v * alpha)
    elif ACT == 3:
        a = tanh(v, INTERPRETED)
    elif ACT == 4:
        a = tl.sigmoid(v)
    elif ACT == 5:
        a = tl.where(v > 0.0, v, tl.exp(tl.where(v > 0.0, 0.0, v)) - 1.0)
    elif ACT == 6:
        a = SELU_SCALE * tl.where(v > 0.0, v, SELU_ALPHA * (tl.exp(tl.where(v > 0.0, 0.0, v)) - 1.0))
    elif ACT == 7:
        a = tl.where(v > SOFTPLUS_THRESHOLD, v, log1p(tl.exp(tl.where(v > SOFTPLUS_THRESHOLD, 0.0, v))))
    else:
        a = v * tl.sigmoid(v)
    return a


@triton.jit
def _derivative(v, ACT: tl.constexpr, INTERPRETED: tl.constexpr):
    """act'(v) of the smooth acts (the lower branch at the kinks, as torch)."""
    if ACT == 3:
        t = tanh(v, INTERPRETED)
        d = 1.0 - t * t
    elif ACT == 4:
        s = tl.sigmoid(v)
        d = s * (1.0 - s)
    elif ACT == 5:
        d = tl.where(v > 0.0, 1.0, tl.exp(tl.where(v > 0.0, 0.0, v)))
    elif ACT == 6:
        d = tl.where(v > 0.0, SELU_SCALE, SELU_SCALE * SELU_ALPHA * tl.exp(tl.where(v > 0.0, 0.0, v)))
    elif ACT == 7:
        d = tl.where(v > SOFTPLUS_THRESHOLD, 1.0, tl.sigmoid(v))
    else:
        s = tl.sigmoid(v)
        d = s * (1.0 + v * (1.0 - s))
    return d


@triton.jit
def _second_derivative(v, ACT: tl.constexpr, INTERPRETED: tl.constexpr):
    if ACT == 3:
        t = tanh(v, INTERPRETED)
        d = -2.0 * t * (1.0 - t * t)
    elif ACT == 4:
        s = tl.sigmoid(v)
        d = s * (1.0 - s) * (1.0 - 2.0 * s)
    elif ACT == 5:  # at the kinks the upper branch (0), as torch's double backward
        d = tl.where(v < 0.0, tl.exp(tl.where(v < 0.0, v, 0.0)), 0.0)
    elif ACT == 6:
        d = tl.where(v < 0.0, SELU_SCALE * SELU_ALPHA * tl.exp(tl.where(v < 0.0, v, 0.0)), 0.0)
    elif ACT == 7:
        s = tl.sigmoid(v)
        d = tl.where(v < SOFTPLUS_THRESHOLD, s * (1.0 - s), 0.0)
    else:
        s = tl.sigmoid(v)
        d = s * (1.0 - s) * (2.0 + v * (1.0 - 2.0 * s))
    return d


@triton.jit
def _masked(value, u, clamp, HAS_CLAMP: tl.constexpr):
    """value where the derivative passes at u (before the clamp) or y (after it): strictly inside; else 0."""
    if HAS_CLAMP:
        value = tl.where((u > -clamp) & (u < clamp), value, 0.0)
    return value


@triton.jit
def _bias_act_kernel(x_ptr, b_ptr, y_ptr, grad_ptr, grad2_ptr, out_ptr, elements, channels, inner,
                     alpha, gain, clamp, ACT: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     READS_Y: tl.constexpr, HAS_CLAMP: tl.constexpr, INTERPRETED: tl.constexpr,
                     BLOCK: tl.constexpr):
    m = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = m < elements
    if READS_Y:
        v = tl.load(y_ptr + m, mask=mask, other=0.0).to(tl.float32)
    else:
        v = tl.load(x_ptr + m, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            v += tl.load(b_ptr + (m // inner) % channels, mask=mask, other=0.0).to(tl.float32)
    if MODE == 0:
        u = gain * _activate(v, alpha, ACT, INTERPRETED)
        if HAS_CLAMP:
            u = tl.where(u < -clamp, -clamp, tl.where(u > clamp, clamp, u))
        out = u
    else:
        g = tl.load(grad_ptr + m, mask=mask, other=0.0).to(tl.float32)
        if READS_Y:  # relu, lrelu or a clamped linear: the slope off the sign of y · gain
            if ACT == 0:
                slope = 1.0
            elif ACT == 1:
                slope = tl.where(v * gain > 0.0, 1.0, 0.0)
            else:
                slope = tl.where(v * gain > 0.0, 1.0, alpha)
            out = _masked(g * gain * slope, v, clamp, HAS_CLAMP)
        elif ACT < FIRST_SMOOTH:  # linear without a clamp
            out = g * gain
        else:
            u = gain * _activate(v, alpha, ACT, INTERPRETED)
            if MODE == 1:
                value = g * gain * _derivative(v, ACT, INTERPRETED)
            else:
                g2 = tl.load(grad2_ptr + m, mask=mask, other=0.0).to(tl.float32)
                value = g2 * g * gain * _second_derivative(v, ACT, INTERPRETED)
            out = _masked(value, u, clamp, HAS_CLAMP)
    tl.store(out_ptr + m, out.to(out_ptr.dtype.element_ty), mask=mask)


def _laid_out_as(t: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor | None:
    """t with out's strides: t itself where they match, else a copy laid out as out."""
    if t is None or t.stride() == out.stride():
        return t
    return torch.empty_like(out).copy_(t)


def _launch(mode: int, out: torch.Tensor, x, b, y, grad, grad2, dim: int, act: str, alpha: float, gain: float,
            clamp: float | None) -> torch.Tensor:
    elements = out.numel()
    if elements == 0:
        return out
    channels, inner = 1, elements
    if b is not None and b.numel() > 1:
        channels, inner = b.numel(), out.stride(dim)
    code = ACT_CODES[act]
    reads_y = y is not None
    if reads_y and clamp is not None:  # a clamped y holds the clamp rounded to the dtype: compare with that
        clamp = float(torch.tensor(clamp, dtype=out.dtype).item())
    x, y, grad, grad2 = (_laid_out_as(t, out) for t in (x, y, grad, grad2))
    with on_device(out):
        _bias_act_kernel[(triton.cdiv(elements, BLOCK),)](
            *(out if t is None else t for t in (x, b, y, grad, grad2)), out, elements, channels, inner,
            float(alpha), float(gain), 0.0 if clamp is None else float(clamp),
            ACT=code, MODE=mode, HAS_BIAS=b is not None, READS_Y=reads_y, HAS_CLAMP=clamp is not None,
            INTERPRETED=triton_interpreted(), BLOCK=BLOCK)
    return out


def bias_act(x, b, dim, act, alpha, gain, clamp):
    out = torch.empty_like(x)
    return _launch(MODE_FORWARD, out, x, None if b is None else b.contiguous(), None, None, None, dim, act, alpha,
                   gain, clamp)


def bias_act_backward(grad, x, b, y, dim, act, alpha, gain, clamp):
    smooth = ACT_CODES[act] >= SMOOTH_FROM
    reads_y = not smooth and (act in ("relu", "lrelu") or clamp is not None)
    ref = x if smooth else y if reads_y else grad
    out = torch.empty_like(ref)
    return _launch(MODE_BACKWARD, out, x if smooth else None, b.contiguous() if smooth and b is not None else None,
                   y if reads_y else None, grad, None, dim, act, alpha, gain, clamp)


def bias_act_backward2(grad2, grad, x, b, dim, act, alpha, gain, clamp):
    out = torch.empty_like(x)
    return _launch(MODE_BACKWARD2, out, x, None if b is None else b.contiguous(), None, grad, grad2, dim, act,
                   alpha, gain, clamp)
