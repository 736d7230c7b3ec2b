"""Checkpoint files and the pieces of run state they hold: arrays, optimiser state, RNG states, fingerprints."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.checkpoint import (data_fingerprint, default_checkpoint_path, join_arrays, load_checkpoint, network_hash,
                             save_checkpoint, split_arrays)
from cnnc.diagnostics import CnncError
from cnnc.cli import main
from cnnc.optim import Adam
from cnnc.train import learning_rate

from conftest import TINY

SPEC = """
model tiny {
    input image[1, 6, 6]
    conv2d c1(filters=3, kernel=3, activation=relu)
    flatten
    dropout(rate=0.5)
    dense out(units=4)
    loss cross_entropy
}
"""


def tiny_model(text: str = SPEC, seed: int = 0):
    from cnnc.backends.numpy_backend import NumpyModel

    return NumpyModel(cnnc.network_from_text(text), seed=seed)


def adam_steps(model, optimizer, steps: int, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.random((8, 1, 6, 6)).astype(np.float32)
        labels = rng.integers(0, 4, 8)
        _, dy = model.loss(model.forward(x, train=True), labels)
        model.backward(dy)
        optimizer.step()


def test_split_and_join_arrays_round_trip_nested_state():
    state = {"kind": "adam", "betas": (0.9, 0.999), "steps": 3, "lr": 0.1 + 0.2,
             "exp_avg": {"c1.weight": np.arange(6.0).reshape(2, 3), "out.bias": np.float32(1.5)}}
    arrays = {}
    rest = split_arrays(state, "optim", arrays)
    back = join_arrays(json.loads(json.dumps(rest)), arrays)   # through JSON, as in a checkpoint
    assert sorted(arrays) == ["optim/exp_avg/c1.weight", "optim/exp_avg/out.bias"]
    assert back["betas"] == [0.9, 0.999] and back["steps"] == 3
    assert back["lr"] == 0.1 + 0.2                              # floats come back bit for bit
    np.testing.assert_array_equal(back["exp_avg"]["c1.weight"], state["exp_avg"]["c1.weight"])
    assert back["exp_avg"]["out.bias"].dtype == np.float32


def test_checkpoint_round_trip_continues_adam_and_dropout_exactly(tmp_path):
    """Save mid-training, restore into a fresh model and optimiser: the next steps give identical weights."""
    model = tiny_model()
    optimizer = Adam(model.params, model.grads, lr=0.01)
    adam_steps(model, optimizer, 3)
    path = tmp_path / "run.ckpt.npz"
    meta = {"rng": {"dropout": model.dropout_rng.bit_generator.state}, "note": "anything JSON"}
    save_checkpoint(path, model.params, optimizer.state_dict(), meta, perm=np.array([2, 0, 1]))
    adam_steps(model, optimizer, 2)                 # the uninterrupted continuation

    ckpt = load_checkpoint(path)
    fresh = tiny_model(seed=99)                     # different initial weights, overwritten by the checkpoint
    fresh.load_weights(ckpt.params)
    fresh.dropout_rng.bit_generator.state = ckpt.meta["rng"]["dropout"]
    fresh_optimizer = Adam(fresh.params, fresh.grads, lr=0.5)
    fresh_optimizer.load_state_dict(ckpt.optimizer_state)
    adam_steps(fresh, fresh_optimizer, 2)

    assert ckpt.meta["note"] == "anything JSON"
    np.testing.assert_array_equal(ckpt.perm, [2, 0, 1])
    assert fresh_optimizer.lr == 0.01 and fresh_optimizer.steps == 5
    for name in model.params:
        np.testing.assert_array_equal(fresh.params[name], model.params[name], err_msg=name)


def test_checkpoint_without_perm_loads_none_and_leaves_no_temporary_files(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path / "a.ckpt.npz", model.params, {}, {"x": 1})
    assert load_checkpoint(tmp_path / "a.ckpt.npz").perm is None
    assert os.listdir(tmp_path) == ["a.ckpt.npz"]


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CnncError, match=r"nothere\.npz: no such checkpoint file"):
        load_checkpoint(tmp_path / "nothere.npz")
    weights = tmp_path / "w.npz"
    tiny_model().save(weights)
    with pytest.raises(CnncError, match=r"w\.npz: not a cnnc checkpoint .*a weights file is not a checkpoint"):
        load_checkpoint(weights)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(CnncError, match=r"junk\.npz: not a readable checkpoint"):
        load_checkpoint(junk)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(CnncError, match=r"single\.npy: holds a single array"):
        load_checkpoint(single)


def test_network_hash_ignores_comments_but_not_architecture():
    base = network_hash(cnnc.network_from_text(SPEC))
    commented = SPEC.replace("flatten", "flatten          # a comment moves nothing")
    wider = SPEC.replace("filters=3", "filters=4")
    assert network_hash(cnnc.network_from_text(commented)) == base
    assert network_hash(cnnc.network_from_text(wider)) != base


def test_data_fingerprint_sees_any_change():
    x, y = np.zeros((4, 1, 2, 2), np.float32), np.arange(4)
    base = data_fingerprint(x, y)
    changed = y.copy()
    changed[3] = 0
    assert data_fingerprint(x.copy(), y.copy()) == base
    assert data_fingerprint(x, changed) != base
    assert data_fingerprint(x.reshape(4, 1, 4), y) != base   # same bytes, another shape


def test_default_checkpoint_path():
    assert default_checkpoint_path("digits.weights.npz") == "digits.weights.ckpt.npz"
    assert default_checkpoint_path("out/w") == "out/w.ckpt.npz"


def test_learning_rate_schedules():
    assert learning_rate("constant", 0.1, 57, 100) == 0.1
    assert learning_rate("cosine", 0.1, 0, 100) == 0.1
    assert learning_rate("cosine", 0.1, 50, 100) == pytest.approx(0.05)
    assert learning_rate("cosine", 0.1, 100, 100) == pytest.approx(0.0)
    rates = [learning_rate("cosine", 0.1, s, 100) for s in range(101)]
    assert all(a > b for a, b in zip(rates, rates[1:]))     # strictly decreasing
    assert [learning_rate("step", 1.0, s, 100) for s in (0, 49, 50, 74, 75, 99)] == \
        pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


# ---- damaged checkpoints -------------------------------------------------------------------------------
def _edit_meta(path: Path, edit) -> None:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps(edit(meta)))
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage, expected", [
    (lambda m: {k: v for k, v in m.items() if k != "position"}, "metadata lacks 'position'"),
    (lambda m: {**m, "rng": {"shuffle": m["rng"]["shuffle"]}}, "metadata.rng lacks 'dropout'"),
    (lambda m: {**m, "running": {**m["running"], "seen": "many"}}, "metadata.running.seen must be an integer"),
    (lambda m: {**m, "config": {**m["config"], "batch": "x"}}, "metadata.config.batch must be an integer"),
    (lambda m: {**m, "config": {**m["config"], "colour": 1}}, "metadata.config holds unexpected entries 'colour'"),
    (lambda m: {**m, "optimizer_state": {"exp_avg": {"__array__": "optim/nothing"}}}, "names an array it does not hold"),
    (lambda m: [m], "checkpoint format 'list'"),
])
def test_a_damaged_checkpoint_is_named_as_such_not_a_traceback(tmp_path, monkeypatch, capsys, damage, expected):
    monkeypatch.chdir(tmp_path)
    Path("tiny.cnn").write_text(TINY)
    args = ["train", "tiny.cnn", "--data", "digits", "--backend", "numpy", "--epochs", "2", "-q"]
    assert main([*args, "--stop-after", "1"]) == 0
    checkpoint = Path("runs/tiny.weights.ckpt.npz")
    _edit_meta(checkpoint, damage)
    capsys.readouterr()
    assert main([*args, "--resume", str(checkpoint)]) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
