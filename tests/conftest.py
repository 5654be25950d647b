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


def assert_nonfinite_like(actual, expected, infinity_may_be_nan=False):
    """README's rule for non-finite values: ``actual`` is non-finite exactly where ``expected`` (the
    reference, in the same dtype) is, NaN where it is NaN, the same ±inf where it is ±inf.
    ``infinity_may_be_nan``: the fused actnorm + 1x1 ops, which may give NaN (inf - inf in their sums)
    where the reference gives ±inf. Returns the mask of the finite elements."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    finite = expected.isfinite()
    assert torch.equal(actual.isfinite(), finite), f"non-finite at other positions: {actual} vs {expected}"
    assert actual[expected.isnan()].isnan().all(), f"NaN of the reference not NaN: {actual} vs {expected}"
    infinite = expected.isinf() & ~(actual.isnan() if infinity_may_be_nan else torch.zeros_like(finite))
    assert torch.equal(actual[infinite], expected[infinite]), f"infinities differ: {actual} vs {expected}"
    return finite


def assert_nonfinite_as_reference(actual, expected, dtype, infinity_may_be_nan=False):
    """:func:`assert_nonfinite_like`, and the finite elements within TOLERANCES[dtype]."""
    finite = assert_nonfinite_like(actual, expected, infinity_may_be_nan)
    assert_close(actual[finite], expected[finite], dtype)


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


# --- every Triton specialisation the interpreter launches, compiled for sm_90 by the last test ------------
# The interpreter cannot catch what only the GPU compiler rejects (types, lowering, tl.dot shapes,
# constexpr misuse). So, under the interpreter, every launch records its kernel's specialisation: the
# argument types as Triton's JIT would see them and the constexpr values; tests/test_zz_triton_compile.py
# (moved to the end of the session by pytest_collection_modifyitems) compiles each distinct one for sm_90
# in a fresh process without TRITON_INTERPRET. Three rules make them the GPU's specialisations: a constexpr
# named INTERPRETED (this project's switch for the interpreter's workarounds) compiles as False; a float32
# launch with PRECISION "ieee" (tl.dot's input precision; the tests turn TF32 off, exact_float32, where on a
# GPU float32 defaults to it) compiles with "tf32" too; and a kernel launched through a module-level autotuner
# compiles with each of that autotuner's GPU configs instead of the interpreter's one.
TRITON_LAUNCHES: dict[str, dict] = {}
TRITON_UNRECORDED: dict[str, str] = {}  # kernel: why its launch could not be recorded (the check reports it)
_AUTOTUNERS: list = []  # the autotuners whose run is on the stack


_TENSOR_TYPES = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
                 torch.uint8: "u8", torch.bool: "i1"}


def _triton_type(value) -> str:
    """The signature type of a kernel argument, as Triton's JIT gives it on a GPU (without the
    specialisation of integers equal to 1 and of 16-byte alignment: the general code path)."""
    try:
        from triton.runtime.jit import mangle_type  # Triton's own, where it has one
        return mangle_type(value)
    except ImportError:
        pass
    if isinstance(value, torch.Tensor):
        return "*" + _TENSOR_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "u64" if value >= 2**63 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a kernel argument of type {type(value).__name__}")


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"constexpr value {value!r} of type {type(value).__name__} cannot be recorded")


def _record_triton_launch(fn, arg_names, args, kwargs):
    import inspect
    bound = dict(zip(arg_names, args))
    options = {}
    for name, value in kwargs.items():
        (bound if name in arg_names else options)[name] = value
    parameters = inspect.signature(fn).parameters
    for name in arg_names:
        if name not in bound and parameters[name].default is not inspect.Parameter.empty:
            bound[name] = parameters[name].default
    signature, constexprs = {}, {}
    for name in arg_names:
        value = bound[name]
        annotation = parameters[name].annotation
        if "constexpr" in str(annotation) or value is None:
            signature[name] = "constexpr"
            constexprs[name] = False if name == "INTERPRETED" else _jsonable(value)
        elif annotation is not inspect.Parameter.empty:  # a declared type (x: tl.int64) is the JIT's type
            from triton.runtime.jit import _normalize_ty
            signature[name] = _normalize_ty(annotation)
        else:
            signature[name] = _triton_type(value)
    tuner = None
    if _AUTOTUNERS:
        module = inspect.getmodule(fn)
        tuner = next((name for name, value in vars(module).items() if value is _AUTOTUNERS[-1]), None)
        if tuner is not None:  # its GPU configs replace the interpreter's one: record the kernel's arguments
            for name in _AUTOTUNERS[-1].configs[0].kwargs:
                signature.pop(name, None)
                constexprs.pop(name, None)
            options = {}
    options = {name: _jsonable(value) for name, value in options.items()
               if name in ("num_warps", "num_stages", "num_ctas", "maxnreg") and value is not None}
    launch = {"module": fn.__module__, "kernel": fn.__qualname__, "signature": signature,
              "constexprs": constexprs, "options": options, "autotuner": tuner}
    import json
    TRITON_LAUNCHES.setdefault(json.dumps(launch, sort_keys=True), launch)
    floats = [kind for kind in signature.values() if kind[:2] in ("*f", "*b")]
    if constexprs.get("PRECISION") == "ieee" and floats and all(kind == "*fp32" for kind in floats):
        launch = {**launch, "constexprs": {**constexprs, "PRECISION": "tf32"}}
        TRITON_LAUNCHES.setdefault(json.dumps(launch, sort_keys=True), launch)


if os.environ.get("TRITON_INTERPRET") == "1" and gmk._backend.TRITON_INSTALLED:
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction

    _interpreted_run = InterpretedFunction.run
    _autotuner_run = Autotuner.run

    def _recording_run(self, *args, grid, warmup, **kwargs):
        try:
            _record_triton_launch(self.fn, self.arg_names, args, kwargs)
        except Exception as error:  # noqa: BLE001 - the launch itself must go on; the check fails with this
            TRITON_UNRECORDED[f"{self.fn.__module__}.{self.fn.__qualname__}"] = repr(error)
        return _interpreted_run(self, *args, grid=grid, warmup=warmup, **kwargs)

    def _recording_autotuner_run(self, *args, **kwargs):
        _AUTOTUNERS.append(self)
        try:
            return _autotuner_run(self, *args, **kwargs)
        finally:
            _AUTOTUNERS.pop()

    InterpretedFunction.run = _recording_run
    Autotuner.run = _recording_autotuner_run


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
    # Last: it compiles what the tests before it launched (see TRITON_LAUNCHES).
    items.sort(key=lambda item: item.path.name == "test_zz_triton_compile.py")
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
