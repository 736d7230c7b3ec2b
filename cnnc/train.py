"""The training loop: settings (TrainConfig), the learning-rate schedule, the data splits and the Trainer.

A run is a pure function of its settings: the seed fixes the initial weights (Model's own seed), the
shuffling order (a Generator seeded [seed, 2]) and the dropout masks (the model's dropout_rng,
seeded [seed, 1]). The learning rate follows a schedule over the whole run's optimiser steps. After
every epoch a checkpoint holds the complete state (cnnc/checkpoint.py), so a run interrupted at any
batch boundary and resumed reaches bit-identical weights to one that was never interrupted.

Everything here is a function of plain values. The commands `cnnc train`, `eval` and `predict` are in
cnnc/cli/train.py; the checkpoint format and its checks are in cnnc/checkpoint.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .checkpoint import Checkpoint, check_position, rng_state, save_checkpoint, set_rng_state
from .diagnostics import CnncError, Diagnostic, SpecError
from .distributed import NONFINITE, STOP, Local
from .fileio import atomic_write_text
from .inference import NonFiniteOutputs
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


def config_in_checkpoint(ckpt: Checkpoint) -> TrainConfig:
    """The settings a checkpoint was trained with (its metadata checked by validate_run_meta first)."""
    return TrainConfig(**ckpt.meta["config"])


__all__ = ["TrainConfig", "Trainer", "RunState", "Splits", "TrainingInterrupted", "learning_rate", "make_splits",
           "load_classifier", "load_data_for", "load_weights_file", "config_in_checkpoint"]
