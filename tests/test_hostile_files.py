"""Hostile input files (issue 18, items 7, 9, 10, 14, 16, 18 and 19): every file cnnc reads may be crafted.

Each test makes the hostile file itself (a FIFO, an .npy header declaring 10^13 floats, a PNG header
declaring 20000 x 20000 pixels, IDX dimensions whose product wraps to 0, ...) and checks the exact
outcome: exit status 1, a message naming the file and what is wrong, no traceback, no hang.
"""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import cnnc
import cnnc.model
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.datasets import load_dataset, read_idx
from cnnc.diagnostics import CnncError
from cnnc.frontend import MAX_SPEC_BYTES

from cli_runner import run_cli
from conftest import TINY


def run_process(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI in a child process, for inputs that could block a reader (the timeout is the hang check)."""
    return subprocess.run([sys.executable, "-m", "cnnc.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def npy_bytes_declaring(shape, descr: str = "<f4", data: bytes = b"\0" * 16) -> bytes:
    """An .npy file whose header declares `shape` but which holds only `data`."""
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return f.getvalue() + data


def npz_with(path: Path, members: dict[str, bytes | np.ndarray]) -> Path:
    """A .npz (a zip of .npy members) holding real arrays and crafted member bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                f = io.BytesIO()
                np.lib.format.write_array(f, value)
                value = f.getvalue()
            archive.writestr(f"{name}.npy", value)
    return path


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header declares width x height grey pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def assert_clean_error(status: int, err: str, *fragments: str) -> None:
    assert status == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


# ---- item 7: non-regular files where a file is expected ---------------------------------------------------
def test_check_refuses_character_devices_at_once():
    for device in ("/dev/zero", "/dev/urandom"):
        done = run_process("check", device, timeout=60)
        assert_clean_error(done.returncode, done.stderr, f"{device}: is a character device, expected a .cnn file")


def test_a_fifo_as_weights_or_spec_or_data_is_refused_without_blocking(tiny, tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    for args in (["eval", tiny, "--weights", fifo, "--data", "digits", "--backend", "numpy"],
                 ["check", fifo],
                 ["predict", tiny, "--weights", "tiny.npz", "--backend", "numpy", fifo],
                 ["train", tiny, "--data", fifo, "--backend", "numpy", "--epochs", "1"]):
        done = run_process(*args, timeout=60)  # a blocking open() would hang here until the timeout
        assert_clean_error(done.returncode, done.stderr, f"{fifo}: is a FIFO (named pipe)")


def test_a_spec_over_the_size_cap_is_refused_with_the_cap(tmp_path):
    spec = tmp_path / "huge.cnn"
    spec.write_text(TINY + "#" * MAX_SPEC_BYTES)
    status, _, err = run_cli("check", spec)
    assert_clean_error(status, err, f"{spec}: {spec.stat().st_size:,} bytes, more than the {MAX_SPEC_BYTES:,}")
    with pytest.raises(CnncError, match="more than the 4,194,304 cnnc reads as a .cnn file"):
        cnnc.read_network(spec)


# ---- item 9: headers declaring huge arrays, and huge valid models -----------------------------------------
def test_an_npy_input_declaring_1e13_floats_is_refused_before_reading(tiny, tmp_path):
    bomb = tmp_path / "bomb.npy"
    bomb.write_bytes(npy_bytes_declaring((10**13,)))
    status, out, err = run_cli("predict", tiny, "--weights", "tiny.npz", "--backend", "numpy", bomb)
    assert_clean_error(status, err, f"{bomb}: its header declares shape (10000000000000) of float32, "
                                    "40,000,000,000,000 bytes, but the file holds only 16 bytes")
    assert out == ""


def test_a_weights_member_declaring_a_huge_shape_is_refused_even_when_unused(tiny, tmp_path):
    arrays = {k: np.asarray(v) for k, v in np.load("tiny.npz").items()}
    weights = npz_with(tmp_path / "w.npz", {**arrays, "unused": npy_bytes_declaring((100000, 100000, 1000))})
    status, _, err = run_cli("eval", tiny, "--weights", weights, "--data", "digits", "--backend", "numpy")
    assert_clean_error(status, err, f"weights file {weights}: array 'unused': its header declares shape "
                                    "(100000x100000x1000) of float32")


def test_a_data_member_declaring_a_huge_shape_is_refused(tiny, tmp_path):
    real = {"y_train": np.zeros(4, np.int64), "x_test": np.zeros((4, 8, 8), np.float32), "y_test": np.zeros(4, np.int64)}
    data = npz_with(tmp_path / "data.npz", {**real, "x_train": npy_bytes_declaring((10**6, 10**6), "<f8")})
    status, _, err = run_cli("train", tiny, "--data", data, "--backend", "numpy", "--epochs", "1")
    assert_clean_error(status, err, f"{data}: array 'x_train': its header declares shape (1000000x1000000) of float64")
    assert not (tmp_path / "tiny.weights.npz").exists()


def test_a_header_declaring_more_than_memory_is_refused_even_when_the_zip_claims_the_bytes(tmp_path, monkeypatch):
    """A deflated member whose zip entry claims the declared size: the memory check catches it."""
    monkeypatch.setattr(cnnc.fileio, "available_memory", lambda: 1 << 20)
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.npy", npy_bytes_declaring((1 << 20,), data=b"\0" * (4 << 20)))  # 4 MB of zeros, honest
    with pytest.raises(CnncError, match=r"array 'big': its header declares shape \(1048576\) of float32, 4,194,304 "
                                        r"bytes \(4.0 MB\), more than the 1.0 MB of memory available"):
        cnnc.fileio.load_npz_checked(path)


HUGE = """
model huge {
    input image[1, 1000, 2000]
    flatten
    dense out(units=1000)            # a weight of 2,000,000,000 values
    loss cross_entropy
}
"""
HUGE_MESSAGE = "model 'huge': its largest tensor 'out.weight' of shape (1000, 2000000) holds 2,000,000,000 values"


@pytest.fixture
def huge(tmp_path, monkeypatch) -> Path:
    """A valid spec with 2e9-element weights, on a machine said to have 4 GB free."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cnnc.model, "available_memory", lambda: 4 << 30)
    spec = tmp_path / "huge.cnn"
    spec.write_text(HUGE)
    return spec


def test_loading_a_model_too_big_for_memory_names_the_tensor_and_its_size(huge):
    with pytest.raises(CnncError) as caught:
        cnnc.load(huge)
    assert str(caught.value) == (f"error: {HUGE_MESSAGE} (7.5 GB as float32); its 2,000,001,000 parameters and their gradients need "
                                 "14.9 GB, more than the 4.0 GB of memory available")


@pytest.mark.parametrize("command", [["train", "--data", "digits", "--backend", "numpy", "--epochs", "1"],
                                     ["gradcheck", "--backend", "numpy"]])
def test_train_and_gradcheck_on_a_model_too_big_for_memory_are_clear_errors(huge, command):
    status, _, err = run_cli(command[0], huge, *command[1:])
    assert_clean_error(status, err, HUGE_MESSAGE)


# ---- item 10: decompression bombs --------------------------------------------------------------------------
@pytest.mark.parametrize("size, expected", [
    (20000, "refused as a decompression bomb (Image size (400000000 pixels) exceeds limit"),   # Pillow refuses it
    (10000, "the image declares 10,000 x 10,000 pixels, more than the 67,108,864 cnnc reads"),  # under Pillow's limit
])
def test_a_png_declaring_a_huge_image_is_refused_by_predict_and_viz_maps(tiny, tmp_path, size, expected):
    pytest.importorskip("PIL")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(size, size))
    assert len(bomb.read_bytes()) < 300
    status, out, err = run_cli("predict", tiny, "--weights", "tiny.npz", "--backend", "numpy", bomb)
    assert_clean_error(status, err, f"{bomb}: {expected}")
    assert out == ""
    pytest.importorskip("matplotlib")
    status, _, err = run_cli("viz", "maps", tiny, "--weights", "tiny.npz", "--input", bomb, "-o", "maps.png")
    assert_clean_error(status, err, f"{bomb}: {expected}")
    assert not (tmp_path / "maps.png").exists()


# ---- item 14: deeply nested JSON in a metrics log ----------------------------------------------------------
def test_viz_curves_on_a_deeply_nested_log_line_names_the_file_and_line(tmp_path):
    pytest.importorskip("matplotlib")
    log = tmp_path / "m.jsonl"
    log.write_text('{"epoch": 1, "train_loss": 1.0}\n' + "[" * 200_000 + "]" * 200_000 + "\n")
    status, _, err = run_cli("viz", "curves", log, "-o", tmp_path / "c.png")
    assert_clean_error(status, err, f"{log}:2: JSON nested too deeply to read")
    assert not (tmp_path / "c.png").exists()


# ---- item 16: values that do not fit float32, and NaN never printed -----------------------------------------
def test_weights_beyond_float32_are_refused_by_eval_predict_and_export(tiny, tmp_path):
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in np.load("tiny.npz").items()}
    arrays["c1.weight"][0, 0, 0, 0] = 1e300
    np.savez(tmp_path / "big.npz", **arrays)
    expected = "'c1.weight' holds 1e+300, beyond the float32 range of the model (largest 3.4e+38)"
    for args in (["eval", tiny, "--weights", "big.npz", "--data", "digits", "--backend", "numpy"],
                 ["predict", tiny, "--weights", "big.npz", "--backend", "numpy", "x.npy"],
                 ["export", tiny, "--weights", "big.npz", "--format", "onnx", "-o", "m.onnx"]):
        np.save(tmp_path / "x.npy", np.zeros((1, 8, 8), np.float32))
        status, out, err = run_cli(*args)
        assert_clean_error(status, err, f"weights file big.npz does not fit model 'tiny'", expected)
        assert "nan" not in out.lower()
    assert not (tmp_path / "m.onnx").exists()
    assert cnnc.load(tiny, dtype="float64").load_weights(tmp_path / "big.npz") is None  # float64 holds it


def test_inputs_of_3e38_give_an_error_not_nan_probabilities(tiny, tmp_path):
    np.save(tmp_path / "loud.npy", np.full((2, 1, 8, 8), 3e38, np.float32))
    status, out, err = run_cli("predict", tiny, "--weights", "tiny.npz", "--backend", "numpy", "loud.npy")
    assert_clean_error(status, err, "loud.npy[0]: the network's outputs for this input are not finite",
                       "largest magnitude 3e+38")
    assert "nan" not in out.lower()


def test_eval_on_data_of_3e38_gives_an_error_not_a_nan_accuracy(tiny, tmp_path):
    x = np.full((3, 1, 8, 8), 3e38, np.float32)
    np.savez(tmp_path / "loud.npz", x_train=x, y_train=np.arange(3), x_test=x, y_test=np.arange(3))
    status, out, err = run_cli("eval", tiny, "--weights", "tiny.npz", "--data", "loud.npz", "--backend", "numpy")
    assert_clean_error(status, err, "the network's outputs are not finite (inf or NaN) for sample 0 of 3")
    assert "nan" not in out.lower()


# ---- item 18: messages that name the file and say what is wrong --------------------------------------------
def test_idx_dimensions_whose_product_wraps_to_zero_name_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", 2**31, 2**31, 4))  # 2^64 bytes, no data
    with pytest.raises(CnncError) as caught:
        read_idx(path, ndim=3)
    assert str(caught.value) == (f"error: {path}: truncated: the header promises 2,147,483,648 x 2,147,483,648 x 4 = "
                                 "18,446,744,073,709,551,616 bytes of data, the file has 0")


def test_a_label_of_1e30_is_reported_as_it_is(tmp_path):
    x = np.zeros((2, 8, 8), np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0.0, 1e30]), x_test=x, y_test=np.array([0.0, 1.0]))
    with pytest.raises(CnncError, match=r"y_train holds the label 1e\+30; labels are class indices") as caught:
        load_dataset(tmp_path / "d.npz")
    assert "-9223372036854775808" not in str(caught.value)
    model = NumpyModel(cnnc.network_from_text(TINY))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\] for 10 classes; got 1e\+30"):
        model.loss(np.zeros((1, 10), np.float32), np.array([1e30]))


def test_check_and_compile_agree_on_a_stride_of_2_63_minus_1(tmp_path):
    spec = tmp_path / "s.cnn"
    spec.write_text(TINY.replace("kernel=3,", "kernel=3, stride=9223372036854775807,"))
    status, _, err = run_cli("check", spec)
    assert_clean_error(status, err, f"{spec}:4:", "stride must be at most 2^31 - 1 (2,147,483,647); "
                                                  "got 9223372036854775807")
    status, _, err = run_cli("compile", spec, "-o", tmp_path / "out", "--emit-c")
    assert_clean_error(status, err, "stride must be at most 2^31 - 1")
    assert not (tmp_path / "out").exists()


# ---- item 19: one rule for line endings -----------------------------------------------------------------------
@pytest.mark.parametrize("newline", ["\r", "\r\n"])
def test_cr_and_crlf_line_endings_are_accepted_alike_by_the_api_and_the_cli(tmp_path, newline):
    text = TINY.replace("\n", newline)
    spec = tmp_path / "t.cnn"
    spec.write_bytes(text.encode())
    from_api = cnnc.network_from_text(text)
    from_file = cnnc.read_network(spec)
    assert from_api.layers == cnnc.network_from_text(TINY).layers  # the same positions as with LF
    assert [layer.name for layer in from_file.layers] == [layer.name for layer in from_api.layers]
    status, out, err = run_cli("check", spec)
    assert status == 0 and "model tiny" in out, err


def test_an_error_in_a_cr_only_spec_is_located_alike_by_the_api_and_the_cli(tmp_path):
    text = TINY.replace("units=10", "units=0").replace("\n", "\r")
    spec = tmp_path / "t.cnn"
    spec.write_bytes(text.encode())
    with pytest.raises(CnncError) as caught:
        cnnc.network_from_text(text, file=str(spec))
    status, _, err = run_cli("check", spec)
    assert status == 1 and f"{spec}:7:21: error: dense 'out': units must be positive" in err and err.strip() == str(caught.value).strip()


def test_weights_are_checked_against_the_models_shapes_from_their_headers_before_any_is_read(tiny, tmp_path,
                                                                                           monkeypatch):
    arrays = {k: np.asarray(v) for k, v in np.load("tiny.npz").items()}
    weights = npz_with(tmp_path / "w.npz", {**arrays, "c1.weight": npy_bytes_declaring((4, 1, 3, 3000),
                                                                                        data=b"\0" * 144_000),
                                            "extra": np.zeros(3, np.float32)})
    monkeypatch.setattr(cnnc.model, "load_npz_checked", lambda *a, **k: pytest.fail("array data was read"))
    with pytest.raises(ValueError) as caught:
        cnnc.load(tiny).load_weights(weights)
    assert str(caught.value) == (f"weights file {weights} does not fit model 'tiny':\n"
                                 "  unexpected array 'extra' (the model has no such parameter)\n"
                                 "  'c1.weight' has shape (4, 1, 3, 3000); expected (4, 1, 3, 3)")
