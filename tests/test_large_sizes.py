"""Sizes past 2^31 (issue 18), in little memory.

Index products: every tensor argument of every op (the table of test_input_integrity.py), its last
element stored 2^31 or more elements into its storage along each of its dimensions in turn, gives the
result of the same values passed contiguous, or raises a ValueError/TypeError naming it. The storage
is an anonymous mapping (8 GB of address space for float32, reserved nowhere: MAP_NORESERVE) of which
only the pages holding the argument's few elements are touched: a few KB resident.

Element counts: an op that bounds a size (the Triton convolutions' N·H·W < 2^31) rejects an expanded
(stride-0) x past the bound, naming it, before it allocates anything.

Whole tensors past 2^31 elements (nightly, GMK_LARGE_SIZES=1: 2.5 to 7 GB each, PAST_2_31_OPS): each op on
the cpu backend with an input of more than 2^31 elements (mostly bfloat16), zeros in an untouched mapping
but at its start and end: its outputs there against the reference on the same values, and its sums over
the whole input (log-determinants, code statistics); cached_conv2d along such a row (its output past 2^31
too; 24 s here). (The CUDA kernels' offsets past 2^31: test_cuda_emulation.py runs the last blocks of such
grids.)

A kernel that computes an offset in 32 bits reads out of range: each case runs in a forked child, so
such a read fails its test (killed by a signal) instead of ending the session; the children that must
not allocate run under an address-space limit.
"""
from __future__ import annotations

import faulthandler
import mmap
import os
import re
import resource
import signal
import traceback

import pytest
import torch

import gmkernels as gmk
import gmkernels.reference.logistic_mixture as lm_reference
from conftest import assert_close, assert_close_sum, backends_under_test
from test_input_integrity import OPS, SIZES, assert_same_result, backends_of, contiguous_run, run

FAR = 2**31
CHILD_TIMEOUT_S = 120
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux's value; Python has the name from 3.13


def untouched(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """``numel`` zeros whose pages exist only once touched, not counted against the overcommit limit."""
    pages = mmap.mmap(-1, numel * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    return torch.frombuffer(pages, dtype=dtype, count=numel)


def far(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t``'s values, its last element at offset 2^31 or more of their storage: dimension ``dim``
    outermost in memory, with the smallest stride that puts it there (below 2^31 where the shape allows,
    so that a kernel takes it for a 32-bit int and must widen the product), the others contiguous."""
    other_sizes = t.shape[:dim] + t.shape[dim + 1:]
    others = list(torch.empty(other_sizes).stride())
    within_slice = sum((size - 1) * stride for size, stride in zip(other_sizes, others))
    stride = -(-(FAR - within_slice) // (t.shape[dim] - 1))
    storage = untouched((t.shape[dim] - 1) * stride + within_slice + 1, t.dtype)
    return storage.as_strided(t.shape, [*others[:dim], stride, *others[dim:]]).copy_(t)


def address_space() -> int:
    """This process's virtual memory size in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def failure_in_child(check, extra_address_space: int | None = None,
                     timeout_s: int = CHILD_TIMEOUT_S) -> str | None:
    """Runs ``check()`` in a forked child: None if it returned, else its traceback or the signal that
    killed it. ``extra_address_space``: the bytes the child may map beyond what it inherits."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, exit without running the parent's cleanup
        os.close(read)
        signal.alarm(timeout_s)
        faulthandler.disable()  # a crash is reported by the parent, without the child's stack dump
        try:
            if extra_address_space is not None:
                limit = address_space() + extra_address_space
                resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
            torch.set_num_threads(1)
            check()
            message = b""
        except BaseException:  # noqa: BLE001 - every failure goes back to the parent
            message = traceback.format_exc().encode()
        with os.fdopen(write, "wb") as pipe:
            pipe.write(message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return f"killed by {name}: a read or write out of range (an offset past 2^31 computed in 32 bits?)"
    return message or None


def assert_names(error: Exception, argument: str) -> None:
    named = re.search(rf"\b{re.escape(argument)}\b", str(error))
    assert named, f"the error does not name {argument}: {error}"


def far_cases():
    for op in OPS:
        for name, t in op.make(SIZES["odd"], torch.float32).items():
            for dim in (d for d, size in enumerate(t.shape) if size > 1):
                for backend in backends_of(op):
                    yield pytest.param(op, name, dim, backend,
                                       id=f"{op.name}-{name}-dim{dim}-{backend or 'torch'}")


@pytest.mark.parametrize(("op", "argument", "dim", "backend"), far_cases())
def test_argument_past_2_31(op, argument, dim, backend):
    tensors, (expected_outputs, cotangents, expected_grads) = contiguous_run(op.name, backend)

    def check():
        try:
            viewed = {**tensors, argument: far(tensors[argument], dim)}
            outputs, _, grads = run(op, backend, viewed, cotangents)
        except (ValueError, TypeError) as error:
            assert_names(error, argument)
            return
        assert_same_result(outputs, expected_outputs, "outputs")
        assert_same_result(grads, expected_grads, f"gradients of {op.grads}")

    failure = failure_in_child(check)
    assert failure is None, failure


TRITON = ["triton"] if "triton" in backends_under_test("cpu") else []
PIXEL_BOUND_OPS = {
    "masked_conv2d": lambda x, backend: gmk.masked_conv2d(x, torch.zeros(2, 3, 3, 3), backend=backend),
    "masked_conv2d_gate": lambda x, backend: gmk.masked_conv2d(x, torch.zeros(2, 3, 3, 3), gate="tanh",
                                                                backend=backend),
    "shifted_conv2d": lambda x, backend: gmk.shifted_conv2d(x, torch.zeros(2, 3, 2, 3), backend=backend),
}


@pytest.mark.parametrize("backend", TRITON)
@pytest.mark.parametrize("op", PIXEL_BOUND_OPS)
def test_pixel_count_past_2_31_rejected(op, backend):
    x = torch.zeros(1, 1, 1, 1).expand(1, 3, 2**16, 2**15 + 1)  # N·H·W = 2^31 + 2^16, 4 bytes stored

    def check():
        with pytest.raises(ValueError) as raised:
            PIXEL_BOUND_OPS[op](x, backend)
        assert_names(raised.value, "x")

    failure = failure_in_child(check, extra_address_space=2**30)
    assert failure is None, failure


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_vector_quantize_statistics_counts_past_2_24(backend):
    """2^24 + 5 positions of one code, x = 1: counted and summed exactly (in float32, 2^24 + 4, the nearest
    float), not stuck at 2^24 as a float32 running count or sum is. (CUDA and Triton: the gpu test of
    tests/test_vector_quantize.py.)"""
    if backend not in gmk.available_backends("cpu"):
        pytest.skip(f"{backend} is not built here")
    positions = 2**24 + 5
    indices = torch.zeros(1, positions, dtype=torch.int64)
    counts, sums = gmk.vector_quantize_statistics(torch.ones(1, 1, positions), indices, 2, backend=backend)
    assert counts.tolist() == [float(2**24 + 4), 0.0]
    assert sums.tolist() == [[float(2**24 + 4)], [0.0]]


def test_invertible_conv1x1_widens_half_x_in_runs():
    """A bfloat16 x of 2^20 + 3 positions of 4 channels on the cpu backend: widened and multiplied 2^20
    positions at a time (not all at once), the last run of 3 too, as the reference gives."""
    x = torch.randn(1, 4, 2**20 + 3).bfloat16()
    weight = torch.linalg.qr(torch.randn(4, 4))[0] + 0.1 * torch.randn(4, 4)
    y, logdet = gmk.invertible_conv1x1(x, weight, backend="cpu")
    y64, logdet64 = gmk.invertible_conv1x1(x.double(), weight.double(), backend="reference")
    assert_close_sum(y, y64, torch.bfloat16, 4)
    assert_close(logdet, logdet64, torch.float32)


# --- tensors of more than 2^31 elements (nightly: GMK_LARGE_SIZES=1) -------------------------------------

LARGE_SIZES = os.environ.get("GMK_LARGE_SIZES") == "1"
TAIL = 4096


def past_2_31(dtype=torch.bfloat16):
    """x (1, 2, L), bfloat16, of more than 2^31 elements: zeros in an untouched mapping (reading them maps no
    memory) but the last TAIL of each channel, random; channel 1's lie past 2^31 elements."""
    length = FAR // 2 + TAIL
    x = untouched(2 * length, dtype).view(1, 2, length)
    x[:, :, -TAIL:] = torch.randn(1, 2, TAIL).to(dtype)
    return x


def bias_act_pairs():
    x, b = past_2_31(), torch.randn(2).bfloat16()
    y = gmk.bias_act(x, b, act="lrelu", clamp=1.5, backend="cpu")
    return [(y[..., part], gmk.bias_act(x[..., part].double(), b.double(), act="lrelu", clamp=1.5,
                                       backend="reference")) for part in (slice(-TAIL, None), slice(0, TAIL))]


def gated_pairs():
    x = past_2_31()
    y = gmk.gated_activation(x, backend="cpu")
    return [(y[..., part], gmk.gated_activation(x[..., part].double(), backend="reference"))
            for part in (slice(-TAIL, None), slice(0, TAIL))]


def cached_conv_pairs():
    """rows (1, 2, 1, L) as past_2_31's x, a 1x3 kernel along the whole row: an output of 2^31 + 8188
    elements, channel 1's last outputs (from rows' channel 1, past 2^31) past 2^31 too."""
    rows = past_2_31().unsqueeze(2)
    weight, bias = torch.randn(2, 2, 1, 3).bfloat16(), torch.randn(2).bfloat16()
    out = gmk.cached_conv2d(rows, weight, bias, count=rows.shape[3] - 2, backend="cpu")

    def expected(part):
        return gmk.cached_conv2d(rows[..., part].double(), weight.double(), bias.double(), count=TAIL - 2,
                                 backend="reference")
    return [(out[..., -(TAIL - 2):], expected(slice(-TAIL, None))),
            (out[..., :TAIL - 2], expected(slice(0, TAIL)))]


def close(dtype=torch.bfloat16, terms=1):
    """Elementwise results (``terms``: summed into each, see assert_close)."""
    return lambda actual, expected: assert_close(actual, expected, dtype, terms=terms)


def close_sum(terms, dtype=torch.bfloat16, roundings=1):
    """Sums of ``terms`` products (convolutions) in ``dtype``."""
    return lambda actual, expected: assert_close_sum(actual, expected, dtype, terms, roundings)


def equal(actual, expected):
    assert torch.equal(actual, expected.to(actual.dtype)), (actual, expected)


def causal_conv_pairs():
    x, weight, bias = past_2_31(), (torch.randn(2, 2, 3) / 2).bfloat16(), torch.randn(2).bfloat16()
    y = gmk.causal_conv1d(x, weight, bias, dilation=2, backend="cpu")
    return [(y[..., part], gmk.causal_conv1d(x[..., part].double(), weight.double(), bias.double(),
                                             dilation=2, backend="reference"), close_sum(6))
            for part in (slice(-TAIL, None), slice(0, TAIL))]


def wavenet_layer_pairs():
    """R = 2, S = 1: x (1, 2, L) and the conditioning (1, 4, L) past 2^31 elements."""
    x = past_2_31()
    cond = untouched(4 * x.shape[2], torch.bfloat16).view(1, 4, -1)
    cond[..., -TAIL:] = torch.randn(1, 4, TAIL).bfloat16()
    shapes = ((4, 2, 2), (4,), (2, 2), (2,), (1, 2), (1,))
    weights = [(torch.randn(*shape) / 2).bfloat16() for shape in shapes]
    outputs = gmk.wavenet_layer(x, *weights, cond, dilation=3, residual_scale=0.5, backend="cpu")
    pairs = []
    for part in (slice(-TAIL, None), slice(0, TAIL)):
        expected = gmk.wavenet_layer(x[..., part].double(), *(w.double() for w in weights),
                                     cond[..., part].double(), dilation=3, residual_scale=0.5,
                                     backend="reference")
        pairs += [(actual[..., part], wanted, close_sum(4, roundings=2))
                  for actual, wanted in zip(outputs, expected)]
    return pairs


# Flows: x (1, 2, H, W), H W = 2^30 + 2^15, so that channel 1's last row lies past 2^31 elements.
FLOW_H, FLOW_W = 2**15, 2**15 + 1
FLOW_PARTS = ((..., slice(0, 1), slice(0, TAIL)), (..., slice(-1, None), slice(-TAIL, None)))  # 1st, last row


def flow_tensor(channels, scale=1.0, dtype=torch.bfloat16):
    """(1, channels, FLOW_H, FLOW_W), random in FLOW_PARTS, zeros (untouched) elsewhere."""
    t = untouched(channels * FLOW_H * FLOW_W, dtype).view(1, channels, FLOW_H, FLOW_W)
    for part in FLOW_PARTS:
        t[part] = (scale * torch.randn(1, channels, 1, TAIL)).to(dtype)
    return t


def spread(logdet_of_parts, per_element=0.0):
    """The log-determinant of the whole image from those of FLOW_PARTS (each TAIL of the H W positions) and
    ``per_element``, each other position's term."""
    return sum(logdet_of_parts) + (FLOW_H * FLOW_W - len(FLOW_PARTS) * TAIL) * per_element


def flow_pairs(run, y_compare, per_element):
    """run(x, backend) -> (y, logdet) on the whole image and on FLOW_PARTS."""
    y, logdet = run("cpu")
    expected = [run("reference", part) for part in FLOW_PARTS]
    return [(y[part], wanted, y_compare) for part, (wanted, _) in zip(FLOW_PARTS, expected)] + [
        (logdet, spread([d for _, d in expected], per_element), close(torch.float32, FLOW_H * FLOW_W))]


def actnorm_pairs():
    x, bias, log_scale = flow_tensor(2), torch.randn(2), 0.3 * torch.randn(2)

    def run(backend, part=None):
        if part is None:
            return gmk.actnorm(x, bias, log_scale, backend=backend)
        return gmk.actnorm(x[part].double(), bias.double(), log_scale.double(), backend=backend)
    return flow_pairs(run, close(), log_scale.double().sum())


def invconv_pairs():
    x, weight = flow_tensor(2), torch.linalg.qr(torch.randn(2, 2))[0] + 0.1 * torch.randn(2, 2)

    def run(backend, part=None):
        if part is None:
            return gmk.invertible_conv1x1(x, weight, backend=backend)
        return gmk.invertible_conv1x1(x[part].double(), weight.double(), backend=backend)
    return flow_pairs(run, close_sum(2), torch.linalg.slogdet(weight.double())[1])


def coupling_pairs():
    """Glow halves: x_b (channel 1) past 2^31; each zero position's log s is log sigmoid(2)."""
    x, h = flow_tensor(2), flow_tensor(2, scale=0.5)

    def run(backend, part=None):
        if part is None:
            return gmk.affine_coupling(x, h, backend=backend)
        return gmk.affine_coupling(x[part].double(), h[part].double(), backend=backend)
    return flow_pairs(run, close(), torch.nn.functional.logsigmoid(torch.tensor(2.0, dtype=torch.float64)))


# Images past 2^31 elements: (1, C, side, side), SIDE^2 > 2^31; the first 2 rows' first TAIL columns and the
# last 2 rows' last TAIL columns random. A 3 x 3 filter or kernel at an output of these rows next to the
# image's edge reads only them, zeros (untouched) and the padding: the reference on each 2 x TAIL crop gives
# those outputs.
SIDE = 46341
IMAGE_PARTS = ((..., slice(0, 2), slice(0, TAIL)), (..., slice(-2, None), slice(-TAIL, None)))


def image_tensor(channels=1, scale=1.0, side=SIDE):
    t = untouched(channels * side * side, torch.bfloat16).view(1, channels, side, side)
    for part in IMAGE_PARTS:
        t[part] = (scale * torch.randn(1, channels, 2, TAIL)).bfloat16()
    return t


def image_pairs(run, terms, channels=1, side=SIDE):
    """The first row's first TAIL outputs and the last row's last TAIL outputs of run(x, backend)."""
    x = image_tensor(channels, side=side)
    y = run(x, "cpu")
    return [(y[part][..., row, :], run(x[part].double(), "reference")[..., row, :], close_sum(terms))
            for part, row in zip(IMAGE_PARTS, (0, -1))]


def masked_conv_pairs():
    """46341^2 pixels, their output past 2^31 elements too: 2575 bands of 18 rows (before each band converted
    only the rows it reads, it converted the whole image: the case ran 15 min without ending)."""
    weight, bias = (torch.randn(1, 1, 3, 3) / 2).bfloat16(), torch.randn(1).bfloat16()
    return image_pairs(lambda x, backend: gmk.masked_conv2d(x, weight.to(x.dtype), bias.to(x.dtype),
                                                            mask_type="B", backend=backend), 5)


def upfirdn2d_pairs():
    """One 46341^2 plane (before the planar kernel worked in strips of rows it held the plane's input and
    output in float: 17 GB more)."""
    f = torch.randn(3, 3).bfloat16()
    return image_pairs(lambda x, backend: gmk.upfirdn2d(x, f.to(x.dtype), padding=1, backend=backend), 9)


def coupling_checkerboard_pairs():
    """x (1, 1, SIDE, SIDE) past 2^31 elements, h (1, 2, SIDE, SIDE): y at both crops (each starts at an
    even row and column: the same checkerboard as the whole image's)."""
    x, h = image_tensor(), image_tensor(2, scale=0.5)
    y, _ = gmk.affine_coupling(x, h, layout="checkerboard", backend="cpu")
    return [(y[part], gmk.affine_coupling(x[part].double(), h[part].double(), layout="checkerboard",
                                          backend="reference")[0], close()) for part in IMAGE_PARTS]


MIXTURE_PARTS = (slice(0, TAIL), slice(-TAIL, None))


def mixture_params(k=2):
    """params (1, 3K, S) of 3K S > 2^31 elements (one channel, K components): typical values in the first
    and last TAIL positions, zeros elsewhere."""
    from test_logistic_mixture import make_params

    s = FAR // (3 * k) + TAIL
    params = untouched(3 * k * s, torch.bfloat16).view(1, 3 * k, s)
    for part in MIXTURE_PARTS:
        params[..., part] = make_params(1, 1, k, (TAIL,), dtype=torch.bfloat16)
    return params


def mixture_nll_pairs():
    from test_logistic_mixture import make_x

    params = mixture_params()
    x = torch.full((1, 1, params.shape[2]), -1.0)  # a bin centre everywhere (the op checks)
    for part in MIXTURE_PARTS:
        x[..., part] = make_x(1, 1, (TAIL,)).float()
    nll = gmk.discretized_logistic_mixture_nll(params, x, backend="cpu")
    return [(nll[..., part], gmk.discretized_logistic_mixture_nll(
        params[..., part].double(), x[..., part].double(), backend="reference"), close(torch.float32))
        for part in MIXTURE_PARTS]


def mixture_sample_pairs():
    """The op's noise, drawn again from the same seed (gumbel_u, then logistic_u, as the op draws them)."""
    params = mixture_params()
    sample = gmk.discretized_logistic_mixture_sample(params, num_channels=1, backend="cpu",
                                                     generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    gumbel_u = torch.rand((1, 2, params.shape[2]), generator=generator)
    logistic_u = torch.rand((1, 1, params.shape[2]), generator=generator)
    return [(sample[..., part], lm_reference.discretized_logistic_mixture_sample(
        params[..., part].float(), gumbel_u[..., part], logistic_u[..., part]), equal)
        for part in MIXTURE_PARTS]


def vector_quantize_pairs():
    """x (1, 16, P), 16 P > 2^31: quantized and indices at its first and last TAIL positions; the
    statistics over every position (the zero positions all take the zero vector's code)."""
    dim, codes = 16, 8
    positions = FAR // dim + TAIL
    x = untouched(dim * positions, torch.bfloat16).view(1, dim, positions)
    codebook = (4 * torch.randn(codes, dim)).bfloat16()
    for part in MIXTURE_PARTS:
        chosen = codebook.float()[torch.randint(codes, (TAIL,))]
        x[..., part] = (chosen.T + 0.05 * torch.randn(dim, TAIL)).bfloat16()
    quantized, indices = gmk.vector_quantize(x, codebook, backend="cpu")
    pairs = []
    for part in MIXTURE_PARTS:
        wanted_quantized, wanted_indices = gmk.vector_quantize(x[..., part], codebook, backend="reference")
        pairs += [(quantized[..., part], wanted_quantized, equal),
                  (indices[..., part], wanted_indices, equal)]
    del quantized
    counts, sums = gmk.vector_quantize_statistics(x, indices, codes, backend="cpu")
    tails = torch.cat([x[..., part] for part in MIXTURE_PARTS], 2)
    tail_indices = torch.cat([indices[..., part] for part in MIXTURE_PARTS], 1)
    wanted_counts, wanted_sums = gmk.vector_quantize_statistics(tails.double(), tail_indices, codes,
                                                                backend="reference")
    _, zero_code = gmk.vector_quantize(torch.zeros(1, dim, 1), codebook.float(), backend="reference")
    wanted_counts[zero_code] += positions - 2 * TAIL
    return pairs + [(counts, wanted_counts, equal), (sums, wanted_sums, close(torch.float32, positions))]


# op: the (actual, expected[, compare]) pairs of its case (compare: close() unless given) and the case's
# peak resident memory in GB, measured here: it must be available.
PAST_2_31_OPS = {
    "bias_act": (bias_act_pairs, 4.6),
    "gated_activation": (gated_pairs, 2.5),
    "cached_conv2d": (cached_conv_pairs, 4.6),
    "causal_conv1d": (causal_conv_pairs, 4.7),
    "wavenet_layer": (wavenet_layer_pairs, 6.7),
    "actnorm": (actnorm_pairs, 4.6),
    "invertible_conv1x1": (invconv_pairs, 4.7),
    "affine_coupling": (coupling_pairs, 4.6),
    "affine_coupling_checkerboard": (coupling_checkerboard_pairs, 4.6),
    "masked_conv2d": (masked_conv_pairs, 4.6),
    "upfirdn2d": (upfirdn2d_pairs, 4.6),
    "discretized_logistic_mixture_nll": (mixture_nll_pairs, 3.2),
    "discretized_logistic_mixture_sample": (mixture_sample_pairs, 6.0),
    "vector_quantize": (vector_quantize_pairs, 6.2),
}


def available_gb() -> float:
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) / 2**20


@pytest.mark.slow
@pytest.mark.skipif(not LARGE_SIZES, reason="2.5 to 7 GB of memory each: GMK_LARGE_SIZES=1 (nightly)")
@pytest.mark.parametrize("op", PAST_2_31_OPS)
def test_more_than_2_31_elements_on_cpu(op):
    """An input of more than 2^31 elements (bfloat16, zeros in an untouched mapping but at its start and
    end): the cpu backend's outputs there, the last past 2^31 elements, match the reference on the same
    values, and sums over the whole input (log-determinants, code statistics) count every element."""
    pairs, peak_gb = PAST_2_31_OPS[op]
    if available_gb() < peak_gb + 2:
        pytest.skip(f"needs about {peak_gb} GB of memory and 2 GB to spare: {available_gb():.1f} GB free")

    def check():
        for actual, expected, *compare in pairs():
            (compare[0] if compare else close())(actual, expected)

    failure = failure_in_child(check, timeout_s=1800)
    assert failure is None, failure
