"""gmk.vector_quantize: the declarations of gmkernels::vector_quantize{,_statistics} and the public functions.

Semantics: docs/conventions.md, "Vector quantisation". The ops take x as an (outer, D, inner) array, the
code dimension in the middle: ``vector_quantize(x, codebook) -> (quantized, indices, distance)`` searches
the nearest code of every position through tiles of the codebook with a running argmin (no (positions, K)
matrix) and returns the codes in x's layout, the indices (outer, inner) and the squared distance to the
chosen code; ``vector_quantize_statistics(x, indices, num_codes) -> (counts, sums)`` is the segment sum of
the EMA codebook update, and, applied to the gradient of quantized, the codebook's gradient.

Autograd: quantized passes its gradient to x unchanged (straight-through) and to the codebook as the
lookup's (rows of the gradient added per code, by the statistics op); distance is differentiable with
respect to x alone, 2 (x − q) per element (the chosen code is a constant: the commitment loss).
"""
from __future__ import annotations

import math

import torch

from .._backend import OpBackends
from .._validation import check_bool
from ..reference import vector_quantize as reference
from ._common import allocation_named, check_float_tensor
from ._declare import Autograd, Op, triton_family

_triton = triton_family("vector_quantize")


# --- argument checks ---------------------------------------------------------------------------------

def check_codebook(function: str, codebook, x: torch.Tensor, code_dim: int) -> None:
    """codebook is a (K >= 1, code_dim) floating-point tensor of x's dtype, on x's device."""
    if not isinstance(codebook, torch.Tensor):
        raise TypeError(f"{function}: codebook must be a torch.Tensor, got {type(codebook).__name__}")
    if not codebook.is_floating_point():
        raise TypeError(f"{function}: codebook must be a floating-point tensor, got {codebook.dtype}")
    if codebook.dim() != 2 or codebook.shape[0] < 1 or codebook.shape[1] != code_dim:
        raise ValueError(f"{function}: codebook must be (codes >= 1, {code_dim}) (the code dimension of x), "
                         f"got shape {tuple(codebook.shape)}")
    if codebook.dtype != x.dtype:
        raise TypeError(f"{function}: codebook must have x's dtype {x.dtype}, got {codebook.dtype}")
    if codebook.device != x.device:
        raise ValueError(f"{function}: codebook must be on x's device {x.device}, got {codebook.device}")


def _check_x3(function: str, x) -> None:
    check_float_tensor(function, "x", x)
    if x.dim() != 3 or x.shape[1] < 1:
        raise ValueError(f"{function}: x must be (outer, dim >= 1, inner), got shape {tuple(x.shape)}")


def check_search(function: str, x, codebook) -> None:
    _check_x3(function, x)
    check_codebook(function, codebook, x, x.shape[1])


def check_indices(function: str, indices, x: torch.Tensor, shape) -> None:
    """indices is an int64 tensor of ``shape`` on x's device."""
    if not isinstance(indices, torch.Tensor):
        raise TypeError(f"{function}: indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dtype != torch.int64:
        raise TypeError(f"{function}: indices must be int64, got {indices.dtype}")
    if tuple(indices.shape) != tuple(shape):
        raise ValueError(f"{function}: indices must have shape {tuple(shape)}, got {tuple(indices.shape)}")
    if indices.device != x.device:
        raise ValueError(f"{function}: indices must be on x's device {x.device}, got {indices.device}")


def check_num_codes(function: str, num_codes) -> None:
    if isinstance(num_codes, bool) or not isinstance(num_codes, int) or num_codes < 1:
        raise ValueError(f"{function}: num_codes must be an int >= 1, got {num_codes!r}")


def check_statistics(function: str, x, indices, num_codes) -> None:
    _check_x3(function, x)
    check_indices(function, indices, x, (x.shape[0], x.shape[2]))
    check_num_codes(function, num_codes)


def check_dim(function: str, x: torch.Tensor, dim) -> int:
    """``dim`` as an index in [0, x.dim()) (negative counts from the end)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"{function}: dim must be an int in [{-x.dim()}, {x.dim() - 1}] (x has shape "
                         f"{tuple(x.shape)}), got {dim!r}")
    return dim % x.dim()


# --- fakes and autograd -----------------------------------------------------------------------------

def _fake_search(x, codebook):
    positions = (x.shape[0], x.shape[2])
    return (x.new_empty(x.shape), x.new_empty(positions, dtype=torch.int64),
            x.new_empty(positions, dtype=reference.accumulate_dtype(x.dtype)))


def _fake_statistics(x, indices, num_codes):
    dtype = reference.accumulate_dtype(x.dtype)
    return x.new_empty((num_codes,), dtype=dtype), x.new_empty((num_codes, x.shape[1]), dtype=dtype)


def _statistics_formula(x, indices, num_codes):
    return reference.vector_quantize_statistics(x, indices, num_codes, dim=1)


def _save_search(ctx, inputs, output):
    x, codebook = inputs
    quantized, indices, _ = output
    ctx.save_for_backward(x, quantized, indices)
    ctx.codes, ctx.codebook_dtype = codebook.shape[0], codebook.dtype


def _backward_search(ops, ctx, grad_quantized, grad_indices, grad_distance):
    x, quantized, indices = ctx.saved_tensors
    grad_x = grad_codebook = None
    if ctx.needs_input_grad[0]:
        grad_x = grad_quantized if grad_quantized is not None else torch.zeros_like(x)
        if grad_distance is not None:  # d ||x − q||² / dx = 2 (x − q), q a constant
            dtype = reference.accumulate_dtype(x.dtype)
            difference = x.to(dtype) - quantized.detach().to(dtype)
            grad_x = (grad_x.to(dtype) + 2 * grad_distance.unsqueeze(1) * difference).to(x.dtype)
    if ctx.needs_input_grad[1] and grad_quantized is not None:
        _, sums = ops.vector_quantize_statistics(grad_quantized, indices, ctx.codes)
        grad_codebook = sums.to(ctx.codebook_dtype)
    return grad_x, grad_codebook


VECTOR_QUANTIZE = Op("vector_quantize", "(Tensor x, Tensor codebook) -> (Tensor, Tensor, Tensor)",
                     check=check_search, fake=_fake_search, triton=_triton and _triton.vector_quantize,
                     autograd=Autograd(_save_search, _backward_search),
                     backends=OpBackends("gmk.vector_quantize"))
VECTOR_QUANTIZE_STATISTICS = Op(
    "vector_quantize_statistics", "(Tensor x, Tensor indices, int num_codes) -> (Tensor, Tensor)",
    check=check_statistics, fake=_fake_statistics, triton=_triton and _triton.vector_quantize_statistics,
    formula=_statistics_formula, backends=OpBackends("gmk.vector_quantize_statistics"))


# --- the kernels' (outer, D, inner) view of x -------------------------------------------------------

def kernel_view(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, bool]:
    """x as (outer, D, inner) without a copy where its layout allows, and whether it is the (positions, D, 1)
    view of a tensor whose code dimension is innermost in memory (channels_last, or dim = -1)."""
    moved = x.movedim(dim, -1)
    if x.dim() > 1 and dim != x.dim() - 1 and moved.is_contiguous():
        return moved.reshape(-1, x.shape[dim], 1), True
    outer, inner = math.prod(x.shape[:dim]), math.prod(x.shape[dim + 1:])
    return x.reshape(outer, x.shape[dim], inner), False


def _from_kernel_view(x: torch.Tensor, dim: int, innermost: bool, quantized, per_position):
    """The ops' outputs in x's shape: quantized in x's layout, the per-position tensors without ``dim``."""
    moved_shape = x.movedim(dim, -1).shape
    positions_shape = moved_shape[:-1]
    quantized = quantized.reshape(moved_shape).movedim(-1, dim) if innermost else quantized.reshape(x.shape)
    return quantized, [t.reshape(positions_shape) for t in per_position]


# --- the public functions ---------------------------------------------------------------------------

def vector_quantize(x: torch.Tensor, codebook: torch.Tensor, *, dim: int = 1, return_distance: bool = False,
                    backend: str = "auto"):
    """The nearest code of every position of x: ``(quantized, indices)``, or ``(quantized, indices, distance)``
    with ``return_distance=True``.

    x holds the code dimension D at ``dim`` (e.g. (N, D, H, W) with dim=1, or (..., D) with dim=-1);
    codebook is (K, D) of x's dtype. indices (int64, x's shape without ``dim``) = argmin over k of the squared
    Euclidean distance, ties to the lowest index as torch.argmin; quantized = codebook[indices] in x's
    layout, with the straight-through gradient to x and the lookup's gradient to the codebook; distance =
    ||x − codebook[indices]||² per position (float32, float64 for float64 x), found in the same pass and
    differentiable with respect to x alone (the commitment loss). Distances are computed in float32 for
    float32, bfloat16 and float16 inputs. No (positions, K) tensor is ever made.
    """
    function = "vector_quantize"
    check_float_tensor(function, "x", x)
    dim = check_dim(function, x, dim)
    check_bool(function, "return_distance", return_distance)
    check_codebook(function, codebook, x, x.shape[dim])
    name = VECTOR_QUANTIZE.select(backend, x.device, x.dtype)
    if name == "reference":
        return reference.vector_quantize(x, codebook, dim, return_distance)
    view, innermost = kernel_view(x, dim)
    quantized, indices, distance = VECTOR_QUANTIZE.run(name, view, codebook)
    quantized, (indices, distance) = _from_kernel_view(x, dim, innermost, quantized, (indices, distance))
    return (quantized, indices, distance) if return_distance else (quantized, indices)


def vector_quantize_statistics(x: torch.Tensor, indices: torch.Tensor, num_codes: int, *, dim: int = 1,
                               check_inputs: bool = True,
                               backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts, sums)`` of positions per code: counts (num_codes,) and sums (num_codes, D) of x over each
    code's positions, float32 (float64 for float64 x); the statistics of the EMA codebook update, as a
    segment sum (no one-hot). indices: int64 in [0, num_codes), x's shape without ``dim``.

    ``check_inputs=False`` skips the range check of the indices (a device synchronisation on a GPU) for
    indices known to be codes, e.g. :func:`vector_quantize`'s; the CPU kernel checks them anyway and the GPU
    kernels skip an index out of range."""
    function = "vector_quantize_statistics"
    check_float_tensor(function, "x", x)
    dim = check_dim(function, x, dim)
    check_num_codes(function, num_codes)
    check_indices(function, indices, x, x.shape[:dim] + x.shape[dim + 1:])
    check_bool(function, "check_inputs", check_inputs)
    if check_inputs and indices.numel() > 0:
        low, high = torch.aminmax(indices)
        if low < 0 or high >= num_codes:
            raise ValueError(f"{function}: indices must be in [0, {num_codes}), got values in "
                             f"[{int(low)}, {int(high)}]")
    name = VECTOR_QUANTIZE_STATISTICS.select(backend, x.device, x.dtype)
    outputs = num_codes * (1 + x.shape[dim]) * (8 if x.dtype == torch.float64 else 4)  # counts and sums
    with allocation_named(function, "num_codes", num_codes, outputs):
        if name == "reference":
            return reference.vector_quantize_statistics(x, indices, num_codes, dim)
        view, innermost = kernel_view(x, dim)
        index_view = indices.reshape(view.shape[0], view.shape[2])
        return VECTOR_QUANTIZE_STATISTICS.run(name, view, index_view, num_codes)
