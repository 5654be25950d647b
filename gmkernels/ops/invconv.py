"""gmk.invertible_conv1x1, gmk.invertible_conv1x1_lu, gmk.actnorm_conv1x1, gmk.actnorm_conv1x1_lu:
validate, build the (C, C) matrix and bias the data pass applies, pick a backend, run its op.

Every one of them is one pass over the data, y = M x + c at every position (op ``conv1x1``), with M
and c computed from the parameters by tiny (C × C) torch ops in float64, differentiable, on x's device
and without host synchronisation:

- dense forward: M = W, log|det W| from W's LU factorisation (``lu_factor_ex``, shared with the reference:
  ``reference.invconv.log_abs_det``); dense reverse: M = W⁻¹ (``inv_ex``). Neither synchronises
  (documented, with check_errors=False). The gradient of log|det W| is W⁻ᵀ (``inv_ex`` again, in the
  backward only).
- LU forward: M = P L U; LU reverse: M = U⁻¹ L⁻¹ Pᵀ by two triangular solves (no general inverse);
  log|det| = Σ log_s.
- actnorm fused in front: forward M = W diag(e^s), c = M b (so y = W ((x + b) e^s)); reverse
  M = diag(e^-s) W⁻¹, c = -b (so x = e^-s (W⁻¹ y) - b).

Parameters may have any float dtype; the data pass computes in float32 (float64 for float64 x).
Every op is differentiable in x and every trainable parameter, twice (conv1x1's backward op has its
own autograd).

A dense weight singular to working precision (a pivot of its LU factorisation exactly zero or at most
C · ε · max|W|, ε of float64) has log|det W| = -inf and a NaN gradient on every backend. In reverse it
raises a ValueError on CPU tensors; on CUDA reading the flag would synchronise, so the inverse is made
all NaN instead (the output is NaN, visibly) and no error is raised. The LU ops treat a ``perm`` that is
not a permutation matrix the same way (raise on CPU tensors and on the reference backend, NaN output on
CUDA).
"""
from __future__ import annotations

import torch

from .._backend import OpBackends
from .._validation import check_bool
from ..reference import actnorm as reference_actnorm
from ..reference import invconv as reference
from ._common import as_3d, check_kernel_parameter, check_like, check_parameter, check_tensor, check_x, compute_dtype
from ._declare import Autograd, Op, triton_family

_triton = triton_family("invconv")


def _dense(op: str, weight: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, or W⁻¹ in reverse; log|det W|), float64, without host synchronisation on CUDA.

    lu_factor_ex and inv_ex are documented not to synchronise (check_errors=False); inv_ex's
    gradient is -W⁻ᵀ (·) W⁻ᵀ, matrix products only. A W singular to working precision
    (``reference.log_abs_det``) in reverse raises on CPU tensors and is all NaN on CUDA ones.
    """
    weight = weight.double()  # one cast: the gradients of W's uses then sum in float64 and round once
    logabsdet, singular = reference.log_abs_det(weight)
    if not reverse:
        return weight, logabsdet
    if weight.device.type == "cpu" and bool(singular):
        raise ValueError(f"{op}: weight is singular to working precision (a pivot of its LU factorisation "
                         "is at most C · eps · max|weight|): the reverse needs its inverse")
    return reference.inverse(weight, singular), logabsdet


def _nan_unless(valid: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix``, or all NaN where the 0-d ``valid`` is False: how a check that would synchronise with
    a CUDA device (a singular weight, a perm that is no permutation) shows in the output instead."""
    return torch.where(valid, matrix, torch.full_like(matrix, float("nan")))


def _check_permutation(op: str, perm: torch.Tensor, synchronise: bool) -> torch.Tensor:
    """The 0-d bool "perm is a permutation matrix" (entries 0 or 1, one 1 per row and per column).

    With ``synchronise`` (CPU tensors, where reading it costs nothing, and the reference backend) a
    False raises a ValueError; otherwise the caller makes the output NaN with :func:`_nan_unless`.
    """
    binary = ((perm == 0) | (perm == 1)).all()
    valid = binary & (perm.sum(0) == 1).all() & (perm.sum(1) == 1).all()
    if synchronise and not bool(valid):
        shown = perm.tolist() if perm.numel() <= 64 else "other values"
        raise ValueError(f"{op}: perm must be a permutation matrix (entries 0 or 1, exactly one 1 in each "
                         f"row and each column), got {shown}")
    return valid


def _fold_actnorm(matrix, bias, log_scale, reverse: bool,
                  x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, c) of actnorm then ``matrix`` (forward) or ``matrix`` then inverse actnorm (reverse).

    e^{±log_scale} is computed in the kernels' dtype, as the reference's (x + b) e^s is: where it
    overflows there, M is non-finite too (README: non-finite values).
    """
    scale = torch.exp((-log_scale if reverse else log_scale).to(compute_dtype(x.dtype))).double()
    bias = bias.double()
    if reverse:
        return scale[:, None] * matrix, -bias
    fused = matrix * scale[None, :]
    return fused, fused @ bias


def _check_square(op: str, name: str, t, x: torch.Tensor) -> None:
    channels = x.shape[1]
    if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[0] != t.shape[1]:
        raise ValueError(f"{op}: {name} must be square ({channels}, {channels}), got {tuple(t.shape)}")
    check_parameter(op, name, t, x, (channels, channels))


def _check_lu(op: str, x, lower, upper, log_s, sign_s, perm, is_reference: bool) -> torch.Tensor:
    """Checks the LU parameters; returns the 0-d bool of :func:`_check_permutation`."""
    for name, t in (("lower", lower), ("upper", upper), ("perm", perm)):
        _check_square(op, name, t, x)
    for name, t in (("log_s", log_s), ("sign_s", sign_s)):
        check_parameter(op, name, t, x, (x.shape[1],))
    return _check_permutation(op, perm.detach(), synchronise=is_reference or x.device.type == "cpu")


def _check_actnorm(op: str, x, bias, log_scale) -> None:
    for name, t in (("bias", bias), ("log_scale", log_scale)):
        check_parameter(op, name, t, x, (x.shape[1],))


def _run(op: str, x: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor | None, logdet: torch.Tensor,
         reverse: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """y = matrix · x + shift at every position on the backend's op; logdet (float64, 0-d) per sample."""
    name = BACKENDS[op].select(backend, x.device, x.dtype)
    dtype = compute_dtype(x.dtype)
    shift = None if shift is None else shift.to(dtype)
    y = CONV1X1.run(name, as_3d(x), matrix.to(dtype), shift).view(x.shape)
    return y, reference_actnorm.per_sample(reference_actnorm.positions(x) * logdet, x, reverse)


def _is_reference(op: str, backend: str, x: torch.Tensor) -> bool:
    return BACKENDS[op].select(backend, x.device, x.dtype) == "reference"


def invertible_conv1x1(x: torch.Tensor, weight: torch.Tensor, *, reverse: bool = False,
                       backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Glow's invertible 1x1 convolution ``y = W x`` at every position, and its log-determinant.

    ``x`` is (N, C, *S), ``weight`` (C, C). Returns ``(y, logdet)``, logdet (N,) = |S| · log|det W|
    computed in float64 (float32, or float64 for float64 x). ``reverse=True`` applies W⁻¹ and returns
    the negated log-determinant. No host synchronisation on CUDA; a singular weight in reverse raises
    on CPU tensors and gives NaN on CUDA ones (see the module's docstring).
    """
    op = "invertible_conv1x1"
    check_x(op, x)
    check_bool(op, "reverse", reverse)
    _check_square(op, "weight", weight, x)
    if _is_reference(op, backend, x):
        if reverse and x.device.type == "cpu":
            _dense(op, weight.detach(), reverse)  # the same singularity check as the kernels' path
        return reference.invertible_conv1x1(x, weight, reverse)
    matrix, logabsdet = _dense(op, weight, reverse)
    return _run(op, x, matrix, None, logabsdet, reverse, backend)


def invertible_conv1x1_lu(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, log_s: torch.Tensor,
                          sign_s: torch.Tensor, perm: torch.Tensor, *, reverse: bool = False,
                          backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The invertible 1x1 convolution with Glow's LU-decomposed weight.

    ``W = perm · (L ⊙ strict_lower + I) · (U ⊙ strict_upper + diag(sign_s · exp(log_s)))``: only the
    strict triangles of ``lower`` and ``upper`` (C, C) are read; ``log_s``, ``sign_s`` are (C,),
    ``perm`` a (C, C) permutation matrix. logdet (N,) = |S| · Σ log_s. The reverse applies
    U⁻¹ L⁻¹ Pᵀ, built by two triangular solves (never a general inverse).
    """
    op = "invertible_conv1x1_lu"
    check_x(op, x)
    check_bool(op, "reverse", reverse)
    is_reference = _is_reference(op, backend, x)
    valid = _check_lu(op, x, lower, upper, log_s, sign_s, perm, is_reference)
    if is_reference:
        return reference.invertible_conv1x1_lu(x, lower, upper, log_s, sign_s, perm, reverse)
    log_s = log_s.double()  # one cast: both of its uses' gradients then sum in float64, rounded once
    matrix = _nan_unless(valid, reference.lu_matrix(lower, upper, log_s, sign_s, perm, reverse))
    return _run(op, x, matrix, None, log_s.sum(), reverse, backend)


def actnorm_conv1x1(x: torch.Tensor, bias: torch.Tensor, log_scale: torch.Tensor, weight: torch.Tensor, *,
                    reverse: bool = False, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Actnorm then the invertible 1x1 convolution, in one pass over the data.

    Forward ``y = W ((x + bias) · exp(log_scale))``; reverse ``x = W⁻¹ y · exp(-log_scale) - bias``.
    Returns ``(y, logdet)`` with logdet (N,) = |S| · (Σ log_scale + log|det W|), negated in reverse.
    """
    op = "actnorm_conv1x1"
    check_x(op, x)
    check_bool(op, "reverse", reverse)
    _check_actnorm(op, x, bias, log_scale)
    _check_square(op, "weight", weight, x)
    if _is_reference(op, backend, x):
        if reverse and x.device.type == "cpu":
            _dense(op, weight.detach(), reverse)
        return reference.actnorm_conv1x1(x, bias, log_scale, weight, reverse)
    matrix, logabsdet = _dense(op, weight, reverse)
    log_scale = log_scale.double()  # one cast, as log_s in invertible_conv1x1_lu
    matrix, shift = _fold_actnorm(matrix, bias, log_scale, reverse, x)
    return _run(op, x, matrix, shift, log_scale.sum() + logabsdet, reverse, backend)


def actnorm_conv1x1_lu(x: torch.Tensor, bias: torch.Tensor, log_scale: torch.Tensor, lower: torch.Tensor,
                       upper: torch.Tensor, log_s: torch.Tensor, sign_s: torch.Tensor, perm: torch.Tensor, *,
                       reverse: bool = False, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Actnorm then the LU-decomposed invertible 1x1 convolution, in one pass over the data
    (see :func:`actnorm_conv1x1` and :func:`invertible_conv1x1_lu`)."""
    op = "actnorm_conv1x1_lu"
    check_x(op, x)
    check_bool(op, "reverse", reverse)
    _check_actnorm(op, x, bias, log_scale)
    is_reference = _is_reference(op, backend, x)
    valid = _check_lu(op, x, lower, upper, log_s, sign_s, perm, is_reference)
    if is_reference:
        return reference.actnorm_conv1x1_lu(x, bias, log_scale, lower, upper, log_s, sign_s, perm, reverse)
    log_scale, log_s = log_scale.double(), log_s.double()  # one cast each, as in invertible_conv1x1_lu
    matrix = _nan_unless(valid, reference.lu_matrix(lower, upper, log_s, sign_s, perm, reverse))
    matrix, shift = _fold_actnorm(matrix, bias, log_scale, reverse, x)
    return _run(op, x, matrix, shift, log_scale.sum() + log_s.sum(), reverse, backend)


# --- the op: x (N, C, positions) any strides; weight (Cout, C), bias None or (Cout,), float32 (float64
# for float64 x). y = weight · x + bias at every position. ------------------------------------------

def check_conv1x1(function: str, x, weight, bias, grad_y=None) -> None:
    check_tensor(function, "x", x, 3, "(N, C, positions)")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        shown = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{function}: weight must be (Cout, C={x.shape[1]}), got {shown}")
    check_kernel_parameter(function, "weight", weight, x, weight.shape)
    if bias is not None:
        check_kernel_parameter(function, "bias", bias, x, (weight.shape[0],))
    if grad_y is not None:
        check_like(function, "grad_y", grad_y, x, (x.shape[0], weight.shape[0], x.shape[2]))


def _check_backward(function: str, grad_y, x, weight, output_mask) -> None:
    check_conv1x1(function, x, weight, None, grad_y)


def _fake(x, weight, bias):
    return torch.empty(x.shape[0], weight.shape[0], x.shape[2], dtype=x.dtype, device=x.device)


def _fake_backward(grad_y, x, weight, output_mask):
    want_x, want_weight, want_bias = output_mask
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device) if want_x else None,
            torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if want_weight else None,
            weight.new_empty(weight.shape[0]) if want_bias else None)


def _save(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ops, ctx, grad_y):
    x, weight = ctx.saved_tensors
    needs_x, needs_weight, needs_bias = ctx.needs_input_grad
    output_mask = [needs_x, needs_weight, ctx.has_bias and needs_bias]
    if not any(output_mask):
        return None, None, None
    return ops.conv1x1_backward(grad_y, x, weight, output_mask)


def _backward_formula(grad_y, x, weight, output_mask):
    """What conv1x1_backward computes, in torch ops: grad_x = Wᵀ grad_y, grad_W = Σ grad_y xᵀ, Σ grad_y."""
    g = grad_y.to(weight.dtype)
    want_x, want_weight, want_bias = output_mask
    return ((weight.t() @ g).to(x.dtype) if want_x else None,
            (g @ x.to(weight.dtype).transpose(1, 2)).sum(0) if want_weight else None,
            g.sum((0, 2)) if want_bias else None)


CONV1X1 = Op("conv1x1", "(Tensor x, Tensor weight, Tensor? bias) -> Tensor", check=check_conv1x1, fake=_fake,
             triton=_triton and _triton.conv1x1, autograd=Autograd(_save, _backward))
CONV1X1_BACKWARD = Op(
    "conv1x1_backward", "(Tensor grad_y, Tensor x, Tensor weight, bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
    check=_check_backward, fake=_fake_backward, triton=_triton and _triton.conv1x1_backward,
    formula=_backward_formula)
# The four public functions run this op: one backend table each, so that errors name the function called.
BACKENDS = {function: OpBackends(f"gmk.{function}") for function in
            ("invertible_conv1x1", "invertible_conv1x1_lu", "actnorm_conv1x1", "actnorm_conv1x1_lu")}
