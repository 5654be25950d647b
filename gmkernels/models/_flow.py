"""What the multi-scale flows (Glow, RealNVP) share: the image contract, dequantisation, the levels with
their split priors, the learned top prior, sampling, and reversible back-propagation.

Images are integer bins v (N, C, H, W) in [0, num_bins), as for the PixelCNN models. The flow sees
u = (v + ε)/num_bins − 1/2 in [−1/2, 1/2), ε ~ U[0, 1) (uniform dequantisation); the discrete
log-likelihood bound is log p(u) − D·log(num_bins) for D = C·H·W sub-pixels (Theis et al. 2016,
Glow's objective). ``encode`` takes the bin centres (ε = 1/2), so ``decode(encode(v))`` is v exactly.

A flow is ``levels`` :class:`FlowLevel`: invertible layers (each ``forward(x) -> (y, logdet)``,
``reverse(y) -> x``), then, except at the top, a split (RealNVP §3.6 "factoring out"): the first half
of the channels goes on, the second half z is a latent with a diagonal Gaussian prior whose mean and
log standard deviation come from the first half through a zero-initialised convolution (Glow's
``split2d_prior``; RealNVP: N(0, 1)). The top latent's prior is learned per channel (Glow's
``learntop``), plus a zero-initialised class embedding when the model is class-conditional (``ycond``).

``reversible=True`` back-propagates through each level's layers without storing their activations
(Gomez et al. 2017, arXiv 1707.04585, as openai/glow#37 suggests): the forward runs under no_grad and
keeps only the level's output; the backward walks the layers from the last, recomputing each layer's
input from its output with ``reverse``, then re-running that one layer with autograd. Memory then does
not grow with the number of steps; the gradients are those of the stored backward up to the rounding
of the recomputed inputs.
"""
from __future__ import annotations

import math

import torch

from .._validation import check_bool, check_finite_number, check_int
from ..nn.actnorm import ActNorm
from ..nn.coupling import AffineCoupling, ZeroConv2d
from ..nn.flow import FlowStep
from ..ops.coupling import affine_coupling
from ..ops.logistic_mixture import bits_per_dim
from ..reference.coupling import logdet_dtype
from ._autoregressive import AutoregressiveImageModel, check_image_fields

LOG_2PI = math.log(2 * math.pi)


def check_flow_fields(config, levels: int, why: str) -> None:
    """The image fields (as the PixelCNN configs) and the flags every flow config has; ``image_size``
    must halve ``levels`` times (``why`` says what halves it)."""
    name = type(config).__name__
    if config.num_classes is None:  # None and 0 both mean unconditional; the models read 0
        object.__setattr__(config, "num_classes", 0)
    check_image_fields(config)
    check_bool(name, "learn_prior", config.learn_prior)
    check_bool(name, "reversible", config.reversible)
    if config.image_size % 2 ** levels:
        raise ValueError(f"{name}: image_size must be a multiple of {2 ** levels} ({why}), "
                         f"got {config.image_size}")


class ReverseChannels(torch.nn.Module):
    """The channels in reverse order (Glow's "reverse" permutation, RealNVP's alternating halves): a
    permutation, logdet 0."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0], dtype=logdet_dtype(x.dtype))

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        return y.flip(1)


def run_layers(layers, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logdet = x.new_zeros(x.shape[0], dtype=logdet_dtype(x.dtype))
    for layer in layers:
        x, layer_logdet = layer(x)
        logdet = logdet + layer_logdet
    return x, logdet


def reverse_layers(layers, y: torch.Tensor) -> torch.Tensor:
    for layer in reversed(layers):
        y = layer.reverse(y)
    return y


def _grads(outputs: list, grads: list, inputs: list) -> tuple:
    """d(Σ <output, grad>)/d inputs; a logdet that does not depend on the inputs is left out."""
    pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
    return torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True)


def _invert_generic(layer, y, grad_y, grad_logdet, params):
    """(x, grad_x, grads of params) of any layer: x = layer.reverse(y), then layer(x) again with autograd."""
    with torch.no_grad():
        x = layer.reverse(y)
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        y_again, logdet = layer(x)
        found = _grads([y_again, logdet], [grad_y, grad_logdet], [x, *params])
    return x.detach(), found[0], found[1:]


def _invert_coupling(coupling, y, grad_y, grad_logdet, params):
    """A coupling's network runs once: h = NN(y_a) is NN(x_a) (x_a = y_a), so h, computed with autograd
    from y, serves both the inversion and the recomputed forward; its gradient reaches x_a through y."""
    with torch.enable_grad():
        y_source = y.detach().requires_grad_()
        h = coupling._h(y_source)
        options = {"transform": coupling.transform, "layout": coupling.layout}
        with torch.no_grad():
            x = affine_coupling(y, h, reverse=True, **options)[0]
        x = x.requires_grad_()
        y_again, logdet = affine_coupling(x, h, **options)
        found = _grads([y_again, logdet], [grad_y, grad_logdet], [x, y_source, *params])
    grad_x = found[0] if found[1] is None else found[0] + found[1]
    return x.detach(), grad_x, found[2:]


def _invert_flow_step(step, y, grad_y, grad_logdet, params):
    """FlowStep: the coupling as _invert_coupling, then the fused actnorm + 1x1 convolution."""
    coupling_params = set(map(id, step.coupling.parameters()))
    own = [p for p in params if id(p) in coupling_params]
    z, grad_z, coupling_grads = _invert_coupling(step.coupling, y, grad_y, grad_logdet, own)
    rest = [p for p in params if id(p) not in coupling_params]
    with torch.no_grad():
        x = step._actnorm_conv1x1(z, reverse=True)[0]
    with torch.enable_grad():
        x = x.requires_grad_()
        z_again, logdet = step._actnorm_conv1x1(x, reverse=False)
        found = _grads([z_again, logdet], [grad_z, grad_logdet], [x, *rest])
    by_id = dict(zip(map(id, own), coupling_grads)) | dict(zip(map(id, rest), found[1:]))
    return x.detach(), found[0], tuple(by_id[id(p)] for p in params)


def _invert(layer, y, grad_y, grad_logdet, params):
    """(x, grad_x, grads of params) of one layer from its output y and the gradients of y and logdet."""
    if isinstance(layer, FlowStep):
        return _invert_flow_step(layer, y, grad_y, grad_logdet, params)
    if isinstance(layer, (AffineCoupling, CouplingLayer)):
        return _invert_coupling(layer, y, grad_y, grad_logdet, params)
    return _invert_generic(layer, y, grad_y, grad_logdet, params)


class CouplingLayer(torch.nn.Module):
    """A model's own coupling layer: ``_h(x)`` (the network's output on x_a, read from x), ``transform``
    and ``layout`` (of gmk.affine_coupling); the reversible backward runs its network once per step."""

    transform: str
    layout: str

    def _h(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return affine_coupling(x, self._h(x), transform=self.transform, layout=self.layout)

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        # x_a = y_a: the network sees the same input in both directions.
        return affine_coupling(y, self._h(y), transform=self.transform, layout=self.layout, reverse=True)[0]


class _Reversible(torch.autograd.Function):
    """(y, logdet) of ``layers`` on x, saving y only; the backward recomputes each layer's input."""

    @staticmethod
    def forward(ctx, x, layers, *params):
        with torch.no_grad():
            y, logdet = run_layers(layers, x)
        ctx.layers, ctx.params = layers, params
        ctx.save_for_backward(y)
        return y, logdet

    @staticmethod
    def backward(ctx, grad_y, grad_logdet):
        y, = ctx.saved_tensors
        index = {id(p): i for i, p in enumerate(ctx.params)}
        grad_params = [None] * len(ctx.params)
        for layer in reversed(ctx.layers):
            params = [p for p in layer.parameters() if id(p) in index]
            y, grad_y, found = _invert(layer, y, grad_y, grad_logdet, params)
            for p, g in zip(params, found):
                if g is not None:
                    i = index[id(p)]
                    grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
        return (grad_y, None, *grad_params)


class FlowLevel(torch.nn.Module):
    """One scale: ``layers`` (invertible), ``squeezes`` of them Squeeze2d, then a split when ``split``:
    the latent z is the second half of the channels, with prior N(mean, e^{2 log_std}) from the first
    half (``prior``, a ZeroConv2d to 2·|z| channels, or N(0, 1) when ``prior`` is None)."""

    def __init__(self, layers: list[torch.nn.Module], squeezes: int, split: bool,
                 prior: torch.nn.Module | None):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)
        self.squeezes, self.split, self.prior = squeezes, split, prior

    def initialized(self) -> bool:
        return all(m._initialized for m in self.modules() if isinstance(m, ActNorm))

    def transform(self, x: torch.Tensor, reversible: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The layers' (y, logdet); reversibly once every actnorm has initialised itself."""
        if reversible and torch.is_grad_enabled() and self.initialized():
            params = [p for p in self.layers.parameters() if p.requires_grad]
            return _Reversible.apply(x, self.layers, *params)
        return run_layers(self.layers, x)

    def prior_of(self, kept: torch.Tensor, z_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prior is None:
            zeros = kept.new_zeros(kept.shape[0], z_channels, *kept.shape[2:])
            return zeros, zeros
        return self.prior(kept).chunk(2, dim=1)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Σ log N(z; mean, e^{2 log_std}) per sample, (N,)."""
    terms = -0.5 * (LOG_2PI + 2 * log_std + (z - mean) ** 2 * torch.exp(-2 * log_std))
    return terms.flatten(1).sum(1, dtype=logdet_dtype(z.dtype))


class MultiScaleFlow(torch.nn.Module):
    """The contract of the flow models over integer images (see the module's docstring).

    Subclasses build ``self.levels`` (a ModuleList of FlowLevel) and may override ``preprocess`` /
    ``postprocess`` (RealNVP's logit); they set ``config_class``, and call :meth:`build_top_prior`.
    """

    kind = "image"
    config_class: type

    # the input checks of the PixelCNN models (same messages)
    _check_x = AutoregressiveImageModel._check_x
    _check_y = AutoregressiveImageModel._check_y
    _device = AutoregressiveImageModel._device

    def __init__(self, config):
        super().__init__()
        self.config = config

    def build_top_prior(self, channels: int) -> None:
        """The top latent's prior per channel: mean and log std, learned (zero-initialised, so N(0, 1) at
        the start) when the config's ``learn_prior``; a class embedding added when conditional."""
        c = self.config
        self.top_prior = torch.nn.Parameter(torch.zeros(2 * channels, 1, 1), requires_grad=c.learn_prior)
        self.class_prior = torch.nn.Embedding(c.num_classes, 2 * channels) if c.num_classes else None
        if self.class_prior is not None:
            torch.nn.init.zeros_(self.class_prior.weight)

    # --- shapes ------------------------------------------------------------------------------------------

    def latent_shapes(self, image_size: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of each level's latent, bottom to top, for square images of ``image_size``."""
        channels, size, shapes = self.config.in_channels, image_size, []
        for level in self.levels:
            channels, size = channels * 4 ** level.squeezes, size // 2 ** level.squeezes
            if level.split:
                shapes.append((channels - channels // 2, size, size))
                channels //= 2
        shapes.append((channels, size, size))
        return shapes

    # --- the continuous flow -----------------------------------------------------------------------------

    def preprocess(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u in [−1/2, 1/2) to the flow's input, with its logdet (N,). Glow: the identity."""
        return u, u.new_zeros(u.shape[0], dtype=logdet_dtype(u.dtype))

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _top_prior(self, shape: torch.Size, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.top_prior.expand(shape[0], -1, *shape[2:])
        if self.class_prior is not None:
            h = h + self.class_prior(y)[:, :, None, None]
        return h.chunk(2, dim=1)

    def _flow(self, u: torch.Tensor, y: torch.Tensor | None,
              prior: bool = True) -> tuple[list, torch.Tensor, torch.Tensor | None]:
        """(latents, logdet, log prior (None unless ``prior``)) of continuous images u."""
        x, logdet = self.preprocess(u)
        latents, log_prior = [], torch.zeros_like(logdet)
        for level in self.levels:
            x, level_logdet = level.transform(x, self.config.reversible)
            logdet = logdet + level_logdet
            if level.split:
                kept, z = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2:]
                if prior:
                    log_prior = log_prior + gaussian_log_prob(z, *level.prior_of(kept, z.shape[1]))
                latents.append(z)
                x = kept
        latents.append(x)
        if not prior:
            return latents, logdet, None
        return latents, logdet, log_prior + gaussian_log_prob(x, *self._top_prior(x.shape, y))

    def _unflow(self, top: torch.Tensor, draw_z) -> torch.Tensor:
        """Continuous images from the top latent; ``draw_z(index, mean, log_std)`` gives the latent of
        the index-th split (bottom first), top-down."""
        x, index = top, sum(level.split for level in self.levels)
        for level in reversed(self.levels):
            if level.split:
                index -= 1
                mean, log_std = level.prior_of(x, x.shape[1])
                x = torch.cat([x, draw_z(index, mean, log_std)], dim=1)
            x = reverse_layers(level.layers, x)
        return self.postprocess(x)

    # --- bins <-> continuous ------------------------------------------------------------------------------

    def _continuous(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (x.to(self._dtype) + noise) / self.config.num_bins - 0.5

    def _bins(self, u: torch.Tensor) -> torch.Tensor:
        return torch.floor((u + 0.5) * self.config.num_bins).clamp_(0, self.config.num_bins - 1).long()

    @property
    def _dtype(self) -> torch.dtype:
        return self.top_prior.dtype

    # --- the contract -------------------------------------------------------------------------------------

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
                 generator: torch.Generator | None = None, check_inputs: bool = True) -> torch.Tensor:
        """The dequantised log-likelihood bound of images x in nats, (N,): log p(u) − D·log(num_bins) for
        one draw of the uniform noise (from ``generator``, else torch's default generator of x's device)."""
        self._check_x("log_prob", x, check_inputs)
        self._check_y("log_prob", y, x.shape[0], check_inputs)
        noise = torch.rand(x.shape, dtype=self._dtype, device=x.device, generator=generator)
        _, logdet, log_prior = self._flow(self._continuous(x, noise), y)
        return log_prior + logdet - math.prod(x.shape[1:]) * math.log(self.config.num_bins)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None,
                check_inputs: bool = True) -> dict[str, torch.Tensor]:
        """Training terms of images x (N, C, H, W): ``loss`` (mean nats per sub-pixel of the dequantised
        bound, to minimise) and ``bits_per_dim`` (detached). ``check_inputs``: as for the PixelCNN models."""
        log_p = self.log_prob(x, y, check_inputs=check_inputs)
        loss = -log_p.mean() / math.prod(x.shape[1:])
        return {"loss": loss, "bits_per_dim": bits_per_dim(loss.detach(), 1)}

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The latents of images x (bins, taken at their centres), bottom level first, top last, and the
        flow's log-determinant (N,)."""
        self._check_x("encode", x, True)
        latents, logdet, _ = self._flow(self._continuous(x, torch.full((), 0.5, device=x.device)), None,
                                      prior=False)
        return latents, logdet

    def decode(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """The images (bins, int64) of ``latents`` as ``encode`` gives them: its exact inverse."""
        name = f"{type(self).__name__}.decode"
        if not isinstance(latents, (list, tuple)) or not all(isinstance(z, torch.Tensor) for z in latents):
            raise TypeError(f"{name}: latents must be a list of tensors, as encode returns")
        if len(latents) != len(self.latent_shapes(self.config.image_size)):
            raise ValueError(f"{name}: latents must hold {len(self.latent_shapes(self.config.image_size))} "
                             f"tensors (one per split and the top), got {len(latents)}")
        return self._bins(self._unflow(latents[-1], lambda index, mean, log_std: latents[index]))

    @torch.no_grad()
    def sample(self, n: int, *, temperature: float = 0.7, image_size: int | None = None,
               y: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images (n, C, H, W) int64 in [0, num_bins), H = W = ``image_size`` (default: the config's):
        every latent drawn from its prior with the standard deviation times ``temperature`` (Glow §5:
        0.7 gives cleaner images than 1, which samples the model), from ``generator``."""
        name = f"{type(self).__name__}.sample"
        check_int(name, "n", n)
        check_finite_number(name, "temperature", temperature)
        if temperature <= 0:
            raise ValueError(f"{name}: temperature must be > 0, got {temperature}")
        size = self.config.image_size if image_size is None else image_size
        check_int(name, "image_size", size)
        levels = sum(level.squeezes for level in self.levels)
        if size % 2 ** levels:
            raise ValueError(f"{name}: image_size must be a multiple of {2 ** levels}, got {size}")
        self._check_y("sample", y, n, True)
        shapes = self.latent_shapes(size)

        def draw(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
            noise = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
            return mean + temperature * torch.exp(log_std) * noise

        top_shape = (n, *shapes[-1])
        top = draw(*self._top_prior(torch.Size(top_shape), y))
        return self._bins(self._unflow(top, lambda index, mean, log_std: draw(mean, log_std)))

