"""PixelCNN (van den Oord et al. 2016, arXiv 1601.06759, §3.4 and fig. 5), on gmk.nn.MaskedConv2d.

    x (N, C, H, W) bins -> 2v/(B-1) - 1
    -> k1×k1 mask A conv (C -> 2h)
    -> residual blocks: x + 1x1(relu(k×k(relu(1x1(relu(x)))))) (2h -> h -> h -> 2h), mask B
    -> relu -> 1x1 (2h -> O) -> relu -> 1x1 (O -> C·B), mask B
    -> a B-way softmax per sub-pixel

Every convolution is colour-masked with C groups (R, G, B thirds of the channels, PixelRNN §3.4), so
channel c's logits at a pixel see the earlier pixels and sub-pixels < c of that pixel. Class
conditioning (num_classes > 0): a learned bias per class added in each block after the k×k conv.
``dropout`` (not in the paper; 0 by default) drops the k×k conv's activations in each block: small data
sets (8×8 digits) overfit without it.
Cached sampling (``sample(method="cached")``): each k×k conv keeps its input's last k//2 + 1 rows and
is evaluated at the new pixel only, with the kernel's rows at and above the centre.
The original network has a blind spot (the mask B stack never sees the pixels up and to the right
beyond its k//2-per-layer cone); Gated PixelCNN removes it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nn.masked_conv import MaskedConv2d
from ..reference.masked_conv import conv_mask
from ._autoregressive import (CachedConv, CachedNetwork, ImageConfig, Pointwise, Rows, SoftmaxImageModel,
                              check_divisible, check_image_fields, check_int, check_number, check_odd_int)


@dataclass(frozen=True)
class PixelCNNConfig(ImageConfig):
    """A PixelCNN's sizes. Defaults: the paper's CIFAR-10 network (15 residual blocks, h = 128, a 1024-wide
    output layer), with 2h = 252 and O = 1023 so that h, 2h and O split into the three colour groups."""

    in_channels: int = 3
    num_bins: int = 256
    image_size: int = 32
    num_classes: int = 0
    channels: int = 252  # 2h: the residual stream; a multiple of 2C (h splits into C colour groups)
    residual_blocks: int = 15
    first_kernel_size: int = 7
    kernel_size: int = 3
    output_channels: int = 1023  # O, the output layer's width; a multiple of C
    dropout: float = 0.0  # in each residual block, after the k×k conv's ReLU

    def __post_init__(self):
        name = type(self).__name__
        check_image_fields(self)
        check_int(name, "channels", self.channels)
        check_divisible(name, "channels", self.channels, 2 * self.in_channels,
                        "2h, with h split into in_channels colour groups")
        check_int(name, "residual_blocks", self.residual_blocks)
        for field in ("first_kernel_size", "kernel_size"):
            check_odd_int(name, field, getattr(self, field))
        if self.first_kernel_size == 1 and self.in_channels == 1:
            raise ValueError(f"{name}: first_kernel_size=1 with in_channels=1 sees no input (mask A)")
        check_int(name, "output_channels", self.output_channels)
        check_divisible(name, "output_channels", self.output_channels, self.in_channels, "colour groups")
        check_number(name, "dropout", self.dropout, 0.0, 1.0)

    @staticmethod
    def presets(in_channels: int) -> tuple[dict, dict]:
        """The "tiny" network's fields and the small one's (8×8 digits; dropout: they overfit without)."""
        tiny = dict(channels=4 * in_channels, residual_blocks=1, first_kernel_size=3,
                    output_channels=4 * in_channels, dropout=0.1)
        small = dict(channels=96 * in_channels, residual_blocks=6, output_channels=96 * in_channels, dropout=0.5)
        return tiny, small


class ResidualBlock(torch.nn.Module):
    """PixelCNN's residual block (fig. 5): 2h -> 1x1 -> h -> k×k -> h -> 1x1 -> 2h, a ReLU before each
    conv, all mask B."""

    def __init__(self, channels: int, kernel_size: int, color_groups: int, dropout: float = 0.0):
        super().__init__()
        half = channels // 2
        self.reduce = MaskedConv2d(channels, half, 1, "B", color_groups)
        self.conv = MaskedConv2d(half, half, kernel_size, "B", color_groups)
        self.dropout = torch.nn.Dropout(dropout)
        self.expand = MaskedConv2d(half, channels, 1, "B", color_groups)

    def forward(self, x: torch.Tensor, class_bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv(F.relu(self.reduce(F.relu(x))))
        if class_bias is not None:
            h = h + class_bias
        return x + self.expand(self.dropout(F.relu(h)))


class PixelCNN(SoftmaxImageModel):
    """``input_conv`` (mask A), ``blocks`` (ResidualBlock), ``output1``, ``output2`` (1x1, mask B): all
    gmk.nn.MaskedConv2d; ``class_bias`` an nn.Embedding (num_classes -> blocks·h) when conditional."""

    config_class = PixelCNNConfig

    def __init__(self, config: PixelCNNConfig | None = None):
        config = config or PixelCNNConfig()
        super().__init__(config)
        c, groups = config, config.in_channels
        self.input_conv = MaskedConv2d(c.in_channels, c.channels, c.first_kernel_size, "A", groups)
        self.blocks = torch.nn.ModuleList(ResidualBlock(c.channels, c.kernel_size, groups, c.dropout)
                                          for _ in range(c.residual_blocks))
        self.class_bias = (torch.nn.Embedding(c.num_classes, c.residual_blocks * c.channels // 2)
                           if c.num_classes else None)
        self.output1 = MaskedConv2d(c.channels, c.output_channels, 1, "B", groups)
        self.output2 = MaskedConv2d(c.output_channels, c.in_channels * c.num_bins, 1, "B", groups)

    def network(self, inputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The logits (N, C·B, H, W) of the scaled image (N, C, H, W)."""
        x = self.input_conv(inputs)
        biases = [None] * len(self.blocks)
        if self.class_bias is not None:
            biases = self.class_bias(y).view(len(y), len(self.blocks), -1, 1, 1).unbind(1)
        for block, bias in zip(self.blocks, biases):
            x = block(x, bias)
        return self.output2(F.relu(self.output1(F.relu(x))))

    def cached_network(self, n: int, size: int, y: torch.Tensor | None) -> CachedNetwork:
        return CachedPixelCNN(self, n, size, y)


def masked_step(conv: MaskedConv2d) -> CachedConv:
    """The masked conv at one position from its input's last k//2 + 1 rows (the rows below are masked)."""
    k = conv.kernel_size[0]
    mask = conv_mask(k, conv.mask_type, conv.in_channels, conv.out_channels, conv.color_groups)
    return CachedConv((conv.weight * mask.to(conv.weight))[:, :, :k // 2 + 1], conv.bias, k // 2)


def masked_pointwise(conv: MaskedConv2d) -> Pointwise:
    return Pointwise(conv.weight * conv_mask(1, conv.mask_type, conv.in_channels, conv.out_channels,
                                             conv.color_groups).to(conv.weight), conv.bias)


def input_rows(conv: MaskedConv2d, like: torch.Tensor, size: int) -> Rows:
    k = conv.kernel_size[0]
    return Rows(like, conv.in_channels, k // 2 + 1, size, k // 2, k // 2)


class CachedPixelCNN(CachedNetwork):
    """PixelCNN at one pixel per step: every layer's value there, from the caches of the image and of each
    block's k×k conv input. The colour masks make the values of colour group g final once the pixel's
    sub-pixels < g are drawn, so the last step of a pixel leaves every cache final."""

    def __init__(self, model: PixelCNN, n: int, size: int, y: torch.Tensor | None):
        like = model.output2.weight.new_empty(n, 0)
        self.image = input_rows(model.input_conv, like, size)
        self.input_conv = masked_step(model.input_conv)
        self.blocks = [(masked_pointwise(b.reduce), input_rows(b.conv, like, size), masked_step(b.conv),
                        masked_pointwise(b.expand)) for b in model.blocks]
        self.biases = [None] * len(self.blocks)
        if model.class_bias is not None:
            self.biases = model.class_bias(y).view(n, len(self.blocks), -1, 1).unbind(1)
        self.output1, self.output2 = masked_pointwise(model.output1), masked_pointwise(model.output2)

    def begin_row(self, i: int) -> None:
        self.image.advance()
        for _, rows, _, _ in self.blocks:
            rows.advance()

    def output(self, j: int) -> torch.Tensor:
        x = self.input_conv(self.image, j)
        for (reduce, rows, conv, expand), bias in zip(self.blocks, self.biases):
            rows.write(j, F.relu(reduce(F.relu(x))))
            h = conv(rows, j)
            if bias is not None:
                h = h + bias
            x = x + expand(F.relu(h))
        return self.output2(F.relu(self.output1(F.relu(x))))[:, :, 0]
