"""Affine and additive coupling layers, as the papers write them (plain PyTorch, any dtype).

NICE (arXiv 1410.8516, eq. 5), RealNVP (arXiv 1605.08803, eq. 6-7) and Glow (arXiv 1807.03039,
table 1): x is split into (x_a, x_b); h = NN(x_a) gives a shift t and a raw scale r; x_a passes
through and

    glow:     s = σ(r + 2),  y_b = (x_b + t) ⊙ s,    x_b = y_b / s - t
    realnvp:  s = exp(r),    y_b = x_b ⊙ s + t,      x_b = (y_b - t) / s
    additive: s = 1,         y_b = x_b + t,          x_b = y_b - t

with log|det ∂y/∂x| = Σ log s over the elements of x_b of each sample. The split is along the
channels (``layout="halves"``: r, t the first and second half of h, the popular PyTorch port;
``"interleaved"``: t = h[:, 0::2], r = h[:, 1::2], the Glow TF code), or spatial (RealNVP's
checkerboard, §3.4): x_a are the positions (i, j) of the last two spatial dimensions with i + j even
(``"checkerboard"``) or odd (``"checkerboard_odd"``), every channel; h holds r and t at every
position of x as its halves, and only the x_b positions are read. For ``"additive"`` h is t.
"""
import torch
import torch.nn.functional as F

from .actnorm import logdet_dtype  # one convention for every flow op

TRANSFORMS = ("glow", "realnvp", "additive")
CHANNEL_LAYOUTS = ("halves", "interleaved")
CHECKERBOARD_LAYOUTS = ("checkerboard", "checkerboard_odd")
LAYOUTS = CHANNEL_LAYOUTS + CHECKERBOARD_LAYOUTS


def split_h(h, transform="glow", layout="halves"):
    """(r, t) from the coupling network's output h; r is None for ``"additive"``."""
    if transform == "additive":
        return None, h
    if layout == "interleaved":
        return h[:, 1::2], h[:, 0::2]
    r, t = h.chunk(2, dim=1)
    return r, t


def checkerboard_b(spatial, layout, device=None):
    """The x_b positions of a checkerboard layout: a bool mask over the last two spatial dimensions
    (the last one only for one spatial dimension), True where (i + j) is odd ("checkerboard") or
    even ("checkerboard_odd")."""
    height, width = (1, spatial[-1]) if len(spatial) == 1 else spatial[-2:]
    i = torch.arange(height, device=device)[:, None]
    j = torch.arange(width, device=device)[None, :]
    odd = (i + j) % 2 == 1
    mask = odd if layout == "checkerboard" else ~odd
    return mask[0] if len(spatial) == 1 else mask


def transform_b(x_b, r, t, transform, reverse):
    """(y_b, log s): the image of x_b (y_b in reverse) and log s (None for additive)."""
    if transform == "glow":
        s = torch.sigmoid(r + 2)
        log_s = F.logsigmoid(r + 2)  # -softplus(-(r + 2)), stable where s underflows
        return (x_b / s - t if reverse else (x_b + t) * s), log_s
    if transform == "realnvp":
        return ((x_b - t) * torch.exp(-r) if reverse else x_b * torch.exp(r) + t), r
    return (x_b - t if reverse else x_b + t), None


def affine_coupling(x, h, transform="glow", layout="halves", reverse=False):
    """(y, logdet): y = x with its x_b transformed, logdet (N,) = Σ log s (negated in reverse)."""
    r, t = split_h(h, transform, layout)
    if layout in CHECKERBOARD_LAYOUTS:
        b = checkerboard_b(x.shape[2:], layout, x.device)
        y_b, log_s = transform_b(x[..., b], None if r is None else r[..., b], t[..., b], transform, reverse)
        y = x.clone()
        y[..., b] = y_b
    else:
        x_a, x_b = x.chunk(2, dim=1)
        y_b, log_s = transform_b(x_b, r, t, transform, reverse)
        y = torch.cat([x_a, y_b], dim=1)
    if log_s is None:
        logdet = x.new_zeros(x.shape[0], dtype=logdet_dtype(x.dtype))
    else:
        logdet = log_s.flatten(1).sum(1, dtype=logdet_dtype(x.dtype))
    return y, -logdet if reverse else logdet
