"""Shared test setup: Triton's interpreter without a GPU, per-dtype tolerances, backends, layouts, seeds.

Test modules import the helpers from here (``from conftest import assert_close``); the fixtures
apply themselves.
"""
import math
import os
import zlib

import pytest
import torch

# Before anything imports Triton (gmkernels does): @triton.jit picks the interpreter at decoration.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import gmkernels as gmk  # noqa: E402

# (atol, rtol) of a result computed in a dtype against the float64 reference of the same inputs.
# "forward": a value computed in float32 (or float64) and rounded once to the dtype. "grad": the
# same for one element; autograd's sum of the rounded elements of a broadcast input's gradient
# gets atol * sqrt(terms) (see assert_close). float32 gradients have more atol: s * (1 - s) in
# float32 (PyTorch's own sigmoid backward too) loses the small 1 - s of a saturated gate.
TOLERANCES = {
    torch.float64: {"forward": (1e-12, 1e-10), "grad": (1e-12, 1e-10)},
    torch.float32: {"forward": (1e-6, 1e-5), "grad": (1e-5, 1e-5)},
    torch.float16: {"forward": (1e-5, 1e-3), "grad": (1e-3, 2e-3)},
    torch.bfloat16: {"forward": (1e-4, 8e-3), "grad": (8e-3, 1.6e-2)},
}
DTYPES = tuple(TOLERANCES)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, kind: str = "forward",
                 terms: int = 1):
    """``actual``, computed in ``dtype``, matches ``expected`` within TOLERANCES[dtype][kind]; NaN never does.

    ``terms``: how many rounded elements autograd summed into each element of ``actual`` (a
    broadcast input's gradient); their rounding errors add up like a random walk.
    """
    atol, rtol = TOLERANCES[dtype][kind]
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    atol *= max(terms, 1) ** 0.5
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


# (atol per sqrt(term), rtol) of a sum of products (a convolution, a GEMM) computed in a dtype, float32
# accumulation and one rounding, against the float64 reference of the same inputs: the error grows like
# sqrt(terms).
SUM_TOLERANCES = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (2e-6, 1e-5),
    torch.float16: (2e-4, 2e-3),
    torch.bfloat16: (2e-3, 1.6e-2),
}


def assert_close_sum(actual, expected, dtype, terms, roundings=1):
    """``actual`` is a sum of ``terms`` products computed in ``dtype``; ``expected`` the float64 reference.

    ``roundings``: how many intermediate results of the dtype the value went through (their errors add).
    """
    atol, rtol = (roundings * tol for tol in SUM_TOLERANCES[dtype])
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    atol *= math.sqrt(max(terms, 1))
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


@pytest.fixture
def exact_float32():
    """float32 compared at float32's tolerances: TF32 off (cuDNN and the Triton kernels follow it)."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved


def backends_under_test(device: str = "cpu") -> list[str]:
    """The backends to compare with the reference on ``device`` here."""
    return [name for name in gmk.available_backends(device) if name != "reference"]


def supported_dtypes(backend: str) -> tuple[torch.dtype, ...]:
    """float32/16 and bfloat16 everywhere; float64 only where the design promises it."""
    return DTYPES if backend in ("reference", "cpu") else tuple(d for d in DTYPES if d != torch.float64)


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values, stored transposed with a gap after every element; the gaps hold NaN.

    Every dimension of size > 1 gets a stride that neither row- nor column-major order would
    give it, and a kernel that reads the wrong element reads NaN.
    """
    shape = [2 * size for size in reversed(t.shape)]
    buffer = torch.full(shape, float("nan"), dtype=t.dtype, device=t.device)
    view = buffer.permute(*reversed(range(t.dim())))[tuple(slice(None, None, 2) for _ in t.shape)]
    return view.copy_(t)


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values, contiguous, but one element past an aligned address (vector loads must not assume)."""
    buffer = torch.full((t.numel() + 1,), float("nan"), dtype=t.dtype, device=t.device)
    return buffer[1:].view(t.shape).copy_(t)


def compile_triton_for_sm90(module: str, kernels: list[tuple[str, dict, dict]]) -> None:
    """Compiles Triton kernels for sm_90 without a GPU, in a fresh process without TRITON_INTERPRET
    (whose kernels cannot be compiled): what the interpreter cannot check, types and lowering.

    ``kernels``: (kernel name in ``module``, signature, constexprs), as ``triton.compiler.ASTSource``
    takes them.
    """
    import subprocess
    import sys

    script = (
        "import sys, triton, importlib\n"
        "from triton.backends.compiler import GPUTarget\n"
        "from triton.compiler import ASTSource\n"
        f"module = importlib.import_module({module!r})\n"
        f"for name, signature, constexprs in {kernels!r}:\n"
        "    source = ASTSource(fn=getattr(module, name), signature=signature, constexprs=constexprs)\n"
        "    assert triton.compile(source, target=GPUTarget('cuda', 90, 32)).asm['cubin'], name\n")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def pytest_make_parametrize_id(config, val, argname):
    """Readable test ids: float32, 3x6x5, noncontiguous (not dtype0, shape3, layout1)."""
    if isinstance(val, torch.dtype):
        return str(val).removeprefix("torch.")
    if isinstance(val, tuple) and all(isinstance(size, int) for size in val):
        return "x".join(map(str, val))
    if callable(val) and hasattr(val, "__name__") and val.__name__ != "<lambda>":
        return val.__name__
    return None


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seed(request):
    """Fresh random inputs per test, the same on every run: the seed is a hash of the test's id."""
    value = zlib.crc32(request.node.nodeid.encode())  # not hash(): str hashes change per process
    torch.manual_seed(value)
    return value
