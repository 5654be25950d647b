"""gmk.actnorm: the declarations of gmkernels::actnorm{,_backward} and the public function.

The kernels transform x; the log-determinant ``|S| · Σ log_scale`` (negated in reverse) is a sum over
C parameters, computed here in float64 with torch ops (differentiable, no host synchronisation).
"""
from __future__ import annotations

import torch

from .._validation import check_bool
from ..reference import actnorm as reference
from ._common import as_3d, check_kernel_parameter, check_like, check_parameter, check_tensor, check_x, compute_dtype
from ._declare import Autograd, Op, triton_family

_triton = triton_family("actnorm")


# --- the ops: x (N, C, positions) any strides; bias, log_scale (C,) float32 (float64 for float64 x) ---

def check_actnorm(function: str, x, bias, log_scale, reverse, grad_out=None) -> None:
    check_tensor(function, "x", x, 3, "(N, C, positions)")
    for name, t in (("bias", bias), ("log_scale", log_scale)):
        check_kernel_parameter(function, name, t, x, (x.shape[1],))
    check_bool(function, "reverse", reverse)
    if grad_out is not None:
        check_like(function, "grad_out", grad_out, x, x.shape)


def _check_backward(function: str, grad_out, x, bias, log_scale, reverse) -> None:
    check_actnorm(function, x, bias, log_scale, reverse, grad_out)


def _fake(x, bias, log_scale, reverse):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _fake_backward(grad_out, x, bias, log_scale, reverse):
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return grad_x, torch.empty_like(bias), torch.empty_like(log_scale)


def _backward_formula(grad_out, x, bias, log_scale, reverse):
    """What actnorm_backward computes, in torch ops: the gradients of x, bias and log_scale."""
    g = grad_out.to(bias.dtype)
    g_sum, gx_sum = g.sum((0, 2)), (g * x.to(bias.dtype)).sum((0, 2))
    scale = torch.exp(-log_scale if reverse else log_scale)
    grad_x = (g * scale[:, None]).to(x.dtype)
    if reverse:
        return grad_x, -g_sum, -scale * gx_sum
    return grad_x, scale * g_sum, scale * (gx_sum + bias * g_sum)


def _save(ctx, inputs, output):
    x, bias, log_scale, reverse = inputs
    ctx.save_for_backward(x, bias, log_scale)
    ctx.reverse = reverse


def _backward(ops, ctx, grad_out):
    x, bias, log_scale = ctx.saved_tensors
    return *ops.actnorm_backward(grad_out, x, bias, log_scale, ctx.reverse), None


ACTNORM = Op("actnorm", "(Tensor x, Tensor bias, Tensor log_scale, bool reverse) -> Tensor", check=check_actnorm,
             fake=_fake, triton=_triton and _triton.actnorm, autograd=Autograd(_save, _backward))
ACTNORM_BACKWARD = Op(
    "actnorm_backward",
    "(Tensor grad_out, Tensor x, Tensor bias, Tensor log_scale, bool reverse) -> (Tensor, Tensor, Tensor)",
    check=_check_backward, fake=_fake_backward, triton=_triton and _triton.actnorm_backward,
    formula=_backward_formula)


# --- the public function ---------------------------------------------------------------------------

def actnorm(x: torch.Tensor, bias: torch.Tensor, log_scale: torch.Tensor, *, reverse: bool = False,
            backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Glow's actnorm: ``y = (x + bias) · exp(log_scale)`` per channel, and the log-determinant.

    ``x`` is (N, C, *S) (any number of spatial dimensions); ``bias`` and ``log_scale`` are (C,).
    Returns ``(y, logdet)`` with logdet (N,) = |S| · Σ log_scale, summed in float64, float32 (float64
    for float64 x). ``reverse=True`` maps y back to x, ``x = y · exp(-log_scale) - bias``, and returns
    the negated log-determinant. The parameters may have any float dtype (the kernels compute in
    float32, float64 for float64 x). Differentiable in x and both parameters, twice.
    """
    op = "actnorm"
    check_x(op, x)
    channels = (x.shape[1],)
    check_parameter(op, "bias", bias, x, channels)
    check_parameter(op, "log_scale", log_scale, x, channels)
    check_bool(op, "reverse", reverse)
    name = ACTNORM.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.actnorm(x, bias, log_scale, reverse)
    dtype = compute_dtype(x.dtype)
    # one cast of log_scale for both uses: their gradients sum in float64 and round once to its dtype
    wide_log_scale = log_scale.double()
    y = ACTNORM.run(name, as_3d(x), bias.to(dtype), wide_log_scale.to(dtype), reverse).view(x.shape)
    logdet = reference.per_sample(reference.positions(x) * wide_log_scale.sum(), x, reverse)
    return y, logdet
