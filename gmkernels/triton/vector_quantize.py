"""Triton kernels of vector_quantize and their launchers, the ops gmk_triton::vector_quantize{,_statistics}
(declared, with their checks, in gmkernels/ops/vector_quantize.py; math: docs/conventions.md, "Vector
quantisation").

Search: a program takes BLOCK_M positions of x (outer, D, inner) and walks the codebook in tiles of BLOCK_K
codes; each tile's dot products are tl.dot products over chunks of BLOCK_D dimensions (float32 accumulation,
IEEE float32 products for float32 inputs: TF32 would move near-ties), scored ||c||² − 2 x·c, and a running
argmin keeps the best code (strictly lower wins: ties to the lowest index). Statistics: one lane per element
of x, float64 atomics into counts and sums (rounded once to float32).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreted
from ._common import mma, on_device

BLOCK_M, BLOCK_K, MAX_BLOCK_D = 64, 64, 64
STATISTICS_BLOCK = 1024


@triton.jit
def _search_kernel(x_ptr, codebook_ptr, norms_ptr, quantized_ptr, indices_ptr, distance_ptr, positions, inner,
                   dim, codes, stride_outer, stride_dim, stride_inner, PRECISION: tl.constexpr,
                   INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    p = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    live = p < positions
    o, i = p // inner, p % inner
    x_base = o * stride_outer + i * stride_inner  # (BLOCK_M,)
    best = tl.full((BLOCK_M,), float("inf"), tl.float32)
    best_code = tl.zeros((BLOCK_M,), tl.int64)
    for k0 in range(0, codes, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        code_live = k < codes
        dots = tl.zeros((BLOCK_M, BLOCK_K), tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            x_tile = tl.load(x_ptr + x_base[:, None] + d[None, :].to(tl.int64) * stride_dim,
                             mask=live[:, None] & (d[None, :] < dim), other=0.0)
            codes_t = tl.load(codebook_ptr + k[None, :].to(tl.int64) * dim + d[:, None],
                              mask=code_live[None, :] & (d[:, None] < dim), other=0.0)
            dots = mma(x_tile, codes_t, dots, PRECISION, INTERPRETED)
        norms = tl.load(norms_ptr + k, mask=code_live, other=0.0)
        score = norms[None, :] - 2.0 * dots
        # a NaN score (inf - inf, NaN input) never wins: all NaN keeps code 0, as the CUDA and CPU kernels do
        score = tl.where(code_live[None, :] & (score == score), score, float("inf"))
        tile_best = tl.min(score, 1)
        tile_code = tl.argmin(score, 1).to(tl.int64) + k0
        lower = tile_best < best
        best = tl.where(lower, tile_best, best)
        best_code = tl.where(lower, tile_code, best_code)
    distance = tl.zeros((BLOCK_M,), tl.float32)
    out_base = o * dim * inner + i  # quantized is a contiguous (outer, D, inner) array
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        mask = live[:, None] & (d[None, :] < dim)
        code = tl.load(codebook_ptr + best_code[:, None] * dim + d[None, :], mask=mask, other=0.0)
        x_tile = tl.load(x_ptr + x_base[:, None] + d[None, :].to(tl.int64) * stride_dim, mask=mask, other=0.0)
        tl.store(quantized_ptr + out_base[:, None] + d[None, :].to(tl.int64) * inner, code, mask=mask)
        difference = x_tile.to(tl.float32) - code.to(tl.float32)
        distance += tl.sum(difference * difference, 1)
    tl.store(indices_ptr + p, best_code, mask=live)
    tl.store(distance_ptr + p, distance, mask=live)


@triton.jit
def _statistics_kernel(x_ptr, indices_ptr, counts_ptr, sums_ptr, elements, dim, inner, codes, stride_outer,
                       stride_dim, stride_inner, index_stride_outer, index_stride_inner, BLOCK: tl.constexpr):
    m = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = m < elements
    i, d, o = m % inner, (m // inner) % dim, m // (inner * dim)
    k = tl.load(indices_ptr + o * index_stride_outer + i * index_stride_inner, mask=live, other=-1)
    valid = live & (k >= 0) & (k < codes)  # the public function refuses indices out of range; never written
    value = tl.load(x_ptr + o * stride_outer + d * stride_dim + i * stride_inner, mask=valid, other=0.0)
    # float64 accumulators, rounded once by the caller: float32 atomics stop counting at 2^24 positions of a code
    tl.atomic_add(sums_ptr + k * dim + d, value.to(tl.float32).to(tl.float64), mask=valid)
    tl.atomic_add(counts_ptr + k, tl.full((BLOCK,), 1.0, tl.float64), mask=valid & (d == 0))


def _block_d(dim: int) -> int:
    return min(max(16, triton.next_power_of_2(dim)), MAX_BLOCK_D)


def vector_quantize(x: torch.Tensor, codebook: torch.Tensor):
    outer, dim, inner = x.shape
    codebook = codebook.contiguous()
    norms = codebook.float().square().sum(1)
    quantized = torch.empty((outer, dim, inner), dtype=x.dtype, device=x.device)
    indices = torch.empty((outer, inner), dtype=torch.int64, device=x.device)
    distance = torch.empty((outer, inner), dtype=torch.float32, device=x.device)
    positions = outer * inner
    if positions == 0:
        return quantized, indices, distance
    with on_device(x):  # 8 warps: with 4, float32's 64×64 tiles spill on sm_90 (tests/test_zz_triton_compile.py)
        _search_kernel[(triton.cdiv(positions, BLOCK_M),)](
            x, codebook, norms, quantized, indices, distance, positions, inner, dim, codebook.shape[0],
            *x.stride(), PRECISION="ieee", INTERPRETED=triton_interpreted(), BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K,
            BLOCK_D=_block_d(dim), num_warps=8)
    return quantized, indices, distance


def vector_quantize_statistics(x: torch.Tensor, indices: torch.Tensor, num_codes: int):
    outer, dim, inner = x.shape
    counts = torch.zeros(num_codes, dtype=torch.float64, device=x.device)
    sums = torch.zeros((num_codes, dim), dtype=torch.float64, device=x.device)
    elements = x.numel()
    if elements > 0:
        with on_device(x):
            _statistics_kernel[(triton.cdiv(elements, STATISTICS_BLOCK),)](
                x, indices, counts, sums, elements, dim, inner, num_codes, *x.stride(), *indices.stride(),
                BLOCK=STATISTICS_BLOCK)
    return counts.float(), sums.float()
