"""``gmk sample DIR``: samples of a trained run's EMA weights, as a PNG grid (images) or a .wav (audio)."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..models._autoregressive import AutoregressiveImageModel
from ..models.vqvae import VQVAEPrior
from . import checkpoint, distributed, kinds
from .errors import TrainingError


METHODS = ("cached", "naive")
# the models that sample by a method: the PixelCNN models and the VQ-VAE prior (a Gated PixelCNN)
BY_METHOD = (AutoregressiveImageModel, VQVAEPrior)


def sample(directory: str | Path, *, n: int | None = None, out: str | Path | None = None, seed: int = 0,
           length: int | None = None, device: str = "auto", method: str | None = None,
           truncation: float | None = None) -> Path:
    """Draw ``n`` samples (default 64 images or 4 audio clips of ``length`` samples, default 0.1 s) from
    the checkpoint in ``directory`` with ``seed``; write them to ``out`` (default DIR/sample.png or
    DIR/sample.wav) and return its path. ``method``: a PixelCNN model's (or a VQ-VAE prior's) sampling
    method, "cached" (its default) or "naive" (the same images, slower). ``truncation``: a GAN's ψ in
    [0, 1] (default 1)."""
    directory = Path(directory)
    path = directory / checkpoint.FILE
    state = checkpoint.load(directory)
    model_class = kinds.model_class(state["model"])
    kind = kinds.kind_of(model_class)
    for name, value in (("--n", n), ("--length", length)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise TrainingError(f"{name} must be a positive integer, got {value!r}")
    if method is not None and method not in METHODS:
        raise TrainingError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if method is not None and not issubclass(model_class, BY_METHOD):
        raise TrainingError(f"--method chooses how a PixelCNN model (pixelcnn, gated_pixelcnn, pixelcnnpp, "
                            f"the vqvae_prior's Gated PixelCNN) samples; {state['model']} has one way to "
                            f"sample")
    if truncation is not None and (model_class.kind != "gan" or isinstance(truncation, bool)
                                   or not isinstance(truncation, (int, float)) or not 0 <= truncation <= 1):
        raise TrainingError(f"--truncation must be a number in [0, 1], for a GAN (dcgan, stylegan2); got "
                            f"{truncation!r} for {state['model']}")
    out = Path(out) if out is not None else directory / f"sample{kind.suffixes[0]}"
    if out.suffix.lower() not in kind.suffixes:
        raise TrainingError(f"--out {out}: a {state['model']} sample is written as "
                            f"{' or '.join(kind.suffixes)}")
    if not out.parent.is_dir():
        raise TrainingError(f"--out {out}: no folder {out.parent}")
    context = distributed.start(device)
    model = model_class(checkpoint.rebuild_config(state, model_class, path)).to(context.device)
    checkpoint.load_weights(model, state["ema_state"], path, "EMA weights")
    model.eval()
    if method is not None:  # the adapter calls model.sample(count, y=..., generator=...)
        model.sample = functools.partial(model.sample, method=method)
    if truncation is not None:
        model.sample = functools.partial(model.sample, truncation=truncation)
    generator = torch.Generator(context.device).manual_seed(seed)
    conditional = state["options"]["conditional"]
    with torch.no_grad():
        samples = kind.sample(model, n or kind.default_samples, state["data"], conditional, generator, length)
    try:
        kind.save_samples(samples, state["data"], out)
    except OSError as error:
        raise TrainingError(f"--out {out}: cannot write there ({error.strerror or error})") from None
    return out
