"""Argument checks shared by the Triton ops: the same errors, naming the argument, as the C++ ops raise."""
from __future__ import annotations

import torch


def fail(op: str, error: type, message: str):
    raise error(f"gmk_triton::{op}: {message}")


def check_like_x(op: str, name: str, x: torch.Tensor, t, shape) -> None:
    """``t`` is a tensor of ``shape`` with x's dtype and device."""
    if not isinstance(t, torch.Tensor):
        fail(op, TypeError, f"{name} must be a tensor, got {type(t).__name__}")
    _check_matches(op, name, x, t, shape, x.dtype, f"have x's dtype {x.dtype}")


def check_float32_parameter(op: str, name: str, x: torch.Tensor, t, shape) -> None:
    """``t`` is a float32 parameter of ``shape`` on x's device (the flows' kernels take float32 parameters)."""
    _check_matches(op, name, x, t, shape, torch.float32, f"be float32 for x of dtype {x.dtype}")


def _check_matches(op: str, name: str, x: torch.Tensor, t: torch.Tensor, shape, dtype: torch.dtype,
                   dtype_rule: str) -> None:
    if tuple(t.shape) != tuple(shape):
        fail(op, ValueError, f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.dtype != dtype:
        fail(op, TypeError, f"{name} must {dtype_rule}, got {t.dtype}")
    if t.device != x.device:
        fail(op, ValueError, f"{name} must be on x's device {x.device}, got {t.device}")


def indexable_in_32_bits(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t``, or its contiguous copy when an element lies 2^31 or more elements past its first: the kernels
    index their weights and biases (small tensors) in 32 bits, so a view of a huge storage is copied."""
    if t is None or t.numel() == 0:
        return t
    reach = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    return t if reach < 2**31 else t.contiguous()
