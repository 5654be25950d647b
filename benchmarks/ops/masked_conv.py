"""Masked (PixelCNN) and shifted (PixelCNN++) convolution cases.

Peers: every gmk backend on NCHW and on channels_last inputs; the convolution as users run it today,
F.conv2d with the weights multiplied by the mask (cuDNN on a GPU), on NCHW and on channels_last
inputs — the faster of the two is the baseline of the "× eager" column — and torch.compile of the NCHW
one. Shifted convolutions: F.pad then F.conv2d, likewise. TFLOP/s count the live taps only: the work a
masked convolution has to do (2 flops per multiply-add; forward+backward does it three times: y,
grad_x, grad_weight). Colour groups need channel counts divisible by 3: those cases take the multiple
of 24 nearest to the channel count (120 for 128, 264 for 256), a multiple of 8 for every peer.

Performance targets (issue #4), forward+backward against cuDNN with masked weights: bfloat16, 256
channels, 7×7 and 5×5 masks ≥ 1.6×, 3×3 mask B ≥ 1.2×; float32 the same against cuDNN with TF32;
shifted convolutions ≥ 1.1× pad + F.conv2d.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

import gmkernels as gmk
from gmkernels.reference.masked_conv import shifted_conv2d as reference_shifted

from ..harness import COMPILED, DIRECTIONS, EAGER, Case, direction_call, gmk_peers, nbytes, reference_peers

EAGER_CHANNELS_LAST = f"{EAGER} (channels_last)"
MASKS = (("B", 3), ("A", 5), ("B", 5), ("A", 7), ("B", 7))  # (mask_type, k)
SHIFTS = (("down", 2, 3), ("down_right", 2, 2))  # (shift, kh, kw): PixelCNN++'s kernels


# x's (batch, channels, height, width) on each device; a quick run takes the first on CPU, the last
# (the targets) on a GPU.
SIZES = {"cuda": ((32, 128, 32, 32), (32, 256, 32, 32)), "cpu": ((2, 32, 16, 16), (2, 64, 16, 16))}
DTYPES = (torch.bfloat16, torch.float32)


def _dense_masked(x, weight, bias, *, mask, padding):
    """The masked convolution as users run it: a dense convolution of the masked weights."""
    return F.conv2d(x, weight * mask, bias, padding=padding)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous(memory_format=torch.channels_last).requires_grad_(t.requires_grad)


def _nearest_multiple(value: int, step: int) -> int:
    return max(step, step * round(value / step))


def _case(label: str, family_params: dict, x, weight, bias, live_weights: int, op, reference,
          direction: str) -> Case:
    """The peers of one case: ``op`` on every gmk backend and ``reference``, each on NCHW and
    channels_last inputs, and torch.compile of the NCHW reference."""
    device = x.device.type
    grad_y = torch.randn(x.shape[0], weight.shape[0], *x.shape[2:], dtype=x.dtype, device=device)
    inputs = tuple(t.requires_grad_(direction != "forward") for t in (x, weight, bias))
    inputs_cl = (_channels_last(x), _channels_last(weight), bias)
    grad_y_cl = grad_y.contiguous(memory_format=torch.channels_last)
    gmk_ops = gmk_peers(op, device)
    peers = {name: direction_call(fn, inputs, direction, grad_y) for name, fn in gmk_ops.items()}
    peers |= {f"{name} (channels_last)": direction_call(fn, inputs_cl, direction, grad_y_cl)
              for name, fn in gmk_ops.items()}
    baselines = reference_peers(reference)
    peers[EAGER] = direction_call(baselines[EAGER], inputs, direction, grad_y)
    peers[EAGER_CHANNELS_LAST] = direction_call(baselines[EAGER], inputs_cl, direction, grad_y_cl)
    peers[COMPILED] = direction_call(baselines[COMPILED], inputs, direction, grad_y)

    passes = 1 if direction == "forward" else 3
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    element = x.element_size()
    forward_bytes = nbytes(x, bias) + live_weights * element + grad_y.nbytes  # x, w, b read; y written
    backward_bytes = nbytes(grad_y, x, bias) + live_weights * element  # grad_y read; the gradients written
    dtype_name = str(x.dtype).removeprefix("torch.")
    return Case(
        name=f"{label} {'×'.join(map(str, x.shape))} {dtype_name} {direction}",
        family="masked_conv",
        params={"x_shape": list(x.shape), "weight_shape": list(weight.shape), "dtype": dtype_name,
                "direction": direction, **family_params},
        bytes=forward_bytes + (backward_bytes if direction != "forward" else 0),
        flops=2 * pixels * live_weights * passes,
        peers=peers,
        baseline=(EAGER, EAGER_CHANNELS_LAST),
    )



def _masked_case(device: str, size: tuple[int, ...], mask_type: str, k: int, groups: int, dtype: torch.dtype,
                 direction: str) -> Case:
    n, channels, h, w = size
    channels = channels if groups == 1 else _nearest_multiple(channels, 8 * groups)
    x = torch.randn(n, channels, h, w, dtype=dtype, device=device)
    weight = torch.randn(channels, channels, k, k, dtype=dtype, device=device) / (channels * k * k) ** 0.5
    bias = torch.randn(channels, dtype=dtype, device=device)
    mask = gmk.conv_mask(k, mask_type, channels, channels, groups).to(device=device, dtype=dtype)
    options = {"mask_type": mask_type, "color_groups": groups}
    return _case(f"masked {mask_type} {k}×{k} groups={groups}", {"kind": "masked", **options},
                 x, weight, bias, int(mask.sum().item()), functools.partial(gmk.masked_conv2d, **options),
                 functools.partial(_dense_masked, mask=mask, padding=k // 2), direction)


def _shifted_case(device: str, size: tuple[int, ...], shift: str, kh: int, kw: int, dtype: torch.dtype,
                  direction: str) -> Case:
    n, channels, h, w = size
    x = torch.randn(n, channels, h, w, dtype=dtype, device=device)
    weight = torch.randn(channels, channels, kh, kw, dtype=dtype, device=device) / (channels * kh * kw) ** 0.5
    bias = torch.randn(channels, dtype=dtype, device=device)
    return _case(f"shifted {shift} {kh}×{kw}", {"kind": "shifted", "shift": shift}, x, weight, bias,
                 weight.numel(), functools.partial(gmk.shifted_conv2d, shift=shift),
                 functools.partial(reference_shifted, shift=shift), direction)


def cases(device: str, quick: bool) -> list[Case]:
    """The issue's matrix on a GPU; on CPU (small sizes, float32) and in a quick run, a few of it."""
    sizes = SIZES[device] if not quick else SIZES[device][-1:] if device == "cuda" else SIZES[device][:1]
    if device == "cpu":
        dtypes = (torch.float32,)
        masks = ((mask_type, k, 1) for mask_type, k in MASKS if k == 5)
        shifts = SHIFTS[:1] if quick else SHIFTS
    elif quick:
        dtypes = (torch.bfloat16,)
        masks = (("B", 3, 1), ("B", 7, 1), ("B", 7, 3))
        shifts = SHIFTS[:1]
    else:
        dtypes = DTYPES
        masks = ((mask_type, k, groups) for mask_type, k in MASKS for groups in (1, 3))
        shifts = SHIFTS
    masks, shifts = list(masks), list(shifts)
    directions = ("forward+backward",) if device == "cpu" and quick else DIRECTIONS
    return [
        *(_masked_case(device, size, mask_type, k, groups, dtype, direction)
          for size in sizes for mask_type, k, groups in masks for dtype in dtypes
          for direction in directions),
        *(_shifted_case(device, size, shift, kh, kw, dtype, direction)
          for size in sizes for shift, kh, kw in shifts for dtype in dtypes for direction in directions),
    ]
