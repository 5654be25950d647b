"""gmk.causal_conv1d, gmk.wavenet_layer: the declarations of gmkernels::causal_conv1d{,_backward} and
gmkernels::wavenet_layer{,_backward}, and the public functions."""
from __future__ import annotations

import math
import numbers

import torch

from .._backend import OpBackends
from ..reference import causal_conv as reference
from ._common import check_like, check_tensor
from ._declare import Autograd, Op, triton_family

_triton = triton_family("causal_conv")


MAX_REACH = 2**63 - 1  # (k-1)·dilation, how far back the first tap reads: a 64-bit offset


def _check_dilation(op: str, dilation, kernel_size: int) -> None:
    if isinstance(dilation, bool) or not isinstance(dilation, int):
        raise TypeError(f"{op}: dilation must be an int, got {type(dilation).__name__}")
    if dilation < 1:
        raise ValueError(f"{op}: dilation must be >= 1, got {dilation}")
    if max(dilation, (kernel_size - 1) * dilation) > MAX_REACH:
        raise ValueError(f"{op}: dilation={dilation} with kernel size k={kernel_size} reaches back "
                         f"(k-1)·dilation, more than 64-bit offsets hold (2^63 - 1)")


def _check_conv(function: str, x, weight, bias, dilation, weight_name="weight", bias_name="bias") -> None:
    check_tensor(function, "x", x, 3, "(N, Cin, T)")
    check_like(function, weight_name, weight, x)
    if weight.dim() != 3 or weight.shape[1] != x.shape[1] or weight.shape[2] == 0:
        raise ValueError(f"{function}: {weight_name} must be (Cout, Cin={x.shape[1]}, k) with kernel size "
                         f"k >= 1, got shape {tuple(weight.shape)}")
    check_like(function, bias_name, bias, x, (weight.shape[0],), optional=True)
    _check_dilation(function, dilation, weight.shape[2])


def _check_layer_weights(function: str, x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias,
                         dilation) -> None:
    _check_conv(function, x, conv_weight, conv_bias, dilation, "conv_weight", "conv_bias")
    r = x.shape[1]
    if conv_weight.shape[0] != 2 * r:
        raise ValueError(f"{function}: conv_weight must be (2R={2 * r}, R={r}, k), got shape "
                         f"{tuple(conv_weight.shape)}")
    check_like(function, "res_weight", res_weight, x, (r, r))
    check_like(function, "res_bias", res_bias, x, (r,), optional=True)
    check_like(function, "skip_weight", skip_weight, x)
    if skip_weight.dim() != 2 or skip_weight.shape[1] != r or skip_weight.shape[0] == 0:
        raise ValueError(f"{function}: skip_weight must be (S, R={r}) with S >= 1, "
                         f"got shape {tuple(skip_weight.shape)}")
    check_like(function, "skip_bias", skip_bias, x, (skip_weight.shape[0],), optional=True)


def _check_residual_scale(function: str, residual_scale) -> None:
    if isinstance(residual_scale, bool) or not isinstance(residual_scale, numbers.Real):
        raise TypeError(f"{function}: residual_scale must be a float, got {type(residual_scale).__name__}")
    if not math.isfinite(residual_scale):
        raise ValueError(f"{function}: residual_scale must be a finite number, got {residual_scale!r}")


# --- the ops ----------------------------------------------------------------------------------------
# causal_conv1d: (x, weight, bias, dilation) -> y; backward (grad_out, x, weight, dilation, output_mask) ->
# (grad_x, grad_weight, grad_bias), None where output_mask is False.
# wavenet_layer: (x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation,
# residual_scale) -> (x_next, skip), cond None or (N, 2R, T) (any strides: global conditioning by stride 0).

def _check_conv_backward(function: str, grad_out, x, weight, dilation, output_mask) -> None:
    _check_conv(function, x, weight, None, dilation)
    check_like(function, "grad_out", grad_out, x, (x.shape[0], weight.shape[0], x.shape[2]))


def check_layer(function: str, x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond,
                dilation, residual_scale) -> None:
    _check_layer_weights(function, x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, dilation)
    check_like(function, "cond", cond, x, (x.shape[0], 2 * x.shape[1], x.shape[2]), optional=True)
    _check_residual_scale(function, residual_scale)


def _check_layer_backward(function: str, grad_x_next, grad_skip, x, conv_weight, conv_bias, res_weight,
                          skip_weight, cond, dilation, residual_scale, output_mask) -> None:
    check_layer(function, x, conv_weight, conv_bias, res_weight, None, skip_weight, None, cond, dilation,
                residual_scale)
    n, r, t = x.shape
    check_like(function, "grad_x_next", grad_x_next, x, (n, r, t))
    check_like(function, "grad_skip", grad_skip, x, (n, skip_weight.shape[0], t))


def _fake_conv(x, weight, bias, dilation):
    return x.new_empty(x.shape[0], weight.shape[0], x.shape[2])


def _fake_conv_backward(grad_out, x, weight, dilation, output_mask):
    want_x, want_weight, want_bias = output_mask
    return (x.new_empty(x.shape) if want_x else None,
            weight.new_empty(weight.shape) if want_weight else None,
            weight.new_empty(weight.shape[0]) if want_bias else None)


def _save_conv(ctx, inputs, output):
    x, weight, bias, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.dilation, ctx.has_bias = dilation, bias is not None


def _backward_conv(ops, ctx, grad_out):
    x, weight = ctx.saved_tensors
    needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
    output_mask = [needs_x, needs_weight, ctx.has_bias and needs_bias]
    grads = ops.causal_conv1d_backward(grad_out, x, weight, ctx.dilation, output_mask) if any(output_mask) \
        else (None, None, None)
    return *grads, None


def _fake_layer(x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation,
                residual_scale):
    return x.new_empty(x.shape), x.new_empty(x.shape[0], skip_weight.shape[0], x.shape[2])


def _fake_layer_backward(grad_x_next, grad_skip, x, conv_weight, conv_bias, res_weight, skip_weight, cond,
                         dilation, residual_scale, output_mask):
    likes = (x, conv_weight, conv_bias, res_weight, res_weight[:, 0], skip_weight, skip_weight[:, 0], cond)
    return tuple(like.new_empty(like.shape) if want and like is not None else None
                 for like, want in zip(likes, output_mask, strict=True))


def _save_layer(ctx, inputs, output):
    """Neither h nor z is saved: the backward op recomputes them from x (one more convolution)."""
    x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation, scale = inputs
    ctx.save_for_backward(x, conv_weight, conv_bias, res_weight, skip_weight, cond)
    ctx.dilation, ctx.scale = dilation, scale
    ctx.has_bias = (conv_bias is not None, res_bias is not None, skip_bias is not None)


def _backward_layer(ops, ctx, grad_x_next, grad_skip):
    x, conv_weight, conv_bias, res_weight, skip_weight, cond = ctx.saved_tensors
    needs, (has_conv_bias, has_res_bias, has_skip_bias) = ctx.needs_input_grad, ctx.has_bias
    output_mask = [needs[0], needs[1], has_conv_bias and needs[2], needs[3], has_res_bias and needs[4],
                   needs[5], has_skip_bias and needs[6], cond is not None and needs[7]]
    grads = ops.wavenet_layer_backward(grad_x_next, grad_skip, x, conv_weight, conv_bias, res_weight, skip_weight,
                                       cond, ctx.dilation, ctx.scale, output_mask) if any(output_mask) else (None,) * 8
    return *grads, None, None


# "auto" on CUDA tensors tries triton first: not measured on a GPU yet, but its GEMMs run on tensor cores and
# the CUDA kernels' do not (CUDA-core FMAs, float32 accumulation).
_FLOAT_TYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})
_DTYPES = {"reference": _FLOAT_TYPES | {torch.float64}, "cpu": _FLOAT_TYPES | {torch.float64}, "cuda": _FLOAT_TYPES,
           "triton": _FLOAT_TYPES}
_AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}
_GRADS = "-> (Tensor, Tensor, Tensor)"
CAUSAL_CONV = Op("causal_conv1d", "(Tensor x, Tensor weight, Tensor? bias, int dilation) -> Tensor",
                 check=_check_conv, fake=_fake_conv, triton=_triton and _triton.causal_conv1d,
                 autograd=Autograd(_save_conv, _backward_conv),
                 backends=OpBackends("gmk.causal_conv1d", dtypes=_DTYPES, auto_order=_AUTO_ORDER))
CAUSAL_CONV_BACKWARD = Op(
    "causal_conv1d_backward", f"(Tensor grad_out, Tensor x, Tensor weight, int dilation, bool[3] output_mask) {_GRADS}",
    check=_check_conv_backward, fake=_fake_conv_backward, triton=_triton and _triton.causal_conv1d_backward)
WAVENET_LAYER = Op(
    "wavenet_layer",
    "(Tensor x, Tensor conv_weight, Tensor? conv_bias, Tensor res_weight, Tensor? res_bias, Tensor skip_weight, "
    "Tensor? skip_bias, Tensor? cond, int dilation, float residual_scale) -> (Tensor, Tensor)",
    check=check_layer, fake=_fake_layer, triton=_triton and _triton.wavenet_layer,
    autograd=Autograd(_save_layer, _backward_layer),
    backends=OpBackends("gmk.wavenet_layer", dtypes=_DTYPES, auto_order=_AUTO_ORDER))
WAVENET_LAYER_BACKWARD = Op(
    "wavenet_layer_backward",
    "(Tensor grad_x_next, Tensor grad_skip, Tensor x, Tensor conv_weight, Tensor? conv_bias, Tensor res_weight, "
    "Tensor skip_weight, Tensor? cond, int dilation, float residual_scale, bool[8] output_mask) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    check=_check_layer_backward, fake=_fake_layer_backward, triton=_triton and _triton.wavenet_layer_backward)


# --- the public functions --------------------------------------------------------------------------------

def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  dilation: int = 1, backend: str = "auto") -> torch.Tensor:
    """WaveNet's dilated causal convolution: ``y[t] = b + Σ_j W[:, :, j] · x[t - (k-1-j)·dilation]``.

    ``x`` is (N, Cin, T), ``weight`` (Cout, Cin, k) and ``bias`` None or (Cout,); returns (N, Cout, T).
    ``dilation`` >= 1 with the first tap's reach (k-1)·dilation below 2^63 (taps reaching back T or more
    read only zeros, whatever their reach).
    Inputs before the start are zero (the padding is implied, never stored): the same result as
    ``F.conv1d(F.pad(x, ((k-1)·dilation, 0)), weight, bias, dilation=dilation)``. The last tap reads
    the present sample; no tap reads the future. On CUDA tensors float32 multiplies in TF32 when
    ``torch.backends.cudnn.allow_tf32`` is set (Triton backend), as F.conv1d does.
    """
    _check_conv("causal_conv1d", x, weight, bias, dilation)
    name = CAUSAL_CONV.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.causal_conv1d(x, weight, bias, dilation)
    return CAUSAL_CONV.run(name, x, weight, bias, dilation)


def wavenet_layer(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
                  res_weight: torch.Tensor, res_bias: torch.Tensor | None, skip_weight: torch.Tensor,
                  skip_bias: torch.Tensor | None, cond: torch.Tensor | None = None, *, dilation: int,
                  residual_scale: float = 1.0, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """WaveNet's residual layer (arXiv 1609.03499, Fig. 4) in one op; returns ``(x_next, skip)``.

        h = causal_conv1d(x, conv_weight, conv_bias, dilation) + cond
        z = tanh(h[:, :R]) ⊙ σ(h[:, R:])
        x_next = (x + res_weight · z + res_bias) · residual_scale        (N, R, T)
        skip = skip_weight · z + skip_bias                               (N, S, T)

    ``x`` is (N, R, T); ``conv_weight`` (2R, R, k); ``res_weight`` (R, R); ``skip_weight`` (S, R);
    each bias is 1-D ((2R,), (R,), (S,)) or None for no bias. ``cond`` is None, local (N, 2R, T) or
    global (N, 2R, 1) (any shape that broadcasts to (N, 2R, T); never materialised). Typical
    ``residual_scale``: 1 or √0.5. Neither h nor z is stored for the backward, which recomputes them
    from x (one more convolution, no (N, 2R, T) activation kept per layer).
    """
    function = "wavenet_layer"
    _check_layer_weights(function, x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, dilation)
    n, r, t = x.shape
    check_like(function, "cond", cond, x, optional=True)
    if cond is not None:
        try:
            broadcast = torch.broadcast_shapes(cond.shape, (n, 2 * r, t))
        except RuntimeError:
            broadcast = None
        if cond.dim() != 3 or broadcast != (n, 2 * r, t):
            raise ValueError(f"{function}: cond must be (N={n}, 2R={2 * r}, T={t}) (local) or "
                             f"(N={n}, 2R={2 * r}, 1) (global), got shape {tuple(cond.shape)}")
    _check_residual_scale(function, residual_scale)
    name = WAVENET_LAYER.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.wavenet_layer(x, conv_weight, conv_bias, res_weight, res_bias, skip_weight,
                                       skip_bias, cond, dilation, float(residual_scale))
    cond3 = None if cond is None else cond.expand(n, 2 * r, t)  # a stride-0 view for global conditioning
    x_next, skip = WAVENET_LAYER.run(name, x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias,
                                     cond3, dilation, float(residual_scale))
    return x_next, skip
