"""Rough edges found in a review of the CLI and the file readers, each checked by the message a user sees:
train's -q, subcommand usage lines, text and checkpoint files given as weights, non-ONNX files given to
import, a directory given to viz maps --input, the train summary's timing, and float32 overflow in data.

Runs use TINY (4 filters, 8x8 digits) on the NumPy backend: a 1-epoch run takes well under a second.
"""
from __future__ import annotations

import contextlib
import io
import re
import time
import warnings
import json
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from cnnc.datasets import load_dataset, make_dataset
from cnnc.diagnostics import CnncError
from cnnc.fileio import describe_contents

from cli_runner import run_cli

from conftest import SPECS

TINY = """
model tiny {
    input image[1, 8, 8]
    conv2d c1(filters=4, kernel=3, activation=relu)   # -> [4, 6, 6]
    maxpool2d p1(size=2)                               # -> [4, 3, 3]
    flatten
    dense out(units=10)
    loss cross_entropy
}
"""
QUICK = ["--data", "digits", "--backend", "numpy"]



def usage_error(*args) -> str:
    """stderr of an argparse error (which exits with status 2)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code == 2
    return err.getvalue()


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.cnn").write_text(TINY)
    (tmp_path / "notes.txt").write_text("hello, these are notes\n")
    return "tiny.cnn"


# ---- 1. train -q ---------------------------------------------------------------------------------
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


# ---- 2. usage errors name the subcommand -----------------------------------------------------------
def test_unknown_option_of_a_subcommand_shows_that_subcommands_usage(tiny):
    err = usage_error("train", tiny, "--bogus")
    assert err.startswith("usage: cnnc train [-h]")
    assert err.rstrip().endswith("cnnc train: error: unrecognized arguments: --bogus")


def test_extra_positional_of_a_nested_subcommand_shows_its_usage(tiny):
    err = usage_error("viz", "maps", tiny, "--weights", "w.npz", "--input", "x.npy", "-o", "m.png", "surplus")
    assert err.startswith("usage: cnnc viz maps [-h]")
    assert err.rstrip().endswith("cnnc viz maps: error: unrecognized arguments: surplus")


def test_unknown_top_level_option_keeps_the_top_level_usage():
    err = usage_error("--bogus")
    assert err.startswith("usage: cnnc [-h] [--version] COMMAND")
    assert err.rstrip().endswith("cnnc: error: unrecognized arguments: --bogus")


# ---- 3. a file that is not a .npz ------------------------------------------------------------------
@pytest.mark.parametrize("content, found", [
    (b"", "an empty file"),
    (b"hello,\n  these are notes\n", "text beginning 'hello, these are notes'"),
    (b"\x08\x07\xff\x00", "binary data beginning 08 07 ff 00"),
    ("é".encode() * 32 + b"\xc3", "text beginning '" + "é" * 24 + "'"),  # a character cut at the 64-byte mark
])
def test_describe_contents_says_what_a_file_looks_like(tmp_path, content, found):
    path = tmp_path / "f"
    path.write_bytes(content)
    assert describe_contents(path) == found


def test_load_weights_of_a_text_file_names_it_and_says_what_it_is(tiny):
    Path("x.npz").write_text("hello\n")
    model = cnnc.load(tiny, backend="numpy")
    with pytest.raises(ValueError) as e:
        model.load_weights("x.npz")
    assert str(e.value) == "weights file x.npz: not a NumPy .npz archive (it is text beginning 'hello')"


def test_eval_with_text_or_npy_weights_is_a_clear_error_not_numpys(tiny):
    status, _, stderr = run_cli("eval", tiny, "--weights", "notes.txt", *QUICK)
    assert status == 1 and "pickled" not in stderr
    assert stderr.strip() == "error: weights file notes.txt: not a NumPy .npz archive (it is text beginning 'hello, these are notes')"
    np.save("one.npy", np.zeros(3))
    status, _, stderr = run_cli("eval", tiny, "--weights", "one.npy", *QUICK)  # was a TypeError traceback
    assert status == 1
    assert stderr.strip() == "error: weights file one.npy: not a NumPy .npz archive (it is a NumPy .npy file holding one array)"


def test_text_file_as_data_or_checkpoint_is_named_as_such(tiny):
    status, _, stderr = run_cli("train", tiny, "--data", "notes.txt", "--backend", "numpy")
    assert status == 1
    assert stderr.strip() == "error: notes.txt: not a NumPy .npz archive (it is text beginning 'hello, these are notes')"
    status, _, stderr = run_cli("train", tiny, "--resume", "notes.txt")
    assert status == 1 and "pickled" not in stderr
    assert stderr.strip() == ("error: notes.txt: not a readable checkpoint: not a NumPy .npz archive "
                              "(it is text beginning 'hello, these are notes')")


# ---- 4. a checkpoint given as weights ----------------------------------------------------------------
def test_checkpoint_of_an_unfinished_run_given_as_weights_says_how_to_continue(tiny):
    assert run_cli("train", tiny, *QUICK, "--epochs", 2, "--stop-after", 1, "-o", "part.npz")[0] == 0
    status, _, stderr = run_cli("eval", tiny, "--weights", "part.ckpt.npz", *QUICK)
    assert status == 1 and "missing parameter" not in stderr
    assert stderr.strip() == ("error: part.ckpt.npz is a training checkpoint (model 'tiny', 1 of 2 epoch(s) done), "
                              "not a weights file; continue its run with `cnnc train tiny.cnn --resume part.ckpt.npz`, "
                              "which writes the weights file part.npz when it finishes")


def test_checkpoint_of_a_finished_run_points_at_its_weights_file(tiny):
    assert run_cli("train", tiny, *QUICK, "--epochs", 1, "-q")[0] == 0
    model = cnnc.load(tiny, backend="numpy")
    with pytest.raises(ValueError) as e:
        model.load_weights("runs/tiny.weights.ckpt.npz")
    assert str(e.value) == ("runs/tiny.weights.ckpt.npz is a training checkpoint (model 'tiny', 1 of 1 epoch(s) done), "
                            "not a weights file; its run wrote the weights file runs/tiny.weights.npz; to train further, "
                            "use `cnnc train tiny.cnn --resume runs/tiny.weights.ckpt.npz --epochs 2` or more")
    model.load_weights("runs/tiny.weights.npz")  # the file the message names loads


# ---- 5. cnnc import of a file that is not ONNX --------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"", "empty.onnx: not an ONNX model: it holds no graph (it is an empty file)"),
    (b"\x08\x07", "empty.onnx: not an ONNX model: it holds no graph (it is binary data beginning 08 07)"),
])
def test_import_of_bytes_protobuf_accepts_says_not_an_onnx_model(tiny, content, message):
    pytest.importorskip("onnx")
    Path("empty.onnx").write_bytes(content)  # protobuf parses these as an empty ModelProto: "0 inputs" before
    status, _, stderr = run_cli("import", "empty.onnx", "-o", "out.cnn")
    assert status == 1 and stderr.strip() == f"error: {message}"


def test_import_of_an_npy_says_what_the_file_is(tiny):
    pytest.importorskip("onnx")
    np.save("a.npy", np.arange(10.0))
    status, _, stderr = run_cli("import", "a.npy", "-o", "out.cnn")
    assert status == 1
    assert stderr.startswith("error: a.npy: not a readable ONNX model: it is a NumPy .npy file holding one array (")


# ---- 6. viz maps --input DIR ----------------------------------------------------------------------------
def test_viz_maps_input_directory_is_named_as_a_directory(tiny):
    cnnc.load(tiny, backend="numpy").save("w.npz")
    Path("inputs").mkdir()
    status, _, stderr = run_cli("viz", "maps", tiny, "--weights", "w.npz", "--input", "inputs", "-o", "m.png")
    assert status == 1
    assert stderr.strip() == "error: inputs: is a directory; --input takes one image or .npy file"


# ---- 7. the summary's timing includes building the model and loading the data ---------------------------
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


# ---- 8. data beyond float32's range ----------------------------------------------------------------------
def test_data_beyond_float32_is_a_clean_error_without_numpy_warning(tmp_path):
    path = tmp_path / "big.npz"
    x = np.zeros((4, 1, 8, 8))
    x[1, 0, 2, 3] = -1e300
    np.savez(path, x_train=x, y_train=np.arange(4), x_test=np.zeros((2, 1, 8, 8)), y_test=np.arange(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's "overflow encountered in cast" would now be raised
        with pytest.raises(CnncError) as e:
            load_dataset(path)
    assert str(e.value) == (f"error: {path}: x_train has values beyond the float32 range "
                            "(largest magnitude 1e+300); scale the data")


def test_float32_data_with_infinity_is_still_named_as_non_finite():
    x = np.zeros((3, 1, 4, 4))
    x[0, 0, 0, 0] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CnncError, match="x_train contains NaN or infinite values"):
            make_dataset("d", x, np.arange(3), np.zeros((1, 1, 4, 4)), np.zeros(1, int), "test data")



# ---- a cache directory that cannot be used ------------------------------------------------------------
def test_an_unusable_cache_directory_costs_only_speed_where_no_cache_is_needed(tmp_path, monkeypatch, capsys):
    """A file where the cache directory should be: checking and the NumPy backend still work (the parser
    tables and IR are not kept); the C backend, which needs the cache, says so and names CNNC_CACHE_DIR."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("CNNC_CACHE_DIR", str(blocker))
    spec = str(SPECS / "digits.cnn")
    assert main(["check", spec]) == 0
    assert "digits" in capsys.readouterr().out
    model = cnnc.load(spec)
    assert model.forward(np.zeros((1, *model.input_shape), np.float32)).shape == (1, 10)
    from cnnc.backends import c_build
    c_build._LOADED.clear()
    with pytest.raises(CnncError, match=r"cannot write to the C module cache .*set CNNC_CACHE_DIR"):
        cnnc.load(spec, backend="c")


def test_an_output_under_a_file_names_the_file_in_the_way(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    code = main(["train", str(SPECS / "digits.cnn"), "--data", "digits", "--epochs", "1", "-o", str(blocker / "w.npz")])
    assert code == 1
    assert f"{blocker} is a file, not a directory" in capsys.readouterr().err


# ---- outputs that would overwrite the command's own inputs ---------------------------------------------
def test_no_command_writes_over_its_own_inputs_or_one_output_over_another(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = Path("net.cnn")
    spec.write_text((SPECS / "digits.cnn").read_text())
    original = spec.read_bytes()
    assert main(["train", str(spec), "--data", "digits", "--epochs", "1", "-o", str(spec)]) == 1
    assert "the weights (-o) would overwrite the spec" in capsys.readouterr().err
    assert main(["train", str(spec), "--data", "digits", "--epochs", "1", "-o", "w.npz", "--log", "./w.npz"]) == 1
    assert "the metrics log (--log) would overwrite the weights (-o)" in capsys.readouterr().err
    assert spec.read_bytes() == original and not Path("w.npz").exists()

    cnnc.load(spec).save("w.npz")
    weights = Path("w.npz").read_bytes()
    assert main(["export", str(spec), "--weights", "w.npz", "--format", "onnx", "-o", "w.npz"]) == 1
    assert "the ONNX file (-o) would overwrite the weights" in capsys.readouterr().err
    assert Path("w.npz").read_bytes() == weights
    assert main(["export", str(spec), "--weights", "w.npz", "--format", "onnx", "-o", "net.onnx"]) == 0
    exported = Path("net.onnx").read_bytes()
    assert main(["import", "net.onnx", "-o", "back.cnn", "--weights", "back.cnn"]) == 1
    assert "the weights file would overwrite the .cnn file" in capsys.readouterr().err
    assert main(["import", "net.onnx", "-o", "net.onnx"]) == 1
    assert "the .cnn file would overwrite the ONNX model" in capsys.readouterr().err
    assert Path("net.onnx").read_bytes() == exported and not Path("back.cnn").exists()


# ---- API misuse: ValueError saying what was expected ---------------------------------------------------
def test_api_misuse_is_a_value_error_saying_what_was_expected(tmp_path):
    m = cnnc.load(SPECS / "digits.cnn")
    for call, expected in ((lambda: cnnc.network_from_text(None), "spec text must be a str; got NoneType"),
                           (lambda: cnnc.network_from_text(b"model m {}"), "got bytes"),
                           (lambda: m.load_weights(None), "an .npz path or a mapping of name -> array; got NoneType"),
                           (lambda: m.load_weights(123), "got int"),
                           (lambda: m.save(None), "save takes a file path; got NoneType")):
        with pytest.raises(ValueError, match=expected):
            call()


@pytest.mark.parametrize("change", ["clear", "pop", "popitem", "setdefault", "ior_new_name"])
def test_params_keep_their_fixed_set_of_tensors(change):
    m = cnnc.load(SPECS / "digits.cnn")
    names = list(m.params)
    calls = {"clear": lambda: m.params.clear(), "pop": lambda: m.params.pop("c1.weight"),
             "popitem": lambda: m.params.popitem(), "setdefault": lambda: m.params.setdefault("zz", 1)}
    if change == "ior_new_name":
        with pytest.raises(KeyError, match="has no tensor 'zz'"):
            m.params |= {"zz": np.zeros(1)}
    else:
        with pytest.raises(TypeError, match="fixed set of tensors"):
            calls[change]()
    assert list(m.params) == names
    m.params |= {"c1.bias": np.ones(m.params["c1.bias"].shape)}  # an existing name: copied into place
    assert (m.params["c1.bias"] == 1).all() and type(m.params).__name__ == "TensorDict"


def test_compile_with_an_empty_output_uses_the_default_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", str(SPECS / "digits.cnn"), "-o", "", "--emit-c"]) == 0
    assert (tmp_path / "build" / "digits" / "manifest.json").is_file()


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


# ---- predict and viz maps read an input the same way ---------------------------------------------------
def test_predict_and_viz_read_16_bit_images_and_uint8_arrays_alike(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from cnnc.inference import read_inputs
    from cnnc.viz import read_input

    grey16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(grey16).save(tmp_path / "g16.png")  # mode I;16 (or I): 0..63000 of 65535
    x, _ = read_inputs([str(tmp_path / "g16.png")], (1, 8, 8))
    np.testing.assert_allclose(x[0, 0], grey16 / 65535.0, rtol=1e-6)  # not clipped at 255
    np.testing.assert_array_equal(read_input(tmp_path / "g16.png", (1, 8, 8)), x[0])
    u8 = np.full((8, 8), 200, np.uint8)
    with open(tmp_path / "U8.NPY", "wb") as f:  # an upper-case suffix is still a .npy
        np.save(f, u8)
    x, _ = read_inputs([str(tmp_path / "U8.NPY")], (1, 8, 8))
    np.testing.assert_allclose(x, 200 / 255, rtol=1e-6)
    np.testing.assert_array_equal(read_input(tmp_path / "U8.NPY", (1, 8, 8)), x[0])


def test_a_compiled_directory_given_to_the_numpy_backend_points_at_the_c_backend(tmp_path):
    assert main(["compile", str(SPECS / "digits.cnn"), "-o", str(tmp_path / "out"), "--emit-c"]) == 0
    with pytest.raises(CnncError, match=r"written by `cnnc compile`.*backend='c'"):
        cnnc.load(tmp_path / "out")
