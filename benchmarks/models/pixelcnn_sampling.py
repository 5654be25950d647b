"""Fast PixelCNN generation (issue 17): images per second of ``model.sample`` with ``method="naive"`` (the
whole network evaluated per sub-pixel, per pixel for PixelCNN++) and ``method="cached"`` (Ramachandran et
al. 2017: each convolution's input rows cached, the network evaluated where a step changes it), for
PixelCNN, Gated PixelCNN and PixelCNN++; on CUDA cached sampling both eagerly (``graph=False``) and
through CUDA graphs (``graph=True``: each per-pixel step and row update captured once per kind, replayed).

Two ways to run it:

- ``gmk bench --ops pixelcnn_sampling``: harness cases, peers ``gmk:cached`` (eager), on CUDA
  ``gmk:cached+graph``, and ``naive`` (the baseline of the speedup column). The harness calls each peer
  11 times before timing it, so the images are small:
  CUDA, each model's CIFAR-10 config on 8×8 images at batch 1, 16 and 64 (with graphs, rows 0–1 run
  eagerly and rows 2–4 capture for PixelCNN++: the full-size run below shows graphs better); CPU, the
  digits config (8×8, one channel, 17 levels) at batch 1 and 16; ``--quick``, the "tiny" config on 4×4
  images.
- ``python -m benchmarks.models.pixelcnn_sampling`` (from the repository root): one run per method and
  batch (1, 16, 64 by default) on full-size images after a warm-up call on a 2×2 image: images/s of each
  method (on CUDA cached with and without graphs), the speedups over naive, whether all drew the same
  images, the threads and the machine's load average. A call with graphs captures its own (2 eager rows,
  then the capture of each kind of row): its time includes them. .ci/gpu runs it at batch 16 (the issue's
  target: PixelCNN++ CIFAR-10, cached >= 100× naive).
  ``--config`` picks the models: ``cifar`` (each config class's defaults, 3×32×32, 256 levels; the
  default on CUDA), ``rgb16`` (the small config of 3×16×16 images, 256 levels) or ``digits`` (8×8, one
  channel, 17 levels; the default on CPU).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch

from gmkernels.models import MODELS

from ..harness import Case

IMAGE_MODELS = ("pixelcnn", "gated_pixelcnn", "pixelcnnpp")
# peer or method name: (method, graph) of model.sample; graphs are CUDA's only
METHODS = {"cached": ("cached", False), "graph": ("cached", True), "naive": ("naive", False)}
PEERS = {"gmk:cached": "cached", "gmk:cached+graph": "graph", "naive": "naive"}
CONFIGS = {"cifar": (3, 256, 32), "rgb16": (3, 256, 16), "digits": (1, 17, 8)}  # channels, levels, H = W


def model_for(name: str, config: str, device: str, size: str = "default") -> torch.nn.Module:
    """The model ``name`` for images of ``config`` (random weights), in eval mode on ``device``."""
    config_class = MODELS[name].config_class
    if config == "cifar" and size == "default":
        model_config = config_class()
    else:
        model_config = config_class.for_data(*CONFIGS[config], size=size)
    return MODELS[name](model_config).to(device).eval()


def methods_on(device: str) -> tuple[str, ...]:
    """The METHODS timed on ``device``, the baseline (naive) last."""
    return ("cached", "graph", "naive") if device == "cuda" else ("cached", "naive")


def draw(model: torch.nn.Module, n: int, image_size: int, method: str, seed: int = 0) -> torch.Tensor:
    """Images from ``model.sample`` by one of METHODS."""
    generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    sample_method, graph = METHODS[method]
    return model.sample(n, image_size=image_size, generator=generator, method=sample_method, graph=graph)


# --- harness cases ----------------------------------------------------------------------------------------

def _workload(device: str, quick: bool) -> tuple[str, str, int, tuple[int, ...]]:
    """(config, size, image H = W, batches) of the harness cases (see the module's docstring)."""
    if quick:
        return "digits", "tiny", 4, (1, 2)
    if device == "cuda":
        return "cifar", "default", 8, (1, 16, 64)
    return "digits", "default", 8, (1, 16)


def cases(device: str, quick: bool) -> list[Case]:
    config, size, image_size, batches = _workload(device, quick)
    result = []
    for name in IMAGE_MODELS:
        model = model_for(name, config, device, size)
        for n in batches:
            peers = {peer: functools.partial(draw, model, n, image_size, method)
                     for peer, method in PEERS.items() if method in methods_on(device)}
            c = model.config
            result.append(Case(
                name=f"{name} sample {n}×{c.in_channels}×{image_size}×{image_size} cached vs naive",
                family="pixelcnn_sampling",
                params={"model": name, "kind": "sample", "config": {**vars(c)}, "batch": n,
                        "image_size": image_size, "dtype": str(next(model.parameters()).dtype)},
                bytes=n * c.in_channels * image_size ** 2 * 8,  # the images written (int64)
                peers=peers,
                baseline="naive",
                compiled_baseline=(),
                samples=n,  # µs per "sample" = µs per image; samples/s = images/s
                repeats=3,
            ))
    return result


# --- one run per method (python -m benchmarks.models.pixelcnn_sampling) ----------------------------------

def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_method(model: torch.nn.Module, n: int, image_size: int, method: str,
                device: str) -> tuple[float, torch.Tensor]:
    """Seconds of one ``sample`` call, after a warm-up call on a 2×2 image; and the images drawn."""
    draw(model, n, 2, method)
    _synchronize(device)
    start = time.perf_counter()
    images = draw(model, n, image_size, method)
    _synchronize(device)
    return time.perf_counter() - start, images


def measure(config: str, device: str, batches: tuple[int, ...], models: tuple[str, ...],
            image_size: int | None = None) -> list[dict]:
    rows = []
    for name in models:
        model = model_for(name, config, device)
        size = image_size or model.config.image_size
        for n in batches:
            load_before = os.getloadavg()[0]
            seconds, images = {}, {}
            for method in methods_on(device):
                seconds[method], images[method] = time_method(model, n, size, method, device)
            row = {"model": name, "config": config, "batch": n, "image_size": size,
                   "in_channels": model.config.in_channels, "num_bins": model.config.num_bins}
            for method in seconds:
                row[f"{method}_s"] = seconds[method]
                row[f"{method}_images_per_s"] = n / seconds[method]
            row["speedup"] = seconds["naive"] / seconds["cached"]
            if "graph" in seconds:
                row["graph_speedup"] = seconds["naive"] / seconds["graph"]
            row["same_images"] = all(torch.equal(images["naive"], other) for other in images.values())
            rows.append({**row, "load_before": load_before, "load_after": os.getloadavg()[0]})
            print(_row_line(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _row_line(row: dict) -> str:
    graph = (f"cached with graphs {row['graph_images_per_s']:.3g} images/s ({row['graph_speedup']:.1f}×), "
             if "graph_s" in row else "")
    return (f"{row['model']} batch {row['batch']}: cached {row['cached_images_per_s']:.3g} images/s, "
            f"{graph}naive {row['naive_images_per_s']:.3g} images/s, {row['speedup']:.1f}×, same images: "
            f"{row['same_images']}, load {row['load_before']:.2f} -> {row['load_after']:.2f}")


def markdown(rows: list[dict], environment: dict) -> str:
    graphs = any("graph_s" in row for row in rows)
    graph_columns = " cached + graphs images/s | speedup (graphs) |" if graphs else ""
    lines = [f"PixelCNN sampling, cached vs naive: {environment['device_name']}, {environment['threads']} "
             f"threads, torch {environment['torch']}, commit {environment['commit']}", "",
             "| model | images | batch | naive images/s | cached images/s | speedup |"
             f"{graph_columns} same images | load (1 min) |",
             "|---|---|---|---|---|---|" + "---|---|" * graphs + "---|---|"]
    for row in rows:
        shape = f"{row['in_channels']}×{row['image_size']}×{row['image_size']}, {row['num_bins']} levels"
        graph = (f" {row['graph_images_per_s']:.3g} | {row['graph_speedup']:.1f}× |" if "graph_s" in row
                 else " – | – |" * graphs)
        lines.append(f"| {row['model']} | {shape} | {row['batch']} | {row['naive_images_per_s']:.3g} | "
                     f"{row['cached_images_per_s']:.3g} | {row['speedup']:.1f}× |{graph} "
                     f"{row['same_images']} | {row['load_before']:.2f}–{row['load_after']:.2f} |")
    return "\n".join(lines)


def _environment(device: str) -> dict:
    from ..harness import _device_name, _git

    commit = os.environ.get("GMK_GIT_COMMIT") or _git("rev-parse", "--short", "HEAD")
    return {"device": device, "device_name": _device_name(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "commit": commit, "cpu_count": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models.pixelcnn_sampling",
                                     description="Images/s of PixelCNN sampling, cached against naive.")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", choices=tuple(CONFIGS), default=None,
                        help="the models' data (default: cifar on CUDA, digits on CPU)")
    parser.add_argument("--batches", type=lambda text: tuple(int(b) for b in text.split(",")),
                        default=(1, 16, 64))
    parser.add_argument("--models", type=lambda text: tuple(text.split(",")), default=IMAGE_MODELS)
    parser.add_argument("--image-size", type=int, default=None, help="H = W (default: the config's)")
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the record")
    args = parser.parse_args(argv)
    if set(args.models) - set(IMAGE_MODELS):
        parser.error(f"--models: each one of {IMAGE_MODELS}, got {args.models}")
    if any(b < 1 for b in args.batches) or (args.image_size is not None and args.image_size < 1):
        parser.error("--batches and --image-size must be positive")
    config = args.config or ("cifar" if args.device == "cuda" else "digits")
    environment = _environment(args.device)
    rows = measure(config, args.device, args.batches, args.models, args.image_size)
    print(markdown(rows, environment))
    if args.out is not None:
        args.out.write_text(json.dumps({"environment": environment, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
