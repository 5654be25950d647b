"""What the GAN models share: the config fields and checks, the integer-image contract, the losses
(non-saturating, lazy R1) and sampling.

Images are integer bins x (N, C, H, W) in [0, B). The discriminator sees a real image dequantized,
(v + u)/B·2 − 1 with u ~ U[0, 1) per sub-pixel, so that real and generated images are both continuous
in [−1, 1) (on the 17 levels of the digits it could otherwise tell them apart by their values alone);
a generated image s becomes the bin ⌊(s + 1)/2·B⌋ clamped to [0, B).

Losses (Goodfellow et al. 2014's non-saturating form; Mescheder et al. 2018's R1, lazily as StyleGAN2):
    D: softplus(D(G(z))) + softplus(−D(x))                  (mean over the batch)
       + every ``r1_interval`` steps: r1_interval · γ/2 · |∇_x D(x)|²   (mean over the batch)
    G: softplus(−D(G(z)))
A model subclasses :class:`GANModel` and builds ``generator`` (``generator(z, y, truncation)`` -> images
(N, C, H, W) float) and ``discriminator`` (``discriminator(images, y)`` -> logits (N,)).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .._validation import check_generator, check_int
from ._autoregressive import ImageConfig, check_image_fields, check_number


def check_gan_fields(config) -> None:
    """The fields every GAN config has, after the image fields: latent_dim, r1_gamma, r1_interval and
    Adam's betas."""
    name = type(config).__name__
    check_image_fields(config)
    check_int(name, "latent_dim", config.latent_dim)
    check_number(name, "r1_gamma", config.r1_gamma, 0.0, math.inf)
    check_int(name, "r1_interval", config.r1_interval)
    if not (isinstance(config.betas, tuple) and len(config.betas) == 2):
        raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {config.betas!r}")
    for index, beta in enumerate(config.betas):
        check_number(name, f"betas[{index}]", beta, 0.0, 1.0)


def check_power_of_two(config: str, name: str, value: int, minimum: int) -> None:
    """``value`` is ``minimum`` times a power of two."""
    check_int(config, name, value, minimum)
    if value % minimum or (value // minimum) & (value // minimum - 1):
        raise ValueError(f"{config}: {name} must be {minimum} times a power of two, got {value}")


class GANConfig(ImageConfig):
    """``for_data`` of the GAN configs; a checkpoint's config comes back with ``betas`` as a list."""

    def __post_init__(self):
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))


# --- losses ----------------------------------------------------------------------------------------------

def translate(images: torch.Tensor, shift: int) -> torch.Tensor:
    """Each image moved by its own random integer offset in [−shift, shift]² (the global generator's),
    the border pixels repeated into what opens up: DiffAugment's translation (Zhao et al. 2020), a gather,
    so differentiable to any order."""
    n, c, h, w = images.shape
    padded = F.pad(images, (shift, shift, shift, shift), mode="replicate")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n, 1, 1), device=images.device)
    rows = dy + torch.arange(h, device=images.device)[:, None]
    columns = dx + torch.arange(w, device=images.device)[None, :]
    index = (rows * (w + 2 * shift) + columns).reshape(n, 1, h * w).expand(-1, c, -1)
    return padded.flatten(2).gather(2, index).reshape(n, c, h, w)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating GAN's discriminator loss, mean softplus(fake) + mean softplus(−real)."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss, mean softplus(−D(G(z))) = −log σ(D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_images: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """The mean over the batch of |∇_x D(x)|², differentiable (create_graph): its gradient reaches the
    discriminator's parameters through the double backward. ``real_images`` must require grad."""
    (gradient,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return gradient.square().flatten(1).sum(1).mean()


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """``module``'s parameters do not require grad inside the block (the generator's step leaves the
    discriminator's gradients alone and skips computing them)."""
    saved = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


# --- the model contract ----------------------------------------------------------------------------------

class GANModel(torch.nn.Module):
    """A generator and a discriminator over integer images, trained by ``gmk train`` (kind "gan")."""

    kind = "gan"
    config_class: type
    generator: torch.nn.Module
    discriminator: torch.nn.Module

    def __init__(self, config):
        super().__init__()
        self.config = config

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # --- images ------------------------------------------------------------------------------------

    def dequantize(self, x: torch.Tensor) -> torch.Tensor:
        """Bins (N, C, H, W) -> (v + u)/B·2 − 1 with uniform noise u from the global generator."""
        b = self.config.num_bins
        return (x.float() + torch.rand(x.shape, device=x.device)) * (2 / b) - 1

    def to_bins(self, images: torch.Tensor) -> torch.Tensor:
        """Generated images (N, C, H, W) -> int64 bins ⌊(s + 1)/2·B⌋ in [0, B)."""
        b = self.config.num_bins
        return ((images.float() + 1) * (b / 2)).floor().clamp(0, b - 1).long()

    def latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.config.latent_dim, generator=generator, device=self._device)

    def _check_y(self, function: str, y, n: int) -> None:
        name, classes = f"{type(self).__name__}.{function}", self.config.num_classes
        if classes == 0:
            if y is not None:
                raise ValueError(f"{name}: y was given but the model is unconditional (num_classes=0)")
            return
        if not isinstance(y, torch.Tensor) or y.dtype != torch.long:
            raise TypeError(f"{name}: y (class labels, ({n},) int64) is required: num_classes={classes}")
        if tuple(y.shape) != (n,) or not bool(((y >= 0) & (y < classes)).all()):
            raise ValueError(f"{name}: y must be ({n},) classes in [0, {classes}), got shape {tuple(y.shape)}")

    @torch.no_grad()
    def sample(self, n: int, *, y: torch.Tensor | None = None, generator: torch.Generator | None = None,
               truncation: float = 1.0) -> torch.Tensor:
        """n images (n, C, H, W) int64 in [0, num_bins) from latents drawn with ``generator`` (a
        torch.Generator on the model's device; the same state gives the same images). ``truncation`` ψ
        in [0, 1] pulls each latent toward the mean one (1: the model's distribution, 0: one image per
        class); ``y`` the class labels (n,) of a conditional model. The network's own noise
        (StyleGAN2's per-pixel noise) comes from a seed drawn from ``generator``; the global generator
        is left as it was."""
        name = f"{type(self).__name__}.sample"
        check_int(name, "n", n)
        check_number(name, "truncation", truncation, 0.0, 1.0 + 1e-12)
        check_generator(name, generator, self._device)
        self._check_y("sample", y, n)
        z = self.latents(n, generator)
        seed = int(torch.randint(2 ** 62, (), generator=generator, device=self._device))
        devices = [self._device] if self._device.type == "cuda" else []
        training = self.training
        self.eval()
        try:
            with torch.random.fork_rng(devices=devices):  # the network's own noise, from ``generator`` too
                torch.manual_seed(seed)
                return self.to_bins(self.generator(z, y, truncation))
        finally:
            self.train(training)

    # --- training ----------------------------------------------------------------------------------

    def discriminate(self, images: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The discriminator's logits of images, translated first when the config's ``augment`` > 0
        (real and generated alike, in both steps)."""
        shift = getattr(self.config, "augment", 0)
        return self.discriminator(translate(images, shift) if shift else images, y)

    def optimizer_groups(self) -> list[dict]:
        """The discriminator's and the generator's parameters, each group with the config's betas."""
        betas = self.config.betas
        return [{"params": list(self.discriminator.parameters()), "betas": betas},
                {"params": list(self.generator.parameters()), "betas": betas}]

    def discriminator_terms(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
                            regularize: bool = False) -> dict[str, torch.Tensor]:
        """The discriminator's step on real bins x (N, C, H, W): ``loss`` (to minimise), ``d_loss`` (the
        non-saturating part) and, with ``regularize``, ``r1`` (|∇D|², before its weight), added to
        the loss as r1_interval · γ/2 · r1. The generated images are detached."""
        c = self.config
        with torch.no_grad():
            fake = self.generator(self.latents(x.shape[0]), y)
        real = self.dequantize(x).requires_grad_(regularize)
        real_logits = self.discriminate(real, y)
        d_loss = discriminator_loss(real_logits, self.discriminate(fake, y))
        terms = {"loss": d_loss, "d_loss": d_loss.detach()}
        if regularize and c.r1_gamma > 0:
            r1 = r1_penalty(real, real_logits)
            terms["loss"] = d_loss + r1 * (c.r1_interval * c.r1_gamma / 2)
            terms["r1"] = r1.detach()
        return terms

    def generator_terms(self, n: int, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The generator's step on n generated images: ``loss`` (the non-saturating generator loss)."""
        logits = self.discriminate(self.generator(self.latents(n), y), y)
        return {"loss": generator_loss(logits)}
