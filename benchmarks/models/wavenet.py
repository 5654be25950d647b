"""WaveNet, nv-wavenet's configuration (L = 16, dilations 1 … 128 twice, R = 64, S = 256, A = 256):
training forward+backward of the whole network, and autoregressive generation.

Training: the loss and every parameter's gradient, N = 8, T = 16000 (1 s at 16 kHz), R = 64 and 128.
Peers: the model on every gmk backend (its layers are gmk.wavenet_layer), the model on the reference
backend (eager: pad + F.conv1d + gate + 1x1s per layer) and torch.compile of that. Bytes, counted by
hand: every layer's activations read and written once (forward: x read, x_next and skip written;
backward: grad_x_next, grad_skip and x read, grad_x written), the head's likewise; weights are
negligible. FLOPs: 2 per multiply-add of the convolutions and 1x1s, three passes for forward+backward.

Generation: batch 1 and 64, float32 and float16, ``steps`` samples per call from a random model with
the softmax head (the work per sample does not depend on the weights' values). Reported per case:
µs per sample (of one stream), aggregate samples/s, real-time factor at 16 and 24 kHz. Peers: gmk:cuda
(the persistent kernel: one launch for all steps), gmk:triton (one fused kernel per step), gmk:cpu;
the baseline is the eager cached loop (the reference backend) and the "compiled" baseline that same
loop captured in one CUDA graph (no launch overhead left to remove). Bytes: the weights once per step.

Targets (issue #6, on a GPU): batch 1, float32, ≥ 2× real time at 24 kHz (≤ 20.8 µs per sample) and
≥ 20× the eager cached loop; batch 64 ≥ 1 M samples/s aggregate. On CPU the cases are tiny.
"""
from __future__ import annotations

import functools

import torch

import gmkernels as gmk
from gmkernels.models import WaveNet, WaveNetConfig
from gmkernels.ops.wavenet_generate import wavenet_generate
from gmkernels.reference import wavenet_generate as reference

from ..harness import COMPILED, EAGER, Case, gmk_peers, skipped_peer

CUDA_GRAPH = f"{EAGER} (CUDA graph)"
SAMPLE_RATES = (16000, 24000)

# (N, T) of the training cases, the residual channels, and the configuration of the others.
TRAIN_SIZE = {"cuda": (8, 16000), "cpu": (2, 256)}
TRAIN_RESIDUAL = {"cuda": (64, 128), "cpu": (16,)}
GENERATE_BATCHES = {"cuda": (1, 64), "cpu": (1, 4)}
GENERATE_STEPS = {"cuda": 256, "cpu": 32}
TINY = dict(layers=4, stacks=1, skip_channels=32, head_channels=32)  # CPU: the suite runs, nothing measured


def _config(device: str, residual: int = 64) -> WaveNetConfig:
    return WaveNetConfig(residual_channels=residual, **(TINY if device == "cpu" else {}))


def _macs_per_sample(c: WaveNetConfig) -> int:
    r, s = c.residual_channels, c.skip_channels
    head = c.hidden_channels * s + c.outputs * c.hidden_channels
    return c.layers * (2 * r * r * c.kernel_size + r * r + s * r) + head


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- training ----------------------------------------------------------------------------------


def _gradients(model: WaveNet, x: torch.Tensor, backend: str,
               forward=None) -> tuple[torch.Tensor | None, ...]:
    """Every parameter's gradient (None for the last layer's residual 1x1, which feeds nothing)."""
    with gmk.use_backend(backend):
        loss = (model if forward is None else forward)(x, check_inputs=False)["loss"]
        return torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)


def _training_case(device: str, residual: int, dtype: torch.dtype) -> Case:
    config = _config(device, residual)
    n, t = TRAIN_SIZE[device]
    model = WaveNet(config).to(device=device, dtype=dtype)
    x = torch.randint(0, config.num_classes, (n, t), device=device)
    peers = gmk_peers(functools.partial(_gradients, model, x), device)
    peers[EAGER] = functools.partial(_gradients, model, x, "reference")
    peers[COMPILED] = functools.partial(_gradients, model, x, "reference",
                                        torch.compile(model, dynamic=False))
    c, element = config, torch.finfo(dtype).bits // 8
    r, s, h, a = c.residual_channels, c.skip_channels, c.hidden_channels, c.num_classes
    per_position = c.layers * ((r + r + s) + (r + s + r + r)) + 3 * (s + h + a)
    return Case(
        name=f"wavenet train L={c.layers} R={r} S={s} {n}×{t} {_dtype_name(dtype)} forward+backward",
        family="wavenet",
        params={"kind": "training", "config": {**vars(c)}, "batch": n, "steps": t,
                "dtype": _dtype_name(dtype), "direction": "forward+backward"},
        bytes=per_position * n * t * element,
        flops=3 * 2 * n * t * _macs_per_sample(c),
        peers=peers,
    )


# --- generation --------------------------------------------------------------------------------


class _CudaGraph:
    """``fn`` captured in a CUDA graph at the first call (after one warm-up run on a side stream); replays."""

    def __init__(self, fn):
        self.fn, self.graph = fn, None

    def __call__(self):
        if self.graph is None:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.fn()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.fn()
        self.graph.replay()


def _generation_case(device: str, batch: int, dtype: torch.dtype) -> Case:
    config = _config(device)
    steps = GENERATE_STEPS[device]
    model = WaveNet(config).to(device=device, dtype=dtype).eval()
    weights = model.generation_weights()
    uniform = torch.rand(batch, steps, 1, device=device)
    options = dict(start_class=config.start_class, residual_scale=config.residual_scale, head=config.head,
                   log_scale_min=config.log_scale_min)
    generate = functools.partial(wavenet_generate, weights, config.dilations, uniform, None, **options)
    peers = gmk_peers(generate, device)
    peers[EAGER] = functools.partial(generate, backend="reference")
    eager_loop = functools.partial(reference.wavenet_generate, weights, config.dilations, None, uniform,
                                   config.start_class, config.residual_scale, 1.0, config.head,
                                   config.log_scale_min)
    peers[CUDA_GRAPH] = _CudaGraph(eager_loop) if device == "cuda" else skipped_peer("CUDA graphs need a GPU")
    weight_bytes = sum(w.nbytes for w in weights) - weights.embedding.nbytes
    c = config
    return Case(
        name=f"wavenet generate L={c.layers} R={c.residual_channels} S={c.skip_channels} A={c.num_classes} "
             f"batch={batch} {_dtype_name(dtype)}",
        family="wavenet",
        params={"kind": "generation", "config": {**vars(c)}, "batch": batch, "steps": steps,
                "dtype": _dtype_name(dtype)},
        bytes=weight_bytes * steps,
        flops=2 * batch * steps * _macs_per_sample(c),
        peers=peers,
        compiled_baseline=CUDA_GRAPH,
        samples=batch * steps,
        streams=batch,
        sample_rates=SAMPLE_RATES,
        repeats=10,
    )


def cases(device: str, quick: bool) -> list[Case]:
    """The issue's cases on a GPU (quick: float32 training at R = 64, float32 generation); tiny on CPU."""
    if device == "cpu":
        train_dtypes, generate_dtypes = (torch.float32,), (torch.float32,)
    elif quick:
        train_dtypes, generate_dtypes = (torch.float32,), (torch.float32,)
    else:
        train_dtypes, generate_dtypes = (torch.float32, torch.bfloat16), (torch.float32, torch.float16)
    residuals = TRAIN_RESIDUAL[device][:1] if quick else TRAIN_RESIDUAL[device]
    return [
        *(_training_case(device, residual, dtype) for residual in residuals for dtype in train_dtypes),
        *(_generation_case(device, batch, dtype)
          for batch in GENERATE_BATCHES[device] for dtype in generate_dtypes),
    ]
