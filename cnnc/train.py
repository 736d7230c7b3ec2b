"""`cnnc train`, `cnnc eval` and `cnnc predict`: train a classifier with checkpoints, measure it, use it.

    cnnc train specs/digits.cnn --data digits        # -> runs/digits.weights.npz, runs/digits.weights.ckpt.npz
    cnnc eval specs/digits.cnn --weights runs/digits.weights.npz --data digits --json
    cnnc predict specs/digits.cnn --weights runs/digits.weights.npz seven.png batch.npy

A run is a pure function of its settings: the seed fixes the initial weights (Model's own seed), the
shuffling order (a Generator seeded [seed, 2]) and the dropout masks (the model's dropout_rng,
seeded [seed, 1]). The learning rate follows a schedule over the whole run's optimiser steps. After
every epoch a checkpoint holds the complete state (cnnc/checkpoint.py), so a run interrupted at any
batch boundary and resumed reaches bit-identical weights to one that was never interrupted.

Everything here is a function of plain values; the `run_*` functions at the end are the CLI glue.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import (Checkpoint, check_position, data_fingerprint, default_checkpoint_path, load_checkpoint,
                         network_hash, rng_state, save_checkpoint, set_rng_state, validate_run_meta)
from .diagnostics import CnncError, Diagnostic, SpecError
from .distributed import NONFINITE, STOP, Local
from .fileio import atomic_write_text, check_distinct, check_writable
from .inference import NonFiniteOutputs, confusion_table, evaluate, light_background, probabilities, read_inputs, top_k
from .model import Model
from .progress import Progress

# ---- settings --------------------------------------------------------------------------------------
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")
DEFAULT_LR = {"adam": 3e-3, "sgd": 0.05}  # tuned on digits, Fashion-MNIST and mnist-5k: docs/training.md
VAL_SPLIT_SEED = 12345  # the validation hold-out is the same whatever --seed is
LOG_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
            "lr", "seconds", "images_per_second")
EXPLODED_LOSS = 1e6  # a mean cross-entropy this large means logits 1e6 apart: training has blown up
INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C (128 + SIGINT)


@dataclass(frozen=True)
class TrainConfig:
    """The settings that determine a run's arithmetic. A resumed run keeps all of them, except that
    `epochs` may grow. lr None means the optimiser's default (DEFAULT_LR)."""

    epochs: int = 20
    batch: int = 32
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.9            # SGD only
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0
    val_split: float = 0.0

    def checked(self) -> "TrainConfig":
        """Validate every value (CnncError naming the option) and fill in the default lr."""
        _require(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        _require(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        _require(self.epochs >= 1, f"--epochs must be at least 1; got {self.epochs}")
        _require(self.batch >= 1, f"--batch must be at least 1; got {self.batch}")
        _require(self.seed >= 0, f"--seed must be a non-negative integer; got {self.seed}")
        lr = DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)
        _require(math.isfinite(lr) and lr > 0, f"--lr must be a positive finite number; got {lr}")
        _require(math.isfinite(self.momentum) and 0 <= self.momentum < 1, f"--momentum must be in [0, 1); got {self.momentum}")
        _require(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                 f"--weight-decay must be a non-negative finite number; got {self.weight_decay}")
        _require(math.isfinite(self.val_split) and 0 <= self.val_split < 1, f"--val-split must be in [0, 1); got {self.val_split}")
        return dataclasses.replace(self, lr=lr)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CnncError(message)


def learning_rate(schedule: str, base: float, step: int, total_steps: int) -> float:
    """The learning rate of optimiser step `step` (0-based) of `total_steps`.

    cosine:   base * (1 + cos(pi * step / total)) / 2, from base down towards 0 (Loshchilov & Hutter's
              SGDR without restarts), updated every step
    step:     base, then base/10 from 50% of the steps, base/100 from 75%
    constant: base
    """
    progress = min(step, total_steps) / max(total_steps, 1)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return base * (0.1 ** ((progress >= 0.5) + (progress >= 0.75)))
    return base


def make_optimizer(config: TrainConfig, model: Model):
    """The configured optimiser over the model's params and grads (updated in place by .step())."""
    from .optim import SGD, Adam

    try:
        if config.optimizer == "sgd":
            return SGD(model.params, model.grads, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        return Adam(model.params, model.grads, lr=config.lr, weight_decay=config.weight_decay)
    except ValueError as e:
        raise CnncError(f"cannot set up the {config.optimizer} optimiser: {e}") from None


# ---- data --------------------------------------------------------------------------------------------
@dataclass
class Splits:
    """The arrays a run uses. x: (N, *input_shape) float32, y: (N,) int64. x_val is None without --val-split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray


def make_splits(ds, val_split: float) -> Splits:
    """Hold out round(val_split * N) training samples for validation, chosen by a fixed permutation
    (VAL_SPLIT_SEED) so the same fraction of the same data always holds out the same samples."""
    if val_split == 0:
        return Splits(ds.x_train, ds.y_train, None, None, ds.x_test, ds.y_test)
    n = len(ds.y_train)
    n_val = int(round(val_split * n))
    if not 1 <= n_val < n:
        raise CnncError(f"--val-split {val_split} holds out {n_val} of {n} training samples; "
                        "it must leave at least one for validation and one for training")
    order = np.random.default_rng(VAL_SPLIT_SEED).permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return Splits(ds.x_train[train], ds.y_train[train], ds.x_train[val], ds.y_train[val], ds.x_test, ds.y_test)


# ---- the training loop -----------------------------------------------------------------------------
@dataclass
class RunState:
    """Where a run is. Between epochs perm is None and batch 0; within an epoch perm is the epoch's
    shuffling order and `batch` counts the batches already trained."""

    epoch: int = 0          # completed epochs
    batch: int = 0          # completed batches of the current epoch
    step: int = 0           # optimiser steps since the start of the run
    perm: np.ndarray | None = None
    loss_sum: float = 0.0   # the current epoch's running sums (train loss x samples, correct, samples, seconds)
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    lr: float = 0.0         # the learning rate of the last step
    history: list[dict] = field(default_factory=list)


class TrainingInterrupted(Exception):
    """Ctrl-C stopped the run; `checkpoint` holds the state at the batch boundary where it stopped."""

    def __init__(self, checkpoint: str, epoch: int, batch: int, batches: int):
        self.checkpoint, self.epoch, self.batch, self.batches = checkpoint, epoch, batch, batches
        super().__init__(f"interrupted in epoch {epoch} after batch {batch} of {batches}")


class Trainer:
    """Trains `model` on `splits` with `config`, writing a checkpoint after every epoch.

    identity: what the checkpoint records about the run besides its state (spec, data, backend, paths).
    on_batch: called with the trainer after every batch (tests use it to request a stop).
    """

    def __init__(self, model: Model, splits: Splits, config: TrainConfig, checkpoint_path: str,
                 identity: dict, progress: Progress | None = None, log_path: str | None = None, comm=None):
        self.model, self.splits, self.config = model, splits, config
        self.comm = comm or Local()  # cnnc/distributed.py: the ranks of a data-parallel run, or just this one
        self.check_sync = False      # --check-sync: compare the parameters of every rank after every step
        self.stop_agreed = False     # under MPI: a stop every rank has heard of (see train_batch)
        self.checkpoint_path, self.identity, self.log_path = checkpoint_path, identity, log_path
        self.progress = progress or Progress("quiet")
        self.optimizer = make_optimizer(config, model)
        self.shuffle_rng = np.random.default_rng([config.seed, 2])
        self.state = RunState()
        self.stop_requested = False
        self.on_batch = None
        self.checkpoint_epoch: int | None = None  # the epoch the checkpoint on disk holds, once written

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.splits.y_train) / self.config.batch)

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.batches_per_epoch

    # ---- running ---------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> str:
        """Train until config.epochs are done ("finished") or `stop_after` epochs are ("stopped").
        Raises TrainingInterrupted when a stop was requested (Ctrl-C), CnncError when the loss diverges."""
        with stop_on_sigint(self):
            while self.state.epoch < self.config.epochs:
                if stop_after is not None and self.state.epoch >= stop_after:
                    return "stopped"
                self.train_epoch()
        return "finished"

    def train_epoch(self) -> None:
        s, n = self.state, len(self.splits.y_train)
        if s.perm is None:
            s.perm = self.shuffle_rng.permutation(n)
        self.progress.start_epoch(s.epoch + 1, self.config.epochs, n, done=min(s.batch * self.config.batch, n))
        while s.batch < self.batches_per_epoch:
            if self.stop_requested if self.comm.size == 1 else self.stop_agreed:
                self.interrupt()
            started = time.perf_counter()
            batch = s.perm[s.batch * self.config.batch:(s.batch + 1) * self.config.batch]
            mine = self.comm.shard(batch)  # this rank's part of the global batch (all of it in one process)
            loss, correct = self.train_batch(self.splits.x_train[mine], self.splits.y_train[mine], total=len(batch))
            s.loss_sum += loss * len(batch)
            s.correct += correct
            s.seen += len(batch)
            s.batch += 1
            s.step += 1
            s.seconds += time.perf_counter() - started
            self.progress.update(len(batch), s.loss_sum / s.seen, s.correct / s.seen)
            if self.on_batch:
                self.on_batch(self)
        self.end_epoch()

    def train_batch(self, x: np.ndarray, labels: np.ndarray, total: int | None = None) -> tuple[float, int]:
        """One optimiser step on x: (B, *input_shape), labels: (B,). Returns (mean loss, correct predictions).
        Data-parallel, x is this rank's part of a global batch of `total` samples (it may be empty), and the
        loss, the count and the step are the global batch's (cnnc/distributed.py)."""
        s, n = self.state, len(labels)
        total = n if total is None else total
        s.lr = learning_rate(self.config.schedule, self.config.lr, s.step, self.total_steps)
        self.optimizer.lr = s.lr
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by the checks, not as warnings
            scores = self.model.forward(x, train=True) if n else None  # (B, K)
            finite = scores is None or bool(np.isfinite(scores).all())
            loss, dscores = self.model.loss(scores, labels) if n and finite else (0.0, None)
            correct = int((scores.argmax(axis=1) == labels).sum()) if n else 0
            flags = (0 if finite else NONFINITE) | (STOP if self.stop_requested else 0)
            loss, correct, flags = self.comm.reduce_batch(loss, n, total, correct, flags)  # the same on every rank
            self.stop_agreed = bool(flags & STOP)
            if flags & NONFINITE:
                self.diverged("the network's outputs are not finite")
            if not math.isfinite(loss):
                self.diverged(f"the loss is {loss}")
            if loss > EXPLODED_LOSS:
                self.diverged(f"the loss is {loss:.3g}, beyond {EXPLODED_LOSS:g}")
            if dscores is None:
                pass  # no samples on this rank: allreduce_gradients contributes zeros
            elif self.model.backend_name == "c":
                self.model.backward(dscores, input_grad=False)  # C skips the first layer's input gradient
            else:
                self.model.backward(dscores)
            self.comm.allreduce_gradients(self.model, n / total)  # the global mean-loss gradient on every rank
            self.optimizer.step()
            self.comm.sync_buffers(self.model)
            if self.check_sync:
                self.comm.check_sync(self.model)
        return loss, correct

    def end_epoch(self) -> None:
        """Measure the epoch, record it, save the checkpoint and the log, and reset the epoch state."""
        s = self.state
        self.check_finite_weights()
        record = self.epoch_record()
        self.progress.end_epoch(epoch_line(record, self.config.epochs))
        s.history.append(record)
        s.epoch += 1
        s.batch, s.perm = 0, None
        s.loss_sum, s.correct, s.seen, s.seconds = 0.0, 0, 0, 0.0
        self.save()
        self.write_log()

    def epoch_record(self) -> dict:
        """One line of the metrics log: exactly LOG_KEYS."""
        s, sp = self.state, self.splits
        try:
            val = self.comm.evaluate(self.model, sp.x_val, sp.y_val) if sp.x_val is not None else None
            test = self.comm.evaluate(self.model, sp.x_test, sp.y_test)
        except NonFiniteOutputs as e:
            self.diverged(f"evaluating after the epoch: {e.diagnostics[0].message}", batch=s.batch)
        return {"epoch": s.epoch + 1, "train_loss": s.loss_sum / s.seen, "train_accuracy": s.correct / s.seen,
                "val_loss": val["loss"] if val else None, "val_accuracy": val["accuracy"] if val else None,
                "test_loss": test["loss"], "test_accuracy": test["accuracy"], "lr": s.lr,
                "seconds": round(s.seconds, 4), "images_per_second": round(s.seen / s.seconds, 1) if s.seconds else None}

    def check_finite_weights(self) -> None:
        if not all(np.isfinite(p).all() for p in self.model.params.values()):
            self.diverged("the weights are no longer finite after this batch's step", batch=self.state.batch)

    def diverged(self, what: str, batch: int | None = None):
        """Stop with a CnncError naming the epoch and the batch (default: the batch in progress)."""
        s = self.state
        kept = (f"the last good checkpoint ({self.checkpoint_epoch} epoch(s) done) is kept: {self.checkpoint_path}"
                if self.checkpoint_epoch is not None else "no checkpoint had been written yet")
        self.progress.close()
        error = CnncError(Diagnostic(
            "error", f"training diverged in epoch {s.epoch + 1}, batch {batch or s.batch + 1} of {self.batches_per_epoch}: "
                     f"{what} (learning rate {s.lr:g}); nothing from this epoch was saved, and {kept}",
            hint="lower the learning rate (--lr)"))
        error.collective = True  # decided on values every rank shares: every rank raises it
        raise error

    def interrupt(self):
        """Save the state at this batch boundary and stop."""
        self.progress.close()
        self.save()
        raise TrainingInterrupted(self.checkpoint_path, self.state.epoch + 1, self.state.batch, self.batches_per_epoch)

    # ---- checkpoints -------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the checkpoint (never with non-finite weights: the last good one is kept instead)."""
        self.check_finite_weights()
        s = self.state
        meta = dict(self.identity,
                    config=dataclasses.asdict(self.config),
                    position={"epoch": s.epoch, "batch": s.batch, "step": s.step},
                    schedule={"kind": self.config.schedule, "base_lr": self.config.lr, "step": s.step,
                              "total_steps": self.total_steps, "last_lr": s.lr},
                    rng={"shuffle": rng_state(self.shuffle_rng), "dropout": rng_state(self.model.dropout_rng)},
                    running={"loss_sum": s.loss_sum, "correct": s.correct, "seen": s.seen, "seconds": s.seconds},
                    history=s.history)
        if self.comm.is_root:  # every rank holds the same state; only rank 0 writes it
            # state_dict: the parameters and the buffers (batch norm's running statistics), for a bit-exact resume
            save_checkpoint(self.checkpoint_path, self.model.state_dict(), self.optimizer.state_dict(), meta, s.perm)
        self.checkpoint_epoch = s.epoch

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint: weights, optimiser, RNGs, position and metrics."""
        meta = ckpt.meta
        check_position(ckpt, len(self.splits.y_train), self.config.batch)
        try:
            self.model.load_weights(ckpt.params)
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        except (ValueError, KeyError, TypeError) as e:
            raise CnncError(f"{ckpt.path}: cannot restore the checkpoint: {e}") from None
        set_rng_state(self.shuffle_rng, meta["rng"]["shuffle"])
        set_rng_state(self.model.dropout_rng, meta["rng"]["dropout"])
        position, running = meta["position"], meta["running"]
        self.state = RunState(epoch=position["epoch"], batch=position["batch"], step=position["step"], perm=ckpt.perm,
                              lr=meta["schedule"]["last_lr"], history=list(meta["history"]), **running)
        self.checkpoint_epoch = position["epoch"]

    def write_log(self) -> None:
        """Rewrite the whole JSONL log from the history, so it always matches the checkpoint."""
        if self.log_path and self.comm.is_root:
            atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in self.state.history))


@contextlib.contextmanager
def stop_on_sigint(trainer: Trainer):
    """While training, the first Ctrl-C asks the loop to stop at the next batch boundary (it saves a
    checkpoint there); a second one raises KeyboardInterrupt at once. The handler only sets a flag:
    printing from a signal handler can collide with a print in progress."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def epoch_line(r: dict, epochs: int) -> str:
    val = f" | val loss {r['val_loss']:.4f} acc {r['val_accuracy']:.2%}" if r["val_loss"] is not None else ""
    rate = f", {r['images_per_second']:,.0f} images/s" if r["images_per_second"] else ""
    return (f"epoch {r['epoch']}/{epochs}: train loss {r['train_loss']:.4f} acc {r['train_accuracy']:.2%}{val}"
            f" | test loss {r['test_loss']:.4f} acc {r['test_accuracy']:.2%} | lr {r['lr']:.3g} | {r['seconds']:.1f} s{rate}")


# ---- models and data for the commands ----------------------------------------------------------------
def load_classifier(spec: str, model_name: str | None, backend: str, seed: int = 0) -> Model:
    """Parse the spec (spec errors surface as they are), check it is a classifier, build it on `backend`."""
    import cnnc

    network = cnnc.read_network(spec, model_name)
    if len(network.output_shape) != 1 or network.loss == "mse":
        raise CnncError(f"{spec}: model '{network.name}' is not a classifier (output {list(network.output_shape)}, "
                        f"loss {network.loss}); train, eval and predict need a flat output with loss cross_entropy")
    if backend == "numpy":
        return cnnc.load(spec, backend="numpy", model=model_name, seed=seed)
    try:
        return cnnc.load(spec, backend=backend, model=model_name, seed=seed)
    except SpecError:
        raise
    except ModuleNotFoundError as e:
        raise CnncError(f"the C backend is not available ({e}); use --backend numpy") from None
    except (CnncError, OSError, RuntimeError) as e:
        reason = "; ".join(d.message for d in e.diagnostics) if isinstance(e, CnncError) else str(e)
        raise CnncError([Diagnostic("error", f"building model '{network.name}' with the C backend failed: {reason}",
                                    hint="use --backend numpy to run on the NumPy reference backend")]) from None


def load_data_for(model: Model, data: str):
    from .datasets import load_dataset

    ds = load_dataset(data)
    ds.check_fits(model.input_shape, model.output_shape[0], model.name)
    return ds


def load_weights_file(model: Model, path: str) -> None:
    try:
        model.load_weights(path)
    except ValueError as e:
        raise CnncError(str(e)) from None


# Where training writes when -o is not given: one folder for every run's weights, checkpoints and logs,
# rather than the working directory (which is often a source checkout).
DEFAULT_RUNS_DIR = "runs"


def default_output(spec: str, model_name: str | None) -> str:
    """runs/<spec stem>.weights.npz under the current directory (<stem>.<model>.weights.npz with --model)."""
    stem = Path(spec).stem + (f".{model_name}" if model_name else "")
    return str(Path(DEFAULT_RUNS_DIR, f"{stem}.weights.npz"))


# ---- cnnc train --------------------------------------------------------------------------------------
CONFIG_OPTIONS = {"epochs": "--epochs", "batch": "--batch", "optimizer": "--optimizer", "lr": "--lr",
                  "momentum": "--momentum", "weight_decay": "--weight-decay", "schedule": "--schedule",
                  "seed": "--seed", "val_split": "--val-split"}


def config_from_args(args) -> TrainConfig:
    given = {key: getattr(args, key) for key in CONFIG_OPTIONS if getattr(args, key) is not None}
    if "momentum" in given and given.get("optimizer", "adam") != "sgd":
        raise CnncError("--momentum applies to --optimizer sgd only (Adam has betas, fixed at 0.9, 0.999)")
    return TrainConfig(**given).checked()


def check_resumable(ckpt: Checkpoint) -> None:
    """A checkpoint whose metadata does not fit the one schema of a run (hand-edited, damaged or
    tampered) is a CnncError naming the entry, before any of it is used."""
    validate_run_meta(ckpt)
    config_in_checkpoint(ckpt)


def checkpoint_path_default(ckpt: Checkpoint, key: str, suffix: str, option: str) -> str | None:
    """The weights (key "output") or log ("log") path a resumed run writes when the command line names none.
    A checkpoint's paths are only defaults in its own folder: a plain, visible file name ending in `suffix`
    (or a path that leads into the checkpoint's folder, as older checkpoints stored it), placed beside the
    checkpoint. Anything else is refused: resuming someone else's checkpoint writes only where the user says."""
    stored = ckpt.meta.get(key)
    if stored is None:
        return None
    folder = Path(ckpt.path).parent
    name = Path(stored).name
    inside = name == stored or os.path.realpath(stored) == os.path.realpath(folder / name)
    if inside and name.endswith(suffix) and not name.startswith(".") and len(name) > len(suffix):
        return str(folder / name)
    what = "weights file" if key == "output" else "metrics log"
    raise CnncError(Diagnostic(
        "error", f"{ckpt.path}: the checkpoint names the {what} {stored!r}, which is not a file name ending in "
                 f"{suffix} in the checkpoint's own folder; paths stored in a checkpoint are only defaults there",
        hint=f"give the {what} on the command line ({option} PATH) to write it elsewhere"))


def stored_path(path: str | None, checkpoint_path: str) -> str | None:
    """A path as a checkpoint records it: the file name alone when it lies in the checkpoint's folder
    (so the checkpoint can be moved with it), else the path as given (a resumed run then needs it again
    on the command line)."""
    if path is None:
        return None
    folder = Path(checkpoint_path).parent
    name = Path(path).name
    return name if os.path.realpath(path) == os.path.realpath(folder / name) else path


def config_in_checkpoint(ckpt: Checkpoint) -> TrainConfig:
    """The settings a checkpoint was trained with; settings of another shape mean a damaged checkpoint."""
    try:
        saved = TrainConfig(**ckpt.meta["config"])
    except TypeError as e:
        raise CnncError(f"{ckpt.path}: a damaged checkpoint: its settings do not fit ({e})") from None
    for option in dataclasses.fields(TrainConfig):
        value, default = getattr(saved, option.name), option.default
        expected = (int, float) if isinstance(default, float) or option.name == "lr" else type(default)
        if not (value is None and option.name == "lr") and (not isinstance(value, expected) or isinstance(value, bool)):
            raise CnncError(f"{ckpt.path}: a damaged checkpoint: its setting {option.name} is {value!r}")
    return saved


def resumed_config(args, ckpt: Checkpoint) -> TrainConfig:
    """The checkpoint's settings; an option given on the command line must agree with them, except
    --epochs, which may extend the run."""
    saved = config_in_checkpoint(ckpt)
    conflicts = []
    for key, option in CONFIG_OPTIONS.items():
        value = getattr(args, key)
        if key != "epochs" and value is not None and value != getattr(saved, key):
            conflicts.append(f"{option} {value} (the checkpoint has {getattr(saved, key)})")
    if conflicts:
        raise CnncError(Diagnostic("error", f"{ckpt.path}: a resumed run keeps its settings, but the command "
                                            f"changes {', '.join(conflicts)}",
                                   hint="drop those options, or start a new run without --resume"))
    done = ckpt.meta["position"]["epoch"]
    epochs = saved.epochs if args.epochs is None else args.epochs
    if epochs < done or (epochs == done and ckpt.perm is None):
        raise CnncError(f"{ckpt.path}: the run has already finished {done} epoch(s); pass --epochs N with N > {done} to train further")
    return dataclasses.replace(saved, epochs=epochs).checked()


def spec_record(model: Model, spec: str, model_name: str | None) -> dict:
    return {"file": spec, "name": model.name, "model": model_name, "hash": network_hash(model.network)}


def check_same_spec(ckpt: Checkpoint, spec: dict) -> None:
    """Refuse a checkpoint of another network, saying which is which."""
    saved = ckpt.meta["spec"]
    if saved["hash"] != spec["hash"]:
        raise CnncError(Diagnostic(
            "error", f"{ckpt.path}: the checkpoint belongs to model '{saved['name']}' of {saved['file']} "
                     f"(architecture hash {saved['hash'][:12]}), but {spec['file']} gives model "
                     f"'{spec['name']}' with hash {spec['hash'][:12]}; resuming with another spec is refused",
            hint="resume with the spec the checkpoint was trained with, or start a new run without --resume"))


def check_same_data(ckpt: Checkpoint, data: dict) -> None:
    if ckpt.meta["data"]["fingerprint"] != data["fingerprint"]:
        raise CnncError(f"{ckpt.path}: the checkpoint was trained on data '{ckpt.meta['data']['name']}', "
                        f"but --data {data['name']} holds different samples; resume with the same data")


def resume_hint(spec: str, model_name: str | None, data: str, checkpoint: str) -> str:
    words = ["cnnc", "train", spec] + (["--model", model_name] if model_name else []) + \
            ["--data", data, "--resume", checkpoint]
    return " ".join(shlex.quote(w) for w in words)


def run_train(args) -> int:
    """One process, or one rank of `mpiexec -n N cnnc train` (cnnc/distributed.py); --workers N starts those."""
    from . import distributed

    if getattr(args, "workers", None) is not None:
        return distributed.launch_workers(args.workers, sys.argv)
    comm = distributed.communicator()
    if comm.size == 1:
        return train_process(args, comm)
    return distributed.run_rank(comm, lambda: train_process(args, comm))


def train_process(args, comm) -> int:
    began = time.perf_counter()  # the summary reports building the model and loading the data separately
    ckpt = load_checkpoint(args.resume) if args.resume else None
    if ckpt:
        check_resumable(ckpt)
    saved = ckpt.meta if ckpt else {}
    model_name = args.model or saved.get("spec", {}).get("model")
    data = args.data or saved.get("data", {}).get("name")
    if not data:
        raise CnncError("cnnc train needs --data (digits, mnist, fashion-mnist, mnist-5k, a directory or a .npz)")
    if args.stop_after is not None and args.stop_after < 1:
        raise CnncError(f"--stop-after must be at least 1; got {args.stop_after}")
    backend = args.backend or saved.get("backend") or "c"
    if ckpt:
        output = args.output or checkpoint_path_default(ckpt, "output", ".npz", "-o")
        log_path = args.log or checkpoint_path_default(ckpt, "log", ".jsonl", "--log")
    else:
        output = args.output or default_output(args.file, model_name)
        log_path = args.log
    checkpoint_path = args.resume or default_checkpoint_path(output)
    data_file = data if Path(data).is_file() else None
    check_distinct({"the weights (-o)": output, "the metrics log (--log)": log_path, "the checkpoint": checkpoint_path},
                   {"the spec": args.file, "the data file": data_file})
    for path in (output, log_path, checkpoint_path):  # find out now, not after the last epoch
        if path:
            check_writable(path)

    if ckpt:  # the spec is checked first: nothing else matters if it is another network
        model = load_classifier(args.file, model_name, backend, seed=config_in_checkpoint(ckpt).seed)
        check_same_spec(ckpt, spec_record(model, args.file, model_name))
        config = resumed_config(args, ckpt)
    else:     # the settings are checked first: a bad option should not wait for a compilation
        config = config_from_args(args)
        model = load_classifier(args.file, model_name, backend, seed=config.seed)
    ds = load_data_for(model, data)
    identity = {"spec": spec_record(model, args.file, model_name),
                "data": {"name": data, "fingerprint": data_fingerprint(ds.x_train, ds.y_train, ds.x_test, ds.y_test)},
                "backend": backend, "output": stored_path(output, checkpoint_path),
                "log": stored_path(log_path, checkpoint_path)}
    if comm.size > 1:
        comm.check_batch(config.batch)
        comm.check_same_run({"spec": identity["spec"]["hash"], "data": identity["data"]["fingerprint"],
                             "backend": backend, "settings": dataclasses.asdict(config),
                             "resumed checkpoint": (ckpt.meta["position"], ckpt.meta["history"]) if ckpt else None,
                             "weights path (-o)": output})
    progress = Progress("quiet" if args.quiet or not comm.is_root else "auto")
    trainer = Trainer(model, make_splits(ds, config.val_split), config, checkpoint_path, identity, progress, log_path,
                      comm=comm)
    trainer.check_sync = getattr(args, "check_sync", False)
    if comm.size > 1 and comm.is_root:  # mpiexec names a killed process by its pid: this maps it to its rank
        print(f"data-parallel training on {comm.size} ranks (rank:pid@host {' '.join(comm.members)}), global batch "
              f"{config.batch}", file=sys.stderr, flush=True)
    if ckpt:
        check_same_data(ckpt, identity["data"])
        trainer.restore(ckpt)
        progress.note(resume_note(ckpt, config, backend, trainer.batches_per_epoch))
    hint = resume_hint(args.file, model_name, data, checkpoint_path)
    started = time.perf_counter()
    try:
        outcome = trainer.fit(stop_after=args.stop_after)
    except TrainingInterrupted as e:
        if not comm.is_root:
            return INTERRUPTED
        print(f"interrupted in epoch {e.epoch} after batch {e.batch} of {e.batches}; checkpoint saved to {e.checkpoint}\n"
              f"resume with: {hint}", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        progress.close()
        where = (f"the last checkpoint ({trainer.checkpoint_epoch} epoch(s) done) is {checkpoint_path}\nresume with: {hint}"
                 if trainer.checkpoint_epoch is not None else "no checkpoint had been written yet")
        print(f"interrupted; {where}", file=sys.stderr)
        return INTERRUPTED
    if not comm.is_root:  # rank 0 reports and writes the weights
        return 0
    if outcome == "stopped":
        print(f"stopped after epoch {trainer.state.epoch} of {config.epochs} (--stop-after); checkpoint: "
              f"{checkpoint_path}\ncontinue with: {hint}")
        return 0
    model.save(output)
    timing = {"setup": started - began, "loop": time.perf_counter() - started}
    print(final_summary(model, trainer, backend, timing, output, log_path))
    return 0


def resume_note(ckpt: Checkpoint, config: TrainConfig, backend: str, batches: int) -> str:
    position = ckpt.meta["position"]
    where = f"epoch {position['epoch'] + 1} of {config.epochs}"
    where += f", batch {position['batch'] + 1} of {batches}" if ckpt.perm is not None else " (its start)"
    notes = [f"resuming {ckpt.path} at {where}"]
    if ckpt.meta["backend"] != backend:
        notes.append(f"note: the checkpoint was trained on the {ckpt.meta['backend']} backend; continuing on {backend}, "
                     "so the weights will differ slightly from an uninterrupted run")
    if config.epochs != ckpt.meta["config"]["epochs"] and config.schedule != "constant":
        notes.append(f"note: the {config.schedule} schedule is re-planned over {config.epochs} epochs instead of "
                     f"{ckpt.meta['config']['epochs']}, so the learning rate jumps")
    return "\n".join(notes)


def final_summary(model: Model, trainer: Trainer, backend: str, timing: dict, output: str, log_path: str | None) -> str:
    """timing: seconds spent on "setup" (reading a checkpoint, building the model, loading the data) and
    on the "loop" (this invocation's epochs: training, evaluation after each, checkpoints)."""
    last, history = trainer.state.history[-1], trainer.state.history
    epochs = f"{len(history)} epoch" + ("s" if len(history) != 1 else "")
    n_test = len(trainer.splits.y_test)
    seconds = sum(r["seconds"] for r in history)
    images = len(trainer.splits.y_train) * len(history)
    rate = f"{images / seconds:,.0f} images/s, " if seconds > 0 else ""
    lines = [f"{model.name}: test accuracy {last['test_accuracy']:.2%} ({round(last['test_accuracy'] * n_test)}/{n_test}), "
             f"test loss {last['test_loss']:.4f} after {epochs}",
             f"training: {seconds:.1f} s over {epochs} ({rate}{backend} backend)",
             f"this invocation: {timing['setup'] + timing['loop']:.1f} s wall time ({timing['setup']:.1f} s building "
             f"the model and loading the data, {timing['loop']:.1f} s training, evaluating and checkpointing)",
             f"weights written to {output}",
             f"checkpoint: {trainer.checkpoint_path} (--resume it with a larger --epochs to train further)"]
    if log_path:
        lines.append(f"metrics log: {log_path}")
    return "\n".join(lines)


# ---- cnnc eval ---------------------------------------------------------------------------------------
def run_eval(args) -> int:
    from .quantize_cli import quantize_requested, run_eval_int8

    if quantize_requested(args):  # --quantize int8 and its options: cnnc/quantize_cli.py
        return run_eval_int8(args)
    model = load_classifier(args.file, args.model, args.backend)
    load_weights_file(model, args.weights)
    ds = load_data_for(model, args.data)
    result = evaluate(model, ds.x_test, ds.y_test)
    if args.json:
        print(json.dumps(dict(result, confusion=result["confusion"].tolist())))
        return 0
    correct = int(np.trace(result["confusion"]))
    print(f"{model.name} on {ds.name} (test split, {result['n']} samples): accuracy {result['accuracy']:.2%} "
          f"({correct}/{result['n']}), mean loss {result['loss']:.4f}")
    print("confusion matrix (rows: true class, columns: predicted class):")
    print(confusion_table(result["confusion"]))
    return 0


# ---- cnnc predict ------------------------------------------------------------------------------------
def run_predict(args) -> int:
    model = load_classifier(args.file, args.model, args.backend)
    load_weights_file(model, args.weights)
    x, names = read_inputs(args.inputs, model.input_shape)
    if args.invert:
        x = 1.0 - x
    else:
        for name in np.asarray(names)[light_background(x)]:
            print(f"warning: {name}: looks like dark ink on a light background (its border is light); networks "
                  f"trained on MNIST, digits or Fashion-MNIST expect light on dark: try --invert", file=sys.stderr)
    best = top_k(probabilities(model, x, names), k=min(3, model.output_shape[0]))
    if args.json:
        print(json.dumps([{"input": name, "class": top[0][0], "top": [[c, p] for c, p in top]}
                          for name, top in zip(names, best)]))
        return 0
    for name, top in zip(names, best):
        others = ", ".join(f"{c} {p:.3f}" for c, p in top)
        print(f"{name}: class {top[0][0]} (probability {top[0][1]:.3f}); top {len(top)}: {others}")
    return 0


# ---- argument parsing ----------------------------------------------------------------------------------
PREPROCESSING = ("images (PNG, PGM, JPEG, ... via Pillow) are converted to grayscale for a 1-channel model or RGB "
                 "for a 3-channel one, resized to the model's input height x width if they differ (area-averaged "
                 "when shrinking, bilinear when enlarging), and scaled from 0..255 to [0, 1] (16-bit grey from 0..65535); .npy arrays hold one sample (C, H, W), (H, W) or (C, L), or a batch "
                 "with a leading N axis, and are used as given (uint8 is scaled to [0, 1])")


def add_train_parsers(subparsers) -> None:
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_predict(subparsers)


def _add_common(p, weights: bool) -> None:
    p.add_argument("file", metavar="FILE", help="the .cnn file")
    p.add_argument("--model", metavar="NAME", help="the model to use, if FILE holds several")
    if weights:
        p.add_argument("--weights", required=True, metavar="W", help="a weights .npz written by cnnc train")
    p.add_argument("--backend", choices=("c", "numpy"), default=None if not weights else "c",
                   help="run on the compiled C backend (default) or the NumPy reference backend")


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a classifier, with a checkpoint after every epoch",
        description="Train a classifier. Defaults: Adam, lr 0.003 (SGD: 0.05, momentum 0.9) on a cosine "
                    "schedule over all steps, weight decay 5e-4, batch 32, 20 epochs, seed 0. After every epoch the complete state "
                    "is checkpointed to <output>.ckpt.npz; Ctrl-C saves the state at the current batch boundary "
                    "and exits with status 130; --resume continues to exactly the weights of an uninterrupted run.")
    _add_common(p, weights=False)
    p.add_argument("--data", metavar="DATA", help="digits, mnist, fashion-mnist, mnist-5k, a directory of IDX files "
                   "or a .npz (default on --resume: the checkpoint's)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs in the whole run (default 20)")
    p.add_argument("--batch", type=int, metavar="B", help="batch size (default 32)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="adam (default) or sgd")
    p.add_argument("--lr", type=float, metavar="F", help="peak learning rate (default 0.003 for adam, 0.05 for sgd)")
    p.add_argument("--momentum", type=float, metavar="F", help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, metavar="F", help="L2 weight decay, added to the gradient (default 5e-4)")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule over the run's steps: cosine "
                   "(default) decays to 0, step divides by 10 at 50%% and 75%%, constant")
    p.add_argument("--seed", type=int, metavar="S", help="fixes initial weights, shuffling and dropout (default 0)")
    p.add_argument("--val-split", type=float, metavar="F", help="hold out this fraction of the training set "
                   "(a fixed choice) for validation metrics each epoch (default 0)")
    p.add_argument("-o", "--output", metavar="WEIGHTS.npz", help="where to write the weights "
                   "(default runs/<spec stem>.weights.npz under the current directory)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue the run saved in CHECKPOINT (its settings are kept)")
    p.add_argument("--stop-after", type=int, metavar="N", help="end this invocation after epoch N, leaving the "
                   "checkpoint to --resume later; the schedule still spans --epochs")
    p.add_argument("--log", metavar="METRICS.jsonl", help="write one JSON object per epoch to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-epoch lines: print only "
                   "the final summary (errors are still printed)")
    p.add_argument("--workers", type=int, metavar="N", help="train data-parallel on N processes of this machine "
                   "(runs `mpiexec -n N cnnc train ...`; needs pip install 'cnnc[mpi]'): docs/distributed.md")
    p.add_argument("--check-sync", action="store_true", help="data-parallel debugging: check after every step "
                   "that every rank holds the same parameters and batch norm statistics (checksums)")
    p.set_defaults(func=run_train)


def _add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="accuracy, loss and confusion matrix on a data set's test split",
                              description="Evaluate trained weights on the test split of DATA.")
    _add_common(p, weights=True)
    p.add_argument("--data", required=True, metavar="DATA", help="digits, mnist, fashion-mnist, mnist-5k, a directory or a .npz")
    p.add_argument("--json", action="store_true", help='print {"accuracy", "loss", "n", "confusion"} as JSON')
    from .quantize_cli import add_quantize_arguments

    add_quantize_arguments(p)
    p.set_defaults(func=run_eval)


def _add_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="class and top-3 probabilities for images or .npy arrays",
                              description="Classify inputs. Preprocessing: " + PREPROCESSING + ".")
    _add_common(p, weights=True)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or .npy arrays")
    p.add_argument("--invert", action="store_true", help="use 1 - x: for dark ink on a light background, when the "
                   "model was trained on light on dark (MNIST, digits, Fashion-MNIST)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(func=run_predict)


__all__ = ["TrainConfig", "Trainer", "RunState", "Splits", "TrainingInterrupted", "learning_rate", "make_splits",
           "load_classifier", "add_train_parsers", "run_train", "run_eval", "run_predict"]
