"""WaveNet (van den Oord et al. 2016, arXiv 1609.03499) with nv-wavenet's architecture, on gmk's ops.

    x (N, T) µ-law classes -> embedding of the previous sample (A -> R)
    -> L residual layers (gmk.wavenet_layer: dilated causal conv, + conditioning, gate, residual and
       skip 1x1s), dilations 1, 2, …, 2^(L/stacks - 1), repeated ``stacks`` times
    -> relu(Σ skip) -> 1x1 (S -> H) -> relu -> 1x1 (H -> P)
    -> softmax over the A classes (P = A), or a discretized logistic mixture over the A levels
       2q/(A-1) - 1 of the µ-law value (P = 3K; gmk.discretized_logistic_mixture_nll).

Conditioning: local features (N, C, T) at the audio rate (upsample them first) through a 1x1
(C -> 2R) per layer, and/or a global vector (N, G) through a linear map (G -> 2R) per layer, both
added before the gate. ``forward`` returns the training loss; ``generate`` samples with a per-layer
cache (O(L) per sample) on the backend chosen as for every op (reference: the eager cached loop;
cpu: a C++ loop; triton: one fused kernel per step; cuda: one persistent kernel for all steps).
Parameters: gmk.nn.WaveNetLayer per layer (nn.Conv1d conv / res / skip) and nn.Conv1d 1x1s, so a
WaveNet's state dict reads like the usual PyTorch ports'; ``generation_weights`` stacks them per layer.
The last layer's residual output feeds nothing (nv-wavenet has no such 1x1): its ``res`` gets no
gradient (DistributedDataParallel needs ``find_unused_parameters=True``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._validation import check_bool, check_finite_number, check_generator, check_int
from ..mu_law import mu_law_decode
from ..nn.causal_conv import WaveNetLayer
from ..ops.logistic_mixture import discretized_logistic_mixture_nll
from ..ops.wavenet_generate import wavenet_generate
from ..reference.wavenet_generate import HEADS, GenerationWeights, uniforms_per_sample


def _positive_int(name: str, value, minimum: int = 1) -> None:
    check_int("WaveNetConfig", name, value, minimum)


@dataclass(frozen=True)
class WaveNetConfig:
    """A WaveNet's sizes. The defaults are nv-wavenet's: L = 16, dilations 1 … 128 twice, R = 64,
    S = 256, A = 256, H = A, kernel size 2, softmax output."""

    layers: int = 16
    stacks: int = 2
    kernel_size: int = 2
    residual_channels: int = 64
    skip_channels: int = 256
    num_classes: int = 256
    head_channels: int | None = None  # H, the output head's hidden width; None: num_classes
    head: str = "softmax"  # or "logistic_mixture"
    mixture_components: int = 10
    log_scale_min: float = -7.0
    cond_channels: int = 0  # local conditioning features per sample (0: none)
    global_cond_channels: int = 0  # global conditioning vector (0: none)
    residual_scale: float = 1.0  # x_next = (x + W_res z + b_res) · residual_scale; √0.5 in some ports

    def __post_init__(self):
        _positive_int("layers", self.layers)
        _positive_int("stacks", self.stacks)
        if self.layers % self.stacks:
            raise ValueError(f"WaveNetConfig: stacks must divide layers, got layers={self.layers}, "
                             f"stacks={self.stacks}")
        _positive_int("kernel_size", self.kernel_size)
        _positive_int("residual_channels", self.residual_channels)
        _positive_int("skip_channels", self.skip_channels)
        _positive_int("num_classes", self.num_classes, 2)
        if self.head_channels is not None:
            _positive_int("head_channels", self.head_channels)
        if self.head not in HEADS:
            raise ValueError(f"WaveNetConfig: head must be one of {HEADS}, got {self.head!r}")
        _positive_int("mixture_components", self.mixture_components)
        _positive_int("cond_channels", self.cond_channels, 0)
        _positive_int("global_cond_channels", self.global_cond_channels, 0)
        for name in ("log_scale_min", "residual_scale"):
            check_finite_number("WaveNetConfig", name, getattr(self, name))

    @property
    def dilations(self) -> tuple[int, ...]:
        per_stack = self.layers // self.stacks
        return tuple(2 ** (layer % per_stack) for layer in range(self.layers))

    @property
    def hidden_channels(self) -> int:
        return self.num_classes if self.head_channels is None else self.head_channels

    @property
    def outputs(self) -> int:
        """P: the head's output channels (A logits, or 3K mixture parameters)."""
        return self.num_classes if self.head == "softmax" else 3 * self.mixture_components

    @property
    def receptive_field(self) -> int:
        return (self.kernel_size - 1) * sum(self.dilations) + 1

    @property
    def start_class(self) -> int:
        """The input before the first sample: the class of silence, mu_law_encode(0.0)."""
        return self.num_classes // 2


class WaveNet(torch.nn.Module):
    """nv-wavenet's network on gmk.nn.WaveNetLayer (``layers[l].conv``, ``.res``, ``.skip``: nn.Conv1d
    parameters); the head is ``head1`` (S -> H) and ``head2`` (H -> P), 1x1 nn.Conv1d; conditioning
    ``cond`` (a 1x1 C -> L·2R, rows l·2R … (l+1)·2R - 1 for layer l) and ``global_cond`` (G -> L·2R)."""

    config_class = WaveNetConfig
    kind = "audio"

    def __init__(self, config: WaveNetConfig | None = None):
        super().__init__()
        if config is not None and not isinstance(config, WaveNetConfig):
            raise TypeError(f"WaveNet: config must be a WaveNetConfig or None, got {type(config).__name__}")
        self.config = config = config or WaveNetConfig()
        r, two_r = config.residual_channels, 2 * config.residual_channels
        self.embedding = torch.nn.Embedding(config.num_classes, r)
        self.layers = torch.nn.ModuleList(
            WaveNetLayer(r, config.skip_channels, config.kernel_size, dilation, config.residual_scale)
            for dilation in config.dilations)
        self.head1 = torch.nn.Conv1d(config.skip_channels, config.hidden_channels, 1)
        self.head2 = torch.nn.Conv1d(config.hidden_channels, config.outputs, 1)
        c, g = config.cond_channels, config.global_cond_channels
        self.cond = torch.nn.Conv1d(c, config.layers * two_r, 1, bias=False) if c else None
        self.global_cond = torch.nn.Linear(g, config.layers * two_r, bias=False) if g else None

    # --- conditioning ------------------------------------------------------------------------

    def _check_cond(self, function: str, cond, global_cond, batch: int, steps: int, exact: bool) -> None:
        c = self.config
        for name, value, channels, rank in (("cond", cond, c.cond_channels, 3),
                                            ("global_cond", global_cond, c.global_cond_channels, 2)):
            if channels == 0:
                if value is not None:
                    raise ValueError(f"WaveNet.{function}: {name} was given but the config has "
                                     f"{'cond_channels' if rank == 3 else 'global_cond_channels'}=0")
                continue
            if value is None:
                raise ValueError(f"WaveNet.{function}: {name} is required (the config has {channels} "
                                 "channels)")
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise TypeError(f"WaveNet.{function}: {name} must be a floating-point tensor")
            if rank == 3:
                ok = value.dim() == 3 and value.shape[:2] == (batch, channels) and (
                    value.shape[2] == steps if exact else value.shape[2] >= steps)
                expected = f"(N={batch}, C={channels}, T{'=' if exact else '>='}{steps})"
            else:
                ok = tuple(value.shape) == (batch, channels)
                expected = f"(N={batch}, G={channels})"
            if not ok:
                raise ValueError(f"WaveNet.{function}: {name} must be {expected}, got shape "
                                 f"{tuple(value.shape)}")

    def layer_cond(self, cond: torch.Tensor | None, global_cond: torch.Tensor | None) -> torch.Tensor | None:
        """The conditioning each layer adds before its gate: (L, N, 2R, T), (L, N, 2R, 1), or None."""
        c = self.config
        projected = None
        if cond is not None:
            local = self.cond(cond.to(self.cond.weight.dtype))
            projected = local.view(cond.shape[0], c.layers, 2 * c.residual_channels, -1).transpose(0, 1)
        if global_cond is not None:
            glob = self.global_cond(global_cond.to(self.global_cond.weight.dtype))
            glob = glob.view(global_cond.shape[0], c.layers, 2 * c.residual_channels, 1).transpose(0, 1)
            projected = glob if projected is None else projected + glob
        return projected

    # --- training ----------------------------------------------------------------------------

    def output(self, inputs: torch.Tensor, cond: torch.Tensor | None = None,
               global_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The head's output (N, P, T) for the input classes (N, T): step t sees inputs[:, :t+1]."""
        layer_cond = self.layer_cond(cond, global_cond)
        x = self.embedding(inputs).transpose(1, 2)
        skip = 0
        for index, layer in enumerate(self.layers):
            x, layer_skip = layer(x, None if layer_cond is None else layer_cond[index])
            skip = skip + layer_skip
        return self.head2(F.relu(self.head1(F.relu(skip))))

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None, global_cond: torch.Tensor | None = None,
            check_inputs: bool = True) -> torch.Tensor:
        """-log p(x_t | x_<t) in nats, (N, T), for µ-law classes x (N, T) int64.

        ``check_inputs`` checks that x holds valid classes: on CUDA that reads x back (one host
        synchronisation); pass False in a training loop whose data is known to be valid.
        """
        check_bool("WaveNet", "check_inputs", check_inputs)
        if not isinstance(x, torch.Tensor) or x.dtype != torch.long or x.dim() != 2:
            raise TypeError(f"WaveNet: x must be µ-law classes, an int64 tensor (N, T), got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}"
                            f"{'' if not isinstance(x, torch.Tensor) else f' of shape {tuple(x.shape)}'}")
        self._check_cond("forward", cond, global_cond, x.shape[0], x.shape[1], exact=True)
        c = self.config
        if check_inputs and x.numel() and not bool(((x >= 0) & (x < c.num_classes)).all()):  # else an embedding out of bounds
            raise ValueError(f"WaveNet: x must hold classes in [0, {c.num_classes}), got values in "
                             f"[{x.min().item()}, {x.max().item()}]")
        inputs = torch.cat([x.new_full((x.shape[0], 1), c.start_class), x[:, :-1]], dim=1)
        output = self.output(inputs, cond, global_cond)
        if c.head == "softmax":
            return F.cross_entropy(output, x, reduction="none")
        levels = (2 * x.to(output.dtype if output.dtype == torch.float64 else torch.float32)
                  / (c.num_classes - 1) - 1)[:, None]
        return discretized_logistic_mixture_nll(output, levels, num_bins=c.num_classes,
                                                log_scale_min=c.log_scale_min, check_inputs=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None, global_cond: torch.Tensor | None = None,
                check_inputs: bool = True) -> dict[str, torch.Tensor]:
        """Training loss terms of µ-law classes x (N, T): ``loss`` (mean nats per sample, to minimise)
        and ``bits_per_sample``. ``check_inputs``: see :meth:`nll`."""
        loss = self.nll(x, cond, global_cond, check_inputs).mean()
        return {"loss": loss, "bits_per_sample": loss / math.log(2)}

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None, global_cond: torch.Tensor | None = None,
                 check_inputs: bool = True) -> torch.Tensor:
        """log p(x) in nats per sequence, (N,)."""
        return -self.nll(x, cond, global_cond, check_inputs).sum(dim=1)

    # --- generation --------------------------------------------------------------------------

    def generation_weights(self) -> GenerationWeights:
        """The weights the generation op takes: the layers' stacked along a leading L, 1x1s as matrices."""
        def stacked(get):
            return torch.stack([get(layer).detach() for layer in self.layers])

        return GenerationWeights(
            self.embedding.weight.detach(), stacked(lambda layer: layer.conv.weight),
            stacked(lambda layer: layer.conv.bias), stacked(lambda layer: layer.res.weight[:, :, 0]),
            stacked(lambda layer: layer.res.bias), stacked(lambda layer: layer.skip.weight[:, :, 0]),
            stacked(lambda layer: layer.skip.bias), self.head1.weight[:, :, 0].detach(),
            self.head1.bias.detach(), self.head2.weight[:, :, 0].detach(), self.head2.bias.detach())

    @torch.no_grad()
    def generate(self, num_samples: int, cond: torch.Tensor | None = None,
                 global_cond: torch.Tensor | None = None, batch_size: int = 1, temperature: float = 1.0,
                 generator: torch.Generator | None = None, backend: str = "auto") -> torch.Tensor:
        """µ-law classes (batch_size, num_samples) int64, one sample at a time (gmk.mu_law_decode: audio).

        ``cond`` (batch_size, C, >= num_samples) and ``global_cond`` (batch_size, G) as in training.
        The uniform noise is drawn here with ``generator``, so every backend draws the same samples
        (up to the rounding of the network's output at a class boundary).
        """
        function = "WaveNet.generate"
        check_int(function, "num_samples", num_samples, 1)
        check_int(function, "batch_size", batch_size, 1)
        check_generator(function, generator, self.embedding.weight.device)
        self._check_cond("generate", cond, global_cond, batch_size, num_samples, exact=False)
        c = self.config
        weights = self.generation_weights()
        layer_cond = self.layer_cond(None if cond is None else cond[:, :, :num_samples], global_cond)
        noise_dtype = torch.float64 if weights.embedding.dtype == torch.float64 else torch.float32
        uniform = torch.rand((batch_size, num_samples, uniforms_per_sample(c.head)), generator=generator,
                             dtype=noise_dtype, device=weights.embedding.device)
        return wavenet_generate(weights, c.dilations, uniform, layer_cond, start_class=c.start_class,
                                residual_scale=c.residual_scale, temperature=temperature, head=c.head,
                                log_scale_min=c.log_scale_min, backend=backend)

    def sample(self, batch_size: int, num_samples: int, **kwargs) -> torch.Tensor:
        """Audio in [-1, 1], (batch_size, num_samples): ``generate`` then µ-law decoding."""
        classes = self.generate(num_samples, batch_size=batch_size, **kwargs)
        return mu_law_decode(classes, self.config.num_classes)
