"""Backend names, what can run where, and which one a call uses.

Precedence: the call's ``backend=`` > ``use_backend(...)`` > ``$GMK_BACKEND`` > ``"auto"``.
A named backend that cannot run the given tensors raises; only ``"auto"`` falls back.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass, field

import torch

from ._extension import BUILD_INFO, has_extension

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
_FLOAT_TYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})
_ALL_FLOAT_TYPES = _FLOAT_TYPES | {torch.float64}

_selected: list[str] = []  # use_backend's stack; a plain list so torch.compile can trace reads of it


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops in this block on backend ``name`` (unless a call names its own)."""
    _selected.append(check_backend_name(name))
    try:
        yield
    finally:
        _selected.pop()


def requested_backend(backend: str) -> str:
    if backend != "auto":
        return check_backend_name(backend)
    if _selected:
        return _selected[-1]
    return check_backend_name(os.environ.get("GMK_BACKEND", "auto"))


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _runs_on(backend: str, device_type: str) -> bool:
    if backend == "reference":
        return True
    if backend == "cpu":
        return device_type == "cpu" and has_extension()
    if backend == "cuda":
        return device_type == "cuda" and BUILD_INFO["with_cuda"] and torch.cuda.is_available()
    if backend == "triton":
        if not TRITON_INSTALLED:
            return False
        if device_type == "cuda":
            return torch.cuda.is_available()
        return device_type == "cpu" and triton_interpreted()
    return False


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """The backends that can run tensors on ``device`` here (``"auto"`` excluded)."""
    device_type = torch.device(device).type
    return [name for name in BACKENDS[1:] if _runs_on(name, device_type)]


@dataclass(frozen=True)
class OpBackends:
    """What one op's backends support, and the order ``auto`` tries them in per device type.

    ``dtypes`` names the backends that have kernels for the op, with the dtypes each takes;
    ``auto_order`` holds the fastest first, as measured by the op's benchmark on a GPU.
    """

    op: str
    dtypes: dict[str, frozenset] = field(default_factory=lambda: {
        "reference": _ALL_FLOAT_TYPES, "cpu": _ALL_FLOAT_TYPES, "cuda": _FLOAT_TYPES, "triton": _FLOAT_TYPES})
    auto_order: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")})

    def why_not(self, backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
        """None if ``backend`` can run this op on these tensors, else the reason."""
        if not _runs_on(backend, device.type):
            return f"it cannot run on {device.type} tensors here (available: {available_backends(device)})"
        if backend not in self.dtypes:
            return f"it has no kernel for this op yet (backends with one: {', '.join(self.dtypes)})"
        if dtype not in self.dtypes[backend]:
            return f"it does not support {dtype}"
        return None

    def select(self, backend: str, device: torch.device, dtype: torch.dtype) -> str:
        name = requested_backend(backend)
        if name == "auto":
            for candidate in self.auto_order.get(device.type, ("reference",)):
                if self.why_not(candidate, device, dtype) is None:
                    return candidate
            return "reference"
        reason = self.why_not(name, device, dtype)
        if reason is not None:
            raise ValueError(f"{self.op}: backend {name!r} was requested but {reason}")
        return name
