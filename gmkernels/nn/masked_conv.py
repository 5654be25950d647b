"""nn.Module drop-ins of the masked and shifted convolutions, state_dict-compatible with nn.Conv2d."""
from __future__ import annotations

import math

import torch

from .._validation import check_bool, check_input, check_int
from ..ops.gated import ACTIVATIONS
from ..ops.masked_conv import check_gate_groups, check_mask_arguments, check_shift, masked_conv2d, shifted_conv2d


class _Conv2dParameters(torch.nn.Module):
    """``weight`` (out, in, kh, kw) and ``bias`` (out) or None, named and initialised as nn.Conv2d's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], bias: bool):
        super().__init__()
        check_bool(type(self).__name__, "bias", bias)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = torch.nn.Parameter(torch.empty(out_channels, in_channels, *kernel_size))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            torch.nn.init.uniform_(self.bias, -bound, bound)


def _kernel_pair(module: str, kernel_size) -> tuple[int, int]:
    """(kh, kw) of an int k or a pair, each an int >= 1."""
    pair = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"{module}: kernel_size must be an int or a pair of ints, got {kernel_size!r}")
    for size in pair:
        check_int(module, "kernel_size", size, 1)
    return tuple(pair)


class MaskedConv2d(_Conv2dParameters):
    """PixelCNN's masked k×k convolution (see gmk.masked_conv2d); loads an nn.Conv2d state dict.

    With ``gate="tanh"`` or ``"identity"`` the out_channels = 2C outputs go through the gated
    activation (``cond`` added first) and forward returns C channels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str = "B",
                 color_groups: int = 1, bias: bool = True, gate: str | None = None):
        check_mask_arguments("MaskedConv2d", kernel_size, mask_type, in_channels, out_channels, color_groups)
        if gate is not None and gate not in ACTIVATIONS:
            raise ValueError(f"MaskedConv2d: gate must be None or one of {ACTIVATIONS}, got {gate!r}")
        if gate is not None and out_channels % 2:
            raise ValueError(f"MaskedConv2d: gate needs an even out_channels (2C), got {out_channels}")
        check_gate_groups("MaskedConv2d", gate, color_groups)
        super().__init__(in_channels, out_channels, (kernel_size, kernel_size), bias)
        self.mask_type, self.color_groups, self.gate = mask_type, color_groups, gate

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        check_input("MaskedConv2d", x, self.in_channels, rank=4)
        return masked_conv2d(x, self.weight, self.bias, mask_type=self.mask_type,
                             color_groups=self.color_groups, gate=self.gate, cond=cond)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size[0]}, "
                f"mask_type={self.mask_type!r}, color_groups={self.color_groups}, "
                f"bias={self.bias is not None}, gate={self.gate!r}")


class ShiftedConv2d(_Conv2dParameters):
    """PixelCNN++'s down- or down-right-shifted convolution (see gmk.shifted_conv2d); loads an
    nn.Conv2d state dict. ``kernel_size``: an int k (k×k) or a pair (kh, kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 shift: str = "down", bias: bool = True):
        kh, kw = _kernel_pair("ShiftedConv2d", kernel_size)
        check_int("ShiftedConv2d", "in_channels", in_channels, 1)
        check_int("ShiftedConv2d", "out_channels", out_channels, 1)
        check_shift("ShiftedConv2d", shift, kw)
        super().__init__(in_channels, out_channels, (kh, kw), bias)
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("ShiftedConv2d", x, self.in_channels, rank=4)
        return shifted_conv2d(x, self.weight, self.bias, shift=self.shift)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"shift={self.shift!r}, bias={self.bias is not None}")
