"""WaveNet cases: the dilated causal convolution and the fused residual layer at training shapes.

Peers: every gmk backend; the eager reference (F.pad + F.conv1d for the convolution; pad + F.conv1d +
conditioning + tanh·σ gate + the residual and skip 1x1s as F.conv1d for the layer) and torch.compile of
it. The convolution case is the layer's own: R → 2R channels. FLOPs count the multiply-adds of the
GEMMs (2 flops each), forward once, forward+backward three times (output, grad_x, grad_weight: the
layer's backward recomputes its convolution, which is not counted). Bytes: every input read and every
output written once per pass; the backward reads the output gradients and the inputs again and writes
one gradient per input.

Performance target (issue #6), fused layer forward+backward: ≥ 2× eager, ≥ 1.3× torch.compile.
"""
from __future__ import annotations

import functools
import math

import torch

import gmkernels as gmk
from gmkernels.reference import causal_conv as reference

from ..harness import DIRECTIONS, Case, direction_call, gmk_peers, nbytes, reference_peers

# (N, R, S, T) per device: the training shapes on a GPU, a small one on CPU.
SIZES = {"cuda": ((8, 64, 256, 16000), (8, 128, 256, 16000)), "cpu": ((2, 32, 64, 2000),)}
DILATIONS = (1, 512)
KERNEL_SIZE = 2
DTYPES = (torch.float32, torch.bfloat16)


def _randn(*shape, scale=1.0, dtype, device):
    return (torch.randn(*shape, device=device) * scale).to(dtype)


def _name(label, size, dilation, dtype, direction):
    return f"{label} {'×'.join(map(str, size))} d={dilation} {str(dtype).removeprefix('torch.')} {direction}"


def _conv_case(device, size, dilation, dtype, direction) -> Case:
    n, r, _, t = size
    k = KERNEL_SIZE
    x = _randn(n, r, t, dtype=dtype, device=device)
    weight = _randn(2 * r, r, k, scale=1 / math.sqrt(r * k), dtype=dtype, device=device)
    bias = _randn(2 * r, dtype=dtype, device=device)
    inputs = tuple(v.requires_grad_(direction != "forward") for v in (x, weight, bias))
    grad_y = _randn(n, 2 * r, t, dtype=dtype, device=device)
    impls = gmk_peers(gmk.causal_conv1d, device, dilation=dilation) | reference_peers(
        functools.partial(reference.causal_conv1d, dilation=dilation))
    forward_bytes = nbytes(x, weight, bias, grad_y)  # y has grad_y's size
    backward_bytes = nbytes(grad_y, x, weight) + nbytes(x, weight, bias)
    passes = 1 if direction == "forward" else 3
    return Case(
        name=_name("causal_conv1d", (n, r, t), dilation, dtype, direction),
        family="causal_conv",
        params={"op": "causal_conv1d", "x_shape": [n, r, t], "weight_shape": list(weight.shape),
                "dilation": dilation, "dtype": str(dtype).removeprefix("torch."), "direction": direction},
        bytes=forward_bytes + (backward_bytes if direction != "forward" else 0),
        flops=2 * n * t * 2 * r * r * k * passes,
        peers={name: direction_call(fn, inputs, direction, grad_y) for name, fn in impls.items()},
    )


def _layer_case(device, size, dilation, dtype, direction) -> Case:
    n, r, s, t = size
    k = KERNEL_SIZE
    x = _randn(n, r, t, dtype=dtype, device=device)
    randn = functools.partial(_randn, dtype=dtype, device=device)
    params = (randn(2 * r, r, k, scale=1 / math.sqrt(r * k)), randn(2 * r),
              randn(r, r, scale=1 / math.sqrt(r)), randn(r), randn(s, r, scale=1 / math.sqrt(r)), randn(s))
    cond = _randn(n, 2 * r, 1, dtype=dtype, device=device)  # global conditioning (speaker)
    inputs = tuple(v.requires_grad_(direction != "forward") for v in (x, *params, cond))
    grads = (_randn(n, r, t, dtype=dtype, device=device), _randn(n, s, t, dtype=dtype, device=device))
    options = {"dilation": dilation, "residual_scale": math.sqrt(0.5)}
    impls = gmk_peers(gmk.wavenet_layer, device, **options) | reference_peers(
        functools.partial(reference.wavenet_layer, **options))
    forward_bytes = nbytes(x, *params, cond, *grads)  # the outputs have the gradients' sizes
    backward_bytes = nbytes(*grads, x, *params, cond) + nbytes(x, *params, cond)
    passes = 1 if direction == "forward" else 3
    return Case(
        name=_name("wavenet_layer", (n, r, s, t), dilation, dtype, direction),
        family="causal_conv",
        params={"op": "wavenet_layer", "x_shape": [n, r, t], "skip_channels": s, "kernel_size": k,
                "dilation": dilation, "cond": "global", "dtype": str(dtype).removeprefix("torch."),
                "direction": direction},
        bytes=forward_bytes + (backward_bytes if direction != "forward" else 0),
        flops=2 * n * t * (2 * r * r * k + (r + s) * r) * passes,
        peers={name: direction_call(fn, inputs, direction, grads) for name, fn in impls.items()},
    )


def cases(device: str, quick: bool) -> list[Case]:
    """The issue's matrix on a GPU; on CPU (small size, float32) and in a quick run, a few of it."""
    sizes = SIZES[device]
    dtypes = (torch.float32,) if device == "cpu" else DTYPES
    dilations = DILATIONS
    directions = DIRECTIONS
    if quick:
        sizes, dilations = sizes[:1], dilations[-1:]
        dtypes = dtypes[-1:]
        directions = ("forward+backward",)
    return [case(device, size, dilation, dtype, direction)
            for case in (_conv_case, _layer_case) for size in sizes for dilation in dilations
            for dtype in dtypes for direction in directions]
