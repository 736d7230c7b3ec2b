"""A cache directory shared by two users (issue 18, item 4). The policy (fileio.private_cache_dir,
docs/c-backend.md "Sharing a cache directory"): cnnc reads and writes only a directory no other user can
write, so users who share CNNC_CACHE_DIR each get their own `user-<uid>` subdirectory and never read,
replace or delete each other's entries.

The two users are root (the test process) and nobody (uid 65534), in children forked from one Python
that has imported everything first: Python's own files are under a directory nobody cannot read here,
so nobody's child cannot start a new interpreter, and its build reads copies of Python's and cffi's
headers made while still root."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest

from cnnc import fileio

NOBODY = 65534
SPEC = "model shared {\n  input x[2, 9]\n  conv1d c(filters=3, kernel=3, padding=1, activation=tanh)\n  loss mse\n}\n"

# Run as root: import everything a load needs, then run each (uid, action) in a forked child that drops to
# that uid (setgroups, setgid, setuid) and reports JSON through a pipe. Python's and cffi's headers are
# copied (or kept in memory) where nobody can read them, for its build.
SCRIPT = textwrap.dedent("""
    import json, os, shutil, sys, sysconfig, traceback
    import numpy as np
    import cffi.cparser, cffi.recompiler, jinja2, jinja2.debug, subprocess, signal, hashlib, importlib.util  # what a build imports
    import encodings.unicode_escape, encodings.latin_1, encodings.ascii  # codecs Jinja and the C build look up
    import cnnc
    from cnnc.backends import c_backend, c_build, c_codegen

    base, spec, headers, steps = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    shutil.copytree(sysconfig.get_paths()["include"], headers, dirs_exist_ok=True)
    os.chmod(headers, 0o755)
    paths = sysconfig.get_paths
    read = cffi.recompiler.Recompiler._rel_readlines  # cffi's own headers, read while root can
    kept = {name: read(None, name) for name in os.listdir(os.path.dirname(cffi.recompiler.__file__)) if name.endswith(".h")}
    cffi.recompiler.Recompiler._rel_readlines = lambda self, name: list(kept[name])
    sysconfig.get_paths = lambda *a, **k: {**paths(*a, **k), "include": headers, "platinclude": headers}
    # one build of another model (another key) as root, in a cache of its own, imports whatever a build
    # and a load import lazily (cffi's backend, the recompiler, Jinja, Lark, subprocess...)
    warm = cnnc.network_from_text(open(spec).read().replace("filters=3", "filters=2"))
    c_backend.compile_networks([warm], "float32", openmp=False, cache_dir=headers + "-warm").model().forward(
        np.zeros((1, 2, 9)))
    x = np.linspace(-1, 1, 36).reshape(2, 2, 9)

    def act(action):
        c_build._LOADED.clear()
        c_build._compiler_version.cache_clear()
        try:
            m = cnnc.load(spec, backend="c", openmp=False)
            return {"ok": True, "compiled": m.module.built.compiled, "entry": str(m.module.built.directory),
                    "y": m.forward(x).tolist()}
        except cnnc.CnncError as e:
            return {"ok": False, "error": str(e)}
        except BaseException:
            return {"ok": False, "traceback": traceback.format_exc()}

    for uid, action in steps:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                if uid != os.getuid():
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)
                result = act(action)
            except BaseException:
                result = {"ok": False, "traceback": traceback.format_exc()}
            os.write(write, json.dumps({"uid": os.getuid(), **result}).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            report = f.read()
        os.waitpid(pid, 0)
        print(report, flush=True)
""")

pytestmark = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                reason="needs root, to run a child as a second user")


@pytest.fixture
def shared():
    """A directory both users can reach: (the world-writable cache directory, the spec, the headers copy)."""
    top = Path(tempfile.mkdtemp(prefix="cnnc-shared-"))
    os.chmod(top, 0o755)
    try:
        spec = top / "shared.cnn"
        spec.write_text(SPEC)
        os.chmod(spec, 0o644)
        yield top, spec
    finally:
        shutil.rmtree(top, ignore_errors=True)


def run_as(base: Path, spec: Path, steps: list[tuple[int, str]]) -> list[dict]:
    env = {**os.environ, "CNNC_CACHE_DIR": str(base)}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(base), str(spec), str(spec.parent / "headers"),
                             json.dumps(steps)], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == len(steps), result.stdout + result.stderr
    for report in reports:
        assert "traceback" not in report, report["traceback"]
    return reports


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `folder`: (owner, mode, contents); what another user must leave alone."""
    return {str(p.relative_to(folder)): (p.stat().st_uid, p.stat().st_mode, p.read_bytes() if p.is_file() else b"")
            for p in sorted(folder.rglob("*"))}


def test_two_users_sharing_a_world_writable_cache_each_build_and_keep_their_own_entries(shared):
    top, spec = shared
    base = top / "cache"
    base.mkdir()
    os.chmod(base, 0o1777)  # like /tmp: anyone may add files, only owners may remove them
    first_root, first_nobody, again_root, again_nobody = run_as(
        base, spec, [(0, "load"), (NOBODY, "load"), (0, "load"), (NOBODY, "load")])
    assert (first_root["uid"], first_nobody["uid"]) == (0, NOBODY)
    assert first_root["ok"] and first_nobody["ok"], (first_root, first_nobody)
    assert first_root["compiled"] and first_nobody["compiled"]  # nobody does not use root's module
    assert Path(first_root["entry"]).parent == base / "user-0" / "c"
    assert Path(first_nobody["entry"]).parent == base / f"user-{NOBODY}" / "c"
    assert first_root["y"] == first_nobody["y"]
    # each finds its own entry the second time: a hit, nothing rebuilt or deleted
    assert again_root["ok"] and not again_root["compiled"] and again_root["entry"] == first_root["entry"]
    assert again_nobody["ok"] and not again_nobody["compiled"] and again_nobody["entry"] == first_nobody["entry"]
    for uid in (0, NOBODY):
        own = base / f"user-{uid}"
        st = own.stat()
        assert st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o700
        assert all(p.stat().st_uid == uid for p in own.rglob("*"))
    assert sorted(p.name for p in base.iterdir()) == ["user-0", f"user-{NOBODY}"]


def test_a_second_user_never_touches_the_entries_of_a_cache_it_does_not_own(shared):
    """root's own cache (root's, 0755, entries 0700, c/ made world-writable): nobody pointed at it is told
    it cannot write there, and root's entries are all still there, unchanged (once a PermissionError
    traceback, or a real deletion where c/ was writable)."""
    top, spec = shared
    base = top / "rootcache"
    [root_first] = run_as(base, spec, [(0, "load")])
    assert root_first["ok"] and Path(root_first["entry"]).parent == base / "c"  # root's own: used directly
    os.chmod(base, 0o755)  # others may look in (cnnc makes a new cache directory 0700)
    os.chmod(base / "c", 0o777)
    before = snapshot(base)
    [nobody, root_again] = run_as(base, spec, [(NOBODY, "load"), (0, "load")])
    assert not nobody["ok"]
    assert nobody["error"].startswith(f"error: cannot write to the C module cache {base / f'user-{NOBODY}' / 'c'}")
    assert "CNNC_CACHE_DIR" in nobody["error"]
    after = snapshot(base)
    assert {k: v for k, v in after.items() if k in before} == before  # (root's second load touches only mtimes)
    assert set(after) == set(before)
    assert root_again["ok"] and not root_again["compiled"] and root_again["entry"] == root_first["entry"]


def test_a_user_directory_planted_by_another_user_is_not_used(tmp_path, monkeypatch):
    base = tmp_path / "shared"
    base.mkdir()
    os.chmod(base, 0o1777)
    planted = base / f"user-{os.getuid()}"
    (planted / "c").mkdir(parents=True)
    os.chown(planted, NOBODY, NOBODY)
    monkeypatch.setattr(fileio, "_FALLBACK", [])
    with pytest.warns(UserWarning, match=rf"{planted} is owned by uid {NOBODY}; it is not used"):
        chosen = fileio.private_cache_dir(base)
    assert chosen != planted and chosen.is_dir() and stat.S_IMODE(chosen.stat().st_mode) == 0o700
    assert not str(chosen).startswith(str(base))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert fileio.private_cache_dir(base) == chosen


def test_a_symbolic_link_in_place_of_the_user_directory_is_not_followed(tmp_path, monkeypatch):
    base, elsewhere = tmp_path / "shared", tmp_path / "mine"
    base.mkdir()
    elsewhere.mkdir(mode=0o700)
    os.chmod(base, 0o777)
    (base / f"user-{os.getuid()}").symlink_to(elsewhere)
    monkeypatch.setattr(fileio, "_FALLBACK", [])
    with pytest.warns(UserWarning, match="is a symbolic link"):
        chosen = fileio.private_cache_dir(base)
    assert chosen not in (base / f"user-{os.getuid()}", elsewhere)


def test_a_private_cache_is_used_as_it_is_and_a_new_one_is_made_private(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    assert fileio.private_cache_dir(mine) == mine
    new = tmp_path / "a" / "new"
    assert fileio.private_cache_dir(new) == new and stat.S_IMODE(new.stat().st_mode) == 0o700
    os.chmod(mine, 0o775)  # group-writable: shared with the group, so a subdirectory
    assert fileio.private_cache_dir(mine) == mine / f"user-{os.getuid()}"
    assert stat.S_IMODE((mine / f"user-{os.getuid()}").stat().st_mode) == 0o700
