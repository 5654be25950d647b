"""Helpers shared by the ops' declarations and public functions: the tensor argument checks (each raises a
TypeError or ValueError naming the function and the argument) and the flows' (N, C, positions) views."""
from __future__ import annotations

import contextlib

import math

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels' parameters and arithmetic use: float64 for float64 x, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_float_tensor(op: str, name: str, t) -> None:
    """``t`` is a floating-point tensor (any float dtype, any shape)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_tensor(function: str, name: str, t, rank: int | None = None, layout: str = "") -> None:
    """``t`` is a floating-point tensor, of ``rank`` dimensions when given (``layout`` names them)."""
    check_float_tensor(function, name, t)
    if rank is not None and t.dim() != rank:
        raise ValueError(f"{function}: {name} must be {layout or f'{rank}-D'}, got shape {tuple(t.shape)}")


def check_like(function: str, name: str, t, x: torch.Tensor, shape=None, *, optional: bool = False) -> None:
    """``t`` is a tensor with x's dtype and device (and ``shape`` when given); None too when ``optional``."""
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        kind = "a torch.Tensor or None" if optional else "a torch.Tensor"
        raise TypeError(f"{function}: {name} must be {kind}, got {type(t).__name__}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{function}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype != x.dtype:
        raise TypeError(f"{function}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{function}: {name} must be on x's device {x.device}, got {t.device}")


def check_choice(function: str, name: str, value, choices: tuple) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{function}: {name} must be one of {choices}, got {value!r}")


def check_x(op: str, x) -> None:
    """x is a flow's (N, C, *spatial) floating-point input."""
    check_float_tensor(op, "x", x)
    if x.dim() < 2:
        raise ValueError(f"{op}: x must be (N, C, *spatial), got shape {tuple(x.shape)}")


def check_parameter(op: str, name: str, t, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    """``t`` is a floating-point tensor of ``shape`` on x's device (any float dtype: it is cast)."""
    check_float_tensor(op, name, t)
    if tuple(t.shape) != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} must be on x's device {x.device}, got {t.device}")


def check_kernel_parameter(function: str, name: str, t, x: torch.Tensor, shape) -> None:
    """``t`` is a parameter as the flows' kernels take it: ``shape``, on x's device, in x's compute dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{function}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{function}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype != compute_dtype(x.dtype):
        raise TypeError(f"{function}: {name} must be {compute_dtype(x.dtype)} for x of dtype {x.dtype}, "
                        f"got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{function}: {name} must be on x's device {x.device}, got {t.device}")


def as_3d(x: torch.Tensor) -> torch.Tensor:
    """x (N, C, *S) as the kernels' (N, C, positions) view (a copy only where no view exists)."""
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


@contextlib.contextmanager
def allocation_named(function: str, name: str, value, nbytes: int):
    """Runs the block; an allocation that fails in it (a size argument valid but too large for the memory)
    is re-raised as a RuntimeError naming the function and the argument that asked for it."""
    try:
        yield
    except (RuntimeError, MemoryError) as error:
        if not (isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "allocate memory" in str(error)):
            raise
        raise RuntimeError(f"{function}: {name}={value!r} needs {nbytes / 2**30:.1f} GiB, which could not be "
                           f"allocated ({type(error).__name__})") from None
