"""The ``gmk`` command: ``gmk info``, ``gmk bench``, ``gmk train``, ``gmk sample``."""
from __future__ import annotations

import argparse
import os
import platform
import sys


def _versions() -> dict:
    import torch

    import gmkernels

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {
        "gmkernels": gmkernels.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "CUDA (torch)": torch.version.cuda or "none (CPU build)",
    }


def info_lines() -> list[str]:
    import torch

    import gmkernels

    build = gmkernels.build_info()
    lines = [f"{name:<14}{value}" for name, value in _versions().items()]
    if build["built"]:
        cuda = f"with CUDA {build['cuda_version']}" if build["with_cuda"] else "without CUDA"
        threads = "CPU kernels multi-threaded (OpenMP)" if build.get("openmp") else "CPU kernels single-threaded"
        lines.append(f"{'_C':<14}built {cuda}, against torch {build['torch_version']}; {threads}")
        lines.append(f"{'CUDA archs':<14}{', '.join(build['cuda_archs']) or '-'}")
    else:
        lines.append(f"{'_C':<14}not built ({build['error']})")
    if torch.cuda.is_available():
        from ._backend import cuda_kernels_on

        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            lines.append(f"{'GPU ' + str(index):<14}{torch.cuda.get_device_name(index)} (sm_{major}{minor}): "
                         f"{cuda_kernels_on(index)}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        lines.append(f"{'backends ' + device:<14}{', '.join(gmkernels.available_backends(device))}")
    return lines


def _add_train(commands) -> None:
    from .training.loop import DEFAULT_STEPS, TrainOptions

    defaults = TrainOptions()
    train = commands.add_parser("train", help="train a model of gmk.models and write DIR/{checkpoint.pt,"
                                "metrics.jsonl,loss.png,samples.png}", argument_default=argparse.SUPPRESS)
    train.add_argument("model", help="pixelcnn, gated_pixelcnn, pixelcnnpp, wavenet, dcgan, stylegan2, ... "
                       "(gmk.models.MODELS)")
    train.add_argument("--data", help="digits, shapes, shapes32, tones, a folder of PNG/JPEG images or a "
                       ".npy array (default: digits for image models, tones for audio)")
    train.add_argument("--out", default=None, help="the run's folder (default: runs/MODEL)")
    train.add_argument("--resume", action="store_true", default=False,
                       help="continue the run in --out exactly; only --steps/--epochs and the "
                       "--backend/--device/--threads/--*-every/--samples options may change")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help=f"total optimiser steps (default {DEFAULT_STEPS})")
    length.add_argument("--epochs", type=int, help="passes over the training split")
    for flag, kind, text in (
            ("--batch-size", int, "global batch size, over all processes"),
            ("--lr", float, "peak learning rate"),
            ("--weight-decay", float, "AdamW's decoupled weight decay"),
            ("--warmup-steps", int, "steps of linear learning-rate warm-up"),
            ("--clip-norm", float, "gradient norm clipping"), ("--ema-decay", float, "EMA of the weights"),
            ("--size", str, "model size for the data: default or tiny"),
            ("--dtype", str, "float32, or bfloat16 (the forward on bfloat16 copies of the float32 weights)"),
            ("--backend", str, "gmk backend: auto, reference, cpu, cuda, triton"),
            ("--device", str, "auto (a GPU when there is one), cpu or cuda"),
            ("--threads", int, "CPU threads per process (default: the cores this process may use, "
             "shared among the processes of this machine)"),
            ("--seed", int, "seed of the initialisation, data order and samples"),
            ("--log-every", int, "steps between train-metric records"),
            ("--eval-every", int, "steps between test-set evaluations"),
            ("--checkpoint-every", int, "steps between checkpoints"),
            ("--samples", int, "samples drawn at the end (0: none)")):
        default = getattr(defaults, flag[2:].replace("-", "_"))
        train.add_argument(flag, type=kind, help=f"{text} (default {default})")
    train.add_argument("--conditional", action="store_true", help="condition on the data's class labels")
    train.add_argument("--set", action="append", metavar="FIELD=VALUE",
                       help="override a field of the model's config, e.g. --set reversible=true --set "
                            "hidden_channels=32 (repeatable; a new run only)")
    train.add_argument("--vqvae", help="vqvae-prior: the folder of the `gmk train vqvae` run whose codes the "
                       "prior models (its weights are copied into the prior's checkpoint)")


def _add_sample(commands) -> None:
    sample = commands.add_parser("sample", help="sample a trained run: a PNG grid (images) or a .wav (audio)")
    sample.add_argument("dir", help="a run's folder (gmk train --out)")
    sample.add_argument("--n", type=int, help="how many samples (default 64 images, 4 audio clips)")
    sample.add_argument("--out", help="the file to write (default DIR/sample.png or DIR/sample.wav)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--length", type=int, help="audio samples per clip (default 0.1 s)")
    sample.add_argument("--device", default="auto", help="auto, cpu or cuda")
    sample.add_argument("--truncation", type=float,
                        help="GANs: pull each latent toward the mean one by ψ in [0, 1] (default 1: none)")
    sample.add_argument("--method", choices=("cached", "naive"),
                        help="PixelCNN models and the VQ-VAE prior: cached (default; the network evaluated "
                             "only where a step changes it) or naive (the whole network "
                             "per step; the same images, slower)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gmk", description="gmkernels: kernels for deep generative models")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, how _C was built, backends per device")
    commands.add_parser("bench", help="run the benchmark suite (gmk bench --help)", add_help=False)
    _add_train(commands)
    _add_sample(commands)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "info":
        print("\n".join(info_lines()))
        return 0
    from . import training

    options = dict(vars(args))
    command = options.pop("command")
    if command == "train":
        model = options.pop("model")
        out = options.pop("out") or f"runs/{model}"
        out = training.train(model, out, resume=options.pop("resume"), **options)
        if out is not None:  # rank 0 of a torchrun
            print(f"wrote {out}/: checkpoint.pt, metrics.jsonl, loss.png, samples.png")
    else:
        print(f"wrote {training.sample(options.pop('dir'), **options)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own options: benchmarks/harness.py parses them
        from .benchmarks.harness import main as bench_main

        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    from .training.errors import TrainingError

    try:
        return _run(args)
    except TrainingError as error:
        print(f"gmk {args.command}: error: {error}", file=sys.stderr)
        return 2


def run_as_program() -> int:
    """The ``gmk`` command and ``python -m gmkernels``: ``main()``, with ``train`` and ``sample`` run under
    OpenMP's passive wait policy unless ``OMP_WAIT_POLICY`` is set. OpenMP reads it once, when torch
    loads it, so the command starts itself again with it set. Spinning workers wait for a core that the
    rest of a busy machine holds: 20 steps of a tiny PixelCNN on 2 cores with one other busy process took
    35 s with spinning threads and 1.1 s with passive ones (0.9 s with one thread)."""
    if "OMP_WAIT_POLICY" not in os.environ and sys.argv[1:2] in (["train"], ["sample"]):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, "-m", "gmkernels", *sys.argv[1:]])
    return main()


if __name__ == "__main__":
    sys.exit(run_as_program())
