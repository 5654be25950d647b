"""Actnorm (Glow, arXiv 1807.03039, section 3.1 and table 1), as the paper writes it (plain PyTorch).

    y = (x + b) ⊙ exp(log_s)      per channel, x (N, C, *S)
    log|det J| = |S| · Σ_c log_s_c   per sample (|S| = the number of positions)

The reverse maps y back to x and returns the negated log-determinant. The log-determinant is
summed in float64 and returned in float32 (float64 for float64 inputs).
"""
import math

import torch


def logdet_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a flow op's log-determinant for inputs of ``dtype``: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample(value: torch.Tensor, x: torch.Tensor, reverse: bool) -> torch.Tensor:
    """A float64 0-d log-determinant as the (N,) tensor of a flow op on x: negated in reverse."""
    value = -value if reverse else value
    return value.to(logdet_dtype(x.dtype)).reshape(1).expand(x.shape[0]).contiguous()


def positions(x: torch.Tensor) -> int:
    return math.prod(x.shape[2:])


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def actnorm(x, bias, log_scale, reverse=False):
    b, log_s = _per_channel(bias, x), _per_channel(log_scale, x)
    y = x * torch.exp(-log_s) - b if reverse else (x + b) * torch.exp(log_s)
    logdet = positions(x) * log_scale.double().sum()
    return y.to(x.dtype), per_sample(logdet, x, reverse)


def actnorm_init(x, eps=1e-6):
    """Glow's data-dependent initialisation from a batch: b = -mean, exp(log_s) = 1 / (std + eps).

    Mean and (biased) standard deviation per channel over the batch and positions, in float64.
    Returns (bias, log_scale) in float64.
    """
    dims = [0, *range(2, x.dim())]
    x64 = x.detach().double()
    mean = x64.mean(dims)
    std = (x64 - _per_channel(mean, x)).square().mean(dims).sqrt()
    return -mean, -torch.log(std + eps)
