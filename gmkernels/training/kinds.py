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


class GANKind(ImageKind):
    """DCGAN, StyleGAN2: two optimiser steps per training step, the discriminator's then the
    generator's (one AdamW over both parameter groups: a step moves only the parameters that have a
    gradient), R1 every ``r1_interval`` steps, the EMA over the whole model (its generator samples).
    The test metric is FID on a classifier's features (gmk.metrics): ``len(test split)`` samples of the
    EMA generator (with the test split's labels when conditional, the same latents at every
    evaluation) against the test images; also at step 0 (the untrained generator's)."""

    metric = "fid"
    data_kind = "image"
    evaluates_at_start = True
    CLASSIFIER = "classifier.pt"

    def optimizer(self, run) -> torch.optim.Optimizer:
        if run.context.world_size > 1:
            raise TrainingError(f"{run.name} trains in one process (its two optimiser steps are not "
                                "wrapped in DistributedDataParallel)")
        if run.options.dtype != "float32":
            raise TrainingError(f"{run.name} trains in float32 only, not --dtype {run.options.dtype}")
        return torch.optim.AdamW(run.model.optimizer_groups(), lr=run.options.lr,
                                 weight_decay=run.options.weight_decay)

    def train_step(self, run, x: torch.Tensor, y: torch.Tensor) -> dict:
        """The discriminator's step (with R1 when the step is a multiple of r1_interval), then the
        generator's on as many generated images; returns the detached ``loss`` (the generator's),
        ``d_loss`` and, on R1 steps, ``r1``."""
        from ..models._gan import frozen

        model, labels = run.model, y if run.options.conditional else None
        regularize = run.step % model.config.r1_interval == 0
        d_terms = model.discriminator_terms(x, labels, regularize=regularize)
        run.optimise(d_terms["loss"], model.discriminator.parameters())
        with frozen(model.discriminator):
            g_terms = model.generator_terms(x.shape[0], labels)
            run.optimise(g_terms["loss"], model.generator.parameters())
        return {"loss": g_terms["loss"].detach(), "d_loss": d_terms["d_loss"]}

    def evaluate(self, run) -> float:
        from ..metrics import classifier_features, frechet_distance
        from .loop import derived_seed

        if getattr(run, "fid_reference", None) is None:
            extract = classifier_features(run.train_set, cache=run.out / self.CLASSIFIER)
            run.fid_reference = extract, extract(run.test_set.x)
        extract, reference = run.fid_reference
        generator = torch.Generator(run.context.device).manual_seed(derived_seed("fid", run.options.seed))
        labels = run.test_y if run.options.conditional else None
        with run.ema.weights_in(run.model):
            samples = run.model.sample(len(run.test_set), y=labels, generator=generator)
        return frechet_distance(reference, extract(samples))

    def save_loss_plot(self, records: list[dict], path: Path) -> None:
        pictures.save_gan_plot(records, path)


KINDS = {"image": ImageKind(), "audio": AudioKind(), "gan": GANKind()}


def model_class(name: str):
    from ..models import MODELS

    if name not in MODELS:
        raise TrainingError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    return MODELS[name]


def kind_of(model_class_) -> ImageKind | AudioKind:
    return KINDS[model_class_.kind]


def data_kind(model_class_) -> str:
    """The kind of data ("image", "audio") the model trains on: its adapter's ``data_kind``, else its kind."""
    return getattr(kind_of(model_class_), "data_kind", model_class_.kind)
