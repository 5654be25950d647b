"""Triton kernels of the discretized logistic mixture and their launchers: the ops
gmk_triton::logistic_mixture_{nll,nll_backward,sample}, declared in ops/logistic_mixture.py.

The tensors are those of the C++ ops: params (N, P, S) in the PixelCNN++ layout (K logits, then per
channel K means, K log-scales and, for C = 3, K coefficients), x (N, C, S), any strides. Each program
takes BLOCK positions s of one sample n, so that its loads of params[n, p, s:s + BLOCK] are contiguous
runs when S is the innermost dimension; it loops over the K components at run time and over the C
channels statically, in float32 registers: nothing of size (N, C, K, S) is ever stored.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreted
from ._common import on_device, tanh

BLOCK = 128
NUM_WARPS = 4
LOG_DELTA_THRESHOLD = tl.constexpr(math.log(1e-5))  # below this bin mass: the bin-centre density
NOISE_FLOOR = tl.constexpr(1e-5)  # uniform noise u is used as 1e-5 + (1 - 2e-5) u


# --- math of one logistic ------------------------------------------------------------------------

@triton.jit
def _softplus(z):
    return tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))


@triton.jit
def _at_least(v, low):
    """max(v, low) that keeps a NaN v NaN (tl.maximum returns the other operand)."""
    return tl.where(v < low, low, v)


@triton.jit
def _one_minus_exp_neg(t):
    """1 - e^-t for t > 0 to full relative precision: below 1/2 its Taylor series, in Horner form."""
    series = 1.0 - t * (1.0 / 8.0)
    series = 1.0 - t * (1.0 / 7.0) * series
    series = 1.0 - t * (1.0 / 6.0) * series
    series = 1.0 - t * (1.0 / 5.0) * series
    series = 1.0 - t * (1.0 / 4.0) * series
    series = 1.0 - t * (1.0 / 3.0) * series
    series = t * (1.0 - t * (1.0 / 2.0) * series)
    return tl.where(t < 0.5, series, 1.0 - tl.exp(-t))


@triton.jit
def _log_prob_in_bin(x, mu, log_scale, half_bin, log_half_bins):
    """L = log P(bin of x) under the logistic (mu, s = e^log_scale), -dL/dmu and -dL/dlog_scale.

    z = (x - mu ± half_bin) / s, so dL/dmu = -(dL/dz+ + dL/dz-) / s and dL/dlog_scale =
    -(z+ dL/dz+ + z- dL/dz-): each branch below gives a = s (-dL/dmu) and b = -dL/dlog_scale.
    """
    inv_s = tl.exp(-log_scale)
    centred = x - mu
    z_plus = inv_s * (centred + half_bin)
    z_minus = inv_s * (centred - half_bin)
    z_mid = inv_s * centred
    log_cdf_plus = -_softplus(-z_plus)  # lowest bin: log σ(z+)
    log_sf_minus = -_softplus(z_minus)  # highest bin: log(1 - σ(z-))
    sf_plus = tl.sigmoid(-z_plus)
    cdf_minus = tl.sigmoid(z_minus)
    # Interior bins: σ(z+) - σ(z-) = σ(z+) σ(-z-) (1 - e^-w) with w = z+ - z-, so its log is a sum
    # of terms without cancellation, and so are its derivatives in z+ and z-.
    width = 2.0 * half_bin * inv_s
    one_minus_exp = _one_minus_exp_neg(width)
    log_delta = log_cdf_plus + log_sf_minus + tl.log(one_minus_exp)
    delta_a = sf_plus - cdf_minus
    delta_b = z_plus * sf_plus - z_minus * cdf_minus + width * tl.exp(-width) / one_minus_exp
    # Under 1e-5: the density at the bin centre times the bin width.
    log_density = -_softplus(-z_mid) - _softplus(z_mid) - log_scale - log_half_bins  # -inf at z_mid = ±inf
    density_a = tl.sigmoid(-z_mid) - tl.sigmoid(z_mid)
    density_b = z_mid * density_a + 1.0

    lowest = x < half_bin - 1.0
    highest = x > 1.0 - half_bin
    use_delta = log_delta > LOG_DELTA_THRESHOLD
    log_p = tl.where(lowest, log_cdf_plus, tl.where(highest, log_sf_minus,
                                                    tl.where(use_delta, log_delta, log_density)))
    a = tl.where(lowest, sf_plus, tl.where(highest, -cdf_minus, tl.where(use_delta, delta_a, density_a)))
    b = tl.where(lowest, z_plus * sf_plus, tl.where(highest, -z_minus * cdf_minus,
                                                     tl.where(use_delta, delta_b, density_b)))
    return log_p, inv_s * a, b


# --- loads and the layout of params --------------------------------------------------------------

@triton.jit
def _positions(S, blocks_per_sample, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = (pid // blocks_per_sample).to(tl.int64)
    s = (pid % blocks_per_sample) * BLOCK + tl.arange(0, BLOCK)
    return n, s, s < S


@triton.jit
def _load(row, index, stride, offset, mask):
    """row[index * stride + offset] in float32; ``index`` a scalar or one per position."""
    return tl.load(row + tl.cast(index, tl.int64) * stride + offset, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_x(x_row, c: tl.constexpr, sx_c, x_offset, mask, C: tl.constexpr):
    """x[n, c, s]; zeros for the channels that one-channel data does not have."""
    if c < C:
        value = _load(x_row, c, sx_c, x_offset, mask)
    else:
        value = tl.zeros(x_offset.shape, tl.float32)
    return value


@triton.jit
def _channel(row, sp_p, offset, mask, p_mean, K, x, shift, half_bin, log_half_bins, log_scale_min):
    """One channel of one component: (L, -dL/dmean, -dL/draw_log_scale); the mean is ``mean + shift``."""
    mean = _load(row, p_mean, sp_p, offset, mask)
    raw_log_scale = _load(row, p_mean + K, sp_p, offset, mask)
    log_p, a, b = _log_prob_in_bin(x, mean + shift, _at_least(raw_log_scale, log_scale_min), half_bin,
                                   log_half_bins)
    return log_p, a, tl.where(raw_log_scale > log_scale_min, b, 0.0)  # torch.clamp's: 0 at the bound


@triton.jit
def _component(row, sp_p, offset, mask, k, K, x0, x1, x2, half_bin, log_half_bins, log_scale_min,
               C: tl.constexpr, INTERPRETED: tl.constexpr):
    """Component k at each position: its logit, log_p = Σ_c L_c, and per channel
    (-dL_c/dmean_c, -dL_c/draw_log_scale_c), then the coefficients tanh(raw) (zeros where C = 1).

    Channel c's block starts at K + 3Kc: K means, K log-scales, K coefficients. The means couple
    to the ground truth: μ_1 = m_1 + c_0 x_0, μ_2 = m_2 + c_1 x_0 + c_2 x_1.
    """
    logit = _load(row, k, sp_p, offset, mask)
    zero = tl.zeros(x0.shape, tl.float32)
    if C == 1:
        log_p0, a0, b0 = _channel(row, sp_p, offset, mask, K + k, K, x0, 0.0, half_bin, log_half_bins,
                                  log_scale_min)
        log_p = log_p0
        a1, b1, a2, b2, t0, t1, t2 = zero, zero, zero, zero, zero, zero, zero
    else:
        t0 = tanh(_load(row, 3 * K + k, sp_p, offset, mask), INTERPRETED)
        t1 = tanh(_load(row, 6 * K + k, sp_p, offset, mask), INTERPRETED)
        t2 = tanh(_load(row, 9 * K + k, sp_p, offset, mask), INTERPRETED)
        log_p0, a0, b0 = _channel(row, sp_p, offset, mask, K + k, K, x0, 0.0, half_bin, log_half_bins,
                                  log_scale_min)
        log_p1, a1, b1 = _channel(row, sp_p, offset, mask, 4 * K + k, K, x1, t0 * x0, half_bin,
                                  log_half_bins, log_scale_min)
        log_p2, a2, b2 = _channel(row, sp_p, offset, mask, 7 * K + k, K, x2, t1 * x0 + t2 * x1, half_bin,
                                  log_half_bins, log_scale_min)
        log_p = log_p0 + log_p1 + log_p2
    return logit, log_p, a0, b0, a1, b1, a2, b2, t0, t1, t2


@triton.jit
def _add_to_logsumexp(running_max, running_sum, value):
    """A term equal to the maximum counts 1, also at -inf (-inf - -inf would be NaN); NaN stays NaN."""
    new_max = tl.maximum(running_max, value)
    old_scale = tl.where(running_max == new_max, 1.0, tl.exp(running_max - new_max))
    return new_max, running_sum * old_scale + tl.where(value == new_max, 1.0, tl.exp(value - new_max))


@triton.jit
def _log_normalisers(row, sp_p, offset, mask, K, x0, x1, x2, half_bin, log_half_bins, log_scale_min,
                     C: tl.constexpr, INTERPRETED: tl.constexpr):
    """M = max_k logit_k, then logsumexp_k (logit_k - M) and logsumexp_k (logit_k - M + log_p_k), online.

    log p(x) is the second minus the first; the second is returned as its maximum and log-sum, whose
    difference from a joint is the responsibility's log (they sum to 1 also where the max + log-sum of
    terms of 1e7 rounds in float32). Shifting by M first (as log_softmax does) keeps large
    logits from meeting log_p_k in float32; the backward pass recomputes the same shifted joints.
    """
    logit_max = tl.full(x0.shape, float("-inf"), tl.float32)
    for k in range(K):
        logit_max = tl.maximum(logit_max, _load(row, k, sp_p, offset, mask))
    logit_sum = tl.zeros(x0.shape, tl.float32)
    joint_max = tl.full(x0.shape, float("-inf"), tl.float32)
    joint_sum = tl.zeros(x0.shape, tl.float32)
    for k in range(K):
        logit, log_p, _, _, _, _, _, _, _, _, _ = _component(
            row, sp_p, offset, mask, k, K, x0, x1, x2, half_bin, log_half_bins, log_scale_min, C, INTERPRETED)
        logit_sum += tl.exp(logit - logit_max)
        joint_max, joint_sum = _add_to_logsumexp(joint_max, joint_sum, logit - logit_max + log_p)
    return logit_max, tl.log(logit_sum), joint_max, tl.log(joint_sum)


# --- kernels -------------------------------------------------------------------------------------

@triton.jit
def _load_positions(params_ptr, x_ptr, sp_n, sp_s, sx_n, sx_c, sx_s, S, blocks_per_sample,
                    C: tl.constexpr, BLOCK: tl.constexpr):
    """This program's positions: n, s, mask, the params row and offsets, and the sub-pixels x0..x2."""
    n, s, mask = _positions(S, blocks_per_sample, BLOCK)
    row, offset = params_ptr + n * sp_n, s.to(tl.int64) * sp_s
    x_row, x_offset = x_ptr + n * sx_n, s.to(tl.int64) * sx_s
    x0 = _load_x(x_row, 0, sx_c, x_offset, mask, C)
    x1 = _load_x(x_row, 1, sx_c, x_offset, mask, C)
    x2 = _load_x(x_row, 2, sx_c, x_offset, mask, C)
    return n, s, mask, row, offset, x0, x1, x2


@triton.jit
def _nll_kernel(params_ptr, x_ptr, nll_ptr, sp_n, sp_p, sp_s, sx_n, sx_c, sx_s, S, K, blocks_per_sample,
                half_bin, log_half_bins, log_scale_min,
                C: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK: tl.constexpr):
    n, s, mask, row, offset, x0, x1, x2 = _load_positions(params_ptr, x_ptr, sp_n, sp_s, sx_n, sx_c, sx_s, S,
                                                          blocks_per_sample, C, BLOCK)
    _, log_norm_logits, joint_max, joint_log_sum = _log_normalisers(
        row, sp_p, offset, mask, K, x0, x1, x2, half_bin, log_half_bins, log_scale_min, C, INTERPRETED)
    tl.store(nll_ptr + n * S + s, log_norm_logits - (joint_max + joint_log_sum), mask=mask)


@triton.jit
def _store(grad_row, p, S, s, mask, value):
    tl.store(grad_row + tl.cast(p, tl.int64) * S + s, value.to(grad_row.dtype.element_ty), mask=mask)


@triton.jit
def _store_log_scale_grad(grad_row, p, row, sp_p, offset, S, s, mask, weight, b, log_scale_min):
    """The gradient of log-scale p, weight · b, or exactly 0 where it is clamped (selected, not 0 · weight:
    also where the responsibility is NaN, as torch.where gives the reference's)."""
    clamped = _load(row, p, sp_p, offset, mask) <= log_scale_min
    _store(grad_row, p, S, s, mask, tl.where(clamped, 0.0, weight * b))


@triton.jit
def _nll_backward_kernel(grad_nll_ptr, params_ptr, x_ptr, grad_params_ptr, sg_n, sg_s, sp_n, sp_p, sp_s,
                         sx_n, sx_c, sx_s, S, K, blocks_per_sample, half_bin, log_half_bins, log_scale_min,
                         C: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK: tl.constexpr):
    """Pass 1 recomputes the two log-normalisers; pass 2 the responsibilities r_k = p(k | x) and

    d nll / d logit_k = softmax(logits)_k - r_k,   d nll / dθ_ck = -r_k dL_ck / dθ_ck.
    """
    n, s, mask, row, offset, x0, x1, x2 = _load_positions(params_ptr, x_ptr, sp_n, sp_s, sx_n, sx_c, sx_s, S,
                                                          blocks_per_sample, C, BLOCK)
    grad_nll = tl.load(grad_nll_ptr + n * sg_n + s.to(tl.int64) * sg_s, mask=mask, other=0.0).to(tl.float32)
    logit_max, log_norm_logits, joint_max, joint_log_sum = _log_normalisers(
        row, sp_p, offset, mask, K, x0, x1, x2, half_bin, log_half_bins, log_scale_min, C, INTERPRETED)
    grad_row = grad_params_ptr + n * (K * (10 if C == 3 else 3)) * S
    for k in range(K):
        logit, log_p, a0, b0, a1, b1, a2, b2, t0, t1, t2 = _component(
            row, sp_p, offset, mask, k, K, x0, x1, x2, half_bin, log_half_bins, log_scale_min, C, INTERPRETED)
        weight = grad_nll * tl.exp((logit - logit_max + log_p - joint_max) - joint_log_sum)  # grad_nll · r_k
        _store(grad_row, k, S, s, mask, grad_nll * tl.exp(logit - logit_max - log_norm_logits) - weight)
        _store(grad_row, K + k, S, s, mask, weight * a0)
        _store_log_scale_grad(grad_row, 2 * K + k, row, sp_p, offset, S, s, mask, weight, b0, log_scale_min)
        if C == 3:  # the coefficients reach the loss through the coupled means μ_1 and μ_2
            _store(grad_row, 3 * K + k, S, s, mask, weight * a1 * x0 * (1.0 - t0 * t0))
            _store(grad_row, 4 * K + k, S, s, mask, weight * a1)
            _store_log_scale_grad(grad_row, 5 * K + k, row, sp_p, offset, S, s, mask, weight, b1, log_scale_min)
            _store(grad_row, 6 * K + k, S, s, mask, weight * a2 * x0 * (1.0 - t1 * t1))
            _store(grad_row, 7 * K + k, S, s, mask, weight * a2)
            _store_log_scale_grad(grad_row, 8 * K + k, row, sp_p, offset, S, s, mask, weight, b2, log_scale_min)
            _store(grad_row, 9 * K + k, S, s, mask, weight * a2 * x1 * (1.0 - t2 * t2))


@triton.jit
def _uniform(noise_row, index, stride, offset, mask):
    return NOISE_FLOOR + (1.0 - 2.0 * NOISE_FLOOR) * _load(noise_row, index, stride, offset, mask)


@triton.jit
def _round_half_even(v):
    """Round to the nearest integer, ties to even (as torch.round)."""
    r = tl.floor(v + 0.5)
    tie_to_odd = (r - v == 0.5) & (r - 2.0 * tl.floor(0.5 * r) == 1.0)
    return tl.where(tie_to_odd, r - 1.0, r)


@triton.jit
def _sample_channel(row, sp_p, offset, mask, p_mean, K, shift, u, levels, log_scale_min):
    """mean + shift + s logit(u), clamped to [-1, 1] and rounded to the bin grid of levels + 1 bins."""
    mean = _load(row, p_mean, sp_p, offset, mask)
    log_scale = _at_least(_load(row, p_mean + K, sp_p, offset, mask), log_scale_min)
    value = mean + shift + tl.exp(log_scale) * (tl.log(u) - tl.log(1.0 - u))
    value = tl.where(value > 1.0, 1.0, _at_least(value, -1.0))  # clamped to [-1, 1], NaN kept
    bin_index = _round_half_even((value + 1.0) * levels * 0.5)
    return tl.math.div_rn(2.0 * bin_index, levels) - 1.0


@triton.jit
def _sample_kernel(params_ptr, gumbel_ptr, logistic_ptr, sample_ptr, sp_n, sp_p, sp_s, sg_n, sg_k, sg_s,
                   sl_n, sl_c, sl_s, S, K, blocks_per_sample, levels, log_scale_min,
                   C: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK: tl.constexpr):
    n, s, mask = _positions(S, blocks_per_sample, BLOCK)
    row, offset = params_ptr + n * sp_n, s.to(tl.int64) * sp_s
    gumbel_row, gumbel_offset = gumbel_ptr + n * sg_n, s.to(tl.int64) * sg_s
    logistic_row, logistic_offset = logistic_ptr + n * sl_n, s.to(tl.int64) * sl_s
    # Gumbel-max: the first k with the largest logit_k - log(-log g_k), as argmax. A NaN logit makes the
    # position NaN: ``poison`` is added to the first mean, the later ones couple to it.
    best_score = tl.full([BLOCK], float("-inf"), tl.float32)
    best = tl.zeros([BLOCK], tl.int32)
    poison = tl.zeros([BLOCK], tl.float32)
    for k in range(K):
        g = _uniform(gumbel_row, k, sg_k, gumbel_offset, mask)
        score = _load(row, k, sp_p, offset, mask) - tl.log(-tl.log(g))
        better = score > best_score
        best_score = tl.where(better, score, best_score)
        best = tl.where(better, k, best)
        poison = tl.where(score != score, score, poison)
    sample_row = sample_ptr + n * C * S
    u0 = _uniform(logistic_row, 0, sl_c, logistic_offset, mask)
    x0 = _sample_channel(row, sp_p, offset, mask, K + best, K, poison, u0, levels, log_scale_min)
    tl.store(sample_row + s, x0, mask=mask)
    if C == 3:  # the later channels' means couple to the sampled, discretized, earlier ones
        t0 = tanh(_load(row, 3 * K + best, sp_p, offset, mask), INTERPRETED)
        t1 = tanh(_load(row, 6 * K + best, sp_p, offset, mask), INTERPRETED)
        t2 = tanh(_load(row, 9 * K + best, sp_p, offset, mask), INTERPRETED)
        u1 = _uniform(logistic_row, 1, sl_c, logistic_offset, mask)
        x1 = _sample_channel(row, sp_p, offset, mask, 4 * K + best, K, t0 * x0, u1, levels, log_scale_min)
        u2 = _uniform(logistic_row, 2, sl_c, logistic_offset, mask)
        x2 = _sample_channel(row, sp_p, offset, mask, 7 * K + best, K, t1 * x0 + t2 * x1, u2, levels,
                             log_scale_min)
        tl.store(sample_row + S + s, x1, mask=mask)
        tl.store(sample_row + 2 * S + s, x2, mask=mask)


# --- launchers ---------------------------------------------------------------

def _mixtures(params: torch.Tensor, num_channels: int) -> int:
    """K, from params' P = 10K (3 channels) or 3K (1 channel)."""
    return params.shape[1] // (10 if num_channels == 3 else 3)


def _bins(num_bins: int) -> tuple[float, float]:
    """Half a bin, 1 / (num_bins - 1), and log((num_bins - 1) / 2), the log of one over the bin width."""
    return 1.0 / (num_bins - 1), math.log((num_bins - 1) / 2)


def _launch(kernel, params: torch.Tensor, num_channels: int, num_mixtures: int, pointers: tuple,
            strided: tuple, scalars: tuple) -> None:
    """One program per BLOCK positions of one sample; ``strided`` are the tensors whose strides go in."""
    n, _, s = params.shape
    if n == 0 or s == 0:
        return
    blocks_per_sample = triton.cdiv(s, BLOCK)
    strides = [stride for t in strided for stride in t.stride()]
    with on_device(params):
        kernel[(n * blocks_per_sample,)](
            *pointers, *strides, s, num_mixtures, blocks_per_sample, *scalars,
            C=num_channels, INTERPRETED=triton_interpreted(), BLOCK=BLOCK, num_warps=NUM_WARPS)


def logistic_mixture_nll(params: torch.Tensor, x: torch.Tensor, num_bins: int,
                         log_scale_min: float) -> torch.Tensor:
    num_mixtures = _mixtures(params, x.shape[1])
    nll = torch.empty(params.shape[0], params.shape[2], dtype=torch.float32, device=params.device)
    _launch(_nll_kernel, params, x.shape[1], num_mixtures, (params, x, nll), (params, x),
            (*_bins(num_bins), log_scale_min))
    return nll


def logistic_mixture_nll_backward(grad_nll: torch.Tensor, params: torch.Tensor, x: torch.Tensor,
                                  num_bins: int, log_scale_min: float) -> torch.Tensor:
    num_mixtures = _mixtures(params, x.shape[1])
    grad_params = torch.empty(params.shape, dtype=params.dtype, device=params.device)
    _launch(_nll_backward_kernel, params, x.shape[1], num_mixtures, (grad_nll, params, x, grad_params),
            (grad_nll, params, x), (*_bins(num_bins), log_scale_min))
    return grad_params


def logistic_mixture_sample(params: torch.Tensor, gumbel_u: torch.Tensor, logistic_u: torch.Tensor,
                            num_bins: int, log_scale_min: float) -> torch.Tensor:
    num_mixtures = gumbel_u.shape[1]
    sample = torch.empty(logistic_u.shape, dtype=torch.float32, device=params.device)
    _launch(_sample_kernel, params, logistic_u.shape[1], num_mixtures,
            (params, gumbel_u, logistic_u, sample), (params, gumbel_u, logistic_u),
            (float(num_bins - 1), log_scale_min))
    return sample
