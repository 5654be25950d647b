"""gmk.actnorm: validate, pick a backend, run its op; autograd and fakes of the ops.

The kernels transform x; the log-determinant ``|S| · Σ log_scale`` (negated in reverse) is a sum over
C parameters, computed here in float64 with torch ops (differentiable, no host synchronisation).
"""
from __future__ import annotations

import math

import torch

from .._backend import TRITON_INSTALLED, OpBackends
from .._extension import has_extension
from .._validation import check_bool
from ..reference import actnorm as reference

ACTNORM = OpBackends("gmk.actnorm")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels' parameters and arithmetic use: float64 for float64 x, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_x(op: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{op}: x must be (N, C, *spatial), got shape {tuple(x.shape)}")


def check_parameter(op: str, name: str, t, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    """``t`` is a floating-point tensor of ``shape`` on x's device (any float dtype: it is cast)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} must be on x's device {x.device}, got {t.device}")


def as_3d(x: torch.Tensor) -> torch.Tensor:
    """x (N, C, *S) as the kernels' (N, C, positions) view (a copy only where no view exists)."""
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


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


def differentiable_backward(backward_op, formula, tensor_args: int) -> None:
    """Makes ``backward_op`` differentiable (double backward: gradient penalties, Hessian-vector products).

    ``formula`` computes the same outputs as ``backward_op`` from the same arguments, in torch ops; the
    backward of the backward differentiates it (recomputing, as the kernels' backward does).
    ``tensor_args``: how many leading arguments are tensors; the rest are passed through.
    """
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:tensor_args])
        ctx.rest = inputs[tensor_args:]

    def backward(ctx, *grads):
        inputs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
        with torch.enable_grad():
            outputs = formula(*inputs, *ctx.rest)
        pairs = [(out, grad) for out, grad in zip(outputs, grads) if out is not None and grad is not None]
        if not pairs:
            return *(None for _ in inputs), *(None for _ in ctx.rest)
        result = torch.autograd.grad([out for out, _ in pairs], inputs, [grad for _, grad in pairs],
                                     allow_unused=True, create_graph=torch.is_grad_enabled())
        return *result, *(None for _ in ctx.rest)

    torch.library.register_autograd(backward_op, backward, setup_context=setup_context)


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
