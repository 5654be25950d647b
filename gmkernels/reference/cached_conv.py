"""A convolution evaluated from a cache of its input's last rows (cached PixelCNN sampling, Ramachandran
et al. 2017, arXiv 1704.06001), as users write it today: F.conv2d on the window.

``rows`` (N, Cin, R, Wp) holds the last R >= kh rows of a map with its zero padding columns; ``weight``
(Cout, Cin, kh, kw) is the kernel's rows that read them (a masked kernel multiplied by its mask and cut to
its rows at and above the output). Output t < count is the convolution at window column
``column + t·stride``, over the last kh rows:

    out[n, o, t] = bias[o] + Σ_{c, a, b} weight[o, c, a, b] · rows[n, c, R - kh + a, column + t·stride + b]

Returns (N, Cout, count).
"""
import torch.nn.functional as F


def cached_conv2d(rows, weight, bias=None, column=0, count=1, stride=1):
    kh, kw = weight.shape[2:]
    window = rows[:, :, rows.shape[2] - kh:, column:column + (count - 1) * stride + kw]
    return F.conv2d(window, weight, bias, stride=(1, stride))[:, :, 0]
