"""Data sets for the models, embedded or generated in code (nothing is downloaded).

    gmk.data.load("digits")            scikit-learn's 8x8 digits: 1 channel, 17 levels (0 … 16), 10 classes
    gmk.data.load("shapes")            coloured circles, squares, triangles: 16x16 RGB, 256 levels, 3 classes
    gmk.data.load("shapes32")          the same at 32x32
    gmk.data.load("tones")             sums of sine tones at 8 kHz, µ-law encoded to 256 classes (WaveNet)
    gmk.data.load("path/to/folder")    a folder of PNG/JPEG images (all of one size, square), 256 levels
    gmk.data.load("images.npy")        an integer array (N, H, W), (N, C, H, W) or (N, H, W, C), C = 1 or 3

Every set has a fixed train/test split (``split="train"`` or ``"test"``) and yields ``(x, y)``:
images x (C, H, W) uint8 bin indices and y the int64 class (0 when the set has no labels); audio
x (T,) int64 µ-law classes. The attributes ``kind`` ("image" or "audio"), ``in_channels``,
``num_bins``, ``image_size`` and ``num_classes`` describe it; audio sets add ``sample_rate``.
scikit-learn (digits) and Pillow (image folders) come with ``pip install gmkernels[data]``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .mu_law import mu_law_encode

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SEED = 0  # the generated sets and every split are functions of this seed


class TensorSet(torch.utils.data.Dataset):
    """(x, y) pairs held in two tensors, with the attributes the models are built from."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, kind: str, num_bins: int, num_classes: int,
                 name: str, sample_rate: int | None = None):
        self.x, self.y = x, y
        self.kind, self.num_bins, self.num_classes, self.name = kind, num_bins, num_classes, name
        self.in_channels = x.shape[1] if kind == "image" else 1
        self.image_size = x.shape[-1] if kind == "image" else None
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index):
        return self.x[index], self.y[index]

    def describe(self) -> dict:
        """What a model trained on this set needs to know of it (kept in checkpoints)."""
        return {"name": self.name, "kind": self.kind, "in_channels": self.in_channels,
                "num_bins": self.num_bins, "image_size": self.image_size, "num_classes": self.num_classes,
                "sample_rate": self.sample_rate}


def _split_indices(count: int, split: str, test_count: int) -> torch.Tensor:
    """A fixed random split: the last ``test_count`` of a seeded permutation are the test set."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(SEED))
    return order[count - test_count:] if split == "test" else order[:count - test_count]


def _held_out(count: int) -> int:
    """Test images of a user's set: a tenth, at least one (the only image is both train and test)."""
    return max(1, count // 10) if count > 1 else 0


def _user_split(x: torch.Tensor, split: str, name: str) -> TensorSet:
    if x.shape[0] == 1:
        indices = torch.zeros(1, dtype=torch.long)
    else:
        indices = _split_indices(x.shape[0], split, _held_out(x.shape[0]))
    num_bins = 256 if x.dtype == torch.uint8 else max(2, int(x.max()) + 1)
    images = x[indices].to(torch.uint8 if num_bins <= 256 else torch.long)
    return TensorSet(images, torch.zeros(len(indices), dtype=torch.long), kind="image", num_bins=num_bins,
                     num_classes=0, name=name)


# --- embedded and generated sets ------------------------------------------------------------------

def _require(module: str, package: str, what: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ValueError(f"{what} needs {package}: pip install 'gmkernels[data]'") from None


def _digits(split: str) -> TensorSet:
    datasets = _require("sklearn.datasets", "scikit-learn", "the digits set")
    digits = datasets.load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.uint8)[:, None]  # (1797, 1, 8, 8), values 0 … 16
    y = torch.as_tensor(digits.target, dtype=torch.long)
    indices = _split_indices(x.shape[0], split, test_count=297)
    return TensorSet(x[indices], y[indices], kind="image", num_bins=17, num_classes=10, name="digits")


def shapes(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` RGB images (count, 3, size, size) uint8 of one filled shape each on a dark background:
    class 0 a circle, 1 a square, 2 a triangle (apex up), of random centre, radius and colour."""
    y = torch.randint(0, 3, (count,), generator=generator)
    radius = size * (0.15 + 0.2 * torch.rand(count, generator=generator))
    centre = radius[:, None] + (size - 2 * radius[:, None]) * torch.rand(count, 2, generator=generator)
    colour = 96 + 160 * torch.rand(count, 3, generator=generator)
    background = 48 * torch.rand(count, 3, generator=generator)
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dy = grid[None, :, None] - centre[:, 1, None, None]  # (count, H, 1)
    dx = grid[None, None, :] - centre[:, 0, None, None]  # (count, 1, W)
    r = radius[:, None, None]
    circle = dx ** 2 + dy ** 2 <= r ** 2
    square = (dx.abs() <= r * 0.8) & (dy.abs() <= r * 0.8)
    triangle = (dy <= r * 0.8) & (2 * dx.abs() <= dy + r)  # apex at dy = -r, base at dy = 0.8 r
    inside = torch.where(y[:, None, None] == 0, circle, torch.where(y[:, None, None] == 1, square, triangle))
    pixels = torch.where(inside[:, None], colour[:, :, None, None], background[:, :, None, None])
    return pixels.round().to(torch.uint8), y


def _shapes(size: int, name: str):
    def load(split: str) -> TensorSet:
        generator = torch.Generator().manual_seed(SEED + size + (split == "test"))
        x, y = shapes(4096 if split == "train" else 512, size, generator)
        return TensorSet(x, y, kind="image", num_bins=256, num_classes=3, name=name)
    return load


def tones(count: int, length: int, sample_rate: int, generator: torch.Generator,
          num_classes: int = 256) -> torch.Tensor:
    """``count`` clips (count, length) of µ-law classes: each a sum of 1 to 3 sine tones of random
    frequency (100 Hz … sample_rate / 8) and phase, peak amplitude 0.8 in total."""
    tone_count = torch.randint(1, 4, (count, 1), generator=generator)
    frequency = 100 + (sample_rate / 8 - 100) * torch.rand(count, 3, generator=generator, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(count, 3, generator=generator, dtype=torch.float64)
    present = (torch.arange(3) < tone_count).double()
    t = torch.arange(length, dtype=torch.float64) / sample_rate
    waves = torch.sin(2 * math.pi * frequency[:, :, None] * t + phase[:, :, None]) * present[:, :, None]
    return mu_law_encode(0.8 * waves.sum(1) / tone_count, num_classes)


def _tones(split: str) -> TensorSet:
    sample_rate = 8000
    generator = torch.Generator().manual_seed(SEED + (split == "test"))
    x = tones(2048 if split == "train" else 256, 512, sample_rate, generator)
    return TensorSet(x, torch.zeros(x.shape[0], dtype=torch.long), kind="audio", num_bins=256, num_classes=0,
                     name="tones", sample_rate=sample_rate)


SETS = {"digits": _digits, "shapes": _shapes(16, "shapes"), "shapes32": _shapes(32, "shapes32"),
        "tones": _tones}


# --- a user's images ------------------------------------------------------------------------------

def _check_images(x: torch.Tensor, source: str) -> torch.Tensor:
    """(N, C, H, W) of (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3 and H = W."""
    if x.dim() == 3:
        x = x[:, None]
    elif x.dim() == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3] or x.shape[0] == 0:
        raise ValueError(f"{source}: expected square images (N, H, W), (N, C, H, W) or (N, H, W, C) with "
                         f"C = 1 or 3 and H = W, got shape {tuple(x.shape)}")
    if x.is_floating_point() or x.dtype == torch.bool or int(x.min()) < 0:
        raise ValueError(f"{source}: expected non-negative integer bin indices, got {x.dtype} "
                         f"with minimum {x.min().item()}")
    return x.contiguous()


def _array(path: Path) -> torch.Tensor:
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable .npy array ({error})") from None
    if array.dtype.kind not in "ui":
        raise ValueError(f"{path}: expected an integer array of bin indices, got dtype {array.dtype}")
    x = torch.from_numpy(array if array.dtype == np.uint8 else array.astype(np.int64))
    return _check_images(x, str(path))


def _folder(path: Path) -> torch.Tensor:
    import numpy as np

    image_module = _require("PIL.Image", "Pillow", "an image folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no PNG or JPEG images in this folder")
    images = []
    for file in files:
        try:
            with image_module.open(file) as image:
                images.append(image.convert("RGB"))
        except OSError as error:
            raise ValueError(f"{file}: not a readable image ({error})") from None
    sizes = {image.size for image in images}
    if len(sizes) != 1:
        raise ValueError(f"{path}: the images must all have one size, found {sorted(sizes)}")
    x = torch.from_numpy(np.stack([np.asarray(image) for image in images]))  # (N, H, W, 3)
    grey = bool((x == x[..., :1]).all())
    return _check_images(x[..., :1] if grey else x, str(path))


def load(name_or_path: str | Path, split: str = "train") -> TensorSet:
    """The ``split`` ("train" or "test") of a named set (``SETS``) or of a user's folder or ``.npy`` file."""
    if split not in SPLITS:
        raise ValueError(f"gmk.data.load: split must be one of {SPLITS}, got {split!r}")
    if str(name_or_path) in SETS:
        return SETS[str(name_or_path)](split)
    path = Path(name_or_path)
    if path.is_dir():
        return _user_split(_folder(path), split, str(path))
    if path.is_file() and path.suffix == ".npy":
        return _user_split(_array(path), split, str(path))
    raise ValueError(f"gmk.data.load: unknown data {str(name_or_path)!r}: expected one of {', '.join(SETS)}, "
                     "a folder of PNG/JPEG images or a .npy file")
