"""What the training loop needs to know of a kind of model, one small adapter per kind.

An adapter builds a model's config for a data set, computes the loss terms of a batch, samples, and
writes samples. The loop knows nothing else of the model: a new kind (flows, GANs, VAEs) is a new
adapter here, registered in ``KINDS`` under the ``kind`` attribute of its model classes.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..mu_law import mu_law_decode
from . import pictures
from .errors import TrainingError

SIZES = ("tiny", "default")


class ImageKind:
    """PixelCNN and its kin: config ``for_data``, ``forward(x, y)`` -> loss and bits/dim, ``sample``."""

    metric = "bits_per_dim"
    suffixes = (".png",)
    default_samples = 64

    def config(self, model_class, data: dict, size: str, conditional: bool):
        return model_class.config_class.for_data(data["in_channels"], data["num_bins"], data["image_size"],
                                                 data["num_classes"] if conditional else 0, size=size)

    def loss_terms(self, model, x: torch.Tensor, y: torch.Tensor, conditional: bool) -> dict:
        return model(x, y if conditional else None)

    def sample(self, model, count: int, data: dict, conditional: bool, generator: torch.Generator,
               length: int | None = None) -> torch.Tensor:
        device = next(model.parameters()).device
        labels = torch.arange(count, device=device) % data["num_classes"] if conditional else None
        return model.sample(count, y=labels, generator=generator)

    def save_samples(self, samples: torch.Tensor, data: dict, path: Path) -> None:
        pictures.save_image_grid(samples, data["num_bins"], path)

    def show_samples(self, samples: torch.Tensor, data: dict, directory: Path) -> None:
        pictures.save_image_grid(samples, data["num_bins"], directory / "samples.png")


class AudioKind:
    """WaveNet on µ-law classes: ``forward(x)`` -> loss and bits/sample, ``generate``. WaveNetConfig has
    no ``for_data``: the sizes are here (the model's own defaults are nv-wavenet's, for 16 kHz speech)."""

    metric = "bits_per_sample"
    suffixes = (".wav",)
    default_samples = 4
    SIZES = {"tiny": dict(layers=2, stacks=1, residual_channels=4, skip_channels=4, head_channels=8),
             "default": dict(layers=8, stacks=1, residual_channels=32, skip_channels=64, head_channels=64)}

    def config(self, model_class, data: dict, size: str, conditional: bool):
        if conditional:
            raise TrainingError(f"audio data {data['name']!r} has no classes to condition on")
        return model_class.config_class(num_classes=data["num_bins"], **self.SIZES[size])

    def loss_terms(self, model, x: torch.Tensor, y: torch.Tensor, conditional: bool) -> dict:
        return model(x, check_inputs=False)  # the loader's classes are valid; the check would sync on CUDA

    def sample(self, model, count: int, data: dict, conditional: bool, generator: torch.Generator,
               length: int | None = None) -> torch.Tensor:
        """Audio (count, length) in [-1, 1]; ``length`` defaults to a tenth of a second."""
        classes = model.generate(length or data["sample_rate"] // 10, batch_size=count, generator=generator)
        return mu_law_decode(classes, data["num_bins"])

    def save_samples(self, samples: torch.Tensor, data: dict, path: Path) -> None:
        pictures.save_wav(samples, data["sample_rate"], path)

    def show_samples(self, samples: torch.Tensor, data: dict, directory: Path) -> None:
        pictures.save_waveforms(samples, data["sample_rate"], directory / "samples.png")
        pictures.save_wav(samples, data["sample_rate"], directory / "samples.wav")


KINDS = {"image": ImageKind(), "audio": AudioKind()}


def model_class(name: str):
    from ..models import MODELS

    if name not in MODELS:
        raise TrainingError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    return MODELS[name]


def kind_of(model_class_) -> ImageKind | AudioKind:
    return KINDS[model_class_.kind]
