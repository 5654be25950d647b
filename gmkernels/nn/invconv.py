"""nn.Modules of Glow's invertible 1x1 convolution, dense and LU-decomposed."""
from __future__ import annotations

import torch

from .._validation import check_input, check_int
from ..ops.invconv import invertible_conv1x1, invertible_conv1x1_lu
from ..reference.invconv import lu_weight


def random_rotation(num_channels: int) -> torch.Tensor:
    """A random orthogonal (C, C) matrix, Q of the QR factorisation of a Gaussian one (Glow's initial W)."""
    return torch.linalg.qr(torch.randn(num_channels, num_channels, dtype=torch.float64))[0].float()


class InvConv2d(torch.nn.Module):
    """``y = W x`` at every position of x (N, C, *S), W (C, C) initialised to a random rotation
    (see gmk.invertible_conv1x1). ``forward(x) -> (y, logdet)``, ``reverse(y) -> x``."""

    def __init__(self, num_channels: int):
        super().__init__()
        check_int("InvConv2d", "num_channels", num_channels, 1)
        self.num_channels = num_channels
        self.weight = torch.nn.Parameter(random_rotation(num_channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input("InvConv2d", x, self.num_channels)
        return invertible_conv1x1(x, self.weight)

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input("InvConv2d.reverse", y, self.num_channels)
        return invertible_conv1x1(y, self.weight, reverse=True)[0]

    def extra_repr(self) -> str:
        return f"{self.num_channels}"


class InvConv2dLU(torch.nn.Module):
    """The LU-decomposed invertible 1x1 convolution (see gmk.invertible_conv1x1_lu).

    Initialised from the LU factorisation P L U of a random rotation: ``lower``, ``upper`` (only
    their strict triangles are used), ``log_s = log|diag U|`` are parameters; ``perm`` and
    ``sign_s = sign(diag U)`` fixed buffers. ``forward(x) -> (y, logdet)``, ``reverse(y) -> x``.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        check_int("InvConv2dLU", "num_channels", num_channels, 1)
        self.num_channels = num_channels
        perm, lower, upper = torch.linalg.lu(random_rotation(num_channels).double())
        diagonal = upper.diagonal()
        self.register_buffer("perm", perm.float())
        self.register_buffer("sign_s", torch.sign(diagonal).float())
        self.lower = torch.nn.Parameter(torch.tril(lower, -1).float())
        self.upper = torch.nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = torch.nn.Parameter(torch.log(diagonal.abs()).float())

    def weight(self) -> torch.Tensor:
        """The dense W = P L U these parameters stand for."""
        return lu_weight(self.lower, self.upper, self.log_s, self.sign_s, self.perm)

    def lu_parameters(self) -> tuple[torch.Tensor, ...]:
        """(lower, upper, log_s, sign_s, perm), the arguments of gmk.invertible_conv1x1_lu."""
        return self.lower, self.upper, self.log_s, self.sign_s, self.perm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input("InvConv2dLU", x, self.num_channels)
        return invertible_conv1x1_lu(x, *self.lu_parameters())

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input("InvConv2dLU.reverse", y, self.num_channels)
        return invertible_conv1x1_lu(y, *self.lu_parameters(), reverse=True)[0]

    def extra_repr(self) -> str:
        return f"{self.num_channels}"
