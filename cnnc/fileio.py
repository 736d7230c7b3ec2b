"""Files that matter are written to a temporary name beside the target and renamed into place,
so a crash or Ctrl-C never leaves a half-written checkpoint, weights file, cache entry or download."""
from __future__ import annotations

import contextlib
import os
import stat
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
    except (FileExistsError, NotADirectoryError):
        blocker = next(p for p in (target.parent, *target.parent.parents) if p.exists())
        raise CnncError(f"{target}: {blocker} is a file, not a directory") from None
    except OSError as e:
        raise CnncError(f"{target}: cannot create its directory {target.parent} ({e.strerror})") from None
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise CnncError(f"{target}: cannot write in {target.parent} (permission denied)")


def check_distinct(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | None]) -> None:
    """Fail early, as a CnncError, if an output would overwrite an input or another output of the same
    command. outputs, inputs: {what it is (for the message): path or None}."""
    seen: list[tuple[str, str]] = []
    for what, path in inputs.items():
        if path:
            seen.append((what, os.path.realpath(path)))
    for what, path in outputs.items():
        if not path:
            continue
        real = os.path.realpath(path)
        for other, other_real in seen:
            if real == other_real:
                raise CnncError(f"{path}: {what} would overwrite {other} (the same file); choose another name")
        seen.append((what, real))


def cache_home() -> Path:
    """cnnc's cache directory: $CNNC_CACHE_DIR, else $XDG_CACHE_HOME/cnnc, else ~/.cache/cnnc; in it, the
    part only this user can write (see `private_cache_dir`)."""
    configured = os.environ.get("CNNC_CACHE_DIR")
    if configured:
        return private_cache_dir(Path(configured))
    return private_cache_dir(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnc")


def private_cache_dir(base: Path) -> Path:
    """Where this user's cache lives under the cache directory `base`. The cache holds native modules and
    pickles, which run code when loaded, so cnnc reads only a directory that no other user can write:
    `base` itself when this user owns it and neither its group nor others may write it (or it does not
    exist yet: it is then created 0700), else `base/user-<uid>` (created 0700). So users who share a
    cache directory each get their own subdirectory and never read, replace or delete each other's files.
    A `user-<uid>` that is not such a directory (another user made it, or it is a symbolic link) is not
    used: a warning, and this process caches in a temporary directory of its own instead. A `base` that
    cannot be used at all (a file, unwritable) is returned as it is, for the writer to report."""
    if not hasattr(os, "getuid"):
        return base
    uid = os.getuid()
    try:
        st = os.stat(base)
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            base.parent.mkdir(parents=True, exist_ok=True)
            base.mkdir(mode=0o700)
        return base
    except OSError:
        return base
    if not stat.S_ISDIR(st.st_mode) or (st.st_uid == uid and not st.st_mode & 0o022):
        return base
    own = base / f"user-{uid}"
    try:
        own.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError:
        return own  # base cannot be written: the writer says so, naming this directory
    st = os.lstat(own)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022:
        return own
    return _fallback_cache_dir(own, st)


_FALLBACK: list[Path] = []  # this process's temporary cache, once made


def _fallback_cache_dir(refused: Path, st: os.stat_result) -> Path:
    if not _FALLBACK:
        import atexit
        import shutil
        import warnings

        why = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory" if not stat.S_ISDIR(st.st_mode)
               else f"owned by uid {st.st_uid}" if st.st_uid != os.getuid() else "writable by other users")
        _FALLBACK.append(Path(tempfile.mkdtemp(prefix="cnnc-cache-")))
        atexit.register(shutil.rmtree, _FALLBACK[0], ignore_errors=True)
        warnings.warn(f"cnnc: the cache directory {refused} is {why}; it is not used (this process caches in a "
                      f"temporary directory). Remove it, or set CNNC_CACHE_DIR to a directory of your own",
                      stacklevel=3)
    return _FALLBACK[0]


def make_room(folder: Path, pattern: str, incoming: int, max_entries: int, max_bytes: int) -> None:
    """Delete the least recently used files matching `pattern` in `folder` (oldest mtime first; a reader
    touches what it uses) until one more file of `incoming` bytes keeps it within both limits."""
    entries = []
    for path in folder.glob(pattern) if folder.is_dir() else ():
        with contextlib.suppress(OSError):
            st = path.stat()
            entries.append((st.st_mtime_ns, st.st_size, path))
    entries.sort()
    total = incoming + sum(size for _, size, _ in entries)
    while entries and (len(entries) >= max_entries or total > max_bytes):
        _, size, oldest = entries.pop(0)
        with contextlib.suppress(FileNotFoundError):
            oldest.unlink()
        total -= size


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


# ---- what a file holds, for error messages ---------------------------------------------------------
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (a .npz is one), an empty one
NPY_MAGIC = b"\x93NUMPY"
MAGIC = ((NPY_MAGIC, "a NumPy .npy file holding one array"),
         (ZIP_MAGIC[0], "a zip archive"), (ZIP_MAGIC[1], "an empty zip archive"),
         (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"))


def describe_contents(path: str | os.PathLike) -> str:
    """What the file at `path` looks like from its first bytes, for a message saying it is the wrong kind:
    "an empty file", "a NumPy .npy file holding one array", "a zip archive", "text beginning 'hello'", or
    "binary data beginning 08 07 ff"."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "an empty file"
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    text = _utf8_prefix(head)
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        shown = " ".join(text.split())
        return f"text beginning {shown[:24]!r}" if shown else "a file of blank text"
    return "binary data beginning " + " ".join(f"{b:02x}" for b in head[:8])


def _utf8_prefix(head: bytes) -> str | None:
    """head as UTF-8, forgiving only a character cut off at its end; None if it is not UTF-8."""
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as e:
        return head[:e.start].decode("utf-8") if e.start >= len(head) - 3 and e.start > 0 else None


def is_zip(path: str | os.PathLike) -> bool:
    """True if the file starts like a zip archive (a .npz is one)."""
    with open(path, "rb") as f:
        return f.read(4) in ZIP_MAGIC


def is_numpy_file(path: str | os.PathLike) -> bool:
    """True if the file starts like a .npz (a zip archive) or a .npy array."""
    with open(path, "rb") as f:
        return f.read(6).startswith((*ZIP_MAGIC, NPY_MAGIC))
