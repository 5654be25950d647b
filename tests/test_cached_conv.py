"""cached_conv2d (issue 17): a convolution evaluated from a cache of its input's last rows, on every
backend that runs here against the reference (every dtype, odd sizes, strided caches, a position and a
row, stride 2), against the full masked and shifted convolutions it stands for, autograd through its
formula, opcheck, and bad input naming the argument (public function, C++ op, Triton op)."""
import math
import os
import subprocess
import sys

import pytest
import torch

import gmkernels as gmk
from conftest import assert_close_sum, backends_under_test, noncontiguous, supported_dtypes
from gmkernels.ops.cached_conv import cached_conv2d
from gmkernels.reference import cached_conv as reference
from gmkernels.reference.masked_conv import conv_mask

BACKENDS = backends_under_test("cpu")
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no fast backend runs here")


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# (N, Cin, R, Wp, Cout, kh, kw, column, count, stride)
SHAPES = {
    "position": (3, 5, 2, 9, 7, 2, 3, 4, 1, 1),
    "row": (2, 6, 3, 13, 5, 2, 3, 0, 11, 1),
    "row-stride-2": (2, 4, 2, 12, 3, 2, 2, 1, 5, 2),
    "extra-rows": (1, 3, 5, 8, 4, 3, 5, 2, 2, 1),
    "many-taps": (2, 90, 2, 40, 9, 2, 13, 3, 1, 1),  # 2340 taps: more than one CUDA tile
    "one-by-one": (4, 7, 1, 5, 6, 1, 1, 2, 3, 1),
}


def make(shape, dtype, bias=True, seed=0):
    n, cin, r, wp, cout, kh, kw, column, count, stride = shape
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, cin, r, wp, generator=g, dtype=torch.float64)
    weight = torch.randn(cout, cin, kh, kw, generator=g, dtype=torch.float64) / math.sqrt(cin * kh * kw)
    b = torch.randn(cout, generator=g, dtype=torch.float64) if bias else None
    cast = [t if t is None else t.to(dtype) for t in (rows, weight, b)]
    return cast, dict(column=column, count=count, stride=stride)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_the_reference(backend, shape, bias):
    for dtype in supported_dtypes(backend):
        (rows, weight, b), options = make(SHAPES[shape], dtype, bias)
        out = cached_conv2d(rows, weight, b, backend=backend, **options)
        expected = reference.cached_conv2d(rows.double(), weight.double(), None if b is None else b.double(),
                                           options["column"], options["count"], options["stride"])
        assert out.dtype == dtype and out.shape == expected.shape
        assert_close_sum(out, expected, dtype, terms=weight[0].numel())


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_caches_and_parameters(backend):
    """A cache read through strides (transposed, gaps of NaN) and a window inside a larger buffer, as the
    models' caches are."""
    (rows, weight, b), options = make(SHAPES["row"], torch.float32)
    expected = reference.cached_conv2d(rows, weight, b, *options.values())
    strided = [noncontiguous(t) for t in (rows, weight, b)]
    out = cached_conv2d(*strided, backend=backend, **options)
    assert_close_sum(out, expected, torch.float32, terms=weight[0].numel())
    buffer = torch.full((2, 6, 5, 13), float("nan"))
    buffer[:, :, :3] = rows
    out = cached_conv2d(buffer[:, :, 1:3], weight[:, :, :2], b, backend=backend, **options)
    expected = reference.cached_conv2d(rows[:, :, 1:3], weight[:, :, :2], b, *options.values())
    assert_close_sum(out, expected, torch.float32, terms=weight[0].numel())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    (rows, weight, b), options = make(SHAPES["position"], torch.float32)
    assert cached_conv2d(rows[:0], weight, b, backend=backend, **options).shape == (0, 7, 1)


# (N, Cin, R, Wp, Cout, kh, kw, column, count, stride): several tiles of the CPU kernel, tiles ending inside
# a sample's row (2340 taps: 93 pairs a tile; 3000 output channels: 47)
TILED = {
    "many-taps": (5, 90, 2, 52, 9, 2, 13, 0, 37, 1),
    "many-outputs": (3, 2, 1, 70, 3000, 1, 3, 1, 31, 2),
}


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", TILED)
def test_tiles_of_the_cpu_kernel(shape, dtype):
    """On one thread, then on two (tiles in parallel, one row's split between threads too)."""
    (rows, weight, b), options = make(TILED[shape], dtype)
    expected = reference.cached_conv2d(rows.double(), weight.double(), b.double(), *options.values())
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out = cached_conv2d(noncontiguous(rows), weight, b, backend="cpu", **options)
        assert_close_sum(out, expected, dtype, terms=weight[0].numel())
    torch.set_num_threads(2)
    (rows, weight, b), options = make(SHAPES["row"], dtype)
    rows, options["count"] = torch.randn(71, *rows.shape[1:]).to(dtype), 7  # 497 pairs: tiles of 249, 248
    out = cached_conv2d(rows, weight, b, backend="cpu", **options)
    expected = reference.cached_conv2d(rows.double(), weight.double(), b.double(), *options.values())
    assert_close_sum(out, expected, dtype, terms=weight[0].numel())


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend is not built")
def test_more_threads_than_tiles_of_64_pairs():
    """100 threads, 6401 pairs: 100 tiles of 65 would end past the last pair; every pair once."""
    torch.set_num_threads(100)
    rows, weight, b = torch.randn(37, 7, 1, 175), torch.randn(6, 7, 1, 1), torch.randn(6)
    out = cached_conv2d(rows, weight, b, column=2, count=173, backend="cpu")
    expected = reference.cached_conv2d(rows.double(), weight.double(), b.double(), 2, 173, 1)
    assert_close_sum(out, expected, torch.float32, terms=7)


BOUNDED_SCRATCH = """
import sys, torch, gmkernels
from gmkernels.ops.cached_conv import cached_conv2d
def peak_mb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
torch.set_num_threads(1)
width, kw = 2**22, 64  # (outputs x taps) window matrix in float: 2^22 x 64 x 4 B = 1 GiB
rows = torch.randn(1, 1, 1, width + kw - 1)
weight = torch.randn(1, 1, 1, kw)
cached_conv2d(rows[..., :kw + 7], weight, count=8, backend="cpu")
before = peak_mb()
out = cached_conv2d(rows, weight, count=width, backend="cpu")
growth = peak_mb() - before - out.numel() * 4 / 2**20
for t in (0, width // 2 + 3, width - 1):
    expected = (rows[0, 0, 0, t:t + kw].double() * weight.flatten().double()).sum()
    assert abs(out[0, 0, t].item() - expected.item()) < 1e-4 * kw, (t, out[0, 0, t].item(), expected.item())
print(growth)
"""


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend is not built")
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc/self/status (Linux)")
def test_the_cpu_kernel_scratch_is_bounded():
    """2^22 outputs of 64 taps (a 1 GiB float window matrix if it were built whole), in a fresh process:
    its peak resident memory grows by the output and less than 64 MiB more."""
    result = subprocess.run([sys.executable, "-c", BOUNDED_SCRATCH], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) < 64


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_reference_on_cuda(backend, shape):
    for dtype in supported_dtypes(backend):
        (rows, weight, b), options = make(SHAPES[shape], dtype)
        out = cached_conv2d(noncontiguous(rows.cuda()), weight.cuda(), b.cuda(), backend=backend, **options)
        expected = reference.cached_conv2d(rows.double(), weight.double(), b.double(), *options.values())
        assert_close_sum(out.cpu(), expected, dtype, terms=weight[0].numel())


# --- against the full convolutions it stands for -----------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize(("mask_type", "groups"), [("A", 3), ("B", 1), ("B", 3)])
def test_a_masked_conv_at_one_position_from_its_rows(backend, mask_type, groups):
    """PixelCNN's k×k masked conv at (i, j) from the cache of rows i - k//2 … i (padded by k//2 columns),
    with the kernel's rows at and above the centre; the rows below and the pixels right of (i, j) are
    garbage in the cache (they are masked)."""
    k, cin, cout, height, width = 5, 6, 9, 6, 7
    dtype = torch.float64 if backend in ("reference", "cpu") else torch.float32
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cin, height, width, generator=g, dtype=dtype)
    weight = torch.randn(cout, cin, k, k, generator=g, dtype=dtype)
    bias = torch.randn(cout, generator=g, dtype=dtype)
    full = gmk.masked_conv2d(x, weight, bias, mask_type=mask_type, color_groups=groups, backend="reference")
    masked = (weight * conv_mask(k, mask_type, cin, cout, groups).to(dtype))[:, :, :k // 2 + 1]
    padded = torch.nn.functional.pad(x, (k // 2, k // 2, k // 2, 0))
    for i, j in [(0, 0), (3, 4), (5, 6), (2, 0)]:
        rows = padded[:, :, i:i + k // 2 + 1].clone()
        rows[:, :, -1, k // 2 + j + 1:] = 1e3  # the masked future of row i
        out = cached_conv2d(rows, masked, bias, column=j, backend=backend)
        assert_close_sum(out[:, :, 0], full[:, :, i, j], dtype, terms=cin * k * k)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize(("shift", "kernel"), [("down", (2, 3)), ("down_right", (2, 2))])
def test_a_shifted_conv_row_from_its_rows(backend, shift, kernel):
    """PixelCNN++'s shifted conv: row i from rows i - kh + 1 … i, at every column and at even columns."""
    kh, kw = kernel
    before = (kw - 1) // 2 if shift == "down" else kw - 1
    dtype = torch.float64 if backend in ("reference", "cpu") else torch.float32
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 5, 9, generator=g, dtype=dtype)
    weight = torch.randn(6, 4, kh, kw, generator=g, dtype=dtype)
    bias = torch.randn(6, generator=g, dtype=dtype)
    full = gmk.shifted_conv2d(x, weight, bias, shift=shift, backend="reference")
    padded = torch.nn.functional.pad(x, (before, kw - 1 - before, kh - 1, 0))
    for i in range(5):
        rows = padded[:, :, i:i + kh]
        out = cached_conv2d(rows, weight, bias, count=9, backend=backend)
        assert_close_sum(out, full[:, :, i], dtype, terms=4 * kh * kw)
        even = cached_conv2d(rows, weight, bias, count=5, stride=2, backend=backend)
        assert_close_sum(even, full[:, :, i, ::2], dtype, terms=4 * kh * kw)


# --- autograd, opcheck -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_through_the_formula(backend):
    dtype = torch.float64 if backend == "cpu" else torch.float32
    (rows, weight, b), options = make(SHAPES["row-stride-2"], dtype)
    inputs = [t.requires_grad_() for t in (rows, weight, b)]
    out = cached_conv2d(*inputs, backend=backend, **options)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad)
    expected = torch.autograd.grad(reference.cached_conv2d(*inputs, *options.values()), inputs, grad)
    for actual, wanted in zip(grads, expected):
        torch.testing.assert_close(actual, wanted)


LOW_LEVEL = [namespace for namespace, backend in (("gmkernels", "cpu"), ("gmk_triton", "triton"))
             if backend in BACKENDS]


@pytest.mark.parametrize("namespace", LOW_LEVEL)
def test_opcheck(namespace):
    op = getattr(torch.ops, namespace).cached_conv2d
    dtype = torch.float64 if namespace == "gmkernels" else torch.float32
    (rows, weight, b), options = make(SHAPES["row-stride-2"], dtype)
    torch.library.opcheck(op, (rows.requires_grad_(), weight.requires_grad_(), b, *options.values()))


# --- bad input -------------------------------------------------------------------------------------------

def _good():
    (rows, weight, b), options = make(SHAPES["position"], torch.float32)
    return dict(rows=rows, weight=weight, bias=b, **options)


BAD_INPUTS = {
    "rows-not-a-tensor": (dict(rows=[1.0]), TypeError, "rows"),
    "rows-integer": (dict(rows=torch.zeros(3, 5, 2, 9, dtype=torch.long)), TypeError, "rows"),
    "rows-3d": (dict(rows=torch.zeros(3, 5, 9)), ValueError, "rows"),
    "weight-channels": (dict(weight=torch.zeros(7, 4, 2, 3)), ValueError, "weight"),
    "weight-dtype": (dict(weight=torch.zeros(7, 5, 2, 3, dtype=torch.float64)), TypeError, "weight"),
    "weight-taller-than-rows": (dict(weight=torch.zeros(7, 5, 3, 3)), ValueError, "kh"),
    "bias-shape": (dict(bias=torch.zeros(6)), ValueError, "bias"),
    "bias-dtype": (dict(bias=torch.zeros(7, dtype=torch.float64)), TypeError, "bias"),
    "column-negative": (dict(column=-1), ValueError, "column"),
    "count-zero": (dict(count=0), ValueError, "count"),
    "stride-zero": (dict(stride=0), ValueError, "stride"),
    "window-past-the-end": (dict(column=7), ValueError, "window"),
    "row-past-the-end": (dict(column=0, count=3, stride=4), ValueError, "window"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_the_argument(case):
    change, error, match = BAD_INPUTS[case]
    arguments = {**_good(), **change}
    with pytest.raises(error, match=match):
        cached_conv2d(**arguments)
    positional = [arguments[name] for name in ("rows", "weight", "bias", "column", "count", "stride")]
    for namespace in LOW_LEVEL:
        if case in ("rows-not-a-tensor",):
            continue  # the schema rejects it before the op (a RuntimeError of the dispatcher)
        with pytest.raises(error, match=match):
            getattr(torch.ops, namespace).cached_conv2d(*positional)


# --- the benchmark ---------------------------------------------------------------------------------------

def test_the_benchmark_cases_run_on_cpu():
    harness = pytest.importorskip("gmkernels.benchmarks.harness")
    bench = pytest.importorskip("gmkernels.benchmarks.ops.cached_conv")
    assert "cached_conv" in harness.family_names()
    for case in bench.cases("cpu", quick=True):
        case.peers = {name: peer for name, peer in case.peers.items() if name != harness.COMPILED}
        result = harness.run_case(case, "cpu", repeats=1, copy_gbps=1.0)
        by_peer = {peer["peer"]: peer for peer in result["results"]}
        assert by_peer["gmk:cpu"]["status"] == "ok" and by_peer[harness.EAGER]["status"] == "ok"
        torch.testing.assert_close(case.peers["gmk:cpu"](), case.peers[harness.EAGER]())
