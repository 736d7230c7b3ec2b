"""Files that matter are written to a temporary name beside the target and renamed into place,
so a crash or Ctrl-C never leaves a half-written checkpoint, weights file, cache entry or download."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .diagnostics import CnncError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path in the target's directory; on success rename it onto `path`.

    with atomic_path("w.npz", suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    """
    target = Path(path)
    check_writable(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    except OSError as e:
        raise CnncError(f"{target}: cannot write ({e.strerror})") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the mode open() would
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, as a CnncError naming the file, if `path` cannot be written: it is a directory, or its
    directory cannot be made or written. Commands call this before long work whose result goes there."""
    target = Path(path)
    if target.is_dir():
        raise CnncError(f"{target}: is a directory; give a file name to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnncError(f"{target}: cannot create its directory {target.parent} ({e.strerror})") from None
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise CnncError(f"{target}: cannot write in {target.parent} (permission denied)")


def cache_home() -> Path:
    """cnnc's cache directory: $CNNC_CACHE_DIR, else $XDG_CACHE_HOME/cnnc, else ~/.cache/cnnc."""
    configured = os.environ.get("CNNC_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnc"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())
