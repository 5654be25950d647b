"""gmk.conv_mask, gmk.masked_conv2d, gmk.shifted_conv2d: validate, pick a backend, run its op;
autograd and fakes of the ops."""
from __future__ import annotations

import torch

from .._backend import TRITON_INSTALLED, OpBackends
from .._extension import has_extension
from ..reference import masked_conv as reference
from .gated import ACTIVATIONS, gated_activation

MASK_TYPES = ("A", "B")
SHIFTS = ("down", "down_right")
_FLOAT_TYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_GPU_TYPES = _FLOAT_TYPES - {torch.float64}
_DTYPES = {"reference": _FLOAT_TYPES, "cpu": _FLOAT_TYPES, "cuda": _GPU_TYPES, "triton": _GPU_TYPES}
# Not yet measured on a GPU. Triton first: it is autotuned, software-pipelined and fuses the gate;
# the CUDA kernels stage each tile once (no pipelining). Revisit with benchmarks/ops/masked_conv.py.
_AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}
MASKED_CONV = OpBackends("gmk.masked_conv2d", dtypes=_DTYPES, auto_order=_AUTO_ORDER)
SHIFTED_CONV = OpBackends("gmk.shifted_conv2d", dtypes=_DTYPES, auto_order=_AUTO_ORDER)


def _check_positive_int(op: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{op}: {name} must be positive, got {value}")


def _check_mask(op: str, kernel_size: int, mask_type: str, in_channels: int, out_channels: int,
                color_groups: int) -> None:
    if mask_type not in MASK_TYPES:
        raise ValueError(f"{op}: mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    _check_positive_int(op, "color_groups", color_groups)
    if in_channels % color_groups or out_channels % color_groups:
        raise ValueError(f"{op}: color_groups={color_groups} must divide the input and output channel "
                         f"counts, got {in_channels} and {out_channels}")
    if kernel_size == 1 and mask_type == "A" and color_groups == 1:
        raise ValueError(f"{op}: mask_type 'A' with kernel_size 1 and color_groups=1 masks every tap "
                         "(the output would be the bias alone)")


def check_mask_arguments(op: str, kernel_size: int, mask_type: str, in_channels: int, out_channels: int,
                         color_groups: int) -> None:
    """Raises unless the arguments describe a PixelCNN mask (see :func:`conv_mask`) with a live tap."""
    sizes = {"kernel_size": kernel_size, "in_channels": in_channels, "out_channels": out_channels}
    for name, value in sizes.items():
        _check_positive_int(op, name, value)
    if kernel_size % 2 == 0:
        raise ValueError(f"{op}: kernel_size must be odd, got {kernel_size}")
    _check_mask(op, kernel_size, mask_type, in_channels, out_channels, color_groups)


def conv_mask(kernel_size: int, mask_type: str, in_channels: int, out_channels: int,
              color_groups: int = 1) -> torch.Tensor:
    """The PixelCNN mask of a k×k kernel, k odd: an (out_channels, in_channels, k, k) float tensor of 0/1.

    Raster order: the rows above the centre and the taps left of it in its row are kept; the centre
    tap only for mask ``"B"``. With ``color_groups=3`` the channels are R, G, B thirds and, at the
    centre tap, output group g sees input groups < g (``"A"``) or <= g (``"B"``). With one colour group
    a k×k mask keeps (k²-1)/2 taps (A) or (k²+1)/2 (B).
    """
    check_mask_arguments("conv_mask", kernel_size, mask_type, in_channels, out_channels, color_groups)
    return reference.conv_mask(kernel_size, mask_type, in_channels, out_channels, color_groups)


def _check_conv(op: str, x, weight, bias) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating-point tensor, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be (N, Cin, H, W), got shape {tuple(x.shape)}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{op}: weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 4 or weight.shape[1] != x.shape[1] or 0 in weight.shape[2:]:
        raise ValueError(f"{op}: weight must be (Cout, Cin={x.shape[1]}, kh, kw), "
                         f"got shape {tuple(weight.shape)}")
    _check_like_x(op, "weight", x, weight)
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"{op}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.shape != weight.shape[:1]:
            raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        _check_like_x(op, "bias", x, bias)


def _check_like_x(op: str, name: str, x: torch.Tensor, t: torch.Tensor) -> None:
    if t.dtype != x.dtype:
        raise TypeError(f"{op}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} must be on x's device {x.device}, got {t.device}")


def check_gate_groups(op: str, gate, color_groups: int) -> None:
    """The fused gate pairs output channels j and j + C, which lie in different colour groups when
    color_groups > 1: the pixel's R output would then see its G and B inputs (no longer causal)."""
    if gate is not None and color_groups != 1:
        raise ValueError(f"{op}: gate needs color_groups=1, got {color_groups}: the gate pairs output channels "
                         "j and j + C, which lie in different colour groups; gate each group's own halves "
                         "after the convolution instead (gmkernels.models._autoregressive.grouped_gate)")


def _check_gate(op: str, x: torch.Tensor, weight: torch.Tensor, gate, cond) -> None:
    if gate is None:
        if cond is not None:
            raise ValueError(f"{op}: cond is added before the gate: it needs gate='tanh' or 'identity'")
        return
    if gate not in ACTIVATIONS:
        raise ValueError(f"{op}: gate must be None or one of {ACTIVATIONS}, got {gate!r}")
    if weight.shape[0] % 2:
        raise ValueError(f"{op}: gate needs an even number of output channels (weight.shape[0]), "
                         f"got {weight.shape[0]}")
    if cond is None:
        return
    if not isinstance(cond, torch.Tensor):
        raise TypeError(f"{op}: cond must be a torch.Tensor or None, got {type(cond).__name__}")
    _check_like_x(op, "cond", x, cond)
    out_shape = (x.shape[0], weight.shape[0], *x.shape[2:])
    try:
        broadcast = torch.broadcast_shapes(cond.shape, out_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != out_shape:
        raise ValueError(f"{op}: cond of shape {tuple(cond.shape)} does not broadcast to the convolution's "
                         f"output shape {out_shape}")


def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  mask_type: str = "B", color_groups: int = 1, gate: str | None = None,
                  cond: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """PixelCNN's masked convolution: stride 1, zero padding k//2, output (N, Cout, H, W).

    ``weight`` is (Cout, Cin, k, k), k odd; the mask is implied by ``mask_type`` and
    ``color_groups`` (see :func:`conv_mask`): masked weights are never read and get zero gradient.
    ``gate="tanh"`` or ``"identity"`` applies :func:`gmk.gated_activation` to the Cout = 2C output
    channels, ``cond`` (broadcast to the output) added first, and returns C channels (the Triton
    backend fuses it into the convolution and never stores the 2C channels). On CUDA tensors
    float32 multiplies in TF32 when ``torch.backends.cudnn.allow_tf32`` is set, as F.conv2d does.
    """
    op = "masked_conv2d"
    _check_conv(op, x, weight, bias)
    if weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise ValueError(f"{op}: weight's kernel must be k x k with k odd, got {tuple(weight.shape[2:])}")
    _check_mask(op, weight.shape[2], mask_type, x.shape[1], weight.shape[0], color_groups)
    check_gate_groups(op, gate, color_groups)
    _check_gate(op, x, weight, gate, cond)
    name = MASKED_CONV.select(backend, x.device, x.dtype)
    if gate is not None and name in _GATED_OPS:  # the gate fused into the convolution's epilogue
        return _GATED_OPS[name](x, weight, bias, cond, mask_type, color_groups, gate)
    if name == "reference":
        y = reference.masked_conv2d(x, weight, bias, mask_type, color_groups)
    else:
        y = _MASKED_OPS[name](x, weight, bias, mask_type, color_groups)
    # Backends without a fused gate run the gated activation after the convolution, on the same backend.
    return y if gate is None else gated_activation(y, cond, activation=gate, backend=name)


def shifted_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                   shift: str = "down", backend: str = "auto") -> torch.Tensor:
    """PixelCNN++'s shifted convolution: stride 1, output (N, Cout, H, W), the zero padding implied.

    ``weight`` is (Cout, Cin, kh, kw). ``shift="down"`` (kw odd, e.g. 2×3): output (i, j) sees rows
    i-kh+1..i and columns j-(kw-1)/2..j+(kw-1)/2. ``"down_right"`` (e.g. 2×2): rows i-kh+1..i and
    columns j-kw+1..j.
    """
    op = "shifted_conv2d"
    _check_conv(op, x, weight, bias)
    if shift not in SHIFTS:
        raise ValueError(f"{op}: shift must be one of {SHIFTS}, got {shift!r}")
    if shift == "down" and weight.shape[3] % 2 == 0:
        raise ValueError(f"{op}: shift 'down' needs an odd kernel width (weight.shape[3]), "
                         f"got {weight.shape[3]}")
    name = SHIFTED_CONV.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.shifted_conv2d(x, weight, bias, shift)
    return _SHIFTED_OPS[name](x, weight, bias, shift)


# --- autograd and fake tensors, for every backend's ops ------------------------------------------
# Forward ops take (x, weight, bias, *geometry); backward ops (grad_out, x, weight, *geometry,
# output_mask) and return (grad_x, grad_weight, grad_bias), None where output_mask is False.

def _layout(x: torch.Tensor) -> torch.memory_format:
    """The layout of y and grad_x: x's when x is dense channels_last (and not also NCHW)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _fake_forward(x, weight, bias, *geometry):
    shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_layout(x))


def _fake_backward(grad_out, x, weight, *geometry_and_mask):
    want_x, want_weight, want_bias = geometry_and_mask[-1]
    return (torch.empty_like(x, memory_format=_layout(x)) if want_x else None,
            torch.empty_like(weight, memory_format=torch.contiguous_format) if want_weight else None,
            weight.new_empty(weight.shape[0]) if want_bias else None)


def _setup_context(ctx, inputs, output):
    x, weight, bias, *geometry = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = geometry
    ctx.has_bias = bias is not None


def _register(forward_op, backward_op) -> None:
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        output_mask = [needs_x, needs_weight, ctx.has_bias and needs_bias]
        grads = backward_op(grad_out, x, weight, *ctx.geometry, output_mask)
        return *grads, *(None for _ in ctx.geometry)

    torch.library.register_fake(forward_op)(_fake_forward)
    torch.library.register_fake(backward_op)(_fake_backward)
    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)


def _register_gated(forward_op, conv_op, conv_backward_op, gated_backward_op) -> None:
    """Fake and autograd of a fused op (x, weight, bias, cond, mask_type, color_groups, activation).

    The backward recomputes the convolution h (2C channels), takes grad_h from the gated activation's
    backward op and the convolution's gradients from its backward op; cond's gradient is grad_h summed
    to cond's shape.
    """
    def fake(x, weight, bias, cond, mask_type, color_groups, activation):
        shape = (x.shape[0], weight.shape[0] // 2, x.shape[2], x.shape[3])
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_layout(x))

    def setup_context(ctx, inputs, output):
        x, weight, bias, cond, mask_type, color_groups, activation = inputs
        ctx.save_for_backward(x, weight, bias, cond)
        ctx.geometry, ctx.activation = (mask_type, color_groups), activation

    def backward(ctx, grad_y):
        x, weight, bias, cond = ctx.saved_tensors
        needs_x, needs_weight, needs_bias, needs_cond = ctx.needs_input_grad[:4]
        h = conv_op(x, weight, bias, *ctx.geometry)
        n, channels, height, width = h.shape
        as3 = (n, channels, height * width)
        cond3 = None if cond is None else cond.expand(h.shape).reshape(as3)
        grad_h = gated_backward_op(grad_y.reshape(n, channels // 2, height * width), h.reshape(as3), cond3,
                                   ctx.activation).view(h.shape)
        output_mask = [needs_x, needs_weight, bias is not None and needs_bias]
        grads = conv_backward_op(grad_h, x, weight, *ctx.geometry, output_mask) if any(output_mask) \
            else (None, None, None)
        grad_cond = grad_h.sum_to_size(cond.shape) if cond is not None and needs_cond else None
        return *grads, grad_cond, None, None, None

    torch.library.register_fake(forward_op)(fake)
    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


_MASKED_OPS, _SHIFTED_OPS, _GATED_OPS = {}, {}, {}
if has_extension():
    _register(torch.ops.gmkernels.masked_conv2d.default, torch.ops.gmkernels.masked_conv2d_backward.default)
    _register(torch.ops.gmkernels.shifted_conv2d.default, torch.ops.gmkernels.shifted_conv2d_backward.default)
    for _name in ("cpu", "cuda"):  # one op each; the dispatcher picks the device's kernel
        _MASKED_OPS[_name] = torch.ops.gmkernels.masked_conv2d
        _SHIFTED_OPS[_name] = torch.ops.gmkernels.shifted_conv2d
if TRITON_INSTALLED:
    from ..triton import masked_conv as _triton

    _register(_triton.masked_conv2d, _triton.masked_conv2d_backward)
    _register(_triton.shifted_conv2d, _triton.shifted_conv2d_backward)
    _MASKED_OPS["triton"] = _triton.masked_conv2d
    from ..triton.gated import gated_backward as _triton_gated_backward

    _register_gated(_triton.masked_conv2d_gated, _triton.masked_conv2d, _triton.masked_conv2d_backward,
                    _triton_gated_backward)
    _GATED_OPS["triton"] = _triton.masked_conv2d_gated
    _SHIFTED_OPS["triton"] = _triton.shifted_conv2d
