"""Atomic writes: a failure while writing never leaves a half file or replaces the old one."""
import os

import pytest

from cnnc.fileio import atomic_path, atomic_write_text


def test_atomic_write_replaces_the_target(tmp_path):
    target = tmp_path / "sub" / "weights.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert os.listdir(target.parent) == ["weights.txt"]


def test_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "ckpt.npz"
    target.write_text("good checkpoint")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "good checkpoint"
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_written_files_get_the_mode_a_plain_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "w.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "w.txt").stat().st_mode & 0o777 == 0o644
