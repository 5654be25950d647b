"""nn.Module drop-in of the gated activation."""
import torch

from ..ops.gated import ACTIVATIONS, gated_activation


class GatedActivation(torch.nn.Module):
    """``f(a) * sigmoid(b)`` over the two halves of ``x + cond`` along ``dim`` (see gmk.gated_activation)."""

    def __init__(self, activation: str = "tanh", dim: int = 1):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"GatedActivation: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"GatedActivation: dim must be an int, got {dim!r}")
        self.activation = activation
        self.dim = dim

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return gated_activation(x, cond, activation=self.activation, dim=self.dim)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, dim={self.dim}"
