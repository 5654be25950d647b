"""StyleGAN2's ops (issue 13): gmk.bias_act forward+backward and an R1 double backward through it, and
gmk.upfirdn2d upsampling / downsampling by 2 with the [1, 3, 3, 1] filter (4×4 taps).

Shapes: StyleGAN2's feature maps at 32×32 with 512 channels and at 128×128 with 128 channels, batch 32,
on a GPU; small batches on CPU. Peers: every gmk backend; the eager reference (torch ops, F.conv2d for
upfirdn2d) and torch.compile of it (which cannot differentiate its compiled backward again: the R1 case
records that peer as skipped).

Bytes (by hand): bias_act forward+backward reads x, b and writes y, then reads grad_y and y (the saved
tensor of lrelu) and writes grad_x; the R1 case counts its four elementwise passes over x-sized tensors
(forward, backward, the backward's backward, and the bias_act_backward of the second order) at three
tensors each. upfirdn2d reads x and writes y (forward+backward adds the gradient's upfirdn2d: grad_y read,
grad_x written).

Performance targets (issue 13, on a GPU): bias_act ≥ 85 % of copy bandwidth and ≥ 2× eager; upfirdn2d
≥ 2× the reference; the R1 step ≥ 1.5× eager.
"""
from __future__ import annotations

import functools

import torch

import gmkernels as gmk
from gmkernels.reference.bias_act import bias_act as reference_bias_act
from gmkernels.reference.upfirdn2d import upfirdn2d as reference_upfirdn2d

from ..harness import Case, direction_call, elementwise_bytes, gmk_peers, nbytes, reference_peers

SHAPES = {"cuda": ((32, 512, 32, 32), (32, 128, 128, 128)), "cpu": ((4, 128, 32, 32), (2, 32, 128, 128))}
DTYPES = {"cuda": (torch.float32, torch.bfloat16), "cpu": (torch.float32,)}
TAPS = (1, 3, 3, 1)


def _shape_name(shape, dtype) -> str:
    return f"{'×'.join(map(str, shape))} {str(dtype).removeprefix('torch.')}"


def _bias_act_case(device, shape, dtype) -> Case:
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(shape[1], device=device, dtype=dtype, requires_grad=True)
    grad_y = torch.randn_like(x)
    impls = gmk_peers(functools.partial(gmk.bias_act, act="lrelu"), device) | reference_peers(
        functools.partial(reference_bias_act, act="lrelu"))
    return Case(
        name=f"bias_act lrelu {_shape_name(shape, dtype)} forward+backward", family="gan",
        params={"op": "bias_act", "act": "lrelu", "shape": list(shape), "dtype": str(dtype), "direction":
                "forward+backward"},
        bytes=elementwise_bytes("forward", read=nbytes(x, b), written=x.nbytes) + 3 * x.nbytes,
        peers={name: direction_call(fn, (x, b), "forward+backward", grad_y) for name, fn in impls.items()},
    )


def _r1_call(bias_act, x, scale, b, weight):
    """R1's pattern on one layer: the penalty |d(Σ w·lrelu(s·x + b))/dx|², differentiated for s and b."""
    def step():
        leaf = x.detach().requires_grad_()
        h = bias_act(leaf * scale[:, None, None], b)
        grad, = torch.autograd.grad((h * weight).sum(), leaf, create_graph=True)
        return torch.autograd.grad(grad.square().sum(), (scale, b), allow_unused=True)
    return step


def _r1_case(device, shape, dtype) -> Case:
    x = torch.randn(shape, device=device, dtype=dtype)
    scale = torch.randn(shape[1], device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(shape[1], device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn_like(x)
    impls = gmk_peers(functools.partial(gmk.bias_act, act="lrelu"), device) | reference_peers(
        functools.partial(reference_bias_act, act="lrelu"))
    return Case(
        name=f"bias_act lrelu R1 {_shape_name(shape, dtype)} double backward", family="gan",
        params={"op": "bias_act", "act": "lrelu", "shape": list(shape), "dtype": str(dtype), "direction": "R1"},
        bytes=4 * 3 * x.nbytes,
        peers={name: _r1_call(fn, x, scale, b, weight) for name, fn in impls.items()},
    )


def _upfirdn2d_case(device, shape, dtype, kind) -> Case:
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    f = gmk.setup_filter(TAPS, device=device)
    if kind == "up":
        gmk_function, up, down, padding, gain = gmk.upsample2d, (2, 2), (1, 1), (2, 1, 2, 1), 4.0
    else:
        gmk_function, up, down, padding, gain = gmk.downsample2d, (1, 1), (2, 2), (1, 1, 1, 1), 1.0
    out_shape = gmk.upfirdn2d(x.detach()[:1, :1], f, up=up, down=down, padding=padding).shape[2:]
    y_bytes = x.nbytes * out_shape[0] * out_shape[1] // (shape[2] * shape[3])
    grad_y = torch.randn(*shape[:2], *out_shape, device=device, dtype=dtype)
    reference = functools.partial(reference_upfirdn2d, f=f, up=up, down=down, padding=padding, gain=gain)
    impls = gmk_peers(functools.partial(gmk_function, f=f), device) | reference_peers(reference)
    return Case(
        name=f"upfirdn2d {kind} 2 4×4 {_shape_name(shape, dtype)} forward+backward", family="gan",
        params={"op": "upfirdn2d", "kind": kind, "taps": 4, "shape": list(shape), "dtype": str(dtype),
                "direction": "forward+backward"},
        bytes=2 * (x.nbytes + y_bytes),
        peers={name: direction_call(fn, (x,), "forward+backward", grad_y) for name, fn in impls.items()},
    )


def cases(device: str, quick: bool) -> list[Case]:
    """GPU: both shapes, float32 and bfloat16 (quick: the 32×32 shape). CPU: small batches (quick: one)."""
    shapes = SHAPES[device][:1] if quick else SHAPES[device]
    result = []
    for shape in shapes:
        for dtype in DTYPES[device]:
            result += [_bias_act_case(device, shape, dtype), _r1_case(device, shape, dtype),
                       _upfirdn2d_case(device, shape, dtype, "up"), _upfirdn2d_case(device, shape, dtype, "down")]
    return result
