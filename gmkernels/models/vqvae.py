"""VQ-VAE (van den Oord et al. 2017, arXiv 1711.00937) over integer images, and its PixelCNN prior.

Images are integer bins x (N, C, H, W) in [0, num_bins); the encoder sees them scaled to [-1, 1], the
decoder reconstructs them scaled to [0, 1] (bin v as v / (num_bins − 1)).

    encoder    3x3 conv, ``levels`` 4x4 stride-2 convs, ``residual_blocks`` residual blocks (act, 3x3, act,
               1x1, added), 1x1 conv to ``code_dim`` channels: z_e (N, D, H/2^levels, W/2^levels)
    quantizer  gmk.nn.VectorQuantizer: each position's nearest of ``num_codes`` codes (the fused
               gmk.vector_quantize, no positions × codes matrix), straight-through gradient, EMA codebook
    decoder    3x3 conv from the codes, ``residual_blocks`` residual blocks, ``levels`` 4x4 stride-2
               transposed convs, 3x3 conv to C channels: the reconstruction in [0, 1] scale

Loss: mean((decoder(z_q) − x/(num_bins − 1))²) + the quantizer's loss (commitment · mean((z_e −
sg(z_q))²), plus the codebook term without EMA). Activations: gmk.nn.FusedLeakyReLU (bias and leaky
ReLU in one gmk.bias_act) after every bias-free convolution, as in the VAE.

The prior (``VQVAEPrior``): a Gated PixelCNN (gmk.models.GatedPixelCNN) over the code maps, one channel of
``num_codes`` bins, optionally class-conditional; the VQ-VAE is part of the prior's module, frozen (its
weights travel in the prior's checkpoint, so sampling needs nothing else). Sampling draws a code map from
the PixelCNN and decodes it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._validation import check_bool, check_int
from ..nn.bias_act import FusedLeakyReLU
from ..nn.vector_quantize import VectorQuantizer
from ..ops.vector_quantize import vector_quantize
from ._autoregressive import (ImageConfig, ImageInputs, check_image_fields, check_number,
                             scale_bins)
from .gated_pixelcnn import GatedPixelCNN, GatedPixelCNNConfig
from .vae import check_levels, conv


@dataclass(frozen=True)
class VQVAEConfig(ImageConfig):
    """A VQ-VAE's sizes. Defaults: the paper's CIFAR-10 network (two stride-2 convolutions, two residual
    blocks, 256 channels, 512 codes; 32×32 RGB -> an 8×8 code map), codes of 64 dimensions."""

    in_channels: int = 3
    num_bins: int = 256
    image_size: int = 32
    num_classes: int = 0  # the VQ-VAE is unconditional (its prior may be conditional); for for_data
    channels: int = 256
    levels: int = 2
    residual_blocks: int = 2
    num_codes: int = 512
    code_dim: int = 64
    commitment: float = 0.25
    ema: bool = True
    decay: float = 0.99
    local_codes: bool = False  # the encoder sees only each code's own patch (see VQVAE)

    def __post_init__(self):
        name = type(self).__name__
        check_image_fields(self)
        if self.num_classes:
            raise ValueError(f"{name}: num_classes must be 0 (the VQ-VAE is unconditional; condition its "
                             f"prior instead), got {self.num_classes}")
        for field in ("channels", "num_codes", "code_dim"):
            check_int(name, field, getattr(self, field))
        check_int(name, "residual_blocks", self.residual_blocks, 0)
        check_levels(self)
        check_number(name, "commitment", self.commitment, 0.0, math.inf)
        check_bool(name, "ema", self.ema)
        check_bool(name, "local_codes", self.local_codes)
        check_number(name, "decay", self.decay, 0.0, 1.0)

    @property
    def code_size(self) -> int:
        """The width (= height) of the code map."""
        return self.image_size // 2 ** self.levels

    @classmethod
    def for_data(cls, in_channels: int, num_bins: int, image_size: int, num_classes: int = 0,
                 size: str = "default"):
        """As the other image models' (the VQ-VAE itself ignores ``num_classes``: it is unconditional)."""
        return super().for_data(in_channels, num_bins, image_size, 0, size)

    @staticmethod
    def presets(in_channels: int) -> tuple[dict, dict]:
        """The "tiny" network's fields and the small one's (8×8 digits -> 4×4 maps of 32 local codes)."""
        tiny = dict(channels=8, levels=1, residual_blocks=1, num_codes=8, code_dim=4)
        small = dict(channels=64, levels=1, residual_blocks=2, num_codes=32, code_dim=16, local_codes=True)
        return tiny, small


class ResidualBlock(torch.nn.Module):
    """x + 1x1(act(3x3(act(x)))), the paper's block (leaky ReLU through gmk.nn.FusedLeakyReLU)."""

    def __init__(self, channels: int):
        super().__init__()
        self.first = FusedLeakyReLU(channels)
        self.conv3 = conv(channels, channels, 3)  # 3x3, then FusedLeakyReLU
        self.conv1 = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(self.conv3(self.first(x)))


def local_encoder(c: VQVAEConfig) -> torch.nn.Sequential:
    """A 2^levels × 2^levels patch convolution of stride 2^levels, a 1x1 convolution, a 1x1 to code_dim."""
    patch = 2 ** c.levels
    return torch.nn.Sequential(conv(c.in_channels, c.channels, patch, patch), conv(c.channels, c.channels, 1),
                               torch.nn.Conv2d(c.channels, c.code_dim, 1))


class VQVAE(ImageInputs):
    """``encoder`` (convolutions to code_dim channels), ``quantizer`` (gmk.nn.VectorQuantizer), ``decoder``
    (convolutions to C channels).

    ``local_codes=True``: the encoder is a patch convolution (kernel and stride 2^levels, so each code sees
    its own patch only), then two 1x1 convolutions; the decoder is unchanged. The paper's encoder sees
    most of a small image from every code: on the 8×8 digits its codes (4×4 maps of 32) spread even the
    blank patches over every code, and a Gated PixelCNN prior trained on them did no better than the
    codes' per-position frequencies (4.83 test bits per code, against their 4.78 bits of entropy); with
    local codes (a blank patch is one code) the same prior learns the codes' layout (see the README)."""

    kind = "vqvae"
    config_class = VQVAEConfig

    def __init__(self, config: VQVAEConfig | None = None):
        config = config or VQVAEConfig()
        super().__init__()
        self.config = c = config
        self.encoder = local_encoder(c) if c.local_codes else torch.nn.Sequential(
            conv(c.in_channels, c.channels, 3),
            *(conv(c.channels, c.channels, 4, 2) for _ in range(c.levels)),
            *(ResidualBlock(c.channels) for _ in range(c.residual_blocks)), FusedLeakyReLU(c.channels),
            torch.nn.Conv2d(c.channels, c.code_dim, 1))
        self.quantizer = VectorQuantizer(c.num_codes, c.code_dim, commitment=c.commitment, ema=c.ema,
                                         decay=c.decay)
        self.decoder = torch.nn.Sequential(
            conv(c.code_dim, c.channels, 3), *(ResidualBlock(c.channels) for _ in range(c.residual_blocks)),
            *(conv(c.channels, c.channels, 4, 2, transposed=True) for _ in range(c.levels)),
            torch.nn.Conv2d(c.channels, c.in_channels, 3, padding=1))

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self._dtype) / (self.config.num_bins - 1)

    def _bins(self, reconstruction: torch.Tensor) -> torch.Tensor:
        return torch.round(reconstruction.clamp(0, 1) * (self.config.num_bins - 1)).long()

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
                check_inputs: bool = True) -> dict[str, torch.Tensor]:
        """Training terms of images x (N, C, H, W): ``loss`` (reconstruction + the quantizer's loss),
        ``reconstruction`` (mean squared error on the [0, 1] scale), ``commitment`` (the quantizer's loss)
        and ``perplexity`` (exp of the entropy of the batch's code use, the quantizer's ``last_perplexity``),
        the last three detached. In
        training mode the quantizer updates its EMA codebook. ``y`` must be None (unconditional)."""
        self._check_x("forward", x, check_inputs)
        self._check_y("forward", y, x.shape[0], check_inputs)
        z_e = self.encoder(scale_bins(x, self.config.num_bins, self._dtype))
        quantized, indices, commitment = self.quantizer(z_e)
        reconstruction = F.mse_loss(self.decoder(quantized), self._target(x))
        return {"loss": reconstruction + commitment, "reconstruction": reconstruction.detach(),
                "commitment": commitment.detach(), "perplexity": self.quantizer.last_perplexity}

    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, check_inputs: bool = True) -> torch.Tensor:
        """The code indices (N, H/2^levels, W/2^levels) int64 of images x: each position's nearest code
        (gmk.vector_quantize; the codebook is not updated)."""
        self._check_x("encode", x, check_inputs)
        z_e = self.encoder(scale_bins(x, self.config.num_bins, self._dtype))
        return vector_quantize(z_e, self.codebook.to(z_e.dtype), dim=1)[1]

    @property
    def codebook(self) -> torch.Tensor:
        """The quantizer's codebook (num_codes, code_dim)."""
        return self.quantizer.codebook

    def decode_continuous(self, indices: torch.Tensor) -> torch.Tensor:
        """The decoder's reconstruction (N, C, H, W) on the [0, 1] scale of the code maps ``indices``."""
        c, name = self.config, f"{type(self).__name__}.decode"
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.long:
            got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise TypeError(f"{name}: indices must be an int64 tensor of codes, got {got}")
        if indices.dim() != 3 or indices.shape[0] == 0:
            raise ValueError(f"{name}: indices must be (N, h, w), non-empty, got shape "
                             f"{tuple(indices.shape)}")
        if indices.device != self._device:
            raise ValueError(f"{name}: indices must be on the model's device {self._device}, got "
                             f"{indices.device}")
        if not bool(((indices >= 0) & (indices < c.num_codes)).all()):
            raise ValueError(f"{name}: indices must be codes in [0, {c.num_codes}), got values in "
                             f"[{indices.min().item()}, {indices.max().item()}]")
        return self.decoder(F.embedding(indices, self.codebook.to(self._dtype)).permute(0, 3, 1, 2))

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """The images (N, C, H, W) int64 bins of the code maps ``indices`` (N, h, w): the decoder's output
        rounded to the nearest bin."""
        return self._bins(self.decode_continuous(indices))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x))."""
        return self.decode(self.encode(x))


# --- the prior ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VQVAEPriorConfig:
    """A VQ-VAE (``vqvae``, its config) and the Gated PixelCNN over its code maps (``prior``: one channel of
    ``vqvae.num_codes`` bins, ``vqvae.code_size`` wide). Either may be given as a dict of fields (as a
    checkpoint stores them)."""

    vqvae: VQVAEConfig | dict = dataclasses.field(default_factory=VQVAEConfig)
    prior: GatedPixelCNNConfig | dict | None = None  # None: GatedPixelCNNConfig.for_data of the code maps

    def __post_init__(self):
        name = type(self).__name__
        vqvae = VQVAEConfig(**self.vqvae) if isinstance(self.vqvae, dict) else self.vqvae
        if not isinstance(vqvae, VQVAEConfig):
            raise TypeError(f"{name}: vqvae must be a VQVAEConfig or a dict of its fields, got "
                            f"{type(vqvae).__name__}")
        prior = self.prior
        if prior is None:
            prior = GatedPixelCNNConfig.for_data(1, vqvae.num_codes, vqvae.code_size)
        elif isinstance(prior, dict):
            prior = GatedPixelCNNConfig(**prior)
        if not isinstance(prior, GatedPixelCNNConfig):
            raise TypeError(f"{name}: prior must be a GatedPixelCNNConfig or a dict of its fields, got "
                            f"{type(prior).__name__}")
        expected = (1, vqvae.num_codes, vqvae.code_size)
        if (prior.in_channels, prior.num_bins, prior.image_size) != expected:
            raise ValueError(f"{name}: prior must model the code maps: in_channels=1, "
                             f"num_bins={vqvae.num_codes} (the codes), image_size={vqvae.code_size}; got "
                             f"{prior.in_channels}, {prior.num_bins}, {prior.image_size}")
        object.__setattr__(self, "vqvae", vqvae)
        object.__setattr__(self, "prior", prior)

    @property
    def num_classes(self) -> int:
        return self.prior.num_classes

    @classmethod
    def for_vqvae(cls, vqvae: VQVAEConfig, num_classes: int = 0, size: str = "default") -> "VQVAEPriorConfig":
        """The prior's "default" or "tiny" Gated PixelCNN (GatedPixelCNNConfig.for_data) for ``vqvae``'s
        codes."""
        prior = GatedPixelCNNConfig.for_data(1, vqvae.num_codes, vqvae.code_size, num_classes, size=size)
        return cls(vqvae=vqvae, prior=prior)


class VQVAEPrior(torch.nn.Module):
    """``vqvae`` (a VQVAE, frozen: no gradients, always in eval mode) and ``prior`` (a GatedPixelCNN over
    its code maps). ``forward(x, y)``: the prior's loss and bits per code on the codes of images x;
    ``sample``: code maps from the prior, decoded to images."""

    kind = "vqvae_prior"
    config_class = VQVAEPriorConfig

    def __init__(self, config: VQVAEPriorConfig | None = None):
        config = config or VQVAEPriorConfig()
        super().__init__()
        self.config = config
        self.vqvae = VQVAE(config.vqvae).requires_grad_(False).eval()
        self.prior = GatedPixelCNN(config.prior)

    def train(self, mode: bool = True) -> "VQVAEPrior":
        super().train(mode)
        self.vqvae.eval()  # never updates its codebook
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None,
                check_inputs: bool = True) -> dict[str, torch.Tensor]:
        """The prior's terms on the code maps of images x: ``loss`` (nats per code) and ``bits_per_dim``
        (bits per code, detached)."""
        codes = self.vqvae.encode(x, check_inputs=check_inputs)
        return self.prior(codes[:, None], y, check_inputs=check_inputs)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None,
                 check_inputs: bool = True) -> torch.Tensor:
        """log p(codes of x) in nats per image, (N,), under the prior."""
        return self.prior.log_prob(self.vqvae.encode(x, check_inputs=check_inputs)[:, None], y, check_inputs)

    @torch.no_grad()
    def sample_codes(self, n: int, *, y: torch.Tensor | None = None, temperature: float = 1.0,
                     generator: torch.Generator | None = None, method: str = "cached",
                     graph: bool | str = "auto") -> torch.Tensor:
        """n code maps (n, h, w) int64 drawn from the prior (GatedPixelCNN.sample's arguments)."""
        return self.prior.sample(n, y=y, temperature=temperature, generator=generator, method=method,
                                 graph=graph)[:, 0]

    @torch.no_grad()
    def sample(self, n: int, *, y: torch.Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, method: str = "cached",
               graph: bool | str = "auto") -> torch.Tensor:
        """n images (n, C, H, W) int64 bins: code maps from the prior (``method`` and ``graph`` as in
        GatedPixelCNN.sample), decoded by the VQ-VAE."""
        return self.vqvae.decode(self.sample_codes(n, y=y, temperature=temperature, generator=generator,
                                                   method=method, graph=graph))
