"""Triton kernels of WaveNet's dilated causal convolution and residual layer and their launchers: the ops
gmk_triton::{causal_conv1d, wavenet_layer}{,_backward}, declared in ops/causal_conv.py.

Implicit GEMMs over the k taps, accumulated in float32 with ``tl.dot``; the zero padding is a masked
load (t - shift < 0), never stored:
  forward  y[n, o, t]  = b[o] + Σ_j Σ_i W[o, i, j] x[n, i, t - s_j]      s_j = (k-1-j)·d   (sign -1)
  grad_x   gx[n, i, t] = Σ_j Σ_o W[o, i, j] gy[n, o, t + s_j]            (the mirrored taps, sign +1)
  grad_W   gW[o, i, j] = Σ_n Σ_t gy[n, o, t] x[n, i, t - s_j]            (split over time, summed in float32)
The first two are one kernel, ``_conv_kernel``, which also carries the layer's epilogues:
  GATE      two accumulators per tile, rows c and c + R of the convolution; adds the bias and cond
            (through strides: global conditioning is a stride-0 view) and stores z = tanh(a) σ(b)
  RESIDUAL  acc_scale · (acc + b) + res_scale · res: the residual 1x1 (k = 1) on z, and grad_x's residual path
The layer's forward: for R <= 128 one launch of ``_layer_kernel``, whose programs hold z for all R gate
rows of their time steps in registers and run both 1x1s on it (neither h nor z is stored); for larger R
three launches of ``_conv_kernel``: z, then the residual and the skip 1x1s on z. Its backward,
``_layer_grad_h_kernel``, recomputes h tile by tile and writes grad_h and z in one pass (the 1x1s'
transposed GEMMs and the gate's derivative fused); grad_x is then the mirrored convolution of grad_h with
the residual gradient added in its epilogue, and the weights' gradients GEMMs over (N, T).

Precision: float16 and bfloat16 multiply on tensor cores in their own type; float32 in TF32 when
``torch.backends.cudnn.allow_tf32`` is set (F.conv1d's default), else in full float32. Under the
interpreter (CPU tests) every tile is cast to float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreted
from ._checks import indexable_in_32_bits
from ._common import mma, on_device, parallelism, precision, tanh

PLAIN, GATE, RESIDUAL = 0, 1, 2
BLOCK_T = 64


# --- kernels -------------------------------------------------------------------------------------

@triton.jit
def _tap_shift(j, K, dilation, T):
    """(K-1-j)·dilation in 64 bits (the ops check that (K-1)·dilation fits), capped at T: the tap then
    reads only the zeros before the start, and t ± shift stays within [-T, 2T) (gmk/causal_conv.h)."""
    return tl.minimum(tl.cast(K - 1 - j, tl.int64) * dilation, T)


@triton.jit
def _conv_tile(in_base, w_ptr, half, C_in, T, K, dilation, sign, offs_o, o_ok, offs_t, s_in_c, s_in_t,
               s_w_o, s_w_i, s_w_j, TWO: tl.constexpr, BO: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """Σ_j Σ_i w[o, i, j] in[i, t + sign·s_j] for a (BO × BT) tile; TWO: also for the rows o + half."""
    offs_k = tl.arange(0, BK)
    acc = tl.zeros((BO, BT), dtype=tl.float32)
    acc_b = tl.zeros((BO, BT), dtype=tl.float32)
    for j in range(K):
        ts = offs_t + sign * _tap_shift(j, K, dilation, T)
        t_ok = (ts >= 0) & (ts < T)
        for i0 in range(0, C_in, BK):
            ik = i0 + offs_k
            k_ok = ik < C_in
            x = tl.load(in_base + ik[:, None] * s_in_c + ts[None, :] * s_in_t,
                        mask=k_ok[:, None] & t_ok[None, :], other=0.0)
            w_offs = offs_o[:, None] * s_w_o + ik[None, :] * s_w_i + j * s_w_j
            w = tl.load(w_ptr + w_offs, mask=o_ok[:, None] & k_ok[None, :], other=0.0)
            acc = mma(w, x, acc, PRECISION, INTERPRETED)
            if TWO:
                w_b = tl.load(w_ptr + half * s_w_o + w_offs, mask=o_ok[:, None] & k_ok[None, :], other=0.0)
                acc_b = mma(w_b, x, acc_b, PRECISION, INTERPRETED)
    return acc, acc_b


@triton.jit
def _bias(bias_ptr, s_bias, offs, ok):
    """bias[offs] through its stride (a strided or expanded view), as a float32 column."""
    return tl.load(bias_ptr + offs * s_bias, mask=ok, other=0.0).to(tl.float32)[:, None]


@triton.jit
def _gate_inputs(acc_a, acc_b, bias_ptr, s_bias, cond_ptr, n, half, offs_o, o_ok, offs_t, mask,
                 s_cond_n, s_cond_c, s_cond_t, HAS_BIAS: tl.constexpr, HAS_COND: tl.constexpr):
    """a, b = the halves of conv + bias + cond for rows offs_o (a) and offs_o + half (b)."""
    if HAS_BIAS:
        acc_a += _bias(bias_ptr, s_bias, offs_o, o_ok)
        acc_b += _bias(bias_ptr, s_bias, half + offs_o, o_ok)
    if HAS_COND:
        c_offs = n * s_cond_n + offs_o[:, None] * s_cond_c + offs_t[None, :] * s_cond_t
        acc_a += tl.load(cond_ptr + c_offs, mask=mask, other=0.0).to(tl.float32)
        acc_b += tl.load(cond_ptr + half * s_cond_c + c_offs, mask=mask, other=0.0).to(tl.float32)
    return acc_a, acc_b


@triton.jit
def _sigmoid_pair(v):
    """σ(v) and 1 - σ(v), each to full relative precision (gmk/gated.h's sigmoid_pair)."""
    e = tl.exp(-tl.abs(v))
    p = 1.0 / (1.0 + e)
    q = e * p
    return tl.where(v >= 0, p, q), tl.where(v >= 0, q, p)


@triton.jit
def _conv_kernel(in_ptr, w_ptr, bias_ptr, cond_ptr, res_ptr, out_ptr,
                 C_in, C_out, T, K, dilation, sign, half, acc_scale, res_scale,
                 s_in_n, s_in_c, s_in_t, s_w_o, s_w_i, s_w_j, s_bias,
                 s_cond_n, s_cond_c, s_cond_t, s_res_n, s_res_c, s_res_t,
                 EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_COND: tl.constexpr,
                 BO: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """out[n, o, t] for a (BO × BT) tile; GATE: rows o and o + half of the weight, out has C_out = half
    rows."""
    n = tl.program_id(2).to(tl.int64)
    offs_o = tl.program_id(1) * BO + tl.arange(0, BO)
    offs_t = tl.program_id(0) * BT + tl.arange(0, BT)
    o_ok = offs_o < C_out
    mask = o_ok[:, None] & (offs_t < T)[None, :]
    acc, acc_b = _conv_tile(in_ptr + n * s_in_n, w_ptr, half, C_in, T, K, dilation, sign, offs_o, o_ok,
                            offs_t, s_in_c, s_in_t, s_w_o, s_w_i, s_w_j, EPILOGUE == 1, BO, BT, BK,
                            PRECISION, INTERPRETED)
    if EPILOGUE == 1:  # z = tanh(a) σ(b), a and b the halves of conv + bias + cond
        a, b = _gate_inputs(acc, acc_b, bias_ptr, s_bias, cond_ptr, n, half, offs_o, o_ok, offs_t, mask,
                            s_cond_n, s_cond_c, s_cond_t, HAS_BIAS, HAS_COND)
        acc = tanh(a, INTERPRETED) * tl.sigmoid(b)
    else:
        if HAS_BIAS:
            acc += _bias(bias_ptr, s_bias, offs_o, o_ok)
    if EPILOGUE == 2:  # a residual connection: acc_scale · (acc + bias) + res_scale · res
        r_offs = n * s_res_n + offs_o[:, None] * s_res_c + offs_t[None, :] * s_res_t
        acc = acc * acc_scale + tl.load(res_ptr + r_offs, mask=mask, other=0.0).to(tl.float32) * res_scale
    out_offs = (n * C_out + offs_o[:, None]) * T + offs_t[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _transposed_1x1(acc, w_ptr, s_w_o, s_w_i, g_ptr, n, rows, T, offs_c, c_ok, offs_t, t_ok,
                    BK: tl.constexpr, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """acc + Wᵀ g on a (channels c × time steps t) tile: W (rows, R) read as A[c, o] = W[o, c],
    g (N, rows, T) contiguous, BK rows a step."""
    offs_k = tl.arange(0, BK)
    for o0 in range(0, rows, BK):
        ok = o0 + offs_k
        w = tl.load(w_ptr + ok[None, :] * s_w_o + offs_c[:, None] * s_w_i,
                    mask=c_ok[:, None] & (ok < rows)[None, :], other=0.0)
        g = tl.load(g_ptr + (n * rows + ok[:, None]) * T + offs_t[None, :],
                    mask=(ok < rows)[:, None] & t_ok[None, :], other=0.0)
        acc = mma(w, g, acc, PRECISION, INTERPRETED)
    return acc


@triton.jit
def _layer_grad_h_kernel(x_ptr, w_ptr, bias_ptr, cond_ptr, g_res_ptr, g_skip_ptr, w_res_ptr, w_skip_ptr,
                         grad_h_ptr, z_ptr, R, S, T, K, dilation, scale,
                         s_x_n, s_x_c, s_x_t, s_w_o, s_w_i, s_w_j, s_bias, s_cond_n, s_cond_c, s_cond_t,
                         s_wr_o, s_wr_i, s_ws_o, s_ws_i,
                         HAS_BIAS: tl.constexpr, HAS_COND: tl.constexpr,
                         BO: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                         PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """The layer's backward up to grad_h, for gate rows (c, c + R) of a (BO × BT) tile, in one pass:
    h recomputed (the convolution as in the forward), grad_z = scale·W_resᵀ g_res + W_skipᵀ g_skip as
    two more GEMMs, then the gate's derivative; writes grad_h (N, 2R, T) and z (N, R, T)."""
    n = tl.program_id(2).to(tl.int64)
    offs_c = tl.program_id(1) * BO + tl.arange(0, BO)
    offs_t = tl.program_id(0) * BT + tl.arange(0, BT)
    c_ok, t_ok = offs_c < R, offs_t < T
    mask = c_ok[:, None] & t_ok[None, :]
    acc_a, acc_b = _conv_tile(x_ptr + n * s_x_n, w_ptr, R, R, T, K, dilation, -1, offs_c, c_ok, offs_t,
                              s_x_c, s_x_t, s_w_o, s_w_i, s_w_j, True, BO, BT, BK, PRECISION, INTERPRETED)
    a, b = _gate_inputs(acc_a, acc_b, bias_ptr, s_bias, cond_ptr, n, R, offs_c, c_ok, offs_t, mask,
                        s_cond_n, s_cond_c, s_cond_t, HAS_BIAS, HAS_COND)
    grad_z = tl.zeros((BO, BT), dtype=tl.float32)
    grad_z = scale * _transposed_1x1(grad_z, w_res_ptr, s_wr_o, s_wr_i, g_res_ptr, n, R, T, offs_c, c_ok,
                                     offs_t, t_ok, BK, PRECISION, INTERPRETED)
    grad_z = _transposed_1x1(grad_z, w_skip_ptr, s_ws_o, s_ws_i, g_skip_ptr, n, S, T, offs_c, c_ok, offs_t,
                             t_ok, BK, PRECISION, INTERPRETED)
    f = tanh(a, INTERPRETED)
    s, one_minus_s = _sigmoid_pair(b)
    out_type = grad_h_ptr.dtype.element_ty
    h_offs = (n * 2 * R + offs_c[:, None]) * T + offs_t[None, :]
    tl.store(grad_h_ptr + h_offs, (grad_z * (1.0 - f * f) * s).to(out_type), mask=mask)
    tl.store(grad_h_ptr + R * T + h_offs, (grad_z * f * s * one_minus_s).to(out_type), mask=mask)
    tl.store(z_ptr + (n * R + offs_c[:, None]) * T + offs_t[None, :], (f * s).to(out_type), mask=mask)


@triton.jit
def _one_by_one_out(z, w_ptr, b_ptr, s_b, res_ptr, out_ptr, n, rows, R, T, s_w_o, s_w_i, s_res_c, s_res_t,
                    scale,
                    offs_c, offs_t, HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr, BO: tl.constexpr,
                    BT: tl.constexpr, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """out[n, o, t] = W z (+ bias), or (res + W z + bias) · scale, for every o < rows, BO rows a step."""
    t_ok = offs_t < T
    for o0 in range(0, rows, BO):
        offs_o = o0 + tl.arange(0, BO)
        o_ok = offs_o < rows
        w = tl.load(w_ptr + offs_o[:, None] * s_w_o + offs_c[None, :] * s_w_i,
                    mask=o_ok[:, None] & (offs_c < R)[None, :], other=0.0)
        acc = mma(w, z, tl.zeros((BO, BT), dtype=tl.float32), PRECISION, INTERPRETED)
        if HAS_BIAS:
            acc += _bias(b_ptr, s_b, offs_o, o_ok)
        mask = o_ok[:, None] & t_ok[None, :]
        if RESIDUAL:
            x = tl.load(res_ptr + offs_o[:, None] * s_res_c + offs_t[None, :] * s_res_t, mask=mask, other=0.0)
            acc = (acc + x.to(tl.float32)) * scale
        tl.store(out_ptr + (n * rows + offs_o[:, None]) * T + offs_t[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=mask)


@triton.jit
def _layer_kernel(x_ptr, w_ptr, bias_ptr, cond_ptr, w_res_ptr, b_res_ptr, w_skip_ptr, b_skip_ptr, x_next_ptr,
                  skip_ptr, R, S, T, K, dilation, scale,
                  s_x_n, s_x_c, s_x_t, s_w_o, s_w_i, s_w_j, s_cond_n, s_cond_c, s_cond_t,
                  s_wr_o, s_wr_i, s_ws_o, s_ws_i, s_bias, s_res_bias, s_skip_bias,
                  HAS_BIAS: tl.constexpr, HAS_COND: tl.constexpr, HAS_RES_BIAS: tl.constexpr,
                  HAS_SKIP_BIAS: tl.constexpr, R_PAD: tl.constexpr, BO: tl.constexpr, BT: tl.constexpr,
                  BK: tl.constexpr, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """The whole layer for BT time steps of one sample, R <= R_PAD: z for every gate row stays in registers
    and feeds the residual and skip 1x1s as tl.dot; neither h nor z is stored."""
    n = tl.program_id(1).to(tl.int64)
    offs_c = tl.arange(0, R_PAD)
    offs_t = tl.program_id(0) * BT + tl.arange(0, BT)
    c_ok = offs_c < R
    mask = c_ok[:, None] & (offs_t < T)[None, :]
    x_base = x_ptr + n * s_x_n
    acc_a, acc_b = _conv_tile(x_base, w_ptr, R, R, T, K, dilation, -1, offs_c, c_ok, offs_t, s_x_c, s_x_t,
                              s_w_o, s_w_i, s_w_j, True, R_PAD, BT, BK, PRECISION, INTERPRETED)
    a, b = _gate_inputs(acc_a, acc_b, bias_ptr, s_bias, cond_ptr, n, R, offs_c, c_ok, offs_t, mask,
                        s_cond_n, s_cond_c, s_cond_t, HAS_BIAS, HAS_COND)
    z = tanh(a, INTERPRETED) * tl.sigmoid(b)
    # Rows past R hold 0 · x of the weight's padding, NaN at an inf x: zeroed, as the 1x1s' padded
    # columns (zero weights) multiply them too.
    z = tl.where(c_ok[:, None], z, 0.0).to(x_ptr.dtype.element_ty)  # the 1x1s' operand type
    _one_by_one_out(z, w_res_ptr, b_res_ptr, s_res_bias, x_base, x_next_ptr, n, R, R, T, s_wr_o, s_wr_i, s_x_c,
                    s_x_t, scale,
                    offs_c, offs_t, HAS_RES_BIAS, True, BO, BT, PRECISION, INTERPRETED)
    _one_by_one_out(z, w_skip_ptr, b_skip_ptr, s_skip_bias, x_base, skip_ptr, n, S, R, T, s_ws_o, s_ws_i, s_x_c,
                    s_x_t, 1.0,
                    offs_c, offs_t, HAS_SKIP_BIAS, False, BO, BT, PRECISION, INTERPRETED)


@triton.jit
def _weight_grad_kernel(g_ptr, x_ptr, partial_ptr, N, C_out, C_in, T, K, dilation, t_per_split,
                        s_x_n, s_x_c, s_x_t,
                        BO: tl.constexpr, BI: tl.constexpr, BT: tl.constexpr,
                        PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """partial[split, o, i, j] = Σ_n Σ_{t in split} gy[n, o, t] x[n, i, t - s_j], a (BO × BI) tile."""
    offs_o = tl.program_id(0) * BO + tl.arange(0, BO)
    offs_i = tl.program_id(1) * BI + tl.arange(0, BI)
    j = tl.program_id(2) % K
    split = tl.program_id(2) // K
    shift = _tap_shift(j, K, dilation, T)
    o_ok, i_ok = offs_o < C_out, offs_i < C_in
    t_begin = split * t_per_split
    t_end = tl.minimum(t_begin + t_per_split, T)
    acc = tl.zeros((BO, BI), dtype=tl.float32)
    g_base, x_base = g_ptr, x_ptr  # sample n's; pointers step in 64 bits
    for n in range(N):
        for t0 in range(t_begin, t_end, BT):
            offs_t = t0 + tl.arange(0, BT)
            t_ok = offs_t < t_end
            g = tl.load(g_base + offs_o[:, None] * T + offs_t[None, :], mask=o_ok[:, None] & t_ok[None, :],
                        other=0.0)
            ts = offs_t - shift
            x = tl.load(x_base + offs_i[None, :] * s_x_c + ts[:, None] * s_x_t,
                        mask=i_ok[None, :] & (t_ok & (ts >= 0))[:, None], other=0.0)
            acc = mma(g, x, acc, PRECISION, INTERPRETED)
        g_base += C_out * T
        x_base += s_x_n
    offs = ((split * C_out + offs_o[:, None]) * C_in + offs_i[None, :]) * K + j
    tl.store(partial_ptr + offs, acc, mask=o_ok[:, None] & i_ok[None, :])


# --- launchers -----------------------------------------------------------------------------------

def _strides(t: torch.Tensor | None) -> tuple[int, int, int]:
    """Strides of a 3-D tensor, 0 for size-1 dimensions (never stepped over)."""
    if t is None:
        return (0, 0, 0)
    return tuple(0 if size == 1 else stride for size, stride in zip(t.shape, t.stride(), strict=True))


def _stride(bias: torch.Tensor | None) -> int:
    """The stride of a 1-D bias (a strided or expanded view is read in place)."""
    return 0 if bias is None else bias.stride(0)


def _one_by_one(weight: torch.Tensor) -> tuple[int, int, int]:
    """The strides of a 1x1's (C_out, C_in) weight seen as (C_out, C_in, 1)."""
    return weight.stride(0), weight.stride(1), 0


def _configs(accumulators: int) -> list[triton.Config]:
    """(BO output channels × BT time steps) tiles, BK channels a step; the gated kernels keep two or
    three accumulators per tile, so take smaller ones. Under the interpreter one small config, so that
    the CPU tests cross tile edges. Untuned: not yet run on a GPU."""
    if triton_interpreted():
        return [triton.Config({"BO": 16, "BT": 32, "BK": 16})]
    if accumulators == 1:
        return [
            triton.Config({"BO": 128, "BT": 128, "BK": 32}, num_warps=8, num_stages=3),
            triton.Config({"BO": 64, "BT": 128, "BK": 32}, num_warps=4, num_stages=4),
            triton.Config({"BO": 128, "BT": 64, "BK": 64}, num_warps=4, num_stages=4),
            triton.Config({"BO": 64, "BT": 64, "BK": 64}, num_warps=4, num_stages=4),
        ]
    return [
        triton.Config({"BO": 64, "BT": 128, "BK": 32}, num_warps=8, num_stages=3),
        triton.Config({"BO": 64, "BT": 64, "BK": 32}, num_warps=4, num_stages=4),
        triton.Config({"BO": 32, "BT": 128, "BK": 32}, num_warps=4, num_stages=4),
        triton.Config({"BO": 32, "BT": 64, "BK": 64}, num_warps=4, num_stages=3),
    ]


def _layer_configs() -> list[triton.Config]:
    """The one-kernel layer keeps a (R_PAD × BT) tile of a, b and z, then (BO × BT) outputs at a time."""
    if triton_interpreted():
        return [triton.Config({"BO": 16, "BT": 32, "BK": 16})]
    return [
        triton.Config({"BO": 64, "BT": 32, "BK": 32}, num_warps=4, num_stages=3),
        triton.Config({"BO": 64, "BT": 64, "BK": 32}, num_warps=8, num_stages=3),
        triton.Config({"BO": 128, "BT": 32, "BK": 32}, num_warps=8, num_stages=3),
        triton.Config({"BO": 32, "BT": 64, "BK": 32}, num_warps=4, num_stages=3),
    ]


# R up to this takes the one-kernel layer (z in registers); more, the three launches with z in memory.
MAX_FUSED_RESIDUAL = 128
_CONV_KEY = ["C_in", "C_out", "T", "K", "EPILOGUE", "HAS_COND"]
_conv_tuned = triton.autotune(_configs(1), key=_CONV_KEY)(_conv_kernel)
_gated_tuned = triton.autotune(_configs(2), key=_CONV_KEY)(_conv_kernel)
_grad_h_tuned = triton.autotune(_configs(3), key=["R", "S", "T", "K", "HAS_COND"])(_layer_grad_h_kernel)
_layer_tuned = triton.autotune(_layer_configs(), key=["R", "S", "T", "K", "HAS_COND", "R_PAD"])(_layer_kernel)


def _tiles(meta, t: int, rows: int, n: int) -> tuple[int, int, int]:
    return triton.cdiv(t, meta["BT"]), triton.cdiv(rows, meta["BO"]), n


def _conv(inp, weight, w_strides, bias, out, kernel_size, dilation, sign, *, epilogue=PLAIN, half=0,
          cond=None, res=None, acc_scale=1.0, res_scale=1.0):
    """out (N, C_out, T) contiguous = the convolution of inp with weight (C_out, C_in, k) seen through
    w_strides, and the epilogue."""
    n, c_in, t = inp.shape
    c_out = out.shape[1]
    if out.numel() == 0:
        return
    kernel = _gated_tuned if epilogue == GATE else _conv_tuned
    with on_device(inp):
        kernel[lambda meta: _tiles(meta, t, c_out, n)](
            inp, weight, inp if bias is None else bias, inp if cond is None else cond,
            inp if res is None else res, out, c_in, c_out, t, kernel_size, dilation, sign, half, acc_scale,
            res_scale,
            *_strides(inp), *w_strides, _stride(bias), *_strides(cond), *_strides(res),
            EPILOGUE=epilogue, HAS_BIAS=bias is not None, HAS_COND=cond is not None,
            PRECISION=precision(inp.dtype), INTERPRETED=triton_interpreted())


def _weight_grad(grad_out, x, weight, dilation, scale=1.0):
    """scale · Σ_n Σ_t grad_out[n, o, t] x[n, i, t - s_j] in weight's shape and dtype (grad_out
    contiguous)."""
    n, c_in, t = x.shape
    c_out, _, k = weight.shape
    if weight.numel() == 0:
        return torch.zeros_like(weight)
    bo = bi = 16 if triton_interpreted() else 64 if min(c_out, c_in) > 32 else 32
    programs = triton.cdiv(c_out, bo) * triton.cdiv(c_in, bi) * k
    blocks = triton.cdiv(max(t, 1), BLOCK_T)
    splits = max(1, min(triton.cdiv(parallelism(), programs), blocks))
    t_per_split = triton.cdiv(blocks, splits) * BLOCK_T
    splits = triton.cdiv(max(t, 1), t_per_split)
    partial = torch.zeros((splits, c_out, c_in, k), dtype=torch.float32, device=x.device)
    if t > 0 and n > 0:
        with on_device(x):
            _weight_grad_kernel[(triton.cdiv(c_out, bo), triton.cdiv(c_in, bi), k * splits)](
                grad_out, x, partial, n, c_out, c_in, t, k, dilation, t_per_split, *_strides(x),
                BO=bo, BI=bi, BT=BLOCK_T, PRECISION=precision(x.dtype), INTERPRETED=triton_interpreted(),
                num_warps=4)
    return (partial.sum(0) * scale).to(weight.dtype)


# --- the ops (declared, with their checks, fakes and autograd, in gmkernels/ops/causal_conv.py) -----------------------------------

def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  dilation: int) -> torch.Tensor:
    weight, bias = indexable_in_32_bits(weight), indexable_in_32_bits(bias)
    y = x.new_empty(x.shape[0], weight.shape[0], x.shape[2])
    _conv(x, weight, weight.stride(), bias, y, weight.shape[2], dilation, -1)
    return y


def causal_conv1d_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dilation: int,
                           output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    want_x, want_weight, want_bias = output_mask
    grad_out, weight = grad_out.contiguous(), indexable_in_32_bits(weight)
    grad_x = grad_weight = grad_bias = None
    if want_x:  # W seen as (Cin, Cout, k): swap the first two strides
        grad_x = x.new_empty(x.shape)
        s_o, s_i, s_j = weight.stride()
        _conv(grad_out, weight, (s_i, s_o, s_j), None, grad_x, weight.shape[2], dilation, +1)
    if want_weight:
        grad_weight = _weight_grad(grad_out, x, weight, dilation)
    if want_bias:
        grad_bias = grad_out.sum((0, 2), dtype=torch.float32).to(weight.dtype)
    return grad_x, grad_weight, grad_bias


def wavenet_layer(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
                  res_weight: torch.Tensor, res_bias: torch.Tensor | None, skip_weight: torch.Tensor,
                  skip_bias: torch.Tensor | None, cond: torch.Tensor | None, dilation: int,
                  residual_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch for R <= MAX_FUSED_RESIDUAL (neither h nor z stored); else z = gate(conv + bias + cond)
    in one launch (h never stored), then the two 1x1s on z."""
    conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias = map(
        indexable_in_32_bits, (conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias))
    n, r, t = x.shape
    if r == 0:  # z has no channel: skip is skip_bias alone
        skip = x.new_zeros(n, skip_weight.shape[0], t)
        return x.new_empty(n, 0, t), skip if skip_bias is None else skip.add_(skip_bias[:, None])
    if r <= MAX_FUSED_RESIDUAL:
        return _fused_layer(x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation,
                            residual_scale)
    z = x.new_empty(n, r, t)
    _conv(x, conv_weight, conv_weight.stride(), conv_bias, z, conv_weight.shape[2], dilation, -1,
          epilogue=GATE, half=r, cond=cond)
    x_next, skip = x.new_empty(n, r, t), x.new_empty(n, skip_weight.shape[0], t)
    _conv(z, res_weight, _one_by_one(res_weight), res_bias, x_next, 1, 1, -1, epilogue=RESIDUAL, res=x,
          acc_scale=residual_scale, res_scale=residual_scale)
    _conv(z, skip_weight, _one_by_one(skip_weight), skip_bias, skip, 1, 1, -1)
    return x_next, skip


def _fused_layer(x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation,
                 residual_scale):
    n, r, t = x.shape
    s = skip_weight.shape[0]
    x_next, skip = x.new_empty(n, r, t), x.new_empty(n, s, t)
    if x_next.numel() == 0:
        return x_next, skip
    with on_device(x):
        _layer_tuned[lambda meta: (triton.cdiv(t, meta["BT"]), n)](
            x, conv_weight, x if conv_bias is None else conv_bias, x if cond is None else cond,
            res_weight, x if res_bias is None else res_bias, skip_weight, x if skip_bias is None else skip_bias,
            x_next, skip, r, s, t, conv_weight.shape[2], dilation, residual_scale,
            *_strides(x), *conv_weight.stride(), *_strides(cond), *res_weight.stride(), *skip_weight.stride(),
            _stride(conv_bias), _stride(res_bias), _stride(skip_bias),
            HAS_BIAS=conv_bias is not None, HAS_COND=cond is not None, HAS_RES_BIAS=res_bias is not None,
            HAS_SKIP_BIAS=skip_bias is not None, R_PAD=max(16, triton.next_power_of_2(r)),
            PRECISION=precision(x.dtype), INTERPRETED=triton_interpreted())
    return x_next, skip


_EightTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                      torch.Tensor, torch.Tensor]


def wavenet_layer_backward(grad_x_next: torch.Tensor, grad_skip: torch.Tensor, x: torch.Tensor,
                           conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
                           res_weight: torch.Tensor, skip_weight: torch.Tensor, cond: torch.Tensor | None,
                           dilation: int, residual_scale: float, output_mask: list[bool]) -> _EightTensors:
    """Gradients of (x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond), those
    output_mask asks for (None otherwise). One pass recomputes h and writes grad_h and z (h itself is never
    stored); then grad_x = the mirrored convolution of grad_h + residual_scale · grad_x_next (one launch),
    and the weights' gradients as GEMMs over (N, T) with float32 sums."""
    conv_weight, conv_bias, res_weight, skip_weight = map(
        indexable_in_32_bits, (conv_weight, conv_bias, res_weight, skip_weight))
    n, r, t = x.shape
    s, k = skip_weight.shape[0], conv_weight.shape[2]
    g_res, g_skip = grad_x_next.contiguous(), grad_skip.contiguous()
    grad_h, z = x.new_empty(n, 2 * r, t), x.new_empty(n, r, t)
    if grad_h.numel():
        with on_device(x):
            _grad_h_tuned[lambda meta: _tiles(meta, t, r, n)](
                x, conv_weight, x if conv_bias is None else conv_bias, x if cond is None else cond,
                g_res, g_skip, res_weight, skip_weight, grad_h, z, r, s, t, k, dilation, residual_scale,
                *_strides(x), *conv_weight.stride(), _stride(conv_bias), *_strides(cond),
                *res_weight.stride(), *skip_weight.stride(),
                HAS_BIAS=conv_bias is not None, HAS_COND=cond is not None, PRECISION=precision(x.dtype),
                INTERPRETED=triton_interpreted())
    want = list(output_mask)
    grads = [None] * 8
    if want[0]:
        grads[0] = x.new_empty(n, r, t)
        s_o, s_i, s_j = conv_weight.stride()
        _conv(grad_h, conv_weight, (s_i, s_o, s_j), None, grads[0], k, dilation, +1, epilogue=RESIDUAL,
              res=g_res, acc_scale=1.0, res_scale=residual_scale)
    if want[1]:
        grads[1] = _weight_grad(grad_h, x, conv_weight, dilation)
    if want[2] and conv_bias is not None:
        grads[2] = grad_h.sum((0, 2), dtype=torch.float32).to(x.dtype)
    if want[3]:  # a 1x1 is a convolution with k = 1: the same float32 GEMM over (N, T)
        grads[3] = _weight_grad(g_res, z, res_weight[:, :, None], 1, residual_scale)[:, :, 0]
    if want[4]:
        grads[4] = (g_res.sum((0, 2), dtype=torch.float32) * residual_scale).to(x.dtype)
    if want[5]:
        grads[5] = _weight_grad(g_skip, z, skip_weight[:, :, None], 1)[:, :, 0]
    if want[6]:
        grads[6] = g_skip.sum((0, 2), dtype=torch.float32).to(x.dtype)
    if want[7] and cond is not None:
        grads[7] = grad_h
    return tuple(grads)
