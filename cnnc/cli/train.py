"""`cnnc train`, `cnnc eval` and `cnnc predict`: their options, and the commands that run them on the
training loop (cnnc/train.py), the checkpoint format (cnnc/checkpoint.py) and inference (cnnc/inference.py).

    cnnc train specs/digits.cnn --data digits        # -> runs/digits.weights.npz, runs/digits.weights.ckpt.npz
    cnnc eval specs/digits.cnn --weights runs/digits.weights.npz --data digits --json
    cnnc predict specs/digits.cnn --weights runs/digits.weights.npz seven.png batch.npy
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ..checkpoint import (Checkpoint, check_same_data, check_same_spec, checkpoint_path_default, data_fingerprint,
                          default_checkpoint_path, load_checkpoint, spec_record, stored_path, validate_run_meta)
from ..diagnostics import CnncError, Diagnostic
from ..fileio import check_distinct, check_writable
from ..inference import confusion_table, evaluate, light_background, probabilities, read_inputs, top_k
from ..model import Model
from ..progress import Progress
from .quantize import add_quantize_arguments
from ..train import (INTERRUPTED, OPTIMIZERS, SCHEDULES, TrainConfig, Trainer, TrainingInterrupted, config_in_checkpoint,
                     load_classifier, load_data_for, load_weights_file, make_splits)


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


def resume_hint(spec: str, model_name: str | None, data: str, checkpoint: str) -> str:
    words = ["cnnc", "train", spec] + (["--model", model_name] if model_name else []) + \
            ["--data", data, "--resume", checkpoint]
    return " ".join(shlex.quote(w) for w in words)


def run_train(args) -> int:
    """One process, or one rank of `mpiexec -n N cnnc train` (cnnc/distributed.py); --workers N starts those."""
    from .. import distributed

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
        validate_run_meta(ckpt)
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
        check_same_spec(ckpt, spec_record(model.network, args.file, model_name))
        config = resumed_config(args, ckpt)
    else:     # the settings are checked first: a bad option should not wait for a compilation
        config = config_from_args(args)
        model = load_classifier(args.file, model_name, backend, seed=config.seed)
    ds = load_data_for(model, data)
    identity = {"spec": spec_record(model.network, args.file, model_name),
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
    from .quantize import quantize_requested, run_eval_int8

    if quantize_requested(args):  # --quantize int8 and its options: cnnc/cli/quantize.py
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


def add_parsers(subparsers) -> None:
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
