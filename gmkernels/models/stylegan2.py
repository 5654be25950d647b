"""StyleGAN2 (Karras et al. 2020, arXiv 1912.04958), the network of NVlabs/stylegan2-ada-pytorch
(``networks.py``: config F's skip generator and residual discriminator) on gmk.bias_act and
gmk.upfirdn2d, with lazy R1 and the non-saturating loss (see _gan.py).

Mapping: z normalised by its second moment (and, with classes, a normalised class embedding
concatenated) -> ``mapping_layers`` fully connected layers (lrelu, learning-rate multiplier
``mapping_lr``) -> w, broadcast to the synthesis' layers; the running mean w̄ of w (β = 0.995)
serves truncation, w̄ + ψ(w − w̄). Style mixing: with probability ``style_mixing`` a training batch
takes the layers from a random cut-off on from a second latent.
Synthesis, per resolution 4, 8, …, ``resolution`` (a learned constant at 4×4): two modulated 3×3
convolutions (weights scaled per sample by the affine style A(w), then demodulated to unit norm per
output channel; the first also upsamples: a transposed convolution of stride 2 and the [1, 3, 3, 1]
FIR filter, gmk.upfirdn2d), each followed by per-pixel noise (learned strength) and
bias_act(lrelu, gain √2); a modulated 1×1 toRGB without demodulation; the RGB outputs summed over
resolutions, each upsampled by gmk.upsample2d (the skip architecture).
Discriminator, per resolution from ``resolution`` down to 8: fromRGB (1×1) at the first, then
conv 3×3 and conv 3×3 down 2 (the filter, then a stride-2 convolution), added to a 1×1 skip
that downsamples (both scaled by √½); at 4×4 minibatch standard deviation (groups of
``mbstd_group``, one channel), conv 3×3, a fully connected layer and the logit (with classes, its
projection onto the mapped class embedding). Every weight is N(0, 1), scaled at run time by
1/√fan_in (the equalised learning rate).

Differences from the original: float32 only (no fp16 layers, ``conv_clamp`` None by default), the
modulated convolutions always take the original's non-fused path (styles scale the input, one
convolution, the demodulation scales the output: the same function as the grouped convolution), the
per-pixel noise of generated images is drawn from the ``generator`` that ``sample`` is given, no path
length regularisation, a batch not divisible by ``mbstd_group`` uses its largest divisor below it, and
``augment`` > 0 shows the discriminator randomly translated images (DiffAugment; off by default).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops.bias_act import bias_act
from ..ops.upfirdn2d import setup_filter, upfirdn2d, upsample2d
from ._autoregressive import SMALL_IMAGE, check_int, check_number, check_size
from ._gan import GANConfig, GANModel, check_gan_fields, check_power_of_two

BASE = 4
RESAMPLE_FILTER = (1, 3, 3, 1)


@dataclass(frozen=True)
class StyleGAN2Config(GANConfig):
    """A StyleGAN2's sizes. Defaults: config F's structure at 32×32 as stylegan2-ada-pytorch's CIFAR-10
    configuration sizes it (512 channels, 2 mapping layers, γ = 0.01, Adam betas (0, 0.99); its lr is
    ``gmk train --lr 0.0025``), with the paper's style mixing (0.9). Channels at resolution r:
    min(channel_base / r, channels)."""

    in_channels: int = 3
    num_bins: int = 256
    resolution: int = 32
    num_classes: int = 0
    latent_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 2
    mapping_lr: float = 0.01
    channels: int = 512
    channel_base: int = 16384
    mbstd_group: int = 4
    style_mixing: float = 0.9
    conv_clamp: float | None = None
    augment: int = 0  # > 0: the discriminator sees images translated by up to this many pixels (DiffAugment)
    r1_gamma: float = 0.01
    r1_interval: int = 16
    betas: tuple = (0.0, 0.99)

    @property
    def image_size(self) -> int:
        return self.resolution

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        check_gan_fields(self)
        check_power_of_two(name, "resolution", self.resolution, BASE)
        for field in ("w_dim", "mapping_layers", "channels", "channel_base", "mbstd_group"):
            check_int(name, field, getattr(self, field))
        check_int(name, "augment", self.augment, 0)
        if self.channel_base < self.resolution:
            raise ValueError(f"{name}: channel_base must be >= resolution (min(channel_base / r, channels) "
                             f"channels at resolution r), got {self.channel_base} < {self.resolution}")
        check_number(name, "mapping_lr", self.mapping_lr, 1e-12, math.inf)
        check_number(name, "style_mixing", self.style_mixing, 0.0, 1.0 + 1e-12)
        if self.conv_clamp is not None:
            check_number(name, "conv_clamp", self.conv_clamp, 1e-12, math.inf)

    def width(self, resolution: int) -> int:
        return min(self.channel_base // resolution, self.channels)

    @property
    def resolutions(self) -> list[int]:
        """4, 8, …, resolution."""
        return [BASE * 2 ** i for i in range(int(math.log2(self.resolution // BASE)) + 1)]

    @staticmethod
    def presets(in_channels: int) -> tuple[dict, dict]:
        """The "tiny" network's fields and the small one's (images up to 16×16, e.g. the 8×8 digits: 64
        channels, γ = 1, no style mixing as in stylegan2-ada-pytorch's CIFAR-10 configuration; trained
        with ``gmk train stylegan2 --lr 0.005``: the equalised learning rate keeps every weight N(0, 1),
        so the paper's 0.002 moves them ~0.2 % a step, too slow for a run of minutes)."""
        tiny = dict(latent_dim=8, w_dim=8, mapping_layers=1, channels=4, channel_base=1024, mbstd_group=2)
        small = dict(latent_dim=64, w_dim=64, channels=64, channel_base=512, r1_gamma=1.0, style_mixing=0.0)
        return tiny, small

    @classmethod
    def for_data(cls, in_channels: int, num_bins: int, image_size: int, num_classes: int = 0,
                 size: str = "default"):
        """As the other image configs' ``for_data``: ``image_size`` is the resolution."""
        check_size(cls.__name__, size)
        tiny, small = cls.presets(in_channels)
        fields = tiny if size == "tiny" else small if image_size <= SMALL_IMAGE else {}
        return cls(in_channels=in_channels, num_bins=num_bins, resolution=image_size, num_classes=num_classes,
                   **fields)


# --- layers ------------------------------------------------------------------------------------------------

def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class FullyConnected(torch.nn.Module):
    """y = act(x Wᵀ·g + b·m) with W ~ N(0, 1/m²), g = m/√fan_in (m: the learning-rate multiplier)."""

    def __init__(self, inputs: int, outputs: int, activation: str = "linear", lr_multiplier: float = 1.0,
                 bias_init: float = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn(outputs, inputs) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full((outputs,), float(bias_init)))
        self.weight_gain, self.bias_gain = lr_multiplier / math.sqrt(inputs), lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_act(x @ (self.weight * self.weight_gain).t(), self.bias * self.bias_gain, act=self.activation)


def conv2d_resample(x: torch.Tensor, weight: torch.Tensor, f: torch.Tensor | None, *, up: int = 1, down: int = 1,
                    groups: int = 1) -> torch.Tensor:
    """A k×k convolution (padding k // 2) combined with upsampling or downsampling by 2 with the FIR
    filter f (fw taps), as stylegan2-ada-pytorch's conv2d_resample: up, a transposed convolution of
    stride 2 then the filter (gain 4); down, the filter then a convolution of stride 2 (for 1×1,
    downsampling then the convolution); otherwise a plain convolution. The paddings are the original's:
    the resampling's padding of the filter plus the convolution's k // 2, less what the transposed
    convolution already added."""
    k = weight.shape[-1]
    if up == 2:
        fw = f.shape[-1]
        p0, p1 = k // 2 + (fw + 1) // 2 - (k - 1), k // 2 + (fw - 2) // 2 - (k - 2)
        out_per_group = weight.shape[0] // groups
        w = weight.reshape(groups, out_per_group, -1, k, k).transpose(1, 2).reshape(-1, out_per_group, k, k)
        x = F.conv_transpose2d(x, w, stride=2, groups=groups)
        return upfirdn2d(x, f, padding=(p0, p1, p0, p1), gain=4)
    if down == 2:
        fw = f.shape[-1]
        p0, p1 = k // 2 + (fw - 1) // 2, k // 2 + (fw - 2) // 2
        if k == 1:
            return F.conv2d(upfirdn2d(x, f, down=2, padding=(p0, p1, p0, p1)), weight, groups=groups)
        return F.conv2d(upfirdn2d(x, f, padding=(p0, p1, p0, p1)), weight, stride=2, groups=groups)
    return F.conv2d(x, weight, padding=k // 2, groups=groups)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, f: torch.Tensor | None, *,
                     up: int = 1, demodulate: bool = True) -> torch.Tensor:
    """x (N, I, H, W) convolved with each sample's weight w = weight (O, I, k, k) · styles (N, I) along I,
    demodulated (each output channel divided by √(Σ w² + 1e-8) over I, k, k). Computed as the original's
    non-fused path: the styles scale x, one convolution with the shared weight, the demodulation
    scales its output (Σ w² = styles² · Σ_k weight², an (N, O) product)."""
    x = conv2d_resample(x * styles[:, :, None, None], weight, f, up=up)
    if demodulate:
        coefficients = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()
        x = x * coefficients[:, :, None, None]
    return x


class SynthesisLayer(torch.nn.Module):
    """A modulated 3×3 convolution (upsampling with ``up=2``), noise, bias and lrelu."""

    def __init__(self, inputs: int, outputs: int, w_dim: int, resolution: int, up: int, conv_clamp):
        super().__init__()
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp
        self.affine = FullyConnected(w_dim, inputs, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn(outputs, inputs, 3, 3))
        self.bias = torch.nn.Parameter(torch.zeros(outputs))
        self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.register_buffer("resample_filter", setup_filter(RESAMPLE_FILTER))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w), self.resample_filter, up=self.up)
        noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device)
        return bias_act(x + noise * self.noise_strength, self.bias, act="lrelu", clamp=self.conv_clamp)


class ToRGB(torch.nn.Module):
    """A modulated 1×1 convolution without demodulation, and a bias."""

    def __init__(self, inputs: int, outputs: int, w_dim: int, conv_clamp):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, inputs, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn(outputs, inputs, 1, 1))
        self.bias = torch.nn.Parameter(torch.zeros(outputs))
        self.weight_gain = 1 / math.sqrt(inputs)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, None, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(torch.nn.Module):
    """One resolution: ``const`` (4×4) or ``conv0`` (up 2), ``conv1``, ``torgb``."""

    def __init__(self, inputs: int, outputs: int, config: StyleGAN2Config, resolution: int):
        super().__init__()
        c = config
        if inputs == 0:
            self.const = torch.nn.Parameter(torch.randn(outputs, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(inputs, outputs, c.w_dim, resolution, 2, c.conv_clamp)
        self.conv1 = SynthesisLayer(outputs, outputs, c.w_dim, resolution, 1, c.conv_clamp)
        self.torgb = ToRGB(outputs, c.in_channels, c.w_dim, c.conv_clamp)
        self.register_buffer("resample_filter", setup_filter(RESAMPLE_FILTER))
        self.num_conv = 1 if inputs == 0 else 2

    def forward(self, x: torch.Tensor | None, image: torch.Tensor | None, ws: torch.Tensor):
        """ws (N, num_conv + 1, w_dim): the convolutions' and toRGB's."""
        if x is None:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, ws[:, 0])
        x = self.conv1(x, ws[:, self.num_conv - 1])
        rgb = self.torgb(x, ws[:, self.num_conv])
        image = rgb if image is None else upsample2d(image, self.resample_filter) + rgb
        return x, image


class MappingNetwork(torch.nn.Module):
    """z (and classes) -> w; ``w_avg``: the running mean of w (for truncation)."""

    def __init__(self, z_dim: int, num_classes: int, w_dim: int, layers: int, lr_multiplier: float):
        super().__init__()
        self.embed = FullyConnected(num_classes, w_dim) if num_classes else None
        self.num_classes = num_classes
        features = [z_dim + (w_dim if num_classes else 0)] + [w_dim] * layers
        self.layers = torch.nn.ModuleList(FullyConnected(features[i], features[i + 1], "lrelu", lr_multiplier)
                                          for i in range(layers))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor | None, y: torch.Tensor | None, update_w_avg: bool = False) -> torch.Tensor:
        parts = [] if z is None else [normalize_2nd_moment(z)]
        if self.embed is not None:
            parts.append(normalize_2nd_moment(self.embed(F.one_hot(y, self.num_classes).float())))
        x = torch.cat(parts, dim=1)
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            self.w_avg.lerp_(x.detach().mean(0), 1 - 0.995)
        return x


class StyleGAN2Generator(torch.nn.Module):
    """``mapping`` (:class:`MappingNetwork`) and ``blocks`` (:class:`SynthesisBlock` per resolution)."""

    def __init__(self, config: StyleGAN2Config):
        super().__init__()
        c = self.config = config
        self.mapping = MappingNetwork(c.latent_dim, c.num_classes, c.w_dim, c.mapping_layers, c.mapping_lr)
        widths = [0] + [c.width(r) for r in c.resolutions]
        self.blocks = torch.nn.ModuleList(SynthesisBlock(widths[i], widths[i + 1], c, r)
                                          for i, r in enumerate(c.resolutions))
        self.num_ws = sum(block.num_conv for block in self.blocks) + 1

    def ws(self, z: torch.Tensor, y: torch.Tensor | None, truncation: float) -> torch.Tensor:
        """(N, num_ws, w_dim): w per layer, truncated toward w̄, style-mixed in training."""
        w = self.mapping(z, y, update_w_avg=self.training)
        if truncation != 1:
            w = self.mapping.w_avg.lerp(w, truncation)
        ws = w[:, None].expand(-1, self.num_ws, -1)
        if self.training and self.config.style_mixing > 0 and torch.rand([]) < self.config.style_mixing:
            cutoff = int(torch.randint(1, self.num_ws, []))
            other = self.mapping(torch.randn_like(z), y)
            ws = torch.cat([ws[:, :cutoff], other[:, None].expand(-1, self.num_ws - cutoff, -1)], dim=1)
        return ws

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        ws = self.ws(z, y, truncation)
        x = image = None
        index = 0
        for block in self.blocks:
            x, image = block(x, image, ws[:, index:index + block.num_conv + 1])
            index += block.num_conv
        return image


class Conv2dLayer(torch.nn.Module):
    """The discriminator's convolution: equalised weights, optional downsampling, bias_act."""

    def __init__(self, inputs: int, outputs: int, kernel: int, *, bias: bool = True, activation: str = "linear",
                 down: int = 1, conv_clamp=None):
        super().__init__()
        self.activation, self.down, self.conv_clamp = activation, down, conv_clamp
        self.weight = torch.nn.Parameter(torch.randn(outputs, inputs, kernel, kernel))
        self.bias = torch.nn.Parameter(torch.zeros(outputs)) if bias else None
        self.weight_gain = 1 / math.sqrt(inputs * kernel * kernel)
        self.register_buffer("resample_filter", setup_filter(RESAMPLE_FILTER))

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        x = conv2d_resample(x, self.weight * self.weight_gain, self.resample_filter, down=self.down)
        default = 1.0 if self.activation == "linear" else math.sqrt(2)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias, act=self.activation, gain=default * gain, clamp=clamp)


class DiscriminatorBlock(torch.nn.Module):
    """One resolution of the residual discriminator: ``fromrgb`` (the first), ``conv0``, ``conv1``
    (down 2), ``skip`` (1×1, down 2)."""

    def __init__(self, inputs: int, width: int, outputs: int, config: StyleGAN2Config):
        super().__init__()
        c = config
        self.fromrgb = Conv2dLayer(c.in_channels, width, 1, activation="lrelu", conv_clamp=c.conv_clamp) \
            if inputs == 0 else None
        self.conv0 = Conv2dLayer(width, width, 3, activation="lrelu", conv_clamp=c.conv_clamp)
        self.conv1 = Conv2dLayer(width, outputs, 3, activation="lrelu", down=2, conv_clamp=c.conv_clamp)
        self.skip = Conv2dLayer(width, outputs, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(image)
        skip = self.skip(x, gain=math.sqrt(0.5))
        return skip + self.conv1(self.conv0(x), gain=math.sqrt(0.5))


def minibatch_std(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """x (N, C, H, W) with one more channel: the standard deviation over each group of samples
    (samples i, i + N/G, …), averaged over channels and pixels."""
    n, c, h, w = x.shape
    g = max(size for size in range(1, min(group_size, n) + 1) if n % size == 0)
    y = x.reshape(g, -1, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # (N/G,)
    return torch.cat([x, y.repeat(g)[:, None, None, None].expand(-1, 1, h, w)], dim=1)


class StyleGAN2Discriminator(torch.nn.Module):
    """``blocks`` (:class:`DiscriminatorBlock` per resolution above 4), the 4×4 epilogue ``conv``,
    ``fc``, ``out``, and with classes ``mapping`` (the class embedding the logit is projected on)."""

    def __init__(self, config: StyleGAN2Config):
        super().__init__()
        c = self.config = config
        above = [r for r in reversed(c.resolutions) if r > BASE]
        self.blocks = torch.nn.ModuleList(
            DiscriminatorBlock(0 if r == c.resolution else c.width(r), c.width(r), c.width(r // 2), c)
            for r in above)
        width = c.width(BASE)
        self.conv = Conv2dLayer(width + 1, width, 3, activation="lrelu", conv_clamp=c.conv_clamp)
        self.fc = FullyConnected(width * BASE * BASE, width, "lrelu")
        self.cmap_dim = width if c.num_classes else 0
        self.out = FullyConnected(width, self.cmap_dim or 1)
        self.mapping = MappingNetwork(0, c.num_classes, width, c.mapping_layers, c.mapping_lr) \
            if c.num_classes else None
        self.fromrgb = Conv2dLayer(c.in_channels, width, 1, activation="lrelu", conv_clamp=c.conv_clamp) \
            if not self.blocks else None

    def forward(self, images: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.fromrgb(images) if self.fromrgb is not None else None
        for block in self.blocks:
            x = block(x, images)
        x = self.conv(minibatch_std(x, self.config.mbstd_group))
        x = self.out(self.fc(x.flatten(1)))
        if self.mapping is None:
            return x[:, 0]
        cmap = self.mapping(None, y)
        return (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)


class StyleGAN2(GANModel):
    """``generator`` (:class:`StyleGAN2Generator`) and ``discriminator`` (:class:`StyleGAN2Discriminator`)."""

    config_class = StyleGAN2Config

    def __init__(self, config: StyleGAN2Config | None = None):
        config = config or StyleGAN2Config()
        super().__init__(config)
        self.generator = StyleGAN2Generator(config)
        self.discriminator = StyleGAN2Discriminator(config)
