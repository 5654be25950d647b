"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017, arXiv 1605.08803), on gmk.affine_coupling.

Preprocessing (§4.1): u in [0, 1) to logit(α + (1 − 2α)u), α = ``logit_alpha``, its log-determinant
included. ``num_scales`` scales (§3.6): at each scale below the top, 3 affine couplings with alternating
checkerboard masks (gmk.affine_coupling, ``layout="checkerboard"`` / ``"checkerboard_odd"``), a squeeze,
3 couplings with alternating channel-wise masks (``layout="halves"``, the halves swapped between them),
then half of the channels factored out with a N(0, 1) prior (a learned one with ``learn_prior``); the top
scale: 4 checkerboard couplings. Each coupling: s = exp(scale · tanh(r)) (the paper's bounded scale,
``transform="realnvp"``), (r, t) from a ResNet of ``num_blocks`` residual blocks of ``hidden_channels``
on x_a (and the checkerboard mask), whose last convolution starts at zero.

Differences from the paper: actnorm (gmk.nn.ActNorm, data-dependent init) after each coupling instead of
batch normalisation; no weight normalisation nor L2 regularisation; the top prior is learned per channel
when ``learn_prior`` (Glow's). See models/_flow.py for the contract and ``reversible``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validation import check_int
from ..nn.actnorm import ActNorm
from ..nn.coupling import ZeroConv2d
from ..nn.flow import Squeeze2d
from ..reference.coupling import CHECKERBOARD_LAYOUTS, checkerboard_b, logdet_dtype
from ._autoregressive import ImageConfig, check_number
from ._flow import CouplingLayer, FlowLevel, MultiScaleFlow, ReverseChannels, check_flow_fields


@dataclass(frozen=True)
class RealNVPConfig(ImageConfig):
    """A RealNVP's sizes. Defaults: the paper's CIFAR-10 model (§4.1: coupling ResNets of 8 blocks of 64
    features, scales down to 4×4, α = 0.05), with a N(0, 1) prior."""

    in_channels: int = 3
    num_scales: int = 4
    hidden_channels: int = 64
    num_blocks: int = 8
    logit_alpha: float = 0.05
    learn_prior: bool = False
    num_bins: int = 256
    image_size: int = 32
    num_classes: int | None = None  # None or 0: unconditional
    reversible: bool = False

    def __post_init__(self):
        name = type(self).__name__
        for field in ("num_scales", "hidden_channels", "num_blocks"):
            check_int(name, field, getattr(self, field))
        check_number(name, "logit_alpha", self.logit_alpha, 0.0, 0.5)
        if self.logit_alpha == 0:
            raise ValueError(f"{name}: logit_alpha must be in (0, 0.5) (logit(0) is -inf), got 0")
        check_flow_fields(self, self.num_scales - 1, "each scale below the top squeezes by 2")

    @staticmethod
    def presets(in_channels: int) -> tuple[dict, dict]:
        """The "tiny" network's fields and the small one's (images up to 16×16; 8×8 digits: 1.99 test
        bits/dim after the 2000 steps of `gmk train realnvp`, 4.2 minutes on one thread of a busy CPU; 64
        hidden channels and 2 blocks reached 1.95 at step 750, then over-fitted to 2.29 at step 2000)."""
        tiny = dict(num_scales=2, hidden_channels=8, num_blocks=1)
        small = dict(num_scales=2, hidden_channels=32, num_blocks=1)
        return tiny, small


class ResidualBlock(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class RealNVPCoupling(CouplingLayer):
    """An affine coupling of RealNVP: ``layout`` "checkerboard", "checkerboard_odd" or "halves";
    log s = scale · tanh(r) per channel (``scale`` learned, 1 at the start)."""

    def __init__(self, channels: int, hidden_channels: int, num_blocks: int, layout: str):
        super().__init__()
        self.transform, self.layout = "realnvp", layout
        checkerboard = layout in CHECKERBOARD_LAYOUTS
        transformed = channels if checkerboard else channels // 2
        net_in = channels + 1 if checkerboard else channels // 2
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(net_in, hidden_channels, 3, padding=1),
            *(ResidualBlock(hidden_channels) for _ in range(num_blocks)),
            torch.nn.ReLU(),
            ZeroConv2d(hidden_channels, 2 * transformed),
        )
        self.scale = torch.nn.Parameter(torch.ones(transformed, 1, 1))

    def _h(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout in CHECKERBOARD_LAYOUTS:
            a = (~checkerboard_b(x.shape[2:], self.layout, x.device)).to(x.dtype).expand(x.shape[0], 1, -1, -1)
            inputs = torch.cat([x * a, a], dim=1)
        else:
            inputs = x[:, : x.shape[1] // 2]
        r, t = self.net(inputs).chunk(2, dim=1)
        return torch.cat([self.scale * torch.tanh(r), t], dim=1)


class RealNVP(MultiScaleFlow):
    """``levels[i]``: FlowLevel of RealNVPCoupling and ActNorm layers (and Squeeze2d, ReverseChannels),
    ``top_prior`` (2C, 1, 1) and ``class_prior`` (nn.Embedding, when conditional)."""

    config_class = RealNVPConfig

    def __init__(self, config: RealNVPConfig | None = None):
        config = config or RealNVPConfig()
        super().__init__(config)
        c, channels, levels = config, config.in_channels, []

        def coupling(channels: int, layout: str) -> list[torch.nn.Module]:
            return [RealNVPCoupling(channels, c.hidden_channels, c.num_blocks, layout), ActNorm(channels)]

        checkerboards = ("checkerboard", "checkerboard_odd")
        for index in range(c.num_scales - 1):
            layers = [m for k in range(3) for m in coupling(channels, checkerboards[k % 2])]
            channels *= 4
            layers.append(Squeeze2d())
            for k in range(3):
                layers += coupling(channels, "halves") + [ReverseChannels()]
            prior = ZeroConv2d(channels // 2, 2 * (channels - channels // 2)) if c.learn_prior else None
            levels.append(FlowLevel(layers, squeezes=1, split=True, prior=prior))
            channels //= 2
        top = [m for k in range(4) for m in coupling(channels, checkerboards[k % 2])]
        levels.append(FlowLevel(top, squeezes=0, split=False, prior=None))
        self.levels = torch.nn.ModuleList(levels)
        self.build_top_prior(channels)

    def _logit_terms(self, u: torch.Tensor) -> torch.Tensor:
        return self.config.logit_alpha + (1 - 2 * self.config.logit_alpha) * (u + 0.5)

    def preprocess(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logit(α + (1 − 2α)(u + 1/2)) and its logdet Σ log(1 − 2α) − log p − log(1 − p)."""
        p = self._logit_terms(u)
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        terms = math.log(1 - 2 * self.config.logit_alpha) - log_p - log_1mp
        return log_p - log_1mp, terms.flatten(1).sum(1, dtype=logdet_dtype(u.dtype))

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(x) - self.config.logit_alpha) / (1 - 2 * self.config.logit_alpha) - 0.5
