"""A run's checkpoint, DIR/checkpoint.pt: everything a resumed run needs to continue exactly.

    format     FORMAT
    model      the command-line name (gmk.models.MODELS)
    config     the model config's fields
    data       the data set's description (gmk.data's ``describe()``)
    options    the run's TrainOptions fields
    step       steps done
    model_state, ema_state, optimizer_state

The random numbers of step s on rank r are drawn from a seed that is a function of (options.seed,
s, r), and the data order a function of (options.seed, epoch): (options, step) is the whole random
state. Files are written to a temporary name and renamed, so a crash never leaves half a file.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import torch

from .errors import TrainingError

FORMAT = "gmkernels.training/1"
FILE = "checkpoint.pt"
KEYS = ("format", "model", "config", "data", "options", "step", "model_state", "ema_state", "optimizer_state")


def write_atomically(path: Path, write) -> None:
    """``write(file)`` into a temporary file next to ``path``, then rename it to ``path``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save(directory: Path, state: dict) -> None:
    write_atomically(directory / FILE, lambda file: torch.save({"format": FORMAT, **state}, file))


def load(directory: Path) -> dict:
    """The checkpoint in ``directory``, on the CPU, with its layout checked."""
    path = Path(directory) / FILE
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrainingError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or any(key not in state for key in KEYS):
        raise TrainingError(f"{path}: not a gmkernels training checkpoint (format {FORMAT})")
    return state


def config_fields(config) -> dict:
    return dataclasses.asdict(config)


def rebuild_config(state: dict, model_class, path: Path):
    """The model config the checkpoint was saved with, checked by the config class itself."""
    try:
        return model_class.config_class(**state["config"])
    except (TypeError, ValueError) as error:
        raise TrainingError(f"{path}: its {state['model']} config does not fit this version of "
                            f"gmkernels ({error})") from None


def load_weights(module: torch.nn.Module, weights: dict, path: Path, what: str) -> None:
    try:
        module.load_state_dict(weights)
    except (RuntimeError, KeyError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise TrainingError(f"{path}: its {what} do not match the model ({first})") from None
