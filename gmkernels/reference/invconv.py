"""Invertible 1x1 convolution (Glow, arXiv 1807.03039, section 3.2 and table 1), dense and LU, and
actnorm followed by it, as the reference implementations write them (plain PyTorch).

    y_{n,:,i} = W x_{n,:,i}                    at every position i, x (N, C, *S)
    log|det J| = |S| · log|det W|              from W's LU factorisation in float64 (log_abs_det)
    LU: W = P (L ⊙ strict_lower + I)(U ⊙ strict_upper + diag(sign_s · exp(log_s))),
        log|det J| = |S| · Σ log_s
The reverse uses W's inverse (computed in float64; for LU, U⁻¹ L⁻¹ Pᵀ by two triangular solves, as the
kernels' path builds it) and returns the negated log-determinant.
"""
import functools

import torch
import torch.nn.functional as F

from .actnorm import actnorm, per_sample, positions

_CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def conv1x1(x, weight):
    """W x at every position: F.conv{1,2,3}d with a 1x1 kernel, an einsum for other ranks and for an
    empty spatial dimension (which F.conv refuses)."""
    weight = weight.to(x.dtype)
    conv = _CONV.get(x.dim()) if all(x.shape[2:]) else None
    if conv is not None:
        return conv(x, weight.reshape(*weight.shape, *([1] * (x.dim() - 2))))
    return torch.einsum("oc,nc...->no...", weight, x)


def _singular_tolerance(weight):
    """C · ε · max|W| (ε of float64): a pivot of W's LU factorisation at most this is zero to working
    precision (the backward error of the factorisation is of this order)."""
    return weight.shape[0] * torch.finfo(torch.float64).eps * weight.abs().amax()


class _LogAbsDet(torch.autograd.Function):
    """(log|det W|, singular) of a float64 (C, C) W; its gradient is W⁻ᵀ (NaN for a singular W)."""

    @staticmethod
    def forward(ctx, weight):
        lu, _, info = torch.linalg.lu_factor_ex(weight)
        pivots = lu.diagonal().abs()
        tolerance = _singular_tolerance(weight)
        singular = (info != 0) | ((pivots <= tolerance).any() & tolerance.isfinite())
        log_sum = pivots.log().sum()
        ctx.save_for_backward(weight, singular)
        ctx.mark_non_differentiable(singular)
        return torch.where(singular & ~log_sum.isnan(), float("-inf"), log_sum), singular

    @staticmethod
    def backward(ctx, grad_logabsdet, _):
        weight, singular = ctx.saved_tensors
        gradient = grad_logabsdet * torch.linalg.inv_ex(weight).inverse.mT
        gradient = torch.where(singular, float("nan"), gradient)
        # Exactly 0 where log|det W| has weight 0 (no positions), also for a singular W
        return torch.where(grad_logabsdet == 0, torch.zeros_like(gradient), gradient)


def log_abs_det(weight):
    """(log|det W|, singular), 0-d float64 and bool, without host synchronisation.

    From W's LU factorisation with partial pivoting in float64 (``lu_factor_ex``; slogdet is an LU too,
    but of Wᵀ, and the two disagree where W is singular to working precision). W counts as singular when
    a pivot is exactly zero or at most C · ε · max|W|: then log|det W| is -inf and its gradient NaN, on
    every backend (docs/conventions.md, "Invertible 1x1 convolution").
    """
    weight = weight.double()
    if weight.numel() == 0:
        return weight.new_zeros(()) + weight.sum(), torch.zeros((), dtype=torch.bool, device=weight.device)
    return _LogAbsDet.apply(weight)


def inverse(weight, singular):
    """W⁻¹ in float64 (``inv_ex``: no host synchronisation), all NaN where W is singular (log_abs_det)."""
    matrix = torch.linalg.inv_ex(weight.double()).inverse
    return torch.where(singular, torch.full_like(matrix, float("nan")), matrix)


def invertible_conv1x1(x, weight, reverse=False):
    wide = weight.double()
    logabsdet, singular = log_abs_det(wide)
    matrix = inverse(wide, singular) if reverse else weight
    return conv1x1(x, matrix), per_sample(positions(x) * logabsdet, x, reverse)


def lu_weight(lower, upper, log_s, sign_s, perm):
    """W = P (L ⊙ strict_lower + I)(U ⊙ strict_upper + diag(sign_s · exp(log_s))), in the parameters'
    promoted dtype (they may differ, e.g. a float64 ``perm`` buffer next to float32 parameters)."""
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in (lower, upper, log_s, sign_s, perm)))
    lower, upper, log_s, sign_s, perm = (t.to(dtype) for t in (lower, upper, log_s, sign_s, perm))
    eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
    lower = torch.tril(lower, -1) + eye
    upper = torch.triu(upper, 1) + torch.diag(sign_s * torch.exp(log_s))
    return perm @ lower @ upper


def lu_inverse(lower, upper, log_s, sign_s, perm):
    """W⁻¹ = U⁻¹ L⁻¹ Pᵀ by two triangular solves, float64: W itself is never inverted. A zero or non-finite
    diagonal of U (log_s = -inf, a NaN parameter) gives inf/NaN entries where the solves read it, no
    error (the same matrix on every backend)."""
    lower, upper, log_s, sign_s, perm = (t.double() for t in (lower, upper, log_s, sign_s, perm))
    eye = torch.eye(lower.shape[0], dtype=torch.float64, device=lower.device)
    unit_lower = torch.tril(lower, -1) + eye
    upper = torch.triu(upper, 1) + torch.diag(sign_s * torch.exp(log_s))
    z = torch.linalg.solve_triangular(unit_lower, perm.mT, upper=False, unitriangular=True)
    return torch.linalg.solve_triangular(upper, z, upper=True)


def lu_matrix(lower, upper, log_s, sign_s, perm, reverse):
    """W = P L U, or in reverse W⁻¹ = U⁻¹ L⁻¹ Pᵀ by two triangular solves, both built in float64 (as every
    backend builds them: the applied matrix then rounds once, to x's dtype)."""
    parameters = tuple(t.double() for t in (lower, upper, log_s, sign_s, perm))
    return lu_inverse(*parameters) if reverse else lu_weight(*parameters)


def invertible_conv1x1_lu(x, lower, upper, log_s, sign_s, perm, reverse=False):
    y = conv1x1(x, lu_matrix(lower, upper, log_s, sign_s, perm, reverse))
    return y, per_sample(positions(x) * log_s.double().sum(), x, reverse)


def actnorm_conv1x1(x, bias, log_scale, weight, reverse=False):
    """Actnorm, then the 1x1 convolution; the reverse undoes the convolution, then the actnorm."""
    if reverse:
        h, logdet_conv = invertible_conv1x1(x, weight, reverse=True)
        y, logdet_norm = actnorm(h, bias, log_scale, reverse=True)
    else:
        h, logdet_norm = actnorm(x, bias, log_scale)
        y, logdet_conv = invertible_conv1x1(h, weight)
    return y, logdet_norm + logdet_conv


def actnorm_conv1x1_lu(x, bias, log_scale, lower, upper, log_s, sign_s, perm, reverse=False):
    matrix = lu_matrix(lower, upper, log_s, sign_s, perm, reverse)
    if reverse:
        y, _ = actnorm(conv1x1(x, matrix), bias, log_scale, reverse=True)
    else:
        y = conv1x1(actnorm(x, bias, log_scale)[0], matrix)
    logdet = positions(x) * (log_scale.double().sum() + log_s.double().sum())
    return y, per_sample(logdet, x, reverse)
