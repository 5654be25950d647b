"""gmk.bias_act: the declarations of gmkernels::bias_act{,_backward,_backward2} and the public function.

Semantics: StyleGAN2-ADA's ``bias_act`` (docs/conventions.md, "Bias and activation"). Autograd saves what
the original's CUDA op needs and no more: nothing for ``linear`` without a clamp, ``y`` for ``relu``,
``lrelu`` and a clamped ``linear`` (their derivatives are read off ``y``), ``x`` and ``b`` for the smooth
activations (whose second derivatives need ``x + b``). The backward is differentiable through the fused
kernels: its gradient with respect to ``grad`` is the backward again, with respect to ``x`` and ``b`` the
``bias_act_backward2`` kernel (zero for the piecewise-linear activations); third and higher orders
differentiate ``bias_act_backward2``'s formula in torch ops.
"""
from __future__ import annotations

import torch

from .._backend import _ALL_FLOAT_TYPES, _FLOAT_TYPES, OpBackends
from .._validation import check_finite_number
from ..reference import bias_act as reference
from ._common import check_choice, check_float_tensor, check_like
from ._declare import Autograd, Op, triton_family

ACTIVATIONS = tuple(reference.ACTIVATIONS)
# Activations whose derivative the kernels compute from x + b (saved x and b); the others from y.
SMOOTH = ("tanh", "sigmoid", "elu", "selu", "softplus", "swish")
SOFTPLUS_THRESHOLD = 20.0  # torch's softplus: v above it gives v (and derivative 1)

_triton = triton_family("bias_act")


def saved_input(act: str, clamp: float | None) -> str | None:
    """What the backward reads besides grad: "x" (and b), "y", or None (linear without a clamp)."""
    if act in SMOOTH:
        return "x"
    if act in ("relu", "lrelu") or clamp is not None:
        return "y"
    return None


# --- the ops: x any shape and strides; b None or (x.shape[dim],) of x's dtype; dim in [0, x.dim()) ------

def check_bias_act(function: str, x, b, dim, act, alpha, gain, clamp) -> None:
    check_float_tensor(function, "x", x)
    check_choice(function, "act", act, ACTIVATIONS)
    check_finite_number(function, "alpha", alpha)
    if act == "lrelu" and alpha < 0:
        raise ValueError(f"{function}: alpha must be >= 0 for lrelu (its derivative is read off the sign of y), "
                         f"got {alpha!r}")
    check_finite_number(function, "gain", gain)
    if clamp is not None:
        check_finite_number(function, "clamp", clamp)
        if clamp < 0:
            raise ValueError(f"{function}: clamp must be None or >= 0, got {clamp!r}")
    if b is None:
        return
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < x.dim():
        raise ValueError(f"{function}: dim must be an int in [0, {x.dim() - 1}] (x has shape {tuple(x.shape)}), "
                         f"got {dim!r}")
    check_like(function, "b", b, x, (x.shape[dim],))


def _check_backward(function: str, grad, x, b, y, dim, act, alpha, gain, clamp) -> None:
    check_float_tensor(function, "grad", grad)
    needed = saved_input(act if isinstance(act, str) else "", clamp)
    if needed == "x" and x is None:
        raise ValueError(f"{function}: x must be given for act={act!r}")
    if needed == "y" and y is None:
        raise ValueError(f"{function}: y must be given for act={act!r} with clamp={clamp!r}")
    for name, t in (("x", x), ("y", y)):
        check_like(function, name, t, grad, grad.shape, optional=True)
    if b is not None and x is None:
        raise ValueError(f"{function}: b is added to x: x must be given with b")
    check_bias_act(function, grad if x is None else x, b, dim, act, alpha, gain, clamp)


def _check_backward2(function: str, grad2, grad, x, b, dim, act, alpha, gain, clamp) -> None:
    check_float_tensor(function, "grad2", grad2)
    check_like(function, "grad", grad, grad2, grad2.shape)
    check_like(function, "x", x, grad2, grad2.shape)
    check_choice(function, "act", act, SMOOTH)
    check_bias_act(function, x, b, dim, act, alpha, gain, clamp)


def _fake(x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x)


def _fake_backward(grad, x, b, y, dim, act, alpha, gain, clamp):
    return torch.empty_like(x if x is not None else y if y is not None else grad)


def _fake_backward2(grad2, grad, x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x)


def _bias_shape(x: torch.Tensor, dim: int) -> list[int]:
    return [-1 if i == dim else 1 for i in range(x.dim())]


def _sum_except(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t summed over every dimension but ``dim`` (t itself when it has no other: sum over [] sums all)."""
    others = [i for i in range(t.dim()) if i != dim]
    return t.sum(others) if others else t


def second_derivative(act: str, v: torch.Tensor) -> torch.Tensor:
    """act''(v) of a smooth activation, in torch ops (differentiable again)."""
    if act == "tanh":
        t = torch.tanh(v)
        return -2 * t * (1 - t * t)
    s = torch.sigmoid(v)
    if act == "sigmoid":
        return s * (1 - s) * (1 - 2 * s)
    if act == "elu":  # at the kinks the upper branch (0), as torch's double backward
        return torch.where(v < 0, torch.exp(v), torch.zeros_like(v))
    if act == "selu":
        return torch.where(v < 0, reference.SELU_SCALE * reference.SELU_ALPHA * torch.exp(v), torch.zeros_like(v))
    if act == "softplus":
        return torch.where(v < SOFTPLUS_THRESHOLD, s * (1 - s), torch.zeros_like(v))
    return s * (1 - s) * (2 + v * (1 - 2 * s))  # swish


def _backward2_formula(grad2, grad, x, b, dim, act, alpha, gain, clamp):
    """grad2 · grad · gain · act''(x + b), zero where the clamp is active, computed in float32 or wider."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    v = x.to(dtype) if b is None else x.to(dtype) + b.to(dtype).reshape(_bias_shape(x, dim))
    out = grad2.to(dtype) * grad.to(dtype) * (gain * second_derivative(act, v))
    if clamp is not None:
        u = gain * reference.ACTIVATIONS[act][0](v.detach(), alpha)
        out = torch.where((u > -clamp) & (u < clamp), out, torch.zeros_like(out))
    return out.to(x.dtype)


def _save(ctx, inputs, output):
    x, b, dim, act, alpha, gain, clamp = inputs
    saved = saved_input(act, clamp)
    ctx.save_for_backward(*(x, b) if saved == "x" else (None, None), output if saved == "y" else None)
    ctx.args = (dim, act, alpha, gain, clamp)
    ctx.has_bias = b is not None


def _backward(ops, ctx, grad_y):
    x, b, y = ctx.saved_tensors
    dim = ctx.args[0]
    # y enters the backward through piecewise-constant slopes and masks only: detached, the double backward
    # does not send a zero gradient back through the forward
    grad_v = ops.bias_act_backward(grad_y, x, b, None if y is None else y.detach(), *ctx.args)
    grad_b = _sum_except(grad_v, dim) if ctx.has_bias and ctx.needs_input_grad[1] else None
    return grad_v, grad_b, None, None, None, None, None


def _save_backward(ctx, inputs, output):
    grad, x, b, y, dim, act, alpha, gain, clamp = inputs
    ctx.save_for_backward(grad if act in SMOOTH else None, x, b, y)
    ctx.args = (dim, act, alpha, gain, clamp)


def _backward_backward(ops, ctx, h):
    grad, x, b, y = ctx.saved_tensors
    dim, act = ctx.args[:2]
    d_grad = ops.bias_act_backward(h, x, b, y, *ctx.args) if ctx.needs_input_grad[0] else None
    d_x = d_b = None
    if act in SMOOTH and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        d_x = ops.bias_act_backward2(h, grad, x, b, *ctx.args)
        if b is not None and ctx.needs_input_grad[2]:
            d_b = _sum_except(d_x, dim)
    return d_grad, d_x, d_b, None, None, None, None, None, None


_KERNEL_DTYPES = {"reference": _ALL_FLOAT_TYPES, "cpu": _ALL_FLOAT_TYPES, "cuda": _FLOAT_TYPES, "triton": _FLOAT_TYPES}

_SCHEMA_ARGS = "int dim, str act, float alpha, float gain, float? clamp"
BIAS_ACT = Op("bias_act", f"(Tensor x, Tensor? b, {_SCHEMA_ARGS}) -> Tensor", check=check_bias_act, fake=_fake,
              triton=_triton and _triton.bias_act, autograd=Autograd(_save, _backward),
              backends=OpBackends("gmk.bias_act", dtypes=_KERNEL_DTYPES))
BIAS_ACT_BACKWARD = Op(
    "bias_act_backward", f"(Tensor grad, Tensor? x, Tensor? b, Tensor? y, {_SCHEMA_ARGS}) -> Tensor",
    check=_check_backward, fake=_fake_backward, triton=_triton and _triton.bias_act_backward,
    autograd=Autograd(_save_backward, _backward_backward), dtype_of=lambda grad, *rest: grad)
BIAS_ACT_BACKWARD2 = Op(
    "bias_act_backward2", f"(Tensor grad2, Tensor grad, Tensor x, Tensor? b, {_SCHEMA_ARGS}) -> Tensor",
    check=_check_backward2, fake=_fake_backward2, triton=_triton and _triton.bias_act_backward2,
    formula=_backward2_formula)


# --- the public function -----------------------------------------------------------------------------

def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, *, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             backend: str = "auto") -> torch.Tensor:
    """``clamp(gain · act(x + b), −clamp, clamp)``, StyleGAN2-ADA's fused bias and activation.

    ``b`` (x.shape[dim],) is broadcast along ``dim`` (negative counts from the end; ignored without b).
    ``act``: linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus or swish. ``alpha`` (lrelu's slope,
    0.2 by default) is used by lrelu alone; ``gain`` defaults to √2 for relu, lrelu and swish, 1 otherwise;
    ``clamp`` (None: no clamp) bounds the output after the gain, and every derivative is zero where it is
    active. Returns a tensor of x's shape, dtype and memory layout; differentiable to any order.
    """
    function = "bias_act"
    check_float_tensor(function, "x", x)
    check_choice(function, "act", act, ACTIVATIONS)
    for name, value in (("alpha", alpha), ("gain", gain), ("clamp", clamp)):
        if value is not None:
            check_finite_number(function, name, value)
    alpha, gain = reference.resolve(act, alpha, gain)
    clamp = None if clamp is None else float(clamp)
    if b is not None:
        if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
            raise ValueError(f"{function}: dim must be an int in [{-x.dim()}, {x.dim() - 1}] (x has shape "
                             f"{tuple(x.shape)}), got {dim!r}")
        dim %= x.dim()
    else:
        dim = 0
    BIAS_ACT.check(function, x, b, dim, act, alpha, gain, clamp)
    name = BIAS_ACT.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.bias_act(x, b, dim, act, alpha, gain, clamp)
    return BIAS_ACT.run(name, x, b, dim, act, alpha, gain, clamp)


def default_gain(act: str) -> float:
    """The gain ``bias_act`` applies to ``act`` when none is given (√2 for relu, lrelu, swish; else 1)."""
    check_choice("default_gain", "act", act, ACTIVATIONS)
    return reference.ACTIVATIONS[act][2]

