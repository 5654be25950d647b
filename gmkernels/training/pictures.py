"""What a run shows: the loss curves (loss.png), a grid of image samples, audio waveforms and .wav files.

matplotlib's object API (no pyplot, no display needed); image grids through Pillow.
"""
from __future__ import annotations

import math
import wave
from pathlib import Path

import torch


def _figure(rows: int = 1, height: float = 4.0):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, height * rows), layout="constrained")
    return figure, figure.subplots(rows, 1, squeeze=False)[:, 0]


def save_loss_plot(records: list[dict], metric: str, path: Path) -> None:
    """Train and test ``metric`` (bits per dimension or per sample) against the step."""
    figure, (axes,) = _figure()
    for key, label, style in ((metric, "train", "-"), (f"test_{metric}", "test (EMA weights)", "o-")):
        points = [(record["step"], record[key]) for record in records if key in record]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, style, label=label, markersize=3)
    axes.set_xlabel("step")
    axes.set_ylabel(metric.replace("_", " "))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=100)


def save_gan_plot(records: list[dict], path: Path) -> None:
    """A GAN's curves: the generator's and the discriminator's losses (top) and the test FID (bottom,
    logarithmic) against the step."""
    figure, (losses, fid) = _figure(rows=2, height=3.0)
    for axes, key, label, style in ((losses, "loss", "generator loss", "-"),
                                    (losses, "d_loss", "discriminator loss", "-"),
                                    (fid, "test_fid", "test FID (EMA generator, classifier features)", "o-")):
        points = [(record["step"], record[key]) for record in records if key in record]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, style, label=label, markersize=3)
    fid.set_yscale("log")
    for axes in (losses, fid):
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.savefig(path, dpi=100)


def image_grid(images: torch.Tensor, num_bins: int, cell: int = 64) -> torch.Tensor:
    """(n, C, H, W) bin indices -> one (rows·(H'+1)+1, cols·(W'+1)+1, C) uint8 picture, each image
    scaled up by an integer factor to about ``cell`` pixels and framed by grey lines."""
    n, channels, height, width = images.shape
    scale = max(1, cell // max(height, width))
    pixels = (images.double() * (255 / (num_bins - 1))).round().to(torch.uint8)
    pixels = pixels.repeat_interleave(scale, 2).repeat_interleave(scale, 3).permute(0, 2, 3, 1)
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    h, w = height * scale + 1, width * scale + 1
    grid = torch.full((rows * h + 1, columns * w + 1, channels), 128, dtype=torch.uint8)
    for index in range(n):
        top, left = 1 + (index // columns) * h, 1 + (index % columns) * w
        grid[top:top + h - 1, left:left + w - 1] = pixels[index]
    return grid


def save_image_grid(images: torch.Tensor, num_bins: int, path: Path) -> None:
    from PIL import Image

    grid = image_grid(images.cpu(), num_bins)
    Image.fromarray(grid.squeeze(2).numpy()).save(path)


def save_waveforms(audio: torch.Tensor, sample_rate: int, path: Path) -> None:
    """One panel per clip of ``audio`` (n, T) in [-1, 1]."""
    figure, axes = _figure(rows=audio.shape[0], height=1.5)
    time = torch.arange(audio.shape[1]) / sample_rate
    for panel, clip in zip(axes, audio.cpu()):
        panel.plot(time.numpy(), clip.float().numpy(), linewidth=0.6)
        panel.set_ylim(-1.05, 1.05)
    axes[-1].set_xlabel("seconds")
    figure.savefig(path, dpi=100)


def save_wav(audio: torch.Tensor, sample_rate: int, path: Path, gap_seconds: float = 0.25) -> None:
    """The clips of ``audio`` (n, T) in [-1, 1] one after another, ``gap_seconds`` of silence
    between them, as 16-bit mono PCM."""
    gap = torch.zeros(audio.shape[0], int(gap_seconds * sample_rate))
    clips = torch.cat([audio.cpu().float(), gap], dim=1).flatten()[:-gap.shape[1] or None]
    pcm = (clips.clamp(-1, 1) * 32767).round().to(torch.int16)
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(pcm.numpy().tobytes())
