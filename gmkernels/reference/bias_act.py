"""Fused bias and activation (StyleGAN2-ADA's ``bias_act``), as plain PyTorch ops (any dtype).

``y = clamp(gain · act(x + b), −clamp, clamp)`` with ``b`` broadcast along ``dim``
(docs/conventions.md, "Bias and activation"). Differentiable to any order by autograd; where the clamp
is active (|y| reaches ``clamp``) every derivative is zero.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717


def _swish(v, alpha):
    """v · σ(v) through F.silu, whose derivative σ(v)(1 + v(1 − σ(v))) is finite at every finite v (autograd
    of σ(v) · v multiplies the incoming gradient by v first: inf · σ'(v) = inf · 0 = NaN at v = ±max)."""
    return F.silu(v)


# name: (the function of v = x + b, its default alpha, its default gain)
ACTIVATIONS = {
    "linear": (lambda v, alpha: v, 0.0, 1.0),
    "relu": (lambda v, alpha: F.relu(v), 0.0, math.sqrt(2)),
    "lrelu": (lambda v, alpha: F.leaky_relu(v, alpha), 0.2, math.sqrt(2)),
    "tanh": (lambda v, alpha: torch.tanh(v), 0.0, 1.0),
    "sigmoid": (lambda v, alpha: torch.sigmoid(v), 0.0, 1.0),
    "elu": (lambda v, alpha: F.elu(v), 0.0, 1.0),
    "selu": (lambda v, alpha: F.selu(v), 0.0, 1.0),
    "softplus": (lambda v, alpha: F.softplus(v), 0.0, 1.0),
    "swish": (_swish, 0.0, math.sqrt(2)),
}


def resolve(act: str, alpha: float | None, gain: float | None) -> tuple[float, float]:
    """``(alpha, gain)`` with the activation's defaults for the ones that are None."""
    _, default_alpha, default_gain = ACTIVATIONS[act]
    return float(default_alpha if alpha is None else alpha), float(default_gain if gain is None else gain)


def clamp_output(u: torch.Tensor, clamp: float) -> torch.Tensor:
    """``u`` clamped to [−clamp, clamp]; the derivative passes only where −clamp < u < clamp (zero where the
    output sits at the clamp, boundary included: the fused kernels see only the clamped y)."""
    inside = (u > -clamp) & (u < clamp)
    return torch.where(inside, u, u.detach().clamp(-clamp, clamp))


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    function, _, _ = ACTIVATIONS[act]
    alpha, gain = resolve(act, alpha, gain)
    if b is not None:
        x = x + b.reshape([-1 if i == dim % x.dim() else 1 for i in range(x.dim())])
    x = function(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = clamp_output(x, float(clamp))
    return x
