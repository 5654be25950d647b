"""gmk.invertible_conv1x1 (dense and LU), gmk.actnorm_conv1x1 (dense and LU), gmk.nn.InvConv2d and
gmk.nn.InvConv2dLU: every backend against the float64 reference, forward, reverse, log-determinants
(also against the Jacobian's) and gradients; bad inputs, singular weights; no host sync on CUDA."""
import functools

import pytest
import torch

import gmkernels as gmk
from conftest import (assert_close, assert_nonfinite_as_reference, backends_under_test, misaligned,
                      noncontiguous, supported_dtypes)
from gmkernels.reference import invconv as reference
from gmkernels.reference.actnorm import logdet_dtype

BACKENDS = backends_under_test("cpu")
NAMESPACES = [*(["gmkernels"] if gmk.has_extension() else []),
              *(["gmk_triton"] if "triton" in BACKENDS else [])]


def well_conditioned(channels, dtype=torch.float32, device="cpu"):
    """A random rotation plus a little noise: invertible, condition number near 1, det of either sign."""
    q = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))[0]
    return (q + 0.1 * torch.randn(channels, channels, dtype=torch.float64)).to(dtype=dtype, device=device)


def lu_parameters(channels, dtype=torch.float32, device="cpu"):
    """(lower, upper, log_s, sign_s, perm) of a well-conditioned W, with noise outside the strict
    triangles of lower and upper (the op must never read it)."""
    perm, lower, upper = torch.linalg.lu(well_conditioned(channels, torch.float64))
    diagonal = upper.diagonal()
    lower = torch.tril(lower, -1) + torch.triu(torch.randn(channels, channels, dtype=torch.float64))
    upper = torch.triu(upper, 1) + torch.tril(torch.randn(channels, channels, dtype=torch.float64))
    return tuple(t.to(dtype=dtype, device=device)
                 for t in (lower, upper, diagonal.abs().log(), diagonal.sign(), perm))


def actnorm_parameters(channels, dtype=torch.float32, device="cpu"):
    like = {"dtype": dtype, "device": device}
    return torch.randn(channels, **like), 0.3 * torch.randn(channels, **like)


# op: (function, parameters(C, dtype, device), which parameters are differentiable)
OPS = {
    "dense": (gmk.invertible_conv1x1, lambda c, **kw: (well_conditioned(c, **kw),), (True,)),
    "lu": (gmk.invertible_conv1x1_lu, lu_parameters, (True, True, True, False, False)),
    "actnorm-dense": (gmk.actnorm_conv1x1,
                      lambda c, **kw: (*actnorm_parameters(c, **kw), well_conditioned(c, **kw)), (True,) * 3),
    "actnorm-lu": (gmk.actnorm_conv1x1_lu,
                   lambda c, **kw: (*actnorm_parameters(c, **kw), *lu_parameters(c, **kw)),
                   (True,) * 5 + (False, False)),
}


def run(fn, x, params, trainable, grad_y, grad_logdet, **kwargs):
    """y, logdet and the gradients of x and the trainable parameters."""
    x = x.detach().requires_grad_()
    params = [p.detach().requires_grad_(t) for p, t in zip(params, trainable, strict=True)]
    y, logdet = fn(x, *params, **kwargs)
    wrt = [x, *(p for p in params if p.requires_grad)]
    return y, logdet, torch.autograd.grad([y, logdet], wrt, [grad_y, grad_logdet])


def coarser(*dtypes):
    return max(dtypes, key=lambda dtype: torch.finfo(dtype).eps)


def check_backend(op, x, *, backend, reverse=False, layout=None, param_dtype=torch.float32):
    fn, make, trainable = OPS[op]
    params = make(x.shape[1], dtype=param_dtype, device=x.device)
    grad_y = torch.randn(x.shape, dtype=x.dtype, device=x.device)
    grad_logdet = torch.randn(x.shape[0], dtype=logdet_dtype(x.dtype), device=x.device)
    stored = x if layout is None else layout(x)
    y, logdet, grads = run(fn, stored, params, trainable, grad_y, grad_logdet, reverse=reverse,
                           backend=backend)
    y64, logdet64, grads64 = run(fn, x.double(), [p.double() for p in params], trainable, grad_y.double(),
                                 grad_logdet.double(), reverse=reverse, backend="reference")
    assert (y.dtype, y.shape) == (x.dtype, x.shape)
    assert (logdet.dtype, logdet.shape) == (grad_logdet.dtype, x.shape[:1])
    assert_close(y, y64, x.dtype)
    assert_close(logdet, logdet64, x.dtype)
    positions = x[0, 0].numel()
    for index, (grad, grad64) in enumerate(zip(grads, grads64, strict=True)):
        dtype, terms = (x.dtype, x.shape[1]) if index == 0 else (coarser(x.dtype, param_dtype), x.numel())
        assert_close(grad, grad64, dtype, "grad", terms=max(terms, positions))


def test_reference_is_the_papers_formula():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    weight = well_conditioned(3, torch.float64)
    y, logdet = reference.invertible_conv1x1(x, weight)
    torch.testing.assert_close(y, torch.einsum("oc,nchw->nohw", weight, x))
    torch.testing.assert_close(logdet, torch.full((2,), 20 * torch.det(weight).abs().log().item(),
                                                  dtype=torch.float64))
    lower, upper, log_s, sign_s, perm = lu_parameters(3, torch.float64)
    w = reference.lu_weight(lower, upper, log_s, sign_s, perm)
    expected = perm @ (torch.tril(lower, -1) + torch.eye(3, dtype=torch.float64)) @ (
        torch.triu(upper, 1) + torch.diag(sign_s * log_s.exp()))
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(torch.det(w).abs().log(), log_s.sum())


# (5, 3, 70): 10 blocks of 64 positions, more than the Triton backward's programs walk one each.
SHAPES = [(2, 4, 3, 5), (3, 7, 6), (2, 12, 4, 4), (1, 3, 2, 2, 2), (5, 6), (2, 1, 3), (5, 3, 70)]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_shapes(backend, op, shape, reverse):
    check_backend(op, torch.randn(shape), backend=backend, reverse=reverse)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("backend", "dtype"), [(b, d) for b in BACKENDS for d in supported_dtypes(b)
                                                if d != torch.float32])
@pytest.mark.parametrize("op", OPS)
def test_other_dtypes(op, backend, dtype, reverse):
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(3, 5, 4, 3).to(dtype)
    check_backend(op, x, backend=backend, reverse=reverse, param_dtype=param_dtype)


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", [noncontiguous, misaligned, channels_last])
@pytest.mark.parametrize("op", ["dense", "actnorm-lu"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts(backend, op, layout):
    check_backend(op, torch.randn(3, 6, 5, 4), backend=backend, layout=layout)
    check_backend(op, torch.randn(1, 6, 1, 4), backend=backend, layout=layout, reverse=True)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_reverse_inverts_forward(backend, op):
    fn, make, _ = OPS[op]
    x = torch.randn(4, 12, 8, 8)
    params = make(12)
    y, logdet = fn(x, *params, backend=backend)
    x_back, logdet_back = fn(y, *params, reverse=True, backend=backend)
    assert (x_back - x).norm() / x.norm() <= 1e-5
    torch.testing.assert_close(logdet_back, -logdet)


def jacobian_logdet(fn, x):
    jac = torch.autograd.functional.jacobian(lambda v: fn(v)[0], x)
    n, features = x.shape[0], x[0].numel()
    jac = jac.reshape(n, features, n, features)
    return torch.stack([torch.linalg.slogdet(jac[i, :, i]).logabsdet for i in range(n)])


CPU_EXACT = [b for b in ("reference", "cpu") if b in gmk.available_backends()]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", CPU_EXACT)
def test_logdet_is_the_jacobians(backend, op, reverse):
    fn, make, _ = OPS[op]
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    params = make(4, dtype=torch.float64)
    call = functools.partial(fn, reverse=reverse, backend=backend)
    torch.testing.assert_close(call(x, *params)[1], jacobian_logdet(lambda v: call(v, *params), x))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", CPU_EXACT)
def test_gradcheck(backend, op, reverse):
    fn, make, trainable = OPS[op]
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    params = [p.requires_grad_(t) for p, t in zip(make(3, dtype=torch.float64), trainable, strict=True)]
    assert torch.autograd.gradcheck(functools.partial(fn, reverse=reverse, backend=backend), (x, *params),
                                    fast_mode=True)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_many_channels(backend, reverse):
    """More channels than the Triton backward fuses (64), and than one tile of the forward."""
    check_backend("actnorm-dense", torch.randn(2, 70, 3), backend=backend, reverse=reverse)


@pytest.mark.parametrize("op", ["dense", "actnorm-lu"])
@pytest.mark.parametrize("backend", CPU_EXACT)
def test_gradgradcheck(backend, op):
    """Double backward (gradient penalties): the backward op is differentiable too."""
    fn, make, trainable = OPS[op]
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    params = [p.requires_grad_(t) for p, t in zip(make(3, dtype=torch.float64), trainable, strict=True)]
    for reverse in (False, True):
        call = functools.partial(fn, reverse=reverse, backend=backend)
        assert torch.autograd.gradgradcheck(call, (x, *params), fast_mode=True)


def test_lu_reads_only_the_strict_triangles():
    lower, upper, log_s, sign_s, perm = lu_parameters(5)
    x = torch.randn(2, 5, 3, 3)
    for backend in ["reference", *BACKENDS]:
        y, _ = gmk.invertible_conv1x1_lu(x, lower, upper, log_s, sign_s, perm, backend=backend)
        other_lower = torch.tril(lower, -1) + torch.triu(torch.randn(5, 5))  # diagonal and above changed
        other_upper = torch.triu(upper, 1) + torch.tril(torch.randn(5, 5))
        y2, _ = gmk.invertible_conv1x1_lu(x, other_lower, other_upper, log_s, sign_s, perm, backend=backend)
        torch.testing.assert_close(y2, y)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_singular_weight_in_reverse_raises(backend):
    weight = well_conditioned(4)
    weight[2] = weight[0] * 2  # rank 3
    x = torch.randn(2, 4, 3, 3)
    _, logdet = gmk.invertible_conv1x1(x, weight, backend=backend)  # forward: the log-determinant is -inf
    assert torch.isneginf(logdet).all()
    fused = (*actnorm_parameters(4), weight)
    for fn, params in ((gmk.invertible_conv1x1, (weight,)), (gmk.actnorm_conv1x1, fused)):
        with pytest.raises(ValueError, match="weight is singular"):
            fn(x, *params, reverse=True, backend=backend)


def rank_one(channels, equal):
    """An expanded (stride 0) weight with equal rows or equal columns: singular, but the LU factorisation
    of one of the two finds pivots of order 1e-30 instead of zeros."""
    column = well_conditioned(channels)[:, :1]
    return column.mT.expand(channels, channels) if equal == "rows" else column.expand(channels, channels)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("equal", ["rows", "columns"])
def test_singular_to_working_precision(backend, equal):
    """Found by the fuzz campaign: log|det W| was -inf on one path and -230 on the other. Now every backend
    and the reference count W as singular when a pivot is at most C · eps · max|W| (float64)."""
    weight = rank_one(4, equal).requires_grad_()
    x = torch.randn(2, 4, 3, 3)
    fused = (*actnorm_parameters(4), weight)
    for fn, params in ((gmk.invertible_conv1x1, (weight,)), (gmk.actnorm_conv1x1, fused)):
        _, logdet = fn(x, *params, backend=backend)
        assert torch.isneginf(logdet).all()
        (grad,) = torch.autograd.grad(logdet.sum(), weight)
        assert grad.isnan().all()
        with pytest.raises(ValueError, match="weight is singular to working precision"):
            fn(x, *params, reverse=True, backend=backend)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_ill_conditioned_weight_is_not_singular(backend):
    """Condition number 1e12: far from the rule's C · eps; log|det W| as slogdet gives it, the reverse runs."""
    q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    weight = q @ torch.diag(torch.tensor([1.0, 1.0, 1e-6, 1e-12], dtype=torch.float64)) @ q.mT
    x = torch.randn(2, 4, 3)
    _, logdet = gmk.invertible_conv1x1(x, weight, backend=backend)
    expected = 3 * torch.linalg.slogdet(weight).logabsdet
    torch.testing.assert_close(logdet.double(), expected.expand(2), rtol=1e-6, atol=0)
    y, _ = gmk.invertible_conv1x1(x, weight, reverse=True, backend=backend)
    assert y.isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["actnorm-dense", "actnorm-lu"])
def test_half_log_scale_gradient_rounds_once(backend, op):
    """Found by the fuzz campaign: log_scale feeds the matrix and the log-determinant; each use's gradient
    was rounded to float16 and the two summed in float16 (8 ulp off where they cancel). It is cast to
    float64 once now: its gradient is the float64 one rounded once."""
    fn, parameters, trainable = OPS[op]
    params = list(parameters(3, dtype=torch.float64))
    params[1] = params[1].half().double()  # log_scale: values a float16 holds
    x, grad_y = torch.randn(4, 3, 5), 8 * torch.randn(4, 3, 5)
    *_, data_part = run(fn, x.double(), params, trainable, grad_y.double(), torch.zeros(4, dtype=torch.float64),
                        backend="reference")
    # the log-determinant's part of the gradient (5 positions, 4 samples) cancels the largest data part
    largest = data_part[2].abs().argmax()
    grad_logdet = torch.full((4,), (0.25 - data_part[2][largest].item()) / 20, dtype=torch.float64)
    *_, ideal = run(fn, x.double(), params, trainable, grad_y.double(), grad_logdet, backend="reference")
    params[1] = params[1].half()
    *_, got = run(fn, x, params, trainable, grad_y, grad_logdet.float(), backend=backend)
    torch.testing.assert_close(got[2].double(), ideal[2], rtol=2**-11, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["dense", "actnorm-dense"])
@pytest.mark.parametrize("reverse", [False, True])
def test_half_weight_gradient_rounds_once(backend, op, reverse):
    """W feeds the data pass and log|det W|: its gradient is their float64 sum rounded once to W's dtype
    (a second cast of W, in the singular-W rule's first version, rounded each to bfloat16 and summed there:
    the campaign found it)."""
    fn, parameters, trainable = OPS[op]
    params = [p.bfloat16().double() for p in parameters(3, dtype=torch.float64)]
    x, grad_y = torch.randn(4, 3, 5), 8 * torch.randn(4, 3, 5)
    zero = torch.zeros(4, dtype=torch.float64)
    *_, data_part = run(fn, x.double(), params, trainable, grad_y.double(), zero, reverse=reverse,
                        backend="reference")
    # the log-determinant's part of W's gradient, ±20 k W⁻ᵀ for grad_logdet = k, cancels the data part where
    # W⁻ᵀ is largest
    inverse_t = torch.linalg.inv(params[-1]).mT * (-1 if reverse else 1)
    at = inverse_t.abs().argmax()
    k = (0.25 - data_part[-1].flatten()[at].item()) / (20 * inverse_t.flatten()[at].item())
    grad_logdet = torch.full((4,), k, dtype=torch.float64)
    *_, ideal = run(fn, x.double(), params, trainable, grad_y.double(), grad_logdet, reverse=reverse,
                    backend="reference")
    *_, got = run(fn, x, [p.bfloat16() for p in params], trainable, grad_y, grad_logdet.float(),
                  reverse=reverse, backend=backend)
    torch.testing.assert_close(got[-1].double(), ideal[-1], rtol=2**-8, atol=2e-3)


# The ops' namespaces and the devices of their tensors (on a GPU: fakes against the CUDA kernels).
OPCHECK_CASES = [*(pytest.param(namespace, "cpu", id=f"{namespace}-cpu") for namespace in NAMESPACES),
                 *(pytest.param(namespace, "cuda", id=f"{namespace}-cuda", marks=pytest.mark.gpu)
                   for namespace in ("gmkernels", "gmk_triton"))]


@pytest.mark.parametrize(("namespace", "device"), OPCHECK_CASES)
def test_opcheck(namespace, device):
    ops = getattr(torch.ops, namespace)
    x = noncontiguous(torch.randn(2, 5, 6, device=device)).requires_grad_()
    weight = torch.randn(5, 5, device=device, requires_grad=True)
    bias = torch.randn(5, device=device, requires_grad=True)
    torch.library.opcheck(ops.conv1x1, (x, weight, bias))
    torch.library.opcheck(ops.conv1x1, (x, weight[:3], None))
    for output_mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(ops.conv1x1_backward,
                              (torch.randn(2, 5, 6, device=device), x.detach(), weight.detach(), output_mask))


_X = torch.randn(2, 4, 3, 3)
_W = well_conditioned(4)
_LU = lu_parameters(4)
_B, _S = actnorm_parameters(4)
BAD_INPUTS = {
    "x-integer": (lambda: gmk.invertible_conv1x1(_X.long(), _W), TypeError, r"\bx\b"),
    "x-1d": (lambda: gmk.invertible_conv1x1(_X[0, 0, 0], _W), ValueError, r"\bx\b"),
    "weight-not-square": (lambda: gmk.invertible_conv1x1(_X, torch.randn(4, 3)), ValueError,
                          "weight must be square"),
    "weight-channels": (lambda: gmk.invertible_conv1x1(_X, torch.randn(3, 3)), ValueError, "weight"),
    "weight-integer": (lambda: gmk.invertible_conv1x1(_X, _W.long()), TypeError, "weight"),
    "weight-device": (lambda: gmk.invertible_conv1x1(_X, _W.to("meta")), ValueError, "weight"),
    "lower-not-square": (lambda: gmk.invertible_conv1x1_lu(_X, _LU[0][:3], *_LU[1:]), ValueError, "lower"),
    "log-s-shape": (lambda: gmk.invertible_conv1x1_lu(_X, *_LU[:2], _LU[2][:3], *_LU[3:]), ValueError,
                    "log_s"),
    "sign-s-device": (lambda: gmk.invertible_conv1x1_lu(_X, *_LU[:3], _LU[3].to("meta"), _LU[4]), ValueError,
                      "sign_s"),
    "perm-shape": (lambda: gmk.invertible_conv1x1_lu(_X, *_LU[:4], torch.eye(5)), ValueError, "perm"),
    "fused-bias": (lambda: gmk.actnorm_conv1x1(_X, _B[:3], _S, _W), ValueError, "bias"),
    "fused-log-scale": (lambda: gmk.actnorm_conv1x1(_X, _B, _S.long(), _W), TypeError, "log_scale"),
    "fused-weight": (lambda: gmk.actnorm_conv1x1(_X, _B, _S, _W[:, :2]), ValueError, "weight"),
    "fused-lu-upper": (lambda: gmk.actnorm_conv1x1_lu(_X, _B, _S, _LU[0], _LU[1][0], *_LU[2:]), ValueError,
                       "upper"),
    "backend": (lambda: gmk.invertible_conv1x1(_X, _W, backend="fastest"), ValueError, "backend"),
    "backend-on-cpu": (lambda: gmk.actnorm_conv1x1_lu(_X, _B, _S, *_LU, backend="cuda"), ValueError,
                       "actnorm_conv1x1_lu: backend 'cuda'"),
    "module-channels": (lambda: gmk.nn.InvConv2d(0), ValueError, "num_channels"),
    "module-lu-channels": (lambda: gmk.nn.InvConv2dLU(2.0), ValueError, "num_channels"),
}


@pytest.mark.parametrize(("call", "error", "pattern"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_naming_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


_X3 = _X.flatten(2)
LOW_LEVEL_BAD_ARGS = {
    "x-2d": ((_X3[0], _W, None), ValueError, r"\bx\b"),
    "weight-channels": ((_X3, _W[:, :3], None), ValueError, "weight"),
    "weight-dtype": ((_X3, _W.double(), None), TypeError, "weight"),
    "bias-shape": ((_X3, _W, torch.randn(3)), ValueError, "bias"),
    "x-integer": ((_X3.long(), _W, None), TypeError, r"\bx\b"),
}


@pytest.mark.parametrize(("args", "error", "pattern"), LOW_LEVEL_BAD_ARGS.values(),
                         ids=LOW_LEVEL_BAD_ARGS.keys())
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_low_level_bad_args_raise_naming_the_argument(namespace, args, error, pattern):
    with pytest.raises(error, match=pattern):
        getattr(torch.ops, namespace).conv1x1(*args)


# --- modules ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("module_type", [gmk.nn.InvConv2d, gmk.nn.InvConv2dLU])
def test_modules(module_type):
    module = module_type(6)
    x = torch.randn(3, 6, 4, 4)
    y, logdet = module(x)
    torch.testing.assert_close(logdet, torch.zeros(3), atol=1e-5, rtol=0)  # a rotation: |det W| = 1
    torch.testing.assert_close(module.reverse(y), x, atol=1e-5, rtol=1e-5)
    (y.square().sum() + logdet.sum()).backward()
    assert all(p.grad is not None for p in module.parameters())
    state = module.state_dict()
    loaded = module_type(6)
    loaded.load_state_dict(state)
    torch.testing.assert_close(loaded(x)[0], y)


def test_lu_module_is_the_lu_of_a_rotation():
    module = gmk.nn.InvConv2dLU(8)
    assert {name for name, _ in module.named_buffers()} == {"perm", "sign_s"}
    assert {name for name, _ in module.named_parameters()} == {"lower", "upper", "log_s"}
    weight = module.weight().detach().double()
    torch.testing.assert_close(weight @ weight.T, torch.eye(8, dtype=torch.float64), atol=1e-5, rtol=0)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(module(x)[0], reference.conv1x1(x, weight.float()), atol=1e-5, rtol=1e-5)


# --- on a GPU ---------------------------------------------------------------------------------------

GPU_BACKENDS = ("cuda", "triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backends(backend, dtype):
    # 12..96 channels: the CUDA kernel's weight in shared memory; 200 channels: its GEMM fallback.
    for shape in ((64, 12, 16, 16), (64, 48, 4, 4), (3, 7, 33), (2, 200, 5, 5), (2, 5, 1, 1)):
        x = torch.randn(shape, device="cuda").to(dtype)
        for op in OPS:
            for reverse in (False, True):
                check_backend(op, x, backend=backend, reverse=reverse)
        check_backend("dense", x, backend=backend, layout=noncontiguous)


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_reverse_inverts_forward(backend, op):
    fn, make, _ = OPS[op]
    x = torch.randn(64, 48, 32, 32, device="cuda")
    params = make(48, device="cuda")
    x_back, _ = fn(fn(x, *params, backend=backend)[0], *params, reverse=True, backend=backend)
    assert (x_back - x).norm() / x.norm() <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_no_host_synchronisation(backend, op):
    fn, make, trainable = OPS[op]
    x = torch.randn(8, 12, 16, 16, device="cuda", requires_grad=True)
    params = [p.requires_grad_(t) for p, t in zip(make(12, device="cuda"), trainable, strict=True)]
    wrt = [x, *(p for p in params if p.requires_grad)]
    for reverse in (False, True):  # warm up (compiles, cuSOLVER handles) outside the check
        y, logdet = fn(x, *params, reverse=reverse, backend=backend)
        torch.autograd.grad([y, logdet], wrt, [torch.ones_like(y), torch.ones_like(logdet)])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for reverse in (False, True):
            y, logdet = fn(x, *params, reverse=reverse, backend=backend)
            torch.autograd.grad([y, logdet], wrt, [torch.ones_like(y), torch.ones_like(logdet)])
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_singular_weight_in_reverse_gives_nan(backend):
    """On CUDA the singularity check would synchronise: the reverse's output is NaN instead."""
    weight = well_conditioned(4, device="cuda")
    weight[2] = 2 * weight[0]
    x = torch.randn(2, 4, 3, 3, device="cuda")
    y, _ = gmk.invertible_conv1x1(x, weight, reverse=True, backend=backend)
    assert torch.isnan(y).all()





# --- issue 18 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("op", ["lu", "actnorm-lu"])
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_issue18_lu_takes_mixed_parameter_dtypes(backend, op, reverse):
    """Parameters of different float dtypes (documented as allowed) give the float64 result."""
    fn, make, _ = OPS[op]
    x = torch.randn(2, 4, 3)
    params = make(4)
    mixed = [p.double() if index % 2 else p.half() if index == 2 else p for index, p in enumerate(params)]
    y, logdet = fn(x, *mixed, reverse=reverse, backend=backend)
    y64, logdet64 = fn(x.double(), *(p.double() for p in mixed), reverse=reverse, backend="reference")
    assert_close(y, y64, torch.float32)
    assert_close(logdet, logdet64, torch.float32)


def _not_permutations(perm):
    duplicated_row = perm.clone()
    duplicated_row[1] = perm[0]
    return {"scaled": 2 * perm, "duplicated-row": duplicated_row, "fractional": torch.full_like(perm, 0.25),
            "negative": -perm}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("op", ["lu", "actnorm-lu"])
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_issue18_perm_must_be_a_permutation(backend, op, reverse):
    fn, make, _ = OPS[op]
    x = torch.randn(2, 4, 3)
    *params, perm = make(4)
    for name, bad in _not_permutations(perm).items():
        with pytest.raises(ValueError, match="perm must be a permutation matrix"):
            fn(x, *params, bad, reverse=reverse, backend=backend)
    fn(x, *params, perm.double(), reverse=reverse, backend=backend)  # any float dtype of a true permutation


def test_issue18_perm_check_without_synchronising_gives_a_device_flag():
    """On CUDA the fast backends cannot read the check back: it masks the matrix with NaN instead."""
    from gmkernels.ops.invconv import _check_permutation, _nan_unless
    perm = lu_parameters(4)[-1]
    for name, bad in _not_permutations(perm).items():
        valid = _check_permutation("op", bad, synchronise=False)
        assert not bool(valid), name
        assert _nan_unless(valid, torch.eye(4)).isnan().all()
    assert bool(_check_permutation("op", perm, synchronise=False))


@pytest.mark.parametrize("flag", ["False", "True", 0, 1, None])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_issue18_reverse_must_be_a_bool(backend, op, flag):
    fn, make, _ = OPS[op]
    with pytest.raises(TypeError, match="reverse must be a bool"):
        fn(torch.randn(2, 4, 3), *make(4), reverse=flag, backend=backend)


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_issue18_nonfinite_values_as_the_reference(backend, op, reverse):
    """README: non-finite x gives what the reference gives; an overflowing exp(±log_scale) of the fused
    ops gives non-finite values exactly where the reference does (NaN allowed for its ±inf)."""
    fn, make, _ = OPS[op]
    x = torch.tensor([[[2.0, 1.0, INF, -INF, NAN, 3.0], [-1.0, 0.5, 1.0, 2.0, 0.0, 1e30],
                       [0.25, -2.0, -INF, 1.0, 1.0, -1e30]]])
    params = make(3)
    fused = op.startswith("actnorm")
    cases = [params]
    if fused:
        cases += [(params[0], torch.tensor([100.0, 0.0, -0.5]) * sign, *params[2:]) for sign in (1, -1)]
    for case in cases:
        y, _ = fn(x, *case, reverse=reverse, backend=backend)
        expected, _ = fn(x, *case, reverse=reverse, backend="reference")
        assert_nonfinite_as_reference(y, expected, torch.float32, infinity_may_be_nan=fused)


def test_lu_module_with_float64_input_matches_on_every_backend():
    """Found by the fuzz campaign: with float32 parameters and a float64 x the reference built W = P L U in
    float32, the kernels in float64 (1e-7 apart, float64's tolerance 1e-11). Every backend builds it in
    float64 now (reference.lu_matrix)."""
    torch.manual_seed(0)
    module = gmk.nn.InvConv2dLU(5)
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    with gmk.use_backend("reference"):
        expected = module(x)[0]
        back = module.reverse(expected)
    torch.testing.assert_close(back, x, rtol=1e-12, atol=1e-12)
    for backend in [b for b in backends_under_test("cpu") if torch.float64 in supported_dtypes(b)]:
        with gmk.use_backend(backend):
            torch.testing.assert_close(module(x)[0], expected, rtol=1e-12, atol=1e-12)
