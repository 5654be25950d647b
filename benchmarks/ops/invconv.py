"""Invertible 1x1 convolution cases (Glow on CIFAR-10, float32): gmk.invertible_conv1x1 (dense W),
gmk.invertible_conv1x1_lu, and gmk.actnorm_conv1x1 (actnorm fused in front of the dense one), forward,
forward+backward and reverse.

Shapes: x of Glow's CIFAR levels after each squeeze, (64, 12, 16, 16), (64, 24, 8, 8), (64, 48, 4, 4),
and a larger (64, 48, 32, 32). Peers: every gmk backend; the eager reference as the reference
implementations run it (F.conv2d with a 1x1 kernel, log|det W| by slogdet in float64, the reverse's
W⁻¹ by torch.linalg.inv in float64; LU: W = P L U built first); torch.compile of it. The fused op also
has ``gmk:<backend> unfused``: gmk.actnorm then gmk.invertible_conv1x1 (two passes over the data).

Bytes (by hand, the work): forward and reverse read x and write y; forward+backward also reads grad_y
and x and writes grad_x (``harness.elementwise_bytes``); W, its gradient and the (N,) logdet are
negligible. (The Triton backward, up to 64 channels, moves exactly that; the CUDA and CPU backward
read grad_y once more for the GEMM grad_W = Σ grad_y xᵀ, and once more for the fused op's bias.)
FLOPs: 2·C² per position and pass; forward+backward makes three passes (y, grad_x, grad_W).

Performance targets (issue #5, on a GPU): ≥ 70 % of the measured copy bandwidth on (64, 48, 32, 32);
no host synchronisation (the eager reference's slogdet/inverse synchronise).
"""
from __future__ import annotations

import functools

import torch

import gmkernels as gmk
from gmkernels.reference import invconv as reference

from ..harness import DIRECTIONS, Case, direction_call, elementwise_bytes, gmk_peers, nbytes, reference_peers

SHAPES = {"cuda": ((64, 12, 16, 16), (64, 24, 8, 8), (64, 48, 4, 4), (64, 48, 32, 32)),
          "cpu": ((8, 12, 16, 16), (8, 48, 8, 8))}
ALL_DIRECTIONS = (*DIRECTIONS, "reverse")


def _rotation(channels: int, device: str) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))[0].float().to(device)


def _dense_parameters(channels: int, device: str):
    return (_rotation(channels, device),)


def _lu_parameters(channels: int, device: str):
    perm, lower, upper = torch.linalg.lu(_rotation(channels, "cpu"))
    diagonal = upper.diagonal()
    return tuple(t.to(device) for t in (lower, upper, diagonal.abs().log(), diagonal.sign(), perm))


def _fused_parameters(channels: int, device: str):
    bias = 0.1 * torch.randn(channels, device=device)
    log_scale = 0.1 * torch.randn(channels, device=device)
    return bias, log_scale, _rotation(channels, device)


def _unfused(x, bias, log_scale, weight, *, reverse=False, backend="auto"):
    """actnorm then the 1x1 convolution as two gmk ops (reverse: the inverse convolution, then actnorm)."""
    if reverse:
        h, logdet_conv = gmk.invertible_conv1x1(x, weight, reverse=True, backend=backend)
        y, logdet_norm = gmk.actnorm(h, bias, log_scale, reverse=True, backend=backend)
    else:
        h, logdet_norm = gmk.actnorm(x, bias, log_scale, backend=backend)
        y, logdet_conv = gmk.invertible_conv1x1(h, weight, backend=backend)
    return y, logdet_norm + logdet_conv


def _with_reverse(fn):
    def call(*args, reverse=False):
        return fn(*args, reverse)
    return call


# label: (gmk op, reference, parameters(C, device), which parameters are trainable)
OPS = {
    "invconv dense": (gmk.invertible_conv1x1, _with_reverse(reference.invertible_conv1x1), _dense_parameters,
                      (True,)),
    "invconv lu": (gmk.invertible_conv1x1_lu, _with_reverse(reference.invertible_conv1x1_lu), _lu_parameters,
                   (True, True, True, False, False)),
    "actnorm+invconv dense (fused)": (gmk.actnorm_conv1x1, _with_reverse(reference.actnorm_conv1x1),
                                      _fused_parameters, (True, True, True)),
}


def _case(device: str, label: str, shape: tuple[int, ...], direction: str) -> Case:
    op, ref, make, trainable = OPS[label]
    grad = direction == "forward+backward"
    x = torch.randn(shape, device=device).requires_grad_(grad)
    params = tuple(p.requires_grad_(grad and t)
                   for p, t in zip(make(shape[1], device), trainable, strict=True))
    inputs = (x, *params)
    grad_outputs = (torch.randn_like(x), torch.randn(shape[0], device=device))
    reverse = direction == "reverse"
    timed = "forward" if reverse else direction
    impls = gmk_peers(functools.partial(op, reverse=reverse), device)
    if op is gmk.actnorm_conv1x1:
        impls |= {f"{name} unfused": functools.partial(_unfused, reverse=reverse,
                                                       backend=name.removeprefix("gmk:"))
                  for name, fn in list(impls.items()) if isinstance(fn, functools.partial)}
    impls |= reference_peers(functools.partial(ref, reverse=reverse))
    # Only tensors that require grad can be differentiated: the LU's fixed P and signs are closed over.
    differentiable = tuple(t for t in inputs if t.requires_grad) if grad else inputs
    fixed = {i: t for i, t in enumerate(inputs) if grad and not t.requires_grad}

    def with_fixed(fn):
        def call(*args):
            it = iter(args)
            return fn(*(fixed[i] if i in fixed else next(it) for i in range(len(inputs))))
        return call

    positions = x.numel() // shape[1]
    passes = 3 if grad else 1
    return Case(
        name=f"{label} {'×'.join(map(str, shape))} float32 {direction}", family="invconv",
        params={"op": op.__name__, "shape": list(shape), "dtype": "float32", "direction": direction},
        bytes=elementwise_bytes(timed, read=nbytes(x), written=x.nbytes),
        flops=2 * positions * shape[1] ** 2 * passes,
        peers={name: direction_call(with_fixed(fn), differentiable, timed, grad_outputs)
               for name, fn in impls.items()},
    )


def cases(device: str, quick: bool) -> list[Case]:
    """The issue's shapes on a GPU (a quick run: the largest); on CPU small batches (quick: one shape,
    forward+backward)."""
    shapes = SHAPES[device]
    if quick:
        shapes = shapes[-1:] if device == "cuda" else shapes[:1]
    directions = ("forward+backward",) if quick and device == "cpu" else ALL_DIRECTIONS
    return [_case(device, label, shape, direction)
            for label in OPS for shape in shapes for direction in directions]
