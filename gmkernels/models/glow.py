"""Glow (Kingma & Dhariwal 2018, arXiv 1807.03039), on gmk.nn layers.

``num_levels`` levels, each: squeeze (gmk.nn.Squeeze2d), ``steps_per_level`` flow steps
(gmk.nn.FlowStep: actnorm and the invertible 1x1 convolution fused in one op, LU-decomposed when ``lu``,
then the affine or additive coupling, whose network ends in a zero-initialised convolution), then, below
the top, a split whose factored-out half has a learned Gaussian prior from the kept half (a
zero-initialised 3x3 convolution, Glow's ``split2d_prior``). The top latent's prior is learned per
channel (``learn_prior``, Glow's ``learntop``) and shifted by a zero-initialised class embedding when
``num_classes`` (Glow's ``ycond``; Glow's extra classification loss is not included).

Differences from openai/glow: inputs are dequantised with uniform noise in [0, 1/num_bins) per sub-pixel
(Glow adds the same noise); the coupling's scale is σ(r + 2) (Glow's); no data-dependent init of the
convolutions other than actnorm's. See models/_flow.py for the contract and ``reversible``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import check_int
from ..nn.coupling import ZeroConv2d
from ..nn.flow import FlowStep, Squeeze2d
from ._autoregressive import ImageConfig
from ._flow import FlowLevel, MultiScaleFlow, check_flow_fields

COUPLINGS = {"affine": "glow", "additive": "additive"}  # Glow's name -> gmk.affine_coupling's transform


@dataclass(frozen=True)
class GlowConfig(ImageConfig):
    """A Glow's sizes. Defaults: the paper's CIFAR-10 model (3 levels of 32 steps, 512 hidden channels,
    LU-decomposed 1x1 convolutions, affine coupling, learned prior, 256 bins)."""

    in_channels: int = 3
    num_levels: int = 3
    steps_per_level: int = 32
    hidden_channels: int = 512
    lu: bool = True
    coupling: str = "affine"
    learn_prior: bool = True
    num_bins: int = 256
    image_size: int = 32
    num_classes: int | None = None  # None or 0: unconditional
    reversible: bool = False

    def __post_init__(self):
        name = type(self).__name__
        for field in ("num_levels", "steps_per_level", "hidden_channels"):
            check_int(name, field, getattr(self, field))
        if not isinstance(self.lu, bool):
            raise TypeError(f"{name}: lu must be a bool, got {type(self.lu).__name__}")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"{name}: coupling must be one of {tuple(COUPLINGS)}, got {self.coupling!r}")
        check_flow_fields(self, self.num_levels, "each level squeezes by 2")

    @staticmethod
    def presets(in_channels: int) -> tuple[dict, dict]:
        """The "tiny" network's fields and the small one's (images up to 16×16; 8×8 digits: 2.20 test
        bits/dim after the 2000 steps of `gmk train glow`, 4.8 minutes on one thread of a busy CPU)."""
        tiny = dict(num_levels=2, steps_per_level=2, hidden_channels=8)
        small = dict(num_levels=2, steps_per_level=8, hidden_channels=64)
        return tiny, small


class Glow(MultiScaleFlow):
    """``levels[i]``: FlowLevel of Squeeze2d and FlowStep layers with a ZeroConv2d split prior (below the
    top); ``top_prior`` (2C, 1, 1) and ``class_prior`` (nn.Embedding, when conditional)."""

    config_class = GlowConfig

    def __init__(self, config: GlowConfig | None = None):
        config = config or GlowConfig()
        super().__init__(config)
        c, channels, levels = config, config.in_channels, []
        for index in range(c.num_levels):
            channels *= 4
            steps = [FlowStep(channels, c.hidden_channels, lu=c.lu, transform=COUPLINGS[c.coupling])
                     for _ in range(c.steps_per_level)]
            split = index < c.num_levels - 1
            prior = ZeroConv2d(channels // 2, 2 * (channels - channels // 2)) if split and c.learn_prior else None
            levels.append(FlowLevel([Squeeze2d(), *steps], squeezes=1, split=split, prior=prior))
            channels = channels // 2 if split else channels
        self.levels = torch.nn.ModuleList(levels)
        self.build_top_prior(channels)
