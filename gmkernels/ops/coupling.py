"""gmk.affine_coupling: the declarations of gmkernels::coupling{,_backward} and the public function."""
from __future__ import annotations

import math

import torch

from .._backend import OpBackends
from .._validation import check_bool
from ..reference import coupling as reference
from ..reference.coupling import CHECKERBOARD_LAYOUTS, LAYOUTS, TRANSFORMS
from ._common import check_choice, check_float_tensor, check_like, check_tensor
from ._declare import Autograd, Op, triton_family

_triton = triton_family("coupling")


def h_channels(channels: int, transform: str, layout: str = "halves") -> int:
    """Channels of the coupling network's output for x with ``channels`` channels."""
    transformed = channels if layout in CHECKERBOARD_LAYOUTS else channels // 2
    return transformed if transform == "additive" else 2 * transformed


def _check_options(function: str, transform, layout, reverse) -> bool:
    """Checks the plain arguments; returns whether the layout is a checkerboard."""
    check_choice(function, "transform", transform, TRANSFORMS)
    check_choice(function, "layout", layout, LAYOUTS)
    check_bool(function, "reverse", reverse)
    return layout in CHECKERBOARD_LAYOUTS


def _check_h(function: str, h, x: torch.Tensor, transform: str, layout: str) -> None:
    expected = (x.shape[0], h_channels(x.shape[1], transform, layout), *x.shape[2:])
    if isinstance(h, torch.Tensor) and tuple(h.shape) != expected:
        what = "t" if transform == "additive" else "r and t"
        raise ValueError(f"{function}: h must have shape {expected} ({what} for x of shape "
                         f"{tuple(x.shape)}, transform={transform!r}), got {tuple(h.shape)}")
    check_like(function, "h", h, x, expected)


def _check_public(function: str, x, h, transform, layout, reverse) -> None:
    check_float_tensor(function, "x", x)
    checkerboard = _check_options(function, transform, layout, reverse)
    if x.dim() < (3 if checkerboard else 2):
        shape = "(N, C, *spatial) with a spatial dimension" if checkerboard else "(N, C, *spatial)"
        raise ValueError(f"{function}: x must be {shape} for layout={layout!r}, got shape {tuple(x.shape)}")
    _check_channels(function, x, checkerboard)
    check_float_tensor(function, "h", h)
    _check_h(function, h, x, transform, layout)


def _check_channels(function: str, x: torch.Tensor, checkerboard: bool) -> None:
    if x.shape[1] % 2 and not checkerboard:
        raise ValueError(f"{function}: x must have an even number of channels C (x_a, x_b halves), "
                         f"got C = {x.shape[1]}")


# --- the ops: x (outer, C, inner), C even, or (outer, C, height, width) for a checkerboard layout, any
# strides; h holds r and t at x's positions (see affine_coupling); y contiguous, logdet (outer,) in
# logdet_dtype(x.dtype). ------------------------------------------------------------------------------

def check_coupling(function: str, x, h, transform, layout, reverse, grad_y=None, grad_logdet=None) -> None:
    checkerboard = _check_options(function, transform, layout, reverse)
    check_tensor(function, "x", x, 4 if checkerboard else 3,
                 "(outer, C, height, width)" if checkerboard else "(outer, C, inner)")
    _check_channels(function, x, checkerboard)
    _check_h(function, h, x, transform, layout)
    if grad_y is not None:
        check_like(function, "grad_y", grad_y, x, x.shape)
    if grad_logdet is not None:
        check_logdet_gradient(function, grad_logdet, x)


def check_logdet_gradient(function: str, grad_logdet, x: torch.Tensor) -> None:
    dtype = reference.logdet_dtype(x.dtype)
    if not isinstance(grad_logdet, torch.Tensor) or tuple(grad_logdet.shape) != (x.shape[0],) \
            or grad_logdet.dtype != dtype or grad_logdet.device != x.device:
        shown = (tuple(grad_logdet.shape), grad_logdet.dtype, str(grad_logdet.device)) \
            if isinstance(grad_logdet, torch.Tensor) else type(grad_logdet).__name__
        error = TypeError if isinstance(grad_logdet, torch.Tensor) and grad_logdet.dtype != dtype else ValueError
        raise error(f"{function}: grad_logdet must be ({x.shape[0]},) {dtype} on x's device {x.device}, got {shown}")


def _check_backward(function: str, grad_y, grad_logdet, x, h, transform, layout, reverse) -> None:
    check_coupling(function, x, h, transform, layout, reverse, grad_y, grad_logdet)


def _fake(x, h, transform, layout, reverse):
    logdet = x.new_empty(x.shape[0], dtype=reference.logdet_dtype(x.dtype))
    return torch.empty_like(x, memory_format=torch.contiguous_format), logdet


def _fake_backward(grad_y, grad_logdet, x, h, transform, layout, reverse):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(h, memory_format=torch.contiguous_format))


def _save(ctx, inputs, output):
    x, h, transform, layout, reverse = inputs
    ctx.save_for_backward(x, h)
    ctx.options = (transform, layout, reverse)


def _backward(ops, ctx, grad_y, grad_logdet):
    x, h = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    if grad_logdet is None:
        grad_logdet = x.new_zeros(x.shape[0], dtype=reference.logdet_dtype(x.dtype))
    grad_x, grad_h = ops.coupling_backward(grad_y, grad_logdet, x, h, *ctx.options)
    return grad_x, grad_h, None, None, None


def _no_double_backward(ops, ctx, grad_grad_x, grad_grad_h):
    raise RuntimeError("affine_coupling: double backward is not supported")


_OPTIONS = "str transform, str layout, bool reverse"
COUPLING = Op("coupling", f"(Tensor x, Tensor h, {_OPTIONS}) -> (Tensor, Tensor)", check=check_coupling, fake=_fake,
              triton=_triton and _triton.coupling, autograd=Autograd(_save, _backward),
              backends=OpBackends("gmk.affine_coupling"))
COUPLING_BACKWARD = Op(
    "coupling_backward", f"(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor h, {_OPTIONS}) -> (Tensor, Tensor)",
    check=_check_backward, fake=_fake_backward, triton=_triton and _triton.coupling_backward,
    autograd=Autograd(lambda ctx, inputs, output: None, _no_double_backward),
    dtype_of=lambda grad_y, grad_logdet, x, *rest: x)


# --- the public function ---------------------------------------------------------------------------

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
    _check_public("affine_coupling", x, h, transform, layout, reverse)
    name = COUPLING.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.affine_coupling(x, h, transform, layout, reverse)
    view = _checkerboard_view if layout in CHECKERBOARD_LAYOUTS else _channel_view
    y_view, logdet = COUPLING.run(name, view(x), view(h), transform, layout, reverse)
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
