"""gmk.discretized_logistic_mixture_{nll,sample}: every backend against the float64 reference, forward
and gradient, in each regime of PixelCNN++'s loss; the ops' contracts; sampling's distribution."""
import math

import pytest
import torch
import torch.nn.functional as F

import gmkernels as gmk
import gmkernels.reference.logistic_mixture as reference
from conftest import assert_nonfinite_like, backends_under_test, noncontiguous, supported_dtypes

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # Triton's interpreter

BACKENDS = backends_under_test("cpu")
CHANNELS = (1, 3)

# (atol, rtol) against the float64 reference. The nll is computed and returned in float32 for every
# params dtype but float64, so its rows are float32's; gradients are rounded to params' dtype.
# check_backend widens them by twice the float32 reference's own error (FlashAttention's rule): the
# loss reads x - μ at up to e^7 times its size (the clamped scale) and, with 65536 bins, in units of a
# bin width of 3e-5, so float32 itself is off by up to ~1e-2 there.
TOLERANCES = {
    torch.float64: {"forward": (1e-11, 1e-11), "grad": (1e-10, 1e-10)},
    torch.float32: {"forward": (1e-5, 1e-5), "grad": (1e-4, 1e-4)},
    torch.float16: {"forward": (1e-5, 1e-5), "grad": (1e-3, 2e-3)},
    torch.bfloat16: {"forward": (1e-5, 1e-5), "grad": (8e-3, 1.6e-2)},
}


def assert_close(actual, expected, dtype, kind, float32_error=0.0):
    """Within TOLERANCES[dtype][kind], each widened by twice ``float32_error``; NaN never matches."""
    atol, rtol = TOLERANCES[dtype][kind]
    widen = 2 * float(float32_error)
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol + widen, rtol=rtol + widen)


def relative_error(actual, expected):
    """The largest error relative to max(|expected|, 1): what assert_close's widening is measured in."""
    if expected.numel() == 0:
        return 0.0
    return ((actual.detach().double() - expected).abs() / expected.abs().clamp(min=1)).max().item()


def nll_and_grad(params, x, grad_nll, **options):
    params = params.detach().requires_grad_()
    nll = gmk.discretized_logistic_mixture_nll(params, x, **options)
    return nll, torch.autograd.grad(nll, params, grad_nll)[0]


def check_backend(params, x, *, backend, layout=None, **options):
    """``backend`` on params (stored by ``layout``) matches the reference in float64: the loss and
    d loss/d params. The tolerance is widened by the float32 reference's own error on the same values.
    Returns the backend's loss and gradient.
    """
    dtype = params.dtype
    compute = reference.compute_dtype(dtype)
    loss_shape = (x.shape[0], *x.shape[2:]) if options.get("reduction", "none") == "none" else ()
    grad_nll64 = torch.randn(loss_shape, dtype=torch.float64, device=x.device)
    nll64, grad64 = nll_and_grad(params.double(), x.double(), grad_nll64, backend="reference", **options)
    nll, grad = nll_and_grad(params if layout is None else layout(params), x, grad_nll64.to(compute),
                             backend=backend, **options)
    assert (nll.dtype, grad.dtype) == (compute, dtype)
    assert nll.isfinite().all() and grad.isfinite().all()
    nll_error = grad_error = 0.0
    if dtype != torch.float64:
        nll32, grad32 = nll_and_grad(params.float(), x.float(), grad_nll64.float(), backend="reference",
                                     **options)
        nll_error, grad_error = relative_error(nll32, nll64), relative_error(grad32, grad64)
    assert_close(nll, nll64, dtype, "forward", nll_error)
    assert_close(grad, grad64, dtype, "grad", grad_error)
    return nll, grad


def blocks(params, num_channels):
    """Views of params (N, P, *S) as logits (N, K, *S) and means, log-scales, coefficients (N, C, K, *S)."""
    k = params.shape[1] // reference.params_per_component(num_channels)
    logits = params[:, :k]
    if num_channels == 1:
        return logits, params[:, k:2 * k].unsqueeze(1), params[:, 2 * k:].unsqueeze(1), None
    means, log_scales, coeffs = params[:, k:].unflatten(1, (3, 3, k)).unbind(2)
    return logits, means, log_scales, coeffs


def make_params(n, num_channels, k, spatial=(), *, dtype=torch.float32, means=(-1.0, 1.0),
                log_scales=(-5.0, 0.0)):
    """Typical parameters: logits ~ N(0, 1), means and log-scales uniform, raw coefficients ~ N(0, 1)."""
    params = torch.randn(n, reference.params_per_component(num_channels) * k, *spatial, dtype=torch.float64)
    _, mean, log_scale, _ = blocks(params, num_channels)
    mean.uniform_(*means)
    log_scale.uniform_(*log_scales)
    return params.to(dtype)


def make_x(n, num_channels, spatial=(), num_bins=256, low=0, high=None):
    """Sub-pixels on the grid of num_bins levels, bin indices uniform in [low, high] (all bins by default)."""
    index = torch.randint(low, num_bins if high is None else high + 1, (n, num_channels, *spatial))
    return 2 * index / (num_bins - 1) - 1


# --- the reference is PixelCNN++'s loss --------------------------------------------------------

def pixelcnn_pp_loss(x, l):
    """Transcribed from the PixelCNN++ PyTorch port (pixel-cnn-pp, utils.py, discretized_mix_logistic_loss),
    NCHW inputs, 256 levels; returns the per-pixel loss where the original returns its sum."""
    x, l = x.permute(0, 2, 3, 1), l.permute(0, 2, 3, 1)
    xs, nr_mix = list(x.shape), l.shape[-1] // 10
    logit_probs = l[:, :, :, :nr_mix]
    l = l[:, :, :, nr_mix:].contiguous().view(xs + [nr_mix * 3])
    means = l[:, :, :, :, :nr_mix]
    log_scales = torch.clamp(l[:, :, :, :, nr_mix:2 * nr_mix], min=-7.)
    coeffs = torch.tanh(l[:, :, :, :, 2 * nr_mix:3 * nr_mix])
    x = x.unsqueeze(-1) + torch.zeros(xs + [nr_mix], dtype=x.dtype)
    m2 = (means[:, :, :, 1, :] + coeffs[:, :, :, 0, :] * x[:, :, :, 0, :]).view(*xs[:3], 1, nr_mix)
    m3 = (means[:, :, :, 2, :] + coeffs[:, :, :, 1, :] * x[:, :, :, 0, :]
          + coeffs[:, :, :, 2, :] * x[:, :, :, 1, :]).view(*xs[:3], 1, nr_mix)
    means = torch.cat((means[:, :, :, 0, :].unsqueeze(3), m2, m3), dim=3)
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered_x + 1. / 255.)
    cdf_plus = torch.sigmoid(plus_in)
    min_in = inv_stdv * (centered_x - 1. / 255.)
    cdf_min = torch.sigmoid(min_in)
    log_cdf_plus = plus_in - F.softplus(plus_in)
    log_one_minus_cdf_min = -F.softplus(min_in)
    cdf_delta = cdf_plus - cdf_min
    mid_in = inv_stdv * centered_x
    log_pdf_mid = mid_in - log_scales - 2. * F.softplus(mid_in)
    inner_inner_cond = (cdf_delta > 1e-5).to(x.dtype)
    inner_inner_out = (inner_inner_cond * torch.log(torch.clamp(cdf_delta, min=1e-12))
                       + (1. - inner_inner_cond) * (log_pdf_mid - math.log(127.5)))
    inner_cond = (x > 0.999).to(x.dtype)
    inner_out = inner_cond * log_one_minus_cdf_min + (1. - inner_cond) * inner_inner_out
    cond = (x < -0.999).to(x.dtype)
    log_probs = cond * log_cdf_plus + (1. - cond) * inner_out
    log_probs = torch.sum(log_probs, dim=3) + F.log_softmax(logit_probs, dim=-1)
    return -torch.logsumexp(log_probs, dim=-1)


def test_reference_is_pixelcnn_pp_loss():
    params = make_params(3, 3, 4, (5, 6), dtype=torch.float64, log_scales=(-7.5, 0.0))
    params[0, :, 0, 0] = 30 * torch.randn(40, dtype=torch.float64)  # far tails: bin masses under 1e-5
    x = make_x(3, 3, (5, 6)).double()
    x[:, :, 1] = -1.0
    x[:, :, 2] = 1.0
    params.requires_grad_()
    ours, theirs = reference.discretized_logistic_mixture_nll(params, x), pixelcnn_pp_loss(x, params)
    torch.testing.assert_close(ours, theirs, atol=1e-9, rtol=1e-9)
    grad_ours, grad_theirs = (torch.autograd.grad(nll.sum(), params)[0] for nll in (ours, theirs))
    torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-8, rtol=1e-8)


# --- every backend against the reference -------------------------------------------------------

def _edges(n, c, k, spatial):
    """x exactly at -1 and 1, the means near them."""
    params = make_params(n, c, k, spatial, means=(-1.2, 1.2))
    return params, torch.where(torch.rand(n, c, *spatial) < 0.5, -1.0, 1.0)


def _interior(n, c, k, spatial):
    return make_params(n, c, k, spatial), make_x(n, c, spatial, low=1, high=254)


def _tiny_probabilities(n, c, k, spatial):
    """Every mean 0.3 to 0.8 away from x at narrow scales: bin masses under 1e-5 (the density branch)."""
    params, x = make_params(n, c, k, spatial, log_scales=(-6.5, -4.5)), make_x(n, c, spatial, low=1, high=254)
    mean = blocks(params, c)[1]
    side = torch.where(x > 0, -1.0, 1.0).unsqueeze(2)  # toward the middle, so the means stay inside
    mean.copy_(x.unsqueeze(2) + side * torch.empty_like(mean).uniform_(0.3, 0.8))
    return params, x


def _clamped_scales(n, c, k, spatial):
    """Raw log-scales at the clamp (-7: no gradient, see reference.clamp_log_scales), below it (none), just
    above it."""
    params, x = make_params(n, c, k, spatial, means=(-1.05, 1.05)), make_x(n, c, spatial)
    log_scale = blocks(params, c)[2]
    choices = torch.tensor([-7.0, -7.0, -7.5, -30.0, -1e3, -6.9, -2.0])
    log_scale.copy_(choices[torch.randint(len(choices), log_scale.shape)])
    return params, x


def _large_logits(n, c, k, spatial):
    params, x = make_params(n, c, k, spatial), make_x(n, c, spatial)
    blocks(params, c)[0].mul_(1e3)
    return params, x


def _extreme(n, c, k, spatial):
    """Finite but far out: |logits|, |means|, |coefficients| up to ~1e4, log-scales from -1e4 to 80
    (within float16's range)."""
    params, x = make_params(n, c, k, spatial), make_x(n, c, spatial)
    magnitudes = torch.tensor([0.0, 1.0, 30.0, 1e2, 1e4])
    params.mul_(magnitudes[torch.randint(len(magnitudes), params.shape)]).clamp_(-6e4, 6e4)
    log_scale = blocks(params, c)[2]
    log_scale.copy_(torch.tensor([-1e4, -7.0, -3.0, 0.0, 20.0, 80.0])[torch.randint(6, log_scale.shape)])
    return params, x


REGIMES = {"edges": _edges, "interior": _interior, "tiny-probabilities": _tiny_probabilities,
           "clamped-scales": _clamped_scales, "large-logits": _large_logits, "extreme": _extreme}


@pytest.mark.parametrize("num_channels", CHANNELS)
@pytest.mark.parametrize("regime", REGIMES.values(), ids=REGIMES.keys())
@pytest.mark.parametrize("backend", BACKENDS)
def test_regimes(backend, regime, num_channels):
    params, x = regime(2, num_channels, 5, (5, 3))
    nll, _ = check_backend(params, x, backend=backend)
    if regime is _tiny_probabilities:  # the regime is what it says: under 1e-5 per sub-pixel
        assert (nll > num_channels * -math.log(1e-5)).all()


@pytest.mark.parametrize("num_channels", CHANNELS)
@pytest.mark.parametrize("k", [1, 5, 10, 30])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mixture_sizes(backend, k, num_channels):
    check_backend(make_params(2, num_channels, k, (3, 5)), make_x(2, num_channels, (3, 5)), backend=backend)


# (N, C, *S): images with odd sizes, audio (N, 1, T), no spatial dims, three spatial dims, empty.
SHAPES = [(3, 3, 7, 5), (2, 1, 9, 11), (2, 1, 33), (4, 3), (5, 1), (2, 3, 2, 3, 5), (0, 3, 4), (2, 1, 0, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes(backend, shape):
    n, c, *spatial = shape
    nll, grad = check_backend(make_params(n, c, 3, spatial), make_x(n, c, spatial), backend=backend)
    assert nll.shape == (n, *spatial) and grad.shape == (n, 9 if c == 1 else 30, *spatial)


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", [noncontiguous, channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_channels", CHANNELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts(backend, num_channels, dtype, layout):
    params = make_params(2, num_channels, 4, (5, 3), dtype=dtype)
    x = make_x(2, num_channels, (5, 3))
    check_backend(params, layout(x), backend=backend, layout=layout)


@pytest.mark.parametrize("num_channels", CHANNELS)
@pytest.mark.parametrize(("backend", "dtype"), [(b, d) for b in BACKENDS for d in supported_dtypes(b)])
def test_dtypes(backend, dtype, num_channels):
    check_backend(make_params(2, num_channels, 5, (4, 3), dtype=dtype), make_x(2, num_channels, (4, 3)),
                  backend=backend)


# (num_bins, log_scale_min): 8-bit and 5-bit images, 16-bit audio (log_scale_min -16 as some WaveNets),
# and 2 levels, where every value is an edge bin.
BINS = [(256, -7.0), (32, -7.0), (65536, -16.0), (2, -7.0)]


@pytest.mark.parametrize("num_channels", CHANNELS)
@pytest.mark.parametrize(("num_bins", "log_scale_min"), BINS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_num_bins(backend, num_bins, log_scale_min, num_channels):
    params = make_params(2, num_channels, 4, (9,), log_scales=(log_scale_min - 1, 0.0))
    x = make_x(2, num_channels, (9,), num_bins)
    check_backend(params, x, backend=backend, num_bins=num_bins, log_scale_min=log_scale_min)


@pytest.mark.parametrize(("backend", "dtype"), [(b, d) for b in BACKENDS for d in supported_dtypes(b)])
def test_finite_everywhere(backend, dtype):
    """Extreme finite params in every dtype (to its range), at every edge of x: nll and gradient finite."""
    params, x = _extreme(2, 3, 5, (12,))
    params = params.to(dtype).requires_grad_()
    x[:, :, :2] = torch.tensor([-1.0, 1.0])
    nll = gmk.discretized_logistic_mixture_nll(params, x, backend=backend)
    (grad,) = torch.autograd.grad(nll.sum(), params)
    assert nll.isfinite().all() and grad.isfinite().all()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reductions(backend, reduction):
    """The reduced loss and its gradient (a broadcast, stride-0 grad_nll for the ops)."""
    params, x = make_params(2, 3, 4, (3, 5)), make_x(2, 3, (3, 5))
    loss, _ = check_backend(params, x, backend=backend, reduction=reduction)
    per_position = gmk.discretized_logistic_mixture_nll(params, x, backend=backend)
    assert loss.shape == ()
    assert_close(loss, getattr(per_position, reduction)(), torch.float32, "forward")


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_x_is_data(backend):
    """x needs no gradient and gets none; float64 x with float32 params is read in float32."""
    params = make_params(2, 3, 2, (4,)).requires_grad_()
    x = make_x(2, 3, (4,)).double().requires_grad_()
    nll = gmk.discretized_logistic_mixture_nll(params, x, backend=backend)
    assert nll.dtype == torch.float32
    nll.sum().backward()
    assert x.grad is None and params.grad is not None


@pytest.mark.parametrize("backend", ["reference", *(b for b in BACKENDS if b == "cpu")])
def test_gradcheck(backend):
    params = make_params(2, 3, 2, (3,), dtype=torch.float64).requires_grad_()
    x = make_x(2, 3, (3,)).double()
    x[0, :, 0] = torch.tensor([-1.0, 1.0, -1.0])
    assert torch.autograd.gradcheck(
        lambda p: gmk.discretized_logistic_mixture_nll(p, x, backend=backend), (params,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_raises_clearly(backend):
    params = make_params(2, 1, 2, (3,)).requires_grad_()
    nll = gmk.discretized_logistic_mixture_nll(params, make_x(2, 1, (3,)), reduction="sum", backend=backend)
    (grad,) = torch.autograd.grad(nll, params, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward of the logistic mixture NLL is not supported"):
        grad.sum().backward()


def test_auto_falls_back_to_reference_on_meta_tensors():
    params, x = torch.empty(2, 30, 4, 5, device="meta"), torch.empty(2, 3, 4, 5, device="meta")
    nll = gmk.discretized_logistic_mixture_nll(params, x, check_inputs=False)
    assert (nll.shape, nll.device.type) == ((2, 4, 5), "meta")


def test_torch_compile_full_graph():
    """fullgraph=True fails on any graph break; with check_inputs=False the call needs no sync. The
    generated code calls the ops of the backend ``auto`` picks."""
    from torch._inductor.utils import run_and_get_code

    def loss(params, x):
        return gmk.discretized_logistic_mixture_nll(params, x, reduction="sum", check_inputs=False)

    def loss_and_grad(function, params, x):
        params = params.detach().requires_grad_()
        value = function(params, x)
        return value, torch.autograd.grad(value, params)[0]

    params, x = make_params(2, 3, 3, (5, 3)), make_x(2, 3, (5, 3))
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="inductor")
    (value, grad), code = run_and_get_code(loss_and_grad, compiled, params, x)
    expected_value, expected_grad = loss_and_grad(loss, params, x)
    assert_close(value, expected_value, torch.float32, "forward")
    assert_close(grad, expected_grad, torch.float32, "grad")
    if "cpu" in BACKENDS:
        generated = "".join(code)
        assert all(f"gmkernels.{op}.default" in generated
                   for op in ("logistic_mixture_nll", "logistic_mixture_nll_backward"))


# --- the low-level ops -----------------------------------------------------------------------------

def _here(backend):
    return pytest.mark.skipif(backend not in BACKENDS, reason=f"the {backend} backend does not run here")


# The low-level ops' namespaces and the devices of their tensors: CPU tensors for the C++ ops and,
# in Triton's interpreter, for the Triton ops; CUDA tensors for both on a GPU.
LOW_LEVEL_OPS = [
    pytest.param("gmkernels", "cpu", id="cpp-cpu", marks=_here("cpu")),
    pytest.param("gmkernels", "cuda", id="cpp-cuda", marks=pytest.mark.gpu),
    pytest.param("gmk_triton", "cpu", id="triton-cpu", marks=_here("triton")),
    pytest.param("gmk_triton", "cuda", id="triton-cuda", marks=pytest.mark.gpu),
]


def op_args(num_channels, dtype, device, k=2, spatial=5):
    """The ops' tensor arguments by name: params (2, P, S), strided (a slice), x (2, C, S), grad_nll
    (2, S), gumbel_u (2, K, S), logistic_u (2, C, S)."""
    params = make_params(2, num_channels, k, (2 * spatial,), dtype=dtype).to(device)[:, :, ::2]
    like = {"device": device, "dtype": reference.compute_dtype(dtype)}
    return {"params": params, "x": make_x(2, num_channels, (spatial,)).to(**like),
            "grad_nll": torch.randn(2, spatial, **like), "gumbel_u": torch.rand(2, k, spatial, **like),
            "logistic_u": torch.rand(2, num_channels, spatial, **like)}


@pytest.mark.parametrize(("num_channels", "dtype"), [(1, torch.float32), (3, torch.float32),
                                                     (3, torch.bfloat16), (3, torch.float64)])
@pytest.mark.parametrize(("namespace", "device"), LOW_LEVEL_OPS)
def test_opcheck(namespace, device, num_channels, dtype):
    if dtype == torch.float64 and (namespace, device) != ("gmkernels", "cpu"):
        pytest.skip("float64 runs on the reference and cpu backends only")
    ops = getattr(torch.ops, namespace)
    params, x, grad_nll, gumbel_u, logistic_u = op_args(num_channels, dtype, device).values()
    torch.library.opcheck(ops.logistic_mixture_nll, (params.requires_grad_(), x, 256, -7.0))
    torch.library.opcheck(ops.logistic_mixture_nll_backward, (grad_nll, params.detach(), x, 32, -7.0))
    torch.library.opcheck(ops.logistic_mixture_sample, (params.detach(), gumbel_u, logistic_u, 256, -7.0))


# Malformed arguments to the low-level ops: the argument, its bad value made from op_args' (C = 3,
# K = 2, S = 5), the error and what its message must name. Every op taking the argument is tried.
LOW_LEVEL_BAD_ARGS = {
    "params-P": ("params", lambda a: a["params"][:, :19], ValueError, "params"),
    "params-integer": ("params", lambda a: a["params"].long(), TypeError, "params"),
    "x-channels": ("x", lambda a: a["x"][:, :2], ValueError, r"\bx\b"),
    "x-N": ("x", lambda a: a["x"][:1], ValueError, r"\bx\b"),
    "x-S": ("x", lambda a: a["x"][:, :, :4], ValueError, r"\bx\b"),
    "x-dtype": ("x", lambda a: a["x"].double(), TypeError, r"\bx\b"),
    "grad_nll-shape": ("grad_nll", lambda a: a["grad_nll"][:, :4], ValueError, "grad_nll"),
    "grad_nll-dtype": ("grad_nll", lambda a: a["grad_nll"].double(), TypeError, "grad_nll"),
    "gumbel_u-K": ("gumbel_u", lambda a: a["gumbel_u"][:, :1], ValueError, "gumbel_u"),
    "gumbel_u-dtype": ("gumbel_u", lambda a: a["gumbel_u"].double(), TypeError, "gumbel_u"),
    "logistic_u-channels": ("logistic_u", lambda a: a["logistic_u"][:, :2], ValueError, "logistic_u"),
    "logistic_u-S": ("logistic_u", lambda a: a["logistic_u"][:, :, :4], ValueError, "logistic_u"),
    "num_bins": ("num_bins", lambda a: 1, ValueError, "num_bins"),
}
OP_ARGUMENTS = {"logistic_mixture_nll": ("params", "x", "num_bins", "log_scale_min"),
                "logistic_mixture_nll_backward": ("grad_nll", "params", "x", "num_bins", "log_scale_min"),
                "logistic_mixture_sample": ("params", "gumbel_u", "logistic_u", "num_bins", "log_scale_min")}


@pytest.mark.parametrize(("argument", "make_bad", "error", "pattern"), LOW_LEVEL_BAD_ARGS.values(),
                         ids=LOW_LEVEL_BAD_ARGS.keys())
@pytest.mark.parametrize(("namespace", "device"), LOW_LEVEL_OPS)
def test_low_level_bad_args(namespace, device, argument, make_bad, error, pattern):
    good = {**op_args(3, torch.float32, device), "num_bins": 256, "log_scale_min": -7.0}
    args = {**good, argument: make_bad(good)}
    for op_name, names in OP_ARGUMENTS.items():
        if argument in names:
            with pytest.raises(error, match=pattern):
                getattr(getattr(torch.ops, namespace), op_name)(*(args[name] for name in names))


# --- bad input to the public functions -------------------------------------------------------------

def _nll_inputs(c=3, p=30, spatial=(4,), **kwargs):
    return torch.randn(2, p, *spatial), make_x(2, c, spatial), kwargs


MISMATCH = r"params \(N, P, \*S\) and x \(N, C, \*S\) must agree in N and S"
BAD_NLL_INPUTS = {
    "params-not-tensor": (lambda: ([[0.0] * 30] * 2, make_x(2, 3), {}), TypeError, "params"),
    "x-not-tensor": (lambda: (torch.randn(2, 30), [[0.0] * 3] * 2, {}), TypeError, r"\bx\b"),
    "params-integer": (lambda: (torch.ones(2, 30, dtype=torch.int64), make_x(2, 3), {}), TypeError, "params"),
    "x-integer": (lambda: (torch.randn(2, 30), torch.zeros(2, 3, dtype=torch.int64), {}), TypeError,
                  r"\bx\b"),
    "x-1d": (lambda: (torch.randn(2, 30), torch.zeros(3), {}), ValueError, r"\bx\b"),
    "params-1d": (lambda: (torch.randn(30), make_x(1, 3), {}), ValueError, "params"),
    "x-2-channels": (lambda: _nll_inputs(c=2, p=20), ValueError, r"\bx\b.*C = 1 or 3"),
    "params-not-10K": (lambda: _nll_inputs(p=25), ValueError, r"params must have 10K channels"),
    "params-not-3K": (lambda: _nll_inputs(c=1, p=10), ValueError, r"params must have 3K channels"),
    "params-empty": (lambda: _nll_inputs(p=0), ValueError, "params"),
    "N-mismatch": (lambda: (torch.randn(3, 30, 4), make_x(2, 3, (4,)), {}), ValueError, MISMATCH),
    "S-mismatch": (lambda: (torch.randn(2, 30, 4, 5), make_x(2, 3, (5, 4)), {}), ValueError, MISMATCH),
    "rank-mismatch": (lambda: (torch.randn(2, 30, 4, 1), make_x(2, 3, (4,)), {}), ValueError, MISMATCH),
    "device-mismatch": (lambda: (torch.randn(2, 30, device="meta"), make_x(2, 3), {}), ValueError, "device"),
    "x-above-1": (lambda: (torch.randn(2, 30), torch.full((2, 3), 1.5), {}), ValueError, r"\bx\b.*\[-1, 1\]"),
    "x-below-minus-1": (lambda: (torch.randn(2, 30), torch.full((2, 3), -1.01), {}), ValueError, r"\bx\b"),
    "x-nan": (lambda: (torch.randn(2, 30), torch.full((2, 3), math.nan), {}), ValueError, r"\bx\b"),
    "num_bins-1": (lambda: _nll_inputs(num_bins=1), ValueError, "num_bins"),
    "num_bins-float": (lambda: _nll_inputs(num_bins=256.0), ValueError, "num_bins"),
    "num_bins-bool": (lambda: _nll_inputs(num_bins=True), ValueError, "num_bins"),
    "log_scale_min-nan": (lambda: _nll_inputs(log_scale_min=math.nan), ValueError, "log_scale_min"),
    "reduction": (lambda: _nll_inputs(reduction="avg"), ValueError, "reduction"),
    "backend": (lambda: _nll_inputs(backend="fastest"), ValueError, "backend"),
    "cuda-on-cpu": (lambda: _nll_inputs(backend="cuda"), ValueError, "backend 'cuda'"),
    "triton-float64": (lambda: (torch.randn(2, 30, dtype=torch.float64), make_x(2, 3), {"backend": "triton"}),
                       ValueError, "backend 'triton'"),
}


@pytest.mark.parametrize(("make_input", "error", "pattern"), BAD_NLL_INPUTS.values(),
                         ids=BAD_NLL_INPUTS.keys())
def test_bad_nll_input_raises_naming_the_argument(make_input, error, pattern):
    params, x, kwargs = make_input()
    with pytest.raises(error, match=pattern):
        gmk.discretized_logistic_mixture_nll(params, x, **kwargs)


def test_check_inputs_false_skips_only_the_value_check():
    params = torch.randn(2, 30)
    gmk.discretized_logistic_mixture_nll(params, torch.full((2, 3), 1.5), check_inputs=False)
    with pytest.raises(ValueError, match="params"):
        gmk.discretized_logistic_mixture_nll(torch.randn(2, 25), make_x(2, 3), check_inputs=False)


BAD_SAMPLE_INPUTS = {
    "params-not-tensor": ([[0.0] * 30], {"num_channels": 3}, TypeError, "params"),
    "num_channels-2": (torch.randn(2, 20), {"num_channels": 2}, ValueError, "num_channels"),
    "params-not-10K": (torch.randn(2, 25), {"num_channels": 3}, ValueError, "params must have 10K"),
    "params-not-3K": (torch.randn(2, 10), {"num_channels": 1}, ValueError, "params must have 3K"),
    "num_bins": (torch.randn(2, 30), {"num_channels": 3, "num_bins": 0}, ValueError, "num_bins"),
    "backend": (torch.randn(2, 30), {"num_channels": 3, "backend": "fastest"}, ValueError, "backend"),
}


@pytest.mark.parametrize(("params", "kwargs", "error", "pattern"), BAD_SAMPLE_INPUTS.values(),
                         ids=BAD_SAMPLE_INPUTS.keys())
def test_bad_sample_input_raises_naming_the_argument(params, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        gmk.discretized_logistic_mixture_sample(params, **kwargs)


# --- sampling -----------------------------------------------------------------------------------

def sample(params, num_channels, seed, **options):
    generator = torch.Generator().manual_seed(seed)
    return gmk.discretized_logistic_mixture_sample(params, num_channels=num_channels, generator=generator,
                                                   **options)


def assert_on_grid(x, num_bins):
    index = (x.double() + 1) * (num_bins - 1) / 2
    assert ((index - index.round()).abs() < 1e-3 * max(1, num_bins / 256)).all()
    assert ((x >= -1) & (x <= 1)).all()


@pytest.mark.parametrize("num_bins", [256, 32, 65536, 2])
@pytest.mark.parametrize("num_channels", CHANNELS)
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_sample_reproducible_and_on_the_grid(backend, num_channels, num_bins):
    params = make_params(2, num_channels, 5, (3, 7), log_scales=(-3.0, 0.5))
    first, again = (sample(params, num_channels, 7, num_bins=num_bins, backend=backend) for _ in range(2))
    assert (first.shape, first.dtype) == ((2, num_channels, 3, 7), torch.float32)
    assert torch.equal(first, again)
    assert not torch.equal(first, sample(params, num_channels, 8, num_bins=num_bins, backend=backend))
    assert_on_grid(first, num_bins)


@pytest.mark.parametrize("layout", [None, noncontiguous])
@pytest.mark.parametrize(("backend", "dtype"), [(b, d) for b in BACKENDS for d in supported_dtypes(b)])
def test_sample_same_on_every_backend(backend, dtype, layout):
    """The same generator gives the same sample as the reference (the noise is drawn in Python)."""
    for num_channels in CHANNELS:
        params = make_params(3, num_channels, 4, (5, 3), dtype=dtype, log_scales=(-4.0, 0.0))
        expected = sample(params, num_channels, 11, backend="reference")
        actual = sample(params if layout is None else layout(params), num_channels, 11, backend=backend)
        assert actual.dtype == reference.compute_dtype(dtype)
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)


def exact_bin_probabilities(params, num_channels, num_bins):
    """P(x) of every grid value x (num_bins^C of them) under params (1, P): the reference nll's exp."""
    levels = torch.linspace(-1, 1, num_bins, dtype=torch.float64)
    grid = torch.cartesian_prod(*[levels] * num_channels).reshape(-1, num_channels)
    nll = reference.discretized_logistic_mixture_nll(params.double().expand(len(grid), -1), grid, num_bins)
    return grid, torch.exp(-nll)


def chi_square_p_value(counts, expected):
    """Pearson's test, cells with expected counts under 5 merged into one."""
    small = expected < 5
    if small.any():
        counts = torch.cat([counts[~small], counts[small].sum().reshape(1)])
        expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    statistic = ((counts - expected) ** 2 / expected).sum()
    degrees = len(counts) - 1
    return torch.special.gammaincc(torch.tensor(degrees / 2), statistic / 2).item()


@pytest.mark.parametrize("num_channels", CHANNELS)
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_sample_distribution_is_exact(backend, num_channels):
    """Chi-square at a fixed seed: 20000 samples of one position against the exact bin probabilities
    (8 levels; with C = 3, the 512 joint values, so the coupling of G and B to R is exercised)."""
    num_bins, draws = 8, 20000
    generator = torch.Generator().manual_seed(0)
    params = make_params(1, num_channels, 2, log_scales=(-1.5, -0.5), means=(-0.6, 0.6))
    if num_channels == 3:
        blocks(params, 3)[3].copy_(torch.tensor([[1.5, -1.0], [-1.2, 0.8], [0.9, 1.4]]))
    grid, probabilities = exact_bin_probabilities(params, num_channels, num_bins)
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-4)  # bins under 1e-5 use the density
    # The draws along S, the same params at each (a stride-0 dimension).
    samples = gmk.discretized_logistic_mixture_sample(params[:, :, None].expand(1, -1, draws),
                                                      num_channels=num_channels, num_bins=num_bins,
                                                      generator=generator, backend=backend)
    index = torch.round((samples[0].T.double() + 1) * (num_bins - 1) / 2).long()
    cell = (index * num_bins ** torch.arange(num_channels - 1, -1, -1)).sum(dim=1)  # grid's row order
    counts = torch.bincount(cell, minlength=len(grid)).double()
    assert chi_square_p_value(counts, draws * probabilities) > 1e-3


# --- the module and bits/dim ---------------------------------------------------------------------

@pytest.mark.parametrize(("num_channels", "reduction"), [(3, "sum"), (1, "none"), (3, "mean")])
def test_module_matches_function(num_channels, reduction):
    loss = gmk.nn.DiscretizedLogisticMixtureLoss(num_channels, num_bins=32, reduction=reduction)
    params, x = make_params(2, num_channels, 3, (4, 5)), make_x(2, num_channels, (4, 5), 32)
    expected = gmk.discretized_logistic_mixture_nll(params, x, num_bins=32, reduction=reduction)
    torch.testing.assert_close(loss(params, x), expected)
    generator = torch.Generator().manual_seed(3)
    drawn = loss.sample(params, generator=generator)
    assert torch.equal(drawn, sample(params, num_channels, 3, num_bins=32))
    assert f"num_channels={num_channels}" in repr(loss) and repr(reduction) in repr(loss)


def test_module_defaults_are_pixelcnn_pp():
    loss = gmk.nn.DiscretizedLogisticMixtureLoss()
    assert (loss.num_channels, loss.num_bins, loss.log_scale_min, loss.reduction) == (3, 256, -7.0, "sum")


@pytest.mark.parametrize(("kwargs", "pattern"), [({"num_channels": 2}, "num_channels"),
                                                 ({"num_bins": 1}, "num_bins"),
                                                 ({"reduction": "avg"}, "reduction")])
def test_module_rejects_bad_configuration(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        gmk.nn.DiscretizedLogisticMixtureLoss(**kwargs)


def test_module_rejects_x_with_other_channels():
    with pytest.raises(ValueError, match="num_channels=3"):
        gmk.nn.DiscretizedLogisticMixtureLoss(3)(torch.randn(2, 3), make_x(2, 1))


def test_bits_per_dim():
    assert gmk.bits_per_dim(5 * math.log(2) * 3072, 3072) == pytest.approx(5.0)
    params, x = make_params(2, 3, 2, (4, 5)), make_x(2, 3, (4, 5))
    total = gmk.discretized_logistic_mixture_nll(params, x, reduction="sum")
    bits = gmk.bits_per_dim(total, x.numel())
    assert bits.shape == () and bits.item() == pytest.approx(total.item() / math.log(2) / 120)


# --- on a GPU ----------------------------------------------------------------------------------------

GPU_BACKENDS = ("cuda", "triton")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", [None, noncontiguous, channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("regime", REGIMES.values(), ids=REGIMES.keys())
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backends_match_reference(backend, regime, dtype, layout):
    for num_channels, k, spatial in [(3, 10, (32, 33)), (1, 30, (4001,))]:
        if layout is channels_last and len(spatial) != 2:
            continue
        params, x = regime(3, num_channels, k, spatial)
        check_backend(params.to("cuda", dtype), x.cuda(), backend=backend, layout=layout)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_sample_same_as_reference(backend):
    """The same generator gives the same sample as the reference, but where v lands at a bin's edge
    (the GPU's exp and log may differ from the reference's in the last place)."""
    for num_channels in CHANNELS:
        params = make_params(4, num_channels, 10, (16, 17)).cuda()
        expected, actual = (
            gmk.discretized_logistic_mixture_sample(params, num_channels=num_channels, backend=name,
                                                    generator=torch.Generator("cuda").manual_seed(5))
            for name in ("reference", backend))
        assert (actual != expected).float().mean() < 1e-3
        assert_on_grid(actual, 256)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_no_host_sync(backend):
    params = make_params(4, 3, 10, (16, 16)).cuda().requires_grad_()
    x = make_x(4, 3, (16, 16)).cuda()
    options = {"reduction": "sum", "check_inputs": False, "backend": backend}
    torch.autograd.grad(gmk.discretized_logistic_mixture_nll(params, x, **options), params)  # compiles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.autograd.grad(gmk.discretized_logistic_mixture_nll(params, x, **options), params)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- issue 18 --------------------------------------------------------------------------------------

BITS_PER_DIM_BAD_ARGS = {
    "zero-subpixels": ((1.0, 0), ValueError, "num_subpixels must be an int >= 1"),
    "negative-subpixels": ((1.0, -5), ValueError, "num_subpixels must be an int >= 1"),
    "float-subpixels": ((1.0, 0.0), ValueError, "num_subpixels must be an int >= 1"),
    "bool-subpixels": ((1.0, True), ValueError, "num_subpixels must be an int >= 1"),
    "none-subpixels": ((1.0, None), ValueError, "num_subpixels must be an int >= 1"),
    "none-nll": ((None, 3), TypeError, "nll_nats must be"),
    "str-nll": (("1.0", 3), TypeError, "nll_nats must be"),
    "integer-tensor-nll": ((torch.tensor([1]), 3), TypeError, "nll_nats must be a floating-point tensor"),
}


@pytest.mark.parametrize(("args", "error", "pattern"), BITS_PER_DIM_BAD_ARGS.values(),
                         ids=BITS_PER_DIM_BAD_ARGS.keys())
def test_issue18_bits_per_dim_validates_its_arguments(args, error, pattern):
    with pytest.raises(error, match=f"bits_per_dim: {pattern}"):
        gmk.bits_per_dim(*args)


@pytest.mark.parametrize("generator", ["seed", 1, torch.tensor(1)])
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_issue18_sample_generator_must_be_a_generator(backend, generator):
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        gmk.discretized_logistic_mixture_sample(torch.zeros(1, 3, 2), num_channels=1, generator=generator,
                                                backend=backend)


def test_issue18_flags_and_channel_counts_are_not_truthy_values():
    params, x = torch.zeros(1, 3, 2), torch.zeros(1, 1, 2)
    with pytest.raises(TypeError, match="check_inputs must be a bool"):
        gmk.discretized_logistic_mixture_nll(params, x, check_inputs="False")
    with pytest.raises(ValueError, match="num_channels must be 1 or 3"):
        gmk.discretized_logistic_mixture_sample(params, num_channels=True)
    with pytest.raises(ValueError, match="log_scale_min must be a finite number"):
        gmk.discretized_logistic_mixture_nll(params, x, log_scale_min=True)


INF, NAN = float("inf"), float("nan")


def _nonfinite_params(num_channels, value, index, positions):
    """params (1, P, positions) of K = 2 components, random, with ``value`` at parameter ``index``."""
    k = 2
    params = torch.randn(1, reference.params_per_component(num_channels) * k, positions,
                         generator=torch.Generator().manual_seed(index))
    params[:, index] = value
    return params


# (channels, parameter index, value): logits 0..1, then per channel K means, K log-scales (K coefficients).
NONFINITE_PARAMETERS = [(c, index, value) for c in (1, 3) for value in (INF, -INF, NAN)
                        for index in ((0, 2, 4) if c == 1 else (0, 2, 4, 6, 9, 14))]


@pytest.mark.parametrize(("channels", "index", "value"), NONFINITE_PARAMETERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_issue18_nonfinite_params_as_the_reference(backend, channels, index, value):
    """README: NLL and sample of every backend are what the reference's formula gives in IEEE arithmetic
    (a component of logit -inf or of zero probability drops out, a mean of ±inf samples ±1, NaN stays
    NaN, a NaN logit makes the sample NaN)."""
    levels = torch.tensor([-1.0, 1.0, 0.0, 0.5, -0.25, 1.0 / 255])
    x = torch.stack(torch.meshgrid(*[levels] * channels, indexing="ij")).reshape(1, channels, -1)
    params = _nonfinite_params(channels, value, index, x.shape[2])
    nll = gmk.discretized_logistic_mixture_nll(params, x, backend=backend)
    expected = gmk.discretized_logistic_mixture_nll(params, x, backend="reference")
    expected64 = gmk.discretized_logistic_mixture_nll(params.double(), x.double(), backend="reference")
    finite = assert_nonfinite_like(nll, expected)
    assert_close(nll[finite], expected64[finite], torch.float32, "forward",
                 relative_error(expected[finite], expected64[finite]))
    sample, expected = (gmk.discretized_logistic_mixture_sample(
        params, num_channels=channels, generator=torch.Generator().manual_seed(0), backend=name)
        for name in (backend, "reference"))
    finite = assert_nonfinite_like(sample, expected)
    torch.testing.assert_close(sample[finite], expected[finite], atol=0, rtol=0)


def test_issue18_reference_propagates_nan():
    """A NaN log-scale gives a NaN NLL (not the clamp's log_scale_min) and a NaN logit a NaN sample."""
    params = _nonfinite_params(1, NAN, 4, 3)  # log-scale of component 0
    nll = gmk.discretized_logistic_mixture_nll(params, torch.zeros(1, 1, 3), backend="reference")
    assert nll.isnan().all()
    params = _nonfinite_params(1, NAN, 1, 3)  # logit of component 1
    sample = gmk.discretized_logistic_mixture_sample(params, num_channels=1, backend="reference")
    assert sample.isnan().all()


def test_num_bins_must_be_resolved_by_the_compute_dtype():
    """Found by the fuzz suite: at num_bins = 2^31 a float32 bin is narrower than the floats near 1 (the kernels'
    CDF differences are noise, the float64 reference is not): refused naming num_bins, on the public
    functions and the C++ and Triton ops; float64 params take finer grids."""
    params = torch.randn(1, 3, 5)
    x = torch.zeros(1, 1, 5)
    too_many = 2**23 + 2
    with pytest.raises(ValueError, match="num_bins must be <= 8388609 for torch.float32"):
        gmk.discretized_logistic_mixture_nll(params, x, num_bins=too_many)
    with pytest.raises(ValueError, match="num_bins must be <= 8388609"):
        gmk.discretized_logistic_mixture_sample(params, num_channels=1, num_bins=too_many)
    namespaces = [namespace for namespace, built in (("gmkernels", gmk.has_extension()),
                                                     ("gmk_triton", gmk.ops._declare.TRITON_INSTALLED)) if built]
    for namespace in namespaces:
        with pytest.raises(ValueError, match="num_bins must be <= 8388609"):
            getattr(torch.ops, namespace).logistic_mixture_nll(params, x, too_many, -7.0)
    nll = gmk.discretized_logistic_mixture_nll(params.double(), x.double(), num_bins=2**24)
    expected = reference.discretized_logistic_mixture_nll(params.double(), x.double(), 2**24, -7.0)
    torch.testing.assert_close(nll, expected)
