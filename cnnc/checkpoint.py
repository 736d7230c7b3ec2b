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
import os
import shlex
import zipfile

import numpy as np

from .diagnostics import CnncError
from .fileio import atomic_path, describe_contents, is_numpy_file
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


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint; a missing, unreadable or foreign file is a CnncError naming it."""
    path = os.fspath(path)
    arrays = _read_archive(path)
    if "meta" not in arrays:
        raise CnncError(f"{path}: not a cnnc checkpoint (it has no 'meta' entry; a weights file is not a checkpoint)")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as e:
        raise CnncError(f"{path}: the checkpoint's metadata is not valid JSON ({e})") from None
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
        if not is_numpy_file(path):  # a .npy gets its own message below
            raise CnncError(f"{path}: not a readable checkpoint: not a NumPy .npz archive "
                            f"(it is {describe_contents(path)})")
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise CnncError(f"{path}: holds a single array, not a checkpoint .npz archive")
        with data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise CnncError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CnncError(f"{path}: is a directory, expected a checkpoint .npz file") from None
    except CnncError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CnncError(f"{path}: not a readable checkpoint .npz archive ({e})") from None


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
