"""Affine and additive coupling layers, as the papers write them (plain PyTorch, any dtype).

NICE (arXiv 1410.8516, eq. 5), RealNVP (arXiv 1605.08803, eq. 6-7) and Glow (arXiv 1807.03039,
table 1): x is split along the channels into (x_a, x_b); h = NN(x_a) gives a shift t and a raw
scale r; x_a passes through and

    glow:     s = σ(r + 2),  y_b = (x_b + t) ⊙ s,    x_b = y_b / s - t
    realnvp:  s = exp(r),    y_b = x_b ⊙ s + t,      x_b = (y_b - t) / s
    additive: s = 1,         y_b = x_b + t,          x_b = y_b - t

with log|det ∂y/∂x| = Σ log s over the channels and positions of each sample. h holds (r, t) as
its first and second half (``layout="halves"``, the popular PyTorch port) or interleaved as
t = h[:, 0::2], r = h[:, 1::2] (``"interleaved"``, the Glow TF code); for ``"additive"`` h is t.
"""
import torch
import torch.nn.functional as F

from .actnorm import logdet_dtype  # one convention for every flow op

TRANSFORMS = ("glow", "realnvp", "additive")
LAYOUTS = ("halves", "interleaved")


def split_h(h, transform="glow", layout="halves"):
    """(r, t) from the coupling network's output h; r is None for ``"additive"``."""
    if transform == "additive":
        return None, h
    if layout == "halves":
        r, t = h.chunk(2, dim=1)
        return r, t
    return h[:, 1::2], h[:, 0::2]


def affine_coupling(x, h, transform="glow", layout="halves", reverse=False):
    """(y, logdet): y = x with its second half transformed, logdet (N,) = Σ log s (negated in reverse)."""
    x_a, x_b = x.chunk(2, dim=1)
    r, t = split_h(h, transform, layout)
    if transform == "glow":
        s = torch.sigmoid(r + 2)
        log_s = F.logsigmoid(r + 2)  # -softplus(-(r + 2)), stable where s underflows
        y_b = x_b / s - t if reverse else (x_b + t) * s
    elif transform == "realnvp":
        log_s = r
        y_b = (x_b - t) * torch.exp(-r) if reverse else x_b * torch.exp(r) + t
    else:
        log_s = None
        y_b = x_b - t if reverse else x_b + t
    if log_s is None:
        logdet = x.new_zeros(x.shape[0], dtype=logdet_dtype(x.dtype))
    else:
        logdet = log_s.flatten(1).sum(1, dtype=logdet_dtype(x.dtype))
    return torch.cat([x_a, y_b], dim=1), -logdet if reverse else logdet
