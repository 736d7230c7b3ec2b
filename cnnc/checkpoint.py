"""Training checkpoints: everything needed to continue a run to exactly the weights it would have reached.

A checkpoint is one .npz archive, written atomically (temporary name, then os.replace):

    param/<name>        the model's parameters ("param/c1.weight", ...), as Model.params holds them
    optim/<key>         every array of the optimiser's state_dict(), flattened ("optim/m/c1.weight", ...)
    perm                the current epoch's shuffling order, (n_train,) int64 (empty between epochs)
    meta                one JSON document: the format, the spec's name and hash, the data's fingerprint,
                        the run's settings, the position (epoch, batch, step), the RNG states, the
                        schedule, the optimiser's non-array state and the metrics so far

Everything that is not an array lives in `meta` as JSON; Python's json module writes floats by repr,
so they come back bit for bit.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shlex
import zipfile
from pathlib import Path

import numpy as np

from .diagnostics import CnncError, Diagnostic
from .fileio import atomic_path, check_input_file, describe_contents, is_numpy_file, is_zip, load_json, load_npz_checked
from .ir import Network

FORMAT = "cnnc-checkpoint-1"


# ---- fingerprints: what a checkpoint belongs to ------------------------------------------------
def network_hash(network: Network) -> str:
    """sha256 of the network's architecture: every layer's kind, sizes and options, but not its source
    position, so editing a comment in the .cnn file does not invalidate a checkpoint."""
    layers = []
    for layer in network.layers:
        record = dataclasses.asdict(layer)
        for unimportant in ("loc", "receptive_field", "jump", "macs"):
            record.pop(unimportant)
        layers.append(record)
    text = json.dumps({"name": network.name, "input": network.input_shape, "loss": network.loss, "layers": layers},
                      sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def data_fingerprint(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' shapes, dtypes and bytes: the same data set from anywhere gives the same value."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


# ---- nested state <-> (JSON, arrays) -----------------------------------------------------------
def split_arrays(state, prefix: str, arrays: dict[str, np.ndarray]):
    """Replace every array (and NumPy scalar) inside nested dicts/lists by {"__array__": key},
    storing the array under `key` in `arrays`. Returns the JSON-ready rest."""
    if isinstance(state, (np.ndarray, np.generic)):
        arrays[prefix] = np.asarray(state)
        return {"__array__": prefix}
    if isinstance(state, dict):
        return {str(k): split_arrays(v, f"{prefix}/{k}", arrays) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [split_arrays(v, f"{prefix}/{i}", arrays) for i, v in enumerate(state)]
    return state


def join_arrays(state, arrays: dict[str, np.ndarray]):
    """The inverse of split_arrays."""
    if isinstance(state, dict):
        if set(state) == {"__array__"}:
            return arrays[state["__array__"]]
        return {k: join_arrays(v, arrays) for k, v in state.items()}
    if isinstance(state, list):
        return [join_arrays(v, arrays) for v in state]
    return state


# ---- RNG states ----------------------------------------------------------------------------------
def rng_state(rng: np.random.Generator) -> dict:
    """A Generator's bit_generator.state: a dict of ints and strings, JSON-ready."""
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


# ---- writing and reading -------------------------------------------------------------------------
def save_checkpoint(path, params: dict[str, np.ndarray], optimizer_state: dict, meta: dict,
                    perm: np.ndarray | None = None) -> None:
    """Write one checkpoint archive atomically (see the module docstring for its layout)."""
    arrays = {f"param/{name}": value for name, value in params.items()}
    optim_rest = split_arrays(optimizer_state, "optim", arrays)
    arrays["perm"] = np.asarray(perm if perm is not None else [], dtype=np.int64)
    document = dict(meta, format=FORMAT, optimizer_state=optim_rest)
    arrays["meta"] = np.array(json.dumps(document))
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


@dataclasses.dataclass
class Checkpoint:
    path: str
    params: dict[str, np.ndarray]
    optimizer_state: dict
    perm: np.ndarray | None  # None between epochs
    meta: dict


META_MAX_DEPTH = 16  # a run's metadata nests 5 levels deep


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint; a missing, unreadable or foreign file is a CnncError naming it. The metadata is
    only parsed here; `validate_run_meta` checks it before a resumed run uses any of it."""
    path = os.fspath(path)
    arrays = _read_archive(path)
    if "meta" not in arrays:
        raise CnncError(f"{path}: not a cnnc checkpoint (it has no 'meta' entry; a weights file is not a checkpoint)")
    meta_array = arrays.pop("meta")
    if meta_array.shape != () or meta_array.dtype.kind != "U":
        raise CnncError(f"{path}: a damaged checkpoint: its 'meta' entry is not one string "
                        f"(shape {meta_array.shape}, dtype {meta_array.dtype})")
    meta = load_json(str(meta_array), f"{path}: the checkpoint's metadata", max_depth=META_MAX_DEPTH)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CnncError(f"{path}: checkpoint format {found!r}; this cnnc reads {FORMAT!r}")
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    try:
        optimizer_state = join_arrays(meta.pop("optimizer_state", {}), arrays)
    except (KeyError, TypeError) as e:
        raise CnncError(f"{path}: a damaged checkpoint: the optimiser state names an array it does not hold "
                        f"({e}); start a new run, or resume an intact checkpoint") from None
    perm = arrays.get("perm")
    return Checkpoint(path, params, optimizer_state, perm if perm is not None and perm.size else None, meta)


def _read_archive(path: str) -> dict[str, np.ndarray]:
    try:
        check_input_file(path, "a checkpoint .npz file")
        if not is_numpy_file(path):  # a .npy gets its own message below
            raise CnncError(f"{path}: not a readable checkpoint: not a NumPy .npz archive "
                            f"(it is {describe_contents(path)})")
        if not is_zip(path):
            raise CnncError(f"{path}: holds a single array, not a checkpoint .npz archive")
        return load_npz_checked(path, "a checkpoint .npz file")
    except CnncError as e:
        if "no such file" in str(e):
            raise CnncError(f"{path}: no such checkpoint file") from None
        if "is a directory" in str(e):
            raise CnncError(f"{path}: is a directory, expected a checkpoint .npz file") from None
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CnncError(f"{path}: not a readable checkpoint .npz archive ({e})") from None


# ---- the one schema of a training run's metadata ---------------------------------------------------
MAX_INT = 2**62  # any count, step, epoch or seed a real run can reach is far below


class _Bad(Exception):
    """A value that does not fit the schema: where it is and what was expected."""


def _int(value, where: str, low: int = 0, high: int = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Bad(f"{where} must be an integer in [{low}, {high}]; got {_shown(value)}")
    return value


def _num(value, where: str, low: float = -math.inf, high: float = math.inf, allow_none: bool = False):
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise _Bad(f"{where} must be a finite number in [{low:g}, {high:g}]; got {_shown(value)}")
    return value


def _text(value, where: str, choices: tuple[str, ...] | None = None, allow_none: bool = False, limit: int = 4096):
    if value is None and allow_none:
        return value
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise _Bad(f"{where} must be printable text of at most {limit} characters; got {_shown(value)}")
    if choices is not None and value not in choices:
        raise _Bad(f"{where} must be one of {', '.join(choices)}; got {_shown(value)}")
    return value


def _hex(value, where: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise _Bad(f"{where} must be a SHA-256 in hexadecimal; got {_shown(value)}")
    return value


def _record(value, where: str, keys: dict) -> dict:
    """A dict with exactly `keys`, each checked by its function (called with the value and its place)."""
    if not isinstance(value, dict):
        raise _Bad(f"{where} must be an object; got {_shown(value)}")
    extra, missing = sorted(set(value) - set(keys)), sorted(set(keys) - set(value))
    if missing:
        raise _Bad(f"{where} lacks {', '.join(map(repr, missing))}")
    if extra:
        raise _Bad(f"{where} holds unexpected entries {', '.join(map(repr, extra[:5]))}")
    return {key: check(value[key], f"{where}.{key}") for key, check in keys.items()}


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _rng_state(value, where: str) -> dict:
    """A PCG64 state as bit_generator.state gives it; tried on a fresh generator, so garbage is refused."""
    _record(value, where, {"bit_generator": lambda v, w: _text(v, w, ("PCG64",)),
                           "state": lambda v, w: _record(v, w, {"state": lambda x, y: _int(x, y, 0, 2**128 - 1),
                                                                "inc": lambda x, y: _int(x, y, 0, 2**128 - 1)}),
                           "has_uint32": lambda v, w: _int(v, w, 0, 1),
                           "uinteger": lambda v, w: _int(v, w, 0, 2**32 - 1)})
    try:
        np.random.PCG64().state = value
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise _Bad(f"{where} is not a usable random generator state ({e})") from None
    return value


LOG_NUMBERS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy", "lr",
               "seconds", "images_per_second")


def _history(value, where: str) -> list:
    if not isinstance(value, list):
        raise _Bad(f"{where} must be a list of epoch records; got {_shown(value)}")
    keys = {"epoch": lambda v, w: _int(v, w, 1)}
    keys.update({key: (lambda v, w: _num(v, w, 0, allow_none=True)) for key in LOG_NUMBERS})
    for number, record in enumerate(value, 1):
        _record(record, f"{where}[{number - 1}]", keys)
        if record["epoch"] != number:
            raise _Bad(f"{where}[{number - 1}].epoch must be {number}; got {_shown(record['epoch'])}")
    return value


def _arrays(value, where: str) -> dict:
    """Per-parameter state arrays: {parameter name: float array stored in the checkpoint}."""
    if not isinstance(value, dict):
        raise _Bad(f"{where} must be an object of arrays; got {_shown(value)}")
    for name, array in value.items():
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
            raise _Bad(f"{where}.{name} must be a float array stored in the checkpoint; got {_shown(type(array).__name__)}")
    return value


def _betas(value, where: str) -> list:
    if not isinstance(value, list) or len(value) != 2:
        raise _Bad(f"{where} must be a pair of numbers; got {_shown(value)}")
    return [_num(v, f"{where}[{i}]", 0, 1) for i, v in enumerate(value)]


def _flag(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"{where} must be true or false; got {_shown(value)}")
    return value


OPTIMIZER_STATES = {  # the state_dict() of each optimiser in cnnc/optim.py, arrays joined back in
    "adam": {"kind": _text, "lr": lambda v, w: _num(v, w, 0), "betas": _betas, "eps": lambda v, w: _num(v, w, 0),
             "weight_decay": lambda v, w: _num(v, w, 0), "steps": _int, "exp_avg": _arrays, "exp_avg_sq": _arrays},
    "sgd": {"kind": _text, "lr": lambda v, w: _num(v, w, 0), "momentum": lambda v, w: _num(v, w, 0, 1),
            "weight_decay": lambda v, w: _num(v, w, 0), "nesterov": _flag, "steps": _int, "momentum_buffer": _arrays},
}


def _optimizer_state(value, where: str) -> dict:
    """The optimiser's state, by its kind's schema; the optimiser checks names and shapes when it loads it."""
    if not isinstance(value, dict):
        raise _Bad(f"{where} must be an object; got {_shown(value)}")
    kind = _text(value.get("kind"), f"{where}.kind", tuple(OPTIMIZER_STATES))
    return _record(value, where, OPTIMIZER_STATES[kind])


def _config(value, where: str) -> dict:
    positive = lambda v, w: _num(v, w, 0)  # noqa: E731
    return _record(value, where, {
        "epochs": lambda v, w: _int(v, w, 1), "batch": lambda v, w: _int(v, w, 1),
        "optimizer": lambda v, w: _text(v, w, ("adam", "sgd")), "lr": lambda v, w: _num(v, w, 0, allow_none=True),
        "momentum": lambda v, w: _num(v, w, 0, 1), "weight_decay": positive,
        "schedule": lambda v, w: _text(v, w, ("cosine", "step", "constant")), "seed": lambda v, w: _int(v, w, 0),
        "val_split": lambda v, w: _num(v, w, 0, 1)})


RUN_META = {
    "format": lambda v, w: _text(v, w, (FORMAT,)),
    "spec": lambda v, w: _record(v, w, {"file": _text, "name": _text, "model": lambda x, y: _text(x, y, allow_none=True),
                                        "hash": _hex}),
    "data": lambda v, w: _record(v, w, {"name": _text, "fingerprint": _hex}),
    "backend": lambda v, w: _text(v, w, ("c", "numpy")),
    "output": _text,
    "log": lambda v, w: _text(v, w, allow_none=True),
    "config": _config,
    "position": lambda v, w: _record(v, w, {"epoch": _int, "batch": _int, "step": _int}),
    "schedule": lambda v, w: _record(v, w, {"kind": lambda x, y: _text(x, y, ("cosine", "step", "constant")),
                                            "base_lr": lambda x, y: _num(x, y, 0), "step": _int, "total_steps": _int,
                                            "last_lr": lambda x, y: _num(x, y, 0)}),
    "rng": lambda v, w: _record(v, w, {"shuffle": _rng_state, "dropout": _rng_state}),
    "running": lambda v, w: _record(v, w, {"loss_sum": lambda x, y: _num(x, y, 0), "correct": _int, "seen": _int,
                                           "seconds": lambda x, y: _num(x, y, 0)}),
    "history": _history,
}


def validate_run_meta(ckpt: Checkpoint) -> None:
    """Check a checkpoint's metadata against the one schema of a training run (RUN_META: every key, type
    and range; no key missing, none extra) and its arrays against each other, before any of it is used.
    A mismatch is a CnncError naming the file and the entry."""
    meta = dict(ckpt.meta, optimizer_state=ckpt.optimizer_state)
    try:
        _record(dict(ckpt.meta), "metadata", RUN_META)
        _optimizer_state(ckpt.optimizer_state, "metadata.optimizer_state")
        position, running = meta["position"], meta["running"]
        if len(meta["history"]) != position["epoch"]:
            raise _Bad(f"metadata.history holds {len(meta['history'])} epoch record(s) but position.epoch is "
                       f"{position['epoch']}")
        if running["correct"] > running["seen"]:
            raise _Bad(f"metadata.running.correct ({running['correct']}) exceeds running.seen ({running['seen']})")
        if ckpt.perm is None and (position["batch"] or running["seen"]):
            raise _Bad(f"metadata.position.batch is {position['batch']} but the checkpoint holds no shuffling order")
        if ckpt.perm is not None and (ckpt.perm.ndim != 1 or ckpt.perm.dtype.kind not in "iu"):
            raise _Bad(f"perm must be a 1-D integer array; got shape {ckpt.perm.shape}, dtype {ckpt.perm.dtype}")
    except _Bad as e:
        raise CnncError(f"{ckpt.path}: a damaged or tampered checkpoint: {e}; start a new run, or resume an "
                        f"intact checkpoint") from None


def check_position(ckpt: Checkpoint, n_train: int, batch_size: int) -> None:
    """The position and shuffling order fit the data: perm a permutation of the n_train samples, batch
    before the epoch's end, the running counts within the batches done."""
    batches = -(-n_train // batch_size)
    position, running = ckpt.meta["position"], ckpt.meta["running"]
    problem = None
    if ckpt.perm is not None:
        if len(ckpt.perm) != n_train or not np.array_equal(np.sort(ckpt.perm), np.arange(n_train)):
            problem = f"perm is not an ordering of the {n_train} training samples"
        elif position["batch"] >= batches:
            problem = f"position.batch {position['batch']} is past the epoch's {batches} batches"
        elif running["seen"] > position["batch"] * batch_size:
            problem = f"running.seen {running['seen']} exceeds the samples of {position['batch']} batch(es)"
    if problem:
        raise CnncError(f"{ckpt.path}: a damaged or tampered checkpoint: {problem}; start a new run, or resume "
                        f"an intact checkpoint")
    ckpt.perm = None if ckpt.perm is None else ckpt.perm.astype(np.int64)


def is_checkpoint(arrays: dict[str, np.ndarray]) -> bool:
    """True if the arrays of an .npz are a training checkpoint's (a 'meta' entry and 'param/...' arrays)."""
    return "meta" in arrays and any(name.startswith("param/") for name in arrays)


def checkpoint_given_as_weights(path, arrays: dict[str, np.ndarray]) -> str:
    """The message for a checkpoint passed where a weights file belongs: what it is, where the run's
    weights file is, and how to use the checkpoint instead."""
    path = os.fspath(path)
    resume = f"--resume {shlex.quote(path)}"
    try:
        meta = json.loads(str(arrays["meta"]))
        done, epochs = meta["position"]["epoch"], meta["config"]["epochs"]
        finished = done >= epochs and not arrays["perm"].size
        spec, output = shlex.quote(meta["spec"]["file"]), meta["output"]
        if not isinstance(output, str) or not output.isprintable():
            raise ValueError("not a printable path")
        output = output if os.path.isabs(output) else os.path.join(os.path.dirname(path), output)  # stored relative to it
        what = f"model '{meta['spec']['name']}', {done} of {epochs} epoch(s) done"
    except (KeyError, TypeError, ValueError):  # an older or damaged checkpoint: say what is certain
        return (f"{path} is a training checkpoint, not a weights file; continue its run with "
                f"`cnnc train SPEC {resume}`, and load the weights file the run writes when it finishes")
    if finished:
        return (f"{path} is a training checkpoint ({what}), not a weights file; its run wrote the weights file "
                f"{output}; to train further, use `cnnc train {spec} {resume} --epochs {done + 1}` or more")
    return (f"{path} is a training checkpoint ({what}), not a weights file; continue its run with "
            f"`cnnc train {spec} {resume}`, which writes the weights file {output} when it finishes")


def default_checkpoint_path(weights_path) -> str:
    """digits.weights.npz -> digits.weights.ckpt.npz (any other name gets .ckpt.npz appended)."""
    text = os.fspath(weights_path)
    return (text[:-len(".npz")] if text.endswith(".npz") else text) + ".ckpt.npz"


# ---- a resumed run's files and identity ------------------------------------------------------------
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


def spec_record(network: Network, spec: str, model_name: str | None) -> dict:
    """How a checkpoint names the network it was trained on: the spec file, the model and its hash."""
    return {"file": spec, "name": network.name, "model": model_name, "hash": network_hash(network)}


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
    """Refuse to resume on other samples than the checkpoint was trained on."""
    if ckpt.meta["data"]["fingerprint"] != data["fingerprint"]:
        raise CnncError(f"{ckpt.path}: the checkpoint was trained on data '{ckpt.meta['data']['name']}', "
                        f"but --data {data['name']} holds different samples; resume with the same data")
