"""Data-parallel training under torchrun: NCCL on GPUs, gloo on CPU; rank 0 writes.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the run is one
process. Every rank holds the whole data set and takes its contiguous share of each global batch
(``local_batch``), so N processes see exactly the batches one process sees.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import TrainingError


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def writes(self) -> bool:
        """Only rank 0 writes files and shows progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def start(device: str) -> Context:
    """The process's rank and device; joins the process group when WORLD_SIZE > 1.

    ``device``: "auto" (CUDA when available), "cpu" or "cuda"; under torchrun each CUDA rank takes the
    GPU LOCAL_RANK."""
    if device not in ("auto", "cpu", "cuda"):
        raise TrainingError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no CUDA GPU is available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    torch_device = torch.device("cuda", _env_int("LOCAL_RANK", 0)) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return Context(rank, world_size, torch_device)


def stop(context: Context) -> None:
    if context.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, context: Context) -> torch.nn.Module:
    """DistributedDataParallel over ranks. ``static_graph``: every step uses the same parameters, and a
    model may leave some unused (WaveNet's last residual 1x1) without a graph traversal per step."""
    if context.world_size == 1:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, static_graph=True)


def local_batch(global_batch: torch.Tensor, context: Context) -> torch.Tensor:
    share = global_batch.shape[0] // context.world_size
    return global_batch[context.rank * share:(context.rank + 1) * share]


def sum_over_ranks(values: torch.Tensor, context: Context) -> torch.Tensor:
    if context.world_size > 1:
        dist.all_reduce(values)
    return values
