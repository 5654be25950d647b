"""gmk.discretized_logistic_mixture_{nll,sample}, gmk.bits_per_dim: the public functions and the declarations of
gmkernels::logistic_mixture_{nll,nll_backward,sample}."""
from __future__ import annotations

import math
import numbers

import torch

from .._backend import OpBackends
from .._validation import check_bool, check_finite_number, check_generator, check_int
from ..reference import logistic_mixture as reference
from ._common import check_tensor
from ._declare import Autograd, Op, triton_family

REDUCTIONS = ("none", "sum", "mean")
# The largest log_scale_min: e^log_scale_min, the smallest scale, must be a finite float32. Past it every scale
# is infinite, every bin's mass 0 and its log -log_scale_min·C: terms so large (1e30) that the log-softmax
# and the components' differences vanish in their rounding, in float64 too (the responsibilities are then
# the rounding's, not the model's).
LOG_SCALE_MIN_LARGEST = math.log(torch.finfo(torch.float32).max)  # 88.72
NUM_CHANNELS = (1, 3)
_triton = triton_family("logistic_mixture")


def _check_tensor(function: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{function}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{function}: {name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() < 2:
        raise ValueError(f"{function}: {name} must have at least 2 dimensions (N, channels, *S), "
                         f"got shape {tuple(t.shape)}")


def _check_params(function: str, params, num_channels: int) -> int:
    """The number K of mixture components in params (N, P, *S) for ``num_channels`` channels."""
    _check_tensor(function, "params", params)
    per_component = reference.params_per_component(num_channels)
    if params.shape[1] == 0 or params.shape[1] % per_component:
        layout = ("K logits, then per channel K means, K log-scales, K coefficients" if num_channels == 3
                  else "K logits, K means, K log-scales")
        raise ValueError(f"{function}: params must have {per_component}K channels for C = {num_channels} "
                         f"({layout}), got {params.shape[1]}")
    return params.shape[1] // per_component


def check_num_channels(function: str, num_channels) -> None:
    if isinstance(num_channels, bool) or num_channels not in NUM_CHANNELS:
        raise ValueError(f"{function}: num_channels must be 1 or 3, got {num_channels!r}")


def check_options(function: str, num_bins, log_scale_min, reduction: str = "none") -> None:
    check_int(function, "num_bins", num_bins, 2)
    check_finite_number(function, "log_scale_min", log_scale_min)
    if log_scale_min > LOG_SCALE_MIN_LARGEST:
        raise ValueError(f"{function}: log_scale_min must be <= {LOG_SCALE_MIN_LARGEST:.4f} (e^log_scale_min, the "
                         f"smallest scale, must be a finite float32), got {log_scale_min!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{function}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_bins_resolved(function: str, num_bins: int, dtype: torch.dtype) -> None:
    """The bin edges x ± 1/(num_bins - 1) must differ from x in the compute dtype (float64 for float64
    params, else float32): a half-bin below the spacing of floats near 1 (2^-23, 2^-52) makes every bin's
    probability a difference of equal CDFs."""
    largest = 2**52 + 1 if dtype == torch.float64 else 2**23 + 1
    if num_bins > largest:
        raise ValueError(f"{function}: num_bins must be <= {largest} for {dtype} params (a bin must be wider "
                         f"than the spacing of the compute dtype's floats near 1), got {num_bins}")


def _check_nll_args(params, x, num_bins, log_scale_min, reduction: str) -> None:
    function = "discretized_logistic_mixture_nll"
    _check_tensor(function, "x", x)
    if x.shape[1] not in NUM_CHANNELS:
        raise ValueError(f"{function}: x must have C = 1 or 3 channels (dim 1), got shape {tuple(x.shape)}")
    _check_params(function, params, x.shape[1])
    if params.shape[0] != x.shape[0] or params.shape[2:] != x.shape[2:]:
        raise ValueError(f"{function}: params (N, P, *S) and x (N, C, *S) must agree in N and S, got "
                         f"params {tuple(params.shape)} and x {tuple(x.shape)}")
    if params.device != x.device:
        raise ValueError(f"{function}: x must be on params' device {params.device}, got {x.device}")
    check_options(function, num_bins, log_scale_min, reduction)
    check_bins_resolved(function, num_bins, params.dtype)


def discretized_logistic_mixture_nll(params: torch.Tensor, x: torch.Tensor, *, num_bins: int = 256,
                                     log_scale_min: float = -7.0, reduction: str = "none",
                                     check_inputs: bool = True, backend: str = "auto") -> torch.Tensor:
    """-log P(x) in nats under PixelCNN++'s discretized logistic mixture (arXiv 1701.05517).

    ``x`` (N, C, *S): C = 1 or 3 sub-pixels per position, on the grid of ``num_bins`` levels in
    [-1, 1] (v -> 2v / (num_bins - 1) - 1); any number of spatial dims. ``params`` (N, P, *S):
    P = 10K for C = 3 (K logits, then per channel K means, K log-scales, K coefficients), 3K for
    C = 1 (K logits, K means, K log-scales). Log-scales are clamped below at ``log_scale_min``;
    G and B means couple to the ground-truth R (and G) through tanh(coefficients).

    Returns (N, *S) for ``reduction="none"`` (summed over the C sub-pixels), else the sum or the
    mean over the N·S positions; float32 (float64 for float64 params). Differentiable in params.
    ``check_inputs=True`` also checks that x lies in [-1, 1], which synchronises with the device;
    ``check_inputs=False`` skips that check (training loops, benchmarks, torch.compile).
    """
    _check_nll_args(params, x, num_bins, log_scale_min, reduction)
    check_bool("discretized_logistic_mixture_nll", "check_inputs", check_inputs)
    if check_inputs and not bool(((x >= -1) & (x <= 1)).all()):
        raise ValueError("discretized_logistic_mixture_nll: x must lie in [-1, 1] (data scaled from "
                         f"{num_bins} levels), got values in [{x.min().item()}, {x.max().item()}]")
    x = x.detach().to(reference.compute_dtype(params.dtype))
    name = NLL.select(backend, params.device, params.dtype)
    if name == "reference":
        nll = reference.discretized_logistic_mixture_nll(params, x, num_bins, log_scale_min)
    else:
        n, spatial = x.shape[0], x.shape[2:]
        s = math.prod(spatial)
        nll = NLL.run(name, params.reshape(n, params.shape[1], s), x.reshape(n, x.shape[1], s), num_bins,
                      float(log_scale_min)).reshape(n, *spatial)
    if reduction == "sum":
        return nll.sum()
    return nll.mean() if reduction == "mean" else nll


def discretized_logistic_mixture_sample(params: torch.Tensor, *, num_channels: int, num_bins: int = 256,
                                        log_scale_min: float = -7.0, generator: torch.Generator | None = None,
                                        backend: str = "auto") -> torch.Tensor:
    """A sample x (N, C, *S) on the grid of ``num_bins`` levels in [-1, 1] from params (N, P, *S).

    Per position: a component by Gumbel-max on the logits, then R, G, B in turn by the logistic's
    inverse CDF, the G and B means coupled to the sub-pixels already sampled. The uniform noise is
    drawn here with ``generator``, so every backend gives the same sample for the same generator.
    float32 (float64 for float64 params).
    """
    function = "discretized_logistic_mixture_sample"
    check_num_channels(function, num_channels)
    k = _check_params(function, params, num_channels)
    check_options(function, num_bins, log_scale_min)
    check_bins_resolved(function, num_bins, params.dtype)
    check_generator(function, generator, params.device)
    name = SAMPLE.select(backend, params.device, params.dtype)
    n, spatial = params.shape[0], params.shape[2:]
    s = math.prod(spatial)
    params3 = params.detach().reshape(n, params.shape[1], s)
    noise = {"generator": generator, "device": params.device, "dtype": reference.compute_dtype(params.dtype)}
    gumbel_u = torch.rand((n, k, s), **noise)
    logistic_u = torch.rand((n, num_channels, s), **noise)
    sample_op = reference.discretized_logistic_mixture_sample if name == "reference" else SAMPLE.op(name)
    return sample_op(params3, gumbel_u, logistic_u, num_bins, float(log_scale_min)).reshape(
        n, num_channels, *spatial)


def bits_per_dim(nll_nats, num_subpixels: int):
    """A negative log-likelihood in nats as bits per sub-pixel: nll / (ln 2 · num_subpixels).

    ``nll_nats``: a floating-point tensor or a real number (the nats of ``num_subpixels`` sub-pixels);
    ``num_subpixels``: an int >= 1.
    """
    function = "bits_per_dim"
    check_int(function, "num_subpixels", num_subpixels, 1)
    if isinstance(nll_nats, torch.Tensor):
        if not nll_nats.is_floating_point():
            raise TypeError(f"{function}: nll_nats must be a floating-point tensor, got {nll_nats.dtype}")
    elif isinstance(nll_nats, bool) or not isinstance(nll_nats, numbers.Real):
        raise TypeError(f"{function}: nll_nats must be a floating-point tensor or a real number, "
                        f"got {type(nll_nats).__name__}")
    return nll_nats / (math.log(2) * num_subpixels)


# --- the ops: params (N, P, S) any strides; x, logistic_u (N, C, S) and gumbel_u (N, K, S) in the compute
# dtype (float32, float64 for float64 params); nll and grad_nll (N, S). ---------------------------------

def _check_op_tensor(function: str, name: str, t, params: torch.Tensor, shape: tuple, form: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{function}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{function}: {name} must be {form} = {tuple(shape)} to match params, "
                         f"got {tuple(t.shape)}")
    dtype = reference.compute_dtype(params.dtype)
    if t.dtype != dtype:
        raise TypeError(f"{function}: {name} must be {dtype} for params of dtype {params.dtype}, got {t.dtype}")
    if t.device != params.device:
        raise ValueError(f"{function}: {name} must be on params' device {params.device}, got {t.device}")


def _check_op(function: str, params, channels_name: str, channels, num_bins, log_scale_min) -> int:
    """The checks shared by the three ops; returns K. ``channels`` (x or logistic_u) gives C."""
    check_tensor(function, "params", params, 3, "(N, P, S)")
    if not isinstance(channels, torch.Tensor) or channels.dim() != 3 or channels.shape[1] not in NUM_CHANNELS:
        shown = tuple(channels.shape) if isinstance(channels, torch.Tensor) else type(channels).__name__
        raise ValueError(f"{function}: {channels_name} must be (N, C, S) with C = 1 or 3, got {shown}")
    n, _, s = params.shape
    _check_op_tensor(function, channels_name, channels, params, (n, channels.shape[1], s), "(N, C, S)")
    check_options(function, num_bins, log_scale_min)
    check_bins_resolved(function, num_bins, params.dtype)
    return _check_params(function, params, channels.shape[1])


def check_nll(function: str, params, x, num_bins, log_scale_min) -> None:
    _check_op(function, params, "x", x, num_bins, log_scale_min)


def _check_nll_backward(function: str, grad_nll, params, x, num_bins, log_scale_min) -> None:
    _check_op(function, params, "x", x, num_bins, log_scale_min)
    _check_op_tensor(function, "grad_nll", grad_nll, params, (params.shape[0], params.shape[2]), "(N, S)")


def check_sample(function: str, params, gumbel_u, logistic_u, num_bins, log_scale_min) -> None:
    k = _check_op(function, params, "logistic_u", logistic_u, num_bins, log_scale_min)
    _check_op_tensor(function, "gumbel_u", gumbel_u, params, (params.shape[0], k, params.shape[2]), "(N, K, S)")


def _fake_nll(params, x, num_bins, log_scale_min):
    return x.new_empty(x.shape[0], x.shape[2])


def _fake_nll_backward(grad_nll, params, x, num_bins, log_scale_min):
    return torch.empty_like(params, memory_format=torch.contiguous_format)


def _fake_sample(params, gumbel_u, logistic_u, num_bins, log_scale_min):
    return logistic_u.new_empty(logistic_u.shape)


def _save(ctx, inputs, output):
    params, x, num_bins, log_scale_min = inputs
    ctx.save_for_backward(params, x)
    ctx.num_bins, ctx.log_scale_min = num_bins, log_scale_min


def _backward(ops, ctx, grad_nll):
    params, x = ctx.saved_tensors
    return ops.logistic_mixture_nll_backward(grad_nll, params, x, ctx.num_bins, ctx.log_scale_min), None, None, None


def _no_double_backward(ops, ctx, grad_grad_params):
    raise RuntimeError("double backward of the logistic mixture NLL is not supported")


_SCALARS = "int num_bins, float log_scale_min"
NLL = Op("logistic_mixture_nll", f"(Tensor params, Tensor x, {_SCALARS}) -> Tensor", check=check_nll,
         fake=_fake_nll, triton=_triton and _triton.logistic_mixture_nll, autograd=Autograd(_save, _backward),
         backends=OpBackends("gmk.discretized_logistic_mixture_nll"), dtype_of=lambda params, *rest: params)
NLL_BACKWARD = Op("logistic_mixture_nll_backward", f"(Tensor grad_nll, Tensor params, Tensor x, {_SCALARS}) -> Tensor",
                  check=_check_nll_backward, fake=_fake_nll_backward,
                  triton=_triton and _triton.logistic_mixture_nll_backward,
                  autograd=Autograd(lambda ctx, inputs, output: None, _no_double_backward),
                  dtype_of=lambda grad_nll, params, *rest: params)
SAMPLE = Op("logistic_mixture_sample", f"(Tensor params, Tensor gumbel_u, Tensor logistic_u, {_SCALARS}) -> Tensor",
            check=check_sample, fake=_fake_sample, triton=_triton and _triton.logistic_mixture_sample,
            backends=OpBackends("gmk.discretized_logistic_mixture_sample"))
