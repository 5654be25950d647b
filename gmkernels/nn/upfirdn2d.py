"""nn.Modules of StyleGAN2's FIR resampling, on :func:`gmk.upfirdn2d` (the filter is a buffer)."""
from __future__ import annotations

import torch

from .._validation import check_finite_number, check_input, check_int
from ..ops.upfirdn2d import downsample2d, parse_padding, setup_filter, upfirdn2d, upsample2d

BINOMIAL_4 = (1, 3, 3, 1)  # StyleGAN2's resampling filter


def filter_from_taps(module: str, taps, **kwargs) -> torch.Tensor:
    """:func:`gmk.setup_filter` of the module's ``taps``; its errors name the module and ``taps``."""
    try:
        return setup_filter(taps, **kwargs)
    except ValueError as error:
        raise ValueError(f"{module}: taps: {error}") from None


class _Resample(torch.nn.Module):
    def __init__(self, function: str, taps, factor: int, gain: float):
        super().__init__()
        check_int(function, "factor", factor)
        check_finite_number(function, "gain", gain)
        self.factor, self.gain = factor, float(gain)
        self.register_buffer("filter", filter_from_taps(function, taps))

    def extra_repr(self) -> str:
        return f"factor={self.factor}, taps={tuple(self.filter.shape)}, gain={self.gain}"


class Upsample2d(_Resample):
    """Upsamples (N, C, H, W) by ``factor`` with the FIR filter ``taps`` (StyleGAN2's [1, 3, 3, 1] by
    default, normalised; see :func:`gmk.setup_filter`): :func:`gmk.upsample2d`, output ``factor`` × x's size."""

    def __init__(self, taps=BINOMIAL_4, factor: int = 2, gain: float = 1):
        super().__init__("Upsample2d", taps, factor, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("Upsample2d", x, rank=4)
        return upsample2d(x, self.filter, up=self.factor, gain=self.gain)


class Downsample2d(_Resample):
    """Filters (N, C, H, W) with the FIR filter ``taps`` and keeps every ``factor``-th pixel:
    :func:`gmk.downsample2d`, output x's size / ``factor``."""

    def __init__(self, taps=BINOMIAL_4, factor: int = 2, gain: float = 1):
        super().__init__("Downsample2d", taps, factor, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("Downsample2d", x, rank=4)
        return downsample2d(x, self.filter, down=self.factor, gain=self.gain)


class Blur(torch.nn.Module):
    """rosinality's ``Blur``: ``upfirdn2d(x, filter, padding=padding)`` with the normalised filter ``taps``
    scaled by ``upsample_factor ** 2`` (the blur after a transposed convolution that upsampled by it).
    ``padding``: an int, (x, y) or (x0, x1, y0, y1); rosinality's ``pad=(p0, p1)`` is ``(p0, p1, p0, p1)``."""

    def __init__(self, taps=BINOMIAL_4, padding=0, upsample_factor: int = 1):
        super().__init__()
        check_int("Blur", "upsample_factor", upsample_factor)
        self.padding = parse_padding("Blur", padding)
        self.upsample_factor = upsample_factor
        self.register_buffer("filter", filter_from_taps("Blur", taps, gain=upsample_factor ** 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("Blur", x, rank=4)
        return upfirdn2d(x, self.filter, padding=self.padding)

    def extra_repr(self) -> str:
        return f"taps={tuple(self.filter.shape)}, padding={self.padding}, upsample_factor={self.upsample_factor}"
