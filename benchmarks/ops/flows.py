"""Flow cases (Glow on CIFAR-10, float32): the coupling op, and a whole flow step without its coupling
network (actnorm → invertible 1x1 convolution → coupling epilogue, h given).

Shapes: x of Glow's CIFAR levels after each squeeze, (64, 12, 16, 16), (64, 24, 8, 8), (64, 48, 4, 4),
and a larger (64, 48, 32, 32). Directions: forward, forward+backward (gradients of x, h and, for the
step, the actnorm and 1x1 parameters, for random gradients of y and logdet) and reverse (sampling,
no gradient). Peers: every gmk backend; the eager reference (plain torch: for the step, actnorm, F.conv2d
with log|det W| by slogdet in float64 and the inverse by torch.linalg.inv in float64, as the reference
implementations do); torch.compile of it.

Bytes (counted by hand, ``harness.elementwise_bytes``): x and h read and y written once forward (the
per-sample logdet and the C×C parameters are negligible), plus the backward's reads of grad_y, x, h
and writes of grad_x, grad_h. The gmk step writes and re-reads the 1x1 output between its two ops: the
count is the work, not what this implementation moves.

Performance targets (issue #5, on a GPU): the whole step forward+backward ≥ 3× eager and ≥ 1.5×
torch.compile, with zero host synchronisations; the elementwise and 1x1 parts ≥ 70 % of the measured
copy bandwidth on (64, 48, 32, 32).
"""
from __future__ import annotations

import functools

import torch

import gmkernels as gmk
from gmkernels.reference.coupling import affine_coupling as reference_coupling
from gmkernels.reference.invconv import actnorm_conv1x1 as reference_actnorm_conv1x1

from ..harness import DIRECTIONS, Case, direction_call, elementwise_bytes, gmk_peers, nbytes, reference_peers

SHAPES = {"cuda": ((64, 12, 16, 16), (64, 24, 8, 8), (64, 48, 4, 4), (64, 48, 32, 32)),
          "cpu": ((8, 12, 16, 16), (8, 48, 8, 8))}
ALL_DIRECTIONS = (*DIRECTIONS, "reverse")


def _coupling(x, h, *, reverse=False, backend="auto"):
    return gmk.affine_coupling(x, h, reverse=reverse, backend=backend)


def _reference_coupling(x, h, *, reverse=False):
    return reference_coupling(x, h, "glow", "halves", reverse)


def _step(x, h, bias, log_scale, weight, *, reverse=False, backend="auto"):
    """actnorm + 1x1 convolution (one fused op) and the coupling epilogue; reverse undoes them in turn."""
    if reverse:
        z, logdet_coupling = gmk.affine_coupling(x, h, reverse=True, backend=backend)
        y, logdet = gmk.actnorm_conv1x1(z, bias, log_scale, weight, reverse=True, backend=backend)
    else:
        z, logdet = gmk.actnorm_conv1x1(x, bias, log_scale, weight, backend=backend)
        y, logdet_coupling = gmk.affine_coupling(z, h, backend=backend)
    return y, logdet + logdet_coupling


def _reference_step(x, h, bias, log_scale, weight, *, reverse=False):
    if reverse:
        z, logdet_coupling = reference_coupling(x, h, "glow", "halves", True)
        y, logdet = reference_actnorm_conv1x1(z, bias, log_scale, weight, True)
    else:
        z, logdet = reference_actnorm_conv1x1(x, bias, log_scale, weight)
        y, logdet_coupling = reference_coupling(z, h, "glow", "halves", False)
    return y, logdet + logdet_coupling


def _peers(op, reference, inputs, direction, grad_outputs, device):
    """Every gmk backend and both baselines; ``reverse`` runs each with reverse=True, without grad."""
    reverse = direction == "reverse"
    impls = gmk_peers(functools.partial(op, reverse=reverse), device) | reference_peers(
        functools.partial(reference, reverse=reverse))
    timed = "forward" if reverse else direction
    return {name: direction_call(fn, inputs, timed, grad_outputs) for name, fn in impls.items()}


def _name(label, shape, direction):
    return f"{label} {'×'.join(map(str, shape))} float32 {direction}"


def _coupling_case(device: str, shape: tuple[int, ...], direction: str) -> Case:
    x = torch.randn(shape, device=device)
    h = torch.randn(shape, device=device)
    inputs = tuple(t.requires_grad_(direction == "forward+backward") for t in (x, h))
    grad_outputs = (torch.randn_like(x), torch.randn(shape[0], device=device))
    return Case(
        name=_name("coupling glow", shape, direction), family="flows",
        params={"op": "affine_coupling", "shape": list(shape), "dtype": "float32", "direction": direction,
                "transform": "glow", "layout": "halves"},
        bytes=elementwise_bytes("forward" if direction == "reverse" else direction, read=nbytes(x, h),
                                written=x.nbytes),
        peers=_peers(_coupling, _reference_coupling, inputs, direction, grad_outputs, device),
    )


def _step_case(device: str, shape: tuple[int, ...], direction: str) -> Case:
    channels = shape[1]
    x = torch.randn(shape, device=device)
    h = torch.randn(shape, device=device)
    bias = 0.1 * torch.randn(channels, device=device)
    log_scale = 0.1 * torch.randn(channels, device=device)
    weight = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))[0].float().to(device)
    inputs = tuple(t.requires_grad_(direction == "forward+backward") for t in (x, h, bias, log_scale, weight))
    grad_outputs = (torch.randn_like(x), torch.randn(shape[0], device=device))
    return Case(
        name=_name("flow step (actnorm+1x1+coupling)", shape, direction), family="flows",
        params={"op": "flow_step", "shape": list(shape), "dtype": "float32", "direction": direction,
                "transform": "glow", "layout": "halves", "weight": "dense"},
        bytes=elementwise_bytes("forward" if direction == "reverse" else direction, read=nbytes(x, h),
                                written=x.nbytes),
        peers=_peers(_step, _reference_step, inputs, direction, grad_outputs, device),
    )


def cases(device: str, quick: bool) -> list[Case]:
    """The issue's shapes on a GPU (a quick run: the largest); on CPU small batches (quick: one shape)."""
    shapes = SHAPES[device]
    if quick:
        shapes = shapes[-1:] if device == "cuda" else shapes[:1]
    directions = ("forward+backward",) if quick and device == "cpu" else ALL_DIRECTIONS
    return [make(device, shape, direction) for make in (_coupling_case, _step_case)
            for shape in shapes for direction in directions]
