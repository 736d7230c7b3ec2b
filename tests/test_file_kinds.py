"""Files of the wrong kind, named for what they are: text or a .npy given as weights, data or a checkpoint;
a training checkpoint given as weights (with the way to use it); bytes that are not ONNX given to
`cnnc import`; a directory given to `cnnc viz maps --input`. Each is checked by the message a user sees.

Runs use TINY (4 filters, 8x8 digits) on the NumPy backend: a 1-epoch run takes well under a second.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.fileio import describe_contents

from cli_runner import run_cli

from conftest import TINY

QUICK = ["--data", "digits", "--backend", "numpy"]


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> str:
    """tiny.cnn and a text file notes.txt in the current directory (a fresh one)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.cnn").write_text(TINY)
    (tmp_path / "notes.txt").write_text("hello, these are notes\n")
    return "tiny.cnn"


# ---- a file that is not a .npz ------------------------------------------------------------------
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


# ---- a checkpoint given as weights ----------------------------------------------------------------
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


# ---- cnnc import of a file that is not ONNX --------------------------------------------------------
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


# ---- viz maps --input DIR ----------------------------------------------------------------------------
def test_viz_maps_input_directory_is_named_as_a_directory(tiny):
    cnnc.load(tiny, backend="numpy").save("w.npz")
    Path("inputs").mkdir()
    status, _, stderr = run_cli("viz", "maps", tiny, "--weights", "w.npz", "--input", "inputs", "-o", "m.png")
    assert status == 1
    assert stderr.strip() == "error: inputs: is a directory; --input takes one image or .npy file"
