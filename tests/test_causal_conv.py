"""gmk.causal_conv1d and gmk.wavenet_layer: every backend against the float64 reference, forward and
every gradient; causality; opcheck; gradcheck; bad inputs."""
import math
import subprocess
import sys

import pytest
import torch

import gmkernels as gmk
import gmkernels.ops.causal_conv as causal_conv_ops
from conftest import assert_close_sum, backends_under_test, noncontiguous, supported_dtypes

SQRT_HALF = math.sqrt(0.5)


pytestmark = pytest.mark.usefixtures("exact_float32")


# The backends that run here and have these ops; the Triton interpreter is slow: it gets fewer cases.
BACKENDS = [name for name in backends_under_test("cpu") if name == "reference" or causal_conv_ops.CAUSAL_CONV.has(name)]
FAST_BACKENDS = [name for name in BACKENDS if name != "triton"]
GPU_BACKENDS = [name for name in ("cuda", "triton") if causal_conv_ops.CAUSAL_CONV.has(name)]

def grads_of(function, inputs, grad_outputs):
    """function(*inputs) and the gradients of the tensor inputs (None stays None)."""
    leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
    outputs = function(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    wanted = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True,
                                     materialize_grads=True))
    return outputs, [None if t is None else next(grads) for t in leaves]


# --- causal_conv1d ----------------------------------------------------------------------------------

def conv_inputs(n, cin, cout, k, t, dtype, device="cpu"):
    scale = 1 / math.sqrt(max(cin, 1) * k)
    return (torch.randn(n, cin, t, dtype=dtype, device=device),
            (torch.randn(cout, cin, k, dtype=dtype, device=device) * scale).to(dtype),
            torch.randn(cout, dtype=dtype, device=device))


def check_conv(backend, x, weight, bias, dilation, layout=None):
    """``backend`` matches the float64 reference: y and the gradients of x, weight, bias."""
    n, cin, t = x.shape
    cout, _, k = weight.shape
    grad_y = torch.randn(n, cout, t, dtype=x.dtype, device=x.device)
    stored = [x, weight] if layout is None else [layout(x), layout(weight)]
    inputs = (*stored, bias)
    (y,), grads = grads_of(lambda *a: gmk.causal_conv1d(*a, dilation=dilation, backend=backend), inputs,
                           grad_y)
    as64 = [None if v is None else v.detach().double().cpu() for v in (x, weight, bias)]
    (y64,), grads64 = grads_of(lambda *a: gmk.causal_conv1d(*a, dilation=dilation, backend="reference"), as64,
                               grad_y.double().cpu())
    assert (y.dtype, y.device) == (x.dtype, x.device)
    assert_close_sum(y.cpu(), y64, x.dtype, cin * k)
    for grad, grad64, terms in zip(grads, grads64, (cout * k, n * t, n * t), strict=True):
        if grad64 is None:
            assert grad is None
            continue
        assert grad.dtype == x.dtype
        assert_close_sum(grad.cpu(), grad64, x.dtype, terms)


# (k, dilation, Cin, Cout, T): odd channel counts; T shorter than the receptive field (k-1)·d + 1.
CONV_SHAPES = [(2, 1, 3, 5, 17), (3, 2, 5, 7, 19), (2, 4, 6, 3, 9), (3, 7, 4, 6, 23), (1, 1, 5, 4, 8),
               (2, 7, 3, 3, 6), (3, 4, 17, 19, 40)]
# The Triton interpreter's tiles are 16 channels x 32 steps: the last shape crosses their edges.
TRITON_CONV_SHAPES = [(2, 1, 3, 5, 17), (3, 7, 4, 6, 23), (1, 2, 5, 3, 8), (3, 4, 2, 3, 5), (2, 3, 19, 17, 70)]


@pytest.mark.parametrize(("backend", "k", "dilation", "cin", "cout", "t"), [
    *[(b, *shape) for b in FAST_BACKENDS for shape in CONV_SHAPES],
    *[("triton", *shape) for shape in TRITON_CONV_SHAPES if "triton" in BACKENDS]])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_causal_conv_matches_reference(backend, dtype, k, dilation, cin, cout, t):
    if dtype not in supported_dtypes(backend):
        pytest.skip(f"{backend} has no {dtype}")
    check_conv(backend, *conv_inputs(2, cin, cout, k, t, dtype), dilation)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_conv_noncontiguous_inputs(backend, with_bias):
    x, weight, bias = conv_inputs(3, 5, 6, 3, 21, torch.float32)
    check_conv(backend, x, weight, bias if with_bias else None, 2, layout=noncontiguous)


def test_reference_is_padded_conv1d():
    """docs/conventions.md, "Causal convolution taps": y[t] = b + Σ_j W[:, :, j] x[t - (k-1-j) d],
    written out as a loop."""
    x, weight, bias = conv_inputs(2, 3, 4, 3, 11, torch.float64)
    d = 2
    expected = bias[None, :, None].expand(2, 4, 11).clone()
    for t in range(11):
        for j in range(3):
            if t - (2 - j) * d >= 0:
                expected[:, :, t] += x[:, :, t - (2 - j) * d] @ weight[:, :, j].T
    torch.testing.assert_close(gmk.reference.causal_conv.causal_conv1d(x, weight, bias, d), expected)


# (N, Cin, Cout, T): no samples, no time steps, no input channels, no output channels. Every output is the
# bias alone (F.conv1d rejects or, with Cin = 0, mis-shapes the last three: the reference handles them).
EMPTY_CONV_SIZES = [(0, 3, 4, 5), (2, 3, 4, 0), (2, 0, 4, 5), (2, 3, 0, 5)]


@pytest.mark.parametrize(("n", "cin", "cout", "t"), EMPTY_CONV_SIZES)
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_issue18_item11_causal_conv_empty_sizes(backend, n, cin, cout, t):
    """Every backend, the reference too: y the bias alone, zero gradients of x and W, grad_y summed for b."""
    x, weight, bias = conv_inputs(n, cin, cout, 2, t, torch.float32)
    grad_y = torch.randn(n, cout, t)
    (y,), grads = grads_of(lambda *a: gmk.causal_conv1d(*a, dilation=3, backend=backend), (x, weight, bias),
                           grad_y)
    assert torch.equal(y, bias.view(-1, 1).expand(n, cout, t))
    assert torch.equal(grads[0], torch.zeros_like(x)) and torch.equal(grads[1], torch.zeros_like(weight))
    torch.testing.assert_close(grads[2], grad_y.sum((0, 2)))


# (N, R, T): no samples, no residual channels, no time steps.
@pytest.mark.parametrize(("n", "r", "t"), [(0, 3, 5), (2, 0, 5), (2, 3, 0)])
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_issue18_item11_wavenet_layer_empty_sizes(backend, n, r, t):
    """Every backend, the reference too, gives the reference's outputs and gradients; with no residual
    channel, skip is skip_bias alone."""
    inputs = layer_inputs(n, r, 4, 2, t, torch.float32, "local")
    grad_out = (torch.randn(n, r, t), torch.randn(n, 4, t))

    def run(name):
        def layer(*args):
            return gmk.wavenet_layer(*args, dilation=2, residual_scale=0.5, backend=name)

        return grads_of(layer, inputs, grad_out)

    (x_next, skip), grads = run(backend)
    (x_next_ref, skip_ref), grads_ref = run("reference")
    assert x_next.shape == (n, r, t)
    torch.testing.assert_close(x_next, x_next_ref)
    torch.testing.assert_close(skip, inputs[6].view(-1, 1).expand(n, 4, t) if r == 0 else skip_ref)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref)


# --- wavenet_layer ----------------------------------------------------------------------------------

def layer_inputs(n, r, s, k, t, dtype, cond_kind, biases=True, device="cpu"):
    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=torch.float64, device=device) * scale).to(dtype)

    conv_bias, res_bias, skip_bias = (randn(c) if biases else None for c in (2 * r, r, s))
    cond = {"none": None, "local": randn(n, 2 * r, t), "global": randn(n, 2 * r, 1)}[cond_kind]
    scale = 1 / math.sqrt(max(r, 1))
    return (randn(n, r, t), randn(2 * r, r, k, scale=scale / math.sqrt(k)), conv_bias,
            randn(r, r, scale=scale), res_bias, randn(s, r, scale=scale), skip_bias, cond)


def check_layer(backend, inputs, dilation, residual_scale, layout=None):
    """``backend`` matches the float64 reference: x_next, skip and the gradients of all eight inputs."""
    x, conv_weight, *_, skip_weight, _, cond = inputs
    n, r, t = x.shape
    s, k = skip_weight.shape[0], conv_weight.shape[2]
    grad_out = (torch.randn(n, r, t, dtype=x.dtype, device=x.device),
                torch.randn(n, s, t, dtype=x.dtype, device=x.device))
    stored = [v if v is None or layout is None or v.dim() < 2 else layout(v) for v in inputs]
    kwargs = {"dilation": dilation, "residual_scale": residual_scale}
    outputs, grads = grads_of(lambda *a: gmk.wavenet_layer(*a, **kwargs, backend=backend), stored, grad_out)
    as64 = [None if v is None else v.detach().double().cpu() for v in inputs]
    outputs64, grads64 = grads_of(lambda *a: gmk.wavenet_layer(*a, **kwargs, backend="reference"), as64,
                                  tuple(g.double().cpu() for g in grad_out))
    for out, out64 in zip(outputs, outputs64, strict=True):
        assert (out.dtype, out.device) == (x.dtype, x.device)
        assert_close_sum(out.cpu(), out64, x.dtype, r * k + r)
    cond_terms = t if cond is not None and cond.shape[2] == 1 else 1
    grad_terms = (2 * r * k + r + s, n * t, n * t, n * t, n * t, n * t, n * t, cond_terms * (r + s))
    for grad, grad64, terms in zip(grads, grads64, grad_terms, strict=True):
        if grad64 is None:
            assert grad is None
            continue
        assert grad.dtype == x.dtype
        # The backward rounds z and grad_h to x's dtype (Triton, CUDA) before its GEMMs, as eager PyTorch
        # rounds h, z, grad_z and grad_h.
        assert_close_sum(grad.cpu(), grad64, x.dtype, terms, roundings=4)


# (R, S, k, dilation, T)
LAYER_SHAPES = [(3, 5, 2, 1, 13), (4, 7, 2, 4, 17), (5, 4, 3, 2, 11), (6, 9, 2, 7, 6), (3, 2, 1, 1, 9),
                (17, 18, 2, 5, 70)]


@pytest.mark.parametrize(("backend", "r", "s", "k", "dilation", "t"), [
    *[(b, *shape) for b in FAST_BACKENDS for shape in LAYER_SHAPES],
    *[("triton", *shape) for shape in LAYER_SHAPES[:3] if "triton" in BACKENDS]])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cond_kind", ["local", "global"])
def test_wavenet_layer_matches_reference(backend, dtype, cond_kind, r, s, k, dilation, t):
    if dtype not in supported_dtypes(backend):
        pytest.skip(f"{backend} has no {dtype}")
    check_layer(backend, layer_inputs(2, r, s, k, t, dtype, cond_kind), dilation, SQRT_HALF)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton does not run here")
@pytest.mark.parametrize(("dtype", "cond_kind"), [(torch.float32, "local"), (torch.bfloat16, "global")])
def test_triton_layer_crosses_tile_edges(dtype, cond_kind):
    """More channels and time steps than the interpreter's tiles (16 x 32), in every kernel."""
    check_layer("triton", layer_inputs(2, 17, 18, 2, 70, dtype, cond_kind), 5, SQRT_HALF)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton does not run here")
@pytest.mark.parametrize("cond_kind", ["none", "global"])
def test_triton_layer_without_the_one_kernel_path(monkeypatch, cond_kind):
    """R above MAX_FUSED_RESIDUAL takes three launches (z through memory): the same results."""
    import gmkernels.triton.causal_conv as triton_causal_conv

    monkeypatch.setattr(triton_causal_conv, "MAX_FUSED_RESIDUAL", 4)
    check_layer("triton", layer_inputs(2, 5, 18, 2, 40, torch.float32, cond_kind), 3, SQRT_HALF)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cond_kind", "biases", "residual_scale"), [
    ("none", True, 1.0), ("none", False, SQRT_HALF), ("global", False, 1.0)])
def test_wavenet_layer_without_cond_or_biases(backend, cond_kind, biases, residual_scale):
    check_layer(backend, layer_inputs(2, 4, 5, 2, 10, torch.float32, cond_kind, biases), 2, residual_scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cond_kind", ["local", "global"])
def test_wavenet_layer_noncontiguous_inputs(backend, cond_kind):
    check_layer(backend, layer_inputs(2, 5, 3, 2, 12, torch.float32, cond_kind), 3, SQRT_HALF,
                layout=noncontiguous)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_wavenet_layer_long_sequence(backend):
    """More time steps than one CPU block (512) and a dilation beyond T of the first blocks."""
    check_layer(backend, layer_inputs(2, 8, 6, 2, 1300, torch.float32, "global"), 600, SQRT_HALF)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wanted", [(0,), (1, 3, 5), (2, 4, 6, 7), (7,)])
def test_wavenet_layer_gradients_of_some_inputs(backend, wanted):
    """Only the inputs that require grad get one (the backward op's output_mask), and those are right."""
    inputs = layer_inputs(2, 3, 4, 2, 9, torch.float32, "local")
    leaves = [t.detach().requires_grad_(i in wanted) for i, t in enumerate(inputs)]
    grad_out = (torch.randn(2, 3, 9), torch.randn(2, 4, 9))
    outputs = gmk.wavenet_layer(*leaves, dilation=2, residual_scale=SQRT_HALF, backend=backend)
    grads = torch.autograd.grad(outputs, [leaves[i] for i in wanted], grad_out)
    expected = gmk.wavenet_layer(*leaves, dilation=2, residual_scale=SQRT_HALF, backend="reference")
    expected_grads = torch.autograd.grad(expected, [leaves[i] for i in wanted], grad_out)
    for grad, grad_ref in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-5)


def test_wavenet_layer_reference_is_the_paper():
    """x_next and skip spelled out with the gate written as tanh(a) σ(b)."""
    x, cw, cb, rw, rb, sw, sb, cond = layer_inputs(2, 3, 4, 2, 9, torch.float64, "local")
    h = torch.nn.functional.conv1d(torch.nn.functional.pad(x, (2, 0)), cw, cb, dilation=2) + cond
    z = torch.tanh(h[:, :3]) * torch.sigmoid(h[:, 3:])
    x_next, skip = gmk.wavenet_layer(x, cw, cb, rw, rb, sw, sb, cond, dilation=2, residual_scale=0.5,
                                     backend="reference")
    torch.testing.assert_close(x_next, (x + torch.einsum("or,nrt->not", rw, z) + rb[:, None]) * 0.5)
    torch.testing.assert_close(skip, torch.einsum("sr,nrt->nst", sw, z) + sb[:, None])


# --- causality --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("backend", "k", "dilation"), [
    (backend, k, dilation) for backend in ("reference", *BACKENDS)
    for k, dilation in ((2, 1), (3, 2), (2, 5)) if backend != "triton" or k == 3])
@pytest.mark.parametrize("position", [0, 6, 12])
def test_output_at_t_does_not_depend_on_later_inputs(backend, k, dilation, position):
    t = 13
    x, weight, bias = conv_inputs(2, 3, 4, k, t, torch.float64 if backend != "triton" else torch.float32)
    def one_step(*a):
        return gmk.causal_conv1d(*a, dilation=dilation, backend=backend)[:, :, position]

    _, (grad_x, _, _) = grads_of(one_step, (x, weight, bias), torch.ones(2, 4, dtype=x.dtype))
    assert not grad_x[:, :, position + 1:].any()
    # ... and it does depend on the taps it reads: x[t - (k-1-j) d]
    for j in range(k):
        source = position - (k - 1 - j) * dilation
        if source >= 0:
            assert grad_x[:, :, source].abs().max() > 0

    inputs = layer_inputs(2, 3, 4, k, t, x.dtype, "local")
    for output in range(2):
        def one_step(*a, output=output):
            return gmk.wavenet_layer(*a, dilation=dilation, backend=backend)[output][:, :, position]

        channels = inputs[0].shape[1] if output == 0 else inputs[5].shape[0]
        _, grads = grads_of(one_step, inputs, torch.ones(2, channels, dtype=x.dtype))
        for grad in (grads[0], grads[7]):  # x and cond
            assert not grad[:, :, position + 1:].any()
            assert grad[:, :, position].abs().max() > 0


# --- the low-level ops ------------------------------------------------------------------------------

NAMESPACES = [*(["gmkernels"] if gmk.has_extension() else []),
              *(["gmk_triton"] if "triton" in BACKENDS else [])]


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_opcheck(namespace):
    ops = getattr(torch.ops, namespace)
    x, weight, bias = (t.requires_grad_() for t in conv_inputs(2, 3, 5, 2, 7, torch.float32))
    torch.library.opcheck(ops.causal_conv1d, (x, weight, bias, 2))
    torch.library.opcheck(ops.causal_conv1d, (noncontiguous(x.detach()).requires_grad_(), weight, None, 1))
    grad_y = torch.randn(2, 5, 7)
    for output_mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(ops.causal_conv1d_backward,
                              (grad_y, x.detach(), weight.detach(), 3, output_mask))
    layer = [t if t is None else t.requires_grad_()
             for t in layer_inputs(2, 3, 4, 2, 7, torch.float32, "local")]
    torch.library.opcheck(ops.wavenet_layer, (*layer, 2, SQRT_HALF))
    global_cond = torch.randn(2, 6, 1).expand(2, 6, 7).requires_grad_(False)
    torch.library.opcheck(ops.wavenet_layer, (*[t.detach() for t in layer[:2]], None, layer[3].detach(), None,
                                              layer[5].detach(), None, global_cond, 1, 1.0))


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_opcheck_layer_backward(namespace):
    op = getattr(torch.ops, namespace).wavenet_layer_backward
    x, cw, cb, rw, _, sw, _, cond = layer_inputs(2, 3, 4, 2, 7, torch.float32, "local")
    grad_x_next, grad_skip = torch.randn(2, 3, 7), torch.randn(2, 4, 7)
    for output_mask in ([True] * 8, [True, False, True, False, True, False, True, False],
                        [False, True, False, True, False, True, False, True]):
        torch.library.opcheck(op, (grad_x_next, grad_skip, x, cw, cb, rw, sw, cond, 2, SQRT_HALF,
                                   output_mask))
    torch.library.opcheck(op, (grad_x_next, grad_skip, x, cw, None, rw, sw, None, 1, 1.0, [True] * 8))


@pytest.mark.parametrize("backend", [b for b in ("reference", "cpu") if b in gmk.available_backends()])
def test_gradcheck(backend):
    x, weight, bias = (t.requires_grad_() for t in conv_inputs(2, 3, 2, 2, 6, torch.float64))
    assert torch.autograd.gradcheck(lambda *a: gmk.causal_conv1d(*a, dilation=2, backend=backend),
                                    (x, weight, bias))
    layer = [t.requires_grad_() for t in layer_inputs(1, 2, 3, 2, 5, torch.float64, "global")]
    assert torch.autograd.gradcheck(
        lambda *a: gmk.wavenet_layer(*a, dilation=3, residual_scale=SQRT_HALF, backend=backend), layer)


def test_auto_picks_cpu_and_named_gpu_backends_raise():
    x, weight, _ = conv_inputs(1, 3, 4, 2, 5, torch.float32)
    if gmk.has_extension():
        assert causal_conv_ops.CAUSAL_CONV.select("auto", x.device, x.dtype) == "cpu"
        assert causal_conv_ops.WAVENET_LAYER.select("auto", x.device, x.dtype) == "cpu"
    for backend in [name for name in ("cuda", "triton") if name not in gmk.available_backends("cpu")]:
        with pytest.raises(ValueError, match=f"backend '{backend}'"):
            gmk.causal_conv1d(x, weight, backend=backend)


@pytest.mark.skipif(not gmk.has_extension(), reason="the cpu backend needs gmkernels._C")
def test_torch_compile_keeps_the_ops_in_one_graph():
    from torch._inductor.utils import run_and_get_code

    def loss(x, conv_weight, res_weight, skip_weight, cond):
        h = gmk.causal_conv1d(x, conv_weight[:3], dilation=2, backend="cpu")
        x_next, skip = gmk.wavenet_layer(h, conv_weight, None, res_weight, None, skip_weight, None, cond,
                                         dilation=4, residual_scale=SQRT_HALF, backend="cpu")
        return x_next.square().sum() + skip.square().sum()

    def loss_and_grads(function, *inputs):
        inputs = [t.detach().requires_grad_() for t in inputs]
        value = function(*inputs)
        return value, *torch.autograd.grad(value, inputs)

    x, cw, _, rw, _, sw, _, cond = layer_inputs(2, 3, 4, 2, 11, torch.float32, "global")
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="inductor")
    # No cached graphs: a cache filled before an op's autograd changed would hold its old backward.
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        results, code = run_and_get_code(loss_and_grads, compiled, x, cw, rw, sw, cond)
    for result, expected in zip(results, loss_and_grads(loss, x, cw, rw, sw, cond), strict=True):
        torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-4)
    code = "".join(code)
    for op in ("wavenet_layer", "wavenet_layer_backward", "causal_conv1d", "causal_conv1d_backward"):
        assert f"gmkernels.{op}.default" in code


# --- modules ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_causal_conv_module_loads_a_conv1d_state_dict(bias):
    conv = torch.nn.Conv1d(3, 5, 3, dilation=2, bias=bias)
    module = gmk.nn.CausalConv1d(3, 5, 3, dilation=2, bias=bias)
    module.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 12)
    torch.testing.assert_close(module(x), conv(torch.nn.functional.pad(x, (4, 0))))


def test_wavenet_layer_module_matches_its_conv1d_layers():
    layer = gmk.nn.WaveNetLayer(4, 6, kernel_size=3, dilation=2, residual_scale=SQRT_HALF)
    names = {f"{module}.{p}" for module in ("conv", "res", "skip") for p in ("weight", "bias")}
    assert set(layer.state_dict()) == names
    x, cond = torch.randn(2, 4, 10), torch.randn(2, 8, 1)
    x_next, skip = layer(x, cond)
    z = gmk.reference.gated.gated_activation(layer.conv(x), cond)
    torch.testing.assert_close(x_next, (x + layer.res(z)) * SQRT_HALF)
    torch.testing.assert_close(skip, layer.skip(z))
    x_next.sum().backward()
    assert all(p.grad is not None for name, p in layer.named_parameters() if not name.startswith("skip"))


# --- bad input --------------------------------------------------------------------------------------

def _conv(x=(2, 3, 8), weight=(4, 3, 2), bias=None, **kwargs):
    x, weight = (torch.randn(t) if isinstance(t, tuple) else t for t in (x, weight))
    return lambda: gmk.causal_conv1d(x, weight, bias, **kwargs)


def _layer(x=(2, 3, 8), conv_weight=(6, 3, 2), res_weight=(3, 3), skip_weight=(5, 3), cond=None, dilation=2,
           conv_bias=None, res_bias=None, skip_bias=None, **kwargs):
    x, conv_weight, res_weight, skip_weight = (torch.randn(t) if isinstance(t, tuple) else t
                                               for t in (x, conv_weight, res_weight, skip_weight))
    return lambda: gmk.wavenet_layer(x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias,
                                     cond, dilation=dilation, **kwargs)


# (the call, the exception, what its message names)
BAD_INPUTS = {
    "dilation-0": (_conv(dilation=0), ValueError, "dilation"),
    "dilation-float": (_conv(dilation=1.5), TypeError, "dilation"),
    "kernel-size-0": (_conv(weight=(4, 3, 0)), ValueError, "kernel size"),
    "weight-cin": (_conv(weight=(4, 2, 2)), ValueError, "weight"),
    "weight-2d": (_conv(weight=(4, 3)), ValueError, "weight"),
    "x-2d": (_conv(x=(3, 8)), ValueError, r"\bx\b"),
    "x-integer": (_conv(x=torch.ones(2, 3, 8, dtype=torch.int64)), TypeError, r"\bx\b"),
    "weight-dtype": (_conv(weight=torch.randn(4, 3, 2).double()), TypeError, "weight"),
    "weight-device": (_conv(weight=torch.empty(4, 3, 2, device="meta")), ValueError, "weight"),
    "bias-shape": (_conv(bias=torch.randn(3)), ValueError, "bias"),
    "bias-device": (_conv(bias=torch.empty(4, device="meta")), ValueError, "bias"),
    "backend": (_conv(backend="fastest"), ValueError, "backend"),
    "layer-dilation-0": (_layer(dilation=0), ValueError, "dilation"),
    "layer-kernel-size-0": (_layer(conv_weight=(6, 3, 0)), ValueError, "kernel size"),
    "layer-conv-weight-2r": (_layer(conv_weight=(5, 3, 2)), ValueError, "conv_weight"),
    "layer-conv-weight-cin": (_layer(conv_weight=(6, 4, 2)), ValueError, "conv_weight"),
    "layer-res-weight": (_layer(res_weight=(3, 4)), ValueError, "res_weight"),
    "layer-skip-weight": (_layer(skip_weight=(5, 4)), ValueError, "skip_weight"),
    "layer-skip-weight-1d": (_layer(skip_weight=(5,)), ValueError, "skip_weight"),
    "layer-conv-bias": (_layer(conv_bias=torch.randn(3)), ValueError, "conv_bias"),
    "layer-res-bias": (_layer(res_bias=torch.randn(6)), ValueError, "res_bias"),
    "layer-skip-bias": (_layer(skip_bias=torch.randn(3)), ValueError, "skip_bias"),
    "layer-cond-channels": (_layer(cond=torch.randn(2, 3, 8)), ValueError, "cond"),
    "layer-cond-length": (_layer(cond=torch.randn(2, 6, 5)), ValueError, "cond"),
    "layer-cond-2d": (_layer(cond=torch.randn(6, 1)), ValueError, "cond"),
    "layer-cond-dtype": (_layer(cond=torch.randn(2, 6, 8).double()), TypeError, "cond"),
    "layer-cond-device": (_layer(cond=torch.empty(2, 6, 8, device="meta")), ValueError, "cond"),
    "layer-res-weight-device": (_layer(res_weight=torch.empty(3, 3, device="meta")), ValueError,
                                "res_weight"),
    "layer-skip-weight-dtype": (_layer(skip_weight=torch.randn(5, 3).half()), TypeError, "skip_weight"),
    "layer-scale": (_layer(residual_scale="half"), TypeError, "residual_scale"),
}


@pytest.mark.parametrize(("call", "error", "pattern"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_naming_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def _low_level(op, *args):
    return lambda namespace: getattr(getattr(torch.ops, namespace), op)(*args)


X, W, B, GRAD_Y = torch.randn(2, 3, 8), torch.randn(4, 3, 2), torch.randn(4), torch.randn(2, 4, 8)
ALL = [True] * 3
LX, CW, RW, SW = torch.randn(2, 3, 8), torch.randn(6, 3, 2), torch.randn(3, 3), torch.randn(5, 3)
LOW_LEVEL_BAD_ARGS = {
    "dilation-0": (_low_level("causal_conv1d", X, W, None, 0), ValueError, "dilation"),
    "kernel-size-0": (_low_level("causal_conv1d", X, W[:, :, :0], None, 1), ValueError, "weight"),
    "weight-cin": (_low_level("causal_conv1d", X, W[:, :2], None, 1), ValueError, "weight"),
    "bias-shape": (_low_level("causal_conv1d", X, W, B[:3], 1), ValueError, "bias"),
    "weight-dtype": (_low_level("causal_conv1d", X, W.double(), None, 1), TypeError, "weight"),
    "x-integer": (_low_level("causal_conv1d", X.long(), W.long(), None, 1), TypeError, r"\bx\b"),
    "grad-out-shape": (_low_level("causal_conv1d_backward", GRAD_Y[:, :3], X, W, 1, ALL), ValueError,
                       "grad_out"),
    "layer-conv-weight": (_low_level("wavenet_layer", LX, CW[:5], None, RW, None, SW, None, None, 1, 1.0),
                          ValueError, "conv_weight"),
    "layer-res-weight": (_low_level("wavenet_layer", LX, CW, None, RW[:2], None, SW, None, None, 1, 1.0),
                         ValueError, "res_weight"),
    "layer-skip-weight": (_low_level("wavenet_layer", LX, CW, None, RW, None, SW[:, :2], None, None, 1, 1.0),
                          ValueError, "skip_weight"),
    "layer-cond": (_low_level("wavenet_layer", LX, CW, None, RW, None, SW, None, torch.randn(2, 6, 1), 1,
                              1.0), ValueError, "cond"),
    "layer-dilation": (_low_level("wavenet_layer", LX, CW, None, RW, None, SW, None, None, 0, 1.0),
                       ValueError, "dilation"),
    "layer-backward-grad-skip": (_low_level("wavenet_layer_backward", LX, LX, LX, CW, None, RW, SW, None, 1,
                                            1.0, [True] * 8), ValueError, "grad_skip"),
    "layer-backward-grad-x-next": (_low_level("wavenet_layer_backward", LX[:, :2], torch.randn(2, 5, 8), LX,
                                              CW, None, RW, SW, None, 1, 1.0, [True] * 8), ValueError,
                                   "grad_x_next"),
}


@pytest.mark.parametrize(("call", "error", "pattern"), LOW_LEVEL_BAD_ARGS.values(),
                         ids=LOW_LEVEL_BAD_ARGS.keys())
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_low_level_bad_args_raise_naming_the_argument(namespace, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(namespace)


# --- issue 18: inputs never written, biases of any strides, dilations past 32 bits --------------------

def clones(tensors):
    return [None if t is None else t.clone() for t in tensors]


def assert_unchanged(tensors, before):
    for t, saved in zip(tensors, before, strict=True):
        assert t is None or torch.equal(t, saved), "an input was written"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("n", "t"), [(1, 1), (2, 1), (1, 3)])
def test_issue18_item1_conv_never_writes_into_its_bias(backend, n, t):
    """N = T = 1, a generation step: the CPU output was the caller's bias itself, added into on every call."""
    dtypes = (torch.float32,) if backend == "triton" else supported_dtypes(backend)
    for dtype in dtypes:
        inputs = conv_inputs(n, 3, 4, 2, t, dtype)
        before = clones(inputs)
        for _ in range(2):
            check_conv(backend, *inputs, 1)
            assert_unchanged(inputs, before)


@pytest.mark.parametrize(("backend", "t"), [*((b, t) for b in FAST_BACKENDS for t in (1, 513)),
                                            *((b, 1) for b in BACKENDS if b == "triton")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_issue18_item2_layer_time_blocks_of_one_step(backend, t, dtype):
    """T = 1, or T = 1 mod the CPU layer's blocks of 512 steps: the block's h was conv_bias itself, written
    into (float32/64) and shared by every sample's block (wrong in every dtype with N = 2), forward and
    backward."""
    if dtype not in supported_dtypes(backend):
        pytest.skip(f"{backend} has no {dtype}")
    inputs = layer_inputs(2, 3, 4, 2, t, dtype, "global")
    before = clones(inputs)
    for _ in range(2):
        check_layer(backend, inputs, 2, SQRT_HALF)
        assert_unchanged(inputs, before)


def strided(bias):
    """bias's values in every other element of a buffer (NaN between): a kernel that ignores the stride
    reads the wrong values or NaN."""
    return noncontiguous(bias)


def expanded(bias):
    """One value, expanded (stride 0), as a bias broadcast from a scalar is."""
    return bias[:1].expand(bias.shape)


@pytest.mark.parametrize("layout", [strided, expanded])
@pytest.mark.parametrize("backend", BACKENDS)
def test_issue18_item3_conv_bias_of_any_strides(backend, layout):
    x, weight, bias = conv_inputs(2, 3, 5, 2, 9, torch.float32)
    check_conv(backend, x, weight, layout(bias), 2)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("layout", [strided, expanded])
@pytest.mark.parametrize("backend", BACKENDS)
def test_issue18_item3_layer_biases_of_any_strides(monkeypatch, backend, layout, fused):
    """All three biases, through the one-kernel Triton layer and its three-launch path, and the backward
    (which reads conv_bias again)."""
    if not fused:
        if backend != "triton":
            pytest.skip("only the Triton layer has two paths")
        import gmkernels.triton.causal_conv as triton_causal_conv
        monkeypatch.setattr(triton_causal_conv, "MAX_FUSED_RESIDUAL", 2)
    inputs = list(layer_inputs(2, 3, 4, 2, 9, torch.float32, "global"))
    for i in (2, 4, 6):
        inputs[i] = layout(inputs[i])
    check_layer(backend, tuple(inputs), 2, SQRT_HALF)


# Dilations whose taps' offsets pass 32 bits (the Triton kernels' (k-1-j)·d overflowed int32 at 2^31 - 1 and
# read future samples) and 64 bits of reach with k = 2. With T small every tap but the last reads zeros.
HUGE_DILATIONS = [2**31 - 1, 2**31, 2**62, 2**63 - 1]


def huge_dilation_cases():
    return [(backend, k, d) for backend in ("reference", *BACKENDS) for k in (2, 3) for d in HUGE_DILATIONS
            if (k - 1) * d < 2**63]


def last_tap_alone(x, weight, bias):
    """The causal convolution where every tap but the last reaches back past the start."""
    return torch.nn.functional.conv1d(x, weight[:, :, -1:], bias)


@pytest.mark.parametrize(("backend", "k", "dilation"), huge_dilation_cases())
def test_issue18_item4_conv_dilations_past_32_bits(backend, k, dilation):
    x, weight, bias = conv_inputs(2, 3, 5, k, 7, torch.float32)
    y = gmk.causal_conv1d(x, weight, bias, dilation=dilation, backend=backend)
    assert_close_sum(y, last_tap_alone(x.double(), weight.double(), bias.double()), torch.float32, 3)
    check_conv(backend, x, weight, bias, dilation)  # and the gradients


@pytest.mark.parametrize(("backend", "k", "dilation"), huge_dilation_cases())
def test_issue18_item4_layer_dilations_past_32_bits(backend, k, dilation):
    check_layer(backend, layer_inputs(2, 3, 4, k, 7, torch.float32, "local"), dilation, SQRT_HALF)


# (k, dilation) whose reach (k-1)·dilation passes 2^63 - 1, and a dilation that is no int64 at all.
UNINDEXABLE_DILATIONS = [(3, 2**62), (5, 2**62 - 1), (2, 2**63), (1, 2**64)]


@pytest.mark.parametrize(("k", "dilation"), UNINDEXABLE_DILATIONS)
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_issue18_item7_unindexable_dilation_raises_naming_it(backend, k, dilation):
    with pytest.raises(ValueError, match="dilation"):
        _conv(weight=(4, 3, k), dilation=dilation, backend=backend)()
    with pytest.raises(ValueError, match="dilation"):
        _layer(conv_weight=(6, 3, k), dilation=dilation, backend=backend)()


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_issue18_item7_low_level_ops_reject_an_unindexable_dilation(namespace):
    ops = getattr(torch.ops, namespace)
    w3, cw3 = torch.randn(4, 3, 3), torch.randn(6, 3, 3)
    calls = [lambda: ops.causal_conv1d(X, w3, None, 2**62),
             lambda: ops.causal_conv1d_backward(GRAD_Y, X, w3, 2**62, ALL),
             lambda: ops.wavenet_layer(LX, cw3, None, RW, None, SW, None, None, 2**62, 1.0),
             lambda: ops.wavenet_layer_backward(LX, torch.randn(2, 5, 8), LX, cw3, None, RW, SW, None, 2**62,
                                                1.0, [True] * 8)]
    for call in calls:
        with pytest.raises(ValueError, match="dilation"):
            call()


@pytest.mark.skipif(not gmk.has_extension(), reason="the cpu backend needs gmkernels._C")
def test_issue18_item7_the_issues_call_raises_in_a_fresh_process():
    """The issue's call segfaulted (exit 139): run alone, it must raise a ValueError naming dilation."""
    script = ("import torch, gmkernels as gmk\n"
              "try:\n"
              "    x, w = torch.randn(1, 3, 1), torch.randn(4, 3, 3)\n"
              "    gmk.causal_conv1d(x, w, dilation=2**62, backend='cpu')\n"
              "except ValueError as error:\n"
              "    print('raised:', error)\n")
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"exit code {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "raised:" in result.stdout and "dilation" in result.stdout, result.stdout + result.stderr


# --- on a GPU ---------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("k", "dilation", "cin", "cout", "t"), [
    (2, 1, 64, 128, 1000), (2, 512, 64, 128, 2000), (3, 7, 33, 65, 300), (2, 300, 5, 7, 100)])
def test_gpu_causal_conv_matches_reference(backend, dtype, k, dilation, cin, cout, t):
    check_conv(backend, *conv_inputs(3, cin, cout, k, t, dtype, device="cuda"), dilation)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cond_kind", ["none", "local", "global"])
@pytest.mark.parametrize(("r", "s", "k", "dilation", "t"), [(64, 256, 2, 1, 700), (128, 256, 2, 512, 1500),
                                                           (37, 21, 3, 5, 97)])
def test_gpu_wavenet_layer_matches_reference(backend, dtype, cond_kind, r, s, k, dilation, t):
    inputs = layer_inputs(2, r, s, k, t, dtype, cond_kind, device="cuda")
    check_layer(backend, inputs, dilation, SQRT_HALF, layout=noncontiguous if cond_kind == "local" else None)


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in GPU_BACKENDS, reason="CUDA kernels not built")
def test_gpu_cuda_layer_rejects_too_many_residual_channels():
    inputs = layer_inputs(1, 1025, 4, 2, 8, torch.float32, "none", device="cuda")
    with pytest.raises(ValueError, match="R <= 1024"):
        gmk.wavenet_layer(*inputs, dilation=1, backend="cuda")


@pytest.mark.gpu
def test_gpu_auto_picks_a_gpu_backend():
    x, _, _ = conv_inputs(1, 3, 4, 2, 5, torch.float32, device="cuda")
    assert causal_conv_ops.CAUSAL_CONV.select("auto", x.device, x.dtype) in ("cuda", "triton")
