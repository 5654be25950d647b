"""Gated activation cases: tanh(a)·σ(b) (Gated PixelCNN, WaveNet) and a·σ(b) (PixelCNN++).

Performance target (DESIGN): forward+backward on (32, 512, 64, 64), float32 and bfloat16, at
≥ 85 % of the measured copy bandwidth, ≥ 2× the eager reference, ≥ 1.0× torch.compile of it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

import gmkernels as gmk
from gmkernels.reference.gated import gated_activation as reference

from ..harness import DIRECTIONS, Case, direction_call, elementwise_bytes, gmk_peers, nbytes, reference_peers


@dataclass(frozen=True)
class Workload:
    """Where the op sits in a model: the shape of x (2C channels along ``dim``) on each device."""

    label: str
    cuda_shape: tuple[int, ...]
    cpu_shape: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...]
    directions: tuple[str, ...]
    activation: str = "tanh"
    dim: int = 1
    global_cond: bool = False  # one conditioning vector per sample, broadcast over time/space
    quick: bool = False


WORKLOADS = (
    Workload("gated-pixelcnn", (32, 512, 64, 64), (8, 64, 32, 32), (torch.float32, torch.bfloat16),
             DIRECTIONS, quick=True),
    Workload("wavenet", (16, 256, 16000), (4, 64, 4000), (torch.bfloat16,), ("forward+backward",),
             global_cond=True),
    # PixelCNN++ on CIFAR-10: 160 filters, so 2C = 320 channels at 32x32.
    Workload("pixelcnn++", (64, 320, 32, 32), (8, 64, 16, 16), (torch.bfloat16,), ("forward+backward",),
             activation="identity"),
)


def _dtypes(workload: Workload, device: str, quick: bool) -> tuple[torch.dtype, ...]:
    # bfloat16 on a small CPU is slow and compiles again: the quick CPU run keeps float32 only.
    return (torch.float32,) if quick and device == "cpu" else workload.dtypes


def _case(workload: Workload, device: str, dtype: torch.dtype, direction: str) -> Case:
    shape = workload.cuda_shape if device == "cuda" else workload.cpu_shape
    cond_shape = shape[: workload.dim + 1] + (1,) * (len(shape) - workload.dim - 1)
    x = torch.randn(shape, device=device, dtype=dtype)
    cond = torch.randn(cond_shape, device=device, dtype=dtype) if workload.global_cond else None
    inputs = tuple(t.requires_grad_(direction != "forward") for t in (x, cond) if t is not None)
    y_shape = list(shape)
    y_shape[workload.dim] //= 2
    grad_y = torch.randn(y_shape, device=device, dtype=dtype) if direction != "forward" else None

    options = {"activation": workload.activation, "dim": workload.dim}
    impls = gmk_peers(gmk.gated_activation, device, **options) | reference_peers(
        functools.partial(reference, **options))
    dtype_name = str(dtype).removeprefix("torch.")
    return Case(
        name=f"{workload.label} {'×'.join(map(str, shape))} {dtype_name} {direction}",
        family="gated",
        params={"shape": list(shape), "cond_shape": list(cond_shape) if workload.global_cond else None,
                "dtype": dtype_name, "direction": direction, **options},
        bytes=elementwise_bytes(direction, read=nbytes(x, cond), written=x.nbytes // 2),
        peers={name: direction_call(fn, inputs, direction, grad_y) for name, fn in impls.items()},
    )


def cases(device: str, quick: bool) -> list[Case]:
    workloads = [w for w in WORKLOADS if w.quick] if quick else WORKLOADS
    return [_case(w, device, dtype, direction)
            for w in workloads for dtype in _dtypes(w, device, quick) for direction in w.directions]
