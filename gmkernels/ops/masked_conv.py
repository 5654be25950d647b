"""gmk.conv_mask, gmk.masked_conv2d, gmk.shifted_conv2d: the declarations of gmkernels::masked_conv2d*,
gmkernels::shifted_conv2d* (and the Triton-only fused gmk_triton::masked_conv2d_gated), and the public functions."""
from __future__ import annotations

import torch

from .._backend import OpBackends
from .._validation import INT64_MAX
from ..reference import masked_conv as reference
from ._common import allocation_named, check_choice, check_like, check_tensor
from ._declare import Autograd, Op, triton_family
from .gated import ACTIVATIONS, gated_activation

MASK_TYPES = ("A", "B")
SHIFTS = ("down", "down_right")
_FLOAT_TYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_GPU_TYPES = _FLOAT_TYPES - {torch.float64}
_DTYPES = {"reference": _FLOAT_TYPES, "cpu": _FLOAT_TYPES, "cuda": _GPU_TYPES, "triton": _GPU_TYPES}
_triton = triton_family("masked_conv")


def _check_positive_int(function: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{function}: {name} must be an int, got {type(value).__name__}")
    if not 1 <= value <= INT64_MAX:
        raise ValueError(f"{function}: {name} must be positive and fit int64, got {value}")


def _check_mask(function: str, kernel_size: int, mask_type: str, in_channels: int, out_channels: int,
                color_groups: int) -> None:
    check_choice(function, "mask_type", mask_type, MASK_TYPES)
    _check_positive_int(function, "color_groups", color_groups)
    if in_channels % color_groups or out_channels % color_groups:
        raise ValueError(f"{function}: color_groups={color_groups} must divide the input and output channel "
                         f"counts, got {in_channels} and {out_channels}")
    if kernel_size == 1 and mask_type == "A" and color_groups == 1:
        raise ValueError(f"{function}: mask_type 'A' with kernel_size 1 and color_groups=1 masks every tap "
                         "(the output would be the bias alone)")


def check_mask_arguments(function: str, kernel_size: int, mask_type: str, in_channels: int, out_channels: int,
                         color_groups: int) -> None:
    """Raises unless the arguments describe a PixelCNN mask (see :func:`conv_mask`) with a live tap."""
    sizes = {"kernel_size": kernel_size, "in_channels": in_channels, "out_channels": out_channels}
    for name, value in sizes.items():
        _check_positive_int(function, name, value)
    if kernel_size % 2 == 0:
        raise ValueError(f"{function}: kernel_size must be odd, got {kernel_size}")
    _check_mask(function, kernel_size, mask_type, in_channels, out_channels, color_groups)


def check_shift(function: str, shift, kernel_width: int) -> None:
    """``shift`` names a PixelCNN++ shift; "down" centres the kernel's columns, so it needs an odd width."""
    check_choice(function, "shift", shift, SHIFTS)
    if shift == "down" and kernel_width % 2 == 0:
        raise ValueError(f"{function}: shift 'down' needs an odd kernel width (weight.shape[3]), "
                         f"got {kernel_width}")


def check_gate_groups(function: str, gate, color_groups: int) -> None:
    """The fused gate pairs output channels j and j + C, which lie in different colour groups when
    color_groups > 1: the pixel's R output would then see its G and B inputs (no longer causal)."""
    if gate is not None and color_groups != 1:
        raise ValueError(f"{function}: gate needs color_groups=1, got {color_groups}: the gate pairs output "
                         "channels j and j + C, which lie in different colour groups; gate each group's own "
                         "halves after the convolution instead (gmkernels.models._autoregressive.grouped_gate)")


def conv_mask(kernel_size: int, mask_type: str, in_channels: int, out_channels: int,
              color_groups: int = 1) -> torch.Tensor:
    """The PixelCNN mask of a k×k kernel, k odd: an (out_channels, in_channels, k, k) float tensor of 0/1.

    Raster order: the rows above the centre and the taps left of it in its row are kept; the centre
    tap only for mask ``"B"``. With ``color_groups=3`` the channels are R, G, B thirds and, at the
    centre tap, output group g sees input groups < g (``"A"``) or <= g (``"B"``). With one colour group
    a k×k mask keeps (k²-1)/2 taps (A) or (k²+1)/2 (B).
    """
    check_mask_arguments("conv_mask", kernel_size, mask_type, in_channels, out_channels, color_groups)
    with allocation_named("conv_mask", "out_channels", out_channels, 4 * out_channels * in_channels * kernel_size**2):
        return reference.conv_mask(kernel_size, mask_type, in_channels, out_channels, color_groups)


# --- the ops: x (N, Cin, H, W) any strides, weight (Cout, Cin, kh, kw) and bias None or (Cout,) of x's dtype;
# y and grad_x are channels_last when x is (dense channels_last and not NCHW), else contiguous. Backward
# ops take (grad_out, x, weight, *geometry, output_mask) and return (grad_x, grad_weight, grad_bias), None
# where output_mask is False; grad_weight is exactly zero at masked weights. ---------------------------

def _check_conv(function: str, x, weight, bias, grad_out=None) -> None:
    check_tensor(function, "x", x, 4, "(N, Cin, H, W)")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or weight.shape[1] != x.shape[1] \
            or 0 in weight.shape[2:]:
        shown = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{function}: weight must be (Cout, Cin={x.shape[1]}, kh, kw) with a non-empty "
                         f"kernel, got {shown}")
    check_like(function, "weight", weight, x)
    check_like(function, "bias", bias, x, weight.shape[:1], optional=True)
    if grad_out is not None:
        check_like(function, "grad_out", grad_out, x, (x.shape[0], weight.shape[0], *x.shape[2:]))


def check_masked(function: str, x, weight, bias, mask_type, color_groups, grad_out=None) -> None:
    _check_conv(function, x, weight, bias, grad_out)
    if weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise ValueError(f"{function}: weight's kernel must be k x k with k odd, got {tuple(weight.shape[2:])}")
    _check_mask(function, weight.shape[2], mask_type, x.shape[1], weight.shape[0], color_groups)


def check_shifted(function: str, x, weight, bias, shift, grad_out=None) -> None:
    _check_conv(function, x, weight, bias, grad_out)
    check_shift(function, shift, weight.shape[3])


def _check_gate(function: str, x: torch.Tensor, weight: torch.Tensor, gate, cond) -> None:
    if gate is None:
        if cond is not None:
            raise ValueError(f"{function}: cond is added before the gate: it needs gate='tanh' or 'identity'")
        return
    check_choice(function, "gate", gate, ACTIVATIONS)
    if weight.shape[0] % 2:
        raise ValueError(f"{function}: gate needs an even number of output channels (weight.shape[0]), "
                         f"got {weight.shape[0]}")
    check_like(function, "cond", cond, x, optional=True)
    if cond is None:
        return
    out_shape = (x.shape[0], weight.shape[0], *x.shape[2:])
    try:
        broadcast = torch.broadcast_shapes(cond.shape, out_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != out_shape:
        raise ValueError(f"{function}: cond of shape {tuple(cond.shape)} does not broadcast to the convolution's "
                         f"output shape {out_shape}")


def check_masked_gated(function: str, x, weight, bias, cond, mask_type, color_groups, gate) -> None:
    check_masked(function, x, weight, bias, mask_type, color_groups)
    check_gate_groups(function, gate, color_groups)
    _check_gate(function, x, weight, gate, cond)


def _check_masked_backward(function: str, grad_out, x, weight, mask_type, color_groups, output_mask) -> None:
    check_masked(function, x, weight, None, mask_type, color_groups, grad_out)


def _check_shifted_backward(function: str, grad_out, x, weight, shift, output_mask) -> None:
    check_shifted(function, x, weight, None, shift, grad_out)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The layout of y and grad_x: x's when x is dense channels_last (and not also NCHW)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _fake(x, weight, bias, *geometry):
    shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_layout(x))


def _fake_backward(grad_out, x, weight, *geometry_and_mask):
    want_x, want_weight, want_bias = geometry_and_mask[-1]
    return (torch.empty_like(x, memory_format=_layout(x)) if want_x else None,
            torch.empty_like(weight, memory_format=torch.contiguous_format) if want_weight else None,
            weight.new_empty(weight.shape[0]) if want_bias else None)


def _save(ctx, inputs, output):
    x, weight, bias, *geometry = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = geometry
    ctx.has_bias = bias is not None


def _backward_with(backward_name: str):
    def backward(ops, ctx, grad_out):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        output_mask = [needs_x, needs_weight, ctx.has_bias and needs_bias]
        grads = getattr(ops, backward_name)(grad_out, x, weight, *ctx.geometry, output_mask)
        return *grads, *(None for _ in ctx.geometry)
    return backward


def _fake_gated(x, weight, bias, cond, mask_type, color_groups, gate):
    shape = (x.shape[0], weight.shape[0] // 2, x.shape[2], x.shape[3])
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_layout(x))


def _save_gated(ctx, inputs, output):
    x, weight, bias, cond, mask_type, color_groups, gate = inputs
    ctx.save_for_backward(x, weight, bias, cond)
    ctx.geometry, ctx.gate = (mask_type, color_groups), gate


def _backward_gated(ops, ctx, grad_y):
    """Recomputes the convolution h (2C channels), takes grad_h from the gated activation's backward op and
    the convolution's gradients from its backward op; cond's gradient is grad_h summed to cond's shape."""
    x, weight, bias, cond = ctx.saved_tensors
    needs_x, needs_weight, needs_bias, needs_cond = ctx.needs_input_grad[:4]
    h = ops.masked_conv2d(x, weight, bias, *ctx.geometry)
    n, channels, height, width = h.shape
    as3 = (n, channels, height * width)
    cond3 = None if cond is None else cond.expand(h.shape).reshape(as3)
    grad_h = ops.gated_backward(grad_y.reshape(n, channels // 2, height * width), h.reshape(as3), cond3,
                                ctx.gate).view(h.shape)
    output_mask = [needs_x, needs_weight, bias is not None and needs_bias]
    grads = ops.masked_conv2d_backward(grad_h, x, weight, *ctx.geometry, output_mask) if any(output_mask) \
        else (None, None, None)
    grad_cond = grad_h.sum_to_size(cond.shape) if cond is not None and needs_cond else None
    return *grads, grad_cond, None, None, None


_GRADS = "-> (Tensor, Tensor, Tensor)"
# Not yet measured on a GPU. Triton first: it is autotuned, software-pipelined and fuses the gate;
# the CUDA kernels stage each tile once (no pipelining). Revisit with benchmarks/ops/masked_conv.py.
_AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}
MASKED_CONV = Op("masked_conv2d", "(Tensor x, Tensor weight, Tensor? bias, str mask_type, int color_groups) -> Tensor",
                 check=check_masked, fake=_fake, triton=_triton and _triton.masked_conv2d,
                 autograd=Autograd(_save, _backward_with("masked_conv2d_backward")),
                 backends=OpBackends("gmk.masked_conv2d", dtypes=_DTYPES, auto_order=_AUTO_ORDER))
MASKED_CONV_BACKWARD = Op(
    "masked_conv2d_backward",
    f"(Tensor grad_out, Tensor x, Tensor weight, str mask_type, int color_groups, bool[3] output_mask) {_GRADS}",
    check=_check_masked_backward, fake=_fake_backward, triton=_triton and _triton.masked_conv2d_backward)
MASKED_CONV_GATED = Op(
    "masked_conv2d_gated",
    "(Tensor x, Tensor weight, Tensor? bias, Tensor? cond, str mask_type, int color_groups, str gate) "
    "-> Tensor",
    check=check_masked_gated, fake=_fake_gated, triton=_triton and _triton.masked_conv2d_gated,
    autograd=Autograd(_save_gated, _backward_gated), cpp=False)
SHIFTED_CONV = Op("shifted_conv2d", "(Tensor x, Tensor weight, Tensor? bias, str shift) -> Tensor",
                  check=check_shifted, fake=_fake, triton=_triton and _triton.shifted_conv2d,
                  autograd=Autograd(_save, _backward_with("shifted_conv2d_backward")),
                  backends=OpBackends("gmk.shifted_conv2d", dtypes=_DTYPES, auto_order=_AUTO_ORDER))
SHIFTED_CONV_BACKWARD = Op(
    "shifted_conv2d_backward", f"(Tensor grad_out, Tensor x, Tensor weight, str shift, bool[3] output_mask) {_GRADS}",
    check=_check_shifted_backward, fake=_fake_backward, triton=_triton and _triton.shifted_conv2d_backward)


# --- the public functions ------------------------------------------------------------------------------

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
    check_masked_gated("masked_conv2d", x, weight, bias, cond, mask_type, color_groups, gate)
    name = MASKED_CONV.select(backend, x.device, x.dtype)
    if gate is not None and MASKED_CONV_GATED.has(name):  # the gate fused into the convolution's epilogue
        return MASKED_CONV_GATED.run(name, x, weight, bias, cond, mask_type, color_groups, gate)
    if name == "reference":
        y = reference.masked_conv2d(x, weight, bias, mask_type, color_groups)
    else:
        y = MASKED_CONV.run(name, x, weight, bias, mask_type, color_groups)
    # Backends without a fused gate run the gated activation after the convolution, on the same backend.
    return y if gate is None else gated_activation(y, cond, activation=gate, backend=name)


def shifted_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                   shift: str = "down", backend: str = "auto") -> torch.Tensor:
    """PixelCNN++'s shifted convolution: stride 1, output (N, Cout, H, W), the zero padding implied.

    ``weight`` is (Cout, Cin, kh, kw). ``shift="down"`` (kw odd, e.g. 2×3): output (i, j) sees rows
    i-kh+1..i and columns j-(kw-1)/2..j+(kw-1)/2. ``"down_right"`` (e.g. 2×2): rows i-kh+1..i and
    columns j-kw+1..j.
    """
    check_shifted("shifted_conv2d", x, weight, bias, shift)
    name = SHIFTED_CONV.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.shifted_conv2d(x, weight, bias, shift)
    return SHIFTED_CONV.run(name, x, weight, bias, shift)
