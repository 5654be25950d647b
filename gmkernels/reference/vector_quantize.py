"""Vector quantisation (VQ-VAE, van den Oord et al. 2017) as plain PyTorch ops (any float dtype).

Each position of x (the code dimension D at ``dim``) takes the code of ``codebook`` (K, D) nearest in squared
Euclidean distance, ties to the lowest index (docs/conventions.md, "Vector quantisation"). The search runs
over chunks of positions, so at most ``CHUNK_DISTANCES`` distances exist at once, never (positions, K).
"""
from __future__ import annotations

import math

import torch

CHUNK_DISTANCES = 1 << 20  # scores held at once: a chunk of positions times K


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Distances, counts and sums: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rows_of(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x as (positions, D): the code dimension moved last (a view where x's layout allows)."""
    return x.movedim(dim, -1).reshape(-1, x.shape[dim])


def chunk_positions(codes: int) -> int:
    """Positions per chunk of the search: CHUNK_DISTANCES // K, at least one."""
    return max(1, CHUNK_DISTANCES // max(codes, 1))


def nearest_codes(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The index of the nearest code of each row (positions, D): argmin over k of ||c_k||² − 2 x·c_k
    (||x − c_k||² less ||x||², which does not depend on k), computed per chunk of positions; a NaN score never
    wins (a row of NaN scores gets index 0)."""
    dtype = accumulate_dtype(rows.dtype)
    codes = codebook.detach().to(dtype)
    norms = (codes * codes).sum(1)
    indices = torch.empty(rows.shape[0], dtype=torch.int64, device=rows.device)
    step = chunk_positions(codes.shape[0])
    for start in range(0, rows.shape[0], step):
        chunk = rows[start:start + step].detach().to(dtype)
        scores = torch.addmm(norms, chunk, codes.T, alpha=-2)
        indices[start:start + step] = scores.nan_to_num_(nan=math.inf).argmin(1)  # NaN never wins, as in the kernels
    return indices


class _StraightThrough(torch.autograd.Function):
    """The value of ``lookup`` (in x's layout), the gradient to both x and lookup unchanged. Not written
    x + (lookup − x), which is NaN at an infinite x where the kernels return the code."""

    @staticmethod
    def forward(ctx, x, lookup):
        return torch.empty_like(x).copy_(lookup)

    @staticmethod
    def backward(ctx, grad):
        return grad, grad


def vector_quantize(x: torch.Tensor, codebook: torch.Tensor, dim: int = 1, return_distance: bool = False):
    """``(quantized, indices)`` or ``(quantized, indices, distance)``.

    quantized = codebook[indices] in x's layout, exactly; its gradient passes to x unchanged
    (straight-through) and to the codebook as the lookup's (the gradient rows added per code). distance =
    ||x − codebook[indices]||² per position, in float32 (float64 for float64 x), differentiable with
    respect to x alone (the chosen code is a constant: the commitment loss's gradient).
    """
    dim %= x.dim()
    rows = rows_of(x, dim)
    indices = nearest_codes(rows, codebook)
    looked_up = torch.nn.functional.embedding(indices, codebook)  # (positions, D), the lookup's gradient
    moved = x.movedim(dim, -1)
    lookup = looked_up.reshape(moved.shape).movedim(-1, dim)
    quantized = _StraightThrough.apply(x, lookup)  # exactly the codes in x's layout; the gradient passes to x
    indices = indices.reshape(moved.shape[:-1])
    if not return_distance:
        return quantized, indices
    dtype = accumulate_dtype(x.dtype)
    difference = x.to(dtype) - lookup.detach().to(dtype)
    return quantized, indices, (difference * difference).sum(dim)


def vector_quantize_statistics(x: torch.Tensor, indices: torch.Tensor, num_codes: int, dim: int = 1):
    """``(counts, sums)``: the positions per code (K) and the sum of x over each code's positions (K, D), in
    float32 (float64 for float64 x), with bincount and index_add_ (no one-hot). Counted in integers and summed
    in float64, rounded once: a float32 running count or sum stops growing at 2^24."""
    dim %= x.dim()
    dtype = accumulate_dtype(x.dtype)
    rows = rows_of(x, dim).to(torch.float64)
    flat = indices.reshape(-1)
    counts = torch.bincount(flat, minlength=num_codes)[:num_codes].to(dtype)
    sums = torch.zeros(num_codes, rows.shape[1], dtype=torch.float64, device=x.device).index_add(0, flat, rows)
    return counts, sums.to(dtype)
