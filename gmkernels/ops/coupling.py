"""gmk.affine_coupling: validate, pick a backend, run its op; autograd and fakes of the ops."""
from __future__ import annotations

import math

import torch

from .._backend import TRITON_INSTALLED, OpBackends
from .._extension import has_extension
from .._validation import check_bool
from ..reference import coupling as reference
from ..reference.coupling import CHECKERBOARD_LAYOUTS, LAYOUTS, TRANSFORMS
from ._common import check_float_tensor

COUPLING = OpBackends("gmk.affine_coupling")


def h_channels(channels: int, transform: str, layout: str = "halves") -> int:
    """Channels of the coupling network's output for x with ``channels`` channels."""
    transformed = channels if layout in CHECKERBOARD_LAYOUTS else channels // 2
    return transformed if transform == "additive" else 2 * transformed


def _check_inputs(x, h, transform: str, layout: str, reverse) -> None:
    check_float_tensor("affine_coupling", "x", x)
    check_float_tensor("affine_coupling", "h", h)
    if transform not in TRANSFORMS:
        raise ValueError(f"affine_coupling: transform must be one of {TRANSFORMS}, got {transform!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"affine_coupling: layout must be one of {LAYOUTS}, got {layout!r}")
    checkerboard = layout in CHECKERBOARD_LAYOUTS
    if x.dim() < (3 if checkerboard else 2):
        shape = "(N, C, *spatial) with a spatial dimension" if checkerboard else "(N, C, *spatial)"
        raise ValueError(f"affine_coupling: x must be {shape} for layout={layout!r}, got shape {tuple(x.shape)}")
    if x.shape[1] % 2 and not checkerboard:
        raise ValueError(f"affine_coupling: x must have an even number of channels C (x_a, x_b halves), "
                         f"got C = {x.shape[1]}")
    check_bool("affine_coupling", "reverse", reverse)
    expected = (x.shape[0], h_channels(x.shape[1], transform, layout), *x.shape[2:])
    if tuple(h.shape) != expected:
        what = "t" if transform == "additive" else "r and t"
        raise ValueError(f"affine_coupling: h must have shape {expected} ({what} for x of shape "
                         f"{tuple(x.shape)}, transform={transform!r}), got {tuple(h.shape)}")
    if h.dtype != x.dtype:
        raise TypeError(f"affine_coupling: h must have x's dtype {x.dtype}, got {h.dtype}")
    if h.device != x.device:
        raise ValueError(f"affine_coupling: h must be on x's device {x.device}, got {h.device}")


def affine_coupling(x: torch.Tensor, h: torch.Tensor, *, transform: str = "glow", layout: str = "halves",
                    reverse: bool = False, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The coupling layer of NICE, RealNVP and Glow: ``(y, logdet)``.

    ``x`` (N, C, *spatial), C even, is split into halves ``x_a, x_b``; ``h`` is the coupling
    network's output on ``x_a``: raw scale ``r`` and shift ``t`` (C channels; C/2 channels, t
    only, for ``"additive"``), as its first and second half (``layout="halves"``) or as
    ``t = h[:, 0::2], r = h[:, 1::2]`` (``"interleaved"``, Glow's TF code). RealNVP's checkerboard
    (``layout="checkerboard"``; any C, at least one spatial dimension): x_a is every channel at the
    positions (i, j) of the last two spatial dimensions with i + j even (odd for
    ``"checkerboard_odd"``), x_b the others; h has 2C channels (C for ``"additive"``), r and t as
    halves at every position, read at x_b's positions only. ``y`` is x with
    ``x_b`` replaced by ``(x_b + t)·σ(r + 2)`` (``"glow"``), ``x_b·exp(r) + t`` (``"realnvp"``) or
    ``x_b + t`` (``"additive"``), and ``logdet`` (N,) is Σ log s over the channels and positions
    of each sample (float32; float64 for float64 x). ``reverse=True`` maps y back to x and
    returns the negated log-determinant. Differentiable in x and h, in both directions.
    """
    _check_inputs(x, h, transform, layout, reverse)
    name = COUPLING.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.affine_coupling(x, h, transform, layout, reverse)
    view = _checkerboard_view if layout in CHECKERBOARD_LAYOUTS else _channel_view
    y_view, logdet = _FORWARD_OPS[name](view(x), view(h), transform, layout, reverse)
    return y_view.view(x.shape), logdet


def _channel_view(t: torch.Tensor) -> torch.Tensor:
    """(N, C, *S) as the ops' (outer, C, inner)."""
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def _checkerboard_view(t: torch.Tensor) -> torch.Tensor:
    """(N, C, *S) as the ops' (N, C', H, W): the spatial dimensions before the last two join the
    channels (the mask does not depend on them); one spatial dimension L is (1, L)."""
    if t.dim() == 3:
        return t.unsqueeze(2)
    return t.reshape(t.shape[0], math.prod(t.shape[1:-2]), *t.shape[-2:])


# --- autograd and fake tensors, the same for the C++ and the Triton ops -------------------------

def _fake_forward(x, h, transform, layout, reverse):
    logdet = x.new_empty(x.shape[0], dtype=reference.logdet_dtype(x.dtype))
    return torch.empty_like(x, memory_format=torch.contiguous_format), logdet


def _fake_backward(grad_y, grad_logdet, x, h, transform, layout, reverse):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(h, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    x, h, transform, layout, reverse = inputs
    ctx.save_for_backward(x, h)
    ctx.options = (transform, layout, reverse)


def _no_double_backward(ctx, grad_grad_x, grad_grad_h):
    raise RuntimeError("affine_coupling: double backward is not supported")


def _register(forward_op, backward_op) -> None:
    def backward(ctx, grad_y, grad_logdet):
        x, h = ctx.saved_tensors
        if grad_y is None:
            grad_y = torch.zeros_like(x)
        if grad_logdet is None:
            grad_logdet = x.new_zeros(x.shape[0], dtype=reference.logdet_dtype(x.dtype))
        grad_x, grad_h = backward_op(grad_y, grad_logdet, x, h, *ctx.options)
        return grad_x, grad_h, None, None, None

    torch.library.register_fake(forward_op)(_fake_forward)
    torch.library.register_fake(backward_op)(_fake_backward)
    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)
    torch.library.register_autograd(backward_op, _no_double_backward,
                                    setup_context=lambda ctx, inputs, output: None)


_FORWARD_OPS = {}
if has_extension():
    _register(torch.ops.gmkernels.coupling.default, torch.ops.gmkernels.coupling_backward.default)
    _FORWARD_OPS["cpu"] = _FORWARD_OPS["cuda"] = torch.ops.gmkernels.coupling
if TRITON_INSTALLED:
    from ..triton import coupling as _triton

    _register(_triton.coupling, _triton.coupling_backward)
    _FORWARD_OPS["triton"] = _triton.coupling
