"""nn.Module of Glow's actnorm, with its data-dependent initialisation."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .._validation import check_finite_number, check_input, check_int
from ..ops.actnorm import actnorm


def _global_sum(t: torch.Tensor) -> torch.Tensor:
    """t summed over the processes when torch.distributed is initialised, else t."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


class ActNorm(torch.nn.Module):
    """``y = (x + bias) · exp(log_scale)`` per channel (see gmk.actnorm); x is (N, C, *S).

    The first call of :meth:`forward` initialises the parameters from its batch so that y has zero
    mean and unit variance per channel (Glow): ``bias = -mean``, ``exp(log_scale) = 1 / (std + eps)``,
    the (biased) statistics over the batch and the positions. When ``torch.distributed`` is initialised
    the sums behind them are all-reduced first, so every process gets the statistics of the global
    batch and the same parameters. The state survives ``state_dict`` (buffer ``initialized``); loading
    a state dict marks the module as initialised by it.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        check_int("ActNorm", "num_channels", num_channels, 1)
        check_finite_number("ActNorm", "eps", eps)
        if eps < 0:
            raise ValueError(f"ActNorm: eps must be >= 0, got {eps!r}")
        self.num_channels = num_channels
        self.eps = eps
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))
        self.log_scale = torch.nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False  # a Python copy: reading the buffer on CUDA would synchronise

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Sets bias and log_scale from the batch x (all-reduced across processes when distributed).

        Two passes in float64, the mean first, then the squared deviations from it (no cancellation
        when the mean is large next to the deviation).
        """
        dims = [0, *range(2, x.dim())]
        x64 = x.detach().double()
        count = torch.tensor(float(x.shape[0] * math.prod(x.shape[2:])), dtype=torch.float64, device=x.device)
        mean = _global_sum(torch.cat([x64.sum(dims), count[None]]))
        mean = mean[:-1] / mean[-1]
        variance = _global_sum(torch.cat([(x64 - mean.view(1, -1, *([1] * (x.dim() - 2)))).square().sum(dims),
                                          count[None]]))
        std = (variance[:-1] / variance[-1]).sqrt()
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)
        self._initialized = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input("ActNorm", x, self.num_channels, device=self.bias.device)
        if not self._initialized:
            self.initialize(x)
        return actnorm(x, self.bias, self.log_scale)

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input("ActNorm.reverse", y, self.num_channels, device=self.bias.device)
        return actnorm(y, self.bias, self.log_scale, reverse=True)[0]

    def extra_repr(self) -> str:
        return f"{self.num_channels}"
