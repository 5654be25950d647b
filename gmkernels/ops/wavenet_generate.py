"""WaveNet generation (the whole autoregressive loop): the declaration of gmkernels::wavenet_generate and the
public function.

``wavenet_generate`` takes the network's weights stacked per layer (``GenerationWeights``, see
``gmkernels/reference/wavenet_generate.py`` for the math and the sampling rule) and the uniform
noise (N, T, U), and returns the sampled classes (N, T). Backends: ``reference`` (the eager cached
loop), ``cpu`` (a C++ loop, parallel over the batch), ``triton`` (one fused kernel per step: every
layer, the head and the sampling), ``cuda`` (one persistent kernel for all steps; rejects
configurations whose activations do not fit in shared memory, see ``cuda_plan``).
"""
from __future__ import annotations

import math
import numbers

import torch

from .._backend import OpBackends
from ..reference import wavenet_generate as reference
from ..reference.wavenet_generate import HEADS, GenerationWeights, uniforms_per_sample
from ._declare import Op, triton_family

_triton = triton_family("wavenet_generate")


def _check(function: str, condition: bool, message: str, error=ValueError) -> None:
    if not condition:
        raise error(f"{function}: {message}")


def _check_weights(function: str, weights) -> tuple[int, int, int, int, int, int, int]:
    """(A, L, R, k, S, H, P) of the stacked weights, after checking every shape against the others."""
    _check(function, isinstance(weights, (tuple, list)) and len(weights) == len(GenerationWeights._fields),
           f"weights must be a GenerationWeights ({', '.join(GenerationWeights._fields)})", TypeError)
    weights = GenerationWeights(*weights)
    first = weights.embedding
    for name, t in weights._asdict().items():
        _check(function, isinstance(t, torch.Tensor) and t.is_floating_point(),
               f"{name} must be a floating-point tensor", TypeError)
        _check(function, t.dtype == first.dtype, f"{name} must have embedding's dtype {first.dtype}, got {t.dtype}",
               TypeError)
        _check(function, t.device == first.device,
               f"{name} must be on embedding's device {first.device}, got {t.device}")
    _check(function, first.dim() == 2 and first.shape[0] >= 2 and first.shape[1] >= 1,
           f"embedding must be (A >= 2 classes, R >= 1), got shape {tuple(first.shape)}")
    a, r = first.shape
    conv = weights.conv_weight
    _check(function, conv.dim() == 4 and conv.shape[0] >= 1 and conv.shape[1:3] == (2 * r, r),
           f"conv_weight must be (L, 2R={2 * r}, R={r}, k), got shape {tuple(conv.shape)}")
    n_layers, k = conv.shape[0], conv.shape[3]
    _check(function, k >= 1, "conv_weight's kernel size (dim 3) must be >= 1, got 0")
    skip = weights.skip_weight
    _check(function, skip.dim() == 3 and skip.shape[0] == n_layers and skip.shape[1] >= 1 and skip.shape[2] == r,
           f"skip_weight must be (L={n_layers}, S, R={r}), got shape {tuple(skip.shape)}")
    s = skip.shape[1]
    head1 = weights.head_weight1
    _check(function, head1.dim() == 2 and head1.shape[0] >= 1 and head1.shape[1] == s,
           f"head_weight1 must be (H, S={s}), got shape {tuple(head1.shape)}")
    h = head1.shape[0]
    head2 = weights.head_weight2
    _check(function, head2.dim() == 2 and head2.shape[0] >= 1 and head2.shape[1] == h,
           f"head_weight2 must be (P, H={h}), got shape {tuple(head2.shape)}")
    expected = {"conv_bias": (n_layers, 2 * r), "res_weight": (n_layers, r, r), "res_bias": (n_layers, r),
                "skip_bias": (n_layers, s), "head_bias1": (h,), "head_bias2": (head2.shape[0],)}
    for name, shape in expected.items():
        actual = tuple(getattr(weights, name).shape)
        _check(function, actual == shape, f"{name} must have shape {shape}, got {actual}")
    return a, n_layers, r, k, s, h, head2.shape[0]


def check_args(function: str, weights, dilations, uniform, cond, start_class, residual_scale, temperature, head,
               log_scale_min) -> None:
    """The checks of the public function and of the Triton op (the C++ op repeats them in C++)."""
    a, n_layers, r, _, _, _, p = _check_weights(function, weights)
    _check(function, head in HEADS, f"head must be one of {HEADS}, got {head!r}")
    if head == "softmax":
        _check(function, p == a, f"the softmax head's head_weight2 must have A={a} rows (one per class), got {p}")
    else:
        _check(function, p % 3 == 0, f"the logistic_mixture head's head_weight2 must have 3K rows (K logits, means, "
                           f"log-scales), got {p}")
    _check(function, isinstance(dilations, (tuple, list)) and len(dilations) == n_layers,
           f"dilations must be a list of L={n_layers} ints, got {dilations!r}", TypeError)
    for d in dilations:
        _check(function, isinstance(d, int) and not isinstance(d, bool) and d >= 1,
               f"dilations must be >= 1, got {list(dilations)}")
    embedding = weights[0]
    noise_dtype = torch.float64 if embedding.dtype == torch.float64 else torch.float32
    _check(function, isinstance(uniform, torch.Tensor) and uniform.dtype == noise_dtype,
           f"uniform must be a {noise_dtype} tensor (float64 iff the weights are)", TypeError)
    u = uniforms_per_sample(head)
    _check(function, uniform.dim() == 3 and uniform.shape[0] >= 1 and uniform.shape[2] == u,
           f"uniform must be (N, T, {u}) for the {head} head, got shape {tuple(uniform.shape)}")
    _check(function, uniform.device == embedding.device, f"uniform must be on the weights' device {embedding.device}")
    n, steps = uniform.shape[:2]
    if cond is not None:
        _check(function, isinstance(cond, torch.Tensor) and cond.dtype == embedding.dtype,
               f"cond must be a tensor of the weights' dtype {embedding.dtype}", TypeError)
        _check(function, cond.device == embedding.device, f"cond must be on the weights' device {embedding.device}")
        _check(function, cond.dim() == 4 and cond.shape[:3] == (n_layers, n, 2 * r) and cond.shape[3] in (1, steps),
               f"cond must be (L={n_layers}, N={n}, 2R={2 * r}, 1 or T={steps}), got shape "
               f"{tuple(cond.shape)}")
    _check(function, isinstance(start_class, int) and 0 <= start_class < a,
           f"start_class must be in [0, {a}), got {start_class!r}")
    for name, value in (("residual_scale", residual_scale), ("temperature", temperature),
                        ("log_scale_min", log_scale_min)):
        _check(function, isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value),
               f"{name} must be a finite number, got {value!r}")
    _check(function, temperature > 0, f"temperature must be > 0, got {temperature}")


def wavenet_generate(weights: GenerationWeights, dilations, uniform: torch.Tensor,
                     cond: torch.Tensor | None = None, *, start_class: int, residual_scale: float = 1.0,
                     temperature: float = 1.0, head: str = "softmax", log_scale_min: float = -7.0,
                     backend: str = "auto") -> torch.Tensor:
    """Samples (N, T) int64 of the WaveNet ``weights`` from the uniform noise (N, T, U).

    The first input is ``start_class``; each later input is the previous sample. ``cond`` is None
    or each layer's conditioning (L, N, 2R, 1 or T). ``uniform`` is float32 (float64 for float64
    weights), U = 1 for the softmax head and 2 for the logistic mixture (see the reference module).
    The cpu, cuda and triton backends compute in float32 (float64 for float64 weights) from weights
    stored in their dtype; the reference computes in the weights' dtype.
    """
    check_args("wavenet_generate", weights, dilations, uniform, cond, start_class, residual_scale, temperature, head,
               log_scale_min)
    weights = GenerationWeights(*(t.detach() for t in weights))
    cond = None if cond is None else cond.detach()
    name = GENERATE.select(backend, weights.embedding.device, weights.embedding.dtype)
    args = (list(dilations), int(start_class), float(residual_scale), float(temperature), head,
            float(log_scale_min))
    if name == "reference":
        return reference.wavenet_generate(weights, *args[:1], cond, uniform, *args[1:])
    return GENERATE.run(name, *weights, cond, uniform, *args)


def cuda_plan(*, residual_channels: int, skip_channels: int, hidden_channels: int, outputs: int, layers: int,
              kernel_size: int, batch: int, element_size: int, head: str = "softmax",
              max_shared_bytes: int = 227 * 1024, multiprocessors: int = 132,
              compute_capability: int = 90) -> dict:
    """How the persistent CUDA kernels would run this configuration (host code, runs anywhere).

    Returns ``cluster_size`` (the cluster kernel's blocks per batch element; 0: the block kernel),
    ``batch_per_block`` (the block kernel's), ``weights_in_shared``, ``shared_bytes`` and ``weight_bytes``;
    raises ValueError naming the parameter that makes the configuration too large for the device
    limits given (the defaults are an H100's: 227 KiB of shared memory per block, 132 SMs, sm_90).
    The op also falls back to the block kernel when the device cannot hold ``batch`` clusters at once.
    Needs the compiled extension.
    """
    from .. import _C

    plan = _C.wavenet_generate_cuda_plan(residual_channels, skip_channels, hidden_channels, outputs, layers,
                                         kernel_size, batch, element_size, head == "logistic_mixture",
                                         max_shared_bytes, multiprocessors, compute_capability)
    if plan["error"]:
        raise ValueError(plan["error"])
    return {key: value for key, value in plan.items() if key != "error"}


# --- the op (not differentiable: generation has no gradient) --------------------------------------------

def _check_op(function: str, *args) -> None:
    weights, (cond, uniform, dilations, start_class, residual_scale, temperature, head, log_scale_min) = \
        args[:len(GenerationWeights._fields)], args[len(GenerationWeights._fields):]
    check_args(function, weights, dilations, uniform, cond, start_class, residual_scale, temperature, head,
               log_scale_min)


def _fake_generate(embedding, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias,
                   head_weight1, head_bias1, head_weight2, head_bias2, cond, uniform, dilations, start_class,
                   residual_scale, temperature, head, log_scale_min):
    return uniform.new_empty(uniform.shape[:2], dtype=torch.long)


_WEIGHTS = ", ".join(f"Tensor {name}" for name in GenerationWeights._fields)
GENERATE = Op("wavenet_generate",
              f"({_WEIGHTS}, Tensor? cond, Tensor uniform, int[] dilations, int start_class, float residual_scale, "
              "float temperature, str head, float log_scale_min) -> Tensor",
              check=_check_op, fake=_fake_generate, triton=_triton and _triton.wavenet_generate,
              backends=OpBackends("gmk.wavenet_generate"))
