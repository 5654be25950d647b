"""Triton kernel of WaveNet generation and its launcher: the op gmk_triton::wavenet_generate, declared in
ops/wavenet_generate.py.

One launch per step, one program per batch element: the program embeds the previous sample, runs
every layer (dilated convolution over the ring buffers, conditioning, gate, residual and skip
1x1s), the output head and the sampling, and writes the sample that the next launch embeds. The
arguments and the sampling rule are those of the C++ op (gmkernels/reference/wavenet_generate.py).
Weights are read input-major (repacked once per call), so a program's loads of a weight tile are
contiguous along the output channels. Each 1x1 is a loop over the input channels in BK chunks of
``v[:, None] * w`` summed over the chunk (exact float32, no TF32); the vectors a 1x1 reads (x, z,
relu(skip), hidden) go through a small per-element scratch in global memory, since a register
tensor cannot be cut into chunks.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreted
from ._common import on_device, tanh

BK = 16
NUM_WARPS = 4
MIXTURE_EPS = tl.constexpr(1e-5)


@triton.jit
def _matvec(in_ptr, cin, w_ptr, w_stride, cout, acc, COUT_P: tl.constexpr, BK: tl.constexpr):
    """acc[o] + Σ_i in[i] · w[i · w_stride + o] for o < cout; in is float32 in memory."""
    o = tl.arange(0, COUT_P)
    for k0 in range(0, cin, BK):
        i = k0 + tl.arange(0, BK)
        v = tl.load(in_ptr + i, mask=i < cin, other=0.0)
        w = tl.load(w_ptr + i[:, None] * w_stride + o[None, :], mask=(i[:, None] < cin) & (o[None, :] < cout),
                    other=0.0).to(tl.float32)
        acc += tl.sum(v[:, None] * w, axis=0)
    return acc


@triton.jit
def _load_vector(ptr, n, N_P: tl.constexpr):
    i = tl.arange(0, N_P)
    return tl.load(ptr + i, mask=i < n, other=0.0).to(tl.float32)


@triton.jit
def _step_kernel(emb_ptr, conv_w_ptr, conv_b_ptr, res_w_ptr, res_b_ptr, skip_w_ptr, skip_b_ptr,
                 head_w1_ptr, head_b1_ptr, head_w2_ptr, head_b2_ptr, cond_ptr, uniform_ptr, layer_info_ptr,
                 cache_ptr, scratch_ptr, prev_ptr, samples_ptr,
                 t, N, T, L, R, S, H, P, A, cond_steps, cache_per_batch, scratch_per_batch,
                 residual_scale, temperature, log_scale_min,
                 K: tl.constexpr, R_P: tl.constexpr, S_P: tl.constexpr, H_P: tl.constexpr, P_P: tl.constexpr,
                 BK: tl.constexpr, HAS_COND: tl.constexpr, MIXTURE: tl.constexpr, INTERPRETED: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    rr = tl.arange(0, R_P)
    r_mask = rr < R
    x_buf = scratch_ptr + n * scratch_per_batch  # x (R), z (R), relu(skip) (S), hidden (H)
    z_buf = x_buf + R
    skip_buf = z_buf + R
    hidden_buf = skip_buf + S
    cache = cache_ptr + n * cache_per_batch
    prev = tl.load(prev_ptr + n)
    x = tl.load(emb_ptr + prev * R + rr, mask=r_mask, other=0.0).to(tl.float32)
    tl.store(x_buf + rr, x, mask=r_mask)
    tl.debug_barrier()
    skip = tl.zeros([S_P], dtype=tl.float32)
    for l in range(L):
        d = tl.load(layer_info_ptr + 2 * l)
        past = cache + tl.load(layer_info_ptr + 2 * l + 1)
        memory = (K - 1) * d
        # h = b + cond + Σ_j W_j · x[t - (k-1-j)·d], its halves a (filter) and b (gate) apart.
        h_a = _load_vector(conv_b_ptr + l * 2 * R, R, R_P)
        h_b = _load_vector(conv_b_ptr + l * 2 * R + R, R, R_P)
        if HAS_COND:
            cond_row = cond_ptr + ((l * N + n) * cond_steps + t % cond_steps) * 2 * R
            h_a += _load_vector(cond_row, R, R_P)
            h_b += _load_vector(cond_row + R, R, R_P)
        for j in tl.static_range(K):
            w_tap = conv_w_ptr + (l * K + j) * R * 2 * R
            if j == K - 1:
                tap = x_buf
            else:
                tap = past + ((t - (K - 1 - j) * d + memory) % memory) * R
            h_a = _matvec(tap, R, w_tap, 2 * R, R, h_a, R_P, BK)
            h_b = _matvec(tap, R, w_tap + R, 2 * R, R, h_b, R_P, BK)
        tl.debug_barrier()  # every tap of this step is read: x_t may overwrite row t mod M
        if K > 1:
            tl.store(past + (t % memory) * R + rr, x, mask=r_mask)
        z = tanh(h_a, INTERPRETED) * tl.sigmoid(h_b)
        tl.store(z_buf + rr, z, mask=r_mask)
        tl.debug_barrier()
        skip_bias = _load_vector(skip_b_ptr + l * S, S, S_P)
        skip = _matvec(z_buf, R, skip_w_ptr + l * R * S, S, S, skip + skip_bias, S_P, BK)
        res_bias = _load_vector(res_b_ptr + l * R, R, R_P)
        residual = _matvec(z_buf, R, res_w_ptr + l * R * R, R, R, res_bias, R_P, BK)
        x = (x + residual) * residual_scale
        tl.debug_barrier()  # z and x of this layer are read: both may be overwritten
        tl.store(x_buf + rr, x, mask=r_mask)
        tl.debug_barrier()

    # Head: relu -> 1x1 (S -> H) -> relu -> 1x1 (H -> P).
    ss = tl.arange(0, S_P)
    tl.store(skip_buf + ss, tl.maximum(skip, 0.0), mask=ss < S)
    tl.debug_barrier()
    hidden = _matvec(skip_buf, S, head_w1_ptr, H, H, _load_vector(head_b1_ptr, H, H_P), H_P, BK)
    hh = tl.arange(0, H_P)
    tl.store(hidden_buf + hh, tl.maximum(hidden, 0.0), mask=hh < H)
    tl.debug_barrier()
    out = _matvec(hidden_buf, H, head_w2_ptr, P, P, _load_vector(head_b2_ptr, P, P_P), P_P, BK)

    # The inverse CDF of softmax(logits / temperature) at u0 over the classes or the mixture logits.
    pp = tl.arange(0, P_P)
    count = P // 3 if MIXTURE else P
    valid = pp < count
    logits = tl.where(valid, out, -float("inf"))
    top = tl.max(logits, axis=0)
    e = tl.where(valid, tl.exp((logits - top) / temperature), 0.0)
    cumulative = tl.cumsum(e, axis=0)
    total = tl.max(cumulative, axis=0)
    uniforms = 2 if MIXTURE else 1
    u_row = uniform_ptr + (n * T + t) * uniforms
    below = tl.sum(((cumulative <= tl.load(u_row) * total) & valid).to(tl.int32), axis=0)
    choice = tl.minimum(below, count - 1)
    if MIXTURE:
        mean = tl.sum(tl.where(pp == count + choice, out, 0.0), axis=0)
        log_scale = tl.maximum(tl.sum(tl.where(pp == 2 * count + choice, out, 0.0), axis=0), log_scale_min)
        u = tl.minimum(tl.maximum(tl.load(u_row + 1), MIXTURE_EPS), 1.0 - MIXTURE_EPS)
        value = mean + tl.exp(log_scale) * (tl.log(u) - tl.log(1.0 - u))
        value = tl.minimum(tl.maximum(value, -1.0), 1.0)
        level = tl.floor((value + 1.0) / 2.0 * (A - 1) + 0.5).to(tl.int64)
        sample = tl.minimum(tl.maximum(level, 0), A - 1)
    else:
        sample = choice.to(tl.int64)
    tl.store(samples_ptr + n * T + t, sample)
    tl.store(prev_ptr + n, sample)


def _power_of_2(n: int) -> int:
    return max(2, triton.next_power_of_2(n))


def wavenet_generate(embedding: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor,
                     res_weight: torch.Tensor, res_bias: torch.Tensor, skip_weight: torch.Tensor,
                     skip_bias: torch.Tensor, head_weight1: torch.Tensor, head_bias1: torch.Tensor,
                     head_weight2: torch.Tensor, head_bias2: torch.Tensor, cond: torch.Tensor | None,
                     uniform: torch.Tensor, dilations: list[int], start_class: int, residual_scale: float,
                     temperature: float, head: str, log_scale_min: float) -> torch.Tensor:
    a, r = embedding.shape
    n_layers, k = conv_weight.shape[0], conv_weight.shape[3]
    s, h, p = skip_weight.shape[1], head_weight1.shape[0], head_weight2.shape[0]
    n, steps = uniform.shape[:2]
    device = embedding.device
    offsets, cache_per_batch = [], 0
    for d in dilations:
        offsets.append(cache_per_batch)
        cache_per_batch += (k - 1) * d * r
    layer_info = torch.tensor([[d, offset] for d, offset in zip(dilations, offsets)], dtype=torch.long,
                              device=device)
    cache = torch.zeros(n, max(cache_per_batch, 1), dtype=torch.float32, device=device)
    scratch_per_batch = 2 * r + s + h
    scratch = torch.empty(n, scratch_per_batch, dtype=torch.float32, device=device)
    prev = torch.full((n,), start_class, dtype=torch.long, device=device)
    samples = torch.empty(n, steps, dtype=torch.long, device=device)
    packed = (embedding.contiguous(), conv_weight.permute(0, 3, 2, 1).contiguous(), conv_bias.contiguous(),
              res_weight.transpose(1, 2).contiguous(), res_bias.contiguous(),
              skip_weight.transpose(1, 2).contiguous(), skip_bias.contiguous(), head_weight1.t().contiguous(),
              head_bias1.contiguous(), head_weight2.t().contiguous(), head_bias2.contiguous())
    cond_packed = embedding if cond is None else cond.permute(0, 1, 3, 2).contiguous()
    cond_steps = 1 if cond is None else cond.shape[3]
    uniform = uniform.contiguous()
    with on_device(embedding):
        for t in range(steps):
            _step_kernel[(n,)](
                *packed, cond_packed, uniform, layer_info, cache, scratch, prev, samples,
                t, n, steps, n_layers, r, s, h, p, a, cond_steps, cache_per_batch, scratch_per_batch,
                float(residual_scale), float(temperature), float(log_scale_min),
                K=k, R_P=_power_of_2(r), S_P=_power_of_2(s), H_P=_power_of_2(h), P_P=_power_of_2(p), BK=BK,
                HAS_COND=cond is not None, MIXTURE=head == "logistic_mixture",
                INTERPRETED=triton_interpreted(), num_warps=NUM_WARPS)
    return samples
