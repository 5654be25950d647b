"""StyleGAN2 at 32×32: a training iteration as ``gmk train`` runs it — the discriminator's step (generated
images under no_grad, real and generated logits, the non-saturating loss, AdamW), then the generator's
(the discriminator frozen) — without R1, and the iteration of every 16th step, whose discriminator
step adds lazy R1 (the double backward through bias_act and upfirdn2d).

Peers: the model on gmk's ``auto`` backend; the same model (a copy of the same parameters) under
``gmk.use_backend("reference")`` in eager mode, and with its generator and discriminator under
``torch.compile`` (R1 needs the discriminator's backward differentiated again, which torch.compile's
compiled backward does not allow: that peer is skipped on the R1 iteration). Bytes and FLOPs from hooks
on the layers (every modulated/plain convolution and fully connected layer): inputs and outputs read or
written once forward, twice backward; forward passes per iteration: G twice (the D step's images, the G
step), D three times (real, generated, the G step); the parameters' AdamW traffic (10 passes, both
steps); FLOPs 2 per multiply-add, three passes for forward+backward (the R1 case counts D's real pass
three times more for the double backward).

CUDA: the paper's 32×32 network (StyleGAN2Config(), 512 channels), batch 32. CPU: the "tiny" config at
32×32, batch 8 (the suite runs; the issue's target is a GPU one, not measured here).
"""
from __future__ import annotations

import copy
import functools

import torch

import gmkernels as gmk
from gmkernels.models import StyleGAN2, StyleGAN2Config
from gmkernels.models._gan import frozen
from gmkernels.models.stylegan2 import Conv2dLayer, FullyConnected, SynthesisLayer, ToRGB

from ..harness import COMPILED, EAGER, Case, skipped_peer

GMK = "gmk:auto"
LAYERS = (Conv2dLayer, FullyConnected, SynthesisLayer, ToRGB)


def _workload(device: str) -> tuple[StyleGAN2Config, int]:
    if device == "cuda":
        return StyleGAN2Config(), 32
    return StyleGAN2Config.for_data(3, 256, 32, size="tiny"), 8


def _iteration(model: StyleGAN2, optimizer, x: torch.Tensor, regularize: bool, backend: str) -> torch.Tensor:
    """One training step of gmkernels.training.kinds.GANKind: D (with R1 when ``regularize``), then G."""
    with gmk.use_backend(backend):
        d_loss = model.discriminator_terms(x, regularize=regularize)["loss"]
        optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        optimizer.step()
        with frozen(model.discriminator):
            g_loss = model.generator_terms(x.shape[0])["loss"]
            optimizer.zero_grad(set_to_none=True)
            g_loss.backward()
            optimizer.step()
    return g_loss.detach()


def _peer(model: StyleGAN2, x: torch.Tensor, regularize: bool, backend: str, compiled: bool = False):
    """A copy of ``model`` (the same parameters), its own AdamW, the iteration on ``backend``."""
    model = copy.deepcopy(model)
    if compiled:
        model.generator = torch.compile(model.generator, dynamic=False)
        model.discriminator = torch.compile(model.discriminator, dynamic=False)
    optimizer = torch.optim.AdamW(model.optimizer_groups(), lr=1e-5)
    return functools.partial(_iteration, model, optimizer, x, regularize, backend)


def _counts(model: StyleGAN2, x: torch.Tensor) -> dict[str, int]:
    """(bytes, multiply-adds) of one forward pass of G and of D, from hooks on the layers."""
    totals = {}

    def hook(network: str):
        def count(module, inputs, output):
            tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
            totals[network + "_bytes"] = totals.get(network + "_bytes", 0) + sum(t.nbytes for t in tensors)
            weight = module.weight
            per_output = weight[0].numel() if weight.dim() == 4 else weight.shape[1]
            totals[network + "_macs"] = totals.get(network + "_macs", 0) + output.numel() * per_output
        return count

    handles = [module.register_forward_hook(hook(network))
               for network, part in (("g", model.generator), ("d", model.discriminator))
               for module in part.modules() if isinstance(module, LAYERS)]
    try:
        with torch.no_grad(), gmk.use_backend("reference"):
            images = model.generator(model.latents(x.shape[0]))
            model.discriminator(images)
    finally:
        for handle in handles:
            handle.remove()
    return totals


def _case(device: str, regularize: bool) -> Case:
    config, batch = _workload(device)
    torch.manual_seed(0)
    model = StyleGAN2(config).to(device).train()
    x = torch.randint(0, config.num_bins, (batch, config.in_channels, config.resolution, config.resolution),
                      device=device)
    peers = {GMK: _peer(model, x, regularize, "auto"), EAGER: _peer(model, x, regularize, "reference")}
    peers[COMPILED] = skipped_peer("R1 differentiates the discriminator's backward: torch.compile's compiled "
                                   "backward is not differentiable twice") if regularize \
        else _peer(model, x, regularize, "reference", compiled=True)
    counts = _counts(model, x)
    d_passes = 3 + (3 if regularize else 0)
    parameter_bytes = sum(p.nbytes for p in model.parameters())
    what = "D + R1 + G" if regularize else "D + G"
    return Case(
        name=f"stylegan2 {config.resolution}x{config.resolution} train iteration {what}, batch {batch}",
        family="stylegan2",
        params={"model": "stylegan2", "kind": "training", "r1": regularize, "batch": batch,
                "config": {**vars(config)}, "dtype": "float32", "direction": "forward+backward+step"},
        bytes=3 * (2 * counts["g_bytes"] + d_passes * counts["d_bytes"]) + 10 * parameter_bytes,
        flops=3 * 2 * (2 * counts["g_macs"] + d_passes * counts["d_macs"]),
        peers=peers,
        repeats=20,
    )


def cases(device: str, quick: bool) -> list[Case]:
    """The iteration without and with R1 (``quick`` changes nothing: the CPU cases are tiny already)."""
    return [_case(device, regularize) for regularize in (False, True)]
