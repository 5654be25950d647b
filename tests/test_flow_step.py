"""gmk.nn.AffineCoupling, Squeeze2d and FlowStep: the log-determinant against autograd's Jacobian of the
whole module (the coupling network included), round trips, the fast backends against the reference."""
import pytest
import torch

import gmkernels as gmk
from conftest import assert_close

TRANSFORMS = ("glow", "realnvp", "additive")
LAYOUTS = ("halves", "interleaved", "checkerboard", "checkerboard_odd")


def randomise(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Every parameter random (the zero-initialised last convolution would make h constant)."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(scale * torch.randn_like(parameter))
    return module


def check_logdet_is_log_det_jacobian(module, x):
    """module: x -> (y, logdet); logdet[n] = log|det ∂y_n/∂x_n| and y_n depends on x_n only."""
    n, d = x.shape[0], x[0].numel()
    jacobian = torch.autograd.functional.jacobian(lambda v: module(v)[0], x).reshape(n, d, n, d)
    _, logdet = module(x)
    for i in range(n):
        sign, log_abs_det = torch.linalg.slogdet(jacobian[i, :, i, :])
        assert sign != 0
        torch.testing.assert_close(logdet[i], log_abs_det, rtol=1e-9, atol=1e-9)
        assert torch.count_nonzero(torch.cat([jacobian[i, :, :i], jacobian[i, :, i + 1:]], dim=1)) == 0


# --- Squeeze2d -------------------------------------------------------------------------------------

def test_squeeze_channel_order_and_reverse():
    x = torch.randn(2, 3, 6, 4)
    y, logdet = gmk.nn.Squeeze2d()(x)
    assert y.shape == (2, 12, 3, 2) and torch.equal(logdet, torch.zeros(2))
    for c in range(3):
        for dy in range(2):
            for dx in range(2):
                assert torch.equal(y[:, c * 4 + 2 * dy + dx], x[:, c, dy::2, dx::2])
    assert torch.equal(gmk.nn.Squeeze2d().reverse(y), x)


def test_squeeze_logdet_dtype_follows_x():
    assert gmk.nn.Squeeze2d()(torch.randn(1, 1, 2, 2, dtype=torch.float64))[1].dtype == torch.float64
    assert gmk.nn.Squeeze2d()(torch.randn(1, 1, 2, 2, dtype=torch.bfloat16))[1].dtype == torch.float32


@pytest.mark.parametrize(("method", "shape"), [("forward", (2, 3, 5, 4)), ("forward", (2, 3, 4)),
                                               ("reverse", (2, 6, 2, 2))])
def test_squeeze_rejects_bad_shapes(method, shape):
    with pytest.raises(ValueError, match="Squeeze2d"):
        getattr(gmk.nn.Squeeze2d(), method)(torch.randn(shape))


# --- AffineCoupling --------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_coupling_module_logdet_is_log_det_jacobian(transform, layout):
    """h = NN(x_a) depends on x: the Jacobian is triangular, not diagonal; its log|det| is still Σ log s."""
    module = gmk.nn.AffineCoupling(4, hidden_channels=6, transform=transform, layout=layout)
    module = randomise(module).double()
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64)
    check_logdet_is_log_det_jacobian(module, x)
    jacobian = torch.autograd.functional.jacobian(lambda v: module(v)[0], x)
    if layout.startswith("checkerboard"):  # y_b depends on x_a through the network
        b = gmk.reference.coupling.checkerboard_b(x.shape[2:], layout)
        assert jacobian[0][:, b][..., ~b].abs().sum() > 0
    else:
        assert jacobian[0, 2:, :, :, 0, :2].abs().sum() > 0


def test_coupling_module_starts_as_glow_zero_init():
    """The last convolution starts at zero: h = 0, so y_b = x_b σ(2) (glow), x_b (additive)."""
    x = torch.randn(2, 6, 4, 4)
    y, logdet = gmk.nn.AffineCoupling(6, hidden_channels=8)(x)
    s = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(y, torch.cat([x[:, :3], x[:, 3:] * s], 1))
    torch.testing.assert_close(logdet, torch.full((2,), 3 * 16 * torch.log(s).item()))
    y, logdet = gmk.nn.AffineCoupling(6, hidden_channels=8, transform="additive")(x)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(2))


def test_checkerboard_coupling_module_starts_as_a_constant_scale_on_x_b():
    x = torch.randn(2, 3, 4, 5)
    y, logdet = gmk.nn.AffineCoupling(3, hidden_channels=8, layout="checkerboard")(x)
    b = (torch.arange(4)[:, None] + torch.arange(5)[None, :]) % 2 == 1
    s = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(y, torch.where(b, x * s, x))
    torch.testing.assert_close(logdet, torch.full((2,), 3 * int(b.sum()) * torch.log(s).item()))

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_coupling_module_reverse_recovers_x(transform, layout):
    module = randomise(gmk.nn.AffineCoupling(8, hidden_channels=16, transform=transform, layout=layout), 0.1)
    x = torch.randn(3, 8, 6, 6)
    y, _ = module(x)
    x_again = module.reverse(y)
    assert (torch.linalg.vector_norm(x_again - x) / torch.linalg.vector_norm(x)).item() <= 1e-5


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_coupling_module_matches_reference_backend(transform):
    """Forward and every gradient (x and the network's parameters) on auto vs the reference backend."""
    module = randomise(gmk.nn.AffineCoupling(6, hidden_channels=8, transform=transform, layout="interleaved"))
    x = torch.randn(2, 6, 5, 5)
    results = []
    for backend in ("auto", "reference"):
        leaf = x.clone().requires_grad_()
        with gmk.use_backend(backend):
            y, logdet = module(leaf)
        loss = (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum() + logdet.sum()
        results.append((y, logdet, *torch.autograd.grad(loss, [leaf, *module.parameters()])))
    for got, expected in zip(*results, strict=True):
        assert_close(got, expected, torch.float32, "grad")


BAD_COUPLING_ARGS = {
    "odd-channels": ((5,), {}, "num_channels"),
    "zero-channels": ((0,), {}, "num_channels"),
    "hidden": ((4,), {"hidden_channels": 0}, "hidden_channels"),
    "transform": ((4,), {"transform": "affine"}, "transform"),
    "layout": ((4,), {"layout": "diagonal"}, "layout"),
    "checkerboard-zero-channels": ((0,), {"layout": "checkerboard"}, "num_channels"),
}


@pytest.mark.parametrize(("args", "kwargs", "pattern"), BAD_COUPLING_ARGS.values(),
                         ids=BAD_COUPLING_ARGS.keys())
def test_coupling_module_rejects_bad_arguments(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        gmk.nn.AffineCoupling(*args, **kwargs)


def test_coupling_module_rejects_wrong_input_channels():
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        gmk.nn.AffineCoupling(4, hidden_channels=4)(torch.randn(2, 6, 3, 3))


# --- FlowStep --------------------------------------------------------------------------------------

def initialised_step(num_channels, hidden, x, **kwargs):
    step = gmk.nn.FlowStep(num_channels, hidden, **kwargs)
    step(x)  # actnorm's data-dependent initialisation
    randomise(step.coupling, 0.2)
    return step


@pytest.mark.parametrize(("lu", "transform"), [(True, "glow"), (False, "glow"), (True, "realnvp"),
                                               (False, "additive")])
def test_flow_step_logdet_is_log_det_jacobian(lu, transform):
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64)
    step = initialised_step(4, 6, x.float(), lu=lu, transform=transform).double()
    check_logdet_is_log_det_jacobian(step, x)


@pytest.mark.parametrize("lu", [True, False])
def test_flow_step_reverse_recovers_x(lu):
    x = torch.randn(4, 12, 8, 8)
    step = initialised_step(12, 16, x, lu=lu)
    y, _ = step(x)
    assert (torch.linalg.vector_norm(step.reverse(y) - x) / torch.linalg.vector_norm(x)).item() <= 1e-5


def test_flow_step_initialises_actnorm_from_the_first_batch():
    x = 3 * torch.randn(16, 4, 6, 6) + 1
    step = gmk.nn.FlowStep(4, 8)
    step(x)
    normalised = (x + step.actnorm.bias[:, None, None]) * step.actnorm.log_scale.exp()[:, None, None]
    torch.testing.assert_close(normalised.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised.std((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    bias = step.actnorm.bias.detach().clone()
    step(torch.randn(16, 4, 6, 6))
    assert torch.equal(step.actnorm.bias, bias)  # only the first batch


@pytest.mark.parametrize("lu", [True, False])
def test_flow_step_matches_reference_backend(lu):
    x = torch.randn(2, 8, 4, 4)
    step = initialised_step(8, 8, x, lu=lu)
    results = []
    for backend in ("auto", "reference"):
        leaf = x.clone().requires_grad_()
        with gmk.use_backend(backend):
            y, logdet = step(leaf)
        loss = (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum() + logdet.sum()
        results.append((y, logdet, *torch.autograd.grad(loss, [leaf, *step.parameters()])))
    for got, expected in zip(*results, strict=True):
        assert_close(got, expected, torch.float32, "grad", terms=x.numel())


@pytest.fixture
def no_tf32():
    """float32 convolutions and matmuls in float32 (the reference's F.conv2d would use TF32 otherwise)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize("lu", [True, False])
def test_gpu_flow_step_matches_reference_and_never_synchronises(no_tf32, lu):
    x = torch.randn(4, 48, 16, 16, device="cuda")
    step = initialised_step(48, 64, x.cpu(), lu=lu).cuda()
    results = []
    for backend in ("auto", "reference"):
        leaf = x.clone().requires_grad_()
        with gmk.use_backend(backend):
            y, logdet = step(leaf)
            x_again = step.reverse(y.detach())
        loss = (y * torch.linspace(-1, 1, y.numel(), device="cuda").reshape(y.shape)).sum() + logdet.sum()
        results.append((y, logdet, x_again, *torch.autograd.grad(loss, [leaf, *step.parameters()])))
    for got, expected in zip(*results, strict=True):
        assert_close(got, expected, torch.float32, "grad", terms=x.numel())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        leaf = x.clone().requires_grad_()
        y, logdet = step(leaf)
        grad_outputs = [torch.ones_like(y), torch.ones_like(logdet)]
        torch.autograd.grad([y, logdet], [leaf, *step.parameters()], grad_outputs)
        step.reverse(y.detach())
    finally:
        torch.cuda.set_sync_debug_mode("default")
