"""Glow's squeeze and flow step (actnorm → invertible 1x1 convolution → affine coupling)."""
from __future__ import annotations

import torch

from .._validation import check_bool, check_input
from ..ops.invconv import actnorm_conv1x1, actnorm_conv1x1_lu
from ..reference.coupling import logdet_dtype
from .actnorm import ActNorm
from .coupling import AffineCoupling
from .invconv import InvConv2d, InvConv2dLU


class Squeeze2d(torch.nn.Module):
    """(N, C, H, W) → (N, 4C, H/2, W/2): each 2×2 block of positions becomes 4 channels, channel
    c·4 + 2·dy + dx holding x[c, 2i + dy, 2j + dx] (RealNVP §3.6, Glow). A permutation: logdet 0.
    ``forward(x) -> (y, logdet)`` (logdet zeros (N,), as every flow layer returns one), ``reverse(y) -> x``.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input("Squeeze2d", x, rank=4)
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"Squeeze2d: input must be (N, C, H, W) with H and W even, "
                             f"got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(n, dtype=logdet_dtype(x.dtype))

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input("Squeeze2d.reverse", y, rank=4)
        if y.shape[1] % 4:
            raise ValueError(f"Squeeze2d.reverse: input must be (N, 4C, H, W), got shape {tuple(y.shape)}")
        n, c4, h, w = y.shape
        return y.reshape(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c4 // 4, 2 * h, 2 * w)


class FlowStep(torch.nn.Module):
    """One step of Glow's flow (arXiv 1807.03039 §3): actnorm, invertible 1x1 convolution (LU-decomposed
    when ``lu``), affine coupling (:class:`AffineCoupling` with ``transform`` and ``layout``).

    Actnorm and the 1x1 convolution run as one fused op (gmk.actnorm_conv1x1_lu / actnorm_conv1x1): one
    pass over the data, no host synchronisation; actnorm initialises itself from the first batch.
    ``forward(x) -> (y, logdet)`` with logdet (N,) the sum of the three layers'; ``reverse(y) -> x``.
    """

    def __init__(self, num_channels: int, hidden_channels: int = 512, lu: bool = True,
                 transform: str = "glow", layout: str = "halves"):
        super().__init__()
        check_bool("FlowStep", "lu", lu)
        self.actnorm = ActNorm(num_channels)
        self.invconv = InvConv2dLU(num_channels) if lu else InvConv2d(num_channels)
        self.coupling = AffineCoupling(num_channels, hidden_channels, transform, layout)
        self.lu = lu

    def _actnorm_conv1x1(self, x: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        bias, log_scale = self.actnorm.bias, self.actnorm.log_scale
        if self.lu:
            return actnorm_conv1x1_lu(x, bias, log_scale, *self.invconv.lu_parameters(), reverse=reverse)
        return actnorm_conv1x1(x, bias, log_scale, self.invconv.weight, reverse=reverse)

    def _check(self, function: str, x) -> None:
        # the coupling network's dtype: actnorm and the 1x1 take any float x, its convolutions do not
        check_input(function, x, self.actnorm.num_channels, rank=4, device=self.actnorm.bias.device,
                    dtype=self.coupling.net[0].weight.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check("FlowStep", x)
        if not self.actnorm._initialized:  # a Python flag: reading the buffer on CUDA would synchronise
            self.actnorm.initialize(x)
        z, logdet = self._actnorm_conv1x1(x, reverse=False)
        y, logdet_coupling = self.coupling(z)
        return y, logdet + logdet_coupling

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check("FlowStep.reverse", y)
        return self._actnorm_conv1x1(self.coupling.reverse(y), reverse=True)[0]

    def extra_repr(self) -> str:
        return f"lu={self.lu}"
