"""cnnc train / eval / predict: accuracy on real data, bit-identical resume, Ctrl-C, divergence, bad input.

Most runs use TINY (a 4-filter network, milliseconds per step) on the 8x8 digits; the accuracy test and
the eval/predict tests use specs/digits.cnn, trained once per module.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from cnnc.checkpoint import load_checkpoint
from cnnc.datasets import load_dataset, load_digits
from cnnc.diagnostics import CnncError
from cnnc.train import DEFAULT_LR, LOG_KEYS, TrainConfig, Trainer, TrainingInterrupted, load_classifier, load_data_for, make_splits

from cli_runner import run_cli

from conftest import ROOT
BATCHES = math.ceil(1437 / TrainConfig().batch)  # batches per epoch of the digits training split
DIGITS_SPEC = str(ROOT / "specs" / "digits.cnn")
QUICK = ["--data", "digits", "--backend", "numpy"]  # with TINY: a 1-epoch run takes well under a second
TINY = """
model tiny {
    input image[1, 8, 8]
    conv2d c1(filters=4, kernel=3, activation=relu)   # -> [4, 6, 6]
    maxpool2d p1(size=2)                               # -> [4, 3, 3]
    flatten
    dropout(rate=0.2)
    dense out(units=10)
    loss cross_entropy
}
"""



def weights(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def assert_identical(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs"


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.cnn").write_text(TINY)
    return "tiny.cnn"


@pytest.fixture(scope="module")
def digits_weights(tmp_path_factory) -> Path:
    """specs/digits.cnn trained for 5 epochs with the default settings, on the NumPy backend."""
    from threadpoolctl import threadpool_limits

    out = tmp_path_factory.mktemp("digits") / "digits.weights.npz"
    with threadpool_limits(1):  # BLAS threads only contend on these tiny matrices (3-8x slower on a busy machine)
        status, stdout, stderr = run_cli("train", DIGITS_SPEC, "--data", "digits", "--epochs", 5, "--backend", "numpy",
                                         "-o", out)
    assert status == 0, stderr
    assert f"weights written to {out}" in stdout
    return out


# ---- accuracy, eval, log -----------------------------------------------------------------------------
def test_short_digits_run_reaches_95_percent(digits_weights):
    status, stdout, _ = run_cli("eval", DIGITS_SPEC, "--weights", digits_weights, "--data", "digits", "--json",
                                "--backend", "numpy")
    result = json.loads(stdout)
    assert status == 0
    assert result["accuracy"] >= 0.95, result


def test_eval_json_form_is_consistent(digits_weights):
    _, stdout, _ = run_cli("eval", DIGITS_SPEC, "--weights", digits_weights, "--data", "digits", "--json",
                           "--backend", "numpy")
    result = json.loads(stdout)
    assert sorted(result) == ["accuracy", "confusion", "loss", "n"]
    confusion = np.array(result["confusion"])
    assert result["n"] == 360 and confusion.shape == (10, 10) and confusion.sum() == 360
    assert confusion.sum(axis=1).tolist() == np.bincount(load_digits().y_test).tolist()
    assert result["accuracy"] == np.trace(confusion) / 360
    assert 0 < result["loss"] < 0.5


def test_eval_prints_accuracy_and_a_readable_confusion_matrix(digits_weights):
    status, stdout, _ = run_cli("eval", DIGITS_SPEC, "--weights", digits_weights, "--data", "digits", "--backend", "numpy")
    lines = stdout.splitlines()
    assert status == 0
    assert "digits on digits (test split, 360 samples): accuracy" in lines[0]
    assert lines[2].split() == ["true\\pred"] + [str(k) for k in range(10)]
    rows = [list(map(int, line.split())) for line in lines[3:13]]
    assert [r[0] for r in rows] == list(range(10)) and sum(sum(r[1:]) for r in rows) == 360


def test_metrics_log_has_exactly_the_agreed_keys(tiny):
    status, _, stderr = run_cli("train", tiny, "--data", "digits", "--epochs", 2, "--backend", "numpy",
                                "--val-split", 0.25, "--log", "m.jsonl")
    records = [json.loads(line) for line in Path("m.jsonl").read_text().splitlines()]
    assert status == 0
    assert [list(r) for r in records] == [list(LOG_KEYS)] * 2
    assert [r["epoch"] for r in records] == [1, 2]
    n_val = round(0.25 * 1437)
    for r in records:
        for accuracy, n in ((r["val_accuracy"], n_val), (r["test_accuracy"], 360)):  # counts out of 359 and 360
            assert accuracy * n == pytest.approx(round(accuracy * n), abs=1e-9)
        assert r["seconds"] > 0 and r["images_per_second"] == pytest.approx((1437 - n_val) / r["seconds"], rel=0.01)
    assert records[1]["lr"] < records[0]["lr"]                      # the cosine schedule decays
    assert "epoch 2/2: train loss" in stderr                         # plain progress lines when not a terminal


def test_quiet_prints_only_the_summary(tiny):
    status, stdout, stderr = run_cli("train", tiny, "--data", "digits", "--epochs", 1, "--backend", "numpy", "--quiet")
    assert status == 0 and stderr == ""
    assert stdout.startswith("tiny: test accuracy ") and "weights written to runs/tiny.weights.npz" in stdout
    assert Path("runs/tiny.weights.npz").exists() and Path("runs/tiny.weights.ckpt.npz").exists()


def test_the_seed_fixes_the_run(tiny):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert run_cli("train", tiny, "--data", "digits", "--epochs", 1, "--backend", "numpy", "--seed", seed,
                       "-o", f"{name}.npz", "--quiet")[0] == 0
    assert_identical(weights("a.npz"), weights("b.npz"))
    assert not np.array_equal(weights("a.npz")["out.weight"], weights("c.npz")["out.weight"])


# ---- resume ------------------------------------------------------------------------------------------
def test_resume_after_stop_after_equals_an_uninterrupted_run(tiny):
    """Cosine schedule over 2 epochs: run 1 epoch, resume for the 2nd, compare with 2 epochs straight."""
    common = ["--data", "digits", "--epochs", 2, "--backend", "numpy", "--quiet"]
    assert run_cli("train", tiny, *common, "-o", "full.npz")[0] == 0
    status, stdout, _ = run_cli("train", tiny, *common, "-o", "part.npz", "--stop-after", 1)
    assert status == 0 and "stopped after epoch 1 of 2" in stdout and not Path("part.npz").exists()
    assert run_cli("train", tiny, "--resume", "part.ckpt.npz", "--quiet")[0] == 0
    assert_identical(weights("part.npz"), weights("full.npz"))


def test_resume_extends_a_finished_constant_schedule_run(tiny):
    common = ["--data", "digits", "--backend", "numpy", "--schedule", "constant", "--quiet"]
    assert run_cli("train", tiny, *common, "--epochs", 2, "-o", "full.npz")[0] == 0
    assert run_cli("train", tiny, *common, "--epochs", 1, "-o", "part.npz")[0] == 0
    assert run_cli("train", tiny, "--resume", "part.ckpt.npz", "--epochs", 2, "--quiet")[0] == 0
    assert_identical(weights("part.npz"), weights("full.npz"))


def test_c_backend_trains_resumes_exactly_and_agrees_with_numpy(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNC_CACHE_DIR", str(tmp_path / "cache"))
    common = ["--data", "digits", "--epochs", 2, "--quiet"]
    assert run_cli("train", tiny, *common, "--backend", "c", "-o", "c.npz", "--log", "c.jsonl")[0] == 0
    assert run_cli("train", tiny, *common, "--backend", "c", "-o", "part.npz", "--stop-after", 1)[0] == 0
    assert run_cli("train", tiny, "--resume", "part.ckpt.npz", "--quiet")[0] == 0   # the checkpoint says c
    assert load_checkpoint("part.ckpt.npz").meta["backend"] == "c"
    assert_identical(weights("part.npz"), weights("c.npz"))
    assert run_cli("train", tiny, *common, "--backend", "numpy", "-o", "np.npz", "--log", "np.jsonl")[0] == 0
    c_log, np_log = ([json.loads(line) for line in Path(f).read_text().splitlines()] for f in ("c.jsonl", "np.jsonl"))
    for c_epoch, np_epoch in zip(c_log, np_log):     # the same run up to float summation order
        assert c_epoch["train_loss"] == pytest.approx(np_epoch["train_loss"], rel=1e-4)
        assert c_epoch["test_loss"] == pytest.approx(np_epoch["test_loss"], rel=1e-4)


def make_trainer(spec_path: str, checkpoint: str, epochs: int = 2) -> Trainer:
    config = TrainConfig(epochs=epochs, seed=7).checked()
    model = load_classifier(spec_path, None, "numpy", seed=config.seed)
    ds = load_data_for(model, "digits")
    return Trainer(model, make_splits(ds, 0.0), config, checkpoint, identity={"note": "test"})


def test_stop_mid_epoch_and_resume_is_bit_identical(tiny):
    """Stop after batch 5 of epoch 2 (dropout, shuffling and Adam all mid-stream), resume in a new trainer."""
    full = make_trainer(tiny, "full.ckpt.npz")
    full.fit()

    first = make_trainer(tiny, "part.ckpt.npz")

    def stop_in_epoch_2(trainer):
        if trainer.state.epoch == 1 and trainer.state.batch == 5:
            trainer.stop_requested = True

    first.on_batch = stop_in_epoch_2
    with pytest.raises(TrainingInterrupted) as stopped:
        first.fit()
    assert (stopped.value.epoch, stopped.value.batch) == (2, 5)

    ckpt = load_checkpoint("part.ckpt.npz")
    assert ckpt.meta["position"] == {"epoch": 1, "batch": 5, "step": BATCHES + 5} and len(ckpt.perm) == 1437
    second = make_trainer(tiny, "part.ckpt.npz")
    second.restore(ckpt)
    second.fit()
    assert_identical(second.model.params, full.model.params)
    assert [r["train_loss"] for r in second.state.history] == [r["train_loss"] for r in full.state.history]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_saves_a_resumable_checkpoint_and_exits_130(tmp_path, tiny):
    """A real Ctrl-C to a training process: exit status 130, the resume hint, and the resumed run equals
    an uninterrupted one."""
    args = ["train", tiny, "--data", "digits", "--epochs", 12, "--backend", "numpy", "-o", "run.npz"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "cnnc.cli", *map(str, args)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run.ckpt.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "checkpoint saved to run.ckpt.npz" in stderr
    assert "resume with: cnnc train tiny.cnn --data digits --resume run.ckpt.npz" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "run.npz").exists()

    ckpt = load_checkpoint(tmp_path / "run.ckpt.npz")
    assert ckpt.perm is not None and 1 <= ckpt.meta["position"]["epoch"] < 12   # stopped inside an epoch
    assert run_cli("train", tiny, "--resume", "run.ckpt.npz", "--quiet")[0] == 0
    assert run_cli("train", tiny, *args[2:], "-o", "straight.npz", "--quiet")[0] == 0
    assert_identical(weights("run.npz"), weights("straight.npz"))


def test_resume_refuses_another_spec_and_changed_settings(tiny):
    assert run_cli("train", tiny, "--data", "digits", "--epochs", 1, "--backend", "numpy", "--quiet")[0] == 0
    Path("wider.cnn").write_text(TINY.replace("filters=4", "filters=5"))
    status, _, stderr = run_cli("train", "wider.cnn", "--resume", "runs/tiny.weights.ckpt.npz", "--epochs", 2)
    assert status == 1 and "resuming with another spec is refused" in stderr and "Traceback" not in stderr
    status, _, stderr = run_cli("train", tiny, "--resume", "runs/tiny.weights.ckpt.npz", "--epochs", 2, "--lr", 0.1)
    assert status == 1 and f"changes --lr 0.1 (the checkpoint has {DEFAULT_LR['adam']})" in stderr
    status, _, stderr = run_cli("train", tiny, "--resume", "runs/tiny.weights.ckpt.npz")
    assert status == 1 and "already finished 1 epoch(s); pass --epochs N with N > 1" in stderr
    np.savez("other.npz", x_train=np.zeros((20, 8, 8)), y_train=np.arange(20) % 10,
             x_test=np.zeros((10, 8, 8)), y_test=np.arange(10))
    status, _, stderr = run_cli("train", tiny, "--resume", "runs/tiny.weights.ckpt.npz", "--epochs", 2, "--data", "other.npz")
    assert status == 1 and "holds different samples" in stderr


# ---- divergence --------------------------------------------------------------------------------------
def test_nan_learning_rate_is_a_clean_error(tiny):
    status, _, stderr = run_cli("train", tiny, "--data", "digits", "--backend", "numpy", "--lr", "nan")
    assert status == 1
    assert stderr.strip() == "error: --lr must be a positive finite number; got nan"


def test_exploding_loss_stops_with_the_epoch_and_batch(tiny):
    status, _, stderr = run_cli("train", tiny, "--data", "digits", "--backend", "numpy", "--optimizer", "sgd",
                                "--lr", "1e8", "--quiet")
    assert status == 1 and "Traceback" not in stderr
    assert "error: training diverged in epoch 1, batch " in stderr and f"of {BATCHES}: the loss is " in stderr
    assert "no checkpoint had been written yet" in stderr and "note: lower the learning rate" in stderr
    assert not Path("runs/tiny.weights.npz").exists() and not Path("runs/tiny.weights.ckpt.npz").exists()


def test_divergence_keeps_the_last_good_checkpoint(tiny):
    trainer = make_trainer(tiny, "run.ckpt.npz", epochs=3)
    saved = {}

    def blow_up_in_epoch_2(t):
        if t.state.epoch == 1 and t.state.batch == 3:
            saved.update(load_checkpoint("run.ckpt.npz").params)
            t.model.params["out.weight"][...] = np.inf    # as if the last step had overflowed

    trainer.on_batch = blow_up_in_epoch_2
    with pytest.raises(CnncError, match=rf"diverged in epoch 2, batch 4 of {BATCHES}: the network's outputs are not finite"
                                        r".*\(1 epoch\(s\) done\) is kept: run\.ckpt\.npz"):
        trainer.fit()
    after = load_checkpoint("run.ckpt.npz")
    assert after.meta["position"]["epoch"] == 1 and after.perm is None
    assert_identical(after.params, saved)


def test_weights_gone_bad_in_the_last_batch_are_never_checkpointed(tiny):
    trainer = make_trainer(tiny, "run.ckpt.npz", epochs=2)

    def poison_last_batch_of_epoch_1(t):
        if t.state.epoch == 0 and t.state.batch == BATCHES:
            t.model.params["c1.bias"][0] = np.nan

    trainer.on_batch = poison_last_batch_of_epoch_1
    with pytest.raises(CnncError, match=rf"diverged in epoch 1, batch {BATCHES} of {BATCHES}: the weights are no "
                                        r"longer finite .*no checkpoint had been written yet"):
        trainer.fit()
    assert not Path("run.ckpt.npz").exists()


# ---- predict -----------------------------------------------------------------------------------------
def test_predict_png_and_npy(digits_weights, tmp_path):
    from PIL import Image

    model = cnnc.load(DIGITS_SPEC, backend="numpy")
    model.load_weights(digits_weights)
    x_test = load_digits().x_test                         # (360, 1, 8, 8) in [0, 1]
    pixels = np.round(x_test[0, 0] * 255).astype(np.uint8)               # (8, 8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "seven.png")
    Image.new("RGB", (16, 16), (128, 128, 128)).save(tmp_path / "gray.png")   # RGB, twice the size
    np.save(tmp_path / "batch.npy", x_test[1:4])                         # (3, 1, 8, 8)
    np.save(tmp_path / "one.npy", x_test[4, 0])                          # (8, 8)

    status, stdout, stderr = run_cli("predict", DIGITS_SPEC, "--weights", digits_weights, "--backend", "numpy", "--json",
                                     tmp_path / "seven.png", tmp_path / "gray.png", tmp_path / "batch.npy",
                                     tmp_path / "one.npy")
    assert status == 0, stderr
    found = json.loads(stdout)
    expected_inputs = np.concatenate([(pixels / 255.0)[None, None], np.full((1, 1, 8, 8), 128 / 255), x_test[1:5]])
    probs = model.predict_proba(expected_inputs)
    names = ["seven.png", "gray.png", "batch.npy[0]", "batch.npy[1]", "batch.npy[2]", "one.npy"]
    assert [Path(r["input"]).name for r in found] == names
    for record, p in zip(found, probs):
        top = np.argsort(-p)[:3]
        assert record["class"] == top[0]
        assert [c for c, _ in record["top"]] == top.tolist()
        assert [q for _, q in record["top"]] == pytest.approx(p[top].tolist(), abs=1e-6)

    status, stdout, _ = run_cli("predict", DIGITS_SPEC, "--weights", digits_weights, "--backend", "numpy",
                                tmp_path / "seven.png")
    assert stdout.startswith(f"{tmp_path / 'seven.png'}: class {probs[0].argmax()} (probability ")
    assert "top 3: " in stdout


# ---- bad input ---------------------------------------------------------------------------------------
def test_bad_inputs_give_clean_errors(digits_weights, tmp_path):
    (tmp_path / "bad.png").write_text("not an image")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5)))
    cases = [
        (["eval", DIGITS_SPEC, "--weights", tmp_path / "missing.npz", "--data", "digits", "--backend", "numpy"],
         "missing.npz does not exist"),
        (["train", str(ROOT / "specs" / "lenet5.cnn"), "--data", "digits", "--backend", "numpy"],
         "data 'digits' has samples of shape [1, 8, 8] but model 'lenet5' takes input [1, 28, 28]"),
        (["eval", str(ROOT / "specs" / "lenet5.cnn"), "--weights", digits_weights, "--data", "digits", "--backend", "numpy"],
         "does not fit model 'lenet5'"),
        (["predict", DIGITS_SPEC, "--weights", digits_weights, "--backend", "numpy", tmp_path / "bad.png"],
         "bad.png: not an image Pillow can read"),
        (["predict", DIGITS_SPEC, "--weights", digits_weights, "--backend", "numpy", tmp_path / "wrong.npy"],
         "wrong.npy: array of shape (3, 5) does not fit the model's input [1, 8, 8]"),
        (["predict", DIGITS_SPEC, "--weights", digits_weights, "--backend", "numpy", tmp_path / "nothere.npy"],
         "nothere.npy: no such file"),
        (["train", DIGITS_SPEC, "--resume", tmp_path / "nothere.ckpt.npz"], "nothere.ckpt.npz: no such checkpoint file"),
        (["train", DIGITS_SPEC, "--data", "digts", "--backend", "numpy"], "did you mean 'digits'?"),
    ]
    for args, message in cases:
        status, _, stderr = run_cli(*args)
        assert status == 1, args
        assert message in stderr, (args, stderr)
        assert "Traceback" not in stderr


def test_a_failed_c_build_suggests_the_numpy_backend(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNC_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("CC", "/bin/false")
    status, _, stderr = run_cli("train", tiny, "--data", "digits", "--epochs", 1)
    assert status == 1 and "Traceback" not in stderr
    assert "error: building model 'tiny' with the C backend failed: " in stderr
    assert "note: use --backend numpy" in stderr


# ---- train -q ---------------------------------------------------------------------------------
def test_train_q_prints_only_the_summary(tiny):
    status, stdout, stderr = run_cli("train", tiny, *QUICK, "--epochs", 1, "-q")
    assert status == 0 and stderr == ""  # no progress lines, no per-epoch line
    assert stdout.startswith("tiny: test accuracy ") and "weights written to runs/tiny.weights.npz" in stdout
    assert Path("runs/tiny.weights.npz").exists()


def test_train_q_still_prints_errors(tiny):
    status, stdout, stderr = run_cli("train", tiny, *QUICK, "--optimizer", "sgd", "--lr", "1e8", "-q")
    assert status == 1 and stdout == ""
    assert stderr.startswith("error: training diverged in epoch 1, batch ")


def test_train_help_lists_q_with_quiet(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "-q, --quiet" in capsys.readouterr().out


# ---- the summary's timing includes building the model and loading the data ---------------------------
def test_train_summary_wall_time_includes_build_and_data_load(tiny, monkeypatch):
    import cnnc.cli.train

    slow_load, original = 0.4, cnnc.cli.train.load_data_for

    def load_data_slowly(model, data):
        time.sleep(slow_load)
        return original(model, data)

    monkeypatch.setattr(cnnc.cli.train, "load_data_for", load_data_slowly)
    started = time.perf_counter()
    status, stdout, _ = run_cli("train", tiny, *QUICK, "--epochs", 1, "-q")
    elapsed = time.perf_counter() - started
    assert status == 0
    found = re.search(r"^this invocation: ([\d.]+) s wall time \(([\d.]+) s building the model and loading the data, "
                      r"([\d.]+) s training, evaluating and checkpointing\)$", stdout, re.M)
    assert found, stdout
    wall, setup, loop = map(float, found.groups())
    training = float(re.search(r"^training: ([\d.]+) s over 1 epoch", stdout, re.M).group(1))
    assert setup >= slow_load - 0.05           # the slow data load is counted in the setup figure
    assert abs(wall - (setup + loop)) <= 0.11  # each figure is rounded to 0.1 s
    assert loop >= training - 0.05 and wall <= elapsed + 0.05


# ---- cnnc eval -------------------------------------------------------------------------------------
def test_eval_on_a_subset_of_the_classes(tmp_path, monkeypatch, capsys):
    """A 10-class model evaluated on data holding only classes 0..7: accepted, the confusion matrix keeps
    the model's 10 columns."""
    monkeypatch.chdir(tmp_path)
    Path("tiny.cnn").write_text(TINY)
    assert main(["train", "tiny.cnn", "--data", "digits", "--backend", "numpy", "--epochs", "1", "-q"]) == 0
    digits = load_dataset("digits")
    keep_train, keep_test = digits.y_train < 8, digits.y_test < 8
    np.savez("sub8.npz", x_train=digits.x_train[keep_train], y_train=digits.y_train[keep_train],
             x_test=digits.x_test[keep_test], y_test=digits.y_test[keep_test])
    capsys.readouterr()
    assert main(["eval", "tiny.cnn", "--weights", "runs/tiny.weights.npz", "--data", "sub8.npz", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert f"(test split, {int(keep_test.sum())} samples): accuracy" in out
    assert "true\\pred   0   1   2   3   4   5   6   7   8   9" in out
