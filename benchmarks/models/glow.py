"""Glow at its CIFAR-10 configuration (GlowConfig's defaults: 3 levels of 32 steps, 512 hidden channels):
a training step (forward, backward, AdamW step) on a batch of 16 3×32×32 8-bit images.

Peers: the model on gmk's ``auto`` backend, stored activations (``gmk:auto``) and ``reversible=True``
(``gmk:auto reversible``: each level's backward recomputes its steps' inputs, so the activations are not
stored; the same parameters); the same model under ``gmk.use_backend("reference")`` in eager mode, and
``torch.compile`` of that. Peak memory (CUDA) is the harness's ``peak_mib``: the reversible peer's
against the others' is the memory the recomputation saves. Bytes and FLOPs: counted as in
benchmarks/models/pixelcnn.py (hooks on the leaf modules: convolutions, squeezes; the fused actnorm +
1x1 and the coupling ops run outside leaf modules and are not counted, so the figures are lower bounds).
On CPU the case is the digits model (``GlowConfig.for_data(1, 17, 8)``, batch 64); with --quick the
"tiny" config on 8×8 RGB images.
"""
from __future__ import annotations

import functools

import torch

from gmkernels.models import Glow, GlowConfig

from ..harness import COMPILED, EAGER, Case
from .pixelcnn import _counts, _images, _train_step

GMK, REVERSIBLE = "gmk:auto", "gmk:auto reversible"


def _workload(device: str, quick: bool) -> tuple[GlowConfig, int, int]:
    """(config, batch, H = W): CUDA the CIFAR-10 model; CPU the digits model; --quick the tiny one."""
    if device == "cuda":
        return GlowConfig(), 16, 32
    if quick:
        return GlowConfig.for_data(3, 256, 8, size="tiny"), 4, 8
    return GlowConfig.for_data(1, 17, 8), 64, 8


def _initialised(config: GlowConfig, device: str, x: torch.Tensor, state: dict | None = None) -> Glow:
    """A Glow whose actnorm layers have initialised themselves on x (as after a first training step), so
    that every peer times the same steady-state step; ``state``: the parameters to take."""
    model = Glow(config).to(device).train()
    if state is None:
        with torch.no_grad():
            model(x, check_inputs=False)
    else:
        model.load_state_dict(state)
    return model


def _training_case(device: str, quick: bool) -> Case:
    config, batch, size = _workload(device, quick)
    torch.manual_seed(0)
    stored = Glow(config).to(device).train()
    x = _images(stored, batch, size, device)
    with torch.no_grad():
        stored(x, check_inputs=False)
    reversible = _initialised(GlowConfig(**{**vars(config), "reversible": True}), device, x, stored.state_dict())

    def step(model, backend, forward=None):  # each peer its own AdamW state
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        return functools.partial(_train_step, model, model if forward is None else forward, optimizer, x, backend)

    peers = {GMK: step(stored, "auto"), REVERSIBLE: step(reversible, "auto"), EAGER: step(stored, "reference"),
             COMPILED: step(stored, "reference", torch.compile(stored, dynamic=False))}
    activation_bytes, macs = _counts(stored, x)
    parameter_bytes = sum(p.nbytes for p in stored.parameters())
    return Case(
        name=f"glow train {tuple(x.shape)} forward+backward+AdamW",
        family="glow",
        params={"model": "glow", "kind": "training", "config": {**vars(config)}, "batch": batch,
                "dtype": "float32", "direction": "forward+backward+step"},
        bytes=3 * activation_bytes + 10 * parameter_bytes,
        flops=3 * 2 * macs,
        peers=peers,
        repeats=10 if device == "cpu" else None,
    )


def cases(device: str, quick: bool) -> list[Case]:
    """Glow's training step, stored and reversible, against the reference backend eager and compiled."""
    return [_training_case(device, quick)]
