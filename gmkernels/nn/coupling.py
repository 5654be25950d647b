"""nn.Module of the affine / additive coupling layer with Glow's coupling network."""
from __future__ import annotations

import torch

from .._validation import check_finite_number, check_input, check_int
from ..ops.coupling import affine_coupling, h_channels
from ..reference.coupling import CHECKERBOARD_LAYOUTS, LAYOUTS, TRANSFORMS, checkerboard_b


class ZeroConv2d(torch.nn.Module):
    """Glow's ``Conv2dZeros``: a 3×3 convolution with zero weight and bias, its output scaled per channel
    by ``exp(logscale_factor · logs)`` with ``logs`` zero too, so a fresh coupling layer is the identity
    (additive) or a constant scale (affine)."""

    def __init__(self, in_channels: int, out_channels: int, logscale_factor: float = 3.0):
        super().__init__()
        check_int("ZeroConv2d", "in_channels", in_channels, 1)
        check_int("ZeroConv2d", "out_channels", out_channels, 1)
        check_finite_number("ZeroConv2d", "logscale_factor", logscale_factor)
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)
        torch.nn.init.zeros_(self.conv.weight)
        torch.nn.init.zeros_(self.conv.bias)
        self.logs = torch.nn.Parameter(torch.zeros(out_channels, 1, 1))
        self.logscale_factor = logscale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(self.logs * self.logscale_factor)


class AffineCoupling(torch.nn.Module):
    """Glow's affine coupling layer (see gmk.affine_coupling) on x (N, C, H, W), C even.

    The coupling network (Glow, arXiv 1807.03039 §3.3): 3×3 conv to ``hidden_channels``, ReLU, 1×1
    conv, ReLU, zero-initialised 3×3 conv (:class:`ZeroConv2d`) to C channels (r and t; C/2, t only,
    for ``transform="additive"``), read as ``layout`` says. With ``layout="checkerboard"`` or
    ``"checkerboard_odd"`` (RealNVP's spatial split; any C) the network sees every channel of x
    times the x_a mask, plus the mask as one more channel, and gives 2C channels (C for additive). The convolutions are cuDNN's
    (``torch.nn.Conv2d``); the first two are initialised N(0, 0.05²) with zero bias, as in the popular
    PyTorch port. ``forward(x) -> (y, logdet)``, ``reverse(y) -> x``.
    """

    def __init__(self, num_channels: int, hidden_channels: int = 512, transform: str = "glow",
                 layout: str = "halves"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"AffineCoupling: layout must be one of {LAYOUTS}, got {layout!r}")
        checkerboard = layout in CHECKERBOARD_LAYOUTS
        check_int("AffineCoupling", "num_channels", num_channels, 1 if checkerboard else 2)
        if num_channels % 2 and not checkerboard:
            raise ValueError(f"AffineCoupling: num_channels must be even (halves x_a, x_b), "
                             f"got {num_channels}")
        check_int("AffineCoupling", "hidden_channels", hidden_channels, 1)
        if transform not in TRANSFORMS:
            raise ValueError(f"AffineCoupling: transform must be one of {TRANSFORMS}, got {transform!r}")
        self.num_channels, self.hidden_channels = num_channels, hidden_channels
        self.transform, self.layout = transform, layout
        net_in = num_channels + 1 if checkerboard else num_channels // 2
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(net_in, hidden_channels, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(hidden_channels, hidden_channels, 1),
            torch.nn.ReLU(),
            ZeroConv2d(hidden_channels, h_channels(num_channels, transform, layout)),
        )
        for conv in (self.net[0], self.net[2]):
            torch.nn.init.normal_(conv.weight, 0.0, 0.05)
            torch.nn.init.zeros_(conv.bias)

    def _h(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.net[0].weight
        check_input("AffineCoupling", x, self.num_channels, rank=4, device=weight.device, dtype=weight.dtype)
        if self.layout in CHECKERBOARD_LAYOUTS:
            a = (~checkerboard_b(x.shape[2:], self.layout, x.device)).to(x.dtype).expand(x.shape[0], 1, -1, -1)
            return self.net(torch.cat([x * a, a], dim=1))
        return self.net(x[:, : self.num_channels // 2])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return affine_coupling(x, self._h(x), transform=self.transform, layout=self.layout)

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        # y_a = x_a: the network sees the same input in both directions.
        return affine_coupling(y, self._h(y), transform=self.transform, layout=self.layout, reverse=True)[0]

    def extra_repr(self) -> str:
        return (f"{self.num_channels}, hidden_channels={self.hidden_channels}, transform={self.transform!r}, "
                f"layout={self.layout!r}")


__all__ = ["AffineCoupling", "ZeroConv2d"]
