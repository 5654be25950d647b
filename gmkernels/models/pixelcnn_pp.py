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

Cached sampling (``sample(method="cached")``, Ramachandran et al. 2017): the u stream sees only the rows
above, so it runs once per row for the whole row; the ul stream runs at the new pixel only. Every shifted
conv keeps its input's last 2 rows. A map at resolution H/2^s runs at the rows and columns that are
multiples of 2^s ("cache every, run every": its caches take a row every 2^s image rows), and the
up-sampling reads the coarser map's last row (u) or position (ul).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nn.masked_conv import ShiftedConv2d
from ..ops.gated import gated_activation
from ..ops.logistic_mixture import SAMPLE, discretized_logistic_mixture_nll
from ..reference import logistic_mixture as mixture
from ..reference.logistic_mixture import params_per_component
from ._autoregressive import (AutoregressiveImageModel, CachedConv, CachedNetwork, ImageConfig, Pointwise,
                              Rows, check_image_fields, check_int, check_number, deepest_level, down_shift,
                              right_shift, scale_bins)

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

    def noise(self, n: int, channels: tuple[int, ...],
              generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        """The uniforms of gmk.discretized_logistic_mixture_sample at one pixel, drawn as it draws them:
        (N, K, 1) for the component (Gumbel-max), then (N, C, 1) for the sub-pixels."""
        c = self.config
        options = dict(generator=generator, device=self._device, dtype=mixture.compute_dtype(self._dtype))
        gumbel_u = torch.rand((n, c.mixture_components, 1), **options)
        return gumbel_u, torch.rand((n, c.in_channels, 1), **options)

    def draw_with(self, output: torch.Tensor, channels: tuple[int, ...], temperature: float,
                  noise: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The bins (N, C) of one pixel from the mixture's parameters there (N, P) and its uniforms, by the
        op of gmk.discretized_logistic_mixture_sample. ``temperature`` T divides the component logits and
        multiplies the logistics' scales (log-scales + log T); the means stay."""
        c = self.config
        k = c.mixture_components
        params = output.clone()
        params[:, :k] /= temperature
        per_channel = (params.shape[1] - k) // c.in_channels  # [K means, K log-scales(, K coefficients)]
        for channel in range(c.in_channels):
            start = k + channel * per_channel + k
            params[:, start:start + k] += math.log(temperature)
        backend = SAMPLE.select("auto", params.device, params.dtype)
        sample = mixture.discretized_logistic_mixture_sample if backend == "reference" else SAMPLE.op(backend)
        levels = sample(params[:, :, None], *noise, c.num_bins, float(c.log_scale_min))[:, :, 0]
        return torch.round((levels + 1) * ((c.num_bins - 1) / 2)).long()

    def cached_network(self, n: int, size: int, y: torch.Tensor | None) -> CachedNetwork:
        return CachedPixelCNNpp(self, n, size, y)


def _shifted_step(conv: ShiftedConv2d) -> CachedConv:
    kw = conv.kernel_size[1]
    return CachedConv(conv.weight, conv.bias, (kw - 1) // 2 if conv.shift == "down" else kw - 1)


def _input_rows(conv: ShiftedConv2d, like: torch.Tensor, width: int) -> Rows:
    kh, kw = conv.kernel_size
    before = (kw - 1) // 2 if conv.shift == "down" else kw - 1
    return Rows(like, conv.in_channels, kh, width, before, kw - 1 - before)


class CachedPixelCNNpp(CachedNetwork):
    """PixelCNN++ with the u stream per row and the ul stream per pixel, at each resolution when its row
    or position comes (see the module). ``rows[conv]`` is the cache of a shifted conv's input, at the
    resolution of that input; ``steps[conv]`` the conv on it."""

    def __init__(self, model: PixelCNNpp, n: int, size: int, y: torch.Tensor | None):
        self.model, c = model, model.config
        like = model.output.weight.new_empty(n, 0)
        self.widths = [size]
        for _ in range(1, c.stages):
            self.widths.append((self.widths[-1] + 1) // 2)
        self.image = Rows(like, c.in_channels + 1, 2, size, 1, 1)
        self.rows, self.steps, self.level_rows = {}, {}, [[] for _ in range(c.stages)]
        self.pointwise, self.conds = {}, {}
        for level in range(c.stages):
            up = c.stages - 1 - level  # the up pass's stage at this level
            for block in (*model.down_u[level], *model.down_ul[level], *model.up_u[up], *model.up_ul[up]):
                self._add_block(block, like, level, y)
            if level + 1 < c.stages:
                for conv in (model.downsample_u[level], model.downsample_ul[level]):
                    self._add_conv(conv, like, level)
        for conv in (model.u_input, model.ul_input_down, model.ul_input_right):
            self.steps[conv] = _shifted_step(conv)
        self.output_conv = Pointwise(model.output.weight, model.output.bias)
        # What a row leaves for its pixels, updated in place (on CUDA, each kind of row is its own graph):
        # per level its current row of each down u (the skips) and of each up u, and (N, F, W) the
        # down-shifted ul_input_down of this row; per level the last up ul.
        self.u_down = [like.new_zeros(len(model.down_u[level]) + 1, n, c.filters, width)
                       for level, width in enumerate(self.widths)]
        self.u_up = [like.new_zeros(len(model.up_u[c.stages - 1 - level]), n, c.filters, width)
                     for level, width in enumerate(self.widths)]
        self.ul_from_above = like.new_zeros(n, c.filters, size)
        self.ul_up_row = [like.new_zeros(n, c.filters, width) for width in self.widths]
        self.row = -1

    def _add_conv(self, conv: ShiftedConv2d, like: torch.Tensor, level: int) -> None:
        self.rows[conv] = _input_rows(conv, like, self.widths[level])
        self.level_rows[level].append(self.rows[conv])
        self.steps[conv] = _shifted_step(conv)

    def _add_block(self, block: GatedResnet, like: torch.Tensor, level: int, y: torch.Tensor | None) -> None:
        for conv in (block.conv1, block.conv2):
            self._add_conv(conv, like, level)
        if block.skip is not None:
            self.pointwise[block] = Pointwise(block.skip.weight, block.skip.bias)
        self.conds[block] = None if block.class_bias is None else block.class_bias(y)[:, :, None]

    def _resnet(self, block: GatedResnet, x: torch.Tensor, skip: torch.Tensor | None,
                start: int) -> torch.Tensor:
        """The gated resnet at columns start … start + m - 1 of its level's current row; x, skip
        (N, ·, m)."""
        count = x.shape[2]
        self.rows[block.conv1].write(start, concat_elu(x))
        h = self.steps[block.conv1](self.rows[block.conv1], start, count)
        if skip is not None:
            h = h + self.pointwise[block](concat_elu(skip))
        self.rows[block.conv2].write(start, concat_elu(h))
        h = self.steps[block.conv2](self.rows[block.conv2], start, count)
        return x + gated_activation(h, self.conds[block], activation="identity")

    # --- the u stream: once per row ---------------------------------------------------------------

    def begin_row(self, i: int) -> None:
        m, stages = self.model, self.model.config.stages
        self.row = i
        if i == 0:  # the down shift's zero row
            u = torch.zeros_like(self.ul_from_above)
            self.ul_from_above.zero_()
        else:  # from image rows i - 2 and i - 1
            u = self.steps[m.u_input](self.image, 0, self.widths[0])
            self.ul_from_above.copy_(self.steps[m.ul_input_down](self.image, 0, self.widths[0]))
        self.image.advance()
        ones = self.image.data[:, -1, -1]  # the channel of ones, in the new row
        ones[:, self.image.left:self.image.left + self.widths[0]] = 1
        top = deepest_level(i, stages)
        for level in range(top + 1):
            for rows in self.level_rows[level]:
                rows.advance()
        for level in range(top + 1):
            u = self._u_down(level, u)
        for level in reversed(range(top + 1)):
            self._u_up(level, i >> level)

    def _u_down(self, level: int, u: torch.Tensor) -> torch.Tensor:
        m = self.model
        if level > 0:  # a stride-2 shifted conv on the finer level's last two rows
            conv = m.downsample_u[level - 1]
            u = self.steps[conv](self.rows[conv], 0, self.widths[level], stride=2)
        skips = [u]
        for block in m.down_u[level]:
            u = self._resnet(block, u, None, 0)
            skips.append(u)
        torch.stack(skips, out=self.u_down[level])
        if level + 1 < m.config.stages:
            self.rows[m.downsample_u[level]].write(0, u)
        return u

    def _u_up(self, level: int, row: int) -> None:
        m, stages = self.model, self.model.config.stages
        stage = stages - 1 - level
        skips = list(self.u_down[level].unbind(0))
        if level == stages - 1:
            u = skips.pop()
        else:  # the transposed conv of the coarser level's row row // 2, cropped as in _upsample
            coarse = self.u_up[level + 1][-1][:, :, None]
            conv = m.upsample_u[stage - 1]
            u = F.conv_transpose2d(coarse, conv.weight, conv.bias, stride=2)[:, :, row % 2,
                                                                             1:self.widths[level] + 1]
        ups = []
        for block in m.up_u[stage]:
            u = self._resnet(block, u, skips.pop(), 0)
            ups.append(u)
        torch.stack(ups, out=self.u_up[level])

    # --- the ul stream: once per pixel ------------------------------------------------------------

    def output(self, j: int) -> torch.Tensor:
        m, stages = self.model, self.model.config.stages
        ul = self.ul_from_above[:, :, j:j + 1]
        if j > 0:  # the right shift: ul_input_right at (i, j - 1)
            ul = ul + self.steps[m.ul_input_right](self.image, j - 1)
        top = min(deepest_level(self.row, stages), deepest_level(j, stages))
        skips = []
        for level in range(top + 1):
            ul = self._ul_down(level, j >> level, ul)
            skips.append(ul)
        for level in reversed(range(top + 1)):
            ul = self._ul_up(level, self.row >> level, j >> level, skips[level])
        return self.output_conv(F.elu(ul))[:, :, 0]

    def _ul_down(self, level: int, column: int, ul: torch.Tensor) -> list[torch.Tensor]:
        m = self.model
        if level > 0:  # the stride-2 shifted conv at the finer level's (2r, 2c)
            conv = m.downsample_ul[level - 1]
            ul = self.steps[conv](self.rows[conv], 2 * column)
        skips = [ul]
        for block, u in zip(m.down_ul[level], self.u_down[level][1:]):
            ul = self._resnet(block, ul, u[:, :, column:column + 1], column)
            skips.append(ul)
        if level + 1 < m.config.stages:
            self.rows[m.downsample_ul[level]].write(column, ul)
        return skips

    def _ul_up(self, level: int, row: int, column: int, skips: list[torch.Tensor]) -> torch.Tensor:
        m, stages = self.model, self.model.config.stages
        stage = stages - 1 - level
        skips = list(skips)
        if level == stages - 1:
            ul = skips.pop()
        else:  # one tap of the 2×2 stride-2 transposed conv: the coarser level's (row // 2, column // 2)
            conv = m.upsample_ul[stage - 1]
            coarse = self.ul_up_row[level + 1][:, :, column // 2]
            ul = torch.addmm(conv.bias, coarse, conv.weight[:, :, row % 2, column % 2]).unsqueeze(2)
        for block, u in zip(m.up_ul[stage], self.u_up[level]):
            ul = self._resnet(block, ul, torch.cat([u[:, :, column:column + 1], skips.pop()], dim=1), column)
        self.ul_up_row[level][:, :, column] = ul[:, :, 0]
        return ul

    def row_key(self, i: int):
        """The first row (zero rows above), then the resolutions a row runs at (their parities follow)."""
        return i == 0, deepest_level(i, self.model.config.stages)
