"""gmk.upfirdn2d and its helpers (StyleGAN2-ADA's setup_filter, upsample2d, downsample2d, filter2d): the
declaration of gmkernels::upfirdn2d and the public functions.

Semantics: docs/conventions.md, "upfirdn2d". The op takes a 2-D filter; a 1-D (separable) filter runs as
two ops, along x with (1, fw) then along y with (fh, 1), each with √gain, as the original does. The
gradient of upfirdn2d with respect to x is an upfirdn2d (down and up swapped, the filter flipped, the
padding of the transposed map), so every order of derivative runs on the same kernels; the filter gets
no gradient.
"""
from __future__ import annotations

import math

import torch

from .._backend import _ALL_FLOAT_TYPES, _FLOAT_TYPES, OpBackends
from .._validation import check_bool, check_finite_number
from ..reference import upfirdn2d as reference
from ._common import check_float_tensor, check_kernel_parameter, check_tensor, compute_dtype
from ._declare import Autograd, Op, triton_family

_triton = triton_family("upfirdn2d")


# --- argument parsing: ints, (x, y) pairs, (x0, x1, y0, y1) -------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_scaling(function: str, name: str, value) -> tuple[int, int]:
    """``up``/``down``: an int or an (x, y) pair of ints >= 1."""
    pair = (value, value) if _is_int(value) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
        raise ValueError(f"{function}: {name} must be an int >= 1 or an (x, y) pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def parse_padding(function: str, value, name: str = "padding") -> tuple[int, int, int, int]:
    """``padding``: an int, an (x, y) pair or (x0, x1, y0, y1), ints (negative crops)."""
    pads = (value,) * 4 if _is_int(value) else value
    if isinstance(pads, (tuple, list)) and len(pads) == 2:
        pads = (pads[0], pads[0], pads[1], pads[1])
    if not isinstance(pads, (tuple, list)) or len(pads) != 4 or not all(_is_int(v) for v in pads):
        raise ValueError(f"{function}: {name} must be an int, an (x, y) pair or (x0, x1, y0, y1), ints, "
                         f"got {value!r}")
    return tuple(int(v) for v in pads)


def filter_size(function: str, f) -> tuple[int, int]:
    """(fw, fh) of a 2-D (fh, fw) or 1-D (taps: fh = fw) filter; (1, 1) for None."""
    if f is None:
        return 1, 1
    check_float_tensor(function, "f", f)
    if f.dim() not in (1, 2) or f.numel() == 0:
        raise ValueError(f"{function}: f must be a non-empty 1-D (separable) or 2-D (fh, fw) filter, "
                         f"got shape {tuple(f.shape)}")
    return f.shape[-1], f.shape[0]


def output_size(size: int, up: int, pad0: int, pad1: int, taps: int, down: int) -> int:
    """Outputs along one axis: the filter positions inside the upsampled, padded image, every down-th."""
    return (size * up + pad0 + pad1 - taps) // down + 1


# --- the op: x (N, C, H, W) any strides; f (fh, fw) float32 (float64 for float64 x) ---------------------

def check_upfirdn2d(function: str, x, f, up, down, padding, flip_filter, gain) -> None:
    check_tensor(function, "x", x, 4, "(N, C, H, W)")
    if not isinstance(f, torch.Tensor) or f.dim() != 2:
        raise ValueError(f"{function}: f must be a 2-D (fh, fw) tensor, got "
                         f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
    check_kernel_parameter(function, "f", f, x, f.shape)
    if f.numel() == 0:
        raise ValueError(f"{function}: f must be non-empty, got shape {tuple(f.shape)}")
    (upx, upy), (downx, downy) = parse_scaling(function, "up", up), parse_scaling(function, "down", down)
    padx0, padx1, pady0, pady1 = parse_padding(function, padding)
    check_bool(function, "flip_filter", flip_filter)
    check_finite_number(function, "gain", gain)
    height = output_size(x.shape[2], upy, pady0, pady1, f.shape[0], downy)
    width = output_size(x.shape[3], upx, padx0, padx1, f.shape[1], downx)
    if height < 1 or width < 1:
        raise ValueError(f"{function}: padding {tuple(padding)} leaves no output (x of shape {tuple(x.shape)}, "
                         f"filter {tuple(f.shape)}, up {tuple(up)}, down {tuple(down)}): the output would be "
                         f"{height}x{width}")


def output_channels_last(x: torch.Tensor) -> bool:
    """Outputs (and gradients) are channels_last where x is channels_last and not also contiguous."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _fake(x, f, up, down, padding, flip_filter, gain):
    height = output_size(x.shape[2], up[1], padding[2], padding[3], f.shape[0], down[1])
    width = output_size(x.shape[3], up[0], padding[0], padding[1], f.shape[1], down[0])
    fmt = torch.channels_last if output_channels_last(x) else torch.contiguous_format
    return x.new_empty(x.shape[0], x.shape[1], height, width).contiguous(memory_format=fmt)


def transposed_padding(x_size, y_size, f_size, up, down, padding) -> list[int]:
    """The padding (x0, x1, y0, y1) of the upfirdn2d that maps y's gradient back to x (up and down swapped,
    the filter flipped): it lands on x's size exactly."""
    (iw, ih), (ow, oh), (fw, fh) = x_size, y_size, f_size
    (upx, upy), (downx, downy) = up, down
    padx0, _, pady0, _ = padding
    return [fw - padx0 - 1, iw * upx - ow * downx + padx0 - upx + 1,
            fh - pady0 - 1, ih * upy - oh * downy + pady0 - upy + 1]


def _save(ctx, inputs, output):
    x, f, up, down, padding, flip_filter, gain = inputs
    ctx.save_for_backward(f)
    ctx.args = (tuple(up), tuple(down), tuple(padding), flip_filter, gain)
    ctx.x_size = (x.shape[3], x.shape[2])


def _backward(ops, ctx, grad_y):
    f, = ctx.saved_tensors
    up, down, padding, flip_filter, gain = ctx.args
    pads = transposed_padding(ctx.x_size, (grad_y.shape[3], grad_y.shape[2]), (f.shape[1], f.shape[0]),
                              up, down, padding)
    grad_x = ops.upfirdn2d(grad_y, f, list(down), list(up), pads, not flip_filter, gain)
    return grad_x, None, None, None, None, None, None


_KERNEL_DTYPES = {"reference": _ALL_FLOAT_TYPES, "cpu": _ALL_FLOAT_TYPES, "cuda": _FLOAT_TYPES, "triton": _FLOAT_TYPES}

UPFIRDN2D = Op("upfirdn2d", "(Tensor x, Tensor f, int[2] up, int[2] down, int[4] padding, bool flip_filter, "
               "float gain) -> Tensor", check=check_upfirdn2d, fake=_fake, triton=_triton and _triton.upfirdn2d,
               autograd=Autograd(_save, _backward), backends=OpBackends("gmk.upfirdn2d", dtypes=_KERNEL_DTYPES))


# --- the public functions ----------------------------------------------------------------------------

def setup_filter(f, *, normalize: bool = True, flip_filter: bool = False, gain: float = 1,
                 separable: bool | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """A float32 FIR filter for :func:`upfirdn2d` from taps (a tensor, array or list; a scalar is one tap;
    None the identity). 1-D taps become separable where ``separable`` says so (by default: 8 taps or more)
    and their outer product otherwise; ``normalize`` divides by the sum (the DC gain becomes 1),
    ``flip_filter`` flips it, and the result is scaled by ``gain`` (``gain ** (f.dim() / 2)`` per tap)."""
    function = "setup_filter"
    if isinstance(f, torch.Tensor) and f.device.type == "meta" and torch.device(device).type != "meta":
        raise ValueError(f"setup_filter: f is a tensor on the meta device (shape {tuple(f.shape)}, no values), "
                         f"so no filter can be made on device {str(device)!r}: pass taps with values, or "
                         "device='meta' for a meta filter")
    try:
        f = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as error:  # ragged lists, strings, complex values
        raise ValueError(f"setup_filter: f must be taps convertible to a float32 tensor, got {f!r} ({error})") \
            from None
    if f.dim() > 2 or f.numel() == 0:
        raise ValueError(f"setup_filter: f must be a scalar, 1-D taps or a 2-D filter, non-empty, "
                         f"got shape {tuple(f.shape)}")
    for name, value in (("normalize", normalize), ("flip_filter", flip_filter)):
        check_bool(function, name, value)
    check_finite_number(function, "gain", gain)
    if separable is not None:
        check_bool(function, "separable", separable)
    _check_finite_taps("f", f)
    f = f.reshape(1) if f.dim() == 0 else f.clone()
    if separable is None:
        separable = f.dim() == 1 and f.numel() >= 8
    if f.dim() == 1 and not separable:
        f = torch.outer(f, f)
    if f.dim() != (1 if separable else 2):
        raise ValueError(f"setup_filter: separable=True needs 1-D taps, got shape {tuple(f.shape)}")
    if normalize:
        f /= f.sum()
        _check_finite_taps("f (normalize=True divides by the taps' sum)", f)
    if flip_filter:
        f = f.flip(list(range(f.dim())))
    f = f * (gain ** (f.dim() / 2))
    _check_finite_taps("f (scaled by gain)", f)
    return f.to(device=device)


def _check_finite_taps(name: str, f: torch.Tensor) -> None:
    """A NaN or infinite tap reaches every output (and gradient) it is multiplied into, padding included: a
    filter is made once, so its taps are checked here (on CPU: free; a CUDA tensor is not read back)."""
    if f.device.type == "cpu" and not bool(f.isfinite().all()):
        shown = f.tolist() if f.numel() <= 16 else "non-finite values"
        raise ValueError(f"setup_filter: {name} must be finite, got {shown}")


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, *, up=1, down=1, padding=0, flip_filter: bool = False,
              gain: float = 1, backend: str = "auto") -> torch.Tensor:
    """Upsample (zeros after each pixel), pad (negative crops), FIR-filter and downsample images.

    ``x`` (N, C, H, W); ``f`` a 2-D (fh, fw) or 1-D separable filter (None: identity), given no gradient;
    ``up``/``down`` an int or (x, y); ``padding`` an int, (x, y) or (x0, x1, y0, y1), relative to the
    upsampled image; ``flip_filter`` False convolves, True correlates; ``gain`` scales the result.
    Returns (N, C, (H·up_y + pad_y0 + pad_y1 − fh) // down_y + 1, likewise along x), differentiable to any
    order with respect to x; channels_last when x is.
    """
    function = "upfirdn2d"
    check_tensor(function, "x", x, 4, "(N, C, H, W)")
    filter_size(function, f)
    if f is not None:
        if f.requires_grad:
            raise ValueError(f"{function}: f gets no gradient; pass f.detach() (or a buffer)")
        if f.device != x.device:
            raise ValueError(f"{function}: f must be on x's device {x.device}, got {f.device}")
    up, down = parse_scaling(function, "up", up), parse_scaling(function, "down", down)
    padding = parse_padding(function, padding)
    check_bool(function, "flip_filter", flip_filter)
    check_finite_number(function, "gain", gain)
    if f is not None and f.dim() == 1 and gain < 0:
        raise ValueError(f"{function}: gain must be >= 0 with a separable (1-D) filter (each pass scales by "
                         f"√gain), got {gain!r}")
    kernel_f = torch.ones(1, 1, dtype=compute_dtype(x.dtype), device=x.device) if f is None else \
        f.to(compute_dtype(x.dtype)).contiguous()
    if kernel_f.dim() == 2:
        UPFIRDN2D.check(function, x, kernel_f, up, down, padding, flip_filter, float(gain))
    else:  # the separable passes' checks, on the 2-D filter they amount to
        UPFIRDN2D.check(function, x, torch.outer(kernel_f, kernel_f), up, down, padding, flip_filter, float(gain))
    name = UPFIRDN2D.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.upfirdn2d(x, f, up, down, padding, flip_filter, gain)
    op = UPFIRDN2D.op(name)
    if kernel_f.dim() == 2:
        return op(x, kernel_f, list(up), list(down), list(padding), flip_filter, float(gain))
    root_gain = math.sqrt(gain)  # each pass scales by √gain, as the separable reference does
    y = op(x, kernel_f[None, :], [up[0], 1], [down[0], 1], [padding[0], padding[1], 0, 0], flip_filter, root_gain)
    return op(y, kernel_f[:, None], [1, up[1]], [1, down[1]], [0, 0, padding[2], padding[3]], flip_filter,
              root_gain)


def filter2d(x: torch.Tensor, f: torch.Tensor | None, *, padding=0, flip_filter: bool = False, gain: float = 1,
             backend: str = "auto") -> torch.Tensor:
    """Filters images with ``f``, padded so that the output has x's size; ``padding`` (relative to the
    output) is added on top (negative crops)."""
    padx0, padx1, pady0, pady1 = parse_padding("filter2d", padding)
    fw, fh = filter_size("filter2d", f)
    pads = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pads, flip_filter=flip_filter, gain=gain, backend=backend)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, *, up=2, padding=0, flip_filter: bool = False,
               gain: float = 1, backend: str = "auto") -> torch.Tensor:
    """Upsamples images by ``up`` (int or (x, y)) with the filter ``f``, padded so that the output is
    ``up`` times x's size; ``padding`` (relative to the output) is added on top. The filter is scaled by
    up_x · up_y so that a normalised filter keeps the DC level."""
    upx, upy = parse_scaling("upsample2d", "up", up)
    padx0, padx1, pady0, pady1 = parse_padding("upsample2d", padding)
    fw, fh = filter_size("upsample2d", f)
    check_finite_number("upsample2d", "gain", gain)
    pads = [padx0 + (fw + upx - 1) // 2, padx1 + (fw - upx) // 2, pady0 + (fh + upy - 1) // 2,
            pady1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=pads, flip_filter=flip_filter, gain=gain * upx * upy,
                     backend=backend)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, *, down=2, padding=0, flip_filter: bool = False,
                 gain: float = 1, backend: str = "auto") -> torch.Tensor:
    """Downsamples images by ``down`` (int or (x, y)) with the filter ``f``, padded so that the output is
    x's size divided by ``down``; ``padding`` (relative to the input) is added on top."""
    downx, downy = parse_scaling("downsample2d", "down", down)
    padx0, padx1, pady0, pady1 = parse_padding("downsample2d", padding)
    fw, fh = filter_size("downsample2d", f)
    pads = [padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2, pady0 + (fh - downy + 1) // 2,
            pady1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=pads, flip_filter=flip_filter, gain=gain, backend=backend)
