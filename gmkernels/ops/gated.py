"""gmk.gated_activation: validate, pick a backend, run its op; autograd and fakes of the ops."""
from __future__ import annotations

import math

import torch

from .._backend import TRITON_INSTALLED, OpBackends
from .._extension import has_extension
from ..reference import gated as reference
from ._common import check_float_tensor

ACTIVATIONS = ("tanh", "identity")
GATED = OpBackends("gmk.gated_activation")


def _check_inputs(x, cond, activation: str, dim: int) -> int:
    check_float_tensor("gated_activation", "x", x)
    if x.dim() < 2:
        raise ValueError(f"gated_activation: x must have at least 2 dimensions, got shape {tuple(x.shape)}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"gated_activation: dim must be in [{-x.dim()}, {x.dim() - 1}], got {dim}")
    dim %= x.dim()
    if x.shape[dim] % 2:
        raise ValueError(f"gated_activation: x.shape[dim] (dim={dim}) must be even (2C channels), "
                         f"got {x.shape[dim]}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"gated_activation: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if cond is not None:
        _check_cond(x, cond)
    return dim


def _check_cond(x: torch.Tensor, cond) -> None:
    if not isinstance(cond, torch.Tensor):
        raise TypeError(f"gated_activation: cond must be a torch.Tensor or None, got {type(cond).__name__}")
    if cond.dtype != x.dtype:
        raise TypeError(f"gated_activation: cond must have x's dtype {x.dtype}, got {cond.dtype}")
    if cond.device != x.device:
        raise ValueError(f"gated_activation: cond must be on x's device {x.device}, got {cond.device}")
    try:
        broadcast = torch.broadcast_shapes(cond.shape, x.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != x.shape:
        raise ValueError(f"gated_activation: cond of shape {tuple(cond.shape)} does not broadcast to x's "
                         f"shape {tuple(x.shape)}")


def gated_activation(x: torch.Tensor, cond: torch.Tensor | None = None, *, activation: str = "tanh",
                     dim: int = 1, backend: str = "auto") -> torch.Tensor:
    """``f(a) * sigmoid(b)`` where ``a, b`` are the halves of ``x + cond`` along ``dim``.

    ``f`` is tanh (``activation="tanh"``, Gated PixelCNN and WaveNet) or the identity
    (``"identity"``, PixelCNN++). ``cond`` broadcasts to ``x``: (N, 2C, 1, 1) for global and
    (N, 2C, H, W) for local conditioning. Returns a tensor of x's shape with C along ``dim``.
    """
    dim = _check_inputs(x, cond, activation, dim)
    name = GATED.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.gated_activation(x, cond, activation, dim)
    outer, channels, inner = math.prod(x.shape[:dim]), x.shape[dim], math.prod(x.shape[dim + 1:])
    x3 = x.reshape(outer, channels, inner)
    cond3 = None if cond is None else cond.expand_as(x).reshape(outer, channels, inner)
    y3 = _FORWARD_OPS[name](x3, cond3, activation)
    return y3.reshape(*x.shape[:dim], channels // 2, *x.shape[dim + 1:])


# --- autograd and fake tensors, the same for the C++ and the Triton ops -------------------------

def _fake_forward(x, cond, activation):
    return x.new_empty(x.shape[0], x.shape[1] // 2, x.shape[2])


def _fake_backward(grad_y, x, cond, activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, cond, activation = inputs
    ctx.save_for_backward(x, cond)
    ctx.activation = activation


def _setup_backward_context(ctx, inputs, output):
    grad_y, x, cond, activation = inputs
    ctx.save_for_backward(grad_y, x, cond)
    ctx.activation = activation


def _backward_of_backward(ctx, grad_grad_h):
    """Differentiates grad_a = g f'(a) s(b), grad_b = g f(a) s'(b) (gradient penalties need it).

    Written in torch ops, in float32 or wider, so that it is itself differentiable.
    """
    grad_y, x, cond = ctx.saved_tensors
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    h = (x if cond is None else x + cond).to(compute_dtype)
    a, b = h.chunk(2, dim=1)
    u_a, u_b = grad_grad_h.to(compute_dtype).chunk(2, dim=1)
    g = grad_y.to(compute_dtype)
    s = torch.sigmoid(b)
    ds = s * (1 - s)
    d2s = ds * (1 - 2 * s)
    if ctx.activation == "tanh":
        f = torch.tanh(a)
        df = 1 - f * f
        d2f = -2 * f * df
    else:
        f, df, d2f = a, torch.ones_like(a), torch.zeros_like(a)
    grad_grad_y = u_a * df * s + u_b * f * ds
    grad_x = torch.cat([g * (u_a * d2f * s + u_b * df * ds), g * (u_a * df * ds + u_b * f * d2s)], dim=1)
    grad_grad_y, grad_x = grad_grad_y.to(grad_y.dtype), grad_x.to(x.dtype)
    return grad_grad_y, grad_x, (grad_x if cond is not None else None), None


def _register(forward_op, backward_op) -> None:
    def backward(ctx, grad_y):
        x, cond = ctx.saved_tensors
        grad_h = backward_op(grad_y, x, cond, ctx.activation)
        return grad_h, (grad_h if cond is not None else None), None

    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)
    torch.library.register_autograd(backward_op, _backward_of_backward, setup_context=_setup_backward_context)


_FORWARD_OPS = {}
if has_extension():
    torch.library.register_fake("gmkernels::gated")(_fake_forward)
    torch.library.register_fake("gmkernels::gated_backward")(_fake_backward)
    _register(torch.ops.gmkernels.gated.default, torch.ops.gmkernels.gated_backward.default)
    _FORWARD_OPS["cpu"] = _FORWARD_OPS["cuda"] = torch.ops.gmkernels.gated
if TRITON_INSTALLED:
    from ..triton import gated as triton_gated

    triton_gated.gated.register_fake(_fake_forward)
    triton_gated.gated_backward.register_fake(_fake_backward)
    _register(triton_gated.gated, triton_gated.gated_backward)
    _FORWARD_OPS["triton"] = triton_gated.gated
