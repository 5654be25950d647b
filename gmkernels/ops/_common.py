"""Helpers shared by the ops' public functions and their autograd: argument checks, the flows'
(N, C, positions) views, and the double backward written in torch ops."""
from __future__ import annotations

import math

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels' parameters and arithmetic use: float64 for float64 x, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_float_tensor(op: str, name: str, t) -> None:
    """``t`` is a floating-point tensor (any float dtype, any shape)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_x(op: str, x) -> None:
    """x is a flow's (N, C, *spatial) floating-point input."""
    check_float_tensor(op, "x", x)
    if x.dim() < 2:
        raise ValueError(f"{op}: x must be (N, C, *spatial), got shape {tuple(x.shape)}")


def check_parameter(op: str, name: str, t, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    """``t`` is a floating-point tensor of ``shape`` on x's device (any float dtype: it is cast)."""
    check_float_tensor(op, name, t)
    if tuple(t.shape) != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} must be on x's device {x.device}, got {t.device}")


def as_3d(x: torch.Tensor) -> torch.Tensor:
    """x (N, C, *S) as the kernels' (N, C, positions) view (a copy only where no view exists)."""
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


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
