"""gmk.gated_activation: the declarations of gmkernels::gated{,_backward} and the public function."""
from __future__ import annotations

import math

import torch

from ..reference import gated as reference
from ._common import check_choice, check_float_tensor, check_like, check_tensor
from ._declare import Autograd, Op, triton_family

ACTIVATIONS = ("tanh", "identity")
_triton = triton_family("gated")


# --- the ops: x (outer, 2C, inner), cond None or at x's shape (any strides: broadcast by stride 0) ----

def check_gated(function: str, x, cond, activation, grad_y=None) -> None:
    check_tensor(function, "x", x, 3, "(outer, 2C, inner)")
    if x.shape[1] % 2:
        raise ValueError(f"{function}: x's channels (x.shape[dim], 2C) must be even, got {x.shape[1]}")
    check_like(function, "cond", cond, x, x.shape, optional=True)
    check_choice(function, "activation", activation, ACTIVATIONS)
    if grad_y is not None:
        check_like(function, "grad_y", grad_y, x, (x.shape[0], x.shape[1] // 2, x.shape[2]))


def _check_backward(function: str, grad_y, x, cond, activation) -> None:
    check_gated(function, x, cond, activation, grad_y)


def _fake(x, cond, activation):
    return x.new_empty(x.shape[0], x.shape[1] // 2, x.shape[2])


def _fake_backward(grad_y, x, cond, activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _save(ctx, inputs, output):
    x, cond, activation = inputs
    ctx.save_for_backward(x, cond)
    ctx.activation = activation


def _backward(ops, ctx, grad_y):
    x, cond = ctx.saved_tensors
    grad_h = ops.gated_backward(grad_y, x, cond, ctx.activation)
    return grad_h, (grad_h if cond is not None else None), None


def _backward_formula(grad_y, x, cond, activation):
    """grad_h = [g f'(a) σ(b), g f(a) σ'(b)] in torch ops, float32 or wider (the double backward)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    a, b = (x if cond is None else x + cond).to(dtype).chunk(2, dim=1)
    g = grad_y.to(dtype)
    f = torch.tanh(a) if activation == "tanh" else a
    df = 1 - f * f if activation == "tanh" else torch.ones_like(a)
    s = torch.sigmoid(b)
    return torch.cat([g * df * s, g * f * s * (1 - s)], dim=1).to(x.dtype)


GATED = Op("gated", "(Tensor x, Tensor? cond, str activation) -> Tensor", check=check_gated, fake=_fake,
           triton=_triton and _triton.gated, autograd=Autograd(_save, _backward))
GATED_BACKWARD = Op("gated_backward", "(Tensor grad_y, Tensor x, Tensor? cond, str activation) -> Tensor",
                    check=_check_backward, fake=_fake_backward, triton=_triton and _triton.gated_backward,
                    formula=_backward_formula)


# --- the public function -----------------------------------------------------------------------------

def gated_activation(x: torch.Tensor, cond: torch.Tensor | None = None, *, activation: str = "tanh",
                     dim: int = 1, backend: str = "auto") -> torch.Tensor:
    """``f(a) * sigmoid(b)`` where ``a, b`` are the halves of ``x + cond`` along ``dim``.

    ``f`` is tanh (``activation="tanh"``, Gated PixelCNN and WaveNet) or the identity
    (``"identity"``, PixelCNN++). ``cond`` broadcasts to ``x``: (N, 2C, 1, 1) for global and
    (N, 2C, H, W) for local conditioning. Returns a tensor of x's shape with C along ``dim``.
    """
    function = "gated_activation"
    dim = _check_dim(function, x, dim)
    _check_cond_broadcasts(function, x, cond)
    outer, channels, inner = math.prod(x.shape[:dim]), x.shape[dim], math.prod(x.shape[dim + 1:])
    x3 = x.reshape(outer, channels, inner)
    cond3 = None if cond is None else cond.expand_as(x).reshape(outer, channels, inner)
    GATED.check(function, x3, cond3, activation)
    name = GATED.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.gated_activation(x, cond, activation, dim)
    return GATED.run(name, x3, cond3, activation).reshape(*x.shape[:dim], channels // 2, *x.shape[dim + 1:])


def _check_dim(function: str, x, dim) -> int:
    check_float_tensor(function, "x", x)
    if x.dim() < 2:
        raise ValueError(f"{function}: x must have at least 2 dimensions, got shape {tuple(x.shape)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"{function}: dim must be an int in [{-x.dim()}, {x.dim() - 1}], got {dim!r}")
    return dim % x.dim()


def _check_cond_broadcasts(function: str, x: torch.Tensor, cond) -> None:
    check_like(function, "cond", cond, x, optional=True)
    if cond is None:
        return
    try:
        broadcast = torch.broadcast_shapes(cond.shape, x.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != x.shape:
        raise ValueError(f"{function}: cond of shape {tuple(cond.shape)} does not broadcast to x's "
                         f"shape {tuple(x.shape)}")
