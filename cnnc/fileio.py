"""Reading and writing files that cnnc does not trust, and writing files that matter.

Writing: a file is written to a temporary name beside the target and renamed into place, so a crash or
Ctrl-C never leaves a half-written checkpoint, weights file, cache entry or download. The rename is
done only over a regular file or a new path. A character device or a FIFO (-o /dev/null, --log
/dev/stdout, a named pipe) is written through, as a shell redirection would; a symlink is followed and
its target is written (replaced when it is a regular file); anything else (a directory, a socket, a
block device) is refused. See docs/security.md.

Reading: every file cnnc reads may be hostile. `check_input_file` refuses what is not a regular file
(a FIFO would block, /dev/zero never ends); `npy_header` and `npz_headers` read what an array file
declares before any array is read, so a header declaring 10^13 floats is an error, not a MemoryError;
`load_json` turns deeply nested JSON into an error naming the file.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import tokenize
import zipfile
import zlib
from pathlib import Path

from .diagnostics import CnncError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path in the target's directory; on success rename it onto `path`.

    with atomic_path("w.npz", suffix=".npz") as tmp:
        np.savez(tmp, **arrays)

    A symlink is followed (its target is written). When the target is a character device or a FIFO,
    the temporary file is made beside the caller's temporary directory and its bytes are copied into
    the target on success: the device stays a device."""
    target = writing_target(path)
    check_writable(target)
    through = _is_stream(target)
    folder = Path(tempfile.gettempdir()) if through else target.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=folder)
    except OSError as e:
        raise CnncError(f"{target}: cannot write ({e.strerror})") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the mode open() would
    try:
        yield tmp
        if through:
            _copy_into(tmp, target)
            os.unlink(tmp)
        else:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def writing_target(path: str | os.PathLike) -> Path:
    """Where writing `path` lands: the path itself, or for a symlink (also one to a missing file) the
    file it points at. Refuses a target that is neither a regular file, a character device, a FIFO nor
    missing."""
    target = Path(path)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError:
        return target  # the writer's own error names it
    if stat.S_ISDIR(mode):
        raise CnncError(f"{path}: is a directory; give a file name to write")
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        raise CnncError(f"{path}: is {_kind(mode)}; cnnc writes regular files, character devices and FIFOs only")
    return target


def _is_stream(target: Path) -> bool:
    """True for a character device or a FIFO: written through, never replaced."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _copy_into(source: str, target: Path) -> None:
    """Write the bytes of `source` into the device or FIFO `target` (opening a FIFO waits for a reader)."""
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    except OSError as e:
        raise CnncError(f"{target}: cannot write ({e.strerror or e})") from None


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return kind
    return "not a regular file"


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, as a CnncError naming the file, if `path` cannot be written: it is a directory, or its
    directory cannot be made or written. Commands call this before long work whose result goes there.
    A character device or FIFO needs only to be writable itself (it is written through)."""
    target = writing_target(path)
    if _is_stream(target):
        if not os.access(target, os.W_OK):
            raise CnncError(f"{path}: cannot write (permission denied)")
        return
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
    command (the same path, through symlinks or hard links). outputs, inputs: {what it is (for the
    message): path or None}. Devices and FIFOs are written through, not overwritten: never a clash."""
    seen: list[tuple[str, str, tuple | None]] = []
    for what, path in inputs.items():
        if path:
            seen.append((what, os.path.realpath(path), _identity(path)))
    for what, path in outputs.items():
        if not path:
            continue
        real, identity = os.path.realpath(path), _identity(path)
        if _is_stream(Path(real)):
            continue
        for other, other_real, other_identity in seen:
            if real == other_real or (identity is not None and identity == other_identity):
                raise CnncError(f"{path}: {what} would overwrite {other} (the same file); choose another name")
        seen.append((what, real, identity))


def _identity(path) -> tuple | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


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


# ---- reading files cnnc does not trust ------------------------------------------------------------
def check_input_file(path: str | os.PathLike, what: str = "file") -> int:
    """The size of the regular file at `path`; a CnncError naming it when it is missing, a directory, or
    not a regular file (a FIFO would block the reader, a device like /dev/zero never ends).
    what: what the command expected there ("a .cnn file", "a weights .npz file"), for the message."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CnncError(f"{os.fspath(path)}: no such file") from None
    except OSError as e:
        raise CnncError(f"{os.fspath(path)}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CnncError(f"{os.fspath(path)}: is {_kind(st.st_mode)}, expected {what}; cnnc reads regular files only")
    return st.st_size


def read_bytes_limited(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes; a CnncError naming it otherwise (checked while
    reading too, for files whose size the system does not know in advance)."""
    size = check_input_file(path, what)
    if size > limit:
        raise CnncError(f"{os.fspath(path)}: {size:,} bytes, more than the {limit:,} cnnc reads as {what}")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise CnncError(f"{os.fspath(path)}: cannot read ({e.strerror or e})") from None
    if len(data) > limit:
        raise CnncError(f"{os.fspath(path)}: more than the {limit:,} bytes cnnc reads as {what}")
    return data


def load_json(text: str | bytes, where: str, max_depth: int | None = None):
    """json.loads, with every failure a CnncError naming `where`: not JSON, nested too deeply for the
    parser, or (with max_depth) nested deeper than max_depth containers."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CnncError(f"{where}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise CnncError(f"{where}: JSON nested too deeply to read") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise CnncError(f"{where}: not valid JSON ({e})") from None
    if max_depth is not None and json_depth(value) > max_depth:
        raise CnncError(f"{where}: JSON nested more than {max_depth} levels deep")
    return value


def json_depth(value) -> int:
    """How many containers deep `value` nests (0 for a number or string); iterative, for any depth."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
    return deepest


def available_memory() -> int:
    """Bytes of memory available for new allocations now (Linux: MemAvailable; else physical memory)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def human_size(n: int) -> str:
    for unit, size in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


class ArrayHeader:
    """What a .npy header declares: shape, dtype, the bytes of data it promises, where the data starts."""

    def __init__(self, shape: tuple[int, ...], dtype, fortran: bool, offset: int):
        import math

        self.shape, self.dtype, self.fortran, self.offset = shape, dtype, fortran, offset
        self.nbytes = math.prod(shape) * dtype.itemsize


def npy_header(f, where: str) -> ArrayHeader:
    """Read the header of the .npy stream `f` (positioned at its start); a CnncError naming `where` when it is
    not one. Nothing of the array is read."""
    import warnings

    import numpy as np

    fmt = np.lib.format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NumPy warns about some header oddities it then accepts
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=10_000)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=10_000)
            else:
                raise ValueError(f"unknown .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, RecursionError, MemoryError, OverflowError,
            tokenize.TokenError, zipfile.BadZipFile, zlib.error) as e:
        raise CnncError(f"{where}: not a readable .npy array header ({e})") from None
    if dtype.hasobject:
        raise CnncError(f"{where}: holds Python objects (pickled data), which cnnc never loads")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CnncError(f"{where}: the header declares the shape {shape!r}")
    return ArrayHeader(tuple(shape), dtype, fortran, f.tell())


def check_declared_size(header: ArrayHeader, stored: int | None, where: str) -> None:
    """Refuse an array whose header declares more data than the file holds (`stored` bytes after the header,
    when known), or than the memory available now: before NumPy allocates it."""
    shape = "x".join(map(str, header.shape)) or "scalar"
    declared = f"its header declares shape ({shape}) of {header.dtype}, {header.nbytes:,} bytes"
    if stored is not None and header.nbytes > stored:
        raise CnncError(f"{where}: {declared}, but the file holds only {stored:,} bytes of data")
    free = available_memory()
    if header.nbytes > free:
        raise CnncError(f"{where}: {declared} ({human_size(header.nbytes)}), more than the "
                        f"{human_size(free)} of memory available")


def npy_headers_in_npz(path: str | os.PathLike) -> dict[str, ArrayHeader]:
    """{array name: its header} for every member of the .npz at `path`, each checked against the bytes the
    archive says it holds and the memory available (`check_declared_size`). No array data is read."""
    where = os.fspath(path)
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename[:-len(".npy")] if info.filename.endswith(".npy") else info.filename
                with archive.open(info) as member:
                    header = npy_header(member, f"{where}: array {name!r}")
                check_declared_size(header, info.file_size - header.offset, f"{where}: array {name!r}")
                headers[name] = header
    except CnncError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CnncError(f"{where}: not a readable .npz file ({e})") from None
    return headers


def load_npz_checked(path: str | os.PathLike, what: str = "a .npz archive") -> dict:
    """Every array of the .npz at `path`, after `npy_headers_in_npz` has checked what each declares. A
    regular file only; any failure is a CnncError naming the file (and the array)."""
    import numpy as np

    check_input_file(path, what)
    npy_headers_in_npz(path)
    where = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {}
            for key in data.files:
                try:
                    arrays[key] = data[key]
                except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as e:
                    raise CnncError(f"{where}: cannot read array {key!r} ({e})") from None
            return arrays
    except CnncError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CnncError(f"{where}: not a readable .npz file ({e})") from None
    except MemoryError:
        raise CnncError(f"{where}: not enough memory to read its arrays") from None


def load_npy_checked(path: str | os.PathLike, what: str = "a .npy array"):
    """The array of the .npy file at `path`, after its header's declared size is checked against the file's
    size and the memory available. A regular file only; any failure is a CnncError naming the file."""
    import numpy as np

    size = check_input_file(path, what)
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            header = npy_header(f, where)
            check_declared_size(header, size - header.offset, where)
            f.seek(0)
            return np.load(f, allow_pickle=False)
    except CnncError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise CnncError(f"{where}: not a readable .npy array ({e})") from None
    except MemoryError:
        raise CnncError(f"{where}: not enough memory to read its array") from None


# ---- folders written by `cnnc export` -----------------------------------------------------------------
EXPORT_MARKER = ".cnnc-export.json"  # lists the files an export wrote; lets the next export replace them


MAKE_READS = ("makefile", "gnumakefile")  # GNU make reads GNUmakefile, then makefile, before Makefile


def write_owned_folder(out: str | os.PathLike, files: dict[str, str], products: tuple[str, ...] = (),
                       force: bool = False, command: str = "cnnc export") -> list[Path]:
    """Write {file name: text} into the folder `out` (made if missing), atomically file by file, and a marker
    (EXPORT_MARKER) listing them and the `products` that building them makes there (the example program).
    A folder holding anything but files an earlier marker lists is refused unless `force`: the command
    never overwrites a file it did not write. A product named like a written file, or like a file make
    reads in preference to the Makefile, is refused (case-insensitively: macOS and Windows fold case)."""
    folder = Path(os.fspath(out))
    for name in [*files, *products]:
        if not _is_relative_name(name) or name == EXPORT_MARKER or (name in products and "/" in name):
            raise ValueError(f"{command}: file names must be plain names (or 'folder/name' for files) other than "
                             f"{EXPORT_MARKER}; got {name!r}")
    for product in products:
        clash = [name for name in [*files, *MAKE_READS] if name.lower() == product.lower()]
        if clash:
            raise CnncError(f"the name {product!r} is not usable: building the export makes the program ./{product}, "
                            f"which would clash with the file {clash[0]} ({'which make reads before the Makefile' if clash[0] in MAKE_READS else 'the export writes'}); "
                            f"choose another with --name PREFIX")
    if folder.exists() and not folder.is_dir():
        raise CnncError(f"{folder}: exists and is not a directory; {command} writes a directory of files")
    owned = _owned_files(folder, command) if (folder / EXPORT_MARKER).is_file() else set()
    if folder.is_dir() and not force:
        foreign = _foreign_files(folder, owned)
        if foreign:
            shown = ", ".join(foreign[:5]) + (" and more" if len(foreign) > 5 else "")
            raise CnncError(f"{folder}: the folder holds files {command} did not write ({shown}); choose an empty "
                            f"or new folder, or pass --force to overwrite them")
    paths = []
    for name, text in files.items():
        path = folder.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        paths.append(path)
    kept = {name for name in owned if folder.joinpath(*name.split("/")).exists()}
    marker = {"written_by": command, "files": sorted(kept | set(files) | set(products))}
    atomic_write_text(folder / EXPORT_MARKER, json.dumps(marker, indent=2) + "\n")
    return paths


def _owned_files(folder: Path, command: str) -> set[str]:
    """The file names an earlier export's marker lists (nothing, for a marker that is damaged or foreign)."""
    try:
        marker = load_json(read_bytes_limited(folder / EXPORT_MARKER, 1 << 20, "an export marker"),
                           str(folder / EXPORT_MARKER))
    except CnncError:
        return set()
    files = marker.get("files") if isinstance(marker, dict) and marker.get("written_by") == command else None
    if not isinstance(files, list) or not all(_is_relative_name(f) for f in files):
        return set()
    return set(files)


def _is_relative_name(name) -> bool:
    """A file name, or 'folder/name': no absolute path, no '.' or '..' part, no empty part."""
    return isinstance(name, str) and all(part not in ("", ".", "..") and Path(part).name == part
                                         for part in name.split("/"))


def _foreign_files(folder: Path, owned: set[str], most: int = 6) -> list[str]:
    """Up to `most` files (as 'folder/name') under `folder` that an earlier export did not write; directories
    holding only owned files are owned. Stops early, so a folder like one's home is not walked whole."""
    foreign = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            relative = Path(root, name).relative_to(folder).as_posix()
            if relative != EXPORT_MARKER and relative not in owned:
                foreign.append(relative)
                if len(foreign) >= most:
                    return foreign
    return foreign
