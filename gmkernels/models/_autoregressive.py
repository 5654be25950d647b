"""What the PixelCNN family shares: config checks, the integer-image contract (checks, scaling), the
loss terms, the softmax head and the raster-order sampling loop.

Images are integer bins x (N, C, H, W), C = 1 or 3, in [0, num_bins); a model sees them scaled to
2v/(num_bins-1) - 1 in [-1, 1]. A model subclasses :class:`AutoregressiveImageModel` and provides
``network`` (the scaled image -> the head's output per position), ``nll`` (per image), ``noise`` and
``draw_with`` (one sampling step at one pixel: its uniforms, then the bins from them), and for cached
sampling ``cached_network`` (a :class:`CachedNetwork`).

Cached sampling (Ramachandran et al. 2017, arXiv 1704.06001): each convolution keeps the last rows of its
input map that its kernel reads (:class:`Rows`), and the network is evaluated at the one new position a
sampling step needs (:class:`CachedConv`, :class:`Pointwise`); what sees only the rows above (a vertical
stack) is computed once per row for the whole row.

On CUDA, cached sampling replays CUDA graphs: each per-pixel step (the network at the pixel, the draw from
its uniforms, the writes into the caches) and each per-row update is captured the first time its kind
comes (:meth:`CachedNetwork.row_key`, the column, the sub-pixel) and replayed after; the uniforms are drawn
outside the graphs, with the generator calls naive sampling makes, into static buffers the graphs read.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import torch
import torch.nn.functional as F

from .._validation import check_generator, check_int
from ..ops.cached_conv import CACHED_CONV
from ..ops.gated import gated_activation
from ..ops.logistic_mixture import bits_per_dim

SIZES = ("default", "tiny")
METHODS = ("cached", "naive")
# Rows sampled eagerly before graphs are captured: every kernel the steps launch has then run (lazy
# initialisation, Triton's compilation and autotuning must not happen while a stream is captured).
WARMUP_ROWS = 2
# Whether graph="auto" captures CUDA graphs. The capture is tested on CPU by an emulation only: it turns on
# after the gpu-marked sampling tests have passed on a GPU (NOTES.md, GPU plan).
GRAPHS_BY_DEFAULT = False
SMALL_IMAGE = 16  # images up to this size get a model's small "default" network (8x8 digits)


def check_odd_int(config: str, name: str, value, minimum: int = 1) -> None:
    check_int(config, name, value, minimum)
    if value % 2 == 0:
        raise ValueError(f"{config}: {name} must be odd, got {value}")


def check_number(config: str, name: str, value, low: float, high: float) -> None:
    """``value`` is a real number in [low, high)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise ValueError(f"{config}: {name} must be a number in [{low}, {high}), got {value!r}")


def check_image_fields(config) -> None:
    """The fields every image config has: in_channels (1 or 3), num_bins, image_size, num_classes."""
    name = type(config).__name__
    if config.in_channels not in (1, 3) or isinstance(config.in_channels, bool):
        raise ValueError(f"{name}: in_channels must be 1 or 3, got {config.in_channels!r}")
    check_int(name, "num_bins", config.num_bins, 2)
    check_int(name, "image_size", config.image_size)
    check_int(name, "num_classes", config.num_classes, 0)


def check_divisible(config: str, name: str, value: int, divisor: int, why: str) -> None:
    if value % divisor:
        raise ValueError(f"{config}: {name} must be a multiple of {divisor} ({why}), got {value}")


def check_size(config: str, size) -> None:
    if size not in SIZES:
        raise ValueError(f"{config}.for_data: size must be one of {SIZES}, got {size!r}")


class ImageConfig:
    """What the image models' config dataclasses share: ``for_data``, from each config's ``presets``."""

    @staticmethod
    def presets(in_channels: int) -> tuple[dict, dict]:
        """The fields of the "tiny" network and of the small one (images up to SMALL_IMAGE)."""
        raise NotImplementedError

    @classmethod
    def for_data(cls, in_channels: int, num_bins: int, image_size: int, num_classes: int = 0,
                 size: str = "default"):
        """A config for this data: ``"default"``, the paper's network (a smaller one for images up to
        16×16, e.g. 8×8 digits); ``"tiny"``, the smallest that runs every code path (tests)."""
        check_size(cls.__name__, size)
        tiny, small = cls.presets(in_channels)
        fields = tiny if size == "tiny" else small if image_size <= SMALL_IMAGE else {}
        return cls(in_channels=in_channels, num_bins=num_bins, image_size=image_size, num_classes=num_classes,
                   **fields)


def scale_bins(x: torch.Tensor, num_bins: int, dtype: torch.dtype) -> torch.Tensor:
    """Bins v in [0, num_bins) as 2v/(num_bins-1) - 1 in [-1, 1]."""
    return x.to(dtype) * (2 / (num_bins - 1)) - 1


def down_shift(x: torch.Tensor, rows: int = 1) -> torch.Tensor:
    """x moved down by ``rows`` rows, zeros entering at the top: row i holds row i - rows."""
    return F.pad(x, (0, 0, rows, 0))[:, :, :x.shape[2]]


def right_shift(x: torch.Tensor, columns: int = 1) -> torch.Tensor:
    """x moved right by ``columns`` columns, zeros entering on the left."""
    return F.pad(x, (columns, 0))[:, :, :, :x.shape[3]]


def grouped_gate(x: torch.Tensor, cond: torch.Tensor | None, groups: int,
                 activation: str = "tanh") -> torch.Tensor:
    """The gated activation of x (N, 2C, H, W) laid out as ``groups`` colour groups of [filter, gate]
    halves (each C/groups channels), so that every output channel keeps its colour group; returns
    (N, C, H, W).

    gmk.masked_conv2d's fused gate pairs channel j with j + C, which are in different colour groups of
    the 2C channels; a colour-masked network gates each group's own halves instead. ``cond`` broadcasts
    to x and is added first.
    """
    split = (groups, 2, x.shape[1] // (2 * groups))
    cond = None if cond is None else cond.unflatten(1, split)
    return gated_activation(x.unflatten(1, split), cond, activation=activation, dim=2).flatten(1, 3)


# --- cached evaluation: caches of rows and convolutions evaluated on them -------------------------------

class Rows:
    """The cache of a convolution's input map (N, C, ·, W): its last ``height`` rows, with ``left`` and
    ``right`` columns of zero padding. The last row is the one being computed; rows above a map's first
    row and the padding stay zero (the convolutions' zero padding)."""

    def __init__(self, like: torch.Tensor, channels: int, height: int, width: int, left: int, right: int):
        self.data = like.new_zeros(like.shape[0], channels, height, left + width + right)
        self.left = left

    def advance(self) -> None:
        """A new last row, zero until written; the oldest row leaves."""
        if self.data.shape[2] > 1:
            self.data[:, :, :-1] = self.data[:, :, 1:].clone()
        self.data[:, :, -1] = 0

    def write(self, start: int, values: torch.Tensor) -> None:
        """Columns start … start + m - 1 of the last row from values (N, C, m)."""
        self.data[:, :, -1, self.left + start:self.left + start + values.shape[2]] = values


class CachedConv:
    """A convolution evaluated at output columns of its input cache's last row. ``weight`` (Cout, Cin, kh,
    kw): a masked kernel multiplied by its mask and cut to its rows at and above the output; the window of
    output column j starts ``before`` columns left of j and takes the cache's last kh rows.

    On GPUs it runs gmk's cached_conv2d op (the backend ``auto`` picks); on CPU ATen's addmm (one position)
    or conv2d (a row) on the window: there the custom op's call costs more than it saves (A/B on the
    digits models, 2026-12-02: 0-15 % slower sampling)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, before: int):
        self.weight = weight.detach().contiguous()
        self.bias, self.before = None if bias is None else bias.detach().contiguous(), before
        self.backend = CACHED_CONV.select("auto", self.weight.device, self.weight.dtype)
        self.aten = self.backend in ("reference", "cpu")
        self.matrix = self.weight.flatten(1).t().contiguous()  # (Cin·kh·kw, Cout): a window's order

    def __call__(self, rows: Rows, start: int, count: int = 1, stride: int = 1) -> torch.Tensor:
        """The outputs (N, Cout, count) at columns start, start + stride, …"""
        first = rows.left + start - self.before
        if not self.aten:
            return CACHED_CONV.run(self.backend, rows.data, self.weight, self.bias, first, count, stride)
        kh, kw = self.weight.shape[2:]
        window = rows.data[:, :, -kh:, first:first + (count - 1) * stride + kw]
        if count > 1:
            return F.conv2d(window, self.weight, self.bias, stride=(1, stride))[:, :, 0]
        flat = window.reshape(window.shape[0], -1)
        out = flat @ self.matrix if self.bias is None else torch.addmm(self.bias, flat, self.matrix)
        return out.unsqueeze(2)


class Pointwise:
    """A 1x1 convolution (weight (Cout, Cin, 1, 1), masked weights multiplied by their mask) on values
    (N, Cin, m)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight.detach()[:, :, :, 0], None if bias is None else bias.detach()
        self.matrix = self.weight[:, :, 0].t().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] == 1:
            flat = x[:, :, 0]
            out = flat @ self.matrix if self.bias is None else torch.addmm(self.bias, flat, self.matrix)
            return out.unsqueeze(2)
        return F.conv1d(x, self.weight, self.bias)


class CachedNetwork:
    """A model's network evaluated incrementally in raster order (see the module's docstring).

    The sampling loop calls ``begin_row(i)`` before row i's first pixel, then at each pixel j, per
    sampling step, ``output(j)`` (the network's output at (i, j), (N, P), for the image drawn so far)
    and ``write(j, channels, levels)`` (the scaled values (N, len(channels)) just drawn there, into the
    image's cache ``image``, a :class:`Rows`).

    For CUDA graphs (each ``begin_row`` and ``output`` call may be one), every tensor a call leaves for a
    later one is allocated with the network and updated in place (the caches, what a row leaves for its
    pixels), a call's work depends only on its :meth:`row_key`, column and sub-pixel, and no call reads a
    tensor back to the host.
    """

    image: Rows

    def begin_row(self, i: int) -> None:
        raise NotImplementedError

    def output(self, j: int) -> torch.Tensor:
        raise NotImplementedError

    def write(self, j: int, channels: tuple[int, ...], levels: torch.Tensor) -> None:
        self.image.data[:, channel_slice(channels), -1, self.image.left + j] = levels

    def row_key(self, i: int) -> Hashable:
        """Rows of the same key run the same ``begin_row`` and ``output(j)`` computations on the same
        buffers (one CUDA graph each serves them all): by default every row but the first (whose rows
        above are the zero padding)."""
        return i == 0


def channel_slice(channels: tuple[int, ...]) -> slice:
    """A sampling step's channels (consecutive) as a slice: indexing by a list would copy it to the device
    (not allowed in a CUDA graph's capture)."""
    return slice(channels[0], channels[-1] + 1)


def cuda_graph(step: Callable[[], None], check_inputs: bool = False) -> Callable[[], None]:
    """``step`` captured in a CUDA graph (its own memory pool) and run once; returns the graph's replay.
    ``check_inputs`` (tests): torch raises if a tensor the graph reads from outside is freed before a
    replay (check_input_liveness)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, **({"check_input_liveness": True} if check_inputs else {})):
        step()
    graph.replay()
    return graph.replay


class StepGraphs:
    """Runs the sampling loop's steps: eagerly (``capture`` None, or a step without a key), or each step
    captured by ``capture(step)`` (which runs it once and returns its replay: :func:`cuda_graph`) the
    first time its key comes and replayed when it comes again."""

    def __init__(self, capture: Callable[[Callable[[], None]], Callable[[], None]] | None):
        self.capture, self.replays = capture, {}

    def run(self, key: Hashable | None, step: Callable[[], None]) -> None:
        if self.capture is None or key is None:
            step()
        elif key in self.replays:
            self.replays[key]()
        else:
            self.replays[key] = self.capture(step)


def deepest_level(position: int, levels: int) -> int:
    """The largest s < levels with position a multiple of 2^s: the resolutions a stride-2 network runs at
    this row or column ("cache every, run every" of Ramachandran et al.)."""
    s = 0
    while s + 1 < levels and position % (2 ** (s + 1)) == 0:
        s += 1
    return s


# --- the model contract ----------------------------------------------------------------------------------

class ImageInputs(torch.nn.Module):
    """The checks of an image model's integer images x and class labels y (shared by every image model:
    the same messages), and the device and dtype of its parameters."""

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _check_x(self, function: str, x, check_inputs: bool) -> None:
        name, c = f"{type(self).__name__}.{function}", self.config
        if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype.is_complex \
                or x.dtype == torch.bool:
            raise TypeError(f"{name}: x must be an integer tensor of bins (uint8 or int64), got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != c.in_channels or 0 in x.shape:
            raise ValueError(f"{name}: x must be (N, C={c.in_channels}, H, W), non-empty, got shape "
                             f"{tuple(x.shape)}")
        if x.device != self._device:
            raise ValueError(f"{name}: x must be on the model's device {self._device}, got {x.device}")
        if not check_inputs:
            return
        # the range as Python ints (one read back): a uint8 comparison with num_bins = 256 would wrap
        low, high = (int(v) for v in torch.aminmax(x))
        if low < 0 or high >= c.num_bins:
            raise ValueError(f"{name}: x must hold bins in [0, {c.num_bins}), got values in [{low}, {high}]")

    def _check_y(self, function: str, y, batch: int, check_inputs: bool) -> None:
        name, classes = f"{type(self).__name__}.{function}", self.config.num_classes
        if classes == 0:
            if y is not None:
                raise ValueError(f"{name}: y was given but the model is unconditional (num_classes=0)")
            return
        if y is None:
            raise ValueError(f"{name}: y (class labels, (N,) int64) is required: num_classes={classes}")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.long:
            raise TypeError(f"{name}: y must be an int64 tensor of class labels, got "
                            f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}")
        if tuple(y.shape) != (batch,):
            raise ValueError(f"{name}: y must have shape ({batch},), got {tuple(y.shape)}")
        if y.device != self._device:
            raise ValueError(f"{name}: y must be on the model's device {self._device}, got {y.device}")
        if check_inputs and not bool(((y >= 0) & (y < classes)).all()):
            raise ValueError(f"{name}: y must hold classes in [0, {classes}), got values in "
                             f"[{y.min().item()}, {y.max().item()}]")


class AutoregressiveImageModel(ImageInputs):
    """forward / log_prob / sample over integer images for a network that is causal in raster order.

    Subclasses set ``config_class`` and define ``network(inputs, y)`` -> output (N, P, H, W) from the
    scaled image (N, C, H, W) (output at pixel p sees only earlier pixels, and, with colour groups,
    earlier sub-pixels of p), ``nll(output, x)`` -> (N,) nats, ``noise(n, channels, generator)`` -> the
    uniforms of one sampling step and ``draw_with(output_at_pixel, channels, temperature, noise)`` -> its
    bins (N, len(channels)); ``sampling_steps`` lists the channels each step draws (consecutive).
    """

    kind = "image"
    config_class: type

    def __init__(self, config):
        super().__init__()
        self.config = config

    @property
    def sampling_steps(self) -> tuple[tuple[int, ...], ...]:
        """The channels drawn by each network evaluation at a pixel: one at a time (softmax heads)."""
        return tuple((c,) for c in range(self.config.in_channels))

    def network(self, inputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def nll(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def noise(self, n: int, channels: tuple[int, ...],
              generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def draw_with(self, output: torch.Tensor, channels: tuple[int, ...], temperature: float,
                  noise: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError

    def draw(self, output: torch.Tensor, channels: tuple[int, ...], temperature: float,
             generator: torch.Generator | None) -> torch.Tensor:
        """The bins (N, len(channels)) of one sampling step from the output at the pixel (N, P), with
        uniforms drawn from ``generator``."""
        return self.draw_with(output, channels, temperature, self.noise(output.shape[0], channels, generator))

    def cached_network(self, n: int, size: int, y: torch.Tensor | None) -> CachedNetwork:
        """The network evaluated incrementally on n images of size × size (labels y), in eval mode."""
        raise NotImplementedError

    # --- likelihood --------------------------------------------------------------------------------

    def _nll(self, function: str, x, y, check_inputs: bool) -> torch.Tensor:
        self._check_x(function, x, check_inputs)
        self._check_y(function, y, x.shape[0], check_inputs)
        output = self.network(scale_bins(x, self.config.num_bins, self._dtype), y)
        return self.nll(output, x)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None,
                check_inputs: bool = True) -> dict[str, torch.Tensor]:
        """Training terms of images x (N, C, H, W): ``loss`` (mean nats per sub-pixel, to minimise) and
        ``bits_per_dim`` (detached). ``check_inputs`` checks the range of x and y: on CUDA that reads
        them back (one host synchronisation); pass False in a training loop whose data is valid."""
        nll = self._nll("forward", x, y, check_inputs)
        loss = nll.mean() / math.prod(x.shape[1:])
        return {"loss": loss, "bits_per_dim": bits_per_dim(loss.detach(), 1)}

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None,
                 check_inputs: bool = True) -> torch.Tensor:
        """log p(x) in nats per image, (N,)."""
        return -self._nll("log_prob", x, y, check_inputs)

    # --- sampling ----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, image_size: int | None = None, y: torch.Tensor | None = None,
               temperature: float = 1.0, generator: torch.Generator | None = None,
               method: str = "cached", graph: bool | str = "auto") -> torch.Tensor:
        """n images (n, C, H, W) int64 in [0, num_bins), H = W = ``image_size`` (default: the config's),
        drawn in raster order (and R, G, B within a pixel), in eval mode (no dropout). The noise comes
        from ``generator`` (on the model's device): the same generator state gives the same images.
        ``temperature`` (> 0) flattens (> 1) or sharpens (< 1) each step's distribution; 1 samples the
        model (see the model's ``draw``).

        ``method="cached"`` evaluates the network only where a step changes it, from caches of each
        convolution's input rows (Ramachandran et al. 2017); ``"naive"`` runs the whole network at every
        step. Both draw the same noise and give the same images (up to float rounding of an output that
        falls on a bin boundary).

        ``graph`` (cached sampling on CUDA): True replays each per-pixel step and per-row update as a CUDA
        graph, captured the first time its kind comes after the first WARMUP_ROWS rows (one graph per
        column and sub-pixel for each kind of row, each with its memory pool: CIFAR PixelCNN++ captures
        3 x 32 + 3); False runs them eagerly; ``"auto"``: True on CUDA once ``GRAPHS_BY_DEFAULT`` is (False
        until the capture has run on a GPU), else False. The images are the same either way."""
        name = f"{type(self).__name__}.sample"
        check_int(name, "n", n)
        size = self.config.image_size if image_size is None else image_size
        check_int(name, "image_size", size)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not 0 < temperature < math.inf:
            raise ValueError(f"{name}: temperature must be a positive finite number, got {temperature!r}")
        if method not in METHODS:
            raise ValueError(f"{name}: method must be one of {METHODS}, got {method!r}")
        graphs = self._check_graph(name, graph, method)
        check_generator(name, generator, self._device)
        self._check_y("sample", y, n, check_inputs=True)
        x = torch.zeros(n, self.config.in_channels, size, size, dtype=torch.long, device=self._device)
        training = self.training
        self.eval()
        try:
            if method == "naive":
                self._sample_naive(x, y, temperature, generator)
            else:
                self._sample_cached(x, y, temperature, generator, cuda_graph if graphs else None)
        finally:
            self.train(training)
        return x

    def _sample_naive(self, x: torch.Tensor, y, temperature: float, generator) -> None:
        size = x.shape[2]
        for i in range(size):
            for j in range(size):
                for channels in self.sampling_steps:
                    output = self.network(scale_bins(x, self.config.num_bins, self._dtype), y)[:, :, i, j]
                    x[:, list(channels), i, j] = self.draw(output, channels, temperature, generator)

    def _check_graph(self, name: str, graph, method: str) -> bool:
        """Whether cached sampling replays CUDA graphs (see ``sample``)."""
        if not (graph is True or graph is False or graph == "auto"):
            raise ValueError(f"{name}: graph must be True, False or 'auto', got {graph!r}")
        if graph is not True:
            return (graph == "auto" and GRAPHS_BY_DEFAULT and method == "cached"
                    and self._device.type == "cuda")
        if method != "cached":
            raise ValueError(f"{name}: graph=True needs method='cached', got method={method!r}")
        if self._device.type != "cuda":
            raise ValueError(f"{name}: graph=True needs the model on a CUDA device, got {self._device}")
        return True

    def _sample_cached(self, x: torch.Tensor, y, temperature: float, generator,
                       capture: Callable[[Callable[[], None]], Callable[[], None]] | None = None) -> None:
        """Cached sampling into x (N, C, H, W); with ``capture`` (:func:`cuda_graph`), the steps after the
        first WARMUP_ROWS rows through graphs (:class:`StepGraphs`) reading static noise buffers and
        writing the row's bins into a static row."""
        n, size = x.shape[0], x.shape[2]
        network = self.cached_network(n, size, y)
        steps = StepGraphs(capture)
        row = torch.zeros_like(x[:, :, 0])  # (N, C, W): the bins of the row being drawn
        buffers = [None] * len(self.sampling_steps)  # per step: the static buffers of its uniforms
        for i in range(size):
            key = None if capture is None or i < WARMUP_ROWS else network.row_key(i)
            steps.run(None if key is None else ("row", key), lambda: network.begin_row(i))
            for j in range(size):
                for s, channels in enumerate(self.sampling_steps):
                    noise = self.noise(n, channels, generator)
                    if capture is not None:  # a graph reads its uniforms from the same buffers each time
                        if buffers[s] is None:
                            buffers[s] = tuple(u.clone() for u in noise)
                        for buffer, u in zip(buffers[s], noise):
                            buffer.copy_(u)
                        noise = buffers[s]
                    steps.run(None if key is None else (key, j, s),
                              lambda: self._pixel_step(network, row, j, channels, temperature, noise))
            x[:, :, i] = row

    def _pixel_step(self, network: CachedNetwork, row: torch.Tensor, j: int, channels: tuple[int, ...],
                    temperature: float, noise: tuple[torch.Tensor, ...]) -> None:
        """One sampling step at column j of the current row: the bins into ``row`` and the network's cache."""
        bins = self.draw_with(network.output(j), channels, temperature, noise)
        row[:, channel_slice(channels), j] = bins
        network.write(j, channels, scale_bins(bins, self.config.num_bins, self._dtype))


class SoftmaxImageModel(AutoregressiveImageModel):
    """A model whose head is a num_bins-way softmax per sub-pixel (PixelCNN, Gated PixelCNN): the
    network's output (N, C·B, H, W) holds channel c's B logits at channels c·B … (c+1)·B - 1 (so
    colour groups of the output are the channels' logits)."""

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        """(N, C·B, ...) -> (N, C, B, ...), in float32 (float64 stays)."""
        logits = output.unflatten(1, (self.config.in_channels, self.config.num_bins))
        return logits if logits.dtype == torch.float64 else logits.float()

    def nll(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x) in nats per image (N,)."""
        nll = F.cross_entropy(self.logits(output).transpose(1, 2), x.long(), reduction="none")
        return nll.flatten(1).sum(dim=1)

    def noise(self, n: int, channels: tuple[int, ...],
              generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        """One uniform (N, 1) per step, in the logits' dtype."""
        dtype = torch.float64 if self._dtype == torch.float64 else torch.float32
        return (torch.rand(n, 1, generator=generator, dtype=dtype, device=self._device),)

    def draw_with(self, output: torch.Tensor, channels: tuple[int, ...], temperature: float,
                  noise: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The bin (N, 1) of sub-pixel ``channels[0]`` from the output at one pixel (N, C·B): the inverse
        CDF of softmax(logits / temperature) at the uniform ``noise[0]``."""
        probs = torch.softmax(self.logits(output)[:, channels[0]] / temperature, dim=1)
        return (probs.cumsum(dim=1) < noise[0]).sum(dim=1, keepdim=True).clamp(max=self.config.num_bins - 1)
