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
