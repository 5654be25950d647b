"""gmk.actnorm: validate, pick a backend, run its op; autograd and fakes of the ops.

The kernels transform x; the log-determinant ``|S| · Σ log_scale`` (negated in reverse) is a sum over
C parameters, computed here in float64 with torch ops (differentiable, no host synchronisation).
"""
from __future__ import annotations

import torch

from .._backend import TRITON_INSTALLED, OpBackends
from .._extension import has_extension
from .._validation import check_bool
from ..reference import actnorm as reference
from ._common import as_3d, check_parameter, check_x, compute_dtype, differentiable_backward

ACTNORM = OpBackends("gmk.actnorm")


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
    y = _OPS[name](as_3d(x), bias.to(dtype), log_scale.to(dtype), reverse).view(x.shape)
    logdet = reference.per_sample(reference.positions(x) * log_scale.double().sum(), x, reverse)
    return y, logdet


# --- autograd and fake tensors, the same for the C++ and the Triton ops -------------------------

def _fake_forward(x, bias, log_scale, reverse):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _fake_backward(grad_out, x, bias, log_scale, reverse):
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return grad_x, torch.empty_like(bias), torch.empty_like(log_scale)


def _backward_math(grad_out, x, bias, log_scale, reverse):
    """What actnorm_backward computes, in torch ops: the gradients of in, bias and log_scale."""
    g = grad_out.to(bias.dtype)
    g_sum, gx_sum = g.sum((0, 2)), (g * x.to(bias.dtype)).sum((0, 2))
    scale = torch.exp(-log_scale if reverse else log_scale)
    grad_x = (g * scale[:, None]).to(x.dtype)
    if reverse:
        return grad_x, -g_sum, -scale * gx_sum
    return grad_x, scale * g_sum, scale * (gx_sum + bias * g_sum)


def _setup_context(ctx, inputs, output):
    x, bias, log_scale, reverse = inputs
    ctx.save_for_backward(x, bias, log_scale)
    ctx.reverse = reverse


def _register(forward_op, backward_op) -> None:
    def backward(ctx, grad_out):
        x, bias, log_scale = ctx.saved_tensors
        grad_x, grad_bias, grad_log_scale = backward_op(grad_out, x, bias, log_scale, ctx.reverse)
        return grad_x, grad_bias, grad_log_scale, None

    torch.library.register_fake(forward_op)(_fake_forward)
    torch.library.register_fake(backward_op)(_fake_backward)
    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)
    differentiable_backward(backward_op, _backward_math, tensor_args=4)


_OPS = {}
if has_extension():
    _register(torch.ops.gmkernels.actnorm.default, torch.ops.gmkernels.actnorm_backward.default)
    _OPS["cpu"] = _OPS["cuda"] = torch.ops.gmkernels.actnorm
if TRITON_INSTALLED:
    from ..triton import actnorm as _triton

    _register(_triton.actnorm, _triton.actnorm_backward)
    _OPS["triton"] = _triton.actnorm
