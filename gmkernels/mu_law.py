"""µ-law companding (ITU-T G.711; WaveNet arXiv 1609.03499 §2.2): audio in [-1, 1] <-> integer classes.

    f(x) = sign(x) · ln(1 + µ|x|) / ln(1 + µ),   µ = num_classes - 1
    encode: q = floor((f(x) + 1) / 2 · µ + 1/2) ∈ {0, …, µ}
    decode: y = 2q / µ - 1,  x = sign(y) · ((1 + µ)^|y| - 1) / µ

the convention of torchaudio's ``mu_law_encoding`` / ``mu_law_decoding``. Silence (0.0) encodes to
``num_classes // 2`` (128 of 256).
"""
from __future__ import annotations

import math

import torch


def _check_num_classes(function: str, num_classes) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"{function}: num_classes must be an int >= 2, got {num_classes!r}")


def mu_law_encode(audio: torch.Tensor, num_classes: int = 256) -> torch.Tensor:
    """Classes (int64, in [0, num_classes)) of ``audio`` (floating point, clipped to [-1, 1])."""
    _check_num_classes("mu_law_encode", num_classes)
    if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
        raise TypeError(f"mu_law_encode: audio must be a floating-point tensor, got "
                        f"{audio.dtype if isinstance(audio, torch.Tensor) else type(audio).__name__}")
    mu = num_classes - 1
    x = audio.double().clamp(-1, 1)
    companded = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.floor((companded + 1) / 2 * mu + 0.5).long().clamp_(0, mu)


def mu_law_decode(classes: torch.Tensor, num_classes: int = 256,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Audio in [-1, 1] (``dtype``) of µ-law ``classes`` (integers in [0, num_classes))."""
    _check_num_classes("mu_law_decode", num_classes)
    if not isinstance(classes, torch.Tensor) or classes.is_floating_point() or classes.is_complex() \
            or classes.dtype == torch.bool:
        raise TypeError(f"mu_law_decode: classes must be an integer tensor, got "
                        f"{classes.dtype if isinstance(classes, torch.Tensor) else type(classes).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"mu_law_decode: dtype must be a floating-point torch.dtype, got {dtype!r}")
    mu = num_classes - 1
    if classes.numel() and classes.device.type != "meta" and not bool(((classes >= 0) & (classes <= mu)).all()):
        raise ValueError(f"mu_law_decode: classes must lie in [0, {mu}] for num_classes={num_classes}, "
                         f"got values in [{classes.min().item()}, {classes.max().item()}]")
    y = 2 * classes.double() / mu - 1
    return (torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu).clamp(-1, 1).to(dtype)
