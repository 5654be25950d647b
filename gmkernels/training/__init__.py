"""The training machinery: one loop for every model of gmk.models (``gmk train`` / ``gmk sample``).

    from gmkernels.training import train, sample
    train("pixelcnnpp", "runs/digits", data="digits", steps=2000)   # DIR/metrics.jsonl, loss.png, samples.png
    sample("runs/digits", n=64, out="grid.png")

loop.py: the loop (AdamW, warm-up, clipping, EMA, evaluation); checkpoint.py: save, load, validate;
distributed.py: torchrun / DDP; kinds.py: the per-kind adapters (images, audio, GANs); pictures.py: plots,
grids, .wav; sample.py: sampling a checkpoint.
"""
from .errors import TrainingError
from .loop import TrainOptions, train
from .sample import sample

__all__ = ["TrainOptions", "TrainingError", "sample", "train"]
