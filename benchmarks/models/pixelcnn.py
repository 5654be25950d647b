"""PixelCNN, Gated PixelCNN and PixelCNN++ at their CIFAR-10 configurations (each config class's
defaults): a training step (forward, backward, AdamW step) on a batch of 16 3×32×32 8-bit images, and
autoregressive sampling (``model.sample(method="naive")``, the whole network evaluated per sub-pixel / pixel;
the cached sampler has its own benchmark, ``pixelcnn_sampling.py``).

Peers: the model on gmk's ``auto`` backend; the same model (the same parameters) under
``gmk.use_backend("reference")`` in eager mode, and ``torch.compile`` of that (training only: sampling
runs the network thousands of times with Python in between). Bytes and FLOPs are counted from the
model's own modules on the case's input, by forward hooks: every convolution's (and the other leaf
modules') input and output read or written once forward, twice backward (the output gradient read, the
input gradient written); the parameters read forward and backward, the gradients written, and AdamW's
read of parameter, gradient and two moments and write of three (10 passes over the parameters); FLOPs
2 per multiply-add of the convolutions, dense over the masked taps, three passes for forward+backward.
Sampling is timed per image (``us_per_sample`` is µs per image) at a small image size (see _workload).
On CPU the cases are the digits model (see _workload); with --quick the "tiny" config.
"""
from __future__ import annotations

import functools

import torch

import gmkernels as gmk
from gmkernels.models import MODELS

from ..harness import COMPILED, EAGER, Case, skipped_peer

IMAGE_MODELS = ("pixelcnn", "gated_pixelcnn", "pixelcnnpp")
GMK = "gmk:auto"

# What each device runs: (config, training batch, training H = W, sampling batch, sampling H = W). CUDA: the
# CIFAR-10 model. CPU: the digits model that `gmk train pixelcnnpp --data digits` trains (8×8, 17 levels,
# batch 64); with --quick, the "tiny" config on 4×4 images (the suite runs, nothing is measured).
def _workload(name: str, device: str, quick: bool) -> tuple:
    config_class = MODELS[name].config_class
    if device == "cuda":
        return config_class(), 16, 32, 16, 8
    if quick:
        return config_class.for_data(3, 256, 4, size="tiny"), 2, 4, 2, 2
    return config_class.for_data(1, 17, 8), 64, 8, 4, 8


def _images(model, batch: int, size: int, device: str) -> torch.Tensor:
    c = model.config
    return torch.randint(0, c.num_bins, (batch, c.in_channels, size, size), device=device)


def _counts(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(bytes, multiply-adds) of one forward pass, from hooks on the leaf modules (see the module doc)."""
    totals = {"bytes": 0, "macs": 0}

    def hook(module, inputs, output):
        tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
        totals["bytes"] += sum(t.nbytes for t in tensors)
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 4:
            if isinstance(module, torch.nn.ConvTranspose2d):
                totals["macs"] += inputs[0].numel() * weight[0].numel()
            else:
                totals["macs"] += output.numel() * weight[0].numel()

    leaves = [module for module in model.modules() if not list(module.children())]
    handles = [module.register_forward_hook(hook) for module in leaves]
    try:
        with torch.no_grad(), gmk.use_backend("reference"):
            model(x, check_inputs=False)
    finally:
        for handle in handles:
            handle.remove()
    return totals["bytes"], totals["macs"]


def _train_step(model, forward, optimizer, x, backend: str) -> torch.Tensor:
    with gmk.use_backend(backend):
        loss = forward(x, check_inputs=False)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.detach()


def _training_case(name: str, device: str, quick: bool) -> Case:
    config, batch, size, _, _ = _workload(name, device, quick)
    model = MODELS[name](config).to(device).train()
    x = _images(model, batch, size, device)

    def step(backend, forward=model):  # each peer its own AdamW state, on the shared parameters
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        return functools.partial(_train_step, model, forward, optimizer, x, backend)

    peers = {GMK: step("auto"), EAGER: step("reference"),
             COMPILED: step("reference", torch.compile(model, dynamic=False))}
    activation_bytes, macs = _counts(model, x)
    parameter_bytes = sum(p.nbytes for p in model.parameters())
    return Case(
        name=f"{name} train {tuple(x.shape)} forward+backward+AdamW",
        family="pixelcnn",
        params={"model": name, "kind": "training", "config": {**vars(model.config)}, "batch": x.shape[0],
                "dtype": "float32", "direction": "forward+backward+step"},
        bytes=3 * activation_bytes + 10 * parameter_bytes,
        flops=3 * 2 * macs,
        peers=peers,
    )


def _sample(model, n: int, size: int, backend: str) -> torch.Tensor:
    generator = torch.Generator(next(model.parameters()).device).manual_seed(0)
    with gmk.use_backend(backend):
        return model.sample(n, image_size=size, generator=generator, method="naive")


def _sampling_case(name: str, device: str, quick: bool) -> Case:
    config, _, _, n, size = _workload(name, device, quick)
    model = MODELS[name](config).to(device).eval()
    evaluations = size * size * len(model.sampling_steps)
    activation_bytes, macs = _counts(model, _images(model, n, size, device))
    peers = {GMK: functools.partial(_sample, model, n, size, "auto"),
             EAGER: functools.partial(_sample, model, n, size, "reference"),
             COMPILED: skipped_peer("sampling calls the network once per step from Python: not compiled")}
    return Case(
        name=f"{name} sample {n}×{model.config.in_channels}×{size}×{size}",
        family="pixelcnn",
        params={"model": name, "kind": "sample", "config": {**vars(model.config)}, "batch": n,
                "image_size": size, "network_evaluations": evaluations, "dtype": "float32"},
        bytes=evaluations * activation_bytes,
        flops=2 * evaluations * macs,
        peers=peers,
        samples=n,  # µs per "sample" = µs per image
        repeats=3,
    )


def cases(device: str, quick: bool) -> list[Case]:
    """Each model's training step and sampling; the same cases with ``quick`` (float32 only)."""
    return [case for name in IMAGE_MODELS
            for case in (_training_case(name, device, quick), _sampling_case(name, device, quick))]
