"""What the training loop needs to know of a kind of model, one small adapter per kind.

An adapter builds a model's config for a data set, computes the loss terms of a batch, samples, and
writes samples. The loop knows nothing else of the model: a new kind (flows, GANs, VAEs) is a new
adapter here, registered in ``KINDS`` under the ``kind`` attribute of its model classes.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..mu_law import mu_law_decode
from . import checkpoint, pictures
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


class VQVAEKind(ImageKind):
    """The VQ-VAE: ``forward(x)`` -> loss, reconstruction (the metric: mean squared error of the bins on the
    [0, 1] scale), commitment and perplexity, all logged. Its "samples" are reconstructions: the first test
    images, each followed by decode(encode(image)). Unconditional, float32 (its EMA codebook updates
    in place, which the bfloat16 copies of --dtype bfloat16 would drop)."""

    metric = "reconstruction"
    data_kind = "image"
    LOGGED = ("loss", "reconstruction", "commitment", "perplexity")

    def config(self, model_class, data: dict, size: str, conditional: bool):
        if conditional:
            raise TrainingError("vqvae is unconditional; --conditional is for its prior "
                                "(gmk train vqvae-prior --vqvae DIR --conditional)")
        return super().config(model_class, data, size, False)

    def optimizer(self, run) -> torch.optim.Optimizer:
        if run.options.dtype != "float32":
            raise TrainingError(f"{run.name} trains in float32 only, not --dtype {run.options.dtype}")
        return torch.optim.AdamW(run.model.parameters(), lr=run.options.lr,
                                 weight_decay=run.options.weight_decay)

    def train_step(self, run, x: torch.Tensor, y: torch.Tensor) -> dict:
        terms = run.loss_terms(run.parallel, x, y)
        run.optimise(terms["loss"], run.model.parameters())
        return {name: terms[name].detach() for name in self.LOGGED}

    def loss_terms(self, model, x: torch.Tensor, y: torch.Tensor, conditional: bool) -> dict:
        return model(x)

    def sample(self, model, count: int, data: dict, conditional: bool, generator: torch.Generator,
               length: int | None = None) -> torch.Tensor:
        """The first ceil(count / 2) test images interleaved with their reconstructions (count images)."""
        from .. import data as datasets

        try:
            test = datasets.load(data["name"], "test").x
        except ValueError as error:
            raise TrainingError(f"the VQ-VAE shows reconstructions of its test images: {error}") from None
        originals = test[:(count + 1) // 2].to(next(model.parameters()).device).long()
        pairs = torch.stack([originals, model.reconstruct(originals)], dim=1).flatten(0, 1)
        return pairs[:count]


class VQVAEPriorKind(ImageKind):
    """The Gated PixelCNN over a VQ-VAE's code maps (gmk.models.VQVAEPrior): ``--vqvae DIR`` names the
    VQ-VAE's run, whose config and EMA weights go into the prior's model (and its checkpoints); the metric
    is bits per code; samples are decoded code maps."""

    data_kind = "image"

    def run_config(self, model_class, data: dict, options):
        from ..models.vqvae import VQVAEConfig

        state = self._vqvae_state(options.vqvae, data)
        classes = data["num_classes"] if options.conditional else 0
        return model_class.config_class.for_vqvae(VQVAEConfig(**state["config"]), classes, size=options.size)

    def initialize(self, run) -> None:
        """The VQ-VAE's EMA weights into the new run's model (and so into its EMA)."""
        from .loop import EMA

        folder = Path(run.options.vqvae)
        state = self._vqvae_state(run.options.vqvae, run.train_set.describe())
        checkpoint.load_weights(run.model.vqvae, state["ema_state"], folder / checkpoint.FILE,
                                "VQ-VAE EMA weights")
        run.ema = EMA(run.model, run.options.ema_decay)

    @staticmethod
    def _vqvae_state(folder, data: dict) -> dict:
        if folder is None:
            raise TrainingError("vqvae-prior needs --vqvae DIR, the folder of a `gmk train vqvae` run")
        state = checkpoint.load(Path(folder))
        if state["model"] != "vqvae":
            raise TrainingError(f"--vqvae {folder}: holds a {state['model']} run, not a vqvae one")
        if state["data"] != data:
            raise TrainingError(f"--vqvae {folder}: the VQ-VAE was trained on {state['data']['name']}, not "
                                f"{data['name']}: pass --data {state['data']['name']}")
        return state


KINDS = {"image": ImageKind(), "audio": AudioKind(), "gan": GANKind(), "vqvae": VQVAEKind(),
         "vqvae_prior": VQVAEPriorKind()}


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
