"""nn.Module drop-in of PixelCNN++'s discretized logistic mixture loss."""
import torch

from ..ops.logistic_mixture import (check_num_channels, check_options, discretized_logistic_mixture_nll,
                                    discretized_logistic_mixture_sample)


class DiscretizedLogisticMixtureLoss(torch.nn.Module):
    """-log P(x | params) in nats (see gmk.discretized_logistic_mixture_nll); ``sample`` draws from it."""

    def __init__(self, num_channels: int = 3, num_bins: int = 256, log_scale_min: float = -7.0,
                 reduction: str = "sum"):
        super().__init__()
        check_num_channels("DiscretizedLogisticMixtureLoss", num_channels)
        check_options("DiscretizedLogisticMixtureLoss", num_bins, log_scale_min, reduction)
        self.num_channels, self.num_bins, self.log_scale_min, self.reduction = (
            num_channels, num_bins, log_scale_min, reduction)

    def forward(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[1] != self.num_channels:
            raise ValueError(f"DiscretizedLogisticMixtureLoss: x must have num_channels={self.num_channels} "
                             f"channels (dim 1), got shape {tuple(x.shape)}")
        return discretized_logistic_mixture_nll(params, x, num_bins=self.num_bins,
                                                log_scale_min=self.log_scale_min, reduction=self.reduction)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return discretized_logistic_mixture_sample(params, num_channels=self.num_channels,
                                                   num_bins=self.num_bins, log_scale_min=self.log_scale_min,
                                                   generator=generator)

    def extra_repr(self) -> str:
        return (f"num_channels={self.num_channels}, num_bins={self.num_bins}, "
                f"log_scale_min={self.log_scale_min}, reduction={self.reduction!r}")
