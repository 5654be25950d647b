"""DCGAN (Radford et al. 2016, arXiv 1511.06434): all-convolutional generator and discriminator with
batch normalisation, trained with the non-saturating loss (see _gan.py).

Generator: z (and, conditional, a class embedding concatenated to it) -> a linear projection to a
4×4 map, then fractionally-strided 4×4 convolutions (stride 2) doubling the resolution up to
``image_size``, batch normalisation and ReLU after each but the last, tanh at the output.
Discriminator: 4×4 convolutions of stride 2 halving it down to 4×4, leaky ReLU (0.2) after each,
batch normalisation after each but the first, then the logit, a linear function of the 4×4 map (the
paper's last convolution), plus with classes a projection term ⟨embed(y), features⟩ (Miyato & Koyama
2018). Widths: ``channels`` · image_size / (2r) at resolution r < image_size (the paper's 1024 … 128 for
64×64 with channels=128).

The activations are gmk.bias_act (the bias of a layer without batch normalisation fused into it).
Differences from the paper: batch statistics always (``track_running_stats=False``: samples are
normalised over the batch they are drawn in, as in the paper's code), a linear projection instead of
the first fractionally-strided convolution (the same function), and any image_size of 4·2^k.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.bias_act import bias_act
from ._autoregressive import check_int
from ._gan import GANConfig, GANModel, check_gan_fields, check_power_of_two

BASE = 4  # the resolution the generator starts from and the discriminator ends at


@dataclass(frozen=True)
class DCGANConfig(GANConfig):
    """A DCGAN's sizes. Defaults: the paper's 64×64 network at the width of PyTorch's DCGAN example
    (channels=64) and the paper's Adam (lr 2e-4 is ``gmk train --lr``; betas (0.5, 0.999))."""

    in_channels: int = 3
    num_bins: int = 256
    image_size: int = 64
    num_classes: int = 0
    latent_dim: int = 100
    channels: int = 64
    r1_gamma: float = 0.0  # DCGAN has no R1; a positive γ adds it (lazily, every r1_interval steps)
    r1_interval: int = 16
    betas: tuple = (0.5, 0.999)

    def __post_init__(self):
        super().__post_init__()
        check_gan_fields(self)
        check_power_of_two(type(self).__name__, "image_size", self.image_size, BASE)
        check_int(type(self).__name__, "channels", self.channels)

    def width(self, resolution: int) -> int:
        """The channels of the maps at ``resolution`` (< image_size)."""
        return self.channels * self.image_size // (2 * resolution)

    @staticmethod
    def presets(in_channels: int) -> tuple[dict, dict]:
        """The "tiny" network's fields and the small one's (images up to 16×16, e.g. the 8×8 digits)."""
        tiny = dict(latent_dim=8, channels=4)
        small = dict(latent_dim=64, channels=128)
        return tiny, small


def _resolutions(config: DCGANConfig) -> list[int]:
    """4, 8, …, image_size / 2: the resolutions of the maps between the input and the output."""
    resolutions, r = [], BASE
    while r < config.image_size:
        resolutions.append(r)
        r *= 2
    return resolutions


class DCGANGenerator(torch.nn.Module):
    """``embed`` (classes -> latent_dim), ``project`` (Linear to the 4×4 map), ``norms[i]``,
    ``ups[i]`` (ConvTranspose2d 4×4 stride 2), ``out_bias``."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        c, resolutions = config, _resolutions(config)
        self.embed = torch.nn.Embedding(c.num_classes, c.latent_dim) if c.num_classes else None
        inputs = c.latent_dim * (2 if c.num_classes else 1)
        self.project = torch.nn.Linear(inputs, c.width(BASE) * BASE * BASE, bias=False)
        self.norms = torch.nn.ModuleList(torch.nn.BatchNorm2d(c.width(r), track_running_stats=False)
                                         for r in resolutions)
        widths = [c.width(r) for r in resolutions] + [c.in_channels]
        self.ups = torch.nn.ModuleList(torch.nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1, bias=False)
                                       for i in range(len(resolutions)))
        self.out_bias = torch.nn.Parameter(torch.zeros(c.in_channels))
        self.width = c.width(BASE)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        """Images (N, C, H, W) in (−1, 1) from latents z (N, latent_dim); ``truncation`` scales z toward
        its mean, 0."""
        z = z * truncation
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)
        h = self.project(z).unflatten(1, (self.width, BASE, BASE))
        for norm, up in zip(self.norms, self.ups):
            h = up(bias_act(norm(h), act="relu", gain=1.0))
        return bias_act(h, self.out_bias, act="tanh")


class DCGANDiscriminator(torch.nn.Module):
    """``downs[i]`` (Conv2d 4×4 stride 2), ``bias`` (the first's), ``norms[i]`` (after the others),
    ``logit`` (Linear on the 4×4 map), ``embed`` (the projection of the classes)."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        c, resolutions = config, _resolutions(config)
        widths = [c.in_channels] + [c.width(r) for r in reversed(resolutions)]
        self.downs = torch.nn.ModuleList(torch.nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1, bias=False)
                                         for i in range(len(resolutions)))
        self.bias = torch.nn.Parameter(torch.zeros(widths[1]))
        self.norms = torch.nn.ModuleList(torch.nn.BatchNorm2d(w, track_running_stats=False) for w in widths[2:])
        features = c.width(BASE) * BASE * BASE
        self.logit = torch.nn.Linear(features, 1)
        self.embed = torch.nn.Embedding(c.num_classes, features) if c.num_classes else None

    def forward(self, images: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = bias_act(self.downs[0](images), self.bias, act="lrelu", alpha=0.2, gain=1.0)
        for down, norm in zip(self.downs[1:], self.norms):
            h = bias_act(norm(down(h)), act="lrelu", alpha=0.2, gain=1.0)
        features = h.flatten(1)
        logits = self.logit(features)[:, 0]
        if self.embed is not None:
            logits = logits + (self.embed(y) * features).sum(1)
        return logits


class DCGAN(GANModel):
    """``generator`` (:class:`DCGANGenerator`) and ``discriminator`` (:class:`DCGANDiscriminator`)."""

    config_class = DCGANConfig

    def __init__(self, config: DCGANConfig | None = None):
        config = config or DCGANConfig()
        super().__init__(config)
        self.generator = DCGANGenerator(config)
        self.discriminator = DCGANDiscriminator(config)
        self.apply(_paper_init)


def _paper_init(module: torch.nn.Module) -> None:
    """The paper's initialisation: weights N(0, 0.02), batch-norm scales N(1, 0.02)."""
    if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear, torch.nn.Embedding)):
        torch.nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, torch.nn.BatchNorm2d):
        torch.nn.init.normal_(module.weight, 1.0, 0.02)
        torch.nn.init.zeros_(module.bias)

