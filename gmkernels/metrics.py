"""Evaluation of generated images without downloads: the Fréchet distance of feature sets (FID's formula)
and the features of a small classifier trained on the data set itself, standing in for Inception's.

    extract = gmk.metrics.classifier_features(gmk.data.load("digits"), cache="runs/gan/classifier.pt")
    fid = gmk.metrics.frechet_distance(extract(test_images), extract(samples))

FID (Heusel et al. 2017) compares two sets of features through Gaussians fitted to them:
    d² = |μ_a − μ_b|² + tr(Σ_a) + tr(Σ_b) − 2 tr((Σ_a Σ_b)^½),
computed in float64. tr((Σ_a Σ_b)^½) is the sum of the square roots of the eigenvalues of
Σ_a^½ Σ_b Σ_a^½ (a symmetric positive semi-definite matrix with the eigenvalues of Σ_a Σ_b), from two
symmetric eigendecompositions: no complex square root, no imaginary parts to discard, exact for
singular covariances (fewer samples than features); eigenvalues that round below zero count as zero.

The classifier sees images as the GAN models do (bins v in [0, B) as 2(v + ½)/B − 1) and learns the
data's classes; a set without classes (a folder of images) teaches it the rotation of the image
(0°, 90°, 180°, 270°) instead. Its penultimate layer (``FEATURES`` units after a ReLU) gives the
features. It is trained with a fixed seed, so the same data always gives the same classifier, and
cached in ``cache`` (a run's folder keeps it next to the checkpoint).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

FEATURES = 64
FORMAT = "gmkernels.metrics.classifier/1"
TRAIN_STEPS = 600
BATCH = 64


def _check_features(name: str, features) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or not (features.is_floating_point()):
        raise TypeError(f"frechet_distance: {name} must be a floating-point tensor (N, F), got "
                        f"{features.dtype if isinstance(features, torch.Tensor) else type(features).__name__}")
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"frechet_distance: {name} must be (N, F) with N >= 2, got shape "
                         f"{tuple(features.shape)}")
    if not bool(features.isfinite().all()):
        raise ValueError(f"frechet_distance: {name} holds non-finite values")
    return features.detach().to("cpu", torch.float64)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The square root of a symmetric positive semi-definite matrix (negative rounding clipped to 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F): FID's
    formula (see the module's docstring), in float64, on the CPU. Symmetric; 0 for identical sets."""
    a, b = _check_features("features_a", features_a), _check_features("features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: features_a and features_b must have the same feature count, "
                         f"got {a.shape[1]} and {b.shape[1]}")
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(distance.item(), 0.0)


# --- the feature classifier ---------------------------------------------------------------------------

def images_to_unit_range(x: torch.Tensor, num_bins: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Bins v in [0, num_bins) as the centres of their intervals, 2(v + ½)/num_bins − 1 in (−1, 1)."""
    return (x.to(dtype) + 0.5) * (2 / num_bins) - 1


class FeatureClassifier(torch.nn.Module):
    """Three 3×3 convolutions (32, 64, 128 channels; the last two of stride 2 for images above 8×8),
    global average pooling, a FEATURES-unit ReLU layer (the features) and the class logits."""

    def __init__(self, in_channels: int, image_size: int, classes: int):
        super().__init__()
        stride = 2 if image_size > 8 else 1
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, 32, 3, padding=1), torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(32, 64, 3, stride=stride, padding=1), torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(64, 128, 3, stride=stride, padding=1), torch.nn.LeakyReLU(0.2),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            torch.nn.Linear(128, FEATURES), torch.nn.ReLU())
        self.head = torch.nn.Linear(FEATURES, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class FeatureExtractor:
    """The trained classifier's penultimate features of integer images: ``extract(x)`` -> (N, FEATURES)
    float64 for bins x (N, C, H, W) of the data set's shape. ``accuracy``: on the task it learned
    (``task``: "classes" or "rotation"), over the training images."""

    def __init__(self, classifier: FeatureClassifier, description: dict, task: str, accuracy: float):
        self.classifier, self.description, self.task, self.accuracy = classifier.eval(), description, task, accuracy

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        d = self.description
        shape = (d["in_channels"], d["image_size"], d["image_size"])
        if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.dtype == torch.bool:
            raise TypeError(f"classifier_features: images must be an integer tensor of bins, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"classifier_features: images must be (N, {', '.join(map(str, shape))}), got "
                             f"shape {tuple(x.shape)}")
        device = next(self.classifier.parameters()).device
        chunks = [self.classifier.body(images_to_unit_range(chunk.to(device), d["num_bins"]))
                  for chunk in x.split(batch_size)]
        return torch.cat(chunks).double().cpu()


def _task(dataset) -> tuple[str, int]:
    return ("classes", dataset.num_classes) if dataset.num_classes >= 2 else ("rotation", 4)


def _batch(dataset, task: str, indices: torch.Tensor, generator: torch.Generator):
    x = images_to_unit_range(dataset.x[indices], dataset.num_bins)
    if task == "classes":
        return x, dataset.y[indices]
    turns = torch.randint(0, 4, (len(indices),), generator=generator)
    rotated = torch.stack([torch.rot90(image, int(k), dims=(1, 2)) for image, k in zip(x, turns)])
    return rotated, turns


def _train_classifier(dataset, task: str, classes: int) -> tuple[FeatureClassifier, float]:
    """Adam, TRAIN_STEPS steps of BATCH images, with a fixed seed; the training accuracy after it."""
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # also when called under no_grad
        torch.manual_seed(0)
        classifier = FeatureClassifier(dataset.in_channels, dataset.image_size, classes)
        generator = torch.Generator().manual_seed(0)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
        for _ in range(TRAIN_STEPS):
            indices = torch.randint(0, len(dataset), (min(BATCH, len(dataset)),), generator=generator)
            x, labels = _batch(dataset, task, indices, generator)
            loss = F.cross_entropy(classifier(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        classifier.eval()
        with torch.no_grad():
            correct = 0
            for chunk in torch.arange(len(dataset)).split(512):
                x, labels = _batch(dataset, task, chunk, generator)
                correct += int((classifier(x).argmax(1) == labels).sum())
    return classifier, correct / len(dataset)


def _load_cached(path: Path, description: dict, task: str, classes: int) -> FeatureExtractor | None:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("data") != description \
            or saved.get("task") != task or saved.get("train_steps") != TRAIN_STEPS:
        return None
    classifier = FeatureClassifier(description["in_channels"], description["image_size"], classes)
    try:
        classifier.load_state_dict(saved["state"])
    except (RuntimeError, KeyError):
        return None
    return FeatureExtractor(classifier, description, task, saved["accuracy"])


def classifier_features(dataset, *, cache: str | Path | None = None) -> FeatureExtractor:
    """A feature extractor for images of ``dataset`` (an image set of gmk.data, the split to learn from):
    the penultimate features of a small classifier trained on it (see the module's docstring). With
    ``cache``, a file: the classifier saved there is used when it was trained on this data; otherwise
    it is trained (seconds on a CPU for the digits) and saved there. A cache of other data, another
    task or another TRAIN_STEPS is not used (and is overwritten)."""
    if getattr(dataset, "kind", None) != "image":
        raise TypeError(f"classifier_features: dataset must be an image set of gmk.data, got "
                        f"{type(dataset).__name__}")
    description, (task, classes) = dataset.describe(), _task(dataset)
    path = None if cache is None else Path(cache)
    if path is not None and path.is_file():
        cached = _load_cached(path, description, task, classes)
        if cached is not None:
            return cached
    classifier, accuracy = _train_classifier(dataset, task, classes)
    if path is not None:
        from .training.checkpoint import write_atomically

        state = {"format": FORMAT, "data": description, "task": task, "train_steps": TRAIN_STEPS,
                 "accuracy": accuracy, "state": classifier.state_dict()}
        write_atomically(path, lambda file: torch.save(state, file))
    return FeatureExtractor(classifier, description, task, accuracy)
