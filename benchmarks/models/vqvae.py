"""VQ-VAE at its CIFAR-10 configuration (VQVAEConfig's defaults: two stride-2 convolutions, two residual
blocks, 256 channels, 512 codes of 64 dimensions, EMA codebook): a training step (forward, backward with the
straight-through gradient, the EMA codebook update, AdamW step) on a batch of 32 3×32×32 8-bit images.

Peers: the model on gmk's ``auto`` backend (the fused gmk.vector_quantize and its statistics op, no
positions × codes matrix; gmk.bias_act); the same model under ``gmk.use_backend("reference")`` in eager mode,
and ``torch.compile`` of that; and ``one-hot quantizer (eager)``: the model with its quantizer replaced by one
written as rosinality/vq-vae-2-pytorch's ``Quantize`` (the (positions, K) distance matrix, argmin, the
(positions, K) one-hot, the EMA statistics as one-hot products), the same EMA update and loss, the rest of the
model on the reference backend. Every peer has its own copy of the model (the EMA step changes the codebook).
Bytes and FLOPs are counted as in benchmarks/models/pixelcnn.py (hooks on the leaf modules, the
convolutions' multiply-adds; the quantizer's search, 2·positions·K·D FLOPs, is added). On CPU the case is
the digits model (``VQVAEConfig.for_data(1, 17, 8)``, batch 64); with --quick the "tiny" config on 8×8 RGB
images.
"""
from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F

from gmkernels.models import VQVAE, VQVAEConfig

from ..harness import COMPILED, EAGER, Case
from .pixelcnn import _counts, _images, _train_step

GMK, ONE_HOT = "gmk:auto", "one-hot quantizer (eager)"


def _workload(device: str, quick: bool) -> tuple[VQVAEConfig, int, int]:
    """(config, batch, H = W): CUDA the CIFAR-10 model; CPU the digits model; --quick the tiny one."""
    if device == "cuda":
        return VQVAEConfig(), 32, 32
    if quick:
        return VQVAEConfig.for_data(3, 256, 8, size="tiny"), 4, 8
    return VQVAEConfig.for_data(1, 17, 8), 64, 8


class OneHotQuantizer(torch.nn.Module):
    """gmk.nn.VectorQuantizer's forward (EMA codebook, commitment loss, dead codes restarted) written as
    rosinality's ``Quantize``: distances to every code as one (positions, K) matrix, a (positions, K) one-hot
    of the argmin, the EMA counts and sums as its column sums and its product with the positions."""

    def __init__(self, quantizer: torch.nn.Module):
        super().__init__()
        self.q = quantizer  # its buffers and settings
        self.last_perplexity: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = self.q
        flat = x.permute(0, 2, 3, 1).reshape(-1, q.code_dim)
        codebook = q.codebook
        distances = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t()
                     + codebook.pow(2).sum(1)[None])
        indices = distances.argmin(1)
        one_hot = F.one_hot(indices, q.num_codes).type(flat.dtype)
        n, _, h, w = x.shape
        codes = F.embedding(indices, codebook).view(n, h, w, -1).permute(0, 3, 1, 2)
        loss = q.commitment * (x - codes.detach()).pow(2).mean()
        if self.training:
            with torch.no_grad():
                q.ema_count.mul_(q.decay).add_(one_hot.sum(0), alpha=1 - q.decay)
                q.ema_sum.mul_(q.decay).add_(one_hot.t() @ flat.detach(), alpha=1 - q.decay)
                total = q.ema_count.sum()
                smoothed = (q.ema_count + q.eps) / (total + q.num_codes * q.eps) * total
                q.codebook.copy_(q.ema_sum / smoothed[:, None])
                if q.restart_dead_codes:
                    q._restart_dead_codes(flat.detach(), 1)
        self.last_perplexity = torch.exp(torch.special.entr(one_hot.mean(0)).sum()).detach()
        quantized = x + (codes - x).detach()
        return quantized, indices.view(n, h, w), loss


def _training_case(device: str, quick: bool) -> Case:
    config, batch, size = _workload(device, quick)
    torch.manual_seed(0)
    model = VQVAE(config).to(device).train()
    x = _images(model, batch, size, device)
    one_hot = copy.deepcopy(model)
    one_hot.quantizer = OneHotQuantizer(one_hot.quantizer)

    def step(backend: str, peer: torch.nn.Module, compiled: bool = False):  # its own model and AdamW state
        optimizer = torch.optim.AdamW(peer.parameters(), lr=1e-5)
        forward = torch.compile(peer, dynamic=False) if compiled else peer
        return functools.partial(_train_step, peer, forward, optimizer, x, backend)

    peers = {GMK: step("auto", model), EAGER: step("reference", copy.deepcopy(model)),
             COMPILED: step("reference", copy.deepcopy(model), compiled=True),
             ONE_HOT: step("reference", one_hot)}
    activation_bytes, macs = _counts(model, x)
    positions = batch * config.code_size ** 2
    parameter_bytes = sum(p.nbytes for p in model.parameters())
    return Case(
        name=f"vqvae train {tuple(x.shape)} forward+backward+EMA+AdamW",
        family="vqvae",
        params={"model": "vqvae", "kind": "training", "config": {**vars(config)}, "batch": batch,
                "dtype": "float32", "direction": "forward+backward+step"},
        bytes=3 * activation_bytes + 10 * parameter_bytes,
        flops=3 * 2 * macs + 2 * positions * config.num_codes * config.code_dim,
        peers=peers,
        repeats=10 if device == "cpu" else None,
    )


def cases(device: str, quick: bool) -> list[Case]:
    """The VQ-VAE's training step: gmk, the reference backend eager and compiled, a one-hot quantizer."""
    return [_training_case(device, quick)]
