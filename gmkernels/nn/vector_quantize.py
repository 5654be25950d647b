"""VQ-VAE's vector quantizer (van den Oord et al. 2017) on the fused :func:`gmk.vector_quantize`."""
from __future__ import annotations

import torch
import torch.distributed as dist

from .._validation import check_bool, check_finite_number, check_int
from ..ops.vector_quantize import check_dim, vector_quantize, vector_quantize_statistics


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp of the entropy of the code distribution ``counts / counts.sum()`` (0 log 0 = 0): K when every
    code is used equally, 1 when one code takes every position."""
    total = counts.sum()
    probabilities = counts / torch.where(total > 0, total, torch.ones_like(total))
    return torch.special.entr(probabilities).sum().exp()


class VectorQuantizer(torch.nn.Module):
    """Nearest-code quantisation of x's code vectors (the code dimension at ``dim``) with a learned codebook.

    ``forward(x)`` → ``(quantized, indices, loss)``: quantized has x's shape and layout (the straight-through
    estimator passes its gradient to x), indices x's shape without ``dim`` (int64), and
    ``loss = commitment · mean((x − sg(q))²)`` over every element of x (Sonnet's and VQ-VAE-2's commitment
    loss), plus the codebook term ``mean((sg(x) − q)²)`` when ``ema=False``; as in VQ-VAE, the codebook learns
from that term (or the EMA) alone, not from the gradient of quantized. The perplexity of the code use
    of the last call (a 0-dim float32 tensor, exp of the entropy of the codes' frequencies) is kept in
    :attr:`last_perplexity`.

    Arguments: ``num_codes`` K and ``code_dim`` D (the codebook is (K, D), N(0, 1) at first; a float32
    buffer ``codebook`` with ``ema=True``, a parameter of that name otherwise); ``commitment`` β; ``ema``:
    update the codebook by exponential moving averages in training mode instead of by gradients;
    ``decay`` γ and ``eps`` ε of that update; ``restart_dead_codes``: replace, in training mode, each code
    whose moving-average count falls below ``dead_code_threshold`` (uses per batch) by a random vector of
    the batch (``ema=True`` only); ``dim``: where x holds the code dimension (1 for (N, D, H, W), -1 for
    (..., D)).

    The EMA update (van den Oord et al. 2017, appendix A.1, with Sonnet's Laplace smoothing of the
    counts): with n_k and s_k the batch's count and sum of positions per code (from the fused
    :func:`gmk.vector_quantize_statistics`, all-reduced across processes under torch.distributed),
    N_k ← γ N_k + (1 − γ) n_k, m_k ← γ m_k + (1 − γ) s_k, Ñ_k = (N_k + ε) / (Σ N + K ε) · Σ N and
    e_k = m_k / Ñ_k. N starts at 1 and m at the initial codebook (each code one pseudo-member at its own
    position), as does a restarted code (at its new vector). Quantisation uses the codebook from before
    the call's update.
    """

    def __init__(self, num_codes: int, code_dim: int, *, commitment: float = 0.25, ema: bool = True,
                 decay: float = 0.99, eps: float = 1e-5, restart_dead_codes: bool = True,
                 dead_code_threshold: float = 0.1, dim: int = 1):
        super().__init__()
        name = "VectorQuantizer"
        check_int(name, "num_codes", num_codes)
        check_int(name, "code_dim", code_dim)
        for argument, value in (("commitment", commitment), ("decay", decay), ("eps", eps),
                                ("dead_code_threshold", dead_code_threshold)):
            check_finite_number(name, argument, value)
        if commitment < 0:
            raise ValueError(f"{name}: commitment must be >= 0, got {commitment!r}")
        if not 0 <= decay < 1:
            raise ValueError(f"{name}: decay must be in [0, 1), got {decay!r}")
        if eps <= 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
        if dead_code_threshold < 0:
            raise ValueError(f"{name}: dead_code_threshold must be >= 0, got {dead_code_threshold!r}")
        check_bool(name, "ema", ema)
        check_bool(name, "restart_dead_codes", restart_dead_codes)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"{name}: dim must be an int, got {dim!r}")
        self.num_codes, self.code_dim, self.dim = num_codes, code_dim, dim
        self.commitment, self.ema, self.decay, self.eps = float(commitment), ema, float(decay), float(eps)
        self.restart_dead_codes, self.dead_code_threshold = restart_dead_codes, float(dead_code_threshold)
        codebook = torch.randn(num_codes, code_dim)
        if ema:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", codebook.clone())
        else:
            self.codebook = torch.nn.Parameter(codebook)
        self.last_perplexity: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        name = "VectorQuantizer"
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name}: input must be a floating-point tensor, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        dim = check_dim(name, x, self.dim)
        if x.shape[dim] != self.code_dim:
            raise ValueError(f"{name}: input must have {self.code_dim} channels at dim {self.dim}, got shape "
                             f"{tuple(x.shape)}")
        codebook = self.codebook.detach().to(x.dtype)  # codes learn from the codebook term or the EMA alone
        quantized, indices, distance = vector_quantize(x, codebook, dim=dim, return_distance=True)
        loss = self.commitment * distance.sum() / max(x.numel(), 1)
        if not self.ema:
            loss = loss + self._codebook_loss(x, indices, dim)
        if self.training and self.ema:
            counts = self._update_codebook(x.detach(), indices, dim)
        else:
            counts = torch.bincount(indices.reshape(-1), minlength=self.num_codes)
        self.last_perplexity = perplexity(counts.float()).detach()
        return quantized, indices, loss

    def _codebook_loss(self, x: torch.Tensor, indices: torch.Tensor, dim: int) -> torch.Tensor:
        """mean((sg(x) − q)²): its gradient moves the chosen codes towards their positions."""
        codes = torch.nn.functional.embedding(indices, self.codebook).float()
        difference = x.detach().movedim(dim, -1).float() - codes
        return (difference * difference).sum() / max(x.numel(), 1)

    @torch.no_grad()
    def _update_codebook(self, x: torch.Tensor, indices: torch.Tensor, dim: int) -> torch.Tensor:
        """The EMA step of the class docstring; returns the (all-reduced) counts of the batch."""
        counts, sums = vector_quantize_statistics(x, indices, self.num_codes, dim=dim, check_inputs=False)
        counts, sums = counts.float(), sums.float()
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        if self.restart_dead_codes and indices.numel() > 0:
            self._restart_dead_codes(x, dim)
        return counts

    def _restart_dead_codes(self, x: torch.Tensor, dim: int) -> None:
        """Codes whose EMA count is below the threshold take random vectors of the batch (rank 0's, broadcast)."""
        rows = x.movedim(dim, -1).reshape(-1, self.code_dim)
        picks = torch.randint(rows.shape[0], (self.num_codes,), device=rows.device)
        candidates = rows[picks].float()
        if _distributed():
            dist.broadcast(candidates, src=0)
        dead = (self.ema_count < self.dead_code_threshold).unsqueeze(1)
        self.codebook.copy_(torch.where(dead, candidates, self.codebook))
        self.ema_sum.copy_(torch.where(dead, candidates, self.ema_sum))
        self.ema_count.copy_(torch.where(dead.squeeze(1), torch.ones_like(self.ema_count), self.ema_count))

    def extra_repr(self) -> str:
        return (f"{self.num_codes}, {self.code_dim}, commitment={self.commitment}, ema={self.ema}, "
                f"decay={self.decay}, eps={self.eps}, restart_dead_codes={self.restart_dead_codes}, dim={self.dim}")
