"""VQ-VAE's quantizer (issue 14): gmk.vector_quantize forward+backward with the EMA statistics
(gmk.vector_quantize_statistics), against the quantizer as rosinality's vq-vae-2-pytorch writes it.

The step timed, the same for every peer: the nearest code of every position of x (N, D, H, W), the
commitment loss mean((x − sg(q))²), the per-code counts and sums of the EMA update (not applied), and the
gradient of x for a fixed gradient of quantized and the loss (straight-through plus the commitment term).
Peers: every gmk backend; the eager quantizer (``reference``: the (positions, K) distance matrix, argmax of
its negative, an (positions, K) one-hot for the statistics, the embedding lookup, the straight-through
x + (q − x).detach()) and torch.compile of it.

Shapes: VQ-VAE-2 (Razavi et al. 2019) on 256×256 images at batch 32, K = 512 codes of D = 64: the bottom
level's 64×64 map (N = 32·64·64 = 131072 positions) and the top level's 32×32 (32768); on CPU the same
maps at batch 4 (quick: batch 1). Bytes by hand: x read three times (search,
statistics, backward's commitment term), quantized written and read back, grad_q read, grad_x written, the
indices, distances and their gradient, and the codebook once. FLOPs: the search's 2·N·K·D. Extra memory
(``params["matrix_bytes"]``): the eager quantizer's (N, K) float32 distances and one-hot, which gmk never
makes (the GPU record's peak MiB measures it).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

import gmkernels as gmk

from ..harness import Case, gmk_peers, reference_peers

CODES, CODE_DIM = 512, 64
LEVELS = (("bottom", 64, 64), ("top", 32, 32))  # VQ-VAE-2's code maps of a 256×256 image
BATCH = {"cuda": 32, "cpu": 4}
DTYPES = {"cuda": (torch.float32, torch.bfloat16), "cpu": (torch.float32,)}


def eager_quantize(x: torch.Tensor, embed: torch.Tensor):
    """rosinality's ``Quantize.forward`` (vq-vae-2-pytorch, vqvae.py) on x (N, D, H, W) with embed (D, K):
    quantized (N, D, H, W), the commitment difference, and the EMA statistics (counts, sums (D, K))."""
    flatten = x.permute(0, 2, 3, 1).reshape(-1, embed.shape[0])
    dist = flatten.pow(2).sum(1, keepdim=True) - 2 * flatten @ embed + embed.pow(2).sum(0, keepdim=True)
    _, embed_ind = (-dist).max(1)
    embed_onehot = F.one_hot(embed_ind, embed.shape[1]).type(flatten.dtype)
    embed_ind = embed_ind.view(x.shape[0], *x.shape[2:])
    moved = x.permute(0, 2, 3, 1)
    quantize = F.embedding(embed_ind, embed.transpose(0, 1))
    counts, sums = embed_onehot.sum(0), flatten.detach().transpose(0, 1) @ embed_onehot
    diff = (quantize.detach() - moved).pow(2).mean()
    quantize = moved + (quantize - moved).detach()
    return quantize.permute(0, 3, 1, 2), diff, counts, sums


def gmk_quantize(x: torch.Tensor, codebook: torch.Tensor, backend: str = "auto"):
    """The same step on gmk's ops: the distance of the fused search is the commitment term."""
    quantized, indices, distance = gmk.vector_quantize(x, codebook, return_distance=True, backend=backend)
    counts, sums = gmk.vector_quantize_statistics(x.detach(), indices, codebook.shape[0], backend=backend)
    return quantized, distance.sum() / x.numel(), counts, sums


def step(fn, x, codebook, grad_quantized):
    """The timed call: the forward, then the gradient of x (quantized's gradient and the loss's, 1)."""
    def call():
        quantized, loss, counts, sums = fn(x, codebook)
        return torch.autograd.grad((quantized, loss), x, (grad_quantized, torch.ones_like(loss))), counts, sums
    return call


def _case(device: str, level: str, batch: int, height: int, width: int, dtype: torch.dtype) -> Case:
    x = torch.randn(batch, CODE_DIM, height, width, device=device, dtype=dtype, requires_grad=True)
    codebook = torch.randn(CODES, CODE_DIM, device=device, dtype=dtype)
    grad_quantized = torch.randn_like(x)
    embed = codebook.T.contiguous()  # rosinality keeps the codebook as (D, K)
    positions = batch * height * width
    element = x.element_size()
    tensor = positions * CODE_DIM * element
    per_position = 8 + 4 + 4  # index, distance and its gradient
    peers = {name: step(fn, x, codebook, grad_quantized)
             for name, fn in gmk_peers(gmk_quantize, device).items()}
    peers |= {name: step(lambda x, c, fn=fn: fn(x, embed), x, codebook, grad_quantized)
              for name, fn in reference_peers(eager_quantize).items()}
    return Case(
        name=f"vector_quantize VQ-VAE-2 {level} {batch}×{height}×{width} K={CODES} D={CODE_DIM} "
             f"{str(dtype).removeprefix('torch.')} forward+backward+statistics",
        family="vector_quantize",
        params={"op": "vector_quantize", "level": level, "positions": positions, "codes": CODES,
                "code_dim": CODE_DIM, "dtype": str(dtype), "direction": "forward+backward+statistics",
                "matrix_bytes": 2 * positions * CODES * 4},
        bytes=7 * tensor + positions * per_position + CODES * CODE_DIM * element,
        flops=2 * positions * CODES * CODE_DIM,
        peers=peers,
    )


def cases(device: str, quick: bool) -> list[Case]:
    """GPU: both levels at batch 32, float32 and bfloat16 (quick: the top level). CPU: both levels, float32,
    batch 4 (quick: batch 1)."""
    levels = LEVELS[1:] if quick and device == "cuda" else LEVELS
    batch = 1 if quick and device == "cpu" else BATCH[device]
    return [_case(device, level, batch, height, width, dtype) for level, height, width in levels
            for dtype in DTYPES[device]]
