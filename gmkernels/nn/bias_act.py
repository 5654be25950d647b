"""nn.Module drop-in of StyleGAN2's fused bias + leaky ReLU (rosinality's ``FusedLeakyReLU``)."""
from __future__ import annotations

import math

import torch

from .._validation import check_bool, check_finite_number, check_input, check_int
from ..ops.bias_act import bias_act


class FusedLeakyReLU(torch.nn.Module):
    """``leaky_relu(x + bias, negative_slope) · scale`` with a learned per-channel bias (dim 1, zeros at
    first), on :func:`gmk.bias_act` (act="lrelu"). ``bias=False`` leaves the bias out."""

    def __init__(self, channels: int, negative_slope: float = 0.2, scale: float = math.sqrt(2), *,
                 bias: bool = True):
        super().__init__()
        check_int("FusedLeakyReLU", "channels", channels)
        check_finite_number("FusedLeakyReLU", "negative_slope", negative_slope)
        if negative_slope < 0:
            raise ValueError(f"FusedLeakyReLU: negative_slope must be >= 0, got {negative_slope!r}")
        check_finite_number("FusedLeakyReLU", "scale", scale)
        check_bool("FusedLeakyReLU", "bias", bias)
        self.channels, self.negative_slope, self.scale = channels, float(negative_slope), float(scale)
        self.bias = torch.nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("FusedLeakyReLU", x, self.channels)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return bias_act(x, bias, dim=1, act="lrelu", alpha=self.negative_slope, gain=self.scale)

    def extra_repr(self) -> str:
        return f"{self.channels}, negative_slope={self.negative_slope}, scale={self.scale:.6g}"
