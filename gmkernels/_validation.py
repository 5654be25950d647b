"""Checks of plain Python arguments shared by the public functions, modules and models.

Each raises a TypeError or ValueError that names the function, the argument and what was expected.
"""
from __future__ import annotations

import math
import numbers

import torch


def check_bool(function: str, name: str, value) -> None:
    """``value`` is a bool (a string such as "False" or an int would otherwise be taken as truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{function}: {name} must be a bool, got {value!r} ({type(value).__name__})")


INT64_MAX = 2**63 - 1


def check_int(function: str, name: str, value, minimum: int = 1) -> None:
    """``value`` is an int (not a bool) >= ``minimum`` that fits the ops' int64 arguments."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{function}: {name} must be an int >= {minimum}, got {value!r}")
    if value > INT64_MAX:
        raise ValueError(f"{function}: {name} must be an int <= 2**63 - 1 (int64), got {value!r}")


def check_finite_number(function: str, name: str, value) -> None:
    """``value`` is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{function}: {name} must be a finite number, got {value!r}")


def check_generator(function: str, generator, device: torch.device) -> None:
    """``generator`` is None or a torch.Generator of ``device``'s type (it draws noise there)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{function}: generator must be a torch.Generator or None, "
                        f"got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"{function}: generator must be a {device.type} generator (the noise is drawn on "
                         f"{device}), got a {generator.device.type} one")


def check_input(function: str, x, channels: int | None = None, rank: int | None = None,
                device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
    """``x`` is a floating-point tensor (N, channels, ...) of ``rank`` dimensions (None: any channels,
    any rank >= 2), on ``device`` and of ``dtype`` when given (the module's parameters'); the message names
    what the module expected."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{function}: input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{function}: input must be a floating-point tensor, got {x.dtype}")
    rank_ok = x.dim() == rank if rank is not None else x.dim() >= 2
    if not rank_ok or (channels is not None and x.shape[1] != channels):
        layout = "(N, C, H, W)" if rank == 4 else "(N, C, *spatial)"
        wanted = layout if channels is None else layout.replace("C", str(channels))
        raise ValueError(f"{function}: input must be {wanted}, got shape {tuple(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"{function}: input must be on the module's device {device}, got {x.device}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{function}: input must have the module's dtype {dtype} (its parameters'; convert one "
                        f"with .to()), got {x.dtype}")
