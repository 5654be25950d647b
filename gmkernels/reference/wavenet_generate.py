"""WaveNet's autoregressive generation (arXiv 1609.03499 §2; nv-wavenet's inference), in plain PyTorch.

The network, all layers' weights stacked (``GenerationWeights``): the previous sample's class is
embedded (A -> R); L residual layers (``causal_conv.wavenet_layer``) of dilations ``dilations``; the
output head ``relu(Σ skip) -> 1x1 (S -> H) -> relu -> 1x1 (H -> P)``; a sample is drawn from the
head's output:

- ``"softmax"`` (P = A µ-law classes): the class is the inverse CDF of softmax(output / temperature)
  at the uniform u: the number of classes c whose cumulative sum Σ_{j<=c} e_j is <= u · Σ_j e_j,
  with e_j = exp((output_j - max) / temperature) (clamped to A - 1);
- ``"logistic_mixture"`` (P = 3K: K logits, K means, K log-scales; docs/conventions.md,
  "Generation"): a component by the same inverse CDF over the K logits at u_0, then
  v = µ + s (log u_1 - log(1 - u_1)) (u_1 clamped to [1e-5, 1 - 1e-5], log s clamped below at
  ``log_scale_min``), clamped to [-1, 1], and the class of the nearest of the A levels 2q / (A - 1) - 1.

The uniforms (N, T, U), U = 1 or 2, are drawn by the caller, so every backend draws the same
samples from the same noise. ``cond`` is None or the conditioning already projected per layer,
(L, N, 2R, 1) (global) or (L, N, 2R, T) (local), added to the dilated convolution's output.

``wavenet_generate`` is the cached loop (docs/conventions.md, "Generation"): per layer a ring buffer
of the last (k-1)·d inputs, O(L) work per sample. ``wavenet_generate_by_recompute`` runs the whole
network on the samples so far at every step (O(T²)): the definition the cached loop must agree with.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import causal_conv

HEADS = ("softmax", "logistic_mixture")
MIXTURE_EPS = 1e-5  # the logistic's uniform is clamped to [eps, 1 - eps], as PixelCNN++ samples


class GenerationWeights(NamedTuple):
    embedding: torch.Tensor     # (A, R)
    conv_weight: torch.Tensor   # (L, 2R, R, k)
    conv_bias: torch.Tensor     # (L, 2R)
    res_weight: torch.Tensor    # (L, R, R)
    res_bias: torch.Tensor      # (L, R)
    skip_weight: torch.Tensor   # (L, S, R)
    skip_bias: torch.Tensor     # (L, S)
    head_weight1: torch.Tensor  # (H, S)
    head_bias1: torch.Tensor    # (H,)
    head_weight2: torch.Tensor  # (P, H)
    head_bias2: torch.Tensor    # (P,)


def uniforms_per_sample(head: str) -> int:
    return 1 if head == "softmax" else 2


def output_head(weights: GenerationWeights, skip: torch.Tensor) -> torch.Tensor:
    """relu(skip) -> 1x1 -> relu -> 1x1 on (N, S, T) -> (N, P, T)."""
    hidden = F.relu(F.conv1d(F.relu(skip), weights.head_weight1[:, :, None], weights.head_bias1))
    return F.conv1d(hidden, weights.head_weight2[:, :, None], weights.head_bias2)


def network_output(weights: GenerationWeights, dilations, inputs: torch.Tensor, cond: torch.Tensor | None,
                   residual_scale: float) -> torch.Tensor:
    """The head's output (N, P, T) at every step for the input classes (N, T) (the training forward)."""
    x = weights.embedding[inputs].transpose(1, 2)
    skip = 0
    for layer, dilation in enumerate(dilations):
        x, layer_skip = causal_conv.wavenet_layer(
            x, weights.conv_weight[layer], weights.conv_bias[layer], weights.res_weight[layer],
            weights.res_bias[layer], weights.skip_weight[layer], weights.skip_bias[layer],
            None if cond is None else cond[layer], dilation, residual_scale)
        skip = skip + layer_skip
    return output_head(weights, skip)


def categorical(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """Inverse CDF of softmax(logits (N, C) / temperature) at u (N,): int64 (N,)."""
    e = torch.exp((logits - logits.max(dim=1, keepdim=True).values) / temperature)
    cumulative = e.cumsum(dim=1)
    below = (cumulative <= (u * cumulative[:, -1])[:, None]).sum(dim=1)
    return below.clamp(max=logits.shape[1] - 1)


def sample_output(output: torch.Tensor, u: torch.Tensor, head: str, num_classes: int, temperature: float,
                  log_scale_min: float) -> torch.Tensor:
    """The classes (N,) drawn from the head's output (N, P) with uniforms u (N, U)."""
    output = output.to(u.dtype)
    if head == "softmax":
        return categorical(output, u[:, 0], temperature)
    k = output.shape[1] // 3
    component = categorical(output[:, :k], u[:, 0], temperature)[:, None]
    mean = output[:, k:2 * k].gather(1, component)[:, 0]
    log_scale = output[:, 2 * k:].gather(1, component)[:, 0].clamp(min=log_scale_min)
    v = u[:, 1].clamp(MIXTURE_EPS, 1 - MIXTURE_EPS)
    value = (mean + torch.exp(log_scale) * (torch.log(v) - torch.log1p(-v))).clamp(-1, 1)
    return torch.floor((value + 1) / 2 * (num_classes - 1) + 0.5).long().clamp(0, num_classes - 1)


def _cond_at(cond: torch.Tensor | None, layer: int, t: int) -> torch.Tensor | int:
    if cond is None:
        return 0
    return cond[layer, :, :, t if cond.shape[3] > 1 else 0]


def wavenet_generate(weights: GenerationWeights, dilations, cond: torch.Tensor | None, uniform: torch.Tensor,
                     start_class: int, residual_scale: float, temperature: float, head: str,
                     log_scale_min: float) -> torch.Tensor:
    """Samples (N, T) int64 by the cached loop: O(L) per sample."""
    n, steps = uniform.shape[:2]
    _, two_r, r, k = weights.conv_weight.shape
    # past[l][:, :, (τ mod M)] holds layer l's input at time τ for the last M = (k-1)·d times; zero
    # before the start, as the causal convolution's padding.
    past = [weights.embedding.new_zeros(n, r, (k - 1) * d) for d in dilations]
    prev = torch.full((n,), start_class, dtype=torch.long, device=uniform.device)
    samples = torch.empty(n, steps, dtype=torch.long, device=uniform.device)
    for t in range(steps):
        x = weights.embedding[prev]
        skip = 0
        for layer, d in enumerate(dilations):
            w = weights.conv_weight[layer]
            memory = (k - 1) * d
            taps = [past[layer][:, :, (t - (k - 1 - j) * d) % memory] for j in range(k - 1)] + [x]
            h = weights.conv_bias[layer] + _cond_at(cond, layer, t)
            h = h + sum(tap @ w[:, :, j].T for j, tap in enumerate(taps))
            if memory:
                past[layer][:, :, t % memory] = x
            z = torch.tanh(h[:, :r]) * torch.sigmoid(h[:, r:])
            skip = skip + z @ weights.skip_weight[layer].T + weights.skip_bias[layer]
            x = (x + z @ weights.res_weight[layer].T + weights.res_bias[layer]) * residual_scale
        output = output_head(weights, skip[:, :, None])[:, :, 0]
        prev = sample_output(output, uniform[:, t], head, weights.embedding.shape[0], temperature,
                             log_scale_min)
        samples[:, t] = prev
    return samples


def wavenet_generate_by_recompute(weights: GenerationWeights, dilations, cond: torch.Tensor | None,
                                  uniform: torch.Tensor, start_class: int, residual_scale: float,
                                  temperature: float, head: str, log_scale_min: float) -> torch.Tensor:
    """Samples (N, T) by running the whole network on all samples so far at every step: O(T²)."""
    n, steps = uniform.shape[:2]
    inputs = torch.full((n, 1), start_class, dtype=torch.long, device=uniform.device)
    for t in range(steps):
        step_cond = None if cond is None else cond[..., :t + 1] if cond.shape[3] > 1 else cond
        output = network_output(weights, dilations, inputs, step_cond, residual_scale)[:, :, -1]
        sample = sample_output(output, uniform[:, t], head, weights.embedding.shape[0], temperature,
                               log_scale_min)
        inputs = torch.cat([inputs, sample[:, None]], dim=1)
    return inputs[:, 1:]
