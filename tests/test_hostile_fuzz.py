"""Fuzzing the file readers (issue 18, "Done when"): whatever a checkpoint's metadata, an .npz member's
header, an IDX header or a metrics log holds, the reader answers with its data or a CnncError (a
ValueError from the Model API), never another exception. Budget: a few seconds in all."""
from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc.checkpoint import load_checkpoint
from cnnc.datasets import read_idx
from cnnc.diagnostics import CnncError
from cnnc.fileio import load_npz_checked
from cnnc.model import read_npz

BUDGET = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
TINY = """
model tiny {
    input image[1, 8, 8]
    conv2d c1(filters=2, kernel=3)
    flatten
    dense out(units=10)
    loss cross_entropy
}
"""
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)


# ---- checkpoint metadata ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real checkpoint (inside epoch 1: a shuffling order and running sums) and its spec."""
    from cnnc.train import Splits, TrainConfig, Trainer, TrainingInterrupted, load_classifier

    folder = tmp_path_factory.mktemp("fuzz-run")
    spec = folder / "tiny.cnn"
    spec.write_text(TINY)
    model = load_classifier(str(spec), None, "numpy")
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, 64)
    splits = Splits(x, y, None, None, x[:8], y[:8])
    config = TrainConfig(epochs=2, batch=16).checked()
    identity = {"spec": {"file": "tiny.cnn", "name": "tiny", "model": None, "hash": "0" * 64},
                "data": {"name": "digits", "fingerprint": "1" * 64}, "backend": "numpy", "output": "w.npz", "log": None}
    trainer = Trainer(model, splits, config, str(folder / "w.ckpt.npz"), identity)
    trainer.on_batch = lambda t: setattr(t, "stop_requested", t.state.batch == 2)
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    with np.load(folder / "w.ckpt.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return Run(arrays=arrays, meta=json.loads(str(arrays["meta"])), model=model, splits=splits, config=config,
               identity=identity)


class Run(dict):
    def __repr__(self) -> str:  # hypothesis prints its arguments; the arrays need not be
        return "Run(...)"


def _paths(value, prefix=()):
    """Every place in a JSON value, as a tuple of keys and indices."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _replaced(value, path, new, delete: bool):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    if len(path) == 1 and delete:
        del copy[path[0]]
    else:
        copy[path[0]] = _replaced(copy[path[0]], path[1:], new, delete)
    return copy


@BUDGET
@given(data=st.data())
def test_mutated_checkpoint_metadata_never_gives_a_traceback(run, data):
    from cnnc.checkpoint import validate_run_meta as check_resumable
    from cnnc.train import Trainer

    meta = run["meta"]
    path = data.draw(st.sampled_from(sorted(_paths(meta), key=repr)), label="path")
    delete = bool(path) and data.draw(st.booleans(), label="delete")
    mutated = _replaced(meta, path, data.draw(JSON, label="value"), delete)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "w.ckpt.npz"
        np.savez(checkpoint, **dict(run["arrays"], meta=np.array(json.dumps(mutated))))
        try:
            ckpt = load_checkpoint(checkpoint)
            check_resumable(ckpt)
            trainer = Trainer(run["model"], run["splits"], run["config"], str(checkpoint), run["identity"])
            trainer.restore(ckpt)
        except CnncError:
            pass


# ---- .npz member headers ---------------------------------------------------------------------------------
HEADER = st.fixed_dictionaries({
    "descr": st.sampled_from(["<f4", "<f8", "|u1", ">i8", "|O", "<U3", "V7", "x", "<f16"]) | st.text(max_size=5),
    "fortran_order": st.booleans() | st.integers(),
    "shape": st.lists(st.integers(-5, 2**66), max_size=4).map(tuple) | JSON,
})


def _member(header_text: bytes, body: bytes, version: int) -> bytes:
    if version == 1:
        return b"\x93NUMPY\x01\x00" + len(header_text).to_bytes(2, "little") + header_text + body
    return b"\x93NUMPY\x02\x00" + len(header_text).to_bytes(4, "little") + header_text + body


@BUDGET
@given(header=HEADER, raw=st.binary(max_size=40), use_raw=st.booleans(), body=st.binary(max_size=64),
       version=st.sampled_from([1, 2]))
def test_crafted_npz_member_headers_never_give_a_traceback(header, raw, use_raw, body, version):
    text = raw if use_raw else (repr(header).encode("latin1", "replace") + b"\n")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.npz"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("a.npy", _member(text, body, version))
        for reader in (load_npz_checked, read_npz):
            try:
                arrays = reader(path)
            except ValueError:  # CnncError is one
                continue
            assert set(arrays) == {"a"} and isinstance(arrays["a"], np.ndarray)


# ---- IDX headers -------------------------------------------------------------------------------------------
@BUDGET
@given(magic=st.sampled_from([b"\0\0\x08\x03", b"\0\0\x08\x01", b"\0\0\x08\x00", b"\0\0\x0d\x03", b"\x1f\x8b", b""])
       | st.binary(max_size=4),
       dims=st.lists(st.integers(0, 2**32 - 1), max_size=4), body=st.binary(max_size=32),
       ndim=st.sampled_from([None, 1, 3]))
def test_crafted_idx_headers_never_give_a_traceback(magic, dims, body, ndim):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x-idx3-ubyte"
        path.write_bytes(magic + b"".join(d.to_bytes(4, "big") for d in dims) + body)
        try:
            array = read_idx(path, ndim)
        except CnncError:
            return
        assert array.dtype == np.uint8 and array.size == len(body) or array.size == 0


# ---- metrics logs (cnnc viz curves) ----------------------------------------------------------------------
LINE = (st.builds(lambda r: json.dumps(r), st.dictionaries(st.sampled_from(["epoch", "train_loss", "test_accuracy", "x"]),
                                                           JSON, max_size=4))
        | st.integers(1, 5000).map(lambda n: "[" * n + "]" * n)
        | st.integers(1, 5000).map(lambda n: '{"epoch": ' + "[" * n)
        | st.text(max_size=20))


@BUDGET
@given(lines=st.lists(LINE, max_size=4))
def test_crafted_metrics_logs_never_give_a_traceback(lines):
    pytest.importorskip("matplotlib")
    from cnnc.viz import read_metrics

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.jsonl"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass") if _encodable(lines) \
            else path.write_bytes(b"\xff")
        try:
            records = read_metrics(path)
        except CnncError:
            return
        assert records and all(isinstance(r, dict) and isinstance(r["epoch"], int) for r in records)


def _encodable(lines) -> bool:
    try:
        "\n".join(lines).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
