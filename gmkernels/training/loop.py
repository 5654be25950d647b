"""The one training loop: AdamW with linear warm-up, gradient clipping, an EMA of the weights, periodic
test-set bits/dim, a tqdm bar, DIR/metrics.jsonl, exact resume, DDP, and loss.png / samples.png at the end.

    gmkernels.training.train("pixelcnnpp", "runs/digits", data="digits", steps=2000)

One step: the global batch of ``batch_size`` examples (a seeded permutation per epoch; each rank its
contiguous share), forward (with ``dtype="bfloat16"`` on bfloat16 copies of the weights; parameters and
optimiser state stay float32), backward, clip the gradient norm, AdamW, then EMA ← EMA + (1 − d)(θ − EMA) with
d = min(ema_decay, (1 + step) / (10 + step)) (Polyak averaging as PixelCNN++ used; the ramp lets short
runs average over their own length). Test bits/dim and samples use the EMA weights.

A kind (kinds.py) may bring its own ``optimizer(run)``, ``train_step(run, x, y)`` (returning the terms to
log), ``evaluate(run)`` and ``save_loss_plot``; the GANs' does (two optimiser steps per step, test FID).
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import data as datasets
from .._backend import use_backend
from . import checkpoint, distributed, kinds
from .errors import TrainingError

METRICS = "metrics.jsonl"
DEFAULT_STEPS = 2000
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TrainOptions:
    """A run's options (``gmk train --help``). ``batch_size`` is the global batch, over all processes."""

    data: str | None = None  # None: "digits" for image models, "tones" for audio models
    size: str = "default"  # the model config's size for the data: "default" or "tiny"
    conditional: bool = False  # condition on the data's class labels
    steps: int | None = None  # total steps; or ``epochs`` passes over the training split; else DEFAULT_STEPS
    epochs: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    clip_norm: float = 1.0
    ema_decay: float = 0.9995
    dtype: str = "float32"
    seed: int = 0
    backend: str = "auto"
    device: str = "auto"
    threads: int | None = None  # None: see default_threads
    log_every: int = 10
    eval_every: int = 250
    checkpoint_every: int = 500
    samples: int | None = None  # samples drawn at the end; None: 64 images or 4 audio clips
    vqvae: str | None = None  # vqvae-prior: the folder of the VQ-VAE's run
    set: tuple[str, ...] = ()  # FIELD=VALUE overrides of the model config (gmk train --set)

    # May differ from the checkpoint's on --resume: they change neither the parameters nor the data order.
    RESUMABLE = ("steps", "epochs", "backend", "device", "threads", "log_every", "eval_every",
                 "checkpoint_every", "samples")


def _check_options(options: TrainOptions) -> None:
    def require(condition: bool, flag: str, expected: str) -> None:
        if not condition:
            value = getattr(options, flag.lstrip("-").replace("-", "_"))
            raise TrainingError(f"{flag} must be {expected}, got {value!r}")

    for name in ("steps", "epochs", "threads", "samples"):
        value = getattr(options, name)
        require(value is None or (isinstance(value, int) and value >= (0 if name == "samples" else 1)),
                f"--{name}", "a positive integer")
    if options.steps is not None and options.epochs is not None:
        raise TrainingError("give --steps or --epochs, not both")
    for name in ("batch_size", "log_every", "eval_every", "checkpoint_every", "warmup_steps"):
        require(isinstance(getattr(options, name), int) and getattr(options, name) >= 1,
                "--" + name.replace("_", "-"), "a positive integer")
    for name in ("lr", "clip_norm"):
        require(math.isfinite(getattr(options, name)) and getattr(options, name) > 0,
                "--" + name.replace("_", "-"), "a positive number")
    require(math.isfinite(options.weight_decay) and options.weight_decay >= 0, "--weight-decay", ">= 0")
    require(0 <= options.ema_decay < 1, "--ema-decay", "in [0, 1)")
    require(options.dtype in DTYPES, "--dtype", " or ".join(DTYPES))
    require(options.size in kinds.SIZES, "--size", " or ".join(kinds.SIZES))
    require(options.backend in ("auto", "reference", "cpu", "cuda", "triton"), "--backend",
            "auto, reference, cpu, cuda or triton")


def _options(model: str, previous: dict | None, given: dict, path: Path) -> TrainOptions:
    """The given options, or on resume the checkpoint's with the RESUMABLE ones the user gave."""
    fields = {field.name for field in dataclasses.fields(TrainOptions)}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise TypeError(f"train: unknown options {unknown}")
    if previous is None:
        options = TrainOptions(**given)
    else:
        if previous["model"] != model:
            raise TrainingError(f"{path}: holds a {previous['model']} run, not {model}")
        saved = TrainOptions(**previous["options"])
        changed = sorted(name for name, value in given.items()
                         if name not in TrainOptions.RESUMABLE and value != getattr(saved, name))
        if changed:
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            raise TrainingError(f"--resume continues {path} with its own options; {flags} cannot change")
        if "steps" in given or "epochs" in given:
            saved = dataclasses.replace(saved, steps=None, epochs=None)
        options = dataclasses.replace(saved, **{name: given[name] for name in TrainOptions.RESUMABLE
                                                if name in given})
    _check_options(options)
    return options


def _config_value(text: str):
    """A --set value: a Python literal (1, 0.5, None, (1, 2), 'text'), true/false, or else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def override_config(config, assignments: tuple[str, ...]):
    """``config`` with the FIELD=VALUE ``assignments`` applied, checked by the config class itself."""
    fields = {field.name for field in dataclasses.fields(config)}
    overrides = {}
    for assignment in assignments:
        name, equals, text = assignment.partition("=")
        name = name.strip()
        if not equals or not name:
            raise TrainingError(f"--set takes FIELD=VALUE, got {assignment!r}")
        if name not in fields:
            raise TrainingError(f"--set {name}: {type(config).__name__} has no field {name!r} "
                                f"(fields: {', '.join(sorted(fields))})")
        overrides[name] = _config_value(text.strip())
    if not overrides:
        return config
    try:
        return dataclasses.replace(config, **overrides)
    except (TypeError, ValueError) as error:
        raise TrainingError(f"--set: {error}") from None


def _prepare_out(out: Path, resume: bool) -> None:
    """``out`` exists and can be written; a new run never takes over an old run's files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.write_atomically(out / ".write-test", lambda file: None)
        (out / ".write-test").unlink()
    except OSError as error:
        raise TrainingError(f"--out {out}: cannot write there ({error.strerror or error})") from None
    taken = [name for name in (checkpoint.FILE, METRICS) if (out / name).exists()]
    if taken and not resume:
        raise TrainingError(f"--out {out} already holds a run ({', '.join(taken)}): pass --resume to "
                            "continue it, or choose another --out")


def _load_data(name: str):
    try:
        return datasets.load(name, "train"), datasets.load(name, "test")
    except ValueError as error:
        raise TrainingError(str(error)) from None


def default_threads(context: distributed.Context) -> int:
    """CPU threads per process: the cores this process may use that the other processes of the machine
    leave idle (1-minute load average), shared among the local ranks; at least 1.

    Threads beyond the idle cores stall in OpenMP barriers: 10 steps of a tiny PixelCNN on 2 cores with a
    load of 11 took 0.5 s with 1 thread and 21.8 s with 2."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", context.world_size))
    return max(1, min(cores, cores - busy) // local_ranks)


@contextlib.contextmanager
def _threads(count: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def derived_seed(*parts) -> int:
    """A 63-bit seed that is a function of ``parts`` (the run's seed, a step, a rank, ...)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BatchOrder:
    """Global batch s: a slice of the seeded permutation of epoch s // steps_per_epoch (the last
    partial batch of an epoch is dropped)."""

    def __init__(self, count: int, batch_size: int, seed: int):
        self.count, self.batch_size, self.seed = count, batch_size, seed
        self.steps_per_epoch = count // batch_size
        self._epoch, self._order = None, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derived_seed("epoch", self.seed, epoch))
            self._epoch, self._order = epoch, torch.randperm(self.count, generator=generator)
        return self._order[position * self.batch_size:(position + 1) * self.batch_size]


class EMA:
    """An exponential moving average of a module's floating-point state (parameters and buffers);
    other buffers are copied."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.state = {name: value.detach().clone() for name, value in module.state_dict().items()}

    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, value in module.state_dict().items():
            if value.is_floating_point():
                self.state[name].lerp_(value.detach(), 1 - decay)
            else:
                self.state[name].copy_(value)

    @contextlib.contextmanager
    def weights_in(self, module: torch.nn.Module):
        """``module`` holds the EMA weights inside the block, its own again after it."""
        own = {name: value.detach().clone() for name, value in module.state_dict().items()}
        module.load_state_dict(self.state)
        try:
            yield module
        finally:
            module.load_state_dict(own)


class Run:
    """One training run's state: model, optimiser, EMA, data, and where it writes."""

    def __init__(self, name: str, model_class, config, options: TrainOptions, data: tuple, out: Path,
                 context: distributed.Context):
        self.name, self.config, self.options, self.out, self.context = name, config, options, out, context
        self.kind = kinds.kind_of(model_class)
        self.train_set, self.test_set = data
        device = context.device
        torch.manual_seed(derived_seed("init", options.seed))
        self.model = model_class(config).to(device)
        self.ema = EMA(self.model, options.ema_decay)
        if hasattr(self.kind, "optimizer"):  # a kind with its own parameter groups (GANs)
            self.optimizer = self.kind.optimizer(self)
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=options.lr,
                                               weight_decay=options.weight_decay)
        self.parallel = distributed.wrap(self.model, context)
        self.order = BatchOrder(len(self.train_set), options.batch_size, options.seed)
        if self.order.steps_per_epoch == 0:
            raise TrainingError(f"--batch-size {options.batch_size} is larger than the training split "
                                f"({len(self.train_set)} examples)")
        if options.batch_size % context.world_size:
            raise TrainingError(f"--batch-size {options.batch_size} must be a multiple of the "
                                f"{context.world_size} processes")
        self.train_x, self.train_y = self.train_set.x.to(device), self.train_set.y.to(device)
        self.test_x, self.test_y = self.test_set.x.to(device), self.test_set.y.to(device)
        self.step = 0

    @property
    def total_steps(self) -> int:
        if self.options.steps is not None:
            return self.options.steps
        if self.options.epochs is not None:
            return self.options.epochs * self.order.steps_per_epoch
        return DEFAULT_STEPS

    def loss_terms(self, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        """The kind's loss terms; with ``dtype="bfloat16"`` the module runs on bfloat16 copies of its
        floating-point parameters and buffers (``.to`` is differentiable: the float32 weights get the
        gradients). Not autocast: gmk's ops take operands of one dtype, which autocast does not give."""
        if self.options.dtype == "float32":
            return self.kind.loss_terms(module, x, y, self.options.conditional)
        low, prefix = DTYPES[self.options.dtype], "" if module is self.model else "module."
        state = itertools.chain(self.model.named_parameters(), self.model.named_buffers())
        weights = {prefix + name: value.to(low) if value.is_floating_point() else value
                   for name, value in state}

        def cast(*args, **kwargs):
            return torch.func.functional_call(module, weights, args, kwargs)
        return self.kind.loss_terms(cast, x, y, self.options.conditional)

    def state(self) -> dict:
        return {"model": self.name, "config": checkpoint.config_fields(self.config),
                "data": self.train_set.describe(), "options": dataclasses.asdict(self.options),
                "step": self.step,
                "model_state": self.model.state_dict(), "ema_state": self.ema.state,
                "optimizer_state": self.optimizer.state_dict()}

    def restore(self, state: dict, path: Path) -> None:
        checkpoint.load_weights(self.model, state["model_state"], path, "model weights")
        checkpoint.load_weights(self.optimizer, state["optimizer_state"], path, "optimiser state")
        ema = EMA(self.model, self.options.ema_decay)
        try:
            if set(state["ema_state"]) != set(ema.state):
                raise KeyError("other parameter names")
            for name, value in state["ema_state"].items():
                ema.state[name].copy_(value)
        except (KeyError, RuntimeError) as error:
            raise TrainingError(f"{path}: its EMA weights do not match the model ({error})") from None
        self.ema, self.step = ema, state["step"]

    # --- one step ---------------------------------------------------------------------------------

    def optimise(self, loss: torch.Tensor, parameters) -> None:
        """Backward ``loss`` from zeroed gradients, clip the norm of the gradient of ``parameters``
        (those that have one: the optimiser steps only them), optimiser step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.grad_norm = torch.nn.utils.clip_grad_norm_(list(parameters), self.options.clip_norm)
        self.optimizer.step()

    def train_step(self) -> dict[str, torch.Tensor]:
        """One training step; returns the terms logged ({"loss": ..., metric: ...}, or the kind's own)
        of this rank's share, detached, not synchronised."""
        options = self.options
        torch.manual_seed(derived_seed("step", options.seed, self.step, self.context.rank))
        indices = distributed.local_batch(self.order(self.step), self.context).to(self.context.device)
        for group in self.optimizer.param_groups:
            group["lr"] = options.lr * min(1.0, (self.step + 1) / options.warmup_steps)
        x, y = self.train_x[indices], self.train_y[indices]
        if hasattr(self.kind, "train_step"):  # a kind with steps of its own (GANs: D, then G)
            logged = self.kind.train_step(self, x, y)
        else:
            terms = self.loss_terms(self.parallel, x, y)
            self.optimise(terms["loss"], self.model.parameters())
            logged = {"loss": terms["loss"].detach(), self.kind.metric: terms[self.kind.metric].detach()}
        self.ema.update(self.model, self.step)
        self.step += 1
        return logged

    @torch.no_grad()
    def evaluate(self) -> float:
        """The test split's mean ``metric`` under the EMA weights (each rank a strided share), or the
        kind's own evaluation."""
        if hasattr(self.kind, "evaluate"):
            return self.kind.evaluate(self)
        total = torch.zeros(2, dtype=torch.float64, device=self.context.device)
        indices = torch.arange(self.context.rank, len(self.test_set), self.context.world_size,
                               device=self.context.device)
        self.model.eval()
        with self.ema.weights_in(self.model):
            for chunk in indices.split(self.options.batch_size):
                terms = self.loss_terms(self.model, self.test_x[chunk], self.test_y[chunk])
                total[0] += terms[self.kind.metric].double() * len(chunk)
                total[1] += len(chunk)
        self.model.train()
        total = distributed.sum_over_ranks(total, self.context)
        return (total[0] / total[1]).item()

    @torch.no_grad()
    def draw_samples(self, count: int, generator: torch.Generator, length: int | None = None) -> torch.Tensor:
        self.model.eval()
        with self.ema.weights_in(self.model):
            samples = self.kind.sample(self.model, count, self.train_set.describe(), self.options.conditional,
                                       generator, length)
        self.model.train()
        return samples


def _metrics_so_far(out: Path, step: int) -> list[dict]:
    """The records of ``out``/metrics.jsonl up to ``step`` (a resumed run drops the later ones)."""
    path = out / METRICS
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [record for record in records if record["step"] <= step]


def _write_metrics(out: Path, records: list[dict]) -> None:
    text = "".join(json.dumps(record) + "\n" for record in records).encode()
    checkpoint.write_atomically(out / METRICS, lambda file: file.write(text))


def _loop(run: Run) -> None:
    from tqdm import tqdm

    options, context, out = run.options, run.context, run.out
    total = run.total_steps
    if run.step >= total:
        raise TrainingError(f"{out} is at step {run.step} already; give a larger --steps or --epochs "
                            "to continue")
    records = _metrics_so_far(out, run.step) if context.writes else []
    if context.writes:
        _write_metrics(out, records)
    window, steps_in_window = {}, 0  # the sums of the logged terms since the last record
    started = time.perf_counter()
    test_key = f"test_{run.kind.metric}"
    if run.step == 0 and getattr(run.kind, "evaluates_at_start", False):
        record = {"step": 0, test_key: run.evaluate()}
        if context.writes:
            records.append(record)
            _write_metrics(out, records)
    with (tqdm(total=total, initial=run.step, disable=None if context.writes else True, dynamic_ncols=True,
               desc=f"{run.name} on {run.train_set.name}") as bar,
          open(out / METRICS, "a") if context.writes else contextlib.nullcontext() as metrics):
        while run.step < total:
            for name, value in run.train_step().items():
                window[name] = window.get(name, 0) + value.double()
            steps_in_window += 1
            step, last = run.step, run.step == total
            record = {}
            if step % options.log_every == 0 or last:
                names = list(window)
                sums = distributed.sum_over_ranks(torch.stack([window[name] for name in names]), context)
                means = (sums / (steps_in_window * context.world_size)).tolist()
                record = {"step": step, "epoch": (step - 1) // run.order.steps_per_epoch,
                          **dict(zip(names, means)),
                          "lr": run.optimizer.param_groups[0]["lr"], "grad_norm": run.grad_norm.item(),
                          "seconds": round(time.perf_counter() - started, 3)}
                window, steps_in_window = {}, 0
            if step % options.eval_every == 0 or last:
                record = {"step": step, **record, test_key: run.evaluate()}
            if record and context.writes:
                records.append(record)
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                bar.set_postfix({key: f"{record[key]:.4g}" for key in ("loss", run.kind.metric, "d_loss",
                                                                         test_key)
                                 if key in record})
            if (step % options.checkpoint_every == 0 or last) and context.writes:
                checkpoint.save(out, run.state())
            bar.update(1)
    if context.writes:
        _finish(run, records)


def _finish(run: Run, records: list[dict]) -> None:
    from . import pictures

    if hasattr(run.kind, "save_loss_plot"):
        run.kind.save_loss_plot(records, run.out / "loss.png")
    else:
        pictures.save_loss_plot(records, run.kind.metric, run.out / "loss.png")
    count = run.kind.default_samples if run.options.samples is None else run.options.samples
    if count:
        generator = torch.Generator(run.context.device).manual_seed(run.options.seed)
        run.kind.show_samples(run.draw_samples(count, generator), run.train_set.describe(), run.out)


def train(model: str, out: str | Path, *, resume: bool = False, **options) -> Path | None:
    """Train ``model`` (a name of gmk.models.MODELS) with ``options`` (TrainOptions' fields), writing to
    ``out``; ``resume``: continue the run in ``out`` from its checkpoint, exactly. Under torchrun every
    process calls this; rank 0 writes and gets ``out`` back, the other ranks None."""
    out = Path(out)
    if isinstance(options.get("vqvae"), Path):  # kept as a str in the checkpoint's options
        options["vqvae"] = str(options["vqvae"])
    if isinstance(options.get("set"), (list, str)):  # gmk train --set appends to a list
        options["set"] = tuple([options["set"]] if isinstance(options["set"], str) else options["set"])
    model_class = kinds.model_class(model)
    previous = checkpoint.load(out) if resume else None
    options = _options(model, previous, options, out / checkpoint.FILE)
    if options.data is None:
        default_data = "digits" if kinds.data_kind(model_class) == "image" else "tones"
        options = dataclasses.replace(options, data=default_data)
    data = _load_data(options.data)
    _prepare_out(out, resume)
    described = data[0].describe()
    if described["kind"] != kinds.data_kind(model_class):
        raise TrainingError(f"{model} is an {kinds.data_kind(model_class)} model; --data {options.data} is "
                            f"{described['kind']}")
    kind = kinds.kind_of(model_class)
    if options.vqvae is not None and not hasattr(kind, "run_config"):
        raise TrainingError(f"--vqvae names the VQ-VAE of a vqvae-prior run; {model} takes none")
    if previous is None and hasattr(kind, "run_config"):  # a kind whose config needs more than the data
        config = kind.run_config(model_class, described, options)
    elif previous is None:
        config = kind.config(model_class, described, options.size, options.conditional)
    if previous is None:
        config = override_config(config, options.set)
    else:
        if previous["data"] != described:
            raise TrainingError(f"{out / checkpoint.FILE}: was trained on other data "
                                f"({previous['data']['name']})")
        config = checkpoint.rebuild_config(previous, model_class, out / checkpoint.FILE)
    context = distributed.start(options.device)
    try:
        with _threads(options.threads or default_threads(context)), use_backend(options.backend):
            run = Run(model, model_class, config, options, data, out, context)
            if previous is not None:
                run.restore(previous, out / checkpoint.FILE)
            elif hasattr(run.kind, "initialize"):  # weights from elsewhere (the VQ-VAE of its prior)
                run.kind.initialize(run)
            _loop(run)
    finally:
        distributed.stop(context)
    return out if context.writes else None
