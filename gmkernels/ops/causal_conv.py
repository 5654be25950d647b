"""gmk.causal_conv1d, gmk.wavenet_layer: validate, pick a backend, run its op; autograd and fakes of
the ops."""
from __future__ import annotations

import numbers

import torch

from .._backend import TRITON_INSTALLED, OpBackends
from .._extension import has_extension
from ..reference import causal_conv as reference


def _check_tensor(op: str, name: str, t, x: torch.Tensor | None = None, optional: bool = False) -> None:
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        kind = "a torch.Tensor or None" if optional else "a torch.Tensor"
        raise TypeError(f"{op}: {name} must be {kind}, got {type(t).__name__}")
    if x is None:
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
        return
    if t.dtype != x.dtype:
        raise TypeError(f"{op}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} must be on x's device {x.device}, got {t.device}")


def _check_shape(op: str, name: str, t: torch.Tensor | None, shape: tuple, expected: str) -> None:
    if t is not None and tuple(t.shape) != shape:
        raise ValueError(f"{op}: {name} must be {expected}, got shape {tuple(t.shape)}")


MAX_REACH = 2**63 - 1  # (k-1)·dilation, how far back the first tap reads: a 64-bit offset


def _check_dilation(op: str, dilation, kernel_size: int) -> None:
    if isinstance(dilation, bool) or not isinstance(dilation, int):
        raise TypeError(f"{op}: dilation must be an int, got {type(dilation).__name__}")
    if dilation < 1:
        raise ValueError(f"{op}: dilation must be >= 1, got {dilation}")
    if max(dilation, (kernel_size - 1) * dilation) > MAX_REACH:
        raise ValueError(f"{op}: dilation={dilation} with kernel size k={kernel_size} reaches back "
                         f"(k-1)·dilation, more than 64-bit offsets hold (2^63 - 1)")


def _check_conv(op: str, x, weight, bias, dilation, weight_name="weight", bias_name="bias") -> None:
    _check_tensor(op, "x", x)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be (N, Cin, T), got shape {tuple(x.shape)}")
    _check_tensor(op, weight_name, weight, x)
    if weight.dim() != 3 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: {weight_name} must be (Cout, Cin={x.shape[1]}, k), "
                         f"got shape {tuple(weight.shape)}")
    if weight.shape[2] == 0:
        raise ValueError(f"{op}: {weight_name}'s kernel size (dim 2) must be >= 1, got 0")
    _check_tensor(op, bias_name, bias, x, optional=True)
    _check_shape(op, bias_name, bias, (weight.shape[0],), f"({weight.shape[0]},)")
    _check_dilation(op, dilation, weight.shape[2])


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
    op = "causal_conv1d"
    _check_conv(op, x, weight, bias, dilation)
    name = CAUSAL_CONV.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.causal_conv1d(x, weight, bias, dilation)
    return _CONV_OPS[name](x, weight, bias, dilation)


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
    op = "wavenet_layer"
    _check_conv(op, x, conv_weight, conv_bias, dilation, "conv_weight", "conv_bias")
    n, r, t = x.shape
    _check_shape(op, "conv_weight", conv_weight, (2 * r, r, conv_weight.shape[2]), f"(2R={2 * r}, R={r}, k)")
    _check_tensor(op, "res_weight", res_weight, x)
    _check_shape(op, "res_weight", res_weight, (r, r), f"(R={r}, R={r})")
    _check_tensor(op, "res_bias", res_bias, x, optional=True)
    _check_shape(op, "res_bias", res_bias, (r,), f"(R={r},)")
    _check_tensor(op, "skip_weight", skip_weight, x)
    if skip_weight.dim() != 2 or skip_weight.shape[1] != r or skip_weight.shape[0] == 0:
        raise ValueError(f"{op}: skip_weight must be (S, R={r}) with S >= 1, "
                         f"got shape {tuple(skip_weight.shape)}")
    _check_tensor(op, "skip_bias", skip_bias, x, optional=True)
    _check_shape(op, "skip_bias", skip_bias, (skip_weight.shape[0],), f"(S={skip_weight.shape[0]},)")
    if cond is not None:
        _check_tensor(op, "cond", cond, x)
        try:
            broadcast = torch.broadcast_shapes(cond.shape, (n, 2 * r, t))
        except RuntimeError:
            broadcast = None
        if cond.dim() != 3 or broadcast != (n, 2 * r, t):
            raise ValueError(f"{op}: cond must be (N={n}, 2R={2 * r}, T={t}) (local) or "
                             f"(N={n}, 2R={2 * r}, 1) (global), got shape {tuple(cond.shape)}")
    if isinstance(residual_scale, bool) or not isinstance(residual_scale, numbers.Real):
        raise TypeError(f"{op}: residual_scale must be a float, got {type(residual_scale).__name__}")
    name = WAVENET_LAYER.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.wavenet_layer(x, conv_weight, conv_bias, res_weight, res_bias, skip_weight,
                                       skip_bias, cond, dilation, float(residual_scale))
    cond3 = None if cond is None else cond.expand(n, 2 * r, t)  # a stride-0 view for global conditioning
    x_next, skip = _LAYER_OPS[name](x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias,
                                    cond3, dilation, float(residual_scale))
    return x_next, skip


# --- autograd and fake tensors, for every backend's ops ------------------------------------------
# causal_conv1d ops: (x, weight, bias, dilation) -> y; backward (grad_out, x, weight, dilation,
# output_mask) -> (grad_x, grad_weight, grad_bias), None where output_mask is False.
# wavenet_layer ops: (x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond,
# dilation, residual_scale) -> (x_next, skip), cond None or (N, 2R, T) (any strides).

def _fake_conv(x, weight, bias, dilation):
    return x.new_empty(x.shape[0], weight.shape[0], x.shape[2])


def _fake_conv_backward(grad_out, x, weight, dilation, output_mask):
    want_x, want_weight, want_bias = output_mask
    return (x.new_empty(x.shape) if want_x else None,
            weight.new_empty(weight.shape) if want_weight else None,
            weight.new_empty(weight.shape[0]) if want_bias else None)


def _register_conv(forward_op, backward_op) -> None:
    def setup_context(ctx, inputs, output):
        x, weight, bias, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.dilation, ctx.has_bias = dilation, bias is not None

    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        output_mask = [needs_x, needs_weight, ctx.has_bias and needs_bias]
        grads = backward_op(grad_out, x, weight, ctx.dilation, output_mask) if any(output_mask) \
            else (None, None, None)
        return *grads, None

    torch.library.register_fake(forward_op)(_fake_conv)
    torch.library.register_fake(backward_op)(_fake_conv_backward)
    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


def _fake_layer(x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation,
                residual_scale):
    return x.new_empty(x.shape), x.new_empty(x.shape[0], skip_weight.shape[0], x.shape[2])


def _fake_layer_backward(grad_x_next, grad_skip, x, conv_weight, conv_bias, res_weight, skip_weight, cond,
                         dilation, residual_scale, output_mask):
    likes = (x, conv_weight, conv_bias, res_weight, res_weight[:, 0], skip_weight, skip_weight[:, 0], cond)
    return tuple(like.new_empty(like.shape) if want and like is not None else None
                 for like, want in zip(likes, output_mask, strict=True))


def _register_layer(forward_op, backward_op) -> None:
    """Fake and autograd of a fused layer op. Neither h nor z is saved: the backward op recomputes
    them from x (one more convolution) and returns every gradient output_mask asks for."""
    def setup_context(ctx, inputs, output):
        x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation, scale = \
            inputs
        ctx.save_for_backward(x, conv_weight, conv_bias, res_weight, skip_weight, cond)
        ctx.dilation, ctx.scale = dilation, scale
        ctx.has_bias = (conv_bias is not None, res_bias is not None, skip_bias is not None)

    def backward(ctx, grad_x_next, grad_skip):
        x, conv_weight, conv_bias, res_weight, skip_weight, cond = ctx.saved_tensors
        needs, (has_conv_bias, has_res_bias, has_skip_bias) = ctx.needs_input_grad, ctx.has_bias
        output_mask = [needs[0], needs[1], has_conv_bias and needs[2], needs[3], has_res_bias and needs[4],
                       needs[5], has_skip_bias and needs[6], cond is not None and needs[7]]
        grads = backward_op(grad_x_next, grad_skip, x, conv_weight, conv_bias, res_weight, skip_weight, cond,
                            ctx.dilation, ctx.scale, output_mask) if any(output_mask) else (None,) * 8
        return *grads, None, None

    torch.library.register_fake(forward_op)(_fake_layer)
    torch.library.register_fake(backward_op)(_fake_layer_backward)
    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


_CONV_OPS, _LAYER_OPS = {}, {}
if has_extension():
    _C = torch.ops.gmkernels
    _register_conv(_C.causal_conv1d.default, _C.causal_conv1d_backward.default)
    _register_layer(_C.wavenet_layer.default, _C.wavenet_layer_backward.default)
    _CONV_OPS["cpu"] = _CONV_OPS["cuda"] = _C.causal_conv1d
    _LAYER_OPS["cpu"] = _LAYER_OPS["cuda"] = _C.wavenet_layer
if TRITON_INSTALLED:
    from ..triton import causal_conv as _triton

    _register_conv(_triton.causal_conv1d, _triton.causal_conv1d_backward)
    _register_layer(_triton.wavenet_layer, _triton.wavenet_layer_backward)
    _CONV_OPS["triton"] = _triton.causal_conv1d
    _LAYER_OPS["triton"] = _triton.wavenet_layer

# The backends with a kernel. "auto" on CUDA tensors tries triton first: not measured on a GPU yet, but
# its GEMMs run on tensor cores and the CUDA kernels' do not (CUDA-core FMAs, float32 accumulation).
_FLOAT_TYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})
_DTYPES = {"reference": _FLOAT_TYPES | {torch.float64}}
_DTYPES.update({name: _FLOAT_TYPES | ({torch.float64} if name == "cpu" else set()) for name in _CONV_OPS})
_AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}
CAUSAL_CONV = OpBackends("gmk.causal_conv1d", dtypes=_DTYPES, auto_order=_AUTO_ORDER)
WAVENET_LAYER = OpBackends("gmk.wavenet_layer", dtypes=_DTYPES, auto_order=_AUTO_ORDER)
