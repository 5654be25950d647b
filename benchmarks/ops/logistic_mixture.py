"""Discretized logistic mixture NLL cases: PixelCNN++'s loss on CIFAR-10 and WaveNet's MoL on 16-bit audio.

Each peer computes the summed NLL of params (the forward) and its gradient in params (forward+backward);
x is data and gets no gradient. Bytes: params and x read once, plus the gradient written once.
Performance target (issue #3): forward+backward on the CIFAR shape at ≥ 10× the eager reference,
≥ 2× torch.compile of it, ≥ 60 % of the measured copy bandwidth; peak memory ≤ 1.25× (params +
gradient).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

import gmkernels as gmk
from gmkernels.reference.logistic_mixture import discretized_logistic_mixture_nll as reference_nll
from gmkernels.reference.logistic_mixture import params_per_component

from ..harness import DIRECTIONS, Case, direction_call, gmk_peers, nbytes, reference_peers


@dataclass(frozen=True)
class Workload:
    """Where the loss sits in a model: the shape of x (N, C, *S) on each device, and the mixture."""

    label: str
    cuda_shape: tuple[int, ...]
    cpu_shape: tuple[int, ...]
    num_mixtures: int
    num_bins: int
    log_scale_min: float
    quick: bool = False


WORKLOADS = (
    # PixelCNN++ on CIFAR-10: 10 components, params (64, 100, 32, 32).
    Workload("pixelcnn++-cifar", (64, 3, 32, 32), (8, 3, 32, 32), 10, 256, -7.0, quick=True),
    # WaveNet with a mixture of logistics on 16-bit audio: params (16, 30, 16000).
    Workload("wavenet-mol", (16, 1, 16000), (2, 1, 4000), 10, 65536, -16.0),
)
DTYPES = (torch.float32, torch.bfloat16)


def _reference_loss(params, x, num_bins, log_scale_min):
    return reference_nll(params, x, num_bins, log_scale_min).sum()


def _dtypes(device: str, quick: bool) -> tuple[torch.dtype, ...]:
    # bfloat16 on a small CPU is slow and compiles again: the quick CPU run keeps float32 only.
    return (torch.float32,) if quick and device == "cpu" else DTYPES


def _case(workload: Workload, device: str, dtype: torch.dtype, direction: str) -> Case:
    x_shape = workload.cuda_shape if device == "cuda" else workload.cpu_shape
    n, num_channels, *spatial = x_shape
    params_shape = (n, workload.num_mixtures * params_per_component(num_channels), *spatial)
    params = torch.randn(params_shape, device=device, dtype=dtype).requires_grad_(direction != "forward")
    bins = torch.randint(workload.num_bins, x_shape, device=device)
    x = 2 * bins.float() / (workload.num_bins - 1) - 1

    options = {"num_bins": workload.num_bins, "log_scale_min": workload.log_scale_min}
    loss = functools.partial(gmk.discretized_logistic_mixture_nll, x=x, reduction="sum", check_inputs=False,
                             **options)
    impls = gmk_peers(loss, device) | reference_peers(functools.partial(_reference_loss, x=x, **options))
    dtype_name = str(dtype).removeprefix("torch.")
    gradient = params.nbytes if direction != "forward" else 0
    return Case(
        name=f"{workload.label} {'×'.join(map(str, params_shape))} {dtype_name} {direction}",
        family="logistic_mixture",
        params={"params_shape": list(params_shape), "x_shape": list(x_shape), "dtype": dtype_name,
                "direction": direction, "num_mixtures": workload.num_mixtures, **options},
        bytes=nbytes(params, x) + gradient,
        peers={name: direction_call(fn, (params,), direction) for name, fn in impls.items()},
    )


def cases(device: str, quick: bool) -> list[Case]:
    workloads = [w for w in WORKLOADS if w.quick] if quick else WORKLOADS
    return [_case(w, device, dtype, direction)
            for w in workloads for dtype in _dtypes(device, quick) for direction in DIRECTIONS]
