"""gmk.affine_coupling: every backend against the float64 reference, forward, reverse and gradients;
the log-determinant against autograd's Jacobian; round trips; bad input."""
import math

import pytest
import torch

import gmkernels as gmk
import gmkernels.ops.coupling as coupling_ops
import gmkernels.reference.coupling as reference_coupling
from conftest import (assert_close, assert_nonfinite_as_reference, backends_under_test, misaligned,
                      noncontiguous, supported_dtypes)

BACKENDS = backends_under_test("cpu")
TRANSFORMS = ("glow", "realnvp", "additive")
LAYOUTS = ("halves", "interleaved", "checkerboard", "checkerboard_odd")
CHECKERBOARD = ("checkerboard", "checkerboard_odd")
DIRECTIONS = (False, True)  # reverse
GPU_BACKENDS = ("cuda", "triton")


def make_inputs(shape, transform, dtype=torch.float32, device="cpu", h_scale=1.0, layout="halves"):
    """x of ``shape`` and h with the channels ``transform`` and ``layout`` need."""
    x = torch.randn(shape, dtype=dtype, device=device)
    h_shape = (shape[0], coupling_ops.h_channels(shape[1], transform, layout), *shape[2:])
    return x, h_scale * torch.randn(h_shape, dtype=dtype, device=device)


def forward_backward(x, h, grad_y, grad_logdet, **kwargs):
    """y, logdet and the gradients of x and h of <y, grad_y> + <logdet, grad_logdet>."""
    x, h = x.detach().requires_grad_(), h.detach().requires_grad_()
    y, logdet = gmk.affine_coupling(x, h, **kwargs)
    # The reference's additive logdet is a constant (no grad_fn); the ops' is an output of theirs.
    outputs = [(out, grad) for out, grad in ((y, grad_y), (logdet, grad_logdet)) if out.requires_grad]
    return y, logdet, torch.autograd.grad([out for out, _ in outputs], [x, h], [grad for _, grad in outputs])


def check_backend(x, h, *, backend, storage=None, grad_storage="same", **options):
    """``backend`` matches the reference run in float64 on the same values: y, logdet, d/dx, d/dh.

    ``storage`` (e.g. ``noncontiguous``) re-stores x and h, ``grad_storage`` grad_y (by default as x).
    """
    grad_y = torch.randn(x.shape, dtype=x.dtype, device=x.device)
    grad_logdet = torch.randn(x.shape[0], dtype=reference_coupling.logdet_dtype(x.dtype), device=x.device)
    grad_storage = storage if grad_storage == "same" else grad_storage
    stored = [t if how is None else how(t) for t, how in ((x, storage), (h, storage), (grad_y, grad_storage))]
    y, logdet, grads = forward_backward(*stored, grad_logdet, backend=backend, **options)
    y64, logdet64, grads64 = forward_backward(x.double(), h.double(), grad_y.double(), grad_logdet.double(),
                                              backend="reference", **options)
    assert (y.dtype, y.device, y.shape) == (x.dtype, x.device, x.shape)
    assert (logdet.dtype, logdet.shape) == (grad_logdet.dtype, (x.shape[0],))
    assert_close(y, y64, x.dtype, "forward")
    # logdet is a float32 (float64) sum of log s over a sample, whatever x's dtype.
    assert_close(logdet, logdet64, logdet.dtype, "forward", terms=math.prod(x.shape[1:]))
    for grad, grad64 in zip(grads, grads64, strict=True):
        assert grad.dtype == x.dtype
        assert_close(grad, grad64, x.dtype, "grad")
    return y, logdet, grads


def test_reference_is_the_papers_formula():
    """Glow's TF code (interleaved t, r; s = σ(r + 2)), the halves layout, RealNVP and NICE."""
    x, h = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 4, 5, dtype=torch.float64)
    x_a, x_b = x[:, :2], x[:, 2:]
    for layout, (r, t) in {"halves": (h[:, :2], h[:, 2:]), "interleaved": (h[:, 1::2], h[:, 0::2])}.items():
        s = 1 / (1 + torch.exp(-(r + 2)))
        for transform, y_b, log_s in (("glow", (x_b + t) * s, torch.log(s)),
                                      ("realnvp", x_b * torch.exp(r) + t, r)):
            y, logdet = reference_coupling.affine_coupling(x, h, transform, layout)
            torch.testing.assert_close(y, torch.cat([x_a, y_b], 1))
            torch.testing.assert_close(logdet, log_s.sum((1, 2)))
    y, logdet = reference_coupling.affine_coupling(x, h[:, :2], "additive")
    torch.testing.assert_close(y, torch.cat([x_a, x_b + h[:, :2]], 1))
    assert torch.equal(logdet, torch.zeros(3, dtype=torch.float64))


def test_reference_checkerboard_is_realnvp_masked_coupling():
    """RealNVP eq. 9: y = b ⊙ x + (1 - b) ⊙ (x ⊙ e^r + t), b = 1 where i + j is even (odd for
    "checkerboard_odd"), over the last two dimensions; logdet = Σ (1 - b) r."""
    x, h = torch.randn(2, 3, 4, 5, 7, dtype=torch.float64), torch.randn(2, 6, 4, 5, 7, dtype=torch.float64)
    r, t = h[:, :3], h[:, 3:]
    i, j = torch.arange(5)[:, None], torch.arange(7)[None, :]
    for layout, b in (("checkerboard", (i + j) % 2 == 0), ("checkerboard_odd", (i + j) % 2 == 1)):
        b = b.double()
        y, logdet = reference_coupling.affine_coupling(x, h, "realnvp", layout)
        torch.testing.assert_close(y, b * x + (1 - b) * (x * torch.exp(r) + t))
        torch.testing.assert_close(logdet, ((1 - b) * r).sum((1, 2, 3, 4)))
    x1, h1 = torch.randn(2, 1, 6, dtype=torch.float64), torch.randn(2, 1, 6, dtype=torch.float64)
    y, _ = reference_coupling.affine_coupling(x1, h1, "additive", "checkerboard")  # one dimension: j even is x_a
    torch.testing.assert_close(y[..., 0::2], x1[..., 0::2])
    torch.testing.assert_close(y[..., 1::2], x1[..., 1::2] + h1[..., 1::2])


# Shapes: 4-D images, odd sizes, a single channel pair, rank 2 (no positions) and rank 5; the
# checkerboard takes any C and needs a spatial dimension.
SHAPES = [(2, 6, 5, 7), (3, 2, 33), (1, 10), (2, 4, 3, 4, 5)]
CHECKERBOARD_SHAPES = [(2, 3, 5, 7), (3, 1, 33), (2, 4, 6, 1), (1, 2, 4, 8), (2, 2, 3, 4, 5)]


def shapes_for(layout):
    return CHECKERBOARD_SHAPES if layout in CHECKERBOARD else SHAPES


@pytest.mark.parametrize("reverse", DIRECTIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32(backend, transform, layout, reverse):
    for shape in shapes_for(layout):
        check_backend(*make_inputs(shape, transform, layout=layout), backend=backend, transform=transform,
                      layout=layout, reverse=reverse)


@pytest.mark.parametrize("reverse", DIRECTIONS)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize(("backend", "dtype"), [(b, d) for b in BACKENDS for d in supported_dtypes(b)
                                                if d != torch.float32])
def test_other_dtypes(backend, dtype, transform, reverse):
    for layout in ("interleaved", "checkerboard_odd") if reverse else ("halves", "checkerboard"):
        check_backend(*make_inputs((3, 8, 5, 9), transform, dtype, layout=layout), backend=backend,
                      transform=transform, layout=layout, reverse=reverse)


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


STORAGE = {"noncontiguous": noncontiguous, "misaligned": misaligned, "channels_last": channels_last}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("storage", STORAGE.values())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_storage(backend, dtype, storage, layout):
    for transform, reverse in (("glow", False), ("realnvp", True), ("additive", False)):
        check_backend(*make_inputs((2, 8, 4, 6), transform, dtype, layout=layout), backend=backend,
                      storage=storage, transform=transform, layout=layout, reverse=reverse)


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 1), (2, 4, 5)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_broadcast_along_channels(backend, shape):
    """x and h expanded along the channels (stride 0): every channel reads the same element, with
    and without positions (Triton's row path once took stride 0 with one position for stride 1)."""
    x = torch.randn(shape[0], 1, *shape[2:]).expand(shape)
    h = torch.randn(shape[0], 1, *shape[2:]).expand(shape)
    for transform, layout in (("glow", "halves"), ("realnvp", "interleaved"), ("additive", "halves")):
        h_used = h[:, :coupling_ops.h_channels(shape[1], transform)]
        check_backend(x, h_used, backend=backend, transform=transform, layout=layout)


def test_storage_helpers_keep_values_and_change_strides():
    x = torch.randn(2, 8, 4, 6)
    for storage in STORAGE.values():
        stored = storage(x)
        assert torch.equal(stored, x)
        assert stored.stride() != x.stride() or stored.storage_offset() != 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_reverse_recovers_x(backend, transform, layout):
    """reverse(forward(x)) = x in float32 to 1e-5 relative error; the reverse negates the logdet."""
    x, h = make_inputs((4, 12, 8, 7), transform, layout=layout)
    options = {"transform": transform, "layout": layout, "backend": backend}
    y, logdet = gmk.affine_coupling(x, h, **options)
    x_again, logdet_reverse = gmk.affine_coupling(y, h, reverse=True, **options)
    assert (torch.linalg.vector_norm(x_again - x) / torch.linalg.vector_norm(x)).item() <= 1e-5
    if layout in CHECKERBOARD:
        a = ~reference_coupling.checkerboard_b(x.shape[2:], layout)
        assert torch.equal(x_again[..., a], x[..., a]) and torch.equal(y[..., a], x[..., a])
        assert not torch.equal(y[..., ~a], x[..., ~a])
    else:
        assert torch.equal(x_again[:, :6], x[:, :6])  # x_a passes through both ways, bit for bit
    torch.testing.assert_close(logdet_reverse, -logdet, rtol=1e-6, atol=1e-6)


def jacobian_blocks(function, x):
    """The Jacobian of function (x -> y, both (N, ...)) as (N, D, N, D)."""
    n, d = x.shape[0], x[0].numel()
    return torch.autograd.functional.jacobian(function, x).reshape(n, d, n, d)


def check_logdet_is_log_det_jacobian(function, x):
    """function: x -> (y, logdet); logdet[n] = log|det ∂y_n/∂x_n| and y_n depends on x_n only."""
    blocks = jacobian_blocks(lambda v: function(v)[0], x)
    _, logdet = function(x)
    for n in range(x.shape[0]):
        sign, log_abs_det = torch.linalg.slogdet(blocks[n, :, n, :])
        assert sign != 0
        torch.testing.assert_close(logdet[n], log_abs_det, rtol=1e-10, atol=1e-10)
        others = torch.cat([blocks[n, :, :n], blocks[n, :, n + 1:]], dim=1)
        assert torch.count_nonzero(others) == 0


FLOAT64_BACKENDS = ["reference", *(b for b in BACKENDS if torch.float64 in supported_dtypes(b))]


@pytest.mark.parametrize("reverse", DIRECTIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
def test_logdet_is_log_det_jacobian(backend, transform, layout, reverse):
    """With h held fixed the Jacobian is diagonal: its log|det| in float64 is the op's logdet."""
    shape = (2, 3, 3, 2) if layout in CHECKERBOARD else (2, 4, 3, 1)
    x, h = make_inputs(shape, transform, torch.float64, h_scale=2.0, layout=layout)
    options = {"transform": transform, "layout": layout, "reverse": reverse, "backend": backend}
    check_logdet_is_log_det_jacobian(lambda v: gmk.affine_coupling(v, h, **options), x)


@pytest.mark.parametrize("reverse", DIRECTIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("backend", ["reference", "cpu"] if "cpu" in BACKENDS else ["reference"])
def test_gradcheck(backend, transform, layout, reverse):
    x, h = make_inputs((2, 3, 2, 3) if layout in CHECKERBOARD else (2, 4, 3), transform, torch.float64,
                       layout=layout)
    assert torch.autograd.gradcheck(
        lambda x, h: gmk.affine_coupling(x, h, transform=transform, layout=layout, reverse=reverse,
                                         backend=backend),
        (x.requires_grad_(), h.requires_grad_()))


# Edge values of the raw scale r: Glow's s = σ(r + 2) saturates at both ends, RealNVP's e^r spans
# float32's range. Forward only for the far ends: the reverse of a vanishing scale overflows, as it must.
# float16's range ends at 65504: e^r stays within ±8 there.
EDGE_R = {"glow": [-100.0, -30.0, -2.0, 0.0, 10.0, 30.0, 100.0], "realnvp": [-80.0, -10.0, 0.0, 10.0, 40.0]}


@pytest.mark.filterwarnings("ignore:overflow encountered in divide:RuntimeWarning")  # Triton's interpreter
@pytest.mark.parametrize("transform", ["glow", "realnvp"])
@pytest.mark.parametrize(("backend", "dtype"), [(b, d) for b in BACKENDS for d in supported_dtypes(b)])
def test_saturated_scales(backend, dtype, transform):
    r = torch.tensor(EDGE_R[transform])
    r = r.clamp(-8.0, 8.0) if dtype == torch.float16 and transform == "realnvp" else r
    count = r.numel()
    x = torch.randn(2, 2 * count, 3).to(dtype)
    h = torch.cat([r[None, :, None].expand(2, count, 3), torch.randn(2, count, 3)], dim=1).to(dtype)
    y, logdet, grads = check_backend(x, h, backend=backend, transform=transform)
    assert all(t.isfinite().all() for t in (y, logdet, *grads))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_sweep_float32(backend):
    """r swept densely through the ranges of the kernels' exp and log approximations, both ways."""
    r = torch.linspace(-40.0, 40.0, 4001)
    x = torch.randn(1, 2, 4001)
    h = torch.stack([r, torch.randn(4001)]).unsqueeze(0)
    check_backend(x, h, backend=backend)
    check_backend(x, h.clamp(min=-20.0), backend=backend, reverse=True)  # 1/s = 1 + e^-(r + 2) < 1e8


@pytest.mark.parametrize("backend", BACKENDS)
def test_logdet_is_deterministic(backend):
    """The per-sample sums do not depend on the number of threads or the run."""
    x, h = make_inputs((3, 16, 32, 32), "glow")
    first = gmk.affine_coupling(x, h, backend=backend)[1]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = gmk.affine_coupling(x, h, backend=backend)[1]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, single)
    assert torch.equal(first, gmk.affine_coupling(x, h, backend=backend)[1])


EMPTY_SHAPES = [(0, 6, 5), (3, 6, 0), (2, 0, 4)]


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("shape", EMPTY_SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend, shape, transform):
    x, h = make_inputs(shape, transform)
    y, logdet, _ = check_backend(x, h, backend=backend, transform=transform)
    assert y.numel() == 0 and torch.equal(logdet, torch.zeros(shape[0]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_to_its_sample(backend):
    x, h = make_inputs((3, 4, 5), "glow")
    h[1, 0, 2] = float("nan")
    y, logdet = gmk.affine_coupling(x, h, backend=backend)
    assert logdet.isnan().tolist() == [False, True, False]
    assert torch.equal(y.isnan(), gmk.affine_coupling(x, h, backend="reference")[0].isnan())


# The low-level ops' namespaces and the devices of their tensors.
LOW_LEVEL_OPS = [
    pytest.param("gmkernels", "cpu", id="cpp-cpu"),
    pytest.param("gmkernels", "cuda", id="cpp-cuda", marks=pytest.mark.gpu),
    *([pytest.param("gmk_triton", "cpu", id="triton-cpu")] if "triton" in BACKENDS else []),
    pytest.param("gmk_triton", "cuda", id="triton-cuda", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize(("transform", "layout", "reverse"),
                         [("glow", "halves", False), ("glow", "interleaved", True),
                          ("realnvp", "halves", True), ("additive", "halves", False),
                          ("glow", "checkerboard", False), ("realnvp", "checkerboard_odd", True),
                          ("additive", "checkerboard", True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("namespace", "device"), LOW_LEVEL_OPS)
def test_opcheck(namespace, device, dtype, transform, layout, reverse):
    ops = getattr(torch.ops, namespace)
    shape = (3, 3, 4, 5) if layout in CHECKERBOARD else (3, 6, 5)  # the ops' checkerboard x is (N, C, H, W)
    x, h = make_inputs(shape, transform, dtype, device, layout=layout)
    grad_y = torch.randn_like(x)
    grad_logdet = torch.randn(3, device=device)
    options = (transform, layout, reverse)
    torch.library.opcheck(ops.coupling, (x.requires_grad_(), h.requires_grad_(), *options))
    torch.library.opcheck(ops.coupling_backward, (grad_y, grad_logdet, x.detach(), h.detach(), *options))


# Malformed arguments to the low-level ops (x (3, 6, 5), h (3, 6, 5), grad_y, grad_logdet (3,)):
# the arguments of coupling_backward, and what the error must name. coupling takes the last five.
LOW_LEVEL_BAD_ARGS = {
    "x-2d": (lambda x, h, g, gl: (g, gl, x[0], h, "glow", "halves", False), r"\bx\b"),
    "x-odd-channels": (lambda x, h, g, gl: (g, gl, x[:, :5], h, "glow", "halves", False), r"\bx\b"),
    "h-channels": (lambda x, h, g, gl: (g, gl, x, h[:, :4], "glow", "halves", False), r"\bh\b"),
    "h-additive-channels": (lambda x, h, g, gl: (g, gl, x, h, "additive", "halves", False), r"\bh\b"),
    "h-inner": (lambda x, h, g, gl: (g, gl, x, h[:, :, :4], "glow", "halves", False), r"\bh\b"),
    "h-dtype": (lambda x, h, g, gl: (g, gl, x, h.double(), "glow", "halves", False), r"\bh\b"),
    "transform": (lambda x, h, g, gl: (g, gl, x, h, "affine", "halves", False), "transform"),
    "layout": (lambda x, h, g, gl: (g, gl, x, h, "glow", "diagonal", False), "layout"),
    "checkerboard-x-3d": (lambda x, h, g, gl: (g, gl, x, torch.cat([h, h], 1), "glow", "checkerboard", False),
                          r"\bx\b"),
    "checkerboard-h-channels": (lambda x, h, g, gl: (g[..., None], gl, x[..., None], h[..., None], "glow",
                                                     "checkerboard", False), r"\bh\b"),
    "grad_y-shape": (lambda x, h, g, gl: (g[:, :4], gl, x, h, "glow", "halves", False), "grad_y"),
    "grad_logdet-shape": (lambda x, h, g, gl: (g, gl[:2], x, h, "glow", "halves", False), "grad_logdet"),
    "grad_logdet-dtype": (lambda x, h, g, gl: (g, gl.double(), x, h, "glow", "halves", False), "grad_logdet"),
}
LOW_LEVEL_CASES = [pytest.param(op, make_args, pattern, id=f"{op}-{name}")
                   for name, (make_args, pattern) in LOW_LEVEL_BAD_ARGS.items()
                   for op in ("coupling", "coupling_backward")
                   if op == "coupling_backward" or "grad" not in name]


@pytest.mark.parametrize(("op", "make_args", "pattern"), LOW_LEVEL_CASES)
@pytest.mark.parametrize(("namespace", "device"), LOW_LEVEL_OPS)
def test_low_level_ops_reject_bad_arguments(namespace, device, op, make_args, pattern):
    tensors = [torch.randn(shape, device=device) for shape in ((3, 6, 5), (3, 6, 5), (3, 6, 5), (3,))]
    args = make_args(*tensors)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=pattern):
        getattr(getattr(torch.ops, namespace), op)(*(args if op == "coupling_backward" else args[2:]))


# Bad input to the public function: (x, h, keyword arguments), the exception, what its message names.
BAD_INPUTS = {
    "odd-channels": (lambda: (torch.randn(2, 5, 3), torch.randn(2, 5, 3), {}), ValueError, "even"),
    "h-channels": (lambda: (torch.randn(2, 4, 3), torch.randn(2, 2, 3), {}), ValueError, r"\bh\b"),
    "h-channels-additive": (lambda: (torch.randn(2, 4, 3), torch.randn(2, 4, 3), {"transform": "additive"}),
                            ValueError, r"\bh\b"),
    "h-spatial": (lambda: (torch.randn(2, 4, 3), torch.randn(2, 4, 5), {}), ValueError, r"\bh\b"),
    "h-batch": (lambda: (torch.randn(2, 4, 3), torch.randn(1, 4, 3), {}), ValueError, r"\bh\b"),
    "h-dtype": (lambda: (torch.randn(2, 4, 3), torch.randn(2, 4, 3).double(), {}), TypeError, r"\bh\b"),
    "h-device": (lambda: (torch.randn(2, 4, 3), torch.empty(2, 4, 3, device="meta"), {}), ValueError,
                 r"\bh\b"),
    "h-not-tensor": (lambda: (torch.randn(2, 4, 3), 1.0, {}), TypeError, r"\bh\b"),
    "x-integer": (lambda: (torch.ones(2, 4, 3, dtype=torch.int32), torch.randn(2, 4, 3), {}), TypeError,
                  r"\bx\b"),
    "x-1d": (lambda: (torch.randn(4), torch.randn(4), {}), ValueError, r"\bx\b"),
    "transform": (lambda: (torch.randn(2, 4, 3), torch.randn(2, 4, 3), {"transform": "affine"}), ValueError,
                  "transform"),
    "layout": (lambda: (torch.randn(2, 4, 3), torch.randn(2, 4, 3), {"layout": "diagonal"}), ValueError,
               "layout"),
    "checkerboard-no-spatial": (lambda: (torch.randn(2, 3), torch.randn(2, 6), {"layout": "checkerboard"}),
                                ValueError, r"\bx\b"),
    "checkerboard-h-channels": (lambda: (torch.randn(2, 3, 4), torch.randn(2, 3, 4), {"layout": "checkerboard"}),
                                ValueError, r"\bh\b"),
    "reverse": (lambda: (torch.randn(2, 4, 3), torch.randn(2, 4, 3), {"reverse": "yes"}), TypeError,
                "reverse"),
    "backend": (lambda: (torch.randn(2, 4, 3), torch.randn(2, 4, 3), {"backend": "fastest"}), ValueError,
                "backend"),
    "cuda-on-cpu": (lambda: (torch.randn(2, 4, 3), torch.randn(2, 4, 3), {"backend": "cuda"}), ValueError,
                    "backend 'cuda'"),
    "triton-float64": (lambda: (torch.randn(2, 4, 3).double(), torch.randn(2, 4, 3).double(),
                                {"backend": "triton"}), ValueError, "backend 'triton'"),
}


@pytest.mark.parametrize(("make_input", "error", "pattern"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_naming_the_argument(make_input, error, pattern):
    x, h, kwargs = make_input()
    with pytest.raises(error, match=pattern):
        gmk.affine_coupling(x, h, **kwargs)


def test_auto_picks_cpu_kernel_when_built(monkeypatch):
    calls = []

    def spy(name, op):
        def run(*args):
            calls.append(name)
            return op(*args)
        return run

    run = coupling_ops.COUPLING.run
    monkeypatch.setattr(coupling_ops.COUPLING, "run", lambda name, *args: spy(name, run)(name, *args))
    gmk.affine_coupling(*make_inputs((2, 4, 3), "glow"))
    assert calls == (["cpu"] if gmk.has_extension() else [])


def test_double_backward_raises_clearly():
    if "cpu" not in BACKENDS:
        pytest.skip("needs the cpu backend")
    x, h = (t.requires_grad_() for t in make_inputs((2, 4, 3), "glow", torch.float64))
    y, logdet = gmk.affine_coupling(x, h, backend="cpu")
    grad_x, = torch.autograd.grad(logdet.sum() + y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad_x.sum().backward()


def test_logdet_is_float32_for_half_inputs():
    for backend in ["reference", *BACKENDS]:
        x, h = make_inputs((2, 4, 3), "glow", torch.bfloat16)
        assert gmk.affine_coupling(x, h, backend=backend)[1].dtype == torch.float32


def test_auto_falls_back_to_reference_on_meta_tensors():
    x, h = (torch.empty(2, 6, 5, device="meta") for _ in range(2))
    y, logdet = gmk.affine_coupling(x, h)
    assert (y.shape, logdet.shape, y.device.type) == ((2, 6, 5), (2,), "meta")


@pytest.mark.skipif(not gmk.has_extension(), reason="the cpu backend needs gmkernels._C")
@pytest.mark.parametrize("layout", ["halves", "checkerboard"])
def test_torch_compile_keeps_the_ops_in_one_graph(layout):
    """fullgraph=True fails on any graph break; the generated code must call the C++ ops themselves."""
    from torch._inductor.utils import run_and_get_code

    def loss(x, h):
        y, logdet = gmk.affine_coupling(x, h, layout=layout, backend="cpu")
        x_again, _ = gmk.affine_coupling(y, h, layout=layout, reverse=True, backend="cpu")
        return x_again.square().sum() + y.square().sum() - logdet.sum()

    def loss_and_grads(function, x, h):
        x, h = x.detach().requires_grad_(), h.detach().requires_grad_()
        value = function(x, h)
        return value, *torch.autograd.grad(value, (x, h))

    x, h = make_inputs((2, 6, 5, 5), "glow", layout=layout)
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="inductor")
    results, code = run_and_get_code(loss_and_grads, compiled, x, h)
    for result, expected in zip(results, loss_and_grads(loss, x, h), strict=True):
        assert_close(result, expected, torch.float32, "grad", terms=x.numel())
    code = "".join(code)
    assert "gmkernels.coupling.default" in code and "gmkernels.coupling_backward.default" in code


# --- GPU ----------------------------------------------------------------------------------------

# (storage of x and h, storage of grad_y). A misaligned grad_y alone: y's gradient is often a view.
GPU_STORAGE = {"contiguous": (None, None), "noncontiguous": (noncontiguous, noncontiguous),
               "misaligned": (misaligned, misaligned), "misaligned-grad_y": (None, misaligned)}


@pytest.mark.gpu
@pytest.mark.parametrize(("storage", "grad_storage"), GPU_STORAGE.values(), ids=GPU_STORAGE.keys())
@pytest.mark.parametrize("shape", [(4, 10, 9, 33), (3, 48, 32, 32), (2, 8, 3)])  # odd; vectors; < a block
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backends_match_reference(backend, dtype, shape, storage, grad_storage):
    assert backend in gmk.available_backends("cuda")
    for transform in TRANSFORMS:
        for layout in LAYOUTS:
            for reverse in DIRECTIONS:
                x, h = make_inputs(shape, transform, dtype, "cuda", layout=layout)
                check_backend(x, h, backend=backend, storage=storage, grad_storage=grad_storage,
                              transform=transform, layout=layout, reverse=reverse)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_logdet_is_deterministic(backend):
    x, h = make_inputs((8, 48, 64, 64), "glow", device="cuda")
    first = gmk.affine_coupling(x, h, backend=backend)[1]
    for _ in range(3):
        assert torch.equal(gmk.affine_coupling(x, h, backend=backend)[1], first)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_no_host_sync(backend):
    x, h = (t.requires_grad_() for t in make_inputs((4, 48, 32, 32), "glow", device="cuda"))

    def step():
        y, logdet = gmk.affine_coupling(x, h, backend=backend)
        torch.autograd.grad([y, logdet], [x, h], [torch.ones_like(y), torch.ones_like(logdet)])
        x_again, logdet_reverse = gmk.affine_coupling(y, h, reverse=True, backend=backend)
        torch.autograd.grad([x_again, logdet_reverse], [y, h], [torch.ones_like(y), torch.ones_like(logdet)])

    step()  # compiles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- issue 18 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["False", 0, 1, None])
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_issue18_reverse_must_be_a_bool(backend, flag):
    with pytest.raises(TypeError, match="affine_coupling: reverse must be a bool"):
        gmk.affine_coupling(torch.randn(2, 4, 3), torch.randn(2, 4, 3), reverse=flag, backend=backend)


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("transform", reference_coupling.TRANSFORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_issue18_nonfinite_values_as_the_reference(backend, transform, reverse):
    """README: every backend gives what the reference's formula gives in IEEE arithmetic: infinite or
    overflowing r, t and x stay ±inf or NaN where the formula's are, underflowing scales give 0. (Not
    tested: σ(v) for v in (-104, -87), a subnormal in the kernels, which torch's float32 sigmoid flushes
    to 0, so that a product with an infinite x_b + t is ±inf here and NaN in the reference.)"""
    values = torch.tensor([INF, -INF, NAN, 0.0, 1.0, 1e30, -1e30, 100.0, -1000.0, 3.0, -200.0, 90.0])
    x_b = torch.stack([values, values.flip(0)])  # (2, 12)
    x = torch.cat([torch.ones(2, 12), x_b]).unsqueeze(0).expand(2, 4, 12).clone()
    x[1, 2:] = torch.tensor([[2.0] * 12, [1e38] * 12])
    r_t = torch.stack([values.roll(3), values.roll(7)])
    h = r_t if transform == "additive" else torch.cat([r_t, r_t.flip(1)])
    h = h.unsqueeze(0).expand(2, -1, -1).contiguous()
    y, logdet = gmk.affine_coupling(x, h, transform=transform, reverse=reverse, backend=backend)
    expected_y, expected_logdet = reference_coupling.affine_coupling(x, h, transform, "halves", reverse)
    assert_nonfinite_as_reference(y, expected_y, torch.float32)
    assert_nonfinite_as_reference(logdet, expected_logdet, torch.float32)


@pytest.mark.parametrize("layout", CHECKERBOARD)
@pytest.mark.parametrize("transform", reference_coupling.TRANSFORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_checkerboard_nonfinite_values_as_the_reference(backend, transform, layout):
    """Non-finite x, r and t at both halves' positions: x_a's stay as they are (h is not read there),
    x_b's follow the formula, in both directions."""
    values = torch.tensor([INF, -INF, NAN, 0.0, 1.0, 1e30, -1e30, 100.0, -1000.0, 3.0, -200.0, 90.0])
    x = values.roll(5).reshape(1, 1, 3, 4).expand(2, 3, 3, 4).clone()
    h_channels = coupling_ops.h_channels(3, transform, layout)
    h = torch.stack([values.roll(k) for k in range(h_channels)]).reshape(1, h_channels, 3, 4).repeat(2, 1, 1, 1)
    for reverse in DIRECTIONS:
        y, logdet = gmk.affine_coupling(x, h, transform=transform, layout=layout, reverse=reverse, backend=backend)
        expected_y, expected_logdet = reference_coupling.affine_coupling(x, h, transform, layout, reverse)
        assert_nonfinite_as_reference(y, expected_y, torch.float32)
        assert_nonfinite_as_reference(logdet, expected_logdet, torch.float32)
