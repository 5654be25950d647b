"""nn.Module drop-ins of WaveNet's dilated causal convolution and residual layer, state_dict-compatible
with the nn.Conv1d layers they replace."""
from __future__ import annotations

import math

import torch

from .._validation import check_bool, check_finite_number, check_input, check_int
from ..ops.causal_conv import causal_conv1d, wavenet_layer


def _check_sizes(module: str, **sizes) -> None:
    for name, value in sizes.items():
        check_int(module, name, value, 1)


class CausalConv1d(torch.nn.Conv1d):
    """A dilated causal convolution (see gmk.causal_conv1d): an nn.Conv1d (same parameters, same
    initialisation, loads its state dict) whose output at t sees inputs t - (k-1)·dilation .. t only.
    The left padding is implied, never stored; output length = input length."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1,
                 bias: bool = True, device=None, dtype=None):
        _check_sizes("CausalConv1d", in_channels=in_channels, out_channels=out_channels,
                     kernel_size=kernel_size, dilation=dilation)
        check_bool("CausalConv1d", "bias", bias)
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias, device=device,
                         dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("CausalConv1d", x, self.in_channels, rank=3)
        return causal_conv1d(x, self.weight, self.bias, dilation=self.dilation[0])


class WaveNetLayer(torch.nn.Module):
    """WaveNet's residual layer (see gmk.wavenet_layer) as the usual three nn.Conv1d: ``conv`` (R → 2R,
    dilated causal, kernel_size), ``res`` and ``skip`` (1x1, R → R and R → S). forward(x, cond=None)
    returns (x_next, skip); cond is the (N, 2R, T) or (N, 2R, 1) conditioning, already projected."""

    def __init__(self, residual_channels: int, skip_channels: int, kernel_size: int = 2, dilation: int = 1,
                 residual_scale: float = 1.0, bias: bool = True, device=None, dtype=None):
        super().__init__()
        _check_sizes("WaveNetLayer", residual_channels=residual_channels, skip_channels=skip_channels,
                     kernel_size=kernel_size, dilation=dilation)
        check_finite_number("WaveNetLayer", "residual_scale", residual_scale)
        check_bool("WaveNetLayer", "bias", bias)
        options = {"bias": bias, "device": device, "dtype": dtype}
        self.conv = CausalConv1d(residual_channels, 2 * residual_channels, kernel_size, dilation, **options)
        self.res = torch.nn.Conv1d(residual_channels, residual_channels, 1, **options)
        self.skip = torch.nn.Conv1d(residual_channels, skip_channels, 1, **options)
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_input("WaveNetLayer", x, self.res.in_channels, rank=3)
        return wavenet_layer(x, self.conv.weight, self.conv.bias, self.res.weight[:, :, 0], self.res.bias,
                             self.skip.weight[:, :, 0], self.skip.bias, cond, dilation=self.conv.dilation[0],
                             residual_scale=self.residual_scale)

    def extra_repr(self) -> str:
        scale = self.residual_scale
        return f"residual_scale={'sqrt(0.5)' if math.isclose(scale, math.sqrt(0.5)) else scale}"
