"""A C build interrupted or killed (issue 18, item 8): Ctrl-C, twice in a row, stops `cnnc compile` with
"cnnc: interrupted" and exit 130, its compilers killed and its staging directory removed; a Ctrl-C after
the command has finished is ignored; a build whose process was killed by SIGKILL (no cleanup runs)
leaves compilers running and a `.build-*` directory, which the next build reaps, killing the compilers.

The compiler is a wrapper that sleeps before compiling (`-c`), so the tests catch a build mid-compile."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cnnc.backends import c_build

pytestmark = pytest.mark.skipif(not Path("/proc/self/cwd").exists() or sys.platform != "linux",
                                reason="finds the compilers through /proc")

SPEC = "model slow {{\n  input x[2, 9]\n  conv1d c(filters={filters}, kernel=3, padding=1)\n  loss mse\n}}\n"


@pytest.fixture
def slow_cc(tmp_path) -> Path:
    """A C compiler that sleeps a minute before each compile (not before --version, probes or the link)."""
    path = tmp_path / "slowcc"
    path.write_text('#!/bin/sh\ncase " $* " in *" -c "*) sleep 60 ;; esac\nexec gcc "$@"\n')
    path.chmod(0o755)
    return path


def write_spec(folder: Path, filters: int) -> Path:
    path = folder / f"slow{filters}.cnn"
    path.write_text(SPEC.format(filters=filters))
    return path


def processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is `directory` or inside it (zombies have none)."""
    target, found = os.path.realpath(directory), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == target or cwd.startswith(target + os.sep):
                found.append(int(entry.name))
    return found


def start_compile(spec: Path, cache: Path, out: Path, cc: Path | None) -> subprocess.Popen:
    env = {**os.environ, "CNNC_CACHE_DIR": str(cache)}
    env.pop("CC", None)
    if cc is not None:
        env["CC"] = str(cc)
    return subprocess.Popen([sys.executable, "-m", "cnnc.cli", "compile", str(spec), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_compilers(cache: Path, child: subprocess.Popen) -> Path:
    """The staging directory of the child's build, once compilers are running in it."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()
        builds = list((cache / "c").glob(".build-*")) if (cache / "c").is_dir() else []
        if builds and processes_in(builds[0]):
            return builds[0]
        time.sleep(0.05)
    child.kill()
    raise AssertionError("the build never started its compilers")


def wait_until_gone(pids: list[int], seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if Path(f"/proc/{pid}/cwd").exists() and _not_zombie(pid)]
    return alive


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_build_killed_by_sigkill_is_reaped_by_the_next_build(tmp_path, slow_cc):
    cache = tmp_path / "cache"
    child = start_compile(write_spec(tmp_path, 3), cache, tmp_path / "out", slow_cc)
    staging = wait_for_compilers(cache, child)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    time.sleep(0.5)
    leftovers = processes_in(staging)
    assert staging.is_dir() and leftovers  # what SIGKILL leaves: the directory, and compilers still running

    after = start_compile(write_spec(tmp_path, 4), cache, tmp_path / "out4", None)  # the next build (a miss)
    out, err = after.communicate(timeout=600)
    assert after.returncode == 0, err
    assert "Traceback" not in err
    assert not staging.exists()
    assert wait_until_gone(leftovers) == []
    assert [p.name for p in (cache / "c").iterdir() if p.name.startswith(".")] == []


def test_two_quick_ctrl_c_stop_the_build_with_a_message_and_clean_up(tmp_path, slow_cc):
    cache = tmp_path / "cache"
    child = start_compile(write_spec(tmp_path, 5), cache, tmp_path / "out", slow_cc)
    staging = wait_for_compilers(cache, child)
    compilers = processes_in(staging)
    child.send_signal(signal.SIGINT)
    child.send_signal(signal.SIGINT)
    time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130
    assert err == "cnnc: interrupted\n"
    assert not staging.exists() and not (tmp_path / "out" / "manifest.json").exists()
    assert wait_until_gone(compilers) == []
    assert [p.name for p in (cache / "c").iterdir()] == []


def test_a_ctrl_c_after_the_command_finished_is_ignored(tmp_path):
    spec = tmp_path / "ok.cnn"
    spec.write_text("model ok {\n  input x[4]\n  dense d(units=2)\n  loss mse\n}\n")
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from cnnc.cli import main
        sys.argv = ["cnnc", "check", {str(spec)!r}]
        status = main()
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while Python exits
        time.sleep(0.2)
        sys.exit(status)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
    assert "model ok" in result.stdout


def test_main_called_in_process_gives_back_the_callers_ctrl_c_handler(tmp_path, capsys):
    from cnnc.cli import main

    spec = tmp_path / "ok.cnn"
    spec.write_text("model ok {\n  input x[4]\n  dense d(units=2)\n  loss mse\n}\n")
    before = signal.getsignal(signal.SIGINT)
    assert main(["check", str(spec)]) == 0
    assert signal.getsignal(signal.SIGINT) is before


# ---- which staging directories a build reaps ----------------------------------------------------------------
def test_a_staging_directory_whose_lock_is_held_is_a_build_in_progress_and_is_kept(tmp_path):
    root = tmp_path / "c"
    live = root / ".build-live-1"
    live.mkdir(parents=True)
    lock = c_build.hold_build_lock(live)
    dead = root / ".build-dead-1"
    dead.mkdir()
    os.close(c_build.hold_build_lock(dead))  # its process ended without removing it
    young = root / ".build-young-1"  # no lock file yet: just made
    young.mkdir()
    old = root / ".build-old-1"  # no lock file, older than any build can take (an older cnnc's)
    old.mkdir()
    stamp = time.time() - c_build.STALE_SECONDS - 60
    os.utime(old, (stamp, stamp))
    (root / ".trash-x-1").mkdir()
    try:
        c_build.sweep_leftovers(root)
        assert sorted(p.name for p in root.iterdir()) == [".build-live-1", ".build-young-1"]
    finally:
        os.close(lock)
    c_build.sweep_leftovers(root)
    assert sorted(p.name for p in root.iterdir()) == [".build-young-1"]


def test_a_sweep_at_the_moment_a_build_takes_its_lock_does_not_reap_that_build(tmp_path, monkeypatch):
    # Two builds in one process (the test suite builds float32 and float64 modules in two threads): one
    # sweeps while the other is between creating its lock file and locking it. The sweep must not find
    # an unlocked lock file there and delete the directory under the build.
    import fcntl

    root = tmp_path / "c"
    staging = root / ".build-racing-1"
    staging.mkdir(parents=True)
    real_flock = fcntl.flock
    seen = []

    def flock_after_a_sweep(fd, operation):
        if not seen:
            seen.append(True)
            c_build.sweep_leftovers(root)  # the other thread's sweep, at the worst moment
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_sweep)
    lock = c_build.hold_build_lock(staging)
    try:
        assert seen and staging.is_dir() and (staging / c_build.BUILD_LOCK).is_file()
        assert not c_build.build_abandoned(staging)
    finally:
        os.close(lock)
