"""PixelCNN++ (Salimans et al. 2017, arXiv 1701.05517, the network of openai/pixel-cnn), on gmk.nn layers.

Two streams on the image padded with a channel of ones: u sees the rows above (gmk.nn.ShiftedConv2d
"down", 2×3 kernels), ul the rows above and the pixels to the left ("down_right", 2×2); both start
from convolutions shifted down (and right) by one, so no output sees its own pixel. ``stages`` stages
of ``resnets`` gated resnet blocks run down (stride-2 down-sampling between stages: a shifted conv
read at even positions), then up (stride-2 shifted transposed convs, nn.ConvTranspose2d), each up
block taking the matching down block's output as a skip input. Gated resnet (``concat_elu`` =
elu([x, -x])):
    c = conv(concat_elu(x)) [+ 1x1(concat_elu(skip))];  c = conv(dropout(concat_elu(c)))  (2F channels)
    x + gmk.gated_activation(c, cond=V·y, activation="identity")     (a · σ(b), class bias V·y)
Output: 1x1(elu(ul)) -> a discretized logistic mixture of K components per pixel
(gmk.discretized_logistic_mixture_nll, any num_bins; RGB sub-pixels coupled through the means).
Differences from the paper's code: no weight normalisation (plain initialisation; the second conv of
each block scaled by 0.1 as its init_scale), and up-sampled maps are cropped to the skip's size, so
any H and W work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nn.masked_conv import ShiftedConv2d
from ..ops.gated import gated_activation
from ..ops.logistic_mixture import discretized_logistic_mixture_nll, discretized_logistic_mixture_sample
from ..reference.logistic_mixture import params_per_component
from ._autoregressive import (AutoregressiveImageModel, ImageConfig, check_image_fields, check_int, check_number,
                              down_shift, right_shift, scale_bins)

DOWN, DOWN_RIGHT = ((2, 3), "down"), ((2, 2), "down_right")  # (kernel, shift) of the u and ul streams


@dataclass(frozen=True)
class PixelCNNppConfig(ImageConfig):
    """A PixelCNN++'s sizes. Defaults: the paper's CIFAR-10 network (3 stages of 5 blocks, 160 filters,
    10 logistics, dropout 0.5)."""

    in_channels: int = 3
    num_bins: int = 256
    image_size: int = 32
    num_classes: int = 0
    filters: int = 160
    resnets: int = 5  # gated resnet blocks per stage (nr_resnet)
    stages: int = 3  # resolutions: H, H/2, ... (stages - 1 down-samplings)
    mixture_components: int = 10
    dropout: float = 0.5
    log_scale_min: float = -7.0

    def __post_init__(self):
        name = type(self).__name__
        check_image_fields(self)
        for field in ("filters", "resnets", "stages", "mixture_components"):
            check_int(name, field, getattr(self, field))
        check_number(name, "dropout", self.dropout, 0.0, 1.0)
        check_number(name, "log_scale_min", self.log_scale_min, -math.inf, math.inf)

    @property
    def outputs(self) -> int:
        """The mixture's parameters per pixel: 10K for RGB, 3K for one channel."""
        return params_per_component(self.in_channels) * self.mixture_components

    @staticmethod
    def presets(in_channels: int) -> tuple[dict, dict]:
        """The "tiny" network's fields and the small one's (8×8 digits: 1.71 bits/dim after 1000 steps of
        `gmk train`, 8.4 CPU minutes)."""
        tiny = dict(filters=4, resnets=1, stages=2, mixture_components=2, dropout=0.1)
        small = dict(filters=32, resnets=2, stages=2, mixture_components=5)
        return tiny, small


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    return F.elu(torch.cat([x, -x], dim=1))


class GatedResnet(torch.nn.Module):
    """PixelCNN++'s gated resnet block: ``conv1`` (2F -> F), ``skip`` (1x1, 2S -> F, when it takes a skip
    input of S channels), ``conv2`` (2F -> 2F), ``class_bias`` (num_classes -> 2F, the gate's cond)."""

    def __init__(self, filters: int, stream: tuple, skip_channels: int, num_classes: int, dropout: float):
        super().__init__()
        kernel, shift = stream
        self.conv1 = ShiftedConv2d(2 * filters, filters, kernel, shift)
        self.skip = torch.nn.Conv2d(2 * skip_channels, filters, 1) if skip_channels else None
        self.dropout = torch.nn.Dropout(dropout)
        self.conv2 = ShiftedConv2d(2 * filters, 2 * filters, kernel, shift)
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)
        self.class_bias = torch.nn.Embedding(num_classes, 2 * filters) if num_classes else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        c = self.conv1(concat_elu(x))
        if skip is not None:
            c = c + self.skip(concat_elu(skip))
        c = self.conv2(self.dropout(concat_elu(c)))
        cond = None if self.class_bias is None else self.class_bias(y)[:, :, None, None]
        return x + gated_activation(c, cond, activation="identity")


class PixelCNNpp(AutoregressiveImageModel):
    """``u_input``, ``ul_input_down``, ``ul_input_right`` (ShiftedConv2d), ``down_u[s]``, ``down_ul[s]``,
    ``up_u[s]``, ``up_ul[s]`` (GatedResnet per stage), ``downsample_u/ul`` (ShiftedConv2d),
    ``upsample_u/ul`` (nn.ConvTranspose2d), ``output`` (1x1 nn.Conv2d, F -> the mixture's parameters)."""

    config_class = PixelCNNppConfig

    def __init__(self, config: PixelCNNppConfig | None = None):
        config = config or PixelCNNppConfig()
        super().__init__(config)
        c, f = config, config.filters
        ModuleList = torch.nn.ModuleList

        def blocks(count: int, stream: tuple, skip_channels: int) -> ModuleList:
            return ModuleList(GatedResnet(f, stream, skip_channels, c.num_classes, c.dropout)
                              for _ in range(count))

        self.u_input = ShiftedConv2d(c.in_channels + 1, f, (2, 3), "down")
        self.ul_input_down = ShiftedConv2d(c.in_channels + 1, f, (1, 3), "down")
        self.ul_input_right = ShiftedConv2d(c.in_channels + 1, f, (2, 1), "down_right")
        self.down_u = ModuleList(blocks(c.resnets, DOWN, 0) for _ in range(c.stages))
        self.down_ul = ModuleList(blocks(c.resnets, DOWN_RIGHT, f) for _ in range(c.stages))
        self.downsample_u = ModuleList(ShiftedConv2d(f, f, *DOWN) for _ in range(c.stages - 1))
        self.downsample_ul = ModuleList(ShiftedConv2d(f, f, *DOWN_RIGHT) for _ in range(c.stages - 1))
        # Up: the first stage has ``resnets`` blocks, the others one more (for the down-sampling's output).
        self.up_u = ModuleList(blocks(c.resnets + (s > 0), DOWN, f) for s in range(c.stages))
        self.up_ul = ModuleList(blocks(c.resnets + (s > 0), DOWN_RIGHT, 2 * f) for s in range(c.stages))
        self.upsample_u = ModuleList(torch.nn.ConvTranspose2d(f, f, DOWN[0], stride=2)
                                     for _ in range(c.stages - 1))
        self.upsample_ul = ModuleList(torch.nn.ConvTranspose2d(f, f, DOWN_RIGHT[0], stride=2)
                                      for _ in range(c.stages - 1))
        self.output = torch.nn.Conv2d(f, c.outputs, 1)

    @property
    def sampling_steps(self) -> tuple[tuple[int, ...], ...]:
        """All channels of a pixel from one mixture sample."""
        return (tuple(range(self.config.in_channels)),)

    def network(self, inputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The mixture's parameters (N, 10K or 3K, H, W) of the scaled image (N, C, H, W)."""
        # A channel of ones tells the convolutions where the image ends and the zero padding begins.
        x = torch.cat([inputs, torch.ones_like(inputs[:, :1])], dim=1)
        u = down_shift(self.u_input(x))
        ul = down_shift(self.ul_input_down(x)) + right_shift(self.ul_input_right(x))
        us, uls = [u], [ul]
        for stage in range(self.config.stages):
            if stage > 0:  # a stride-2 shifted conv: the stride-1 one read at even rows and columns
                u = self.downsample_u[stage - 1](u)[:, :, ::2, ::2]
                ul = self.downsample_ul[stage - 1](ul)[:, :, ::2, ::2]
                us.append(u)
                uls.append(ul)
            for u_block, ul_block in zip(self.down_u[stage], self.down_ul[stage]):
                u = u_block(u, y=y)
                ul = ul_block(ul, u, y)
                us.append(u)
                uls.append(ul)
        u, ul = us.pop(), uls.pop()
        for stage in range(self.config.stages):
            if stage > 0:
                u, ul = self._upsample(stage - 1, u, ul, us[-1].shape[2:])
            for u_block, ul_block in zip(self.up_u[stage], self.up_ul[stage]):
                u = u_block(u, us.pop(), y)
                ul = ul_block(ul, torch.cat([u, uls.pop()], dim=1), y)
        return self.output(F.elu(ul))

    def _upsample(self, index: int, u: torch.Tensor, ul: torch.Tensor,
                  size) -> tuple[torch.Tensor, torch.Tensor]:
        """The stride-2 shifted transposed convs, cropped as the paper's code does (u: its first column
        dropped, keeping the output centred; ul: the top-left), then to the skip's ``size``."""
        height, width = size
        u = self.upsample_u[index](u)[:, :, :height, 1:width + 1]
        ul = self.upsample_ul[index](ul)[:, :, :height, :width]
        return u, ul

    def nll(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x) in nats per image (N,)."""
        dtype = torch.float64 if output.dtype == torch.float64 else torch.float32
        levels = scale_bins(x, self.config.num_bins, dtype)
        nll = discretized_logistic_mixture_nll(output, levels, num_bins=self.config.num_bins,
                                               log_scale_min=self.config.log_scale_min, check_inputs=False)
        return nll.flatten(1).sum(dim=1)

    def draw(self, output: torch.Tensor, channels: tuple[int, ...], temperature: float,
             generator: torch.Generator | None) -> torch.Tensor:
        """The bins (N, C) of one pixel from the mixture's parameters there (N, P), through
        gmk.discretized_logistic_mixture_sample. ``temperature`` T divides the component logits and
        multiplies the logistics' scales (log-scales + log T); the means stay."""
        c = self.config
        k = c.mixture_components
        params = output.clone()
        params[:, :k] /= temperature
        per_channel = (params.shape[1] - k) // c.in_channels  # [K means, K log-scales(, K coefficients)]
        for channel in range(c.in_channels):
            start = k + channel * per_channel + k
            params[:, start:start + k] += math.log(temperature)
        levels = discretized_logistic_mixture_sample(params[:, :, None], num_channels=c.in_channels,
                                                     num_bins=c.num_bins, log_scale_min=c.log_scale_min,
                                                     generator=generator)[:, :, 0]
        return torch.round((levels + 1) * ((c.num_bins - 1) / 2)).long()
