"""gmk.gated_activation: every backend against the float64 reference, forward and gradients."""
import pytest
import torch

import gmkernels as gmk
import gmkernels.ops.gated as gated_ops
import gmkernels.reference.gated as reference_gated
from conftest import (assert_close, assert_nonfinite_as_reference, backends_under_test, misaligned,
                      noncontiguous, supported_dtypes)

BACKENDS = backends_under_test("cpu")
ACTIVATIONS = ("tanh", "identity")
GPU_BACKENDS = ("cuda", "triton")


def forward_backward(x, cond, grad_y, **kwargs):
    """y and the gradients of x and cond (the list holds cond's only when there is a cond)."""
    x = x.detach().requires_grad_()
    cond = None if cond is None else cond.detach().requires_grad_()
    y = gmk.gated_activation(x, cond, **kwargs)
    return y, torch.autograd.grad(y, [x] if cond is None else [x, cond], grad_y)


def check_backend(x, cond=None, *, backend, activation="tanh", dim=1, layout=None, grad_layout="same"):
    """``backend`` matches the reference run in float64 on the same values: y, d/dx, d/dcond.

    ``layout`` (e.g. ``noncontiguous``) re-stores x and cond, ``grad_layout`` grad_y (by default
    as x), before the backend sees them. Returns the backend's y and gradients.
    """
    y_shape = list(x.shape)
    y_shape[dim] //= 2
    grad_y = torch.randn(y_shape, dtype=x.dtype, device=x.device)
    grad_layout = layout if grad_layout == "same" else grad_layout
    stored = [t if t is None or how is None else how(t)
              for t, how in ((x, layout), (cond, layout), (grad_y, grad_layout))]
    y, grads = forward_backward(*stored, activation=activation, dim=dim, backend=backend)
    y64, grads64 = forward_backward(*[t if t is None else t.double() for t in (x, cond, grad_y)],
                                    activation=activation, dim=dim, backend="reference")
    assert (y.dtype, y.device) == (x.dtype, x.device)
    assert_close(y, y64, x.dtype, "forward")
    for grad, grad64 in zip(grads, grads64, strict=True):
        assert grad.dtype == x.dtype
        assert_close(grad, grad64, x.dtype, "grad", terms=x.numel() // max(grad.numel(), 1))
    return y, grads


def make_cond(kind, shape, dim=1, **like):
    """None; "global": (N, 2C, 1, ...), one value per sample and channel; "local": x's shape;
    "all-channels": (N, 1, H, ...), one value per position, broadcast over the channels."""
    if kind is None:
        return None
    dim %= len(shape)
    if kind == "global":
        shape = [size if axis in (0, dim) else 1 for axis, size in enumerate(shape)]
    elif kind == "all-channels":
        shape = [1 if axis == dim else size for axis, size in enumerate(shape)]
    return torch.randn(shape, **like)


def test_reference_is_the_papers_formula():
    """The ground truth itself: the first half is the filter, the second the gate, cond added first."""
    x, cond = torch.randn(4, 6, 5, dtype=torch.float64), torch.randn(4, 6, 1, dtype=torch.float64)
    h = x + cond
    a, b = h[:, :3], h[:, 3:]
    gate = 1 / (1 + torch.exp(-b))
    torch.testing.assert_close(reference_gated.gated_activation(x, cond, "tanh"), torch.tanh(a) * gate)
    torch.testing.assert_close(reference_gated.gated_activation(x, cond, "identity"), a * gate)


CHANNELS, SPATIAL, COND_KINDS = (1, 3, 257), (1, 7, 33), (None, "global", "local")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_sizes(backend, channels, spatial, activation):
    shape = (2, 2 * channels, spatial, spatial)
    # A latin square: each cond kind meets each channel count and each spatial size once.
    cond_kind = COND_KINDS[(CHANNELS.index(channels) + SPATIAL.index(spatial)) % 3]
    check_backend(3 * torch.randn(shape), make_cond(cond_kind, shape), backend=backend, activation=activation)


SIZES_AND_COND = [(1, 1, "local"), (3, 7, None), (257, 5, "global"), (4, 33, "local")]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize(("channels", "spatial", "cond_kind"), SIZES_AND_COND)
@pytest.mark.parametrize(("backend", "dtype"), [(b, d) for b in BACKENDS for d in supported_dtypes(b)
                                                if d != torch.float32])
def test_other_dtypes(backend, dtype, channels, spatial, cond_kind, activation):
    shape = (3, 2 * channels, spatial, spatial)
    x = (3 * torch.randn(shape)).to(dtype)
    check_backend(x, make_cond(cond_kind, shape, dtype=dtype), backend=backend, activation=activation)


# (x's shape, dim): ranks 2 to 5, the channels first, in the middle, last (dim=-1) and at dim=0.
RANKS_AND_DIMS = [
    ((5, 6), 1), ((5, 6), -1), ((6, 5), 0),
    ((3, 6, 7), 1), ((3, 7, 6), -1), ((6, 3, 7), 0),
    ((2, 6, 5, 7), 1), ((2, 5, 7, 6), -1), ((6, 2, 5, 7), 0), ((2, 5, 6, 7), 2),
    ((2, 6, 3, 4, 5), 1), ((2, 3, 4, 5, 6), -1), ((6, 2, 3, 4, 5), 0), ((2, 3, 6, 4, 5), -3),
]


@pytest.mark.parametrize("cond_kind", COND_KINDS)
@pytest.mark.parametrize(("shape", "dim"), RANKS_AND_DIMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_and_dims(backend, shape, dim, cond_kind):
    y, _ = check_backend(torch.randn(shape), make_cond(cond_kind, shape, dim), backend=backend, dim=dim)
    expected = list(shape)
    expected[dim] //= 2
    assert y.shape == tuple(expected)


# cond shapes that broadcast to x (3, 6, 5, 7) without changing its shape.
COND_SHAPES = {
    "global": (3, 6, 1, 1), "local": (3, 6, 5, 7), "local-no-batch": (1, 6, 5, 7), "channels-only": (6, 1, 1),
    "all-channels": (3, 1, 5, 7), "per-row": (3, 6, 5, 1), "last-dim": (7,), "scalar-like": (1, 1, 1, 1),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cond_shape", COND_SHAPES.values(), ids=COND_SHAPES.keys())
@pytest.mark.parametrize("backend", BACKENDS)
def test_cond_shapes(backend, cond_shape, dtype):
    x = torch.randn(3, 6, 5, 7, dtype=dtype)
    check_backend(x, torch.randn(cond_shape, dtype=dtype), backend=backend)


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else noncontiguous(t)


LAYOUTS = {"noncontiguous": noncontiguous, "misaligned": misaligned, "channels_last": channels_last}


@pytest.mark.parametrize("cond_kind", COND_KINDS)
@pytest.mark.parametrize("dim", [1, -1])
@pytest.mark.parametrize("layout", LAYOUTS.values())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts(backend, dtype, layout, dim, cond_kind):
    shape = (3, 6, 5, 6)
    x = torch.randn(shape, dtype=dtype)
    check_backend(x, make_cond(cond_kind, shape, dim, dtype=dtype), backend=backend, dim=dim, layout=layout)


def test_layout_helpers_keep_values_and_change_strides():
    x = torch.randn(3, 6, 5, 6)
    for layout in LAYOUTS.values():
        stored = layout(x)
        assert torch.equal(stored, x)
        assert stored.stride() != x.stride() or stored.storage_offset() != 0


EDGE_VALUES = torch.tensor([-100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0])


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # Triton's interpreter
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize(("backend", "dtype"), [(b, d) for b in BACKENDS for d in supported_dtypes(b)])
def test_saturated_values(backend, dtype, activation):
    """Every pair (a, b) of edge values, where tanh and sigmoid saturate: finite, and still right."""
    a, b = torch.cartesian_prod(EDGE_VALUES, EDGE_VALUES).T
    x = torch.stack([a, b], dim=1).to(dtype)  # (49, 2): C = 1
    cond = torch.tensor([[-30.0, 30.0]], dtype=dtype)  # a in [-130, 70], b in [-70, 130]
    y, grads = check_backend(x, cond, backend=backend, activation=activation)
    assert all(t.isfinite().all() for t in (y, *grads))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_sweep_float32(backend, activation):
    """a and b swept densely through every range of the kernels' tanh and exp approximations."""
    a = torch.linspace(-12.0, 12.0, 4001)
    b = torch.linspace(-95.0, 95.0, 4001)[torch.randperm(4001)]
    x = torch.stack([a, b], dim=1).reshape(1, 2, -1)
    check_backend(x, backend=backend, activation=activation)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend):
    x = torch.randn(2, 4, 9)
    x[0, 0, 3] = x[1, 3, 5] = float("nan")
    y = gmk.gated_activation(x, backend=backend)
    assert torch.equal(y.isnan(), gmk.gated_activation(x, backend="reference").isnan())


EMPTY_SHAPES = [((0, 6, 5, 7), 1), ((4, 6, 0), 1), ((2, 0, 3), 1), ((3, 4, 0), -1), ((0, 3), 0)]


@pytest.mark.parametrize("with_cond", [False, True])
@pytest.mark.parametrize(("shape", "dim"), EMPTY_SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend, shape, dim, with_cond):
    cond = make_cond("global" if with_cond else None, shape, dim)
    y, _ = check_backend(torch.randn(shape), cond, backend=backend, dim=dim)
    assert y.numel() == 0 and y.shape[dim] == shape[dim] // 2


# The low-level ops' namespaces and the devices of their tensors: CPU tensors for the C++ ops and,
# in Triton's interpreter, for the Triton ops; CUDA tensors for both on a GPU.
LOW_LEVEL_OPS = [
    pytest.param("gmkernels", "cpu", id="cpp-cpu"),
    pytest.param("gmkernels", "cuda", id="cpp-cuda", marks=pytest.mark.gpu),
    *([pytest.param("gmk_triton", "cpu", id="triton-cpu")] if "triton" in BACKENDS else []),
    pytest.param("gmk_triton", "cuda", id="triton-cuda", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cond_kind", [None, "local", "global"])
@pytest.mark.parametrize(("namespace", "device"), LOW_LEVEL_OPS)
def test_opcheck(namespace, device, cond_kind, dtype):
    ops = getattr(torch.ops, namespace)
    x = torch.randn(3, 6, 5, dtype=dtype, device=device)
    cond = make_cond(cond_kind, x.shape, dtype=dtype, device=device)
    if cond is not None:
        cond = cond.expand_as(x)  # the ops take cond at x's shape, broadcast by strides
    grad_y = torch.randn(3, 3, 5, dtype=dtype, device=device)
    torch.library.opcheck(ops.gated, (x.requires_grad_(), cond, "tanh"))
    torch.library.opcheck(ops.gated_backward, (grad_y, x.detach(), cond, "identity"))


# Malformed arguments to the low-level ops (x as (outer, 2C, inner), cond at x's shape): the arguments
# of gated_backward from x, cond, grad_y, and what the error must name. gated takes the last three.
LOW_LEVEL_BAD_ARGS = {
    "x-2d": (lambda x, c, g: (g, x[0], None, "tanh"), r"\bx\b"),
    "x-odd-channels": (lambda x, c, g: (g, x[:, :5], None, "tanh"), r"\bx\b"),
    "cond-shape": (lambda x, c, g: (g, x, x.new_zeros(3, 6, 7), "tanh"), "cond"),
    "cond-dtype": (lambda x, c, g: (g, x, c.double(), "tanh"), "cond"),
    "activation": (lambda x, c, g: (g, x, c, "relu"), "activation"),
    "grad_y-shape": (lambda x, c, g: (g.new_zeros(3, 3, 7), x, c, "tanh"), "grad_y"),
}
LOW_LEVEL_CASES = [pytest.param(op, make_args, pattern, id=f"{op}-{name}")
                   for name, (make_args, pattern) in LOW_LEVEL_BAD_ARGS.items()
                   for op in ("gated", "gated_backward") if op == "gated_backward" or "grad_y" not in name]


@pytest.mark.parametrize(("op", "make_args", "pattern"), LOW_LEVEL_CASES)
@pytest.mark.parametrize(("namespace", "device"), LOW_LEVEL_OPS)
def test_low_level_ops_reject_bad_arguments(namespace, device, op, make_args, pattern):
    """The ops are public too: bad arguments raise, naming them, never a wrong result or a bad read."""
    args = make_args(*(torch.randn(shape, device=device) for shape in ((3, 6, 5), (3, 6, 5), (3, 3, 5))))
    with pytest.raises((ValueError, TypeError, RuntimeError), match=pattern):
        getattr(getattr(torch.ops, namespace), op)(*(args if op == "gated_backward" else args[1:]))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cond_kind", COND_KINDS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck(backend, cond_kind, activation):
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    cond = make_cond(cond_kind, x.shape, dtype=torch.float64, requires_grad=True)
    inputs = (x,) if cond is None else (x, cond)
    assert torch.autograd.gradcheck(
        lambda *args: gmk.gated_activation(*args, activation=activation, backend=backend), inputs)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cond_kind", [None, "local", "global"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_matches_reference(backend, cond_kind, activation):
    """A gradient penalty (WGAN-GP) differentiates the gradient, with respect to x and cond."""
    x = torch.randn(2, 6, 3, dtype=torch.float32)
    cond = make_cond(cond_kind, x.shape, dtype=torch.float32)
    weight = torch.randn(2, 3, 3)  # makes the first gradient depend on both halves non-trivially
    penalties = []
    for name in ("reference", backend):
        leaves = [x.clone().requires_grad_()] + ([] if cond is None else [cond.clone().requires_grad_()])
        y = gmk.gated_activation(*leaves, activation=activation, backend=name)
        grads = torch.autograd.grad((y * weight).sum(), leaves, create_graph=True)
        penalty = sum(grad.square().sum() for grad in grads)
        penalties.append(torch.autograd.grad(penalty, leaves, allow_unused=True))
    for got, expected in zip(penalties[1], penalties[0]):
        assert got is not None, f"the second derivative through backend {backend!r} was dropped"
        assert_close(got, expected, torch.float32, "grad")


@pytest.mark.parametrize("cond_kind", [None, "global"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradgradcheck_cpu(activation, cond_kind):
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    cond = make_cond(cond_kind, x.shape, dtype=torch.float64, requires_grad=True)
    inputs = (x,) if cond is None else (x, cond)
    assert torch.autograd.gradgradcheck(
        lambda *args: gmk.gated_activation(*args, activation=activation, backend="cpu"), inputs)


# Bad input to the public function: (x, cond, keyword arguments), the exception, what its message names.
BAD_INPUTS = {
    "odd-channels": (lambda: (torch.randn(2, 5, 3), None, {}), ValueError, r"\bdim\b"),
    "odd-last-dim": (lambda: (torch.randn(2, 4, 3), None, {"dim": -1}), ValueError, r"\bdim\b"),
    "dim-out-of-range": (lambda: (torch.randn(2, 4, 3), None, {"dim": 3}), ValueError, r"\bdim\b"),
    "cond-not-broadcastable": (lambda: (torch.randn(2, 4, 3), torch.randn(2, 4, 5), {}), ValueError, "cond"),
    "cond-grows-x": (lambda: (torch.randn(2, 4, 3), torch.randn(5, 2, 4, 3), {}), ValueError, "cond"),
    "cond-wider-dim": (lambda: (torch.randn(2, 4, 1), torch.randn(2, 4, 3), {}), ValueError, "cond"),
    "cond-dtype": (lambda: (torch.randn(2, 4, 3), torch.randn(2, 4, 3).double(), {}), TypeError, "cond"),
    "cond-device": (lambda: (torch.randn(2, 4, 3), torch.empty(2, 4, 3, device="meta"), {}), ValueError,
                    "cond"),
    "cond-not-tensor": (lambda: (torch.randn(2, 4, 3), 1.0, {}), TypeError, "cond"),
    "x-integer": (lambda: (torch.ones(2, 4, 3, dtype=torch.int32), None, {}), TypeError, r"\bx\b"),
    "x-1d": (lambda: (torch.randn(4), None, {}), ValueError, r"\bx\b"),
    "x-not-tensor": (lambda: ([[1.0, 2.0]], None, {}), TypeError, r"\bx\b"),
    "backend": (lambda: (torch.randn(2, 4, 3), None, {"backend": "fastest"}), ValueError, "backend"),
    "activation": (lambda: (torch.randn(2, 4, 3), None, {"activation": "relu"}), ValueError, "activation"),
    "cuda-on-cpu": (lambda: (torch.randn(2, 4, 3), None, {"backend": "cuda"}), ValueError, "backend 'cuda'"),
    "triton-float64": (lambda: (torch.randn(2, 4, 3, dtype=torch.float64), None, {"backend": "triton"}),
                       ValueError, "backend 'triton'"),
    "cpu-on-meta": (lambda: (torch.randn(2, 4, 3, device="meta"), None, {"backend": "cpu"}), ValueError,
                    "backend 'cpu'"),
}


@pytest.mark.parametrize(("make_input", "error", "pattern"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_naming_the_argument(make_input, error, pattern):
    x, cond, kwargs = make_input()
    with pytest.raises(error, match=pattern):
        gmk.gated_activation(x, cond, **kwargs)


@pytest.fixture
def ran(monkeypatch):
    """The names of the backends that ran since the test began (spies on the op table and the reference)."""
    names = []

    def spy(name, function):
        def run(*args, **kwargs):
            names.append(name)
            return function(*args, **kwargs)
        return run

    run = gated_ops.GATED.run
    monkeypatch.setattr(gated_ops.GATED, "run", lambda name, *args: spy(name, run)(name, *args))
    reference = spy("reference", reference_gated.gated_activation)
    monkeypatch.setattr(reference_gated, "gated_activation", reference)
    return names


AUTO_ON_CPU = "cpu" if gmk.has_extension() else "reference"
# (GMK_BACKEND, use_backend, the call's backend=, the backend that must run); None: not set.
PRECEDENCE = [
    (None, None, None, AUTO_ON_CPU),
    ("reference", None, None, "reference"),
    ("cpu", "reference", None, "reference"),
    ("reference", "cpu", None, "cpu"),
    ("reference", "cpu", "auto", "cpu"),
    ("cpu", "reference", "cpu", "cpu"),
    (None, "cpu", "reference", "reference"),
    ("auto", None, None, AUTO_ON_CPU),
]


@pytest.mark.parametrize(("env", "context", "call", "expected"), PRECEDENCE)
def test_backend_precedence(ran, monkeypatch, env, context, call, expected):
    if env is None:
        monkeypatch.delenv("GMK_BACKEND", raising=False)
    else:
        monkeypatch.setenv("GMK_BACKEND", env)
    kwargs = {} if call is None else {"backend": call}
    x = torch.randn(2, 4, 3)
    if context is None:
        y = gmk.gated_activation(x, **kwargs)
    else:
        with gmk.use_backend(context):
            y = gmk.gated_activation(x, **kwargs)
    assert ran == [expected]
    assert_close(y, reference_gated.gated_activation(x.double()), torch.float32)


def test_auto_falls_back_to_reference_where_nothing_else_runs(ran):
    y = gmk.gated_activation(torch.empty(2, 6, 5, device="meta"))
    assert ran == ["reference"]
    assert (y.shape, y.device.type) == ((2, 3, 5), "meta")


@pytest.mark.parametrize(("activation", "dim", "cond_kind"), [("tanh", 1, "global"), ("identity", -1, None)])
def test_module_matches_function(activation, dim, cond_kind):
    module = gmk.nn.GatedActivation(activation, dim=dim)
    x = torch.randn(2, 6, 5, 4)
    cond = make_cond(cond_kind, x.shape, dim)
    torch.testing.assert_close(module(x, cond), gmk.gated_activation(x, cond, activation=activation, dim=dim))
    assert repr(activation) in repr(module)


def test_module_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        gmk.nn.GatedActivation("relu")


@pytest.mark.skipif(not gmk.has_extension(), reason="the cpu backend needs gmkernels._C")
def test_torch_compile_keeps_the_op_in_one_graph():
    """fullgraph=True fails on any graph break; the generated code must call the C++ ops themselves."""
    from torch._inductor.utils import run_and_get_code

    def loss(x, cond):
        return gmk.gated_activation(x, cond, backend="cpu").square().sum()

    def loss_and_grads(function, x, cond):
        x, cond = x.detach().requires_grad_(), cond.detach().requires_grad_()
        value = function(x, cond)
        return value, *torch.autograd.grad(value, (x, cond))

    x, cond = torch.randn(2, 6, 5, 5), torch.randn(2, 6, 1, 1)
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="inductor")
    results, code = run_and_get_code(loss_and_grads, compiled, x, cond)
    for result, expected in zip(results, loss_and_grads(loss, x, cond), strict=True):
        assert_close(result, expected, torch.float32, "grad")
    assert "gmkernels.gated.default" in "".join(code) and "gmkernels.gated_backward.default" in "".join(code)


# (layout of x and cond, layout of grad_y). A misaligned grad_y alone: y's gradient is often a view
# into a larger gradient (torch.cat's backward), while x is an aligned activation.
GPU_LAYOUTS = {"contiguous": (None, None), "noncontiguous": (noncontiguous, noncontiguous),
               "misaligned": (misaligned, misaligned), "misaligned-grad_y": (None, misaligned)}


@pytest.mark.gpu
@pytest.mark.parametrize(("layout", "grad_layout"), GPU_LAYOUTS.values(), ids=GPU_LAYOUTS.keys())
@pytest.mark.parametrize("cond_kind", [*COND_KINDS, "all-channels"])
@pytest.mark.parametrize("shape", [(4, 10, 9, 33), (4, 64, 16, 32)])  # odd; whole 16-byte vectors per half
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backends_match_reference(backend, dtype, shape, cond_kind, layout, grad_layout):
    assert backend in gmk.available_backends("cuda")
    x = 3 * torch.randn(shape, device="cuda", dtype=dtype)
    cond = make_cond(cond_kind, shape, device="cuda", dtype=dtype)
    for activation in ACTIVATIONS:
        check_backend(x, cond, backend=backend, activation=activation, layout=layout, grad_layout=grad_layout)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_no_host_sync(backend):
    x = torch.randn(4, 64, 16, 16, device="cuda", requires_grad=True)
    cond = torch.randn(4, 64, 1, 1, device="cuda", requires_grad=True)
    grad_y = torch.randn(4, 32, 16, 16, device="cuda")
    torch.autograd.grad(gmk.gated_activation(x, cond, backend=backend), (x, cond), grad_y)  # compiles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = gmk.gated_activation(x, cond, backend=backend)
        torch.autograd.grad(y, (x, cond), grad_y)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- issue 18 --------------------------------------------------------------------------------------

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("activation", ["tanh", "identity"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_issue18_nonfinite_values_as_the_reference(backend, activation):
    """README: every backend gives what the reference's formula gives in IEEE arithmetic."""
    values = torch.tensor([INF, -INF, NAN, 0.0, 1.0, 1e30, -1e30, 30.0, -30.0, 1e4, -1e4, -80.0])
    a = values.repeat_interleave(len(values))  # every (a, b) pair
    b = values.repeat(len(values))
    x = torch.stack([a, b]).reshape(1, 2, -1)
    cond = torch.tensor([0.0, NAN]).reshape(1, 2, 1)
    for c in (None, cond, cond.flip(1)):
        y = gmk.gated_activation(x, c, activation=activation, backend=backend)
        assert_nonfinite_as_reference(y, reference_gated.gated_activation(x, c, activation), torch.float32)
