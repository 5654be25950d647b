"""Upsample, pad, FIR-filter and downsample 2-D images (StyleGAN2-ADA's ``upfirdn2d``), in plain PyTorch.

For each channel of x (N, C, H, W) and along each axis (docs/conventions.md, "upfirdn2d"):

1. upsample by inserting ``up − 1`` zeros after each pixel;
2. pad with zeros (``pad0`` before, ``pad1`` after; negative values crop);
3. convolve with the FIR filter ``f`` (flipped: a true convolution, unless ``flip_filter``), keeping the
   outputs whose taps lie inside the padded image;
4. keep every ``down``-th pixel;

all scaled by ``gain``. ``f`` is 2-D (fh, fw) or 1-D (separable: the same taps along x, then along y, each
scaled by √gain). Differentiable to any order by autograd (``F.conv2d``'s).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def upfirdn2d(x, f, up=(1, 1), down=(1, 1), padding=(0, 0, 0, 0), flip_filter=False, gain=1.0):
    """``up``, ``down``: (x, y) factors; ``padding``: (x0, x1, y0, y1); ``f`` 1-D or 2-D (None: [[1]])."""
    batch, channels, height, width = x.shape
    (upx, upy), (downx, downy) = up, down
    padx0, padx1, pady0, pady1 = padding
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)

    x = x.reshape(batch, channels, height, 1, width, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(batch, channels, height * upy, width * upx)

    x = F.pad(x, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
    x = x[:, :, max(-pady0, 0): x.shape[2] - max(-pady1, 0), max(-padx0, 0): x.shape[3] - max(-padx1, 0)]

    f = (f * (gain ** (f.dim() / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.dim())))  # conv2d correlates: flipping makes it a convolution
    f = f[None, None]
    x = x.reshape(batch * channels, 1, *x.shape[2:])  # every channel as its own image (C = 0 too)
    if f.dim() == 4:
        x = F.conv2d(x, f)
    else:
        x = F.conv2d(F.conv2d(x, f.unsqueeze(2)), f.unsqueeze(3))
    return x.reshape(batch, channels, *x.shape[2:])[:, :, ::downy, ::downx]
