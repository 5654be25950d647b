"""Our CUDA kernels, run on the CPU: each .cu compiled as host C++ against tests/cuda_emulation/shim.h
(one fiber per CUDA thread, per-block shared memory, barriers, WMMA; see shim.h and build.py) and
compared with the float64 reference on fresh random inputs.

The tensors are prepared as the _ops.cpp files prepare them (channels_last activations, weights
packed per live tap, split partials summed) and passed to the launchers as raw pointers. Every
buffer sits between NaN guards, which must be intact afterwards, and inputs must be unchanged; the
emulator's faults (barrier divergence, misaligned vector or WMMA pointers, WMMA arguments that
differ across a warp, shared memory over the launch's limit) and UBSan's reports fail the test.
Kernels whose path depends on the device run as on compute capability 9.0 and 7.5 (masked conv:
tensor cores or FMA tiles; the WaveNet kernels: the shared memory a block may opt in to), and the
tests check which kernel variant (tensor cores or FMA, 16-byte or scalar loads) ran. gated_cuda.cu
ran correctly on an H100: its tests validate the emulator.

Covered: gated, logistic_mixture, masked_conv, actnorm, coupling, invconv (conv1x1), causal_conv
(conv, grad_x, weight gradient partials, the fused layer and its backward's first pass),
wavenet_generate's block kernel and its cluster kernel (thread-block clusters, distributed shared
memory and cluster barriers: see shim.h), bias_act, upfirdn2d and cached_conv: every __global__ of csrc/
(test_every_kernel_is_emulated). Sizes past 2^31 elements: the last section runs the last blocks of such
grids (gmk_emu_run_last_clusters) of every kernel over untouched mappings.
"""
import contextlib
import ctypes
import functools
import importlib
import math
import mmap
import sys
import re

import pytest
import torch

import gmkernels.reference.actnorm as actnorm_reference
import gmkernels.reference.causal_conv as causal_reference
import gmkernels.reference.coupling as coupling_reference
import gmkernels.reference.gated as gated_reference
import gmkernels.reference.invconv as invconv_reference
import gmkernels.reference.logistic_mixture as lm_reference
import gmkernels.reference.masked_conv as conv_reference
from conftest import assert_close, assert_close_sum
from cuda_emulation import build
from test_logistic_mixture import REGIMES, relative_error
from test_logistic_mixture import TOLERANCES as LM_TOLERANCES

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
HALF_DTYPES = (torch.float16, torch.bfloat16)
ARCHS = {"sm90": (9, 0), "sm75": (7, 5)}
GUARD = 64  # NaN elements on each side of every buffer (a multiple of 16 bytes in every dtype)
_P, _I64 = ctypes.c_void_p, ctypes.c_int64
_PROTOTYPES = {
    "gmk_emu_set_device": [ctypes.c_int] * 3,
    "gmk_emu_take_faults": [ctypes.c_char_p, ctypes.c_int],
    "gmk_emu_take_launches": [ctypes.c_char_p, ctypes.c_int],
    "gmk_emu_gated": [ctypes.c_int, _I64, _I64, _I64, ctypes.c_int, ctypes.c_int, _P, _P, _P, _P, _P, _P],
    "gmk_emu_logistic_mixture": [ctypes.c_int, _P, ctypes.c_double, ctypes.c_int] + [_P] * 11,
    "gmk_emu_tap_gemm": [_P, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, _I64, _I64, _I64,
                         _P, _P, _P, _P],
    "gmk_emu_weight_grad": [_P, ctypes.c_int, ctypes.c_int, _I64, _I64, _I64, _P, _P, _P],
    "gmk_emu_actnorm_parts": [_I64, _I64, _I64],
    "gmk_emu_actnorm": [ctypes.c_int, _I64, _I64, _I64, ctypes.c_int, ctypes.c_int, _P, _P, _P, _P, _P, _P, _P, _I64],
    "gmk_emu_coupling_workspace": [_I64, _I64, _I64, ctypes.c_int],
    "gmk_emu_coupling": [ctypes.c_int, _P] + [ctypes.c_int] * 4 + [_P] * 10,
    "gmk_emu_conv1x1_fits": [_I64, _I64],
    "gmk_emu_conv1x1": [_I64, _I64, _I64, _I64, ctypes.c_int, _P, _P, _P, _P, _P],
    "gmk_emu_causal_conv": [_P, ctypes.c_int, ctypes.c_int, _P, _P, _P, _P, _P, _P],
    "gmk_emu_causal_conv_weight_grad": [_P, ctypes.c_int, _P, _P, _P, _P],
    "gmk_emu_wavenet_layer": [ctypes.c_int, _P, ctypes.c_double, ctypes.c_int, _P, _P, _P],
    "gmk_emu_max_layer_residual": [ctypes.c_int],
    "gmk_emu_wavenet_plan": [_P, _I64, ctypes.c_int, _I64, _I64, _I64, _P],
    "gmk_emu_wavenet_generate": [_P, _P, _P, ctypes.c_int, ctypes.c_int, _P],
    "gmk_emu_selftest_block_sum": [_P, _P, ctypes.c_int],
    "gmk_emu_selftest_missing_barrier": [_P],
    "gmk_emu_selftest_divergent_barrier": [_P],
    "gmk_emu_selftest_write": [_P],
    "gmk_emu_selftest_vector_load": [_P, _P],
    "gmk_emu_selftest_wmma": [ctypes.c_int, ctypes.c_int, _P, _P, _P, _P, ctypes.c_uint],
    "gmk_emu_selftest_round": [ctypes.c_int, _P, _P, _I64],
    "gmk_emu_selftest_dynamic_shared": [_P, _P, ctypes.c_int, ctypes.c_int],
    "gmk_emu_selftest_cluster_exchange": [_P, _P, ctypes.c_int, ctypes.c_int, _P],
    "gmk_emu_selftest_cluster_rank": [_P, _P, _P],
    "gmk_emu_selftest_max_active_clusters": [ctypes.c_uint, ctypes.c_uint, _P],
    "gmk_emu_run_last_clusters": [_I64],
}

_VOID = {"gmk_emu_set_device", "gmk_emu_selftest_round", "gmk_emu_run_last_clusters"}


class Emulator:
    """The emulation library: launchers that assert success and return the kernels they ran."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(str(path))
        for name, argtypes in _PROTOTYPES.items():
            getattr(self.lib, name).argtypes = argtypes
            getattr(self.lib, name).restype = None if name in _VOID else ctypes.c_int
        for name in ("gmk_emu_actnorm_parts", "gmk_emu_coupling_workspace"):
            getattr(self.lib, name).restype = ctypes.c_int64

    def set_device(self, arch, multiprocessors=132):
        self.lib.gmk_emu_set_device(*ARCHS[arch], multiprocessors)

    def run(self, name, *args):
        """Calls the launcher; asserts cudaSuccess and no fault; returns the kernels launched."""
        error = getattr(self.lib, name)(*args)
        message = ctypes.create_string_buffer(1024)
        faults = self.lib.gmk_emu_take_faults(message, len(message))
        launches = ctypes.create_string_buffer(1 << 16)
        self.lib.gmk_emu_take_launches(launches, len(launches))
        assert faults == 0, f"{name}: {faults} faults, the first: {message.value.decode()}"
        assert error == 0, f"{name} returned cudaError_t {error}"
        return launches.value.decode().splitlines()


@pytest.fixture(scope="module")
def emu():
    if not sys.platform.startswith("linux"):
        pytest.skip("the emulator needs Linux (ucontext fibers, mprotect fences)")
    if build.compiler() is None:
        pytest.skip("needs g++ (or $CXX) to compile the CUDA kernels for the CPU")
    return Emulator(build.build())


@pytest.fixture(autouse=True)
def default_device(emu):
    """Every test starts on compute capability 9.0 with 132 multiprocessors, whatever the last one set."""
    emu.set_device("sm90")


@pytest.fixture(autouse=True)
def no_sanitizer_reports(capfd):
    """UBSan (misaligned or out-of-bounds accesses, overflows) reports on stderr and carries on."""
    yield
    assert "runtime error" not in capfd.readouterr().err


def _bits(t):
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
FENCE = 16 * mmap.PAGESIZE  # inaccessible bytes on each side of a Buffer's memory
PROT_NONE = 0


def _fenced(numel, dtype):
    """A 1-D tensor in its own mapping, ending at most 64 bytes before an inaccessible fence (and one before
    it): a kernel's access far out of bounds is a SIGSEGV, which the emulator reports as a fault, rather than
    a corrupted heap."""
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    pages = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
    memory = mmap.mmap(-1, FENCE + pages + FENCE)
    base = torch.frombuffer(memory, dtype=torch.uint8).data_ptr()
    for fence in (base, base + FENCE + pages):
        assert _LIBC.mprotect(fence, FENCE, PROT_NONE) == 0, ctypes.get_errno()
    start = FENCE + (pages - nbytes) // 64 * 64
    return torch.frombuffer(memory, dtype=dtype, count=numel, offset=start)


class Buffer:
    """A tensor's memory (the values of ``memory``, in its memory order) between NaN guards, in a mapping
    between inaccessible fences.

    ``offset`` elements more before it make the address misaligned for 16-byte loads.
    """

    def __init__(self, memory, offset=0):
        memory = memory.contiguous()
        self.start = GUARD + offset
        self.buffer = _fenced(memory.numel() + self.start + GUARD, memory.dtype)
        self.buffer.fill_(math.nan if memory.is_floating_point() else -(2**62))  # integers: a wild index
        self.view = self.buffer[self.start:self.start + memory.numel()].view(memory.shape)
        self.view.copy_(memory)
        self.before = _bits(self.buffer).clone()

    @classmethod
    def empty(cls, shape, dtype):
        """An output: NaN everywhere (integers: -2^62), so an element the kernel does not write fails the
        comparison."""
        return cls(torch.full(shape, math.nan if dtype.is_floating_point else -(2**62), dtype=dtype))

    @property
    def ptr(self):
        return self.view.data_ptr()

    def check_unchanged(self):
        assert torch.equal(_bits(self.buffer), self.before), "a kernel wrote to an input"

    def check_guards(self):
        now, end = _bits(self.buffer), self.start + self.view.numel()
        assert torch.equal(now[:self.start], self.before[:self.start]), "write before the buffer"
        assert torch.equal(now[end:], self.before[end:]), "write past the buffer"


def _longs(*values):
    return (ctypes.c_int64 * len(values))(*values)


def _strides(t):
    return None if t is None else _longs(*t.stride())


# --- the emulator itself (tests/cuda_emulation/selftest.cu) ------------------------------------------

def _tf32(x):
    """float32 -> TF32 as cvt.rna.tf32.f32: to nearest on the top 19 bits, ties away from zero."""
    bits = x.view(torch.int32)
    finite = (bits & 0x7F800000) != 0x7F800000
    return torch.where(finite, ((bits + 0x1000) & ~0x1FFF).view(torch.float32), x)


def test_emulated_roundings_match_torch(emu):
    """__float2half_rn and __float2bfloat16_rn round to nearest even as torch does, with subnormals, ties,
    overflow, inf and NaN; __float_to_tf32 to nearest, ties away."""
    halfway = torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8, 1 + 3 * 2**-8, 2**-25, 3 * 2**-25, 65504.0,
                            65519.99, 65520.0, 1e-8, -0.0, 6e-5, 1 + 2**-10 + 2**-11])
    values = torch.cat([halfway, -halfway, torch.randn(2000) * torch.logspace(-30, 30, 2000),
                        torch.tensor([math.inf, -math.inf, math.nan, 3.4e38])]).float()
    for code, expected in ((1, values.half().float()), (2, values.bfloat16().float()), (0, _tf32(values))):
        out = torch.empty_like(values)
        emu.lib.gmk_emu_selftest_round(code, values.data_ptr(), out.data_ptr(), values.numel())
        torch.testing.assert_close(out, expected, atol=0, rtol=0, equal_nan=True, msg=f"dtype code {code}")


def test_emulated_block_reduction_with_shared_memory_and_shuffles(emu):
    values = torch.randn(300, dtype=torch.float64).float()
    out = Buffer.empty((3,), torch.float32)
    emu.run("gmk_emu_selftest_block_sum", values.data_ptr(), out.ptr, values.numel())
    expected = torch.stack([chunk.double().sum() for chunk in values.split(128)])  # one sum per block
    torch.testing.assert_close(out.view.double(), expected, atol=1e-5, rtol=1e-5)
    out.check_guards()


def test_emulator_exposes_a_missing_barrier(emu):
    """Threads run in turn between barriers: a read of a value another thread writes in the same phase sees
    the shared arena's NaN (threads in ascending order) or the value (descending): never all right."""
    out = torch.zeros(64)
    emu.run("gmk_emu_selftest_missing_barrier", out.data_ptr())
    assert out.isnan().any()


def test_emulator_faults_on_a_divergent_barrier(emu):
    out = torch.zeros(32)
    with pytest.raises(AssertionError, match="exited while 16 threads wait at __syncthreads"):
        emu.run("gmk_emu_selftest_divergent_barrier", out.data_ptr())


def test_emulator_faults_on_bad_addresses(emu, capfd):
    """A write to an invalid address (SIGSEGV in the kernel) and a misaligned 16-byte load are faults, as on
    the GPU, not the end of the test process; UBSan reports the misaligned access too."""
    with pytest.raises(AssertionError, match="SIGSEGV at address 0x10"):
        emu.run("gmk_emu_selftest_write", 16)
    values, out = torch.zeros(8), torch.zeros(32)
    with pytest.raises(AssertionError, match="__ldg: address .* is not 16-byte aligned"):
        emu.run("gmk_emu_selftest_vector_load", values[1:].data_ptr(), out.data_ptr())
    emu.run("gmk_emu_selftest_vector_load", values.data_ptr(), out.data_ptr())  # and the emulator carries on
    if build.SANITIZER[0] in build.flags(build.compiler()):
        assert "runtime error: reference binding to misaligned address" in capfd.readouterr().err


@pytest.mark.parametrize("a_col_major", [False, True], ids=["a-row-major", "a-col-major"])
@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
def test_emulated_wmma(emu, dtype, a_col_major):
    """d = a b + c on 16x16 tiles, a with a leading dimension of 24 elements."""
    a, b, c = torch.randn(16, 16, dtype=dtype), torch.randn(16, 16, dtype=dtype), torch.randn(16, 16)
    stored = torch.zeros(16, 24, dtype=dtype)
    stored[:, :16] = a.T if a_col_major else a
    d = Buffer.empty((16, 16), torch.float32)
    emu.run("gmk_emu_selftest_wmma", DTYPE_CODES[dtype], a_col_major, stored.data_ptr(), b.data_ptr(),
            c.data_ptr(), d.ptr, 24)
    if dtype == torch.float32:  # TF32 operands
        a, b = _tf32(a), _tf32(b)
    expected = a.double() @ b.double() + c.double()
    torch.testing.assert_close(d.view.double(), expected, atol=1e-5, rtol=1e-5)
    d.check_guards()


@pytest.mark.parametrize(("offset", "lda", "message"), [(1, 24, "not 32-byte aligned"),
                                                       (0, 20, "ldm 20 is not a multiple of 16 bytes"),
                                                       (0, 8, "ldm 8 < 16")])
def test_emulator_faults_on_bad_wmma_arguments(emu, offset, lda, message):
    storage = torch.zeros(16 * 24 + 16, dtype=torch.float16)
    b, c, d = torch.zeros(16, 16, dtype=torch.float16), torch.zeros(16, 16), torch.zeros(16, 16)
    with pytest.raises(AssertionError, match=message):
        emu.run("gmk_emu_selftest_wmma", 1, 0, storage[offset:].data_ptr(), b.data_ptr(), c.data_ptr(),
                d.data_ptr(), lda)


def test_emulated_dynamic_shared_memory_and_its_limits(emu):
    """Dynamic shared memory next to static; over 48 KB in all it takes cudaFuncSetAttribute's opt-in, which
    9.0 grants up to 227 KB and 7.5 up to 64 KB. The attribute is recorded per kernel and stays (as on a
    GPU), so the cases run from the smallest opt-in to the largest."""
    def launch(n, opt_in, arch="sm90"):
        emu.set_device(arch)
        values = torch.randn(2, n)
        out = torch.full((2, n), math.nan)
        error = emu.lib.gmk_emu_selftest_dynamic_shared(values.data_ptr(), out.data_ptr(), n, opt_in)
        emu.set_device("sm90")
        return error, values, out

    error, values, out = launch(1000, -1)  # 4 KB: no opt-in needed
    emu.run("gmk_emu_selftest_dynamic_shared", values.data_ptr(), out.data_ptr(), 1000, -1)
    torch.testing.assert_close(out, values.flip(1), atol=0, rtol=0)
    values, out = torch.randn(2, 12100), torch.zeros(2, 12100)  # 47.3 KB dynamic + 1 KB static
    with pytest.raises(AssertionError, match="more than the 49152 static or 49152 in all"):
        emu.run("gmk_emu_selftest_dynamic_shared", values.data_ptr(), out.data_ptr(), 12100, -1)
    assert launch(12500, -1)[0] == 1  # 50 KB without the opt-in: cudaErrorInvalidValue, as on a GPU
    assert launch(20000, 64 * 1024 + 4, "sm75")[0] == 1  # over 7.5's 64 KB
    values = torch.randn(2, 40000)  # 160 KB: 9.0 only
    out = torch.full_like(values, math.nan)
    emu.run("gmk_emu_selftest_dynamic_shared", values.data_ptr(), out.data_ptr(), 40000, 40000 * 4)
    torch.testing.assert_close(out, values.flip(1), atol=0, rtol=0)
    assert launch(100, 228 * 1024)[0] == 1  # over 9.0's 227 KB


# --- thread-block clusters (selftest.cu) ------------------------------------------------------------------

AFTER_WRITES, AFTER_READS, BEFORE_EXIT, ONLY_RANK_ZERO = 1, 2, 4, 8
ALL_BARRIERS = AFTER_WRITES | AFTER_READS | BEFORE_EXIT


def _dims(*values):
    return (ctypes.c_uint * 3)(*values)


def cluster_exchange(emu, grid, cluster, barriers, non_portable=False):
    """The exchange kernel's sums (2 rounds x blocks); asserts no fault and cudaSuccess."""
    blocks = math.prod(grid)
    out = Buffer.empty((2, blocks), torch.float32)
    launches = emu.run("gmk_emu_selftest_cluster_exchange", _dims(*grid), _dims(*cluster), non_portable, barriers,
                       out.ptr)
    assert launches == [launches[0]] and launches[0].endswith("[clusters {}x{}x{}]".format(*cluster)), launches
    out.check_guards()
    return out.view


@pytest.mark.parametrize(("grid", "cluster"), [((4, 1, 1), (2, 1, 1)), ((8, 1, 1), (8, 1, 1)),
                                               ((4, 2, 3), (2, 2, 1)), ((16, 1, 1), (16, 1, 1))])
def test_emulated_clusters_exchange_through_distributed_shared_memory(emu, grid, cluster):
    """Each block writes into every block of its cluster; after the cluster barrier each holds all of the
    cluster's values: (round + 1) n (n + 1) / 2 in every block, every round. 16 blocks need the non-portable
    cluster size attribute."""
    n = math.prod(cluster)
    sums = cluster_exchange(emu, grid, cluster, ALL_BARRIERS, non_portable=n > 8)
    expected = torch.tensor([[n * (n + 1) / 2], [n * (n + 1)]]).expand_as(sums)
    torch.testing.assert_close(sums, expected, atol=0, rtol=0)


def test_emulated_cluster_ranks(emu):
    """block_rank: x fastest within the cluster, as the hardware's %cluster_ctarank; num_blocks: its size."""
    grid, cluster = (4, 2, 3), (2, 2, 1)
    out = torch.full((2, 24), math.nan)
    emu.run("gmk_emu_selftest_cluster_rank", _dims(*grid), _dims(*cluster), out.data_ptr())
    x, y = torch.arange(4).repeat(6), torch.arange(2).repeat_interleave(4).repeat(3)  # block (x, y, z), x fastest
    assert torch.equal(out[0], (x % 2 + 2 * (y % 2)).float())
    assert torch.equal(out[1], torch.full((24,), 4.0))


def test_emulator_exposes_a_missing_cluster_barrier(emu):
    """Blocks of a cluster run in turn between cluster barriers, in ascending then descending rank order:
    without the barrier between the remote writes and the reads, the first block reads slots still NaN;
    without the one between the reads and the next round's writes, a block reads a slot that a block before
    it already overwrote. The kernel without either is wrong for some block, never all right."""
    for grid, cluster in (((4, 1, 1), (2, 1, 1)), ((4, 1, 1), (4, 1, 1))):
        right = cluster_exchange(emu, grid, cluster, ALL_BARRIERS)
        no_write_barrier = cluster_exchange(emu, grid, cluster, ALL_BARRIERS & ~AFTER_WRITES)
        assert no_write_barrier.isnan().any()
        no_read_barrier = cluster_exchange(emu, grid, cluster, ALL_BARRIERS & ~AFTER_READS)
        assert not no_read_barrier.isnan().any() and not torch.equal(no_read_barrier, right)
        assert torch.equal(cluster_exchange(emu, grid, cluster, AFTER_WRITES | AFTER_READS), right)


def test_emulator_faults_on_cluster_misuse(emu):
    """A write into the shared memory of a block that has exited, a cluster barrier that some blocks never
    reach, and launches whose clusters the GPU refuses."""
    out = torch.zeros(2, 16)
    with pytest.raises(AssertionError, match="map_shared_rank: block rank [01] of the cluster has exited"):
        emu.run("gmk_emu_selftest_cluster_exchange", _dims(4, 1, 1), _dims(2, 1, 1), 0, 0, out.data_ptr())
    with pytest.raises(AssertionError, match="threads of the cluster wait at its barrier"):
        emu.run("gmk_emu_selftest_cluster_exchange", _dims(4, 1, 1), _dims(2, 1, 1), 0,
                ALL_BARRIERS | ONLY_RANK_ZERO, out.data_ptr())
    refusals = {((6, 1, 1), (4, 1, 1)): 912,   # the clusters do not tile the grid: cudaErrorInvalidClusterSize
                ((9, 1, 1), (9, 1, 1)): 912}   # over 8 blocks without the non-portable size attribute
    for (grid, cluster), error in refusals.items():
        assert emu.lib.gmk_emu_selftest_cluster_exchange(_dims(*grid), _dims(*cluster), 0, ALL_BARRIERS,
                                                         out.data_ptr()) == error
    emu.set_device("sm75")
    assert emu.lib.gmk_emu_selftest_cluster_exchange(_dims(2, 1, 1), _dims(2, 1, 1), 0, ALL_BARRIERS,
                                                     out.data_ptr()) == 801  # cudaErrorNotSupported before 9.0
    faults = emu.lib.gmk_emu_take_faults(ctypes.create_string_buffer(512), 512)
    emu.lib.gmk_emu_take_launches(ctypes.create_string_buffer(1 << 16), 1 << 16)
    assert faults == 0


def test_emulated_max_active_clusters(emu):
    """132 multiprocessors: 64-thread blocks with 100 KB of dynamic shared memory fit 2 per multiprocessor
    (228 KB, 1 KB reserved per block): 264 blocks, 66 clusters of 4; without the opt-in the launch fails."""
    count = ctypes.c_int(-1)
    assert emu.lib.gmk_emu_selftest_max_active_clusters(4, 100 * 1024, ctypes.byref(count)) == 1  # over 48 KB
    assert emu.lib.gmk_emu_selftest_max_active_clusters(4, 40 * 1024, ctypes.byref(count)) == 0
    assert count.value == 132 * (228 // 41) // 4


# --- gated (known good on an H100: validates the emulator) --------------------------------------------

def _gated_inputs(layout, outer, channels, inner, dtype):
    """x (outer, 2C, inner) in a Buffer: contiguous (the 16-byte rows path) or stored (outer, inner, 2C)."""
    x = torch.randn(outer, 2 * channels, inner, dtype=dtype)
    memory = x if layout == "rows" else x.transpose(1, 2)
    buffer = Buffer(memory)
    view = buffer.view if layout == "rows" else buffer.view.transpose(1, 2)
    return x, buffer, view


def _gated_strides(t):
    """As gated_ops.cpp: the strides of size-1 dimensions normalised."""
    s = t.stride()
    return _longs(0 if t.size(0) == 1 else s[0], s[1], 1 if t.size(2) == 1 else s[2])


@pytest.mark.parametrize("cond_kind", [None, "row", "channel"])
@pytest.mark.parametrize("layout", ["rows", "strided"])
@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
def test_gated(emu, dtype, layout, cond_kind):
    outer, channels, inner = 3, 5, 24
    x, x_buffer, x_view = _gated_inputs(layout, outer, channels, inner, dtype)
    cond = cond_buffer = cond_view = None
    if cond_kind == "row":
        cond, cond_buffer, cond_view = _gated_inputs("rows", outer, channels, inner, dtype)
    elif cond_kind == "channel":  # one value per (o, c), broadcast over inner: stride 0
        cond_buffer = Buffer(torch.randn(outer, 2 * channels, 1, dtype=dtype))
        cond_view = cond_buffer.view.expand(-1, -1, inner)
        cond = cond_view.clone()
    grad_y = Buffer(torch.randn(outer, channels, inner, dtype=dtype))
    for activation in ("tanh", "identity"):
        y = Buffer.empty((outer, channels, inner), dtype)
        grad_h = Buffer.empty((outer, 2 * channels, inner), dtype)
        common = (outer, channels, inner, activation == "tanh", DTYPE_CODES[dtype], x_buffer.ptr,
                  _gated_strides(x_view), None if cond is None else cond_buffer.ptr,
                  None if cond is None else _gated_strides(cond_view))
        forward = emu.run("gmk_emu_gated", 0, *common, None, y.ptr)
        backward = emu.run("gmk_emu_gated", 1, *common, grad_y.ptr, grad_h.ptr)
        path = "rows" if layout == "rows" else "strided"
        assert all(f"{path}_kernel" in name for name in forward + backward), forward + backward

        h64 = (x.double() if cond is None else x.double() + cond.double()).requires_grad_()
        y64 = gated_reference.gated_activation(h64, activation=activation)
        (grad64,) = torch.autograd.grad(y64, h64, grad_y.view.double())
        assert_close(y.view, y64, dtype, "forward")
        assert_close(grad_h.view, grad64, dtype, "grad")
        for buffer in (y, grad_h):
            buffer.check_guards()
    for buffer in (x_buffer, cond_buffer, grad_y):
        if buffer is not None:
            buffer.check_unchanged()


# --- logistic mixture ---------------------------------------------------------------------------

@pytest.mark.parametrize("params_layout", ["contiguous", "positions-first"])
@pytest.mark.parametrize("num_channels", [1, 3])
@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
def test_logistic_mixture_nll_and_backward(emu, dtype, num_channels, params_layout):
    """Every loss regime of test_logistic_mixture.py; 2 x 70 positions: two blocks, the second partial."""
    for regime_name, regime in REGIMES.items():
        params64, x = regime(2, num_channels, 4, (70,))
        params64, x = params64.double(), x.double()
        params = params64.to(dtype)
        n, p, s = params.shape
        if params_layout == "contiguous":
            params_buffer = Buffer(params)
            params_view = params_buffer.view
        else:  # stored (N, S, P)
            params_buffer = Buffer(params.transpose(1, 2))
            params_view = params_buffer.view.transpose(1, 2)
        x_buffer = Buffer(x.float())
        grad_nll64 = torch.randn(n, s, dtype=torch.float64)
        grad_nll = Buffer(grad_nll64.float())
        nll = Buffer.empty((n, s), torch.float32)
        grad = Buffer.empty((n, p, s), dtype)
        sizes = _longs(n, num_channels, p // lm_reference.params_per_component(num_channels), s, 256)
        common = (sizes, -7.0, DTYPE_CODES[dtype], params_buffer.ptr, _strides(params_view), x_buffer.ptr,
                  _strides(x_buffer.view))
        emu.run("gmk_emu_logistic_mixture", 0, *common, None, None, None, None, None, None, nll.ptr)
        grad_nll_strides = _longs(grad_nll.view.stride(0), 0, grad_nll.view.stride(1))
        emu.run("gmk_emu_logistic_mixture", 1, *common, grad_nll.ptr, grad_nll_strides, None, None, None,
                None, grad.ptr)

        def nll_and_grad(params, x, grad_nll):
            params = params.detach().requires_grad_()
            loss = lm_reference.discretized_logistic_mixture_nll(params, x)
            return loss, torch.autograd.grad(loss, params, grad_nll)[0]

        # As test_logistic_mixture.check_backend: widened by the float32 reference's own error.
        nll64, grad64 = nll_and_grad(params.double(), x, grad_nll64)
        nll32, grad32 = nll_and_grad(params.float(), x.float(), grad_nll64.float())
        for actual, expected, kind, error in ((nll.view, nll64, "forward", relative_error(nll32, nll64)),
                                              (grad.view, grad64, "grad", relative_error(grad32, grad64))):
            atol, rtol = (tolerance + 2 * error for tolerance in LM_TOLERANCES[dtype][kind])
            context = f"{regime_name} {kind}"
            torch.testing.assert_close(actual.double(), expected, atol=atol, rtol=rtol,
                                       msg=lambda m, context=context: f"{context}: {m}")
        for buffer in (nll, grad):
            buffer.check_guards()
        for buffer in (params_buffer, x_buffer, grad_nll):
            buffer.check_unchanged()


@pytest.mark.parametrize("num_channels", [1, 3])
@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
def test_logistic_mixture_sample(emu, dtype, num_channels):
    """The same noise gives the reference's sample (the CPU backend runs the same per-position code)."""
    from test_logistic_mixture import make_params

    n, k, s = 2, 5, 150
    params = Buffer(make_params(n, num_channels, k, (s,), dtype=dtype))
    gumbel_u, logistic_u = Buffer(torch.rand(n, k, s)), Buffer(torch.rand(n, num_channels, s))
    out = Buffer.empty((n, num_channels, s), torch.float32)
    sizes = _longs(n, num_channels, k, s, 256)
    emu.run("gmk_emu_logistic_mixture", 2, sizes, -7.0, DTYPE_CODES[dtype], params.ptr, _strides(params.view),
            None, None, None, None, gumbel_u.ptr, _strides(gumbel_u.view), logistic_u.ptr,
            _strides(logistic_u.view), out.ptr)
    expected = lm_reference.discretized_logistic_mixture_sample(params.view, gumbel_u.view, logistic_u.view)
    torch.testing.assert_close(out.view, expected, atol=0, rtol=0)
    out.check_guards()
    for buffer in (params, gumbel_u, logistic_u):
        buffer.check_unchanged()


# --- masked and shifted convolutions --------------------------------------------------------------

# (mask or shift, colour groups, kh, kw, Cin, Cout, N, H, W). Positions are never a multiple of the
# 128-position tile; channel counts that are multiples of 8 take the 16-byte loads, the others the
# scalar ones; Cout > 64, Cin > 64 and N * H * W > 128 give several tiles; Cin > 32 several K steps.
CONV_CASES = {
    "B-k3-vector": ("B", 1, 3, 3, 16, 24, 2, 5, 7),
    "A-k5-groups3-scalar": ("A", 3, 5, 5, 9, 12, 1, 6, 6),
    "B-k3-groups3-tiles": ("B", 3, 3, 3, 48, 96, 2, 9, 8),
    "A-k3-groups3-tile-per-group": ("A", 3, 3, 3, 24, 192, 1, 5, 6),
    "A-k5-vector": ("A", 1, 5, 5, 8, 8, 1, 4, 5),
    "A-k1-groups3": ("A", 3, 1, 1, 6, 9, 1, 4, 4),
    "B-k1-vector": ("B", 1, 1, 1, 8, 16, 1, 3, 3),
    "A-k7-vector": ("A", 1, 7, 7, 8, 16, 1, 9, 10),
    "down-vector": ("down", 1, 2, 3, 16, 8, 2, 5, 6),
    "down-wide-cin": ("down", 1, 2, 3, 72, 16, 1, 5, 7),
    "down_right-scalar": ("down_right", 1, 2, 2, 5, 7, 1, 7, 5),
}


def _geometry(kind, groups, kh, kw, cin, cout, n, h, w):
    """As masked_conv_ops.cpp: sizes, padding, mask (0 none, 1 A, 2 B)."""
    if kind in ("A", "B"):
        pad_top = pad_left = kh // 2
        mask = 1 if kind == "A" else 2
    else:
        pad_top, pad_left, mask = kh - 1, (kw - 1) // 2 if kind == "down" else kw - 1, 0
    return _longs(n, cin, cout, h, w, kh, kw, pad_top, pad_left, mask, groups)


def _live_taps(kind, groups, kh, kw, cin, cout):
    """The number of taps some weight passes through, from the reference's mask (and they are a prefix)."""
    if kind not in ("A", "B"):
        return kh * kw
    live = conv_reference.conv_mask(kh, kind, cin, cout, groups).flatten(2).any(0).any(0)
    taps = int(live.sum())
    assert live[:taps].all()
    return taps


def _reference(kind, groups, x, weight, bias):
    if kind in ("A", "B"):
        return conv_reference.masked_conv2d(x, weight, bias, mask_type=kind, color_groups=groups)
    return conv_reference.shifted_conv2d(x, weight, bias, shift=kind)


def _nhwc(t):
    return t.permute(0, 2, 3, 1)


def _expected_variant(launches, arch, dtype, tf32, vector):
    """The launch ran tensor cores on sm_90 for half types and TF32, FMAs otherwise; 16-byte loads or not."""
    (name,) = launches
    tensor_cores = arch == "sm90" and (dtype in HALF_DTYPES or tf32)
    assert ("WmmaMath" if tensor_cores else "FmaMath") in name, name
    width = 16 // torch.empty((), dtype=dtype).element_size() if vector else 1
    assert re.search(r"_kernel<.*, (\d+)>", name).group(1) == str(width), name


def run_conv(emu, case, dtype, arch, *, tf32=False, bias=True, out_channels_last=False, splits=(1,),
             misaligned=False, tolerance=1.0):
    """Forward, grad_x and grad_weight of one case on the emulated GPU, against float64 autograd, within
    ``tolerance`` times the sum tolerance."""
    kind, groups, kh, kw, cin, cout, n, h, w = case
    geometry = _geometry(*case)
    taps = _live_taps(kind, groups, kh, kw, cin, cout)
    x = torch.randn(n, cin, h, w, dtype=dtype)
    weight = torch.randn(cout, cin, kh, kw, dtype=dtype)
    b = torch.randn(cout, dtype=dtype) if bias else None
    grad_y = torch.randn(n, cout, h, w, dtype=dtype)
    leaves = [t.double().requires_grad_() for t in (x, weight)]
    y64 = _reference(kind, groups, *leaves, None if b is None else b.double())
    grad_x64, grad_w64 = torch.autograd.grad(y64, leaves, grad_y.double())
    offset = 1 if misaligned else 0
    vector = not misaligned and cin * x.element_size() % 16 == 0 and cout * x.element_size() % 16 == 0
    emu.set_device(arch)
    dtype_code = DTYPE_CODES[dtype]
    # float32 on tensor cores has TF32's 10-bit mantissa: compared at bfloat16's tolerance (8 bits).
    compare_dtype = torch.bfloat16 if tf32 else dtype

    def check(actual, expected, terms):
        assert_close_sum(actual.to(compare_dtype), expected, compare_dtype, terms, roundings=tolerance)

    # Forward: a = x (N, H, W, Cin), b = weight packed (taps, Cin, Cout).
    live = weight.flatten(2)[:, :, :taps]
    a, packed = Buffer(_nhwc(x), offset), Buffer(live.permute(2, 1, 0), offset)
    bias_buffer = Buffer(b) if bias else None
    y = Buffer.empty((n, h, w, cout) if out_channels_last else (n, cout, h, w), dtype)
    launches = emu.run("gmk_emu_tap_gemm", geometry, dtype_code, tf32, 0, out_channels_last, taps, cin, cout,
                       a.ptr, packed.ptr, bias_buffer.ptr if bias else None, y.ptr)
    _expected_variant(launches, arch, dtype, tf32, vector)
    check(y.view.permute(0, 3, 1, 2) if out_channels_last else y.view, y64, cin * kh * kw)

    # grad_x: a = grad_y (N, H, W, Cout), b = weight packed transposed (taps, Cout, Cin), taps reflected.
    go, packed_t = Buffer(_nhwc(grad_y), offset), Buffer(live.permute(2, 0, 1), offset)
    grad_x = Buffer.empty((n, h, w, cin) if out_channels_last else (n, cin, h, w), dtype)
    launches = emu.run("gmk_emu_tap_gemm", geometry, dtype_code, tf32, 1, out_channels_last, taps, cout, cin,
                       go.ptr, packed_t.ptr, None, grad_x.ptr)
    _expected_variant(launches, arch, dtype, tf32, vector)
    check(grad_x.view.permute(0, 3, 1, 2) if out_channels_last else grad_x.view, grad_x64, cout * kh * kw)

    # grad_weight: float32 partials per split, summed and unpacked as the op does.
    positions = n * h * w
    for count in splits:
        per_split = -(-positions // count)
        partial = Buffer.empty((count, taps, cin, cout), torch.float32)
        launches = emu.run("gmk_emu_weight_grad", geometry, dtype_code, tf32, taps, count, per_split, a.ptr,
                           go.ptr, partial.ptr)
        _expected_variant(launches, arch, dtype, tf32, vector)
        grad_w = torch.zeros(cout, cin, kh, kw, dtype=dtype)
        grad_w.flatten(2)[:, :, :taps].copy_(partial.view.sum(0).permute(2, 1, 0))
        check(grad_w, grad_w64, positions)
        partial.check_guards()
    for buffer in (y, grad_x):
        buffer.check_guards()
    for buffer in (a, packed, go, packed_t) + ((bias_buffer,) if bias else ()):
        buffer.check_unchanged()


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_masked_conv(emu, case, dtype, arch):
    # Vary what the kernels do not branch on per case, rather than multiplying the cases.
    index = list(CONV_CASES.values()).index(case)
    run_conv(emu, case, dtype, arch, bias=index % 2 == 0, out_channels_last=index % 3 == 1,
             splits=(1, 2 + index % 3))


def test_masked_conv_float32_fma_over_many_terms(emu):
    """Exact float32 (the FMA tiles) over 24 taps x 64 channels, the 7x7 case of the GPU tests, 8 x 2 tiles:
    within half the sum tolerance. A single running sum per output (before the two-level sum of FmaMath)
    reached 0.8 to 1.25 times the tolerance on random inputs; the two-level sum stays near 0.3."""
    run_conv(emu, ("A", 1, 7, 7, 64, 72, 3, 17, 19), torch.float32, "sm75", splits=(2,), tolerance=0.5)


@pytest.mark.parametrize("case", [CONV_CASES["B-k3-groups3-tiles"], CONV_CASES["A-k5-vector"]],
                         ids=["B-k3-groups3-tiles", "A-k5-vector"])
def test_masked_conv_tf32(emu, case):
    """float32 on tensor cores when the caller allows TF32 (operands rounded by __float_to_tf32)."""
    run_conv(emu, case, torch.float32, "sm90", tf32=True, out_channels_last=True, splits=(3,))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_masked_conv_misaligned_takes_scalar_loads(emu, arch):
    """Channel counts that allow 16-byte loads, at addresses that do not: the scalar path."""
    run_conv(emu, CONV_CASES["B-k3-vector"], torch.bfloat16, arch, misaligned=True)


def test_weight_grad_with_more_splits_than_positions_need(emu):
    """Splits past the last position (positions_per_split * splits > positions) write zero partials."""
    run_conv(emu, CONV_CASES["A-k5-vector"], torch.float16, "sm90", splits=(6,))  # 20 positions: 4 a split


def test_emulator_flags_a_bad_launch(emu):
    """A launch the GPU rejects (grid.y = 0 channel tiles here) returns its error, as on a GPU."""
    geometry = _geometry("B", 1, 3, 3, 8, 0, 1, 2, 2)
    x = Buffer(torch.randn(1, 2, 2, 8))
    w = Buffer(torch.randn(9, 8, 1))
    out = Buffer(torch.randn(1))
    error = emu.lib.gmk_emu_tap_gemm(geometry, 0, 0, 0, 0, 5, 8, 0, x.ptr, w.ptr, None, out.ptr)
    assert error == 9  # cudaErrorInvalidConfiguration
    out.check_unchanged()


# --- flows: actnorm, coupling, 1x1 convolution ------------------------------------------------------

def _stored(t, storage, offset=0):
    """A Buffer holding t's values and the view the kernel reads: "contiguous"; "strided" (stored with
    the last two dimensions swapped: unit stride on neither channels nor inner); "misaligned" (contiguous,
    one element past a 16-byte boundary); "broadcast" (channel 0's values, a stride-0 channel view)."""
    if storage == "strided":
        buffer = Buffer(t.transpose(1, 2))
        return buffer, buffer.view.transpose(1, 2)
    if storage == "broadcast":
        buffer = Buffer(t[:, :1])
        return buffer, buffer.view.expand(t.shape)
    buffer = Buffer(t, 1 if storage == "misaligned" else offset)
    return buffer, buffer.view


def _normalised(t, size_one=(0, None, 1)):
    """t's strides as the _ops.cpp files pass them: the stride of a size-1 dimension d is size_one[d]
    (None: kept)."""
    return _longs(*(size_one[d] if t.size(d) == 1 and size_one[d] is not None else t.stride(d) for d in range(3)))


# (outer, channels, inner): one block; 3 parts of a channel (4500 elements, 2048 a part) and a 36-block
# grid-stride forward; a single position.
ACTNORM_CASES = {"small": (2, 3, 7), "multi-part": (3, 2, 1500), "one-position": (1, 5, 1)}


@pytest.mark.parametrize("storage", ["contiguous", "strided"])
@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
@pytest.mark.parametrize("shape", ACTNORM_CASES.values(), ids=ACTNORM_CASES.keys())
def test_actnorm(emu, shape, dtype, storage):
    """y, and (as actnorm_ops.cpp) grad_x and the per-channel partial sums that give grad_bias and
    grad_log_scale, both directions."""
    outer, channels, inner = shape
    x = torch.randn(shape, dtype=dtype)
    bias, log_scale = torch.randn(channels), 0.5 * torch.randn(channels)
    grad_y = torch.randn(shape, dtype=dtype)
    x_buffer, x_view = _stored(x, storage)
    params = [Buffer(bias), Buffer(log_scale)]
    grad_buffer = Buffer(grad_y)
    parts = emu.lib.gmk_emu_actnorm_parts(outer, channels, inner)
    assert parts == -(-outer * inner // 2048)
    for reverse in (False, True):
        common = (outer, channels, inner, reverse, DTYPE_CODES[dtype], x_buffer.ptr, _normalised(x_view, (0, None, 1)),
                  params[0].ptr, params[1].ptr)
        y = Buffer.empty(shape, dtype)
        emu.run("gmk_emu_actnorm", 0, *common, None, y.ptr, None, 1)
        grad_x = Buffer.empty(shape, dtype)
        sums = Buffer.empty((channels, parts, 2), torch.float32)
        emu.run("gmk_emu_actnorm", 1, *common, grad_buffer.ptr, grad_x.ptr, sums.ptr, parts)

        leaves = [x.double().requires_grad_(), bias.double().requires_grad_(), log_scale.double().requires_grad_()]
        y64, _ = actnorm_reference.actnorm(*leaves, reverse=reverse)
        grads64 = torch.autograd.grad(y64, leaves, grad_y.double())
        totals = sums.view.double().sum(1)
        g, h = totals[:, 0], totals[:, 1]
        b64, s64 = bias.double(), log_scale.double()
        if reverse:
            grad_bias, grad_log_scale = -g, -torch.exp(-s64) * h
        else:
            grad_bias, grad_log_scale = torch.exp(s64) * g, torch.exp(s64) * (h + b64 * g)
        assert_close(y.view, y64, dtype, "forward")
        assert_close(grad_x.view, grads64[0], dtype, "grad")
        terms = outer * inner
        assert_close_sum(grad_bias, grads64[1], dtype, terms)
        assert_close_sum(grad_log_scale, grads64[2], dtype, terms)
        for buffer in (y, grad_x, sums):
            buffer.check_guards()
    for buffer in (x_buffer, grad_buffer, *params):
        buffer.check_unchanged()


# (outer, 2 * half, inner, storage of x and h): inner % 4 == 0 and aligned: the 16-byte path; two blocks per
# sample (half * inner = 2200 > 2048): the workspace and the second kernel's sum; the rest the scalar path.
COUPLING_CASES = {
    "vector": (2, 8, 12, "contiguous"),
    "scalar-odd-inner": (3, 6, 5, "contiguous"),
    "vector-two-blocks": (2, 4, 1100, "contiguous"),
    "strided-two-blocks": (1, 6, 700, "strided"),
    "misaligned": (2, 4, 8, "misaligned"),
    "broadcast": (2, 4, 16, "broadcast"),
    "one-position": (1, 2, 1, "contiguous"),
}


@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
@pytest.mark.parametrize("case", COUPLING_CASES.values(), ids=COUPLING_CASES.keys())
def test_coupling(emu, case, dtype):
    """y, logdet, grad_x and grad_h of every transform, layout and direction, against the reference's autograd."""
    outer, channels, inner, storage = case
    half = channels // 2
    grad_y = torch.randn(outer, channels, inner, dtype=dtype)
    grad_y_buffer = Buffer(grad_y)
    grad_logdet = torch.randn(outer)
    grad_logdet_buffer = Buffer(grad_logdet)
    vector = storage in ("contiguous", "broadcast") and inner % 4 == 0  # a stride-0 channel is a multiple of 4
    for transform_code, transform in enumerate(coupling_reference.TRANSFORMS):
        for layout_code, layout in enumerate(coupling_reference.CHANNEL_LAYOUTS):
            if transform == "additive" and layout == "interleaved":
                continue
            h_channels = half if transform == "additive" else channels
            x = torch.randn(outer, channels, inner, dtype=dtype)
            h = torch.randn(outer, h_channels, inner, dtype=dtype)
            x_buffer, x_view = _stored(x, storage)
            h_buffer, h_view = _stored(h, storage)
            x, h = x_view.clone(), h_view.clone()  # the values the kernel reads (broadcast: channel 0's)
            for reverse in (False, True):
                sizes = _longs(outer, half, inner)
                floats = emu.lib.gmk_emu_coupling_workspace(outer, half, inner, transform_code)
                assert floats == (0 if transform == "additive" or half * inner <= 2048 else outer * -(-half * inner // 2048))
                workspace = Buffer.empty((max(floats, 1),), torch.float32)
                y = Buffer.empty((outer, channels, inner), dtype)
                logdet = Buffer(torch.zeros(outer)) if transform == "additive" else Buffer.empty((outer,), torch.float32)
                common = (sizes, transform_code, layout_code, reverse, DTYPE_CODES[dtype], x_buffer.ptr,
                          _normalised(x_view, (0, 0, 1)), h_buffer.ptr, _normalised(h_view, (0, 0, 1)))
                launches = emu.run("gmk_emu_coupling", 0, *common, None, None, y.ptr, None, logdet.ptr, workspace.ptr)
                assert all(f", {str(vector).lower()}>" in name for name in launches if "forward_kernel" in name), launches
                assert len(launches) == (2 if floats else 1), launches
                grad_x = Buffer.empty((outer, channels, inner), dtype)
                grad_h = Buffer.empty((outer, h_channels, inner), dtype)
                emu.run("gmk_emu_coupling", 1, *common, grad_y_buffer.ptr, grad_logdet_buffer.ptr, grad_x.ptr,
                        grad_h.ptr, None, None)

                leaves = [x.double().requires_grad_(), h.double().requires_grad_()]
                y64, logdet64 = coupling_reference.affine_coupling(*leaves, transform, layout, reverse)
                outputs, grads = [y64], [grad_y.double()]
                if logdet64.requires_grad:
                    outputs.append(logdet64)
                    grads.append(grad_logdet.double())
                grad_x64, grad_h64 = torch.autograd.grad(outputs, leaves, grads)
                context = f"{transform} {layout} reverse={reverse}"
                try:
                    assert_close(y.view, y64, dtype, "forward")
                    assert_close(logdet.view, logdet64, torch.float32, "forward", terms=half * inner)
                    assert_close(grad_x.view, grad_x64, dtype, "grad")
                    assert_close(grad_h.view, grad_h64, dtype, "grad")
                except AssertionError as error:
                    raise AssertionError(f"{context}: {error}") from None
                for buffer in (y, logdet, grad_x, grad_h, workspace):
                    buffer.check_guards()
            for buffer in (x_buffer, h_buffer):
                buffer.check_unchanged()
    grad_y_buffer.check_unchanged()
    grad_logdet_buffer.check_unchanged()


# (outer, channels, height, width, storage of x and h): one block; two blocks per sample (3 * 30 * 25 =
# 2250 > 2048: the workspace and the second kernel's sum); strided; odd width; a single position.
CHECKERBOARD_CASES = {
    "small": (2, 3, 4, 5, "contiguous"),
    "two-blocks": (2, 3, 30, 25, "contiguous"),
    "strided": (1, 4, 6, 7, "strided"),
    "misaligned": (2, 2, 3, 3, "misaligned"),
    "one-position": (1, 2, 1, 1, "contiguous"),
}


@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
@pytest.mark.parametrize("case", CHECKERBOARD_CASES.values(), ids=CHECKERBOARD_CASES.keys())
def test_coupling_checkerboard(emu, case, dtype):
    """The checkerboard layouts: y, logdet, grad_x and grad_h of every transform and direction."""
    outer, channels, height, width, storage = case
    inner = height * width
    grad_y = torch.randn(outer, channels, inner, dtype=dtype)
    grad_y_buffer = Buffer(grad_y)
    grad_logdet = torch.randn(outer)
    grad_logdet_buffer = Buffer(grad_logdet)
    for transform_code, transform in enumerate(coupling_reference.TRANSFORMS):
        for layout in coupling_reference.CHECKERBOARD_LAYOUTS:
            layout_code = coupling_reference.LAYOUTS.index(layout)
            h_channels = channels if transform == "additive" else 2 * channels
            x_buffer, x_view = _stored(torch.randn(outer, channels, inner, dtype=dtype), storage)
            h_buffer, h_view = _stored(torch.randn(outer, h_channels, inner, dtype=dtype), storage)
            x, h = x_view.clone(), h_view.clone()
            for reverse in (False, True):
                sizes = _longs(outer, channels, inner, width)
                floats = emu.lib.gmk_emu_coupling_workspace(outer, channels, inner, transform_code)
                workspace = Buffer.empty((max(floats, 1),), torch.float32)
                y = Buffer.empty((outer, channels, inner), dtype)
                logdet = Buffer(torch.zeros(outer)) if transform == "additive" else Buffer.empty((outer,), torch.float32)
                common = (sizes, transform_code, layout_code, reverse, DTYPE_CODES[dtype], x_buffer.ptr,
                          _normalised(x_view, (0, 0, 1)), h_buffer.ptr, _normalised(h_view, (0, 0, 1)))
                launches = emu.run("gmk_emu_coupling", 0, *common, None, None, y.ptr, None, logdet.ptr, workspace.ptr)
                assert all("checkerboard_forward_kernel" in name for name in launches[:1]), launches
                assert len(launches) == (2 if floats else 1), launches
                grad_x = Buffer.empty((outer, channels, inner), dtype)
                grad_h = Buffer.empty((outer, h_channels, inner), dtype)
                emu.run("gmk_emu_coupling", 1, *common, grad_y_buffer.ptr, grad_logdet_buffer.ptr, grad_x.ptr,
                        grad_h.ptr, None, None)

                leaves = [x.double().view(outer, channels, height, width).requires_grad_(),
                          h.double().view(outer, h_channels, height, width).requires_grad_()]
                y64, logdet64 = coupling_reference.affine_coupling(*leaves, transform, layout, reverse)
                outputs, grads = [y64], [grad_y.double().view_as(y64)]
                if logdet64.requires_grad:
                    outputs.append(logdet64)
                    grads.append(grad_logdet.double())
                grad_x64, grad_h64 = (g.flatten(2) for g in torch.autograd.grad(outputs, leaves, grads))
                context = f"{transform} {layout} reverse={reverse}"
                try:
                    assert_close(y.view, y64.flatten(2), dtype, "forward")
                    assert_close(logdet.view, logdet64, torch.float32, "forward", terms=channels * inner)
                    assert_close(grad_x.view, grad_x64, dtype, "grad")
                    assert_close(grad_h.view, grad_h64, dtype, "grad")
                except AssertionError as error:
                    raise AssertionError(f"{context}: {error}") from None
                for buffer in (y, logdet, grad_x, grad_h, workspace):
                    buffer.check_guards()
            for buffer in (x_buffer, h_buffer):
                buffer.check_unchanged()
    grad_y_buffer.check_unchanged()
    grad_logdet_buffer.check_unchanged()


# (outer, in_channels, out_channels, inner, storage): out_channels not a multiple of the 16-row tile;
# several blocks (grid-stride over 600 positions); 96 x 96 floats (36 KB) of dynamic shared memory.
CONV1X1_CASES = {
    "tail-rows": (2, 12, 12, 70, "contiguous"),
    "tiny": (1, 5, 3, 9, "strided"),
    "blocks": (2, 17, 33, 300, "misaligned"),
    "wide": (2, 96, 96, 5, "contiguous"),
    "one-position": (4, 3, 20, 1, "strided"),
}


@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
@pytest.mark.parametrize("case", CONV1X1_CASES.values(), ids=CONV1X1_CASES.keys())
def test_conv1x1(emu, case, dtype):
    """y = W x + b, and grad_x = Wᵀ grad_y (the op's backward runs the same kernel on W.t().contiguous())."""
    outer, cin, cout, inner, storage = case
    assert emu.lib.gmk_emu_conv1x1_fits(cin, cout)
    x = torch.randn(outer, cin, inner, dtype=dtype)
    weight, bias = torch.randn(cout, cin) / cin**0.5, torch.randn(cout)
    grad_y = torch.randn(outer, cout, inner, dtype=dtype)
    x_buffer, x_view = _stored(x, storage)
    g_buffer, g_view = _stored(grad_y, storage)
    w, w_t, b = Buffer(weight), Buffer(weight.T), Buffer(bias)
    y = Buffer.empty((outer, cout, inner), dtype)
    emu.run("gmk_emu_conv1x1", outer, cin, cout, inner, DTYPE_CODES[dtype], x_buffer.ptr, _normalised(x_view),
            w.ptr, b.ptr, y.ptr)
    grad_x = Buffer.empty((outer, cin, inner), dtype)
    emu.run("gmk_emu_conv1x1", outer, cout, cin, inner, DTYPE_CODES[dtype], g_buffer.ptr, _normalised(g_view),
            w_t.ptr, None, grad_x.ptr)
    leaf = x.double().requires_grad_()
    y64 = invconv_reference.conv1x1(leaf, weight.double()) + bias.double()[:, None]
    (grad_x64,) = torch.autograd.grad(y64, leaf, grad_y.double())
    assert_close_sum(y.view, y64, dtype, cin)
    assert_close_sum(grad_x.view, grad_x64, dtype, cout)
    for buffer in (y, grad_x):
        buffer.check_guards()
    for buffer in (x_buffer, g_buffer, w, w_t, b):
        buffer.check_unchanged()


def test_conv1x1_refuses_a_weight_over_48_kb(emu):
    """(128, 128) floats need 64 KB of shared memory: the launcher returns cudaErrorInvalidValue (the op
    takes the GEMM instead) rather than a launch that would fail."""
    assert not emu.lib.gmk_emu_conv1x1_fits(128, 128)
    x, w, y = torch.zeros(1, 128, 1), torch.zeros(128, 128), torch.zeros(1, 128, 1)
    assert emu.lib.gmk_emu_conv1x1(1, 128, 128, 1, 0, x.data_ptr(), _longs(0, 1, 1), w.data_ptr(), None,
                                   y.data_ptr()) == 1
    assert not y.any()


# --- WaveNet: causal convolution and the fused layer ---------------------------------------------------

def _causal_strides(t):
    """As causal_conv_ops.cpp: size-1 dimensions get stride 0."""
    return _longs(*(0 if t.size(d) == 1 else t.stride(d) for d in range(3)))


# (batch, in_channels, out_channels, length, kernel_size, dilation, storage of x): two time tiles with a
# tail; two output tiles (Cout > 64) and two K steps (Cin > 16); taps reaching back past the start;
# a single time step (stride 0); dilations whose taps' offsets pass 32 bits, and 64 bits once t is added
# (issue 18: the kernels cap every tap's reach at T, UBSan checks the arithmetic).
CAUSAL_CONV_CASES = {
    "time-tiles": (2, 5, 7, 70, 3, 2, "contiguous"),
    "channel-tiles": (1, 20, 70, 33, 2, 4, "strided"),
    "dilation-past-start": (2, 3, 4, 10, 4, 8, "misaligned"),
    "one-step": (1, 40, 33, 1, 3, 1, "contiguous"),
    "dilation-2^31-1": (2, 3, 4, 10, 3, 2**31 - 1, "contiguous"),
    "dilation-2^63-1": (2, 3, 4, 10, 2, 2**63 - 1, "strided"),
}


@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
@pytest.mark.parametrize("case", CAUSAL_CONV_CASES.values(), ids=CAUSAL_CONV_CASES.keys())
def test_causal_conv(emu, case, dtype):
    """y, grad_x (the mirrored convolution of grad_out, W seen as (Cin, Cout, k) through its strides) and
    grad_W from float32 partials over 1 and 3 splits of the time steps, as causal_conv_ops.cpp."""
    n, cin, cout, length, k, dilation, storage = case
    x = torch.randn(n, cin, length, dtype=dtype)
    weight = (torch.randn(cout, cin, k) / (cin * k) ** 0.5).to(dtype)
    bias = torch.randn(cout, dtype=dtype)
    grad_y = torch.randn(n, cout, length, dtype=dtype)
    x_buffer, x_view = _stored(x, storage)
    w, b, g = Buffer(weight), Buffer(bias), Buffer(grad_y)
    code = DTYPE_CODES[dtype]
    leaves = [x.double().requires_grad_(), weight.double().requires_grad_()]
    y64 = causal_reference.causal_conv1d(*leaves, bias.double(), dilation)
    grad_x64, grad_w64 = torch.autograd.grad(y64, leaves, grad_y.double())

    y = Buffer.empty((n, cout, length), dtype)
    emu.run("gmk_emu_causal_conv", _longs(n, cin, cout, length, k, dilation), -1, code, x_buffer.ptr,
            _causal_strides(x_view), w.ptr, _longs(*weight.stride()), b.ptr, y.ptr)
    assert_close_sum(y.view, y64, dtype, cin * k)
    grad_x = Buffer.empty((n, cin, length), dtype)
    emu.run("gmk_emu_causal_conv", _longs(n, cout, cin, length, k, dilation), 1, code, g.ptr,
            _causal_strides(g.view), w.ptr, _longs(weight.stride(1), weight.stride(0), weight.stride(2)), None,
            grad_x.ptr)
    assert_close_sum(grad_x.view, grad_x64, dtype, cout * k)
    for splits in (1, 3):
        partial = Buffer.empty((splits, cout, cin, k), torch.float32)
        emu.run("gmk_emu_causal_conv_weight_grad", _longs(n, cin, cout, length, k, dilation, splits), code, g.ptr,
                x_buffer.ptr, _causal_strides(x_view), partial.ptr)
        assert_close_sum(partial.view.sum(0).to(dtype), grad_w64, dtype, n * length)
        partial.check_guards()
    for buffer in (y, grad_x):
        buffer.check_guards()
    for buffer in (x_buffer, w, b, g):
        buffer.check_unchanged()


# (batch, R, S, length, kernel_size, dilation, cond: None, "full" (N, 2R, T) strided, "global" (N, 2R, 1)
# expanded along time, biases): R > 32 gives two gate tiles and two K steps, R + S > 32 several output tiles.
LAYER_CASES = {
    "full-cond": (2, 8, 6, 40, 2, 3, "full", True),
    "global-cond-tiles": (1, 40, 30, 33, 3, 1, "global", True),
    "no-cond-no-bias": (1, 3, 1, 5, 2, 1, None, False),
    "dilation-2^63-1": (2, 3, 2, 9, 2, 2**63 - 1, "full", True),
}


def run_layer(emu, case, dtype, arch="sm90", residual_scale=0.5 ** 0.5):
    n, r, s, length, k, dilation, cond_kind, biases = case
    emu.set_device(arch)
    x = torch.randn(n, r, length, dtype=dtype)
    conv_weight = (torch.randn(2 * r, r, k) / (r * k) ** 0.5).to(dtype)
    res_weight, skip_weight = (torch.randn(r, r) / r**0.5).to(dtype), (torch.randn(s, r) / r**0.5).to(dtype)
    conv_bias, res_bias, skip_bias = ((torch.randn(c, dtype=dtype) if biases else None) for c in (2 * r, r, s))
    cond = None
    if cond_kind == "full":
        cond_buffer, cond_view = _stored(torch.randn(n, 2 * r, length, dtype=dtype), "strided")
    elif cond_kind == "global":
        cond_buffer = Buffer(torch.randn(n, 2 * r, 1, dtype=dtype))
        cond_view = cond_buffer.view.expand(-1, -1, length)
    if cond_kind:
        cond = cond_view.clone()
    grad_x_next, grad_skip = torch.randn(n, r, length, dtype=dtype), torch.randn(n, s, length, dtype=dtype)
    x_buffer = Buffer(x)
    inputs = [x_buffer, cond_buffer if cond_kind else None] + [
        None if t is None else Buffer(t) for t in (conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias)]
    x_next, skip = Buffer.empty((n, r, length), dtype), Buffer.empty((n, s, length), dtype)
    grads_in = [Buffer(grad_x_next), Buffer(grad_skip)]
    grad_h, z = Buffer.empty((n, 2 * r, length), dtype), Buffer.empty((n, r, length), dtype)
    pointers = (ctypes.c_void_p * 14)(*[None if b is None else b.ptr for b in inputs + [x_next, skip] + grads_in + [grad_h, z]])
    common = (_longs(n, r, s, length, k, dilation), residual_scale, DTYPE_CODES[dtype], _causal_strides(x_buffer.view),
              _causal_strides(cond_view) if cond_kind else None, pointers)
    emu.run("gmk_emu_wavenet_layer", 0, *common)
    emu.run("gmk_emu_wavenet_layer", 1, *common)

    def wide(t):
        return None if t is None else t.double()

    leaves = [wide(t).requires_grad_() for t in (x, conv_weight)]
    h64 = causal_reference.causal_conv1d(leaves[0], leaves[1], wide(conv_bias), dilation)
    if cond is not None:
        h64 = h64 + cond.double()
    z64 = gated_reference.gated_activation(h64, activation="tanh")
    x_next64, skip64 = causal_reference.wavenet_layer(x.double(), conv_weight.double(), wide(conv_bias),
                                                      res_weight.double(), wide(res_bias), skip_weight.double(),
                                                      wide(skip_bias), None if cond is None else cond.double(),
                                                      dilation, residual_scale)
    # grad_h: of x_next and skip through z only (the op adds the residual path to grad_x itself).
    grad_z64 = residual_scale * torch.einsum("oc,not->nct", res_weight.double(), grad_x_next.double()) + \
        torch.einsum("sc,nst->nct", skip_weight.double(), grad_skip.double())
    (grad_h64,) = torch.autograd.grad(z64, h64, grad_z64)
    assert_close_sum(x_next.view, x_next64, dtype, r * k, roundings=2)
    assert_close_sum(skip.view, skip64, dtype, r * k, roundings=2)
    assert_close_sum(z.view, z64, dtype, r * k)
    assert_close_sum(grad_h.view, grad_h64, dtype, r + s, roundings=2)
    for buffer in (x_next, skip, grad_h, z):
        buffer.check_guards()
    for buffer in inputs + grads_in:
        if buffer is not None:
            buffer.check_unchanged()


@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
@pytest.mark.parametrize("case", LAYER_CASES.values(), ids=LAYER_CASES.keys())
def test_wavenet_layer(emu, case, dtype):
    """The fused layer's x_next and skip, and its backward's first pass (grad_h and z), on
    (R, 32) and (2R, 32) floats of dynamic shared memory."""
    run_layer(emu, case, dtype)


def test_wavenet_layer_opts_in_to_more_shared_memory(emu):
    """R = 384: 48 KB (R x 32 floats) and 96 KB (2R x 32) of dynamic shared memory, over the default 48 KB
    limit: the launcher's cudaFuncSetAttribute opt-in must precede the launches (9.0 allows 227 KB)."""
    run_layer(emu, (1, 384, 16, 4, 2, 1, None, True), torch.bfloat16)


def test_wavenet_layer_backward_over_the_shared_memory_of_7_5(emu):
    """On 7.5 (64 KB a block) the backward's 2R x 32 floats for R = 384 do not fit: the launcher returns
    the opt-in's error (the op raises it), and nothing runs. The forward (48 KB + 12.4 KB) still fits."""
    emu.set_device("sm75")
    n, r, s, length = 1, 384, 4, 3
    tensors = [torch.randn(n, r, length), None, torch.randn(2 * r, r, 1), None, torch.randn(r, r), None,
               torch.randn(s, r), None, torch.zeros(n, r, length), torch.zeros(n, s, length),
               torch.randn(n, r, length), torch.randn(n, s, length), torch.zeros(n, 2 * r, length),
               torch.zeros(n, r, length)]
    pointers = (ctypes.c_void_p * 14)(*[None if t is None else t.data_ptr() for t in tensors])
    args = (_longs(n, r, s, length, 1, 1), 1.0, 0, _causal_strides(tensors[0]), None, pointers)
    assert emu.lib.gmk_emu_wavenet_layer(1, *args) == 1  # cudaErrorInvalidValue
    assert not tensors[12].any() and not tensors[13].any()
    emu.run("gmk_emu_wavenet_layer", 0, *args)
    assert tensors[8].isfinite().all() and tensors[8].any()


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("backward", [False, True])
def test_wavenet_layer_residual_bound_is_what_launches(emu, arch, backward):
    """The op's bound on R (max_layer_residual_cuda, from the device's shared memory): R at the bound
    launches, R two above it does not (the bound keeps 128 bytes of slack: at most one row)."""
    emu.set_device(arch)
    emu.lib.gmk_emu_max_layer_residual.restype = ctypes.c_int64
    bound = emu.lib.gmk_emu_max_layer_residual(int(backward))
    assert bound > 0

    def launch(r):
        n, s, length = 1, 4, 3
        tensors = [torch.randn(n, r, length), None, torch.randn(2 * r, r, 1), None, torch.randn(r, r), None,
                   torch.randn(s, r), None, torch.zeros(n, r, length), torch.zeros(n, s, length),
                   torch.randn(n, r, length), torch.randn(n, s, length), torch.zeros(n, 2 * r, length),
                   torch.zeros(n, r, length)]
        pointers = (ctypes.c_void_p * 14)(*[None if t is None else t.data_ptr() for t in tensors])
        args = (_longs(n, r, s, length, 1, 1), 1.0, 0, _causal_strides(tensors[0]), None, pointers)
        error = emu.lib.gmk_emu_wavenet_layer(int(backward), *args)
        message = ctypes.create_string_buffer(1024)
        faults = emu.lib.gmk_emu_take_faults(message, len(message))  # over the limit: the GPU refuses it
        emu.lib.gmk_emu_take_launches(ctypes.create_string_buffer(1 << 16), 1 << 16)
        return error == 0 and faults == 0

    assert launch(bound)
    assert not launch(bound + 2)


# --- WaveNet generation: the block kernel and the cluster kernel ---------------------------------------

OPTIN_SHARED = {"sm90": 227 * 1024, "sm75": 64 * 1024}


def wavenet_plan(emu, sizes, element_size, mixture, shared_bytes, multiprocessors, capability):
    out = (ctypes.c_int64 * 4)()
    assert emu.lib.gmk_emu_wavenet_plan(_longs(*sizes), element_size, mixture, shared_bytes, multiprocessors,
                                        capability, out) == 0
    return list(out)


def run_generate(emu, weights, dilations, layer_cond, uniform, *, head, start_class, residual_scale,
                 temperature, log_scale_min, plan):
    """The op's packing (wavenet_generate_ops.cpp): weights input-major in their dtype, the ring buffers'
    layout, a zeroed float cache; runs the kernel of ``plan`` (cluster kernel when plan[0] > 0); returns the
    samples."""
    (embedding, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, head_weight1, head_bias1,
     head_weight2, head_bias2) = weights
    classes, r = embedding.shape
    layers, _, _, k = conv_weight.shape
    s, h, p = skip_weight.shape[1], head_weight1.shape[0], head_weight2.shape[0]
    n, steps, uniforms = uniform.shape
    info, offset = [], 0
    for d in dilations:
        info += [d, offset]
        offset += (k - 1) * d * r
    packed = [Buffer(t.permute(*dims)) for t, dims in (
        (embedding, (0, 1)), (conv_weight, (0, 3, 2, 1)), (conv_bias, (0, 1)), (res_weight, (0, 2, 1)),
        (res_bias, (0, 1)), (skip_weight, (0, 2, 1)), (skip_bias, (0, 1)), (head_weight1, (1, 0)),
        (head_bias1, (0,)), (head_weight2, (1, 0)), (head_bias2, (0,)))]
    cond = None if layer_cond is None else Buffer(layer_cond.permute(0, 1, 3, 2))
    noise, layer_info = Buffer(uniform), Buffer(torch.tensor(info, dtype=torch.int64))
    cache = Buffer(torch.zeros(n, max(offset, 1)))
    samples = Buffer.empty((n, steps), torch.int64)
    tensors = packed + [cond, noise, layer_info, cache, samples]
    pointers = (ctypes.c_void_p * 16)(*[None if b is None else b.ptr for b in tensors])
    sizes = _longs(n, steps, layers, r, s, h, p, classes, k, 0 if layer_cond is None else layer_cond.shape[3],
                   uniforms, offset, start_class)
    floats = (ctypes.c_double * 3)(residual_scale, temperature, log_scale_min)
    launches = emu.run("gmk_emu_wavenet_generate", sizes, _longs(*plan), floats, head == "logistic_mixture",
                       DTYPE_CODES[embedding.dtype], pointers)
    assert len(launches) == 1 and "wavenet_generate::Args" in launches[0], launches  # through `kernel`
    clusters = f" [clusters {plan[0]}x1x1]" if plan[0] else ""
    assert launches[0].endswith(clusters) and (plan[0] or "[clusters" not in launches[0]), launches
    for buffer in packed + [cond, noise, layer_info]:
        if buffer is not None:
            buffer.check_unchanged()
    for buffer in (cache, samples):
        buffer.check_guards()
    return samples.view.clone()


# (head, kernel_size, cond, batch, multiprocessors, device shared bytes (None: the device's)): kB = 2 with a
# partial last block; kB = 4 and the mixture head; weights streamed from global memory (they do not fit).
GENERATE_CASES = {
    "softmax-k2-kB2": ("softmax", 2, "local+global", 3, 1, None),
    "mixture-k3-kB4": ("logistic_mixture", 3, "global", 5, 1, None),
    "softmax-k1-weights-in-global": ("softmax", 1, "none", 2, 132, 4096),
}


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
@pytest.mark.parametrize("case", GENERATE_CASES.values(), ids=GENERATE_CASES.keys())
def test_wavenet_generate_block_kernel(emu, case, dtype, arch):
    """Same noise, same samples as the float32 cached loop on the weights in ``dtype`` (test_wavenet.py's
    small network: L = 6, R = 8, S = 12, H = 10, A = 16)."""
    from gmkernels.models import WaveNet
    from test_wavenet import cached_loop, generation_inputs, options, small_config

    head, kernel_size, cond, batch, multiprocessors, device_shared = case
    config = small_config(head, kernel_size, cond)
    torch.manual_seed(0)
    model = WaveNet(config).to(dtype)
    weights, layer_cond, uniform = generation_inputs(model, batch=batch, steps=12, dtype=dtype)
    c = config
    p = weights[9].shape[0]
    plan = wavenet_plan(emu, (c.residual_channels, c.skip_channels, c.head_channels, p, c.layers, kernel_size, batch),
                        weights[0].element_size(), head == "logistic_mixture", device_shared or OPTIN_SHARED[arch],
                        multiprocessors, 0)  # 0: the block kernel, as the op's fallback from the cluster kernel
    assert plan[0] == 0 and plan[3] == (device_shared is None), plan
    emu.set_device(arch, multiprocessors)
    samples = run_generate(emu, weights, c.dilations, layer_cond, uniform, temperature=0.9, plan=plan,
                           **options(config))
    expected = cached_loop(config, [w.float() for w in weights], None if layer_cond is None else layer_cond.float(),
                           uniform, 0.9)
    assert torch.equal(samples, expected)


def test_wavenet_generate_with_exactly_48_kb_of_activations(emu):
    """4R + S + H + P + 1 = 12288 floats: the block kernel's dynamic shared memory is exactly 48 KB, and its
    static `prev` takes it past the 48 KB a kernel gets without the opt-in; a GPU refuses the launch
    (invalid argument) unless the launcher opts in whenever static + dynamic bytes exceed 48 KB."""
    import gmkernels.reference.wavenet_generate as generate_reference

    r = s = h = 8
    classes = 12288 - 1 - 4 * r - s - h  # softmax: P = A
    torch.manual_seed(0)
    weights = generate_reference.GenerationWeights(
        torch.randn(classes, r), torch.randn(1, 2 * r, r, 1) / r**0.5, torch.randn(1, 2 * r), torch.randn(1, r, r),
        torch.randn(1, r), torch.randn(1, s, r), torch.randn(1, s), torch.randn(h, s), torch.randn(h),
        torch.randn(classes, h), torch.randn(classes))
    uniform = torch.rand(1, 2, 1)
    plan = wavenet_plan(emu, (r, s, h, classes, 1, 1, 1), 4, False, OPTIN_SHARED["sm90"], 132, 0)
    assert plan == [0, 1, 48 * 1024, 0]
    samples = run_generate(emu, weights, [1], None, uniform, head="softmax", start_class=0, residual_scale=1.0,
                           temperature=1.0, log_scale_min=-7.0, plan=plan)
    expected = generate_reference.wavenet_generate(weights, [1], None, uniform, 0, 1.0, 1.0, "softmax", -7.0)
    assert torch.equal(samples, expected)


def cluster_plans(emu, sizes, element_size, mixture, batch):
    """plan_cuda's cluster plans on 9.0 as the device's shared memory shrinks: C = 2, then each larger C
    that fits in less than the last one's bytes (1/C of the weights per block), down to 16."""
    plans, device_shared = [], OPTIN_SHARED["sm90"]
    while True:
        plan = wavenet_plan(emu, (*sizes, batch), element_size, mixture, device_shared, 132, 90)
        if plan[0] == 0:
            return plans
        plans.append(plan)
        device_shared = plan[2] + 8 * 8 - 1  # plan_cuda keeps 8 int64 of static shared memory: plan[2] no longer fits


# (head, kernel_size, cond, batch, dtype, cluster sizes): R = S = H = 16, P = 32 classes or 16 components.
CLUSTER_CASES = {
    "softmax-k2-cond-C2-C4": ("softmax", 2, "local+global", 2, torch.float32, (2, 4)),
    "mixture-k3-C8-C16": ("logistic_mixture", 3, "none", 1, torch.float32, (8, 16)),
    "mixture-k2-global-C4": ("logistic_mixture", 2, "global", 2, torch.float32, (4,)),
    "softmax-k3-bf16-C2-C8": ("softmax", 3, "global", 1, torch.bfloat16, (2, 8)),
    "mixture-k2-cond-fp16-C2": ("logistic_mixture", 2, "local+global", 1, torch.float16, (2,)),
}


@pytest.mark.parametrize("case", CLUSTER_CASES.values(), ids=CLUSTER_CASES.keys())
def test_wavenet_generate_cluster_kernel(emu, case):
    """The cluster kernel (C blocks per batch element, 1/C of every weight in each block's shared memory,
    rows exchanged through distributed shared memory; see shim.h for how the emulator runs clusters) draws
    the same samples as the block kernel and as the float32 cached loop, for several cluster sizes, both
    heads, with and without conditioning (L = 4, R = S = H = 16, 8 steps)."""
    from gmkernels.models import WaveNet
    from test_wavenet import cached_loop, generation_inputs, options, small_config

    head, kernel_size, cond, batch, dtype, sizes = case
    config = small_config(head, kernel_size, cond, layers=4, residual_channels=16, skip_channels=16,
                          head_channels=16, num_classes=32, mixture_components=16)
    torch.manual_seed(1)
    model = WaveNet(config).to(dtype)
    weights, layer_cond, uniform = generation_inputs(model, batch=batch, steps=8, dtype=dtype)
    weights = [w * 3 if i in (7, 9) else w for i, w in enumerate(weights)]  # the head's 1x1s: logits that
    c = config                                                                 # depend on the layers' outputs
    p = weights[9].shape[0]
    shape = (c.residual_channels, c.skip_channels, c.head_channels, p, c.layers, kernel_size)
    plans = {plan[0]: plan for plan in cluster_plans(emu, shape, weights[0].element_size(), head != "softmax", batch)}
    assert set(plans) == {2, 4, 8, 16}, plans
    block_plan = wavenet_plan(emu, (*shape, batch), weights[0].element_size(), head != "softmax",
                              OPTIN_SHARED["sm90"], 132, 0)
    run = functools.partial(run_generate, emu, weights, c.dilations, layer_cond, uniform, temperature=0.9,
                            **options(config))
    floats = [w.float() for w in weights]
    cond_floats = None if layer_cond is None else layer_cond.float()
    expected = cached_loop(config, floats, cond_floats, uniform, 0.9)
    no_skip = [w * 0 if i in (5, 6) else w for i, w in enumerate(floats)]  # relu(skip) = 0: the head alone
    assert not torch.equal(cached_loop(config, no_skip, cond_floats, uniform, 0.9), expected), "insensitive case"
    assert torch.equal(run(plan=block_plan), expected)
    for size in sizes:
        assert torch.equal(run(plan=plans[size]), expected), f"cluster size {size}"


_PROTOTYPES["gmk_emu_wavenet_max_active_clusters"] = [_I64, _I64, ctypes.c_int]


def test_wavenet_cluster_capacity(emu):
    """The op's residency query (max_active_clusters_cuda: the launch configuration with its shared memory
    opt-in, then cudaOccupancyMaxActiveClusters) for each cluster plan: the emulated device's bound, 132
    multiprocessors x blocks per multiprocessor (228 KB of shared memory, 1 KB reserved per block; 2048
    threads) / C."""
    shape = (16, 16, 16, 32, 4, 2)
    plans = cluster_plans(emu, shape, 4, False, 1)
    assert [plan[0] for plan in plans] == [2, 4, 8, 16]
    for size, _, shared, _ in plans:
        per_multiprocessor = min(228 * 1024 // (shared + 1024), 2048 // 256)
        assert emu.lib.gmk_emu_wavenet_max_active_clusters(size, shared, 0) == 132 * per_multiprocessor // size
    size, _, shared, _ = wavenet_plan(emu, (64, 64, 64, 64, 8, 2, 1), 4, False, OPTIN_SHARED["sm90"], 132, 90)
    assert size > 0 and shared > 48 * 1024  # over 48 KB: the query needs the opt-in first
    assert emu.lib.gmk_emu_wavenet_max_active_clusters(size, shared, 0) == 132 * (228 * 1024 // (shared + 1024)) // size
    assert emu.lib.gmk_emu_wavenet_max_active_clusters(17, 1024, 0) == -1  # over 16 blocks: no GPU takes it


# --- bias_act and upfirdn2d (issue 13) ---------------------------------------------------------------

import gmkernels.ops.bias_act as bias_act_ops  # noqa: E402
import gmkernels.reference.bias_act as bias_act_reference  # noqa: E402
import gmkernels.reference.upfirdn2d as upfirdn2d_reference  # noqa: E402

_PROTOTYPES.update({
    "gmk_emu_bias_act": [ctypes.c_int, ctypes.c_int, _P, _P, ctypes.c_int, ctypes.c_int] + [_P] * 6,
    "gmk_emu_upfirdn2d": [_P, _P, ctypes.c_int, ctypes.c_double, ctypes.c_int, ctypes.c_int, _P, _P, _P],
})
BIAS_ACT_CODES = {name: code for code, name in enumerate(bias_act_ops.ACTIVATIONS)}


def _bias_act_emulated(emu, mode, act, x, b, y, grad, grad2, clamp, dtype):
    """One launch on (outer, channels, inner) = (3, 5, 7) contiguous tensors; returns the output."""
    shape = next(t for t in (x, y, grad) if t is not None).shape
    out = Buffer.empty(shape, dtype)
    alpha, gain = bias_act_reference.resolve(act, None, None)
    buffers = [None if t is None else Buffer(t) for t in (x, b, y, grad, grad2)]
    emu.run("gmk_emu_bias_act", mode, BIAS_ACT_CODES[act], _longs(*shape),
            (ctypes.c_double * 3)(alpha, gain, 0.0 if clamp is None else clamp), clamp is not None,
            DTYPE_CODES[dtype], *(None if buffer is None else buffer.ptr for buffer in buffers), out.ptr)
    out.check_guards()
    for buffer in buffers:
        if buffer is not None:
            buffer.check_unchanged()
    return out.view


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", bias_act_ops.ACTIVATIONS)
def test_bias_act(emu, act, dtype):
    """Forward, backward and backward2 of the CUDA kernel against the float64 reference's autograd."""
    x, b = (2 * torch.randn(3, 5, 7)).to(dtype), torch.randn(5).to(dtype)
    grad, grad2 = torch.randn(3, 5, 7).to(dtype), torch.randn(3, 5, 7).to(dtype)
    clamp = 1.1 if dtype == torch.float32 else None  # (the half types' clamp rule: tests/test_bias_act.py)
    x64, b64 = x.double().requires_grad_(), b.double()
    y64 = bias_act_reference.bias_act(x64, b64, 1, act, clamp=clamp)
    grad64, = torch.autograd.grad(y64, x64, grad.double(), create_graph=True)
    y = _bias_act_emulated(emu, 0, act, x, b, None, None, None, clamp, dtype)
    assert_close(y, y64, dtype)
    saved = bias_act_ops.saved_input(act, clamp)
    backward = _bias_act_emulated(emu, 1, act, x if saved == "x" else None, b if saved == "x" else None,
                                  y if saved == "y" else None, grad, None, clamp, dtype)
    assert_close(backward, grad64, dtype, "grad")
    if act in bias_act_ops.SMOOTH:
        second64, = torch.autograd.grad(grad64, x64, grad2.double())
        second = _bias_act_emulated(emu, 2, act, x, b, None, grad, grad2, clamp, dtype)
        assert_close(second, second64, dtype, "grad")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("up", "down", "padding", "taps"), [((2, 2), (1, 1), (2, 1, 2, 1), 4),
                                                             ((1, 1), (2, 2), (1, 1, 1, 1), 4),
                                                             ((4, 1), (1, 2), (6, 5, 3, 2), 12),
                                                             ((1, 1), (1, 1), (-1, 2, 0, -1), 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upfirdn2d(emu, dtype, up, down, padding, taps, channels_last):
    x = torch.randn(2, 3, 7, 6).to(dtype)
    x_view = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    f = torch.randn(taps, taps + 1)
    for flip in (False, True):
        y64 = upfirdn2d_reference.upfirdn2d(x.double(), f.double(), up, down, padding, flip, 1.7)
        x_buffer = Buffer(x_view.permute(0, 2, 3, 1) if channels_last else x_view)
        f_buffer = Buffer(f)
        sizes = (*x.shape, *y64.shape[2:], *f.shape, *up, *down, padding[0], padding[2])
        strides = x_view.stride()
        out_cl = Buffer.empty(y64.permute(0, 2, 3, 1).shape if channels_last else y64.shape, dtype)
        emu.run("gmk_emu_upfirdn2d", _longs(*sizes), _longs(*strides), flip, 1.7, channels_last,
                DTYPE_CODES[dtype], x_buffer.ptr, f_buffer.ptr, out_cl.ptr)
        result = out_cl.view.permute(0, 3, 1, 2) if channels_last else out_cl.view
        assert_close_sum(result, y64, dtype, f.numel())
        out_cl.check_guards()
        x_buffer.check_unchanged()
        f_buffer.check_unchanged()


# --- cached_conv2d --------------------------------------------------------------------------------------

import gmkernels.reference.cached_conv as cached_conv_reference  # noqa: E402

_PROTOTYPES["gmk_emu_cached_conv"] = [_P, _P, ctypes.c_int, _P, _P, _P, _P]

# (N, Cin, Cout, R, Wp, kh, kw, column, count, stride): one tile and one block of outputs; Cin kh kw = 2080 taps
# (2 tiles of 2048) and Cout = 70 (2 blocks of 64, the second partial).
CACHED_CONV_CASES = {"small": (2, 3, 5, 3, 9, 2, 3, 1, 3, 2), "two-tiles": (2, 130, 70, 4, 7, 4, 4, 0, 2, 3)}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
@pytest.mark.parametrize("case", CACHED_CONV_CASES.values(), ids=CACHED_CONV_CASES.keys())
def test_cached_conv(emu, case, dtype, channels_last):
    """The window's pointer and rows' strides as cached_conv_ops.cpp passes them; against F.conv2d in float64."""
    n, cin, cout, r, wp, kh, kw, column, count, stride = case
    rows = torch.randn(n, cin, r, wp).to(dtype)
    weight, bias = (torch.randn(cout, cin, kh, kw) / (cin * kh * kw) ** 0.5).to(dtype), torch.randn(cout).to(dtype)
    expected = cached_conv_reference.cached_conv2d(rows.double(), weight.double(), bias.double(), column, count, stride)
    stored = rows.permute(0, 2, 3, 1) if channels_last else rows  # the memory order
    rows_buffer = Buffer(stored)
    view = rows_buffer.view.permute(0, 3, 1, 2) if channels_last else rows_buffer.view
    window = view[:, :, r - kh:, column:]
    weight_buffer, bias_buffer = Buffer(weight), Buffer(bias)
    out = Buffer.empty((n, cout, count), dtype)
    launches = emu.run("gmk_emu_cached_conv", _longs(n, cin, cout, kh, kw, count, stride), _longs(*view.stride()),
                       DTYPE_CODES[dtype], window.data_ptr(), weight_buffer.ptr, bias_buffer.ptr, out.ptr)
    assert len(launches) == 1 and "cached_conv_kernel" in launches[0], launches
    assert_close_sum(out.view, expected, dtype, cin * kh * kw)
    out.check_guards()
    for buffer in (rows_buffer, weight_buffer, bias_buffer):
        buffer.check_unchanged()


# --- every kernel ------------------------------------------------------------------------------------------

# Each __global__ of csrc/ and the tests (of this file, or module.test) that run it under the emulation.
KERNEL_TESTS = {
    "logistic_mixture_cuda.cu": {"position_kernel": ["test_logistic_mixture_nll_and_backward",
                                                     "test_logistic_mixture_sample"]},
    "actnorm_cuda.cu": {"forward_kernel": ["test_actnorm"], "backward_kernel": ["test_actnorm"]},
    "wavenet_generate_cuda.cu": {"generate_kernel": ["test_wavenet_generate_block_kernel",
                                                     "test_wavenet_generate_cluster_kernel"],
                                 "generate_cluster_kernel": ["test_wavenet_generate_cluster_kernel"]},
    "invconv_cuda.cu": {"conv1x1_kernel": ["test_conv1x1"]},
    "causal_conv_cuda.cu": {"conv_kernel": ["test_causal_conv"], "weight_grad_kernel": ["test_causal_conv"],
                            "layer_kernel": ["test_wavenet_layer"], "layer_grad_h_kernel": ["test_wavenet_layer"]},
    "masked_conv_cuda.cu": {"tap_gemm_kernel": ["test_masked_conv"], "weight_grad_kernel": ["test_masked_conv"]},
    "upfirdn2d_cuda.cu": {"upfirdn2d_kernel": ["test_upfirdn2d"]},
    "cached_conv_cuda.cu": {"cached_conv_kernel": ["test_cached_conv"]},
    "coupling_cuda.cu": {name: ["test_coupling", "test_coupling_checkerboard"] for name in (
        "forward_kernel", "sum_blocks_kernel", "backward_kernel", "checkerboard_forward_kernel",
        "checkerboard_backward_kernel")},
    "gated_cuda.cu": {name: ["test_gated"] for name in ("forward_rows_kernel", "backward_rows_kernel",
                                                       "forward_strided_kernel", "backward_strided_kernel")},
    "bias_act_cuda.cu": {"bias_act_kernel": ["test_bias_act"]},
    "vector_quantize_cuda.cu": {"norms_kernel": ["test_vector_quantize.test_cuda_search_emulated"],
                                "search_kernel": ["test_vector_quantize.test_cuda_search_emulated"],
                                "zero_kernel": ["test_vector_quantize.test_cuda_statistics_emulated"],
                                "statistics_kernel": ["test_vector_quantize.test_cuda_statistics_emulated"],
                                "round_statistics_kernel": ["test_vector_quantize.test_cuda_statistics_emulated"]},
}


def test_every_kernel_is_emulated():
    """Every __global__ function of csrc/ is compiled into the emulation (build.KERNEL_SOURCES) and named in
    KERNEL_TESTS with tests of this file that launch it: a new kernel must come with its emulated test."""
    found = {}
    for source in sorted(build.CSRC.rglob("*.cu")):
        names = re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", source.read_text())
        if names:
            found[source.name] = set(names)
            assert source in build.KERNEL_SOURCES, f"{source} is not compiled into the emulation"
    assert found == {name: set(kernels) for name, kernels in KERNEL_TESTS.items()}
    for kernels in KERNEL_TESTS.values():
        for tests in kernels.values():
            for test in tests:
                module, _, name = test.rpartition(".")
                namespace = vars(importlib.import_module(module)) if module else globals()
                assert callable(namespace.get(name)), test


# --- sizes past 2^31: the last blocks of grids too large to run --------------------------------------------

FAR = 2**31


def untouched(numel, dtype):
    """``numel`` zeros in an anonymous mapping whose pages exist only once touched (MAP_NORESERVE): a tensor
    past 2^31 elements of which a kernel's last blocks touch a few pages."""
    from test_large_sizes import untouched as mapped
    return mapped(numel, dtype)


def last_two_blocks(elements, per_block):
    """How many elements the last 2 blocks of a grid of ceil(elements / per_block) blocks cover."""
    return elements - (-(-elements // per_block) - 2) * per_block


@contextlib.contextmanager
def last_blocks(emu, count):
    """Launches run only their last ``count`` blocks (in linear order; clusters, for a cluster launch)."""
    emu.lib.gmk_emu_run_last_clusters(count)
    try:
        yield
    finally:
        emu.lib.gmk_emu_run_last_clusters(0)


def test_emulator_runs_only_the_last_blocks(emu):
    """Three blocks of the 300-element sum: only the last (the partial one) writes its sum."""
    values, out = torch.randn(300), torch.full((3,), math.nan)
    with last_blocks(emu, 1):
        emu.run("gmk_emu_selftest_block_sum", values.data_ptr(), out.data_ptr(), 300)
    assert out[:2].isnan().all()
    torch.testing.assert_close(out[2].double(), values[256:].double().sum(), atol=1e-5, rtol=1e-5)


def test_bias_act_past_2_31_elements(emu):
    """(1, 3, I) with 3 I > 2^31: the last 2 blocks' elements (of channel 2) take their bias and land at their
    offsets past 2^31; the elements before them stay untouched."""
    inner = FAR // 3 + 1000
    elements, tail = 3 * inner, 3000
    x, out = untouched(elements, torch.bfloat16), untouched(elements, torch.bfloat16)
    x[-tail:] = torch.randn(tail).bfloat16()
    b = torch.randn(3).bfloat16()
    alpha, gain = bias_act_reference.resolve("lrelu", None, None)
    with last_blocks(emu, 2):
        emu.run("gmk_emu_bias_act", 0, BIAS_ACT_CODES["lrelu"], _longs(1, 3, inner), (ctypes.c_double * 3)(
            alpha, gain, 0.0), 0, DTYPE_CODES[torch.bfloat16], x.data_ptr(), b.data_ptr(), None, None, None,
            out.data_ptr())
    run = last_two_blocks(elements, 1024)  # 256 threads x 4 elements per block
    expected = bias_act_reference.bias_act(x[-run:].double(), b[2].double().reshape(1), 0, "lrelu")
    assert_close(out[-run:], expected, torch.bfloat16)
    assert (out[-tail:-run] == 0).all()


@pytest.mark.parametrize("layout", ["rows", "strided"])
def test_gated_past_2_31_elements(emu, layout):
    """x (1, 2, I), y (1, 1, I) with I > 2^31: the gate's channel sits 2^31+ elements past the filter's, and
    the last blocks' outputs at offsets past 2^31. "strided": x stored with a gap after every element."""
    inner, tail = FAR + 64, 4096
    step = 1 if layout == "rows" else 2
    x, y = untouched(2 * inner * step, torch.bfloat16), untouched(inner, torch.bfloat16)
    x_view = x.as_strided((1, 2, inner), (0, inner * step, step))
    filter_tail, gate_tail = torch.randn(tail).bfloat16(), torch.randn(tail).bfloat16()
    x_view[0, 0, -tail:], x_view[0, 1, -tail:] = filter_tail, gate_tail
    with last_blocks(emu, 2):
        launches = emu.run("gmk_emu_gated", 0, 1, 1, inner, 1, DTYPE_CODES[torch.bfloat16], x.data_ptr(),
                           _gated_strides(x_view), None, None, None, y.data_ptr())
    assert f"{layout}_kernel" in launches[0], launches
    run = last_two_blocks(inner, 256 * (8 if layout == "rows" else 1))  # 8 elements a thread on the rows path
    h = torch.stack([filter_tail[-run:], gate_tail[-run:]]).double()
    assert_close(y[-run:], gated_reference.gated_activation(h.unsqueeze(0)).reshape(-1), torch.bfloat16)
    assert (y[-tail:-run] == 0).all()


def test_upfirdn2d_past_2_31_elements(emu):
    """x and out (1, 1, 46341, 46341): H W > 2^31; the last 2 blocks compute the last row's last outputs from
    their taps (a 3 x 3 filter, padding 1), reading x at offsets past 2^31."""
    side, tail = 46341, 520
    assert side * side > FAR
    x, out = untouched(side * side, torch.bfloat16), untouched(side * side, torch.bfloat16)
    image, result = x.view(1, 1, side, side), out.view(1, 1, side, side)
    image[0, 0, -3:, -tail:] = torch.randn(3, tail).bfloat16()
    f = torch.randn(3, 3)
    with last_blocks(emu, 2):
        emu.run("gmk_emu_upfirdn2d", _longs(1, 1, side, side, side, side, 3, 3, 1, 1, 1, 1, 1, 1),
                _longs(*image.stride()), 0, 1.0, 0, DTYPE_CODES[torch.bfloat16], x.data_ptr(), f.data_ptr(),
                out.data_ptr())
    crop = image[:, :, -3:, -tail:].double()  # the pixels around it are zero, as the padding
    expected = upfirdn2d_reference.upfirdn2d(crop, f.double(), (1, 1), (1, 1), (1, 1, 1, 1), False, 1.0)
    run = last_two_blocks(side * side, 256)  # one output a thread: the last row's last 281
    assert_close_sum(result[0, 0, -1, -run:], expected[0, 0, -1, -run:], torch.bfloat16, 9)
    assert (result[0, 0, -1, -tail:-run] == 0).all() and (result[0, 0, -2, -tail:] == 0).all()


def test_cached_conv_past_2_31_elements(emu):
    """out (1, 2, count) with 2 count > 2^31: the last 2 blocks (the last 2 columns, both output channels)
    write output channel 1's values at offsets past 2^31."""
    count, kw, tail = FAR // 2 + 8, 3, 16
    rows, out = untouched(count + kw - 1, torch.bfloat16), untouched(2 * count, torch.bfloat16)
    rows[-tail:] = torch.randn(tail).bfloat16()
    weight, bias = torch.randn(2, 1, 1, kw).bfloat16(), torch.randn(2).bfloat16()
    with last_blocks(emu, 2):
        emu.run("gmk_emu_cached_conv", _longs(1, 1, 2, 1, kw, count, 1), _longs(count + kw - 1, count + kw - 1,
                count + kw - 1, 1), DTYPE_CODES[torch.bfloat16], rows.data_ptr(), weight.data_ptr(),
                bias.data_ptr(), out.data_ptr())
    window = rows[-(2 + kw - 1):].double().view(1, 1, 1, -1)
    expected = cached_conv_reference.cached_conv2d(window, weight.double(), bias.double(), 0, 2, 1)
    assert_close_sum(out.view(1, 2, count)[:, :, -2:], expected, torch.bfloat16, kw)
    assert (out.view(2, count)[:, -tail:-2] == 0).all()


def test_actnorm_past_2_31_elements(emu):
    """(1, 2, I) with 2 I > 2^31: the kernel takes its 64-bit index path (fits_32_bits is false); the last of
    its 65536 grid-stride blocks reads and writes every 2^24-th run of 256 elements, up to past 2^31, with
    channel 1's bias and scale past 2^30 elements."""
    inner = FAR // 2 + 4096
    total, step, base = 2 * inner, 65536 * 256, 65535 * 256  # the last block's first element
    x, out = untouched(total, torch.bfloat16), untouched(total, torch.bfloat16)
    runs = -(-(total - base) // step)
    assert base + (runs - 1) * step + 256 <= total
    x_runs, out_runs = (t.as_strided((runs, 256), (step, 1), base) for t in (x, out))
    x_runs.copy_(torch.randn(runs, 256).bfloat16())
    bias, log_scale = torch.randn(2), 0.3 * torch.randn(2)
    with last_blocks(emu, 1):
        launches = emu.run("gmk_emu_actnorm", 0, 1, 2, inner, 0, DTYPE_CODES[torch.bfloat16], x.data_ptr(),
                           _longs(total, inner, 1), bias.data_ptr(), log_scale.data_ptr(), None, out.data_ptr(),
                           None, 0)
    assert "long int" in launches[0] or "int64" in launches[0], launches  # forward_kernel<T, int64_t>
    channel = (base + torch.arange(runs).unsqueeze(1) * step + torch.arange(256)) // inner
    expected = (x_runs.double() + bias.double()[channel]) * log_scale.double().exp()[channel]
    assert_close(out_runs, expected, torch.bfloat16)
    assert channel[-1, -1] == 1 and out[base - 256:base].eq(0).all()


def test_logistic_mixture_sample_past_2_31_positions(emu):
    """params (1, 6, S), S > 2^31 positions (2 components of one channel): the last 2 blocks' samples read
    parameters up to 6 S elements in (past 2^33) and noise and write samples past 2^31."""
    from test_logistic_mixture import make_params

    s, tail = FAR + 64, 256
    params, out = untouched(6 * s, torch.bfloat16).view(1, 6, s), untouched(s, torch.float32).view(1, 1, s)
    gumbel_u, logistic_u = untouched(2 * s, torch.float32).view(1, 2, s), untouched(s, torch.float32).view(1, 1, s)
    params[..., -tail:] = make_params(1, 1, 2, (tail,), dtype=torch.bfloat16)
    gumbel_u[..., -tail:], logistic_u[..., -tail:] = torch.rand(1, 2, tail), torch.rand(1, 1, tail)
    with last_blocks(emu, 2):
        emu.run("gmk_emu_logistic_mixture", 2, _longs(1, 1, 2, s, 256), -7.0, DTYPE_CODES[torch.bfloat16],
                params.data_ptr(), _strides(params), None, None, None, None, gumbel_u.data_ptr(),
                _strides(gumbel_u), logistic_u.data_ptr(), _strides(logistic_u), out.data_ptr())
    run = last_two_blocks(s, 128)
    expected = lm_reference.discretized_logistic_mixture_sample(params[..., -run:], gumbel_u[..., -run:],
                                                                logistic_u[..., -run:])
    torch.testing.assert_close(out[..., -run:], expected, atol=0, rtol=0)
    assert out[..., -tail:-run].eq(0).all()


_PROTOTYPES.update({"gmk_emu_vector_quantize": [_P, ctypes.c_int] + [_P] * 6,
                    "gmk_emu_vector_quantize_statistics": [_P, ctypes.c_int] + [_P] * 4})


def test_vector_quantize_past_2_31_positions(emu):
    """x (1, 2, P) with P > 2^31 positions (its second dimension past 2^32 elements): the search's last 2
    blocks pick each position's nearest code and write quantized, indices and distances past 2^31; the
    statistics' last 2 blocks (second dimension only) add x into sums[k][1] at the indices' codes."""
    positions, tail, codes = FAR + 64, 512, 5
    x, quantized = untouched(2 * positions, torch.bfloat16), untouched(2 * positions, torch.bfloat16)
    indices, distance = untouched(positions, torch.int64), untouched(positions, torch.float32)
    x3, q3 = x.view(1, 2, positions), quantized.view(1, 2, positions)
    codebook = (4 * torch.randn(codes, 2)).bfloat16()
    chosen = torch.randint(codes, (tail,))
    x3[0, :, -tail:] = (codebook.float()[chosen] + 0.05 * torch.randn(tail, 2)).T.bfloat16()
    norms = torch.full((codes,), math.nan)
    sizes = _longs(1, 2, positions, codes)
    with last_blocks(emu, 2):
        emu.run("gmk_emu_vector_quantize", sizes, DTYPE_CODES[torch.bfloat16], x.data_ptr(), codebook.data_ptr(),
                norms.data_ptr(), quantized.data_ptr(), indices.data_ptr(), distance.data_ptr())
    run = last_two_blocks(positions, 128)
    assert torch.equal(indices[-run:], chosen[-run:]) and indices[-tail:-run].eq(0).all()
    assert torch.equal(q3[0, :, -run:], codebook[chosen[-run:]].T)
    expected = ((x3[0, :, -run:].double() - codebook.double()[chosen[-run:]].T) ** 2).sum(0)
    assert_close(distance[-run:], expected, torch.float32)

    counts, sums = torch.full((codes,), math.nan), torch.full((codes, 2), math.nan)
    with last_blocks(emu, 2):
        emu.run("gmk_emu_vector_quantize_statistics", sizes, DTYPE_CODES[torch.bfloat16], x.data_ptr(),
                indices.data_ptr(), counts.data_ptr(), sums.data_ptr())
    covered = last_two_blocks(2 * positions, 256)  # elements of x: the second dimension's last positions
    values, codes_of = x3[0, 1, -covered:].double(), indices[-covered:]
    expected_sums = torch.zeros(codes, dtype=torch.float64).index_add_(0, codes_of, values)
    assert counts.eq(0).all() and sums[:, 0].eq(0).all()
    assert_close_sum(sums[:, 1], expected_sums, torch.float32, covered)


def test_conv1x1_past_2_31_elements(emu):
    """x (1, 2, I), y (1, 3, I), 3 I > 2^31: the last of the 4096 grid-stride blocks computes every 2^20-th run
    of 256 positions; y's third channel lands past 2^31 elements."""
    inner = FAR // 2 + 4096
    step, base = 4096 * 256, 4095 * 256
    x = untouched(2 * inner, torch.bfloat16).view(1, 2, inner)
    y = untouched(3 * inner, torch.bfloat16).view(1, 3, inner)
    runs = -(-(inner - base) // step)
    assert base + (runs - 1) * step + 256 <= inner  # every run of the last block is whole

    def visited(t, channel):  # the last block's positions in one channel: (runs, 256)
        return t.reshape(-1).as_strided((runs, 256), (step, 1), channel * inner + base)

    for channel in range(2):
        visited(x, channel).copy_(torch.randn(runs, 256).bfloat16())
    weight, bias = torch.randn(3, 2), torch.randn(3)
    with last_blocks(emu, 1):
        emu.run("gmk_emu_conv1x1", 1, 2, 3, inner, DTYPE_CODES[torch.bfloat16], x.data_ptr(),
                _longs(2 * inner, inner, 1), weight.data_ptr(), bias.data_ptr(), y.data_ptr())
    x0, x1 = (visited(x, c).double() for c in range(2))
    for c in range(3):
        expected = weight[c, 0].double() * x0 + weight[c, 1].double() * x1 + bias[c].double()
        assert_close_sum(visited(y, c), expected, torch.bfloat16, 2)
    assert y[0, 2, base - 256:base].eq(0).all()


@pytest.mark.parametrize("arch", list(ARCHS))  # sm90: tensor cores (bfloat16); sm75: the FMA tiles
def test_masked_conv_past_2_31_elements(emu, arch):
    """A mask-B 3 x 3 convolution, 64 channels, x and grad_y (1, 64, 5800, 5800) channels_last: the last
    positions' NHWC elements lie past 2^31, as does output channel 63's NCHW plane. The last 2 blocks of the
    forward (NCHW output), of grad_x (channels-last output) and of the weight gradient's last split (taps 3
    and 4) against the reference on the last 2 rows, the only ones not zero."""
    h = w = 5800
    c, positions, taps = 64, h * w, _live_taps("B", 1, 3, 3, 64, 64)
    assert (positions - 256) * c > FAR and (c - 1) * positions + positions - 256 * 2 > FAR
    x, grad_y = (untouched(positions * c, torch.bfloat16).view(1, h, w, c) for _ in range(2))
    x[0, -2:], grad_y[0, -2:] = torch.randn(2, w, c).bfloat16(), torch.randn(2, w, c).bfloat16()
    weight, b = (torch.randn(c, c, 3, 3) / 24).bfloat16(), torch.randn(c).bfloat16()
    live = weight.flatten(2)[:, :, :taps]
    packed, packed_t = live.permute(2, 1, 0).contiguous(), live.permute(2, 0, 1).contiguous()
    geometry = _geometry("B", 1, 3, 3, c, c, 1, h, w)
    emu.set_device(arch)

    per_split = 2600  # the last split: the last row's last 2800 positions
    splits = -(-positions // per_split)
    assert splits * taps <= 65535
    split_begin = (splits - 1) * per_split - (h - 1) * w  # its first column in the last row
    rows = [x[:, -2:].permute(0, 3, 1, 2).double().requires_grad_(), weight.double().requires_grad_()]
    y64 = conv_reference.masked_conv2d(*rows, b.double(), mask_type="B", color_groups=1)
    grad_rows = grad_y[:, -2:].permute(0, 3, 1, 2).double()
    grad_x64, _ = torch.autograd.grad(y64, rows, grad_rows, retain_graph=True)
    in_split = torch.zeros_like(grad_rows)
    in_split[..., -1, split_begin:] = grad_rows[..., -1, split_begin:]
    _, grad_w64 = torch.autograd.grad(y64, rows, in_split)

    run = last_two_blocks(positions, 128)
    y = untouched(positions * c, torch.bfloat16).view(1, c, h, w)
    with last_blocks(emu, 2):
        emu.run("gmk_emu_tap_gemm", geometry, DTYPE_CODES[torch.bfloat16], 0, 0, 0, taps, c, c, x.data_ptr(),
                packed.data_ptr(), b.data_ptr(), y.data_ptr())
    assert_close_sum(y[0, :, -1, -run:], y64[0, :, -1, -run:], torch.bfloat16, c * taps)
    assert y[0, :, -1, -run - 64:-run].eq(0).all()

    grad_x = untouched(positions * c, torch.bfloat16).view(1, h, w, c)
    with last_blocks(emu, 2):
        emu.run("gmk_emu_tap_gemm", geometry, DTYPE_CODES[torch.bfloat16], 0, 1, 1, taps, c, c,
                grad_y.data_ptr(), packed_t.data_ptr(), None, grad_x.data_ptr())
    assert_close_sum(grad_x[0, -1, -run:].T, grad_x64[0, :, -1, -run:], torch.bfloat16, c * taps)
    assert grad_x[0, -1, -run - 64:-run].eq(0).all()

    partial = untouched(splits * taps * c * c, torch.float32).view(splits, taps, c, c)
    with last_blocks(emu, 2):
        emu.run("gmk_emu_weight_grad", geometry, DTYPE_CODES[torch.bfloat16], 0, taps, splits, per_split,
                x.data_ptr(), grad_y.data_ptr(), partial.data_ptr())
    for t in (taps - 2, taps - 1):  # (centre row, left) and the centre
        assert_close_sum(partial[-1, t].T, grad_w64[:, :, t // 3, t % 3], torch.bfloat16, w - split_begin)
    assert partial[-1, taps - 3].eq(0).all() and partial[-2].eq(0).all()


def test_causal_conv_past_2_31_elements(emu):
    """x, grad_y (1, 2, T) with T > 2^31 time steps: the last 2 blocks of the forward, of grad_x (the mirrored
    taps) and of the weight gradient's tap 1 over its last 2 splits of 64 steps, against the reference on the
    last 300 steps (the only ones not zero), every offset past 2^31."""
    length, tail, k, dilation = FAR + 100, 300, 2, 3
    x, grad_y = (untouched(2 * length, torch.bfloat16).view(1, 2, length) for _ in range(2))
    for t in (x, grad_y):
        t[..., -tail:] = torch.randn(1, 2, tail).bfloat16()
    weight, bias = (torch.randn(2, 2, k) / 2).bfloat16(), torch.randn(2).bfloat16()
    leaves = [x[..., -tail:].double().requires_grad_(), weight.double().requires_grad_()]
    y64 = causal_reference.causal_conv1d(*leaves, bias.double(), dilation)
    (grad_x64,) = torch.autograd.grad(y64, leaves[0], grad_y[..., -tail:].double())
    code, strides = DTYPE_CODES[torch.bfloat16], _longs(2 * length, length, 1)
    run = last_two_blocks(length, 64)

    y = untouched(2 * length, torch.bfloat16).view(1, 2, length)
    with last_blocks(emu, 2):
        emu.run("gmk_emu_causal_conv", _longs(1, 2, 2, length, k, dilation), -1, code, x.data_ptr(), strides,
                weight.data_ptr(), _longs(*weight.stride()), bias.data_ptr(), y.data_ptr())
    assert_close_sum(y[..., -run:], y64[..., -run:], torch.bfloat16, 2 * k)
    assert y[..., -run - 64:-run].eq(0).all()
    grad_x = untouched(2 * length, torch.bfloat16).view(1, 2, length)
    with last_blocks(emu, 2):
        emu.run("gmk_emu_causal_conv", _longs(1, 2, 2, length, k, dilation), 1, code, grad_y.data_ptr(),
                strides, weight.data_ptr(), _longs(weight.stride(1), weight.stride(0), weight.stride(2)),
                None, grad_x.data_ptr())
    assert_close_sum(grad_x[..., -run:], grad_x64[..., -run:], torch.bfloat16, 2 * k)
    assert grad_x[..., -run - 64:-run].eq(0).all()

    splits = -(-length // 64)
    assert -(-length // splits) == 64
    last = length - (splits - 1) * 64  # steps of the last split
    partial = untouched(splits * 2 * 2 * k, torch.float32).view(splits, 2, 2, k)
    with last_blocks(emu, 2):
        emu.run("gmk_emu_causal_conv_weight_grad", _longs(1, 2, 2, length, k, dilation, splits), code,
                grad_y.data_ptr(), x.data_ptr(), strides, partial.data_ptr())
    g, xs = grad_y[0, :, -tail:].double(), x[0, :, -tail:].double()
    for split, steps in ((-1, slice(-last, None)), (-2, slice(-last - 64, -last))):
        assert_close_sum(partial[split, :, :, k - 1], g[:, steps] @ xs[:, steps].T, torch.float32, 64)
    assert partial[-2:, :, :, :k - 1].eq(0).all() and partial[-3].eq(0).all()


def test_wavenet_layer_past_2_31_elements(emu):
    """The fused layer on (1, R, T), T > 2^31, R = 2, S = 1, conditioning (1, 2R, T): the last 2 blocks of the
    forward (x_next, skip) and of the backward's first pass (grad_h, z) against the reference on the last 200
    steps (the only ones not zero), every offset past 2^31."""
    length, tail, r, s, k, dilation, scale = FAR + 40, 200, 2, 1, 2, 3, 0.5**0.5
    bf16 = torch.bfloat16

    def tensor(channels, values=False):
        t = untouched(channels * length, bf16).view(1, channels, length)
        if values:
            t[..., -tail:] = torch.randn(1, channels, tail).bfloat16()
        return t

    x, cond, grad_x_next, grad_skip = tensor(r, True), tensor(2 * r, True), tensor(r, True), tensor(s, True)
    x_next, skip, grad_h, z = tensor(r), tensor(s), tensor(2 * r), tensor(r)
    conv_weight = (torch.randn(2 * r, r, k) / 2).bfloat16()
    res_weight, skip_weight = (torch.randn(r, r) / 2).bfloat16(), (torch.randn(s, r) / 2).bfloat16()
    conv_bias, res_bias, skip_bias = (torch.randn(c).bfloat16() for c in (2 * r, r, s))
    tensors = [x, cond, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, x_next, skip,
               grad_x_next, grad_skip, grad_h, z]
    pointers = (ctypes.c_void_p * 14)(*[t.data_ptr() for t in tensors])
    common = (_longs(1, r, s, length, k, dilation), scale, DTYPE_CODES[bf16], _longs(r * length, length, 1),
              _longs(2 * r * length, length, 1), pointers)
    for backward in (0, 1):
        with last_blocks(emu, 2):
            emu.run("gmk_emu_wavenet_layer", backward, *common)

    def crop(t):
        return t[..., -tail:].double()

    h64 = (causal_reference.causal_conv1d(crop(x), conv_weight.double(), conv_bias.double(), dilation)
           + crop(cond)).requires_grad_()
    z64 = gated_reference.gated_activation(h64, activation="tanh")
    x_next64, skip64 = causal_reference.wavenet_layer(
        crop(x), conv_weight.double(), conv_bias.double(), res_weight.double(), res_bias.double(),
        skip_weight.double(), skip_bias.double(), crop(cond), dilation, scale)
    grad_z64 = scale * torch.einsum("oc,not->nct", res_weight.double(), crop(grad_x_next)) + \
        torch.einsum("sc,nst->nct", skip_weight.double(), crop(grad_skip))
    (grad_h64,) = torch.autograd.grad(z64, h64, grad_z64)
    run = last_two_blocks(length, 32)
    for actual, expected, terms in ((x_next, x_next64, r * k), (skip, skip64, r * k), (z, z64, r * k),
                                    (grad_h, grad_h64, r + s)):
        assert_close_sum(actual[..., -run:], expected[..., -run:], bf16, terms, roundings=2)
        assert actual[..., -run - 32:-run].eq(0).all()


# (layout, outer, inner, width (checkerboard), misaligned): x_b of one sample past 2^31 elements (the 64-bit
# division of offsets_of), or a second sample past 2^31 (32-bit division: half * inner < 2^31); 16-byte loads,
# or one element (x one element past the alignment).
COUPLING_FAR_CASES = {
    "halves-vector": ("halves", 1, FAR + 4096, 1, False),
    "halves-scalar-sample-1": ("halves", 2, 2**30 + 4096, 1, True),
    "interleaved-vector-sample-1": ("interleaved", 2, 2**30 + 4096, 1, False),
    "checkerboard": ("checkerboard", 1, FAR + 5 * 1024, 1024, False),
    "checkerboard-odd-sample-1": ("checkerboard_odd", 2, 2**30 + 5 * 1024, 1024, False),
}


@pytest.mark.parametrize("case", COUPLING_FAR_CASES.values(), ids=COUPLING_FAR_CASES.keys())
def test_coupling_past_2_31_elements(emu, case):
    """Glow coupling, half = 1: the last 2 blocks of the forward (y; their log s sums, which the second
    kernel adds up with the untouched zero slots into logdet) and of the backward (grad_x, grad_h) of the
    last sample, against the reference's autograd on their elements, at offsets past 2^31."""
    layout, outer, inner, width, misaligned = case
    checkerboard = layout.startswith("checkerboard")
    channels = 1 if checkerboard else 2  # x's; h has 2 half (r and t)
    run = last_two_blocks(inner, 2048)
    # A checkerboard's last blocks: whole rows, the first of the same parity as in the crop.
    assert not checkerboard or (run % width == 0 and (inner // width - run // width) % 2 == 0)
    shift = 1 if misaligned else 0

    def tensor(c, values=False):
        t = untouched(outer * c * inner + shift, torch.bfloat16)[shift:].view(outer, c, inner)
        if values:
            t[-1, :, -run - 64:] = torch.randn(c, run + 64).bfloat16()
        return t

    x, h, grad_y = tensor(channels, True), tensor(2, True), tensor(channels, True)
    y, grad_x, grad_h = tensor(channels), tensor(channels), tensor(2)
    grad_logdet = torch.randn(outer)
    floats = emu.lib.gmk_emu_coupling_workspace(outer, 1, inner, 0)
    assert floats == outer * -(-inner // 2048)
    workspace, logdet = untouched(floats, torch.float32), torch.full((outer,), math.nan)
    code = coupling_reference.LAYOUTS.index(layout)
    common = (_longs(outer, 1, inner, width), 0, code, 0, DTYPE_CODES[torch.bfloat16], x.data_ptr(),
              _longs(*x.stride()), h.data_ptr(), _longs(*h.stride()))
    with last_blocks(emu, 2):
        launches = emu.run("gmk_emu_coupling", 0, *common, None, None, y.data_ptr(), None, logdet.data_ptr(),
                           workspace.data_ptr())
        emu.run("gmk_emu_coupling", 1, *common, grad_y.data_ptr(), grad_logdet.data_ptr(), grad_x.data_ptr(),
                grad_h.data_ptr(), None, None)
    vector = not checkerboard and not misaligned
    assert (", true>" in launches[0]) == vector and "sum_blocks_kernel" in launches[1], launches

    def crop(t):
        part = t[-1:, :, -run:].double()
        return part.view(1, part.shape[1], -1, width) if checkerboard else part

    leaves = [crop(x).requires_grad_(), crop(h).requires_grad_()]
    y64, logdet64 = coupling_reference.affine_coupling(*leaves, "glow", layout, False)
    grad_x64, grad_h64 = torch.autograd.grad([y64, logdet64], leaves,
                                             [crop(grad_y), grad_logdet[-1:].double()])
    for actual, expected, kind in ((y, y64, "forward"), (grad_x, grad_x64, "grad"),
                                   (grad_h, grad_h64, "grad")):
        assert_close(actual[-1, :, -run:], expected.flatten(2)[0], torch.bfloat16, kind)
        assert actual[-1, :, -run - 64:-run].eq(0).all()
    assert_close(logdet[-1:], logdet64, torch.float32, "forward", terms=run)
    assert logdet[:-1].eq(0).all()  # the other samples: sums of untouched (zero) slots


@pytest.mark.parametrize("num_channels", [1, 3])
def test_logistic_mixture_nll_past_2_31_positions(emu, num_channels):
    """params (1, P, S), S > 2^31 positions, 2 components: the last 2 blocks of the loss and of its backward
    read parameters, x and grad_nll and write nll and grad_params at offsets past 2^31 (up to P S)."""
    from test_logistic_mixture import make_params, make_x

    s, tail, k = FAR + 64, 256, 2
    p = lm_reference.params_per_component(num_channels) * k
    params, grad = (untouched(p * s, torch.bfloat16).view(1, p, s) for _ in range(2))
    x = untouched(num_channels * s, torch.float32).view(1, num_channels, s)
    grad_nll, nll = (untouched(s, torch.float32).view(1, s) for _ in range(2))
    params[..., -tail:] = make_params(1, num_channels, k, (tail,), dtype=torch.bfloat16)
    x[..., -tail:] = make_x(1, num_channels, (tail,)).float()
    grad_nll[..., -tail:] = torch.randn(1, tail)
    common = (_longs(1, num_channels, k, s, 256), -7.0, DTYPE_CODES[torch.bfloat16], params.data_ptr(),
              _strides(params), x.data_ptr(), _strides(x))
    with last_blocks(emu, 2):
        emu.run("gmk_emu_logistic_mixture", 0, *common, None, None, None, None, None, None, nll.data_ptr())
        emu.run("gmk_emu_logistic_mixture", 1, *common, grad_nll.data_ptr(), _longs(grad_nll.stride(0), 0, 1),
                None, None, None, None, grad.data_ptr())
    run = last_two_blocks(s, 128)

    def nll_and_grad(dtype):
        leaf = params[..., -run:].to(dtype).requires_grad_()
        loss = lm_reference.discretized_logistic_mixture_nll(leaf, x[..., -run:].to(dtype))
        return loss, torch.autograd.grad(loss, leaf, grad_nll[..., -run:].to(dtype))[0]

    # As test_logistic_mixture_nll_and_backward: widened by the float32 reference's own error.
    (nll64, grad64), (nll32, grad32) = nll_and_grad(torch.float64), nll_and_grad(torch.float32)
    for actual, expected, kind, error in ((nll, nll64, "forward", relative_error(nll32, nll64)),
                                          (grad, grad64, "grad", relative_error(grad32, grad64))):
        atol, rtol = (tolerance + 2 * error for tolerance in LM_TOLERANCES[torch.bfloat16][kind])
        torch.testing.assert_close(actual[..., -run:].double(), expected, atol=atol, rtol=rtol)
        assert actual[..., -tail:-run].eq(0).all()


def generate_far(emu, config, weights, layer_cond, uniform, *, batch, layer_gap, cond_steps, plan, blocks):
    """run_generate's packing (softmax head, temperature 0.9) for ``batch`` elements in untouched mappings,
    the last m of which hold ``layer_cond`` (L, m, 2R, T) and ``uniform`` (m, T, U): conditioning (L, batch,
    cond_steps, 2R), layer l's ring buffer ``l * layer_gap`` floats into each element's cache. Runs the last
    ``blocks`` blocks (clusters) of the kernel of ``plan``; returns the last m elements' samples, after
    checking that the element before them has none and that their ring buffers, and not its, were written."""
    dtype = weights[0].dtype
    classes, r = weights[0].shape
    layers, _, _, k = weights[1].shape
    s, h, p = weights[5].shape[1], weights[7].shape[0], weights[9].shape[0]
    m, steps, uniforms = uniform.shape
    dilations = config.dilations
    assert all((k - 1) * d * r <= layer_gap for d in dilations)
    packed = [t.permute(*dims).contiguous() for t, dims in zip(weights, (
        (0, 1), (0, 3, 2, 1), (0, 1), (0, 2, 1), (0, 1), (0, 2, 1), (0, 1), (1, 0), (0,), (1, 0), (0,)))]
    cond = untouched(layers * batch * cond_steps * 2 * r, dtype).view(layers, batch, cond_steps, 2 * r)
    cond[:, -m:, :steps] = layer_cond.permute(0, 1, 3, 2)
    noise = untouched(batch * steps * uniforms, torch.float32).view(batch, steps, uniforms)
    noise[-m:] = uniform
    layer_info = torch.tensor([[d, l * layer_gap] for l, d in enumerate(dilations)], dtype=torch.int64)
    cache = untouched(batch * layers * layer_gap, torch.float32)
    samples = untouched(batch * steps, torch.int64).view(batch, steps)
    tensors = packed + [cond, noise, layer_info, cache, samples]
    pointers = (ctypes.c_void_p * 16)(*[t.data_ptr() for t in tensors])
    sizes = _longs(batch, steps, layers, r, s, h, p, classes, k, cond_steps, uniforms, layers * layer_gap,
                   config.start_class)
    floats = (ctypes.c_double * 3)(config.residual_scale, 0.9, config.log_scale_min)
    with last_blocks(emu, blocks):
        emu.run("gmk_emu_wavenet_generate", sizes, _longs(*plan), floats, 0, DTYPE_CODES[dtype], pointers)
    assert samples[-m - 1].eq(0).all()
    rings = cache.view(batch, layers, layer_gap)
    for l, d in enumerate(dilations):  # each layer's ring buffer: written for the last m elements only
        ring = rings[:, l, :(k - 1) * d * r]
        assert ring[-m:].ne(0).any(1).all() and ring[-m - 1].eq(0).all()
    return samples[-m:].clone()


@pytest.mark.parametrize("kernel", ["block", "cluster"])
def test_wavenet_generate_past_2_31_elements(emu, kernel):
    """Softmax WaveNet (L = 4, R = S = H = 16, A = 32, bfloat16, local and global conditioning), 8 steps.
    Block kernel: 2^28 + 3 batch elements (8 a block), so that samples (N, T), uniforms, the caches (N, 96 R)
    and the conditioning (L, N, T, 2R) pass 2^31 elements; its last 2 blocks (11 elements). Cluster kernel
    (C = 2, 2 elements; 2 per cluster is its bound): the last cluster's caches and conditioning past 2^31,
    with each layer's ring buffer 2^30 floats into an element's cache and the conditioning's time dimension
    2^26 long. Their samples are the float32 cached loop's."""
    from gmkernels.models import WaveNet
    from test_wavenet import cached_loop, generation_inputs, small_config

    config = small_config("softmax", 2, "local+global", layers=4, residual_channels=16, skip_channels=16,
                          head_channels=16, num_classes=32)
    torch.manual_seed(2)
    model = WaveNet(config).to(torch.bfloat16)
    shape = (16, 16, 16, 32, 4, 2)
    if kernel == "block":
        batch, layer_gap, cond_steps = 2**28 + 3, 96, 8
        plan = wavenet_plan(emu, (*shape, batch), 2, False, OPTIN_SHARED["sm90"], 132, 0)
        assert plan[0] == 0 and plan[1] == 8, plan
        m = last_two_blocks(batch, 8)
    else:
        batch, layer_gap, cond_steps = 2, 2**30, 2**26
        plan = cluster_plans(emu, shape, 2, False, batch)[0]
        assert plan[0] == 2, plan
        m = 1
    weights, layer_cond, uniform = generation_inputs(model, batch=m, steps=8, dtype=torch.bfloat16)
    weights = [w * 3 if i in (7, 9) else w for i, w in enumerate(weights)]  # logits that depend on the layers
    assert max(config.dilations) * 16 <= layer_gap
    samples = generate_far(emu, config, weights, layer_cond, uniform, batch=batch, layer_gap=layer_gap,
                           cond_steps=cond_steps, plan=plan, blocks=2 if kernel == "block" else 1)
    floats = [w.float() for w in weights]
    expected = cached_loop(config, floats, layer_cond.float(), uniform, 0.9)
    assert torch.equal(samples, expected)
    no_skip = [w * 0 if i in (5, 6) else w for i, w in enumerate(floats)]  # relu(skip) = 0: the head alone
    assert not torch.equal(cached_loop(config, no_skip, layer_cond.float(), uniform, 0.9), expected)


def test_actnorm_backward_past_2_31_elements(emu):
    """(1, 2, I) with I > 2^31, the 64-bit path: the last backward block (channel 1's last part of 2^16
    elements, past 2^32: a 32-bit index would wrap) writes grad_x = grad_y e^s there and its partial sums of
    grad_y and grad_y x."""
    inner = FAR + 4096
    parts = emu.lib.gmk_emu_actnorm_parts(1, 2, inner)
    per_part = -(-inner // parts)
    begin = (parts - 1) * per_part  # the last part's first element in channel 1
    x, grad_y, grad_x = (untouched(2 * inner, torch.bfloat16).view(1, 2, inner) for _ in range(3))
    x[0, 1, begin:], grad_y[0, 1, begin:] = (torch.randn(inner - begin).bfloat16() for _ in range(2))
    bias, log_scale = torch.randn(2), 0.3 * torch.randn(2)
    sums = torch.full((2, parts, 2), math.nan)
    with last_blocks(emu, 1):
        launches = emu.run("gmk_emu_actnorm", 1, 1, 2, inner, 0, DTYPE_CODES[torch.bfloat16], x.data_ptr(),
                           _longs(2 * inner, inner, 1), bias.data_ptr(), log_scale.data_ptr(),
                           grad_y.data_ptr(), grad_x.data_ptr(), sums.data_ptr(), parts)
    assert "long int" in launches[0] or "int64" in launches[0], launches  # backward_kernel<T, int64_t>
    g, v = grad_y[0, 1, begin:].double(), x[0, 1, begin:].double()
    assert_close(grad_x[0, 1, begin:], g * log_scale[1].double().exp(), torch.bfloat16, "grad")
    assert_close_sum(sums[1, -1], torch.stack([g.sum(), (g * v).sum()]), torch.float32, inner - begin)
    assert grad_x[0, 1, begin - 256:begin].eq(0).all()
    assert sums[1, :-1].isnan().all() and sums[0].isnan().all()
