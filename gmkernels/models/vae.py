"""The variational autoencoder (Kingma & Welling 2014, arXiv 1312.6114), convolutional, over integer images.

Images are integer bins x (N, C, H, W) in [0, num_bins), seen scaled to [-1, 1] as by the PixelCNN models.

    encoder   x -> 3x3 conv, ``levels`` 4x4 stride-2 convs, 3x3 conv -> a linear map to (mean, log std)
              of q(z | x) = N(mean, diag(std²)), z of ``latent_dim``
    decoder   z -> a linear map to a (channels, s, s) map, ``levels`` 4x4 stride-2 transposed convs, 3x3
              conv -> the parameters of a discretized logistic mixture of ``mixtures`` components per
              pixel (PixelCNN++'s likelihood, gmk.discretized_logistic_mixture_nll): p(x | z)
    prior     p(z) = N(0, I)

Every convolution but the last is followed by gmk.nn.FusedLeakyReLU (its bias and the leaky ReLU in one
gmk.bias_act). With ``num_classes`` the class embedding is added to the encoder's output and to the
decoder's first map (a conditional VAE, q(z | x, y) and p(x | z, y)).

Objective: the evidence lower bound ELBO(x) = E_q[log p(x | z)] − KL(q(z | x) ‖ p(z)) ≤ log p(x), the
expectation by one reparameterised draw z = mean + std·ε, the KL in closed form. ``log_prob`` gives the
importance-weighted bound of Burda et al. 2016 (arXiv 1509.00519),
    log (1/k) Σ_i p(x | z_i) p(z_i) / q(z_i | x),   z_i ~ q(z | x),
which is ≥ the mean of its k log weights (Jensen), tends to log p(x) as k grows, and is the ELBO in
expectation at k = 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validation import check_generator, check_int
from ..nn.bias_act import FusedLeakyReLU
from ..ops.logistic_mixture import (bits_per_dim, discretized_logistic_mixture_nll,
                                    discretized_logistic_mixture_sample)
from ..reference.logistic_mixture import params_per_component, split_params
from ._autoregressive import (ImageConfig, ImageInputs, check_image_fields, check_number,
                             scale_bins)

LOG_2PI = math.log(2 * math.pi)


def check_levels(config) -> None:
    """``levels`` (stride-2 halvings) >= 0 and ``image_size`` a multiple of 2^levels."""
    name = type(config).__name__
    check_int(name, "levels", config.levels, 0)
    if config.image_size % 2 ** config.levels:
        raise ValueError(f"{name}: image_size must be a multiple of {2 ** config.levels} "
                         f"(levels={config.levels} stride-2 convolutions), got {config.image_size}")


@dataclass(frozen=True)
class VAEConfig(ImageConfig):
    """A VAE's sizes. Defaults: a CIFAR-10-sized network (32×32 RGB, 256 bins)."""

    in_channels: int = 3
    num_bins: int = 256
    image_size: int = 32
    num_classes: int = 0
    channels: int = 128  # of every convolution
    levels: int = 3  # stride-2 convolutions: the encoder's last map is image_size / 2^levels wide
    latent_dim: int = 128
    mixtures: int = 5  # logistic components per pixel of p(x | z)
    log_scale_min: float = -7.0

    def __post_init__(self):
        name = type(self).__name__
        check_image_fields(self)
        for field in ("channels", "latent_dim", "mixtures"):
            check_int(name, field, getattr(self, field))
        check_levels(self)
        check_number(name, "log_scale_min", self.log_scale_min, -math.inf, 0.0)

    @staticmethod
    def presets(in_channels: int) -> tuple[dict, dict]:
        """The "tiny" network's fields and the small one's (8×8 digits: 1.86 test bits/dim, the ELBO, after
        the 2000 steps of `gmk train vae`, 66 s of one CPU thread)."""
        tiny = dict(channels=8, levels=1, latent_dim=4, mixtures=2)
        small = dict(channels=64, levels=2, latent_dim=32, mixtures=3)
        return tiny, small


def conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
         transposed: bool = False) -> torch.nn.Sequential:
    """A bias-free convolution (``transposed``: a fractionally-strided one) followed by FusedLeakyReLU:
    "same" padding for 3x3, halving (doubling) for 4x4 stride 2."""
    layer = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
    padding = (kernel_size - stride + 1) // 2
    return torch.nn.Sequential(layer(in_channels, out_channels, kernel_size, stride, padding, bias=False),
                               FusedLeakyReLU(out_channels))


def encoder_stack(in_channels: int, channels: int, levels: int) -> torch.nn.Sequential:
    """3x3, ``levels`` 4x4 stride-2, 3x3: (N, in_channels, H, W) -> (N, channels, H/2^levels, W/2^levels)."""
    return torch.nn.Sequential(conv(in_channels, channels, 3),
                               *(conv(channels, channels, 4, 2) for _ in range(levels)),
                               conv(channels, channels, 3))


def decoder_stack(channels: int, levels: int) -> torch.nn.Sequential:
    """``levels`` 4x4 stride-2 transposed convolutions, then a 3x3: the inverse shapes of encoder_stack's."""
    return torch.nn.Sequential(*(conv(channels, channels, 4, 2, transposed=True) for _ in range(levels)),
                               conv(channels, channels, 3))


def diagonal_gaussian_kl(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag(e^{2 log_std})) ‖ N(0, I)) per row, (N,):
    ½ Σ (mean² + e^{2 log_std} − 1 − 2 log_std)."""
    return 0.5 * (mean ** 2 + torch.exp(2 * log_std) - 1 - 2 * log_std).sum(1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z ** 2 + LOG_2PI).sum(-1)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    return -0.5 * (((z - mean) * torch.exp(-log_std)) ** 2 + 2 * log_std + LOG_2PI).sum(-1)


class VAE(ImageInputs):
    """``encoder`` (convolutions), ``to_posterior`` (linear -> mean, log std), ``from_latent`` (linear),
    ``decoder`` (transposed convolutions), ``to_params`` (3x3 conv -> the mixture's parameters);
    ``class_embedding`` (num_classes -> 2·latent_dim + the decoder's first map) when conditional."""

    kind = "image"
    config_class = VAEConfig

    def __init__(self, config: VAEConfig | None = None):
        config = config or VAEConfig()
        super().__init__()
        self.config = c = config
        self.map_size = c.image_size // 2 ** c.levels
        flat = c.channels * self.map_size ** 2
        self.encoder = encoder_stack(c.in_channels, c.channels, c.levels)
        self.to_posterior = torch.nn.Linear(flat, 2 * c.latent_dim)
        self.from_latent = torch.nn.Linear(c.latent_dim, flat, bias=False)
        self.first_activation = FusedLeakyReLU(c.channels)
        self.decoder = decoder_stack(c.channels, c.levels)
        self.to_params = torch.nn.Conv2d(c.channels, c.mixtures * params_per_component(c.in_channels), 3,
                                         padding=1)
        self.class_embedding = (torch.nn.Embedding(c.num_classes, 2 * c.latent_dim + flat) if c.num_classes
                                else None)

    # --- the two networks ----------------------------------------------------------------------------------

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log std) of q(z | x, y), each (N, latent_dim), for bins x (checked by the callers)."""
        h = self.to_posterior(self.encoder(scale_bins(x, self.config.num_bins, self._dtype)).flatten(1))
        if self.class_embedding is not None:
            h = h + self.class_embedding(y)[:, :h.shape[1]]
        return h.chunk(2, dim=1)

    def decoder_params(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mixture parameters of p(x | z, y), (N, P, H, W), in gmk.discretized_logistic_mixture_nll's
        layout."""
        h = self.from_latent(z)
        if self.class_embedding is not None:
            h = h + self.class_embedding(y)[:, 2 * self.config.latent_dim:]
        h = self.first_activation(h.view(z.shape[0], self.config.channels, self.map_size, self.map_size))
        return self.to_params(self.decoder(h))

    def _reconstruction_nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """−log p(x | z) in nats per image, (N,)."""
        c = self.config
        levels = scale_bins(x, c.num_bins, torch.float64 if params.dtype == torch.float64 else torch.float32)
        nll = discretized_logistic_mixture_nll(params, levels, num_bins=c.num_bins,
                                               log_scale_min=c.log_scale_min, check_inputs=False)
        return nll.flatten(1).sum(1)

    def _check(self, function: str, x, y, check_inputs: bool = True) -> None:
        self._check_x(function, x, check_inputs)
        self._check_y(function, y, x.shape[0], check_inputs)

    # --- the bounds ---------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None,
                check_inputs: bool = True) -> dict[str, torch.Tensor]:
        """Training terms of images x (N, C, H, W), per sub-pixel, mean over the batch: ``loss`` (−ELBO in
        nats, to minimise), ``bits_per_dim`` (−ELBO in bits, detached: the bound on the discrete data's
        bits/dim), ``reconstruction`` (E_q[−log p(x | z)], one draw) and ``kl`` (KL(q ‖ p), closed form),
        both nats and detached. ε from ``generator`` (else the global generator of x's device)."""
        self._check("forward", x, y, check_inputs)
        check_generator("VAE.forward", generator, x.device)
        mean, log_std = self.posterior(x, y)
        noise = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
        z = mean + torch.exp(log_std) * noise
        reconstruction = self._reconstruction_nll(self.decoder_params(z, y), x)
        kl = diagonal_gaussian_kl(mean, log_std)
        dims = math.prod(x.shape[1:])
        loss = (reconstruction + kl).mean() / dims
        return {"loss": loss, "bits_per_dim": bits_per_dim(loss.detach(), 1),
                "reconstruction": reconstruction.detach().mean() / dims, "kl": kl.detach().mean() / dims}

    def log_weights(self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_samples: int = 1,
                    generator: torch.Generator | None = None, check_inputs: bool = True) -> torch.Tensor:
        """The importance log weights log p(x | z_i) + log p(z_i) − log q(z_i | x) of ``num_samples`` draws
        z_i ~ q(z | x) per image, (num_samples, N) nats; the draws from ``generator``."""
        self._check("log_weights", x, y, check_inputs)
        check_int("VAE.log_weights", "num_samples", num_samples)
        check_generator("VAE.log_weights", generator, x.device)
        mean, log_std = self.posterior(x, y)
        noise = torch.randn((num_samples, *mean.shape), dtype=mean.dtype, device=mean.device,
                            generator=generator)
        z = mean + torch.exp(log_std) * noise  # (k, N, L)
        repeated = (lambda t: None if t is None else t.repeat(num_samples, *[1] * (t.dim() - 1)))
        params = self.decoder_params(z.flatten(0, 1), repeated(y))
        log_likelihood = -self._reconstruction_nll(params, repeated(x)).view(num_samples, -1)
        return log_likelihood + standard_normal_log_prob(z) - gaussian_log_prob(z, mean, log_std)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_samples: int = 1,
                 generator: torch.Generator | None = None, check_inputs: bool = True) -> torch.Tensor:
        """The importance-weighted bound on log p(x) (Burda et al.) in nats per image, (N,): log of the mean
        of the ``num_samples`` importance weights of :meth:`log_weights` (the same draws for the same
        ``generator``), ≥ their mean log weight; at num_samples=1 an unbiased estimate of the ELBO."""
        weights = self.log_weights(x, y, num_samples=num_samples, generator=generator,
                                   check_inputs=check_inputs)
        return torch.logsumexp(weights, dim=0) - math.log(num_samples)

    # --- images --------------------------------------------------------------------------------------------

    def _bins(self, levels: torch.Tensor) -> torch.Tensor:
        return torch.round((levels.clamp(-1, 1) + 1) * ((self.config.num_bins - 1) / 2)).long()

    def _mixture_mean(self, params: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z) per sub-pixel in [-1, 1], (N, C, H, W), the tails of the edge bins aside:
        Σ_k π_k m_k, each component's R, G, B means coupled as in the likelihood (linear, so through the
        component means)."""
        n, c, (h, w) = params.shape[0], self.config.in_channels, params.shape[2:]
        logits, means, _, coeffs = split_params(params, c)  # (N, K, S), (N, C, K, S)
        means = means.clamp(-1, 1)
        if coeffs is not None:
            a = torch.tanh(coeffs)
            red = means[:, 0]
            green = (means[:, 1] + a[:, 0] * red).clamp(-1, 1)
            blue = (means[:, 2] + a[:, 1] * red + a[:, 2] * green).clamp(-1, 1)
            means = torch.stack([red, green, blue], dim=1)
        return (torch.softmax(logits, dim=1)[:, None] * means).sum(2).view(n, c, h, w)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Bins (N, C, H, W) int64: the mean of p(x | z) at the posterior mean z, rounded to the nearest
        bin."""
        self._check("reconstruct", x, y)
        mean, _ = self.posterior(x, y)
        return self._bins(self._mixture_mean(self.decoder_params(mean, y)))

    @torch.no_grad()
    def sample(self, n: int, *, y: torch.Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n images (n, C, H, W) int64 in [0, num_bins): z ~ N(0, temperature²·I), then x ~ p(x | z) (every
        sub-pixel drawn, gmk.discretized_logistic_mixture_sample), the noise from ``generator``."""
        name = "VAE.sample"
        check_int(name, "n", n)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not 0 < temperature < math.inf:
            raise ValueError(f"{name}: temperature must be a positive finite number, got {temperature!r}")
        check_generator(name, generator, self._device)
        self._check_y("sample", y, n, True)
        c = self.config
        z = temperature * torch.randn(n, c.latent_dim, dtype=self._dtype, device=self._device,
                                      generator=generator)
        levels = discretized_logistic_mixture_sample(self.decoder_params(z, y), num_channels=c.in_channels,
                                                     num_bins=c.num_bins, log_scale_min=c.log_scale_min,
                                                     generator=generator)
        return self._bins(levels)
