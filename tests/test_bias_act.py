"""gmk.bias_act: the reference against StyleGAN2-ADA's formulas, every backend against the float64 reference
(forward, first, second and third derivatives), what autograd saves, the low-level ops and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

import gmkernels as gmk
import gmkernels.ops.bias_act as ops
import gmkernels.reference.bias_act as reference
from conftest import assert_close, backends_under_test, noncontiguous, supported_dtypes

BACKENDS = [name for name in backends_under_test("cpu") if name in ops.BIAS_ACT.backends.dtypes]
FLOAT64_BACKENDS = [name for name in BACKENDS if torch.float64 in supported_dtypes(name)]
ACTS = ops.ACTIVATIONS
SQRT2 = math.sqrt(2)


def formula(v, act):
    """The activations written out independently of the reference (v = x + b), with their default gains."""
    s = 1 / (1 + torch.exp(-v))
    return {
        "linear": (v, 1.0), "relu": (torch.where(v > 0, v, 0 * v), SQRT2),
        "lrelu": (torch.where(v > 0, v, 0.2 * v), SQRT2), "tanh": ((1 - torch.exp(-2 * v)) / (1 + torch.exp(-2 * v)), 1.0),
        "sigmoid": (s, 1.0), "elu": (torch.where(v > 0, v, torch.exp(v) - 1), 1.0),
        "selu": (reference.SELU_SCALE * torch.where(v > 0, v, reference.SELU_ALPHA * (torch.exp(v) - 1)), 1.0),
        "softplus": (torch.log(1 + torch.exp(v)), 1.0), "swish": (v * s, SQRT2),
    }[act]


@pytest.mark.parametrize("act", ACTS)
def test_reference_is_stylegan2s_formula(act):
    x, b = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    expected, gain = formula(x + b[:, None], act)
    torch.testing.assert_close(reference.bias_act(x, b, 1, act), expected * gain)
    torch.testing.assert_close(gmk.bias_act(x, b, act=act, backend="reference"), expected * gain)
    clamped = (expected * 3).clamp(-0.5, 0.5)
    torch.testing.assert_close(gmk.bias_act(x, b, act=act, gain=3, clamp=0.5, backend="reference"), clamped)


def test_defaults():
    assert [ops.default_gain(act) for act in ("relu", "lrelu", "swish", "tanh", "linear")] == [SQRT2] * 3 + [1, 1]
    x = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(gmk.bias_act(x, act="lrelu"), F.leaky_relu(x, 0.2) * SQRT2)
    # alpha is lrelu's alone; dim counts from the end when negative
    torch.testing.assert_close(gmk.bias_act(x, act="elu", alpha=0.7), F.elu(x))
    b = torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(gmk.bias_act(x, b, dim=-1, act="relu", gain=1), F.relu(x + b))


@pytest.mark.parametrize("act", ACTS)
def test_clamp_gradient_is_zero_where_active(act):
    """The true derivative where −clamp < y < clamp, zero elsewhere (the original's CUDA op passed linear's)."""
    x = torch.linspace(-4, 4, 41, dtype=torch.float64).reshape(1, 41).requires_grad_()
    y = gmk.bias_act(x, act=act, gain=2.0, clamp=1.0, backend="reference")
    grad, = torch.autograd.grad(y.sum(), x)
    unclamped = x.detach().clone().requires_grad_()
    u = gmk.bias_act(unclamped, act=act, gain=2.0, backend="reference")
    true, = torch.autograd.grad(u.sum(), unclamped)
    inside = (u.detach() > -1) & (u.detach() < 1)
    assert inside.any() and (~inside).any() or act == "sigmoid"
    torch.testing.assert_close(grad[inside], true[inside])
    assert torch.equal(grad[~inside], torch.zeros_like(grad[~inside]))


# --- every backend against the float64 reference ------------------------------------------------------

def clamp_clear_of(u: torch.Tensor, candidates=tuple(0.61 + 0.13 * k for k in range(50))) -> float:
    """A clamp that no |u| lies within 0.5 % of: in half types, y rounds to the clamp within half an ulp
    (0.2 % in bfloat16), and the kernels read the clamp off y (docs/conventions.md, "Bias and activation")."""
    for clamp in candidates:
        if not ((u.abs() - clamp).abs() < 0.005 * clamp).any():
            return clamp
    pytest.fail("no clamp candidate clear of the values")


def run(x, b, backend, create_graph=False, **kwargs):
    """y and the gradients of x (and b) for a fixed random grad_y."""
    leaves = [t.detach().requires_grad_() for t in (x, b) if t is not None]
    y = gmk.bias_act(*leaves, backend=backend, **kwargs)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(x.device,
                                                                                                      x.dtype)
    return y, torch.autograd.grad(y, leaves, grad_y, create_graph=create_graph), leaves


def check_backend(x, b, backend, layout=None, **kwargs):
    """``backend`` on x (re-stored by ``layout``) against the reference on x's values in float64."""
    stored = x if layout is None else layout(x)
    y, grads, _ = run(stored, b, backend, **kwargs)
    y64, grads64, _ = run(x.double(), None if b is None else b.double(), "reference", **kwargs)
    assert (y.dtype, y.shape) == (x.dtype, x.shape)
    if layout is not None and stored.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
        assert y.is_contiguous(memory_format=torch.channels_last), "y must keep x's channels_last layout"
    assert_close(y, y64, x.dtype)
    for grad, grad64 in zip(grads, grads64, strict=True):
        assert_close(grad, grad64, x.dtype, "grad", terms=x.numel() // grad.numel())
    return y, grads


def inputs(shape, dim, dtype, scale=2.0):
    x = (scale * torch.randn(shape)).to(dtype)
    return x, torch.randn(shape[dim]).to(dtype)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize(("backend", "dtype"), [(b, d) for b in BACKENDS for d in supported_dtypes(b)])
def test_backend_matches_reference(backend, dtype, act):
    x, b = inputs((3, 7, 5, 3), 1, dtype)
    check_backend(x, b, backend, act=act)
    u = gmk.bias_act(x.double(), b.double(), act=act, gain=1.5, backend="reference")
    check_backend(x, b, backend, act=act, gain=1.5, clamp=clamp_clear_of(u))
    check_backend(x, None, backend, act=act, alpha=0.3)


# (shape, dim): ranks 1 to 5, the bias along the first, a middle and the last dimension, odd sizes
SHAPES_AND_DIMS = [((7,), 0), ((5, 3), -1), ((3, 5), 0), ((2, 9, 1, 7), 1), ((2, 3, 5, 7), -1),
                   ((2, 33, 3, 5), 2), ((2, 3, 2, 3, 5), 1), ((1, 1, 1), 1), ((4, 257, 2), 1)]


@pytest.mark.parametrize(("shape", "dim"), SHAPES_AND_DIMS)
@pytest.mark.parametrize("act", ["lrelu", "swish", "linear"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_and_dims(backend, act, shape, dim):
    x, b = inputs(shape, dim, torch.float32)
    check_backend(x, b, backend, act=act, dim=dim, clamp=1.3)


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("act", ["lrelu", "tanh", "linear"])
@pytest.mark.parametrize("layout", [channels_last, noncontiguous])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts(backend, dtype, layout, act):
    x, b = inputs((3, 6, 5, 7), 1, dtype)
    check_backend(x, b, backend, layout=layout, act=act, clamp=None if dtype != torch.float32 else 2.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_expanded_input(backend):
    x = torch.randn(1, 4, 3, 5).expand(3, 4, 3, 5)
    b = torch.randn(4)
    y = gmk.bias_act(x, b, act="lrelu", backend=backend)
    assert_close(y, gmk.bias_act(x.double(), b.double(), act="lrelu", backend="reference"), torch.float32)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("backend", ["reference", *FLOAT64_BACKENDS])
def test_gradcheck_and_gradgradcheck(backend, act):
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    # away from the kinks of relu/lrelu/elu/selu and from the clamp, where finite differences straddle them
    with torch.no_grad():
        x += 0.1 * torch.sign(x + b[:, None])
        u = gmk.bias_act(x, b, act=act, gain=1.3, backend="reference")
    clamp = clamp_clear_of(u)
    function = lambda x, b: gmk.bias_act(x, b, act=act, gain=1.3, clamp=clamp, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(function, (x, b))
    assert torch.autograd.gradgradcheck(function, (x, b))


@pytest.mark.parametrize("act", ["swish", "tanh", "softplus", "lrelu"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_second_and_third_derivatives_match_reference(backend, act):
    """R1 differentiates the gradient; the third derivative falls back to formulas in torch ops. Float64
    where the backend has it, else float32 against the float64 reference."""
    dtype = torch.float64 if backend in FLOAT64_BACKENDS else torch.float32
    x, b = inputs((2, 3, 4), 1, dtype, scale=1.5)
    results = []
    for name in ("reference", backend):
        xr, br = (t.clone().to(torch.float64 if name == "reference" else dtype).requires_grad_() for t in (x, b))
        y = gmk.bias_act(xr, br, act=act, clamp=2.5, backend=name)
        g, = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum(), xr,
                                 create_graph=True)
        penalty = (g * g * g).sum()
        if not penalty.requires_grad:  # relu/lrelu/linear: the gradient is constant in x and b (docs)
            assert act in ("relu", "lrelu", "linear") and name != "reference"
            results.append((torch.zeros_like(xr), torch.zeros_like(br), torch.zeros_like(xr)))
            continue
        second = torch.autograd.grad(penalty, (xr, br), create_graph=True, allow_unused=True)
        second = [torch.zeros_like(leaf) if s is None else s for s, leaf in zip(second, (xr, br))]
        third_of = sum((s * s).sum() for s in second)
        third = torch.autograd.grad(third_of, xr, allow_unused=True)[0] if third_of.requires_grad else None
        results.append((*second, torch.zeros_like(xr) if third is None else third))
    for got, expected in zip(results[1], results[0], strict=True):
        assert_close(got, expected, dtype, "grad", terms=8)


# --- what autograd saves -------------------------------------------------------------------------------

def saved_shapes(act, clamp, backend):
    x, b = torch.randn(2, 3, 4, requires_grad=True), torch.randn(3, requires_grad=True)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        gmk.bias_act(x, b, act=act, clamp=clamp, backend=backend)
    return sorted(shapes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_saves_no_more_than_the_original(backend):
    assert saved_shapes("linear", None, backend) == []
    assert saved_shapes("lrelu", None, backend) == [(2, 3, 4)]  # y
    assert saved_shapes("relu", 1.0, backend) == [(2, 3, 4)]
    assert saved_shapes("linear", 1.0, backend) == [(2, 3, 4)]  # y: the clamp's mask
    assert saved_shapes("swish", None, backend) == [(2, 3, 4), (3,)]  # x and b


# --- low-level ops -------------------------------------------------------------------------------------

LOW_LEVEL_OPS = [
    pytest.param("gmkernels", "cpu", id="cpp-cpu"),
    *([pytest.param("gmk_triton", "cpu", id="triton-cpu")] if "triton" in BACKENDS else []),
]
LOW_LEVEL_OPS = [p for p in LOW_LEVEL_OPS if p.values[0] == "gmk_triton" or "cpu" in BACKENDS]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("act", "clamp"), [("lrelu", None), ("swish", 1.5), ("linear", 0.5), ("linear", None)])
@pytest.mark.parametrize(("namespace", "device"), LOW_LEVEL_OPS)
def test_opcheck(namespace, device, act, clamp, dtype):
    operators = getattr(torch.ops, namespace)
    x = torch.randn(3, 4, 5, dtype=dtype, device=device)
    b = torch.randn(4, dtype=dtype, device=device)
    args = (1, act, 0.2, 1.4, clamp)
    torch.library.opcheck(operators.bias_act, (x.requires_grad_(), b.requires_grad_(), *args))
    y = operators.bias_act(x.detach(), b.detach(), *args)
    saved = ops.saved_input(act, clamp)
    grad = torch.randn_like(x).requires_grad_()
    backward_args = (grad, x.detach() if saved == "x" else None, b.detach() if saved == "x" else None,
                     y if saved == "y" else None, *args)
    torch.library.opcheck(operators.bias_act_backward, backward_args)
    if act in ops.SMOOTH:
        torch.library.opcheck(operators.bias_act_backward2, (torch.randn_like(x), grad.detach(), x.detach(),
                                                             b, *args))


# --- bad input -----------------------------------------------------------------------------------------

BAD_INPUTS = {
    "unknown-act": (lambda x, b: dict(x=x, act="gelu"), ValueError, "act"),
    "x-not-tensor": (lambda x, b: dict(x=[1.0]), TypeError, r"\bx\b"),
    "x-integer": (lambda x, b: dict(x=x.int()), TypeError, r"\bx\b"),
    "b-2d": (lambda x, b: dict(x=x, b=b[None]), ValueError, r"\bb\b"),
    "b-wrong-size": (lambda x, b: dict(x=x, b=b[:2]), ValueError, r"\bb\b"),
    "b-dtype": (lambda x, b: dict(x=x, b=b.double()), TypeError, r"\bb\b"),
    "b-device": (lambda x, b: dict(x=x, b=b.to("meta")), ValueError, r"\bb\b"),
    "dim-out-of-range": (lambda x, b: dict(x=x, b=b, dim=3), ValueError, "dim"),
    "dim-float": (lambda x, b: dict(x=x, b=b, dim=1.0), ValueError, "dim"),
    "clamp-negative": (lambda x, b: dict(x=x, clamp=-1.0), ValueError, "clamp"),
    "clamp-nan": (lambda x, b: dict(x=x, clamp=float("nan")), ValueError, "clamp"),
    "gain-inf": (lambda x, b: dict(x=x, gain=float("inf")), ValueError, "gain"),
    "alpha-string": (lambda x, b: dict(x=x, act="lrelu", alpha="0.2"), ValueError, "alpha"),
    "alpha-negative-lrelu": (lambda x, b: dict(x=x, act="lrelu", alpha=-0.1), ValueError, "alpha"),
    "backend": (lambda x, b: dict(x=x, backend="fast"), ValueError, "backend"),
    "cuda-on-cpu": (lambda x, b: dict(x=x, backend="cuda"), ValueError, "backend 'cuda'"),
}


@pytest.mark.parametrize(("make", "error", "pattern"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_naming_the_argument(make, error, pattern):
    kwargs = make(torch.randn(2, 3, 4), torch.randn(3))
    with pytest.raises(error, match=pattern):
        gmk.bias_act(**kwargs)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # Triton's interpreter (numpy)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_nonfinite_as_reference(backend):
    values = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 30.0, -30.0, 100.0, -100.0])
    x = values.reshape(1, -1)
    for act in ACTS:
        y = gmk.bias_act(x, act=act, backend=backend)
        expected = gmk.bias_act(x.double(), act=act, backend="reference")
        assert torch.equal(y.isnan(), expected.isnan()), act
        finite = expected.isfinite()
        assert torch.equal(y[~finite & ~expected.isnan()], expected[~finite & ~expected.isnan()].float()), act
        assert_close(y[finite], expected[finite], torch.float32)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_empty(backend):
    y = gmk.bias_act(torch.randn(0, 3, 2), torch.randn(3), act="lrelu", backend=backend)
    assert y.shape == (0, 3, 2)


# --- the module ----------------------------------------------------------------------------------------

def test_fused_leaky_relu_is_rosinalitys():
    module = gmk.nn.FusedLeakyReLU(5)
    with torch.no_grad():
        module.bias.normal_()
    x = torch.randn(2, 5, 3, 3)
    expected = F.leaky_relu(x + module.bias[None, :, None, None], 0.2) * SQRT2
    assert_close(module(x), expected, torch.float32)
    module(x).sum().backward()
    assert module.bias.grad is not None and module.bias.grad.shape == (5,)
    no_bias = gmk.nn.FusedLeakyReLU(5, negative_slope=0.1, scale=1.0, bias=False)
    assert_close(no_bias(x), F.leaky_relu(x, 0.1), torch.float32)
    assert "negative_slope=0.1" in repr(no_bias)


@pytest.mark.parametrize(("kwargs", "pattern"), [({"channels": 0}, "channels"), ({"channels": 3, "negative_slope": -1},
                                                                                  "negative_slope"),
                                                 ({"channels": 3, "scale": float("nan")}, "scale")])
def test_fused_leaky_relu_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        gmk.nn.FusedLeakyReLU(**kwargs)


def test_fused_leaky_relu_rejects_wrong_channels():
    with pytest.raises(ValueError, match="input"):
        gmk.nn.FusedLeakyReLU(4)(torch.randn(2, 3, 5))


# Bad input in the op's form (x, b, dim, act, alpha, gain, clamp), bad for the public function too: every
# entry point raises the same exception type naming the argument (tests/test_bad_inputs.py's pattern).
OP_BAD_ARGS = {
    "act": (lambda x, b: (x, b, 1, "gelu", 0.2, 1.0, None), ValueError, "act"),
    "x-integer": (lambda x, b: (x.long(), None, 1, "lrelu", 0.2, 1.0, None), TypeError, "x"),
    "b-shape": (lambda x, b: (x, b[:2], 1, "lrelu", 0.2, 1.0, None), ValueError, "b"),
    "b-dtype": (lambda x, b: (x, b.double(), 1, "lrelu", 0.2, 1.0, None), TypeError, "b"),
    "dim": (lambda x, b: (x, b, 3, "lrelu", 0.2, 1.0, None), ValueError, "dim"),
    "clamp-negative": (lambda x, b: (x, b, 1, "lrelu", 0.2, 1.0, -1.0), ValueError, "clamp"),
    "clamp-inf": (lambda x, b: (x, b, 1, "lrelu", 0.2, 1.0, float("inf")), ValueError, "clamp"),
    "alpha-negative": (lambda x, b: (x, b, 1, "lrelu", -0.2, 1.0, None), ValueError, "alpha"),
    "gain-nan": (lambda x, b: (x, b, 1, "swish", 0.0, float("nan"), None), ValueError, "gain"),
}


def _public_bias_act(x, b, dim, act, alpha, gain, clamp):
    return gmk.bias_act(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)


@pytest.mark.parametrize(("make_args", "error", "name"), OP_BAD_ARGS.values(), ids=OP_BAD_ARGS.keys())
def test_every_entry_point_rejects_bad_input_naming_it(make_args, error, name):
    args = make_args(torch.randn(2, 3, 4), torch.randn(3))
    entry_points = [_public_bias_act] + [getattr(torch.ops, p.values[0]).bias_act for p in LOW_LEVEL_OPS]
    for function in entry_points:
        with pytest.raises(error, match=rf"\b{name}\b"):
            function(*args)
    # the backward's checks as well (for x, grad = x is checked first and named instead)
    for namespace in [] if name == "x" else [p.values[0] for p in LOW_LEVEL_OPS]:
        with pytest.raises(error, match=rf"\b{name}\b"):
            getattr(torch.ops, namespace).bias_act_backward(args[0], args[0], args[1], args[0], *args[2:])


@pytest.mark.parametrize(("namespace", "device"), LOW_LEVEL_OPS)
def test_low_level_backward_needs_what_the_act_reads(namespace, device):
    operators = getattr(torch.ops, namespace)
    grad = torch.randn(2, 3, device=device)
    with pytest.raises((ValueError, RuntimeError), match=r"\bx\b"):
        operators.bias_act_backward(grad, None, None, grad, 1, "swish", 0.0, 1.0, None)
    with pytest.raises((ValueError, RuntimeError), match=r"\by\b"):
        operators.bias_act_backward(grad, grad, None, None, 1, "lrelu", 0.2, 1.0, None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kinks_take_torchs_branches(backend):
    """At v = 0 (relu, lrelu, elu, selu) and v = 20 (softplus's threshold) the first and second derivatives
    take torch's branches: the lower one for the first, the upper one for the second."""
    dtype = torch.float64 if backend in FLOAT64_BACKENDS else torch.float32
    for act in ("relu", "lrelu", "elu", "selu", "softplus"):
        results = []
        for name, t in (("reference", torch.float64), (backend, dtype)):
            x = torch.tensor([[0.0, 20.0, -1.0]], dtype=t, requires_grad=True)
            y = gmk.bias_act(x, act=act, backend=name)
            g, = torch.autograd.grad(y.sum(), x, create_graph=True)
            h = torch.autograd.grad(g.sum(), x, allow_unused=True)[0] if g.requires_grad else None
            results.append((g, torch.zeros_like(x) if h is None else h))
        for got, expected in zip(results[1], results[0]):
            torch.testing.assert_close(got.double(), expected.double(), msg=act)


@pytest.mark.skipif(not gmk.has_extension(), reason="the cpu backend needs gmkernels._C")
def test_torch_compile_keeps_the_ops_in_one_graph():
    """fullgraph=True fails on any graph break; the generated code calls the C++ ops themselves."""
    from torch._inductor.utils import run_and_get_code

    def loss(x, b):
        return gmk.bias_act(x, b, act="swish", clamp=3.0, backend="cpu").square().sum()

    def loss_and_grads(function, x, b):
        x, b = x.detach().requires_grad_(), b.detach().requires_grad_()
        value = function(x, b)
        return value, *torch.autograd.grad(value, (x, b))

    x, b = torch.randn(2, 6, 5, 5), torch.randn(6)
    torch._dynamo.reset()
    results, code = run_and_get_code(loss_and_grads, torch.compile(loss, fullgraph=True), x, b)
    for result, expected in zip(results, loss_and_grads(loss, x, b), strict=True):
        assert_close(result, expected, torch.float32, "grad", terms=50)
    assert "gmkernels.bias_act.default" in "".join(code) and "gmkernels.bias_act_backward.default" in "".join(code)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", [None, channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backends_match_reference(backend, dtype, layout):
    assert backend in gmk.available_backends("cuda")
    for act in ACTS:
        x, b = inputs((4, 33, 17, 9), 1, dtype)
        x, b = x.cuda(), b.cuda()
        check_backend(x, b, backend, layout=layout, act=act)
        check_backend(x, b, backend, layout=layout, act=act, clamp=clamp_clear_of(
            gmk.bias_act(x.double(), b.double(), act=act, backend="reference")))


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_are_never_written(backend):
    """Forward, backward and double backward on expanded, transposed and strided views leave them as they were."""
    x = torch.randn(1, 5, 3, 4).expand(2, 5, 3, 4).transpose(2, 3)
    b = torch.randn(10)[::2]
    grad_y = torch.randn(2, 5, 4, 1).expand(2, 5, 4, 3)
    before = [t.clone() for t in (x, b, grad_y)]
    for act in ("lrelu", "swish", "linear"):
        leaves = [t.requires_grad_() for t in (x.detach(), b.detach())]
        y = gmk.bias_act(*leaves, act=act, clamp=1.5, backend=backend)
        grads = torch.autograd.grad(y, leaves, grad_y, create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        if penalty.requires_grad:  # not for lrelu and linear: their gradient is constant in x and b
            torch.autograd.grad(penalty, leaves, allow_unused=True)
        expected = gmk.bias_act(x.double(), b.double(), act=act, clamp=1.5, backend="reference")
        assert_close(y, expected, torch.float32)
    for t, copy in zip((x, b, grad_y), before):
        assert torch.equal(t, copy)


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend needs gmkernels._C")
@pytest.mark.parametrize("layout", [None, channels_last])
def test_cpu_splits_large_tensors_across_threads(two_threads, layout):
    """Past the kernels' grain (64k elements a task) the runs split across threads: the same results."""
    x, b = inputs((4, 64, 33, 35), 1, torch.float32)
    for act in ("lrelu", "swish"):
        check_backend(x, b, "cpu", layout=layout, act=act, clamp=2.05)
