"""gmk.vector_quantize, gmk.vector_quantize_statistics and gmk.nn.VectorQuantizer: indices against
torch.cdist's argmin (random data and exact ties), every backend against the reference (odd sizes,
non-contiguous, dim=1 and dim=-1, every dtype), the straight-through and codebook gradients, the EMA update
against an eager implementation written here, opcheck, bad input, and that no (positions, K) tensor is made."""
import math

import pytest
import torch

import gmkernels as gmk
import gmkernels.ops.vector_quantize as ops
import gmkernels.reference.vector_quantize as reference
from conftest import assert_close, backends_under_test, noncontiguous, supported_dtypes

BACKENDS = ["reference"] + [name for name in backends_under_test("cpu") if name in ops.VECTOR_QUANTIZE.backends.dtypes]
CASES = [(backend, dtype) for backend in BACKENDS for dtype in supported_dtypes(backend)]
FLOAT64_BACKENDS = [backend for backend in BACKENDS if torch.float64 in supported_dtypes(backend)]


def rows64(x, dim):
    return x.double().movedim(dim, -1).reshape(-1, x.shape[dim])


def squared_distances(rows, codebook):
    """(positions, K) in float64, for the tests' small sizes only."""
    difference = rows[:, None, :] - codebook.double()[None]
    return (difference * difference).sum(-1)


def check_nearest(x, codebook, indices, dim, dtype):
    """Each chosen code is nearest in float64 up to the search's rounding: the kernels rank in float32 (float64
    for float64 inputs), so a code within that rounding of the nearest is as good."""
    rows = rows64(x, dim)
    distances = squared_distances(rows, codebook)
    chosen = distances.gather(1, indices.reshape(-1, 1)).squeeze(1)
    scale = (rows * rows).sum(1) + (codebook.double() ** 2).sum(1).max()
    eps = 1e-13 if dtype == torch.float64 else 1e-5
    assert (chosen <= distances.min(1).values + eps * scale).all(), "a code farther than the nearest was chosen"


# --- indices: torch.cdist's argmin in float64 -------------------------------------------------------------

@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize(("shape", "codes", "dim"), [((3, 7, 5, 6), 50, 1), ((200, 64), 512, -1),
                                                     ((2, 3, 33), 17, 1)])
def test_indices_equal_cdist_argmin_in_float64(backend, shape, codes, dim):
    x = torch.randn(shape, dtype=torch.float64)
    codebook = torch.randn(codes, shape[dim], dtype=torch.float64)
    _, indices = gmk.vector_quantize(x, codebook, dim=dim, backend=backend)
    expected = torch.cdist(rows64(x, dim), codebook).argmin(1)
    assert torch.equal(indices.reshape(-1), expected)
    assert indices.shape == x.movedim(dim, -1).shape[:-1] and indices.dtype == torch.int64


def tied_inputs(dtype):
    """Codes on an even integer grid, code 5 a copy of code 2 and code 6 of code 0; x at the codes and at
    midpoints of pairs (integers): every distance is exact in every dtype, and many positions are tied."""
    generator = torch.Generator().manual_seed(3)
    codebook = 2 * torch.randint(-3, 4, (7, 5), generator=generator).double()
    codebook[5], codebook[6] = codebook[2], codebook[0]
    pairs = torch.randint(0, 7, (40, 2), generator=generator)
    points = torch.cat([codebook, (codebook[pairs[:, 0]] + codebook[pairs[:, 1]]) / 2])
    x = points.T.reshape(1, 5, -1)  # (1, D, positions)
    return x.to(dtype), codebook.to(dtype)


@pytest.mark.parametrize(("backend", "dtype"), CASES)
def test_ties_go_to_the_lowest_index_as_cdist_argmin(backend, dtype):
    x, codebook = tied_inputs(dtype)
    _, indices = gmk.vector_quantize(x, codebook, backend=backend)
    distances = torch.cdist(rows64(x, 1), codebook.double())
    tied = ((distances - distances.min(1, keepdim=True).values) == 0).sum(1) > 1
    assert tied.sum() >= 10, "the data must hold ties"
    assert torch.equal(indices.reshape(-1), distances.argmin(1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_never_wins(backend):
    """A NaN code is never chosen; a position of NaN scores every code NaN and gets index 0."""
    codebook = torch.tensor([[4.0, 4.0], [float("nan"), 0.0], [1.0, 1.0], [0.0, 0.5]])
    x = torch.tensor([[0.1, 0.1], [float("nan"), 1.0], [3.0, 3.0]]).T.reshape(1, 2, 3)
    _, indices = gmk.vector_quantize(x, codebook, backend=backend)
    assert indices.tolist() == [[3, 0, 0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_nan_scores_in_a_full_tile(backend):
    """64 codes fill the Triton kernel's tile with live codes: a NaN position scores all of them NaN (the
    interpreter's argmin raised "All-NaN slice encountered"; found by the fuzz campaign). Index 0."""
    codebook = torch.randn(64, 3)
    x = torch.tensor([[float("nan"), 0.0, 0.0], [0.1, 0.2, 0.3]]).T.reshape(1, 3, 2)
    _, indices = gmk.vector_quantize(x, codebook, backend=backend)
    assert indices[0, 0] == 0
    assert indices[0, 1] == torch.cdist(torch.tensor([[0.1, 0.2, 0.3]]), codebook).argmin()


# --- every backend against the reference -----------------------------------------------------------------

def layouts(x):
    """x contiguous, strided (noncontiguous) and with its first dimension innermost ("channels_last": the real
    channels_last for 4-D x)."""
    innermost = x.to(memory_format=torch.channels_last) if x.dim() == 4 else \
        x.transpose(0, -1).contiguous().transpose(0, -1)
    return {"contiguous": x, "noncontiguous": noncontiguous(x), "channels_last": innermost}


SHAPES = [((3, 7, 5, 4), 1, 37), ((5, 3), -1, 6), ((2, 9, 11), 1, 130), ((4, 3, 6), -1, 5), ((6,), 0, 3)]


def run_forward_backward(x, codebook, backend, dim):
    x, codebook = x.detach().requires_grad_(), codebook.detach().requires_grad_()
    quantized, indices, distance = gmk.vector_quantize(x, codebook, dim=dim, return_distance=True, backend=backend)
    generator = torch.Generator().manual_seed(5)
    grad_q = torch.randn(quantized.shape, generator=generator).to(x.dtype)
    grad_d = torch.randn(distance.shape, generator=generator).to(distance.dtype)
    grad_x, grad_codebook = torch.autograd.grad((quantized, distance), (x, codebook), (grad_q, grad_d))
    return quantized, indices, distance, grad_x, grad_codebook, grad_q, grad_d


@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "channels_last"])
@pytest.mark.parametrize(("shape", "dim", "codes"), SHAPES)
@pytest.mark.parametrize(("backend", "dtype"), CASES)
def test_backend_matches_reference(backend, dtype, shape, dim, codes, layout):
    x0 = (1.5 * torch.randn(shape)).to(dtype)
    codebook = torch.randn(codes, shape[dim]).to(dtype)
    x = layouts(x0)[layout]
    quantized, indices, distance, grad_x, grad_codebook, grad_q, grad_d = run_forward_backward(
        x, codebook, backend, dim)
    check_nearest(x0, codebook, indices, dim, dtype)
    moved = x0.movedim(dim, -1)
    assert indices.shape == moved.shape[:-1] and quantized.dtype == dtype
    assert torch.equal(quantized, codebook[indices].movedim(-1, dim)), "quantized must be the codes, bit for bit"
    if layout == "contiguous" or (layout == "channels_last" and x.dim() == 4):
        assert quantized.stride() == x.stride(), "quantized keeps x's contiguous or channels_last layout"
    chosen = codebook.double()[indices]
    expected_distance = ((moved.double() - chosen) ** 2).sum(-1)
    assert distance.dtype == reference.accumulate_dtype(dtype)
    assert_close(distance, expected_distance, torch.float64 if dtype == torch.float64 else torch.float32)
    # straight-through plus the commitment distance's 2 (x - q); the codebook: the lookup's gradient
    expected_x = grad_q.double() + 2 * grad_d.double().unsqueeze(dim) * (x0.double() - chosen.movedim(-1, dim))
    assert_close(grad_x, expected_x, dtype, "grad")
    grad_rows = grad_q.double().movedim(dim, -1).reshape(-1, shape[dim])
    expected_codebook = torch.zeros(codes, shape[dim], dtype=torch.float64).index_add(0, indices.reshape(-1), grad_rows)
    assert_close(grad_codebook, expected_codebook, dtype, "grad", terms=max(1, grad_rows.shape[0] // codes))


@pytest.mark.parametrize(("backend", "dtype"), CASES)
def test_gradient_without_distance_is_straight_through(backend, dtype):
    x = torch.randn(2, 4, 3, 5).to(dtype).requires_grad_()
    codebook = torch.randn(9, 4).to(dtype)
    quantized, _ = gmk.vector_quantize(x, codebook, backend=backend)
    grad_q = torch.randn(quantized.shape).to(dtype)
    grad_x, = torch.autograd.grad(quantized, x, grad_q)
    assert torch.equal(grad_x, grad_q)


@pytest.mark.parametrize(("backend", "dtype"), CASES)
@pytest.mark.parametrize(("shape", "dim", "codes"), SHAPES)
def test_statistics_match_index_add(backend, dtype, shape, dim, codes):
    x = noncontiguous(torch.randn(shape).to(dtype))
    indices = torch.randint(0, codes, x.movedim(dim, -1).shape[:-1])
    counts, sums = gmk.vector_quantize_statistics(x, indices, codes, dim=dim, backend=backend)
    rows = rows64(x, dim)
    expected_counts = torch.bincount(indices.reshape(-1), minlength=codes).double()
    expected_sums = torch.zeros(codes, shape[dim], dtype=torch.float64).index_add(0, indices.reshape(-1), rows)
    assert counts.dtype == sums.dtype == reference.accumulate_dtype(dtype)
    assert torch.equal(counts.double(), expected_counts)
    exact = torch.float64 if dtype == torch.float64 else torch.float32
    assert_close(sums, expected_sums, exact, terms=max(1, rows.shape[0] // codes))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x, codebook = torch.randn(0, 3, 4), torch.randn(5, 3)
    quantized, indices, distance = gmk.vector_quantize(x, codebook, return_distance=True, backend=backend)
    assert quantized.shape == (0, 3, 4) and indices.shape == (0, 4) and distance.shape == (0, 4)
    counts, sums = gmk.vector_quantize_statistics(x, indices, 5, backend=backend)
    assert torch.equal(counts, torch.zeros(5)) and torch.equal(sums, torch.zeros(5, 3))


def test_gradcheck_float64_where_the_gradient_is_the_derivative():
    """quantized's gradient to the codebook and distance's to x are true derivatives (the argmin is piecewise
    constant; steps of 1e-6 cross no boundary here); quantized's to x is straight-through by design."""
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    codebook = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    for backend in FLOAT64_BACKENDS:
        def quantized_of(c):
            return gmk.vector_quantize(x.detach(), c, backend=backend)[0]

        def distance_of(x):
            return gmk.vector_quantize(x, codebook.detach(), return_distance=True, backend=backend)[2]
        assert torch.autograd.gradcheck(quantized_of, (codebook,), eps=1e-6, atol=1e-6)
        assert torch.autograd.gradcheck(distance_of, (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("namespace", ["gmkernels", "gmk_triton"])
def test_opcheck(namespace):
    op = ops.VECTOR_QUANTIZE
    if not op.has("cpu" if namespace == "gmkernels" else "triton"):
        pytest.skip(f"no {namespace} ops here")
    if namespace == "gmk_triton" and "triton" not in gmk.available_backends("cpu"):
        pytest.skip("Triton cannot run here")
    family = getattr(torch.ops, namespace)
    x = torch.randn(2, 5, 3, requires_grad=True)
    codebook = torch.randn(9, 5, requires_grad=True)
    torch.library.opcheck(family.vector_quantize, (x, codebook))
    torch.library.opcheck(family.vector_quantize_statistics, (x, torch.randint(0, 9, (2, 3)), 9))


def test_torch_compile_keeps_the_op():
    if not gmk.has_extension():
        pytest.skip("no C++ extension")
    x, codebook = torch.randn(2, 4, 3), torch.randn(7, 4)
    compiled = torch.compile(lambda x, c: gmk.vector_quantize(x, c, backend="cpu"), fullgraph=True)
    quantized, indices = compiled(x, codebook)
    expected_q, expected_i = gmk.vector_quantize(x, codebook, backend="cpu")
    assert torch.equal(quantized, expected_q) and torch.equal(indices, expected_i)


def test_cpu_on_two_threads_past_the_grains():
    """Several parallel tasks (search blocks, statistics dimensions) give the one-thread results exactly."""
    if "cpu" not in BACKENDS:
        pytest.skip("no C++ extension")
    x, codebook = torch.randn(4, 40, 1031), torch.randn(70, 40)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            quantized, indices, distance = gmk.vector_quantize(x, codebook, return_distance=True, backend="cpu")
            results.append((quantized, indices, distance,
                            *gmk.vector_quantize_statistics(x, indices, 70, backend="cpu")))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)
    check_nearest(x, codebook, results[0][1], 1, torch.float32)


# --- no (positions, K) tensor -----------------------------------------------------------------------

def largest_allocation(fn) -> int:
    """The most bytes any one op allocated on the CPU while running fn (torch's memory profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(event.cpu_memory_usage for event in prof.events())


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name in ("reference", "cpu")])
def test_no_positions_by_codes_tensor(backend):
    """4096 positions and 4096 codes: an (N, K) float32 matrix is 64 MiB; the backends allocate at most a
    chunk. The eager quantizer's cdist is measured too: the check sees an (N, K) tensor when there is one."""
    positions, codes, dim = 4096, 4096, 8
    x, codebook = torch.randn(positions // 64, dim, 64), torch.randn(codes, dim)
    matrix_bytes = positions * codes * 4
    assert largest_allocation(lambda: torch.cdist(rows64(x, 1).float(), codebook).argmin(1)) >= matrix_bytes
    peak = largest_allocation(lambda: gmk.vector_quantize(x, codebook, return_distance=True, backend=backend))
    assert peak <= matrix_bytes / 8, f"{peak} bytes in one allocation"


# --- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "error", "name"), [
    (lambda: gmk.vector_quantize(torch.randn(2, 3, 4), torch.randn(5, 3), dim=3), ValueError, "dim"),
    (lambda: gmk.vector_quantize(torch.randn(2, 3, 4), torch.randn(5, 3), dim=1.0), ValueError, "dim"),
    (lambda: gmk.vector_quantize(torch.randn(2, 3, 4), torch.randn(5, 3), dim=-1), ValueError, "codebook"),
    (lambda: gmk.vector_quantize(torch.randn(2, 3, 4), torch.randn(5, 3), return_distance=1), TypeError,
     "return_distance"),
    (lambda: gmk.vector_quantize_statistics(torch.randn(2, 3), torch.tensor([0, 5]), 5), ValueError, "indices"),
    (lambda: gmk.vector_quantize_statistics(torch.randn(2, 3), torch.tensor([0, -1]), 5), ValueError, "indices"),
    (lambda: gmk.vector_quantize_statistics(torch.randn(2, 3), torch.tensor([0, 1]), 5, dim=2), ValueError, "dim"),
])
def test_bad_public_arguments(call, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"num_codes": 0}, "num_codes"), ({"code_dim": 2.0}, "code_dim"), ({"commitment": -1.0}, "commitment"),
    ({"decay": 1.0}, "decay"), ({"eps": 0.0}, "eps"), ({"ema": 1}, "ema"), ({"restart_dead_codes": "no"},
                                                                           "restart_dead_codes"),
    ({"dim": "1"}, "dim"), ({"dead_code_threshold": -1.0}, "dead_code_threshold"),
])
def test_module_rejects_bad_arguments(kwargs, name):
    arguments = {"num_codes": 8, "code_dim": 4, **kwargs}
    with pytest.raises((TypeError, ValueError), match=rf"VectorQuantizer: {name}\b"):
        gmk.nn.VectorQuantizer(arguments.pop("num_codes"), arguments.pop("code_dim"), **arguments)


def test_module_rejects_bad_input():
    vq = gmk.nn.VectorQuantizer(8, 4)
    with pytest.raises(ValueError, match="input"):
        vq(torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match="input"):
        vq(torch.zeros(2, 4, 5, dtype=torch.int64))


# --- the module ------------------------------------------------------------------------------------------

def eager_ema_step(state, x, dim, decay, eps, threshold, restart):
    """VQ-VAE's EMA codebook step written out (van den Oord et al. 2017, appendix; Laplace smoothing), with a
    one-hot for the statistics, and the restart of codes whose count fell below the threshold."""
    codebook, count, total_sum = (t.clone() for t in state)
    rows = x.movedim(dim, -1).reshape(-1, codebook.shape[1]).double()
    nearest = torch.cdist(rows, codebook.double()).argmin(1)
    one_hot = torch.nn.functional.one_hot(nearest, codebook.shape[0]).double()
    count = decay * count + (1 - decay) * one_hot.sum(0)
    total_sum = decay * total_sum + (1 - decay) * one_hot.T @ rows
    n = count.sum()
    smoothed = (count + eps) / (n + codebook.shape[0] * eps) * n
    codebook = total_sum / smoothed[:, None]
    if restart:
        candidates = rows[torch.randint(rows.shape[0], (codebook.shape[0],))]
        dead = count < threshold
        codebook[dead], total_sum[dead], count[dead] = candidates[dead], candidates[dead], 1.0
        return (codebook, count, total_sum), int(dead.sum())
    return (codebook, count, total_sum), 0


@pytest.mark.parametrize("restart", [False, True])
@pytest.mark.parametrize("dim", [1, -1])
def test_ema_update_equals_the_eager_one(restart, dim):
    torch.manual_seed(0)
    vq = gmk.nn.VectorQuantizer(12, 3, decay=0.9, eps=1e-3, restart_dead_codes=restart, dead_code_threshold=0.95,
                                dim=dim)
    state = (vq.codebook.double(), vq.ema_count.double(), vq.ema_sum.double())
    restarted = 0
    for step in range(4):
        x = torch.randn(4, 3, 5) if dim == 1 else torch.randn(4, 5, 3)
        torch.manual_seed(100 + step)
        vq(x)
        torch.manual_seed(100 + step)
        state, dead = eager_ema_step(state, x, dim, 0.9, 1e-3, 0.95, restart)
        restarted += dead
        for actual, expected in zip((vq.codebook, vq.ema_count, vq.ema_sum), state):
            torch.testing.assert_close(actual.double(), expected, atol=1e-5, rtol=1e-5)
    assert restarted or not restart, "the test must restart codes"


def _distributed_worker(rank, world_size, port, batches, folder):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        for restart in (False, True):
            torch.manual_seed(0)  # the same initial codebook on every rank
            vq = gmk.nn.VectorQuantizer(12, 3, decay=0.9, restart_dead_codes=restart, dead_code_threshold=0.95)
            torch.manual_seed(rank)  # different draws of restart candidates per rank: rank 0's must win
            vq(batches[rank])
            torch.save([vq.codebook, vq.ema_count, vq.ema_sum, vq.last_perplexity], f"{folder}/{rank}-{restart}.pt")
    finally:
        dist.destroy_process_group()


def test_ema_statistics_are_all_reduced_and_restarts_broadcast(tmp_path):
    """Two gloo processes with half a batch each: the EMA update of the whole batch, the same codebook on both."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    batches = torch.randn(2, 3, 3, 7)
    mp.spawn(_distributed_worker, args=(2, port, batches, str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    whole = gmk.nn.VectorQuantizer(12, 3, decay=0.9, restart_dead_codes=False)
    whole(torch.cat([batches[0], batches[1]]))
    expected = [whole.codebook, whole.ema_count, whole.ema_sum, whole.last_perplexity]
    for rank in range(2):
        for actual, wanted in zip(torch.load(tmp_path / f"{rank}-False.pt"), expected):
            torch.testing.assert_close(actual, wanted)
    ranks = [torch.load(tmp_path / f"{rank}-True.pt") for rank in range(2)]
    assert (whole.ema_count < 0.95).any(), "the test must restart codes"
    for a, b in zip(*ranks):
        assert torch.equal(a, b), "every rank must hold the same codebook after a restart"


def test_module_loss_perplexity_and_gradients_without_ema():
    torch.manual_seed(1)
    vq = gmk.nn.VectorQuantizer(10, 4, commitment=0.3, ema=False)
    x = torch.randn(3, 4, 5, requires_grad=True)
    quantized, indices, loss = vq(x)
    grad_q = torch.randn(quantized.shape)
    grad_x, grad_codebook = torch.autograd.grad(loss + (quantized * grad_q).sum(), (x, vq.codebook))
    # eager: q = codebook[indices]; loss = β mse(x, sg(q)) + mse(sg(x), q); straight-through to x
    x2 = x.detach().clone().requires_grad_()
    codebook = vq.codebook.detach().clone().requires_grad_()
    q = codebook[indices].movedim(-1, 1)
    eager_loss = 0.3 * ((x2 - q.detach()) ** 2).mean() + ((x2.detach() - q) ** 2).mean()
    straight = x2 + (q - x2).detach()
    expected_x, expected_codebook = torch.autograd.grad(eager_loss + (straight * grad_q).sum(), (x2, codebook))
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(grad_x, expected_x)
    torch.testing.assert_close(grad_codebook, expected_codebook)
    counts = torch.bincount(indices.reshape(-1), minlength=10).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    torch.testing.assert_close(vq.last_perplexity.double(), entropy.exp(), atol=1e-5, rtol=1e-5)


def test_module_ema_loss_is_the_commitment_and_eval_leaves_the_codebook():
    torch.manual_seed(2)
    vq = gmk.nn.VectorQuantizer(6, 2, commitment=0.25, dim=-1)
    x = torch.randn(7, 2, requires_grad=True)
    quantized, indices, loss = vq(x)  # training: quantised with the codebook from before the update
    q = quantized.detach()
    torch.testing.assert_close(loss, 0.25 * ((x.detach() - q) ** 2).mean())
    grad, = torch.autograd.grad(loss, x)
    torch.testing.assert_close(grad, 0.25 * 2 * (x.detach() - q) / x.numel())
    vq.eval()
    before = vq.codebook.clone()
    _, indices, loss = vq(x.detach())
    torch.testing.assert_close(loss, 0.25 * ((x.detach() - before[indices]) ** 2).mean())
    assert torch.equal(vq.codebook, before), "eval mode must not update the codebook"
    assert 1 <= float(vq.last_perplexity) <= 6


# --- the CUDA kernels, under the CPU emulation (tests/cuda_emulation) --------------------------------------

EMULATED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.fixture(scope="module")
def emu():
    import ctypes
    import sys

    from cuda_emulation import build
    if not sys.platform.startswith("linux") or build.compiler() is None:
        pytest.skip("the emulator needs Linux and g++")
    from test_cuda_emulation import Emulator
    emulator = Emulator(build.build())
    pointer, int_type = ctypes.c_void_p, ctypes.c_int
    prototypes = {"gmk_emu_vector_quantize": [pointer, int_type] + [pointer] * 6,
                  "gmk_emu_vector_quantize_statistics": [pointer, int_type] + [pointer] * 4}
    for name, argtypes in prototypes.items():
        getattr(emulator.lib, name).argtypes = argtypes
        getattr(emulator.lib, name).restype = int_type
    emulator.set_device("sm90")
    return emulator


def emulated_search(emu, x, codebook):
    """One search launch on x (outer, D, inner) and codebook (K, D) as the C++ op prepares them."""
    import ctypes

    from test_cuda_emulation import DTYPE_CODES, Buffer
    outer, dim, inner = x.shape
    inputs = [Buffer(x), Buffer(codebook)]
    norms = Buffer.empty((codebook.shape[0],), torch.float32)
    quantized, indices = Buffer.empty(x.shape, x.dtype), Buffer.empty((outer, inner), torch.int64)
    distance = Buffer.empty((outer, inner), torch.float32)
    sizes = (ctypes.c_int64 * 4)(outer, dim, inner, codebook.shape[0])
    emu.run("gmk_emu_vector_quantize", sizes, DTYPE_CODES[x.dtype], *(b.ptr for b in inputs), norms.ptr,
            quantized.ptr, indices.ptr, distance.ptr)
    for buffer in inputs:
        buffer.check_unchanged()
    for buffer in (norms, quantized, indices, distance):
        buffer.check_guards()
    return quantized.view.clone(), indices.view.clone(), distance.view.clone()


@pytest.mark.parametrize("dtype", EMULATED_DTYPES)
@pytest.mark.parametrize(("outer", "dim", "inner", "codes"), [(2, 7, 45, 37), (1, 40, 130, 70), (3, 5, 1, 3)])
def test_cuda_search_emulated(emu, dtype, outer, dim, inner, codes, capfd):
    x = (1.5 * torch.randn(outer, dim, inner)).to(dtype)
    codebook = torch.randn(codes, dim).to(dtype)
    quantized, indices, distance = emulated_search(emu, x, codebook)
    check_nearest(x, codebook, indices, 1, dtype)
    assert torch.equal(quantized, codebook[indices].movedim(-1, 1))
    expected = ((x.double() - codebook.double()[indices].movedim(-1, 1)) ** 2).sum(1)
    assert_close(distance, expected, torch.float32)
    assert "runtime error" not in capfd.readouterr().err


@pytest.mark.parametrize("dtype", EMULATED_DTYPES)
def test_cuda_ties_emulated(emu, dtype):
    x, codebook = tied_inputs(dtype)
    _, indices, _ = emulated_search(emu, x, codebook)
    assert torch.equal(indices.reshape(-1), torch.cdist(rows64(x, 1), codebook.double()).argmin(1))


@pytest.mark.parametrize("dtype", EMULATED_DTYPES)
def test_cuda_statistics_emulated(emu, dtype, capfd):
    import ctypes

    from test_cuda_emulation import DTYPE_CODES, Buffer
    outer, dim, inner, codes = 3, 6, 11, 7
    x = torch.randn(outer, dim, inner).to(dtype)
    indices = torch.randint(0, codes, (outer, inner))
    indices[0, 0] = codes  # out of range: skipped, never written out of bounds
    inputs = [Buffer(x), Buffer(indices)]
    counts, sums = Buffer.empty((codes,), torch.float32), Buffer.empty((codes, dim), torch.float32)
    emu.run("gmk_emu_vector_quantize_statistics", (ctypes.c_int64 * 4)(outer, dim, inner, codes),
            DTYPE_CODES[dtype], *(b.ptr for b in inputs), counts.ptr, sums.ptr)
    for buffer in inputs:
        buffer.check_unchanged()
    counts.check_guards()
    sums.check_guards()
    valid = (indices < codes).reshape(-1)
    rows, flat = rows64(x, 1)[valid], indices.reshape(-1)[valid]
    assert torch.equal(counts.view.double(), torch.bincount(flat, minlength=codes).double())
    expected = torch.zeros(codes, dim, dtype=torch.float64).index_add(0, flat, rows)
    assert_close(sums.view, expected, torch.float32, terms=3)
    assert "runtime error" not in capfd.readouterr().err


# --- the benchmark's cases ---------------------------------------------------------------------------------

def test_the_benchmark_peers_do_the_same_work():
    """benchmarks/ops/vector_quantize.py: the gmk step and rosinality's eager quantizer give the same codes,
    loss, statistics and gradient (on a small map), and every case's gmk and eager peers run on CPU."""
    harness = pytest.importorskip("gmkernels.benchmarks.harness")
    bench = pytest.importorskip("gmkernels.benchmarks.ops.vector_quantize")
    assert "vector_quantize" in harness.family_names()
    x = torch.randn(2, 6, 5, 3, requires_grad=True)
    codebook = torch.randn(11, 6)
    grad_q = torch.randn_like(x)
    outputs = [bench.step(fn, x, codebook, grad_q)() for fn in
               (bench.gmk_quantize, lambda x, c: bench.eager_quantize(x, c.T.contiguous()))]
    (grad_gmk,), counts_gmk, sums_gmk = outputs[0]
    (grad_eager,), counts_eager, sums_eager = outputs[1]
    torch.testing.assert_close(grad_gmk, grad_eager)
    torch.testing.assert_close(counts_gmk, counts_eager)
    torch.testing.assert_close(sums_gmk, sums_eager.T)
    for case in bench.cases("cpu", quick=True)[1:]:
        case.peers = {name: peer for name, peer in case.peers.items() if name != harness.COMPILED}
        result = harness.run_case(case, "cpu", repeats=1, copy_gbps=1.0)
        by_peer = {peer["peer"]: peer["status"] for peer in result["results"]}
        assert by_peer[harness.EAGER] == "ok" and by_peer.get("gmk:cpu", "ok") == "ok", by_peer


# --- on a GPU (.ci/gpu) -----------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_statistics_count_past_2_24(backend):
    """2^24 + 5 positions of one code, x = 1: float64 accumulators give 2^24 + 4 (the nearest float32), where
    float32 atomics would stop at 2^24."""
    positions = 2**24 + 5
    indices = torch.zeros(1, positions, dtype=torch.int64, device="cuda")
    counts, sums = gmk.vector_quantize_statistics(torch.ones(1, 1, positions, device="cuda"), indices, 2,
                                                  backend=backend)
    assert counts.tolist() == [float(2**24 + 4), 0.0]
    assert sums.tolist() == [[float(2**24 + 4)], [0.0]]

@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backends_match_the_float64_search(backend, dtype, layout):
    assert backend in gmk.available_backends("cuda")
    x0 = (1.5 * torch.randn(3, 64, 17, 9)).to(dtype)
    codebook = torch.randn(515, 64).to(dtype)
    x = layouts(x0)[layout].cuda()
    quantized, indices, distance, grad_x, grad_codebook, grad_q, grad_d = run_forward_backward(
        x, codebook.cuda(), backend, 1)
    indices = indices.cpu()
    check_nearest(x0, codebook, indices, 1, dtype)
    assert torch.equal(quantized.cpu(), codebook[indices].movedim(-1, 1))
    assert quantized.stride() == x.stride()
    chosen = codebook.double()[indices].movedim(-1, 1)
    assert_close(distance.cpu(), ((x0.double() - chosen) ** 2).sum(1), torch.float32)
    expected_x = grad_q.cpu().double() + 2 * grad_d.cpu().double().unsqueeze(1) * (x0.double() - chosen)
    assert_close(grad_x.cpu(), expected_x, dtype, "grad")
    rows = grad_q.cpu().double().movedim(1, -1).reshape(-1, 64)
    expected_codebook = torch.zeros(515, 64, dtype=torch.float64).index_add(0, indices.reshape(-1), rows)
    assert_close(grad_codebook.cpu(), expected_codebook, dtype, "grad", terms=rows.shape[0] // 515 + 1)
    tied_x, tied_codebook = tied_inputs(dtype)
    _, tied_indices = gmk.vector_quantize(tied_x.cuda(), tied_codebook.cuda(), backend=backend)
    assert torch.equal(tied_indices.cpu().reshape(-1), torch.cdist(rows64(tied_x, 1), tied_codebook.double()).argmin(1))
