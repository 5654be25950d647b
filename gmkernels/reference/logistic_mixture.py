"""Discretized logistic mixture likelihood and sampling, as PixelCNN++ writes it (plain PyTorch).

PixelCNN++ (Salimans et al. 2017, arXiv 1701.05517, eq. 2): each sub-pixel x in [-1, 1], on a grid
of ``num_bins`` levels, has the probability mass of a bin of a mixture of logistics,
    P(x | π, μ, s) = Σ_k π_k [σ((x + δ - μ_k) / s_k) - σ((x - δ - μ_k) / s_k)],  δ = 1 / (num_bins - 1),
with the lowest and highest bins taking the tails down to -∞ and up to +∞. RGB pixels share the
mixture component; the means of G and B are linear in the ground-truth sub-pixels before them.

Params (N, P, *S) hold the layout of the reference TF and PyTorch code: K mixture logits, then for
each channel c a block of K means, K log-scales, K coefficients (P = 10K for C = 3); C = 1: K
logits, K means, K log-scales (P = 3K). This is the eager code people run: it builds the
(N, C, K, S) temporaries the fused kernels avoid. Half-precision params are computed in float32.
"""
import math

import torch
import torch.nn.functional as F

DELTA_THRESHOLD = 1e-5  # below this bin mass, the bin-centre density times the bin width is used


def params_per_component(num_channels: int) -> int:
    """Parameters per mixture component: a logit, then a mean, log-scale (and coefficient) per channel."""
    return 10 if num_channels == 3 else 3


def split_params(params, num_channels):
    """(N, P, *S) -> logits (N, K, S); means, log-scales, raw coefficients (N, C, K, S) (None for C = 1)."""
    n, p = params.shape[:2]
    k = p // params_per_component(num_channels)
    params = params.reshape(n, p, math.prod(params.shape[2:]))
    logits = params[:, :k]
    if num_channels == 1:
        means, log_scales = params[:, k:2 * k].unsqueeze(1), params[:, 2 * k:].unsqueeze(1)
        return logits, means, log_scales, None
    means, log_scales, coeffs = params[:, k:].unflatten(1, (3, 3, k)).unbind(2)
    return logits, means, log_scales, coeffs


def coupled_means(means, coeffs, x):
    """μ_R = m_R, μ_G = m_G + c_0 x_R, μ_B = m_B + c_1 x_R + c_2 x_G, with c = tanh(raw coefficients).

    ``x`` (N, C, S): the ground-truth sub-pixels, or the ones sampled so far.
    """
    if coeffs is None:
        return means
    c = torch.tanh(coeffs)
    x_r, x_g = x[:, 0:1], x[:, 1:2]  # (N, 1, S): broadcast over the K components
    return torch.stack([means[:, 0],
                        means[:, 1] + c[:, 0] * x_r,
                        means[:, 2] + c[:, 1] * x_r + c[:, 2] * x_g], dim=1)


def softplus(z):
    """log(1 + e^z) to the last bit, also in float64: F.softplus returns z itself above its
    threshold, off by e^-threshold (2e-9 at the default 20; e^-40 = 4e-18 is below float64's ulp)."""
    return F.softplus(z, threshold=40.0)


def log_prob_in_bin(x, mu, log_scales, num_bins):
    """log P(bin of x) under each logistic (μ, s = exp(log_scales)): x (N, C, 1, S) against (N, C, K, S)."""
    half_bin = 1.0 / (num_bins - 1)
    inv_s = torch.exp(-log_scales)
    centred = x - mu
    z_plus = inv_s * (centred + half_bin)
    z_minus = inv_s * (centred - half_bin)
    z_mid = inv_s * centred
    # log σ(z) as -softplus(-z): PixelCNN++ writes z - softplus(z), which is inf - inf = NaN at z = +inf.
    log_cdf_plus = -softplus(-z_plus)  # lowest bin: log σ(z+)
    log_one_minus_cdf_minus = -softplus(z_minus)  # highest bin: log(1 - σ(z-))
    # σ(z+) - σ(z-); right of the mean the same difference of the upper tails, without cancellation.
    cdf_delta = torch.where(z_minus > 0, torch.sigmoid(-z_minus) - torch.sigmoid(-z_plus),
                            torch.sigmoid(z_plus) - torch.sigmoid(z_minus))
    log_pdf_mid = -softplus(-z_mid) - softplus(z_mid) - log_scales - math.log((num_bins - 1) / 2)
    # The clamp keeps log finite (and its gradient zero) in the branch torch.where does not take.
    interior = torch.where(cdf_delta > DELTA_THRESHOLD, torch.log(cdf_delta.clamp(min=DELTA_THRESHOLD)),
                           log_pdf_mid)
    return torch.where(x < -1 + half_bin, log_cdf_plus,
                       torch.where(x > 1 - half_bin, log_one_minus_cdf_minus, interior))


def clamp_log_scales(raw_log_scales, log_scale_min):
    """max(raw, log_scale_min), with no gradient where raw == log_scale_min: the convention of torch
    2.14's ``clamp(min=...)``, written out because torch 2.13's clamp passes the gradient there. A NaN
    stays NaN, as with clamp."""
    return torch.where(raw_log_scales <= log_scale_min, raw_log_scales.new_full((), log_scale_min),
                       raw_log_scales)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays; every other floating type is computed in float32."""
    return torch.promote_types(dtype, torch.float32)


def discretized_logistic_mixture_nll(params, x, num_bins=256, log_scale_min=-7.0):
    """-log P(x) in nats per position: params (N, P, *S), x (N, C, *S) in [-1, 1] -> (N, *S)."""
    n, num_channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
    dtype = compute_dtype(params.dtype)
    logits, means, raw_log_scales, coeffs = split_params(params.to(dtype), num_channels)
    x = x.to(dtype).reshape(n, num_channels, math.prod(spatial))
    mu = coupled_means(means, coeffs, x)
    log_scales = clamp_log_scales(raw_log_scales, log_scale_min)
    log_prob_of_x = log_prob_in_bin(x.unsqueeze(2), mu, log_scales, num_bins).sum(dim=1)  # (N, K, S)
    log_probs = F.log_softmax(logits, dim=1) + log_prob_of_x
    return -torch.logsumexp(log_probs, dim=1).reshape(n, *spatial)


def discretized_logistic_mixture_sample(params, gumbel_u, logistic_u, num_bins=256, log_scale_min=-7.0):
    """A sample on the bin grid: params (N, P, *S), uniform noise gumbel_u (N, K, *S), logistic_u (N, C, *S).

    The component is the Gumbel-max of the logits; each channel (R, then G, then B) is
    μ + s·logit(u), clamped to [-1, 1] and rounded to the nearest bin, and the later channels'
    means couple to the rounded earlier ones. Returns (N, C, *S) in the compute dtype.
    """
    n, num_channels = logistic_u.shape[:2]
    dtype = compute_dtype(params.dtype)
    logits, means, log_scales, coeffs = split_params(params.to(dtype), num_channels)
    g = 1e-5 + (1 - 2e-5) * gumbel_u.to(dtype).reshape(logits.shape)
    scores = logits - torch.log(-torch.log(g))
    component = scores.argmax(dim=1, keepdim=True)  # (N, 1, S)

    def chosen(t):  # (N, C, K, S) -> (N, C, 1, S): the chosen component's values
        return None if t is None else t.gather(2, component.unsqueeze(1).expand(-1, num_channels, 1, -1))

    mean, coeff = chosen(means), chosen(coeffs)
    u = 1e-5 + (1 - 2e-5) * logistic_u.to(dtype).reshape(n, num_channels, logits.shape[2])
    scale = torch.exp(chosen(log_scales).clamp(min=log_scale_min)[:, :, 0])
    offset = scale * (torch.log(u) - torch.log(1 - u))
    sample = torch.zeros_like(u)  # (N, C, S): channel c's mean couples to the channels sampled before it
    for c in range(num_channels):
        value = (coupled_means(mean, coeff, sample)[:, c, 0] + offset[:, c]).clamp(-1, 1)
        bin_index = torch.round((value + 1) * (num_bins - 1) / 2)
        sample[:, c] = 2 * bin_index / (num_bins - 1) - 1
    nan_logit = scores.isnan().any(dim=1, keepdim=True)  # (N, 1, S): the distribution is undefined
    return sample.masked_fill(nan_logit, float("nan")).reshape(logistic_u.shape)
