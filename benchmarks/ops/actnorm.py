"""Actnorm cases (Glow on CIFAR-10, float32): gmk.actnorm forward, forward+backward and reverse.

Shapes: x of Glow's CIFAR levels after each squeeze, (64, 12, 16, 16), (64, 24, 8, 8), (64, 48, 4, 4),
and a larger (64, 48, 32, 32). Peers: every gmk backend; the eager reference ((x + b)·exp(log_s) and
the log-determinant |S|·Σ log_s in torch ops); torch.compile of it.

Bytes (by hand): forward and reverse read x and write y; forward+backward also reads grad_y and x
again and writes grad_x (``harness.elementwise_bytes``). The (C,) parameters, their gradients and the
(N,) log-determinant are negligible. forward+backward gradients: x, bias and log_scale, for random
gradients of y and logdet.

Performance target (issue #5, on a GPU): ≥ 70 % of the measured copy bandwidth on (64, 48, 32, 32).
"""
from __future__ import annotations

import functools

import torch

import gmkernels as gmk
from gmkernels.reference.actnorm import actnorm as reference

from ..harness import DIRECTIONS, Case, direction_call, elementwise_bytes, gmk_peers, nbytes, reference_peers

SHAPES = {"cuda": ((64, 12, 16, 16), (64, 24, 8, 8), (64, 48, 4, 4), (64, 48, 32, 32)),
          "cpu": ((8, 12, 16, 16), (8, 48, 8, 8))}
ALL_DIRECTIONS = (*DIRECTIONS, "reverse")


def _reference(x, bias, log_scale, *, reverse=False):
    return reference(x, bias, log_scale, reverse)


def _case(device: str, shape: tuple[int, ...], direction: str) -> Case:
    channels = shape[1]
    x = torch.randn(shape, device=device)
    bias = 0.1 * torch.randn(channels, device=device)
    log_scale = 0.1 * torch.randn(channels, device=device)
    inputs = tuple(t.requires_grad_(direction == "forward+backward") for t in (x, bias, log_scale))
    grad_outputs = (torch.randn_like(x), torch.randn(shape[0], device=device))
    reverse = direction == "reverse"
    impls = gmk_peers(functools.partial(gmk.actnorm, reverse=reverse), device) | reference_peers(
        functools.partial(_reference, reverse=reverse))
    timed = "forward" if reverse else direction
    return Case(
        name=f"actnorm {'×'.join(map(str, shape))} float32 {direction}", family="actnorm",
        params={"op": "actnorm", "shape": list(shape), "dtype": "float32", "direction": direction},
        bytes=elementwise_bytes(timed, read=nbytes(x), written=x.nbytes),
        peers={name: direction_call(fn, inputs, timed, grad_outputs) for name, fn in impls.items()},
    )


def cases(device: str, quick: bool) -> list[Case]:
    """The issue's shapes on a GPU (a quick run: the largest); on CPU small batches (quick: one shape)."""
    shapes = SHAPES[device]
    if quick:
        shapes = shapes[-1:] if device == "cuda" else shapes[:1]
    directions = ("forward+backward",) if quick and device == "cpu" else ALL_DIRECTIONS
    return [_case(device, shape, direction) for shape in shapes for direction in directions]
