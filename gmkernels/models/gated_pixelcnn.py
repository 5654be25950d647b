"""Gated PixelCNN (van den Oord et al. 2016, arXiv 1606.05328, fig. 2), on gmk.nn layers.

Two stacks per layer, p channels each, no blind spot:
    vertical   v' = gate(conv_(k//2+1)×k(v) + V_v·y)               rows i-k//2 … i (all columns)
    horizontal h' = h + 1x1(gate(conv_1×(k//2+1)(h) + 1x1(shift_down(conv_v)) + V_h·y))
The vertical conv (gmk.nn.ShiftedConv2d, "down") sees its own row; it reaches the horizontal stack
only moved down one row, so the horizontal stack at (i, j) sees the rows above through it and its own
row's pixels left of j through the 1×(k//2+1) "down_right" conv, whose centre tap is colour-masked
(mask A in the first layer: no sub-pixel of (i, j) itself; mask B after). gate(x) = tanh(a)·σ(b)
(gmk.gated_activation) with the class-conditional bias V·y as its ``cond``. With C = 3 colour groups
the horizontal stack's channels are R, G, B thirds, each gated within its group (see grouped_gate);
the 1x1s of the horizontal stack and of the output are mask B with those groups. Output: relu ->
1x1 (p -> O) -> relu -> 1x1 (O -> C·B), a B-way softmax per sub-pixel. ``dropout`` (not in the paper;
0 by default) drops the horizontal stack's gated output before its 1x1: small data sets overfit without it.
Cached sampling (``sample(method="cached")``): the vertical stack runs once per row, on the row just
drawn (what the horizontal stack of the next row reads through the down shift); the horizontal stack
runs at the new pixel only, from the last k//2 + 1 columns of its input row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nn.masked_conv import MaskedConv2d, ShiftedConv2d
from ..ops.gated import gated_activation
from ..ops.masked_conv import shifted_conv2d
from ..reference.masked_conv import conv_mask
from ._autoregressive import (CachedConv, CachedNetwork, ImageConfig, Pointwise, Rows, SoftmaxImageModel,
                              check_divisible, check_image_fields, check_int, check_number, check_odd_int,
                              down_shift, grouped_gate)
from .pixelcnn import masked_pointwise


@dataclass(frozen=True)
class GatedPixelCNNConfig(ImageConfig):
    """A Gated PixelCNN's sizes. Defaults: the paper's CIFAR-10 network (20 layers of 384 channels,
    5×5 filters) with a 1023-wide output layer (1024 rounded to the three colour groups)."""

    in_channels: int = 3
    num_bins: int = 256
    image_size: int = 32
    num_classes: int = 0
    channels: int = 384  # p, per stack; a multiple of C (colour groups)
    layers: int = 20
    kernel_size: int = 5
    output_channels: int = 1023  # O; a multiple of C
    dropout: float = 0.0  # on the horizontal stack's gated output

    def __post_init__(self):
        name = type(self).__name__
        check_image_fields(self)
        check_int(name, "channels", self.channels)
        check_divisible(name, "channels", self.channels, self.in_channels, "colour groups")
        check_int(name, "layers", self.layers)
        check_odd_int(name, "kernel_size", self.kernel_size, 3)
        check_int(name, "output_channels", self.output_channels)
        check_divisible(name, "output_channels", self.output_channels, self.in_channels, "colour groups")
        check_number(name, "dropout", self.dropout, 0.0, 1.0)

    @staticmethod
    def presets(in_channels: int) -> tuple[dict, dict]:
        """The "tiny" network's fields and the small one's (8×8 digits; dropout: they overfit without)."""
        tiny = dict(channels=4 * in_channels, layers=2, kernel_size=3, output_channels=4 * in_channels,
                    dropout=0.1)
        small = dict(channels=48 * in_channels, layers=6, kernel_size=3, output_channels=96 * in_channels,
                     dropout=0.5)
        return tiny, small


class HorizontalConv2d(ShiftedConv2d):
    """The horizontal stack's 1×w convolution: columns j-w+1 … j of row i (gmk.shifted_conv2d,
    "down_right"), the centre column colour-masked as a 1x1 ``mask_type`` convolution with
    ``color_groups`` (gmk.conv_mask); the masked weights get zero gradient."""

    def __init__(self, in_channels: int, out_channels: int, width: int, mask_type: str, color_groups: int):
        super().__init__(in_channels, out_channels, (1, width), "down_right")
        mask = torch.ones(out_channels, in_channels, 1, width)
        mask[:, :, :, -1:] = conv_mask(1, mask_type, in_channels, out_channels, color_groups)
        self.register_buffer("mask", mask, persistent=False)
        self.mask_type, self.color_groups = mask_type, color_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_conv2d(x, self.weight * self.mask, self.bias, shift="down_right")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_type={self.mask_type!r}, color_groups={self.color_groups}"


class GatedLayer(torch.nn.Module):
    """One layer of both stacks: ``vertical`` (ShiftedConv2d), ``horizontal`` (HorizontalConv2d),
    ``vertical_to_horizontal`` (1x1 nn.Conv2d, 2p -> 2p), ``residual`` (1x1 MaskedConv2d, mask B).
    The first layer (mask A) reads the image and adds no skip connection."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, color_groups: int, first: bool,
                 dropout: float = 0.0):
        super().__init__()
        self.first, self.color_groups = first, color_groups
        self.vertical = ShiftedConv2d(in_channels, 2 * channels, (kernel_size // 2 + 1, kernel_size), "down")
        self.horizontal = HorizontalConv2d(in_channels, 2 * channels, kernel_size // 2 + 1,
                                           "A" if first else "B", color_groups)
        self.vertical_to_horizontal = torch.nn.Conv2d(2 * channels, 2 * channels, 1)
        self.dropout = torch.nn.Dropout(dropout)
        self.residual = MaskedConv2d(channels, channels, 1, "B", color_groups)

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond_v: torch.Tensor | None = None,
                cond_h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        v_pre = self.vertical(v)
        h_pre = self.horizontal(h) + self.vertical_to_horizontal(down_shift(v_pre))
        v = gated_activation(v_pre, cond_v)
        h_out = self.residual(self.dropout(grouped_gate(h_pre, cond_h, self.color_groups)))
        return v, h_out if self.first else h + h_out


class GatedPixelCNN(SoftmaxImageModel):
    """``layers`` (GatedLayer), ``output1``, ``output2`` (1x1 MaskedConv2d, mask B); ``class_bias`` an
    nn.Embedding (num_classes -> layers·2·2p: the vertical then the horizontal gate's cond per layer)."""

    config_class = GatedPixelCNNConfig

    def __init__(self, config: GatedPixelCNNConfig | None = None):
        config = config or GatedPixelCNNConfig()
        super().__init__(config)
        c, groups = config, config.in_channels
        self.layers = torch.nn.ModuleList(
            GatedLayer(c.in_channels if index == 0 else c.channels, c.channels, c.kernel_size, groups,
                       first=index == 0, dropout=c.dropout)
            for index in range(c.layers))
        self.class_bias = (torch.nn.Embedding(c.num_classes, c.layers * 4 * c.channels) if c.num_classes
                           else None)
        self.output1 = MaskedConv2d(c.channels, c.output_channels, 1, "B", groups)
        self.output2 = MaskedConv2d(c.output_channels, c.in_channels * c.num_bins, 1, "B", groups)

    def network(self, inputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The logits (N, C·B, H, W) of the scaled image (N, C, H, W)."""
        conds = [(None, None)] * len(self.layers)
        if self.class_bias is not None:
            conds = self.class_bias(y).view(len(y), len(self.layers), 2, -1, 1, 1).unbind(1)
            conds = [cond.unbind(1) for cond in conds]
        v = h = inputs
        for layer, (cond_v, cond_h) in zip(self.layers, conds):
            v, h = layer(v, h, cond_v, cond_h)
        return self.output2(F.relu(self.output1(F.relu(h))))

    def cached_network(self, n: int, size: int, y: torch.Tensor | None) -> CachedNetwork:
        return CachedGatedPixelCNN(self, n, size, y)


class CachedGatedLayer:
    """One layer's convolutions on caches: ``vertical`` on the last k//2 + 1 rows of its input (the image
    or the layer below's v), ``horizontal`` on the last k//2 + 1 columns of its input's current row."""

    def __init__(self, layer: GatedLayer, like: torch.Tensor, size: int, image: Rows | None):
        kh, kw = layer.vertical.kernel_size
        half = kw // 2
        channels = layer.vertical.in_channels
        self.v_rows = image or Rows(like, channels, kh, size, half, half)
        self.h_rows = image or Rows(like, channels, 1, size, half, 0)
        self.vertical = CachedConv(layer.vertical.weight, layer.vertical.bias, half)
        horizontal = layer.horizontal
        self.horizontal = CachedConv(horizontal.weight * horizontal.mask, horizontal.bias, half)
        self.vertical_to_horizontal = Pointwise(layer.vertical_to_horizontal.weight,
                                                layer.vertical_to_horizontal.bias)
        self.residual = masked_pointwise(layer.residual)
        self.first, self.color_groups = layer.first, layer.color_groups
        # (N, 2p, W): vertical_to_horizontal of the down-shifted v_pre, this row (in place: on CUDA the
        # row's graph writes it, its pixels' graphs read it)
        self.from_above = like.new_zeros(like.shape[0], layer.vertical_to_horizontal.weight.shape[0], size)


class CachedGatedPixelCNN(CachedNetwork):
    """Gated PixelCNN with the vertical stack per row and the horizontal stack per pixel (see the module)."""

    def __init__(self, model: GatedPixelCNN, n: int, size: int, y: torch.Tensor | None):
        like = model.output2.weight.new_empty(n, 0)
        k = model.config.kernel_size
        self.size = size
        self.image = Rows(like, model.config.in_channels, k // 2 + 1, size, k // 2, k // 2)
        self.layers = [CachedGatedLayer(layer, like, size, self.image if layer.first else None)
                       for layer in model.layers]
        self.conds = [(None, None)] * len(self.layers)
        if model.class_bias is not None:
            conds = model.class_bias(y).view(n, len(self.layers), 2, -1, 1).unbind(1)
            self.conds = [cond.unbind(1) for cond in conds]
        self.output1, self.output2 = masked_pointwise(model.output1), masked_pointwise(model.output2)

    def begin_row(self, i: int) -> None:
        """The vertical stack of row i - 1, now drawn; row 0 reads a zero row through the down shift."""
        for index, (layer, (cond_v, _)) in enumerate(zip(self.layers, self.conds)):
            if i == 0:
                weight = layer.vertical.weight
                v_pre = weight.new_zeros(self.image.data.shape[0], weight.shape[0], self.size)
            else:
                v_pre = layer.vertical(layer.v_rows, 0, self.size)
                if index + 1 < len(self.layers):
                    above = self.layers[index + 1].v_rows
                    above.advance()
                    above.write(0, gated_activation(v_pre, cond_v))
            layer.from_above.copy_(layer.vertical_to_horizontal(v_pre))
        self.image.advance()

    def output(self, j: int) -> torch.Tensor:
        h = None
        for index, (layer, (_, cond_h)) in enumerate(zip(self.layers, self.conds)):
            h_pre = layer.horizontal(layer.h_rows, j) + layer.from_above[:, :, j:j + 1]
            h_out = layer.residual(grouped_gate(h_pre, cond_h, layer.color_groups))
            h = h_out if layer.first else h + h_out
            if index + 1 < len(self.layers):
                self.layers[index + 1].h_rows.write(j, h)
        return self.output2(F.relu(self.output1(F.relu(h))))[:, :, 0]
