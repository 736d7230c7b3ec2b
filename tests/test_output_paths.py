"""Where cnnc writes (issue 18, items 2 and 3): outputs never replace devices, FIFOs or inputs.

The rules (docs/security.md): a file is replaced atomically (temporary name, then rename) only when it is a
regular file or does not exist; a character device or FIFO is written through; a symlink is followed and
its target written; an output that is one of the command's inputs is refused; `cnnc export --format c`
writes only into an empty folder or one holding nothing but an earlier export's files (unless --force).
"""
from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from cnnc.diagnostics import CnncError
from cnnc.fileio import EXPORT_MARKER, atomic_write_text, write_owned_folder

from cli_runner import run_cli

from conftest import SPECS, TINY


# ---- item 2: devices, FIFOs and symlinks -----------------------------------------------------------------
@pytest.fixture
def char_device(tmp_path) -> Path:
    """A character device of our own (the null device's numbers), made with mknod: root only."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    node = tmp_path / "null-device"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.stat("/dev/null").st_rdev)
    except OSError as e:
        pytest.skip(f"mknod is not permitted here ({e.strerror})")
    return node


def test_weights_written_to_a_character_device_leave_it_a_device(tiny, char_device):
    rdev = char_device.lstat().st_rdev
    status, out, err = run_cli("train", tiny, "--data", "digits", "--backend", "numpy", "--epochs", "1", "-q",
                               "-o", char_device)
    assert status == 0, err
    assert f"weights written to {char_device}" in out
    assert stat.S_ISCHR(char_device.lstat().st_mode) and char_device.lstat().st_rdev == rdev
    assert not [name for name in os.listdir(char_device.parent) if name.startswith(".null-device")]


def test_a_log_on_a_character_device_is_written_through(tiny, char_device, tmp_path):
    status, _, err = run_cli("train", tiny, "--data", "digits", "--backend", "numpy", "--epochs", "1", "-q",
                             "-o", tmp_path / "w.npz", "--log", char_device)
    assert status == 0, err
    assert stat.S_ISCHR(char_device.lstat().st_mode)
    assert (tmp_path / "w.npz").is_file()


def test_a_fifo_output_is_written_through_to_its_reader(tmp_path):
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    atomic_write_text(fifo, '{"epoch": 1}\n')
    reader.join(timeout=30)
    assert received == [b'{"epoch": 1}\n']
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_a_symlink_output_writes_its_target_and_stays_a_symlink(tiny, tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "report.html"
    target.write_text("old")
    link = tmp_path / "report.html"
    link.symlink_to(target)
    pytest.importorskip("matplotlib")
    status, _, err = run_cli("check", tiny, "--html", link)
    assert status == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("<!DOCTYPE html>")


def test_a_symlink_to_the_spec_is_refused_as_an_output(tiny, tmp_path):
    link = tmp_path / "report.html"
    link.symlink_to(tiny)
    status, _, err = run_cli("check", tiny, "--html", link)
    assert status == 1 and "Traceback" not in err
    assert f"{link}: the HTML report (--html) would overwrite the spec {tiny}" in err
    assert tiny.read_text() == TINY


def test_a_socket_output_is_refused(tmp_path):
    import socket

    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(CnncError, match=r"s.sock: is a socket; cnnc writes regular files, character devices and FIFOs"):
            atomic_write_text(path, "x")
        assert stat.S_ISSOCK(path.lstat().st_mode)


# ---- item 3: outputs never overwrite inputs --------------------------------------------------------------
def test_check_html_onto_the_spec_is_refused(tiny):
    status, out, err = run_cli("check", tiny, "--html", tiny)
    assert status == 1 and "Traceback" not in err
    assert err.strip() == f"error: {tiny}: the HTML report (--html) would overwrite the spec {tiny} (the same file); choose another name"
    assert tiny.read_text() == TINY


def test_check_html_onto_a_hard_link_of_the_spec_is_refused(tiny, tmp_path):
    os.link(tiny, tmp_path / "alias.html")
    status, _, err = run_cli("check", tiny, "--html", tmp_path / "alias.html")
    assert status == 1 and "would overwrite the spec" in err
    assert tiny.read_text() == TINY


def test_compile_of_a_manifest_named_spec_into_its_own_folder_is_refused(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    spec = folder / "manifest.json"
    spec.write_text(TINY)
    status, _, err = run_cli("compile", spec, "-o", folder, "--emit-c")
    assert status == 1 and "Traceback" not in err
    assert err.strip() == f"error: {spec}: the manifest would overwrite the spec (the same file); choose another name"
    assert spec.read_text() == TINY and sorted(os.listdir(folder)) == ["manifest.json"]


def test_compile_of_a_spec_named_like_the_c_file_is_refused(tmp_path):
    spec = tmp_path / "tiny.c"
    spec.write_text(TINY)
    status, _, err = run_cli("compile", spec, "-o", tmp_path, "--emit-c")
    assert status == 1 and f"{spec}: the C file would overwrite the spec (the same file)" in err
    assert spec.read_text() == TINY


def test_compile_into_the_spec_folder_still_works(tmp_path):
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    status, _, err = run_cli("compile", spec, "-o", tmp_path, "--emit-c")
    assert status == 0, err
    assert spec.read_text() == TINY and (tmp_path / "tiny.c").is_file()


def test_draw_onto_the_spec_is_refused(tmp_path):
    spec = tmp_path / "net.png"  # a spec may be called anything
    spec.write_text(TINY)
    status, _, err = run_cli("draw", spec, "-o", spec)
    assert status == 1 and f"{spec}: the image (-o) would overwrite the spec" in err
    assert spec.read_text() == TINY


# ---- item 3: the export folder ------------------------------------------------------------------------------
def export(tiny, out, *extra):
    return run_cli("export", tiny, "--weights", "tiny.npz", "--format", "c", "-o", out, *extra)


def test_export_into_a_folder_of_the_users_files_is_refused(tiny, tmp_path):
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "main.c").write_text("int main(void) { return 42; }\n")
    (out / "Makefile").write_text("all:\n\techo mine\n")
    status, _, err = export(tiny, out)
    assert status == 1 and "Traceback" not in err
    assert err.strip() == (f"error: {out}: the folder holds files cnnc export did not write (Makefile, main.c); choose "
                           f"an empty or new folder, or pass --force to overwrite them")
    assert (out / "main.c").read_text() == "int main(void) { return 42; }\n"
    assert sorted(os.listdir(out)) == ["Makefile", "main.c"]


def test_export_with_force_overwrites(tiny, tmp_path):
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "main.c").write_text("mine")
    status, _, err = export(tiny, out, "--force")
    assert status == 0, err
    assert export(tiny, tmp_path / "fresh")[0] == 0
    assert (out / "main.c").read_text() == (tmp_path / "fresh" / "main.c").read_text()  # the user's main.c is replaced


def test_export_again_over_its_own_files_and_build_products_is_allowed(tiny, tmp_path):
    out = tmp_path / "deploy"
    assert export(tiny, out)[0] == 0
    marker = json.loads((out / EXPORT_MARKER).read_text())
    kernels = sorted(p.relative_to(out).as_posix() for p in (out / "kernels").iterdir())
    assert kernels and all(name.endswith(".h") for name in kernels)  # the kernel library's headers it calls
    assert marker == {"written_by": "cnnc export",
                      "files": sorted(["Makefile", "main.c", "tiny", "tiny.c", "tiny.h", "tiny_external", *kernels])}
    (out / "tiny").write_bytes(b"\x7fELF built by make")  # what `make` leaves behind
    status, _, err = export(tiny, out)
    assert status == 0, err
    (out / "notes.txt").write_text("mine")
    status, _, err = export(tiny, out)
    assert status == 1 and "(notes.txt)" in err
    (out / "notes.txt").unlink()
    (out / "kernels" / "mine.h").write_text("mine")  # a user's file inside the export's own subfolder
    status, _, err = export(tiny, out)
    assert status == 1 and "(kernels/mine.h)" in err


def test_a_forged_marker_does_not_make_foreign_files_owned(tiny, tmp_path):
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "main.c").write_text("mine")
    (out / EXPORT_MARKER).write_text("[" * 100_000)
    status, _, err = export(tiny, out)
    assert status == 1 and "(main.c)" in err and "Traceback" not in err
    assert (out / "main.c").read_text() == "mine"


@pytest.mark.parametrize("name", ["makefile", "Makefile", "GNUmakefile", "MAKEFILE"])
def test_prefixes_that_make_would_read_as_its_makefile_are_refused(tiny, tmp_path, name):
    status, _, err = export(tiny, tmp_path / "deploy", "--name", name)
    assert status == 1 and "Traceback" not in err
    assert f"the name {name!r} is not usable: building the export makes the program ./{name}" in err
    assert "--name PREFIX" in err and not (tmp_path / "deploy").exists()


def test_write_owned_folder_refuses_a_product_named_like_a_written_file(tmp_path):
    with pytest.raises(CnncError, match="the name 'MAIN.C' is not usable: .* clash with the file main.c"):
        write_owned_folder(tmp_path / "x", {"main.c": ""}, products=("MAIN.C",))
    assert not (tmp_path / "x").exists()


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
