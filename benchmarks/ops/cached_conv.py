"""cached_conv2d cases: a convolution evaluated from a cache of its input's last rows (cached PixelCNN
sampling), at one position and along a row, forward only (sampling needs no gradient).

Shapes from the CIFAR-10 models at batch 16 (CUDA) and the digits models at batch 16 (CPU): PixelCNN++'s
2×3 "down" conv on concat_elu (2·160 -> 160 channels; CPU 2·32 -> 32), Gated PixelCNN's vertical 3×5 conv
(384 -> 768; CPU 48 -> 96). Peers: gmk's backends against the eager reference (F.conv2d on the window)
and torch.compile of it. Bytes: the window read, the weight read, the output written.
"""
from __future__ import annotations

import functools

import torch

from gmkernels.ops.cached_conv import cached_conv2d
from gmkernels.reference.cached_conv import cached_conv2d as reference

from ..harness import Case, gmk_peers, nbytes, reference_peers

# label, (N, Cin, Cout, kh, kw) on CUDA and on CPU, width of the map (columns of a row), count
WORKLOADS = (
    ("pixelcnn++ down conv, one position", (16, 320, 160, 2, 3), (16, 64, 32, 2, 3), 32, 1),
    ("pixelcnn++ down conv, a row", (16, 320, 160, 2, 3), (16, 64, 32, 2, 3), 32, 32),
    ("gated vertical conv, a row", (16, 384, 768, 3, 5), (16, 48, 96, 2, 3), 32, 32),
)


def _case(label: str, sizes: tuple, width: int, count: int, device: str, dtype: torch.dtype) -> Case:
    n, cin, cout, kh, kw = sizes
    rows = torch.randn(n, cin, kh, width + kw - 1, device=device, dtype=dtype)
    weight = torch.randn(cout, cin, kh, kw, device=device, dtype=dtype) / (cin * kh * kw) ** 0.5
    bias = torch.randn(cout, device=device, dtype=dtype)
    column = width // 2 if count == 1 else 0
    peers = {**reference_peers(functools.partial(reference, rows, weight, bias, column, count, 1)),
             **gmk_peers(functools.partial(cached_conv2d, rows, weight, bias), device, column=column,
                         count=count)}
    window = n * cin * kh * (count + kw - 1) * rows.element_size()
    return Case(
        name=f"cached_conv2d {label} {sizes} {str(dtype).removeprefix('torch.')}",
        family="cached_conv",
        params={"label": label, "shape": list(sizes), "count": count, "dtype": str(dtype),
                "direction": "forward"},
        bytes=window + nbytes(weight, bias) + n * cout * count * rows.element_size(),
        flops=2 * n * cout * count * cin * kh * kw,
        peers=peers,
    )


def cases(device: str, quick: bool) -> list[Case]:
    dtypes = (torch.float32,) if quick or device == "cpu" else (torch.float32, torch.bfloat16)
    workloads = WORKLOADS[:2] if quick else WORKLOADS
    return [_case(label, cuda if device == "cuda" else cpu, width, count, device, dtype)
            for label, cuda, cpu, width, count in workloads for dtype in dtypes]
