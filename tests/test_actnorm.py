"""gmk.actnorm and gmk.nn.ActNorm: every backend against the float64 reference, forward, reverse,
log-determinant and gradients; data-dependent initialisation (also across two processes)."""
import functools
import math

import pytest
import torch

import gmkernels as gmk
from conftest import (assert_close, assert_nonfinite_as_reference, backends_under_test, misaligned,
                      noncontiguous, supported_dtypes)
from gmkernels.reference import actnorm as reference

BACKENDS = backends_under_test("cpu")
NAMESPACES = [*(["gmkernels"] if gmk.has_extension() else []),
              *(["gmk_triton"] if "triton" in BACKENDS else [])]


def make_parameters(channels, dtype=torch.float32, device="cpu"):
    bias = torch.randn(channels, dtype=dtype, device=device)
    log_scale = 0.5 * torch.randn(channels, dtype=dtype, device=device)
    return bias, log_scale


def run(x, bias, log_scale, grad_y, grad_logdet, **kwargs):
    """y, logdet and the gradients of x, bias and log_scale for grad_y and grad_logdet."""
    inputs = [t.detach().requires_grad_() for t in (x, bias, log_scale)]
    y, logdet = gmk.actnorm(*inputs, **kwargs)
    grads = torch.autograd.grad([y, logdet], inputs, [grad_y, grad_logdet])
    return y, logdet, grads


def coarser(*dtypes):
    """The least precise of ``dtypes``: the tolerance of a result rounded to each of them."""
    return max(dtypes, key=lambda dtype: torch.finfo(dtype).eps)


def check_backend(x, bias, log_scale, *, backend, reverse=False, layout=None):
    """``backend`` matches the reference run in float64 on the same values: y, logdet and gradients."""
    grad_y = torch.randn(x.shape, dtype=x.dtype)
    grad_logdet = torch.randn(x.shape[0], dtype=reference.logdet_dtype(x.dtype))
    stored = x if layout is None else layout(x)
    y, logdet, grads = run(stored, bias, log_scale, grad_y, grad_logdet, reverse=reverse, backend=backend)
    y64, logdet64, grads64 = run(x.double(), bias.double(), log_scale.double(), grad_y.double(),
                                 grad_logdet.double(), reverse=reverse, backend="reference")
    assert (y.dtype, y.shape) == (x.dtype, x.shape)
    assert (logdet.dtype, logdet.shape) == (grad_logdet.dtype, x.shape[:1])
    assert_close(y, y64, x.dtype)
    assert_close(logdet, logdet64, x.dtype)
    terms = x.numel() // max(x.shape[1], 1)
    for grad, grad64, t, n in zip(grads, grads64, (x, bias, log_scale), (1, terms, terms), strict=True):
        assert grad.dtype == t.dtype
        assert_close(grad, grad64, coarser(x.dtype, t.dtype), "grad", terms=n)


def test_reference_is_the_papers_formula():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    bias, log_scale = make_parameters(3, torch.float64)
    y, logdet = reference.actnorm(x, bias, log_scale)
    torch.testing.assert_close(y, (x + bias[:, None, None]) * torch.exp(log_scale)[:, None, None])
    torch.testing.assert_close(logdet, torch.full((2,), 20 * log_scale.sum().item(), dtype=torch.float64))
    x_back, logdet_back = reference.actnorm(y, bias, log_scale, reverse=True)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(logdet_back, -logdet)


# (3, 2, 1500): 4500 elements per channel, several partial sums per channel in the GPU kernels.
SHAPES = [(2, 3, 5, 7), (3, 1, 1), (4, 5), (1, 4, 3, 2, 2), (2, 37, 300), (3, 2, 1500)]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_shapes(backend, shape, reverse):
    check_backend(3 * torch.randn(shape), *make_parameters(shape[1]), backend=backend, reverse=reverse)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("backend", "dtype"), [(b, d) for b in BACKENDS for d in supported_dtypes(b)
                                                if d != torch.float32])
def test_other_dtypes(backend, dtype, reverse):
    x = (3 * torch.randn(3, 5, 4, 7)).to(dtype)
    check_backend(x, *make_parameters(5), backend=backend, reverse=reverse)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_log_scale_gradient_rounds_once(backend):
    """log_scale feeds the kernel and the log-determinant: its gradient is the two uses' float64 sum rounded
    once to float16 (the actnorm_conv1x1 fuzz failure: rounded per use and summed in float16)."""
    x, grad_y = torch.randn(4, 3, 5), 8 * torch.randn(4, 3, 5)
    bias, log_scale = make_parameters(3, torch.float64)
    log_scale = log_scale.half().double()
    *_, (_, _, data_part) = run(x.double(), bias, log_scale, grad_y.double(), torch.zeros(4, dtype=torch.float64),
                                backend="reference")
    # the log-determinant's part of the gradient (5 positions, 4 samples) cancels the largest data part
    largest = data_part.abs().argmax()
    grad_logdet = torch.full((4,), (0.25 - data_part[largest].item()) / 20, dtype=torch.float64)
    *_, (_, _, ideal) = run(x.double(), bias, log_scale, grad_y.double(), grad_logdet, backend="reference")
    *_, (_, _, got) = run(x, bias.float(), log_scale.half(), grad_y, grad_logdet.float(), backend=backend)
    torch.testing.assert_close(got.double(), ideal, rtol=2**-11, atol=1e-4)


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", [noncontiguous, misaligned, channels_last])
@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts(backend, layout):
    check_backend(torch.randn(3, 6, 5, 4), *make_parameters(6), backend=backend, layout=layout)
    check_backend(torch.randn(1, 6, 1, 4), *make_parameters(6), backend=backend, layout=layout, reverse=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameters_of_another_dtype_are_cast(backend):
    """Parameters kept in float32 with a bfloat16 x (autocast), or in float64 with float32 x."""
    x = torch.randn(2, 4, 3, 3, dtype=torch.bfloat16)
    check_backend(x, *make_parameters(4), backend=backend)
    check_backend(torch.randn(2, 4, 3), *make_parameters(4, torch.float64), backend=backend)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_reverse_inverts_forward(backend):
    x = torch.randn(4, 12, 8, 8)
    bias, log_scale = make_parameters(12)
    y, logdet = gmk.actnorm(x, bias, log_scale, backend=backend)
    x_back, logdet_back = gmk.actnorm(y, bias, log_scale, reverse=True, backend=backend)
    assert (x_back - x).norm() / x.norm() <= 1e-5
    torch.testing.assert_close(logdet_back, -logdet)


def jacobian_logdet(fn, x):
    """log|det| of the Jacobian of sample n of fn(x)[0] with respect to sample n of x, per n (autograd)."""
    jac = torch.autograd.functional.jacobian(lambda v: fn(v)[0], x)  # (N, *F, N, *F)
    n = x.shape[0]
    features = x[0].numel()
    jac = jac.reshape(n, features, n, features)
    return torch.stack([torch.linalg.slogdet(jac[i, :, i]).logabsdet for i in range(n)])


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", [b for b in ("reference", "cpu") if b in gmk.available_backends()])
def test_logdet_is_the_jacobians(backend, reverse):
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    bias, log_scale = make_parameters(4, torch.float64)
    fn = functools.partial(gmk.actnorm, bias=bias, log_scale=log_scale, reverse=reverse, backend=backend)
    torch.testing.assert_close(fn(x)[1], jacobian_logdet(fn, x))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", [b for b in ("reference", "cpu") if b in gmk.available_backends()])
def test_gradcheck(backend, reverse):
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    bias, log_scale = (t.requires_grad_() for t in make_parameters(3, torch.float64))
    fn = functools.partial(gmk.actnorm, reverse=reverse, backend=backend)
    assert torch.autograd.gradcheck(fn, (x, bias, log_scale), fast_mode=True)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", [b for b in ("reference", "cpu") if b in gmk.available_backends()])
def test_gradgradcheck(backend, reverse):
    """Double backward (gradient penalties): the backward op is differentiable too."""
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    bias, log_scale = (t.requires_grad_() for t in make_parameters(3, torch.float64))
    fn = functools.partial(gmk.actnorm, reverse=reverse, backend=backend)
    assert torch.autograd.gradgradcheck(fn, (x, bias, log_scale), fast_mode=True)


def test_empty_batch_and_positions():
    for backend in BACKENDS:
        for shape in ((0, 3, 4), (2, 3, 0)):
            y, logdet = gmk.actnorm(torch.randn(shape), *make_parameters(3), backend=backend)
            assert y.shape == shape and logdet.shape == shape[:1]


# The ops' namespaces and the devices of their tensors (on a GPU: fakes against the CUDA kernels).
OPCHECK_CASES = [*(pytest.param(namespace, "cpu", id=f"{namespace}-cpu") for namespace in NAMESPACES),
                 *(pytest.param(namespace, "cuda", id=f"{namespace}-cuda", marks=pytest.mark.gpu)
                   for namespace in ("gmkernels", "gmk_triton"))]


@pytest.mark.parametrize(("namespace", "device"), OPCHECK_CASES)
def test_opcheck(namespace, device):
    ops = getattr(torch.ops, namespace)
    x = noncontiguous(torch.randn(2, 5, 6, device=device)).requires_grad_()
    bias, log_scale = (t.requires_grad_() for t in make_parameters(5, device=device))
    for reverse in (False, True):
        torch.library.opcheck(ops.actnorm, (x, bias, log_scale, reverse))
        torch.library.opcheck(ops.actnorm_backward, (torch.randn(2, 5, 6, device=device), x.detach(),
                                                     bias.detach(), log_scale.detach(), reverse))


_X = torch.randn(2, 4, 3, 3)
_B, _S = make_parameters(4)
BAD_INPUTS = {
    "x-not-tensor": (lambda: gmk.actnorm([1.0], _B, _S), TypeError, r"\bx\b"),
    "x-integer": (lambda: gmk.actnorm(_X.long(), _B, _S), TypeError, r"\bx\b"),
    "x-1d": (lambda: gmk.actnorm(_X[0, 0, 0], _B, _S), ValueError, r"\bx\b"),
    "bias-shape": (lambda: gmk.actnorm(_X, _B[:3], _S), ValueError, "bias"),
    "log-scale-shape": (lambda: gmk.actnorm(_X, _B, _S[None]), ValueError, "log_scale"),
    "log-scale-integer": (lambda: gmk.actnorm(_X, _B, _S.long()), TypeError, "log_scale"),
    "bias-device": (lambda: gmk.actnorm(_X, _B.to("meta"), _S), ValueError, "bias"),
    "backend": (lambda: gmk.actnorm(_X, _B, _S, backend="fastest"), ValueError, "backend"),
    "backend-on-cpu": (lambda: gmk.actnorm(_X, _B, _S, backend="cuda"), ValueError, "actnorm: backend 'cuda'"),
    "module-channels": (lambda: gmk.nn.ActNorm(0), ValueError, "num_channels"),
}


@pytest.mark.parametrize(("call", "error", "pattern"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_naming_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


LOW_LEVEL_BAD_ARGS = {
    "x-2d": ((_X[0, 0], _B, _S, False), ValueError, r"\bx\b"),
    "bias-shape": ((_X.flatten(2), _B[:2], _S, False), ValueError, "bias"),
    "log-scale-dtype": ((_X.flatten(2), _B, _S.double(), False), TypeError, "log_scale"),
    "x-integer": ((_X.flatten(2).long(), _B, _S, False), TypeError, r"\bx\b"),
}


@pytest.mark.parametrize(("args", "error", "pattern"), LOW_LEVEL_BAD_ARGS.values(),
                         ids=LOW_LEVEL_BAD_ARGS.keys())
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_low_level_bad_args_raise_naming_the_argument(namespace, args, error, pattern):
    with pytest.raises(error, match=pattern):
        getattr(torch.ops, namespace).actnorm(*args)


# --- the module -----------------------------------------------------------------------------------

def test_module_initialises_from_the_first_batch():
    module = gmk.nn.ActNorm(5)
    x = 2 + 3 * torch.randn(16, 5, 6, 6)
    y, logdet = module(x)
    dims = (0, 2, 3)
    torch.testing.assert_close(y.mean(dims), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dims, unbiased=False), torch.ones(5), atol=1e-5, rtol=0)
    bias, log_scale = reference.actnorm_init(x)
    torch.testing.assert_close(module.bias.data, bias.float())
    torch.testing.assert_close(module.log_scale.data, log_scale.float())
    torch.testing.assert_close(logdet, torch.full((16,), 36 * log_scale.sum().item()))
    assert bool(module.initialized)
    before = module.bias.detach().clone()
    module(5 * torch.randn(4, 5, 6, 6))  # no second initialisation
    torch.testing.assert_close(module.bias.data, before)
    torch.testing.assert_close(module.reverse(y), x, atol=1e-5, rtol=1e-5)
    assert module.bias.grad is None


def test_module_initialisation_is_accurate_for_a_large_mean():
    """Statistics in two passes: E[x²] - E[x]² would cancel (1e8 against a variance of 1e-6)."""
    x = 1e4 + 1e-3 * torch.randn(8, 3, 5, 5, dtype=torch.float64)
    module = gmk.nn.ActNorm(3).double()
    module(x)
    _, log_scale = reference.actnorm_init(x)
    torch.testing.assert_close(module.log_scale.data, log_scale)


def test_module_gradients_and_state_dict():
    module = gmk.nn.ActNorm(3)
    y, logdet = module(torch.randn(4, 3, 5))
    (y.square().sum() + logdet.sum()).backward()
    assert module.bias.grad is not None and module.log_scale.grad is not None
    loaded = gmk.nn.ActNorm(3)
    loaded.load_state_dict(module.state_dict())
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(loaded(x)[0], module(x)[0])  # loaded: initialised by the state dict


def _distributed_worker(rank, world_size, port, batches, folder):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        module = gmk.nn.ActNorm(batches.shape[2])
        module(batches[rank])
        torch.save(torch.stack([module.bias.detach(), module.log_scale.detach()]), f"{folder}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_module_initialisation_reduces_across_processes(tmp_path):
    """Two gloo processes, each with its own half of the batch, get the whole batch's statistics."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    batches = torch.randn(2, 3, 4, 5, 5) * torch.tensor([1.0, 3.0])[:, None, None, None, None]
    mp.spawn(_distributed_worker, args=(2, port, batches, str(tmp_path)), nprocs=2, join=True)
    bias, log_scale = reference.actnorm_init(torch.cat([batches[0], batches[1]]))
    expected = torch.stack([bias, log_scale]).float()
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"{rank}.pt"), expected)


# --- on a GPU ---------------------------------------------------------------------------------------

GPU_BACKENDS = ("cuda", "triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backends(backend, dtype):
    for shape in ((64, 12, 16, 16), (3, 7, 33), (2, 5, 1, 1)):
        x = torch.randn(shape, device="cuda").to(dtype)
        bias, log_scale = make_parameters(shape[1], device="cuda")
        for reverse in (False, True):
            for layout in (None, noncontiguous):
                stored = x if layout is None else layout(x)
                y, logdet, grads = run(stored, bias, log_scale, torch.ones_like(x),
                                       torch.ones(shape[0], device="cuda"), reverse=reverse, backend=backend)
                y64, logdet64, grads64 = run(x.double(), bias.double(), log_scale.double(),
                                             torch.ones_like(x, dtype=torch.float64),
                                             torch.ones(shape[0], device="cuda", dtype=torch.float64),
                                             reverse=reverse, backend="reference")
                assert_close(y, y64, dtype)
                assert_close(logdet, logdet64, dtype)
                terms = x.numel() // shape[1]
                for grad, grad64, n in zip(grads, grads64, (1, terms, terms)):
                    assert_close(grad, grad64, dtype, "grad", terms=n)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_no_host_synchronisation(backend):
    x = torch.randn(8, 12, 16, 16, device="cuda", requires_grad=True)
    bias, log_scale = (t.requires_grad_() for t in make_parameters(12, device="cuda"))
    gmk.actnorm(x, bias, log_scale, backend=backend)  # compile and warm up outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y, logdet = gmk.actnorm(x, bias, log_scale, backend=backend)
        torch.autograd.grad([y, logdet], [x, bias, log_scale], [torch.ones_like(y), torch.ones_like(logdet)])
        gmk.actnorm(y.detach(), bias, log_scale, reverse=True, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(logdet[0].item())





# --- issue 18 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["False", "True", 0, 1, None])
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_issue18_reverse_must_be_a_bool(backend, flag):
    with pytest.raises(TypeError, match="actnorm: reverse must be a bool"):
        gmk.actnorm(torch.randn(2, 3, 4), torch.randn(3), torch.randn(3), reverse=flag, backend=backend)


INF, NAN = float("inf"), float("nan")
# x = (1, 2, 8): channel 0 meets bias -1 (x + b = 0 at x = 1), channel 1 bias 1; with non-finite x too.
NONFINITE_X = torch.tensor([[[2.0, 1.0, -1.0, 0.0, INF, -INF, NAN, 3.0],
                             [2.0, -1.0, 0.5, -3.0, INF, -INF, NAN, 1e30]]])
NONFINITE_PARAMETERS = {  # (bias, log_scale)
    "overflowing-scale": ([-1.0, 1.0], [100.0, 95.0]),
    "infinite-scale": ([-1.0, 1.0], [INF, -INF]),
    "nan-scale": ([-1.0, 1.0], [NAN, 0.5]),
    "infinite-bias": ([INF, -INF], [0.5, 100.0]),
    "nan-bias": ([NAN, 1.0], [0.5, 0.0]),
    "finite": ([-1.0, 1.0], [0.5, -0.5]),
}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("parameters", NONFINITE_PARAMETERS.values(), ids=NONFINITE_PARAMETERS.keys())
@pytest.mark.parametrize("backend", BACKENDS)
def test_issue18_nonfinite_values_as_the_reference(backend, parameters, reverse):
    """README: every backend gives what the reference's formula gives in IEEE arithmetic (±inf stays,
    NaN only where (x + b) e^s is NaN), also where exp(log_scale) overflows."""
    bias, log_scale = (torch.tensor(p) for p in parameters)
    for log_scale in (log_scale, -log_scale):
        y, _ = gmk.actnorm(NONFINITE_X, bias, log_scale, reverse=reverse, backend=backend)
        expected, _ = reference.actnorm(NONFINITE_X, bias, log_scale, reverse)
        assert_nonfinite_as_reference(y, expected, torch.float32)
