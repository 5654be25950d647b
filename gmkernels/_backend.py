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

from ._cuda_archs import kernel_image_for, no_kernel_reason
from ._extension import BUILD_INFO, LOAD_ERROR, has_extension

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


def _cuda_device_index(device: torch.device) -> int:
    return torch.cuda.current_device() if device.index is None else device.index


_CUDA_PROBLEMS: dict[int, str | None] = {}  # per GPU index: an op call need not ask the driver again


@torch.compiler.assume_constant_result  # a GPU's answer never changes: torch.compile need not trace it
def _cuda_kernels_problem_on(index: int) -> str | None:
    if index not in _CUDA_PROBLEMS:
        _CUDA_PROBLEMS[index] = _find_cuda_kernels_problem(index)
    return _CUDA_PROBLEMS[index]


def _find_cuda_kernels_problem(index: int) -> str | None:
    if not has_extension():
        return f"gmkernels._C is not built ({LOAD_ERROR})"
    if not BUILD_INFO["with_cuda"]:
        return "gmkernels._C was built without its CUDA kernels"
    capability = tuple(torch.cuda.get_device_capability(index))
    if kernel_image_for(capability, BUILD_INFO["cuda_archs"]) is None:
        return f"GPU {index} ({torch.cuda.get_device_name(index)}): " + no_kernel_reason(capability,
                                                                                       BUILD_INFO["cuda_archs"])
    return None


def cuda_kernels_problem(device: str | torch.device = "cuda") -> str | None:
    """None if the CUDA kernels of ``_C`` can run on ``device`` (a GPU), else the reason: no GPU, ``_C``
    built without CUDA, or no SASS for this GPU's arch and no PTX that the driver can compile for it."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "no CUDA device is visible" if device.type == "cuda" else f"{device.type} is not a CUDA device"
    return _cuda_kernels_problem_on(_cuda_device_index(device))


def cuda_kernels_on(index: int) -> str:
    """What GPU ``index`` runs of ``_C``'s CUDA kernels: "CUDA kernels from SASS 8.0", or why none."""
    problem = cuda_kernels_problem(torch.device("cuda", index))
    if problem is not None:
        return f"no CUDA kernels: {problem}"
    capability = tuple(torch.cuda.get_device_capability(index))
    return f"CUDA kernels from {kernel_image_for(capability, BUILD_INFO['cuda_archs'])}"


def _runs_on(backend: str, device: torch.device) -> bool:
    device_type = device.type
    if backend == "reference":
        return True
    if backend == "cpu":
        return device_type == "cpu" and has_extension()
    if backend == "cuda":
        return device_type == "cuda" and cuda_kernels_problem(device) is None
    if backend == "triton":
        if not TRITON_INSTALLED:
            return False
        if device_type == "cuda":
            return torch.cuda.is_available()
        return device_type == "cpu" and triton_interpreted()
    return False


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """The backends that can run tensors on ``device`` here (``"auto"`` excluded)."""
    device = torch.device(device)
    return [name for name in BACKENDS[1:] if _runs_on(name, device)]


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
        if not _runs_on(backend, device):
            why = f": {cuda_kernels_problem(device)}" if backend == "cuda" and device.type == "cuda" else ""
            return f"it cannot run on {device.type} tensors here{why} (available: {available_backends(device)})"
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
