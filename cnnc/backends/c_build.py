"""Compile generated C into a CPython extension with cffi, through a cache keyed by what the C is made of.

    module = build(source_key(networks, dtype), lambda: generate(networks, dtype))
    # -> Built(ffi, lib, key, directory); the lambda runs only on a miss

The cache key is a SHA-256 of everything that decides the bytes of the built module. It is computed
from the inputs of code generation, not from its output, so a hit renders no C: `source_key` hashes
the networks' IR (without source locations and file names, which do not reach the C), the dtype,
every template file, every kernel header (cnnc/kernels/*.h), c_codegen.py, ir.py and the cnnc version; `cache_key` adds the compiler (its
path and `--version`), the flags, the CPU when the flags say -march=native, the Python ABI and the
cffi version. An entry is a directory

    $CNNC_CACHE_DIR/c/<key>/        (default $XDG_CACHE_HOME/cnnc, else ~/.cache/cnnc; in user-<uid>/
                                    below it when other users can write it: fileio.private_cache_dir)
        model.c                     the generated glue C, for reading
        kernels/*.h                 the kernel headers it includes
        _cnnc_<key>.<abi>.so         the extension module
        manifest.json               key, flags, compiler, and the module's size and SHA-256

A hit imports the module directly: no Jinja, no compiler, no child process (the compiler's
`--version` is remembered on disk per executable, and so are the flags it was found to accept, so a
later miss runs no probes either). A build happens in a private temporary directory
beside the entries and is renamed into place in one step, so concurrent processes building the same
key both succeed (the loser of the rename uses the winner's entry). An entry whose manifest
is missing or unreadable, or whose module does not match the recorded size and SHA-256 (a truncated
copy, a crash mid-write on a filesystem without atomic rename) is moved aside and rebuilt.

A miss compiles two translation units at once (see `compile_module`) and links them as setuptools
would, without setuptools: the compiler's output is captured and a failure becomes a CnncError naming
the compiler and quoting its messages. `subprocess` is imported by the functions that start a process:
a hit starts none (and saves its import).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

# The version of cffi's runtime, which every built module imports; the cffi package itself only builds them.
from _cffi_backend import __version__ as cffi_version

from .. import ir
from .._version import __version__
from ..diagnostics import CnncError
from ..fileio import atomic_write_text, cache_home, private_cache_dir
from ..resources import resource_files
from . import c_codegen
from .c_codegen import CSource

MANIFEST = "manifest.json"
C_FILE = "model.c"
FORMAT = 3  # of the manifest and the key; bump when either changes (3: two translation units, linked without setuptools)
NUMPY_HINT = 'use backend="numpy" (cnnc.load(..., backend="numpy")), which needs no compiler'


# ---- the compiler ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Compiler:
    command: tuple[str, ...]  # how to run it, e.g. ("gcc",) or ("ccache", "gcc")
    path: str  # the resolved executable of command[0]
    version: str  # the output of `command --version`
    record: Path | None = None  # the file remembering its version and the flags it accepts (None: remember nothing)

    @property
    def name(self) -> str:
        return " ".join(self.command)


def compiler_command() -> tuple[str, ...]:
    """What setuptools will run: $CC if set, else the compiler Python was built with."""
    words = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not words:
        raise CnncError(f"the C compiler setting CC={os.environ.get('CC')!r} is empty; set CC to a C compiler, or "
                        f"{NUMPY_HINT}")
    return tuple(words)


def find_compiler(cache_dir=None) -> Compiler:
    """The compiler and its version; a CnncError naming it if it cannot be run."""
    command = compiler_command()
    path = shutil.which(command[0])
    if path is None:
        where = "$CC" if os.environ.get("CC") else "Python's build configuration"
        raise CnncError(f"C compiler '{command[0]}' (from {where}) was not found; install a C compiler "
                        f"(gcc or clang), set CC to one, or {NUMPY_HINT}")
    records = cache_root(cache_dir).with_name("compilers")
    return Compiler(command, path, compiler_version(command, path, records), record_file(command, path, records))


def executables_identity(command: tuple[str, ...], path: str) -> dict:
    """What changes when the compiler does: the resolved path, then for every word of the command that
    names a program (`ccache gcc` names two) its file's device, inode, size and times."""
    identity = {"command": list(command), "path": path, "files": []}
    for word in command:
        found = shutil.which(word)
        if found:
            st = os.stat(found)
            identity["files"].append([found, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    return identity


def read_json(path: Path):
    """The JSON value in `path`, or None when it cannot be read or is not JSON: a missing file, bytes that
    are not UTF-8, text that is not JSON, or JSON nested too deeply for Python's parser (RecursionError).
    The cache's files (manifests, compiler records) are written by cnnc, but anyone who can write the cache
    can change them: whatever this returns is checked before use."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def record_file(command: tuple[str, ...], path: str, records: Path) -> Path:
    """The record of this compiler in `records`, named by the identity of its executables."""
    identity = executables_identity(command, path)
    return records / f"{hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]}.json"


def compiler_version(command: tuple[str, ...], path: str, records: Path) -> str:
    """`CC --version`, remembered in `records` (one small JSON file per compiler identity) so that a new
    process whose compiler has not changed spawns nothing; asked again when the executables change."""
    identity = executables_identity(command, path)
    record = record_file(command, path, records)
    saved = read_json(record)  # None: no record yet, or an unreadable one: ask the compiler and write it again
    if isinstance(saved, dict) and saved.get("identity") == identity and isinstance(saved.get("version"), str):
        return saved["version"]
    version = _compiler_version(command, path, json.dumps(identity, sort_keys=True))
    try:
        atomic_write_text(record, json.dumps({"identity": identity, "version": version}, indent=2) + "\n")
    except (OSError, CnncError):
        pass  # a read-only or unusable cache: the next process asks again (the build itself says what is wrong)
    return version


@lru_cache(maxsize=None)
def _compiler_version(command: tuple[str, ...], path: str, identity: str) -> str:
    """`CC --version`, remembered per process for unchanged executables (`identity`)."""
    import subprocess

    try:
        result = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise CnncError(f"C compiler '{' '.join(command)}' cannot be run ({e.strerror}); {NUMPY_HINT}") from None
    except subprocess.TimeoutExpired:
        raise CnncError(f"C compiler '{' '.join(command)}' did not answer --version within 60 s; {NUMPY_HINT}") from None
    if result.returncode != 0:
        raise CnncError(f"C compiler '{' '.join(command)}' failed on --version (exit {result.returncode}): "
                        f"{result.stderr.strip()[:300]}; {NUMPY_HINT}")
    return result.stdout.strip()


def accepts(compiler: Compiler, flags: tuple[str, ...]) -> bool:
    """Whether the compiler builds and links with these flags, a yes remembered in its record (beside its
    version, so a replaced compiler is asked again). A no is not remembered: installing an OpenMP runtime
    turns it into a yes without changing the compiler. Saves the probes' ~85 ms on every later miss."""
    if " ".join(flags) in remembered_flags(compiler):
        return True
    if not _accepts(compiler, flags):
        return False
    remember_flags(compiler, flags)
    return True


def remembered_flags(compiler: Compiler) -> list[str]:
    """The flag sets (each joined by spaces) the compiler's record says it accepts; [] without a record."""
    saved = read_json(compiler.record) if compiler.record is not None else None
    if not isinstance(saved, dict) or saved.get("version") != compiler.version:
        return []  # no record, or an unreadable one: probe
    accepted = saved.get("accepts", [])
    return [f for f in accepted if isinstance(f, str)] if isinstance(accepted, list) else []


def remember_flags(compiler: Compiler, flags: tuple[str, ...]) -> None:
    """Add a yes to the compiler's record, which `compiler_version` wrote (no record, nothing remembered)."""
    saved = read_json(compiler.record) if compiler.record is not None else None
    if not isinstance(saved, dict) or saved.get("version") != compiler.version:
        return  # no record, or a damaged one: the next miss probes again
    saved["accepts"] = sorted({*remembered_flags(compiler), " ".join(flags)})
    try:
        atomic_write_text(compiler.record, json.dumps(saved, indent=2) + "\n")
    except (OSError, ValueError):  # (CnncError is a ValueError)
        pass  # a read-only or unusable cache: the next miss probes again


@lru_cache(maxsize=None)
def _accepts(compiler: Compiler, flags: tuple[str, ...]) -> bool:
    """Whether the compiler builds and links a trivial program with these flags (e.g. -fopenmp)."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="cnnc-probe-") as tmp:
        source = Path(tmp, "probe.c")
        source.write_text("int main(void) { return 0; }\n")
        try:
            result = subprocess.run([*compiler.command, *flags, str(source), "-o", str(Path(tmp, "probe"))],
                                    capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0


# ---- flags -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildOptions:
    """openmp: parallel loops (dropped if the compiler cannot link -fopenmp).
    native: -march=native (off for a module that must run on other machines of the same architecture;
            also off when $CNNC_PORTABLE is set to anything but 0 or empty).
    opt: the optimisation level. extra_cflags: appended last."""

    openmp: bool = True
    native: bool = True
    opt: str = "-O3"
    extra_cflags: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, openmp=True, native=None, opt="-O3", extra_cflags=()) -> BuildOptions:
        if native is None:
            native = os.environ.get("CNNC_PORTABLE", "") in ("", "0")
        if opt not in ("-O0", "-O1", "-O2", "-O3", "-Os"):
            raise ValueError(f"opt must be one of -O0, -O1, -O2, -O3, -Os; got {opt!r}")
        if isinstance(extra_cflags, str) or not all(isinstance(f, str) for f in extra_cflags):
            raise ValueError(f"extra_cflags must be a list of strings; got {extra_cflags!r}")
        return cls(bool(openmp), bool(native), opt, tuple(extra_cflags))


def requested_flags(options: BuildOptions) -> list[str]:
    """The flags asked for; the key is computed from these (a compiler accepts the same flags every time)."""
    flags = [options.opt, "-g0", "-fno-math-errno"]  # -g0 overrides Python's own -g
    if options.native:
        flags.append("-march=native")
    if options.openmp:
        flags.append("-fopenmp")
    return flags + list(options.extra_cflags)


def usable_flags(compiler: Compiler, options: BuildOptions) -> tuple[list[str], list[str]]:
    """(compile flags, link flags) after probing. Without OpenMP threads (not asked for, or the compiler
    cannot link them), its simd pragmas still apply through -fopenmp-simd where the compiler has it,
    and the thread pragmas are silenced."""
    flags = requested_flags(options)
    if options.native and not accepts(compiler, ("-march=native",)):
        flags.remove("-march=native")
    if options.openmp and accepts(compiler, ("-fopenmp",)):
        return flags, ["-fopenmp"]
    if options.openmp:
        flags.remove("-fopenmp")
    if accepts(compiler, ("-fopenmp-simd",)):
        flags.append("-fopenmp-simd")
    return flags + ["-Wno-unknown-pragmas"], []


@lru_cache(maxsize=1)
def cpu_signature() -> str:
    """What -march=native compiles for: the CPU model and feature flags where the OS says them."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return hashlib.sha256("\n".join(sorted(set(lines))).encode()).hexdigest()[:16]
    except OSError:
        return f"{platform.machine()}-{platform.processor()}"


# ---- the cache ---------------------------------------------------------------------------------------
def cache_root(cache_dir=None) -> Path:
    """$CNNC_CACHE_DIR, else $XDG_CACHE_HOME/cnnc, else ~/.cache/cnnc (its part only this user can write:
    fileio.private_cache_dir); C modules live under c/."""
    return (private_cache_dir(Path(cache_dir)) if cache_dir is not None else cache_home()) / "c"


IR_SKIPPED = ("loc", "file", "warnings")  # where a network was written and what it was warned about: not in the C


def ir_data(value):
    """The IR as plain JSON data: every dataclass field except IR_SKIPPED, tagged with its class name.
    Anything that is not a dataclass, tuple, list, str, int, float, bool or None is refused."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return {"class": type(value).__name__,
                **{f.name: ir_data(getattr(value, f.name)) for f in fields if f.name not in IR_SKIPPED}}
    if isinstance(value, (tuple, list)):
        return [ir_data(v) for v in value]
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise ValueError(f"cannot key the C module cache on a {type(value).__name__} in the IR ({value!r}); "
                     f"IR fields hold dataclasses, tuples, str, int, float, bool or None")


def codegen_texts() -> list[tuple[str, bytes]]:
    """(name, contents) of every file code generation reads besides the IR: c_codegen.py, ir.py (whose
    properties it reads), the templates and the kernel headers, all read as package resources."""
    from importlib import resources

    texts = [(f"cnnc/{name}", resources.files(package).joinpath(name.split("/")[-1]).read_bytes())
             for package, name in (("cnnc.backends", "backends/c_codegen.py"), ("cnnc", "ir.py"))]
    texts += resource_files("templates")
    texts += [(f"kernels/{name}", data) for name, data in resource_files("kernels")]
    return texts


@lru_cache(maxsize=1)
def codegen_fingerprint() -> str:
    """SHA-256 of the code generator's files, computed once per process."""
    digest = hashlib.sha256()
    for name, data in codegen_texts():
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


DEFAULT_SWITCHES = {"winograd": True}


def source_key(networks, dtype: str) -> str:
    """What the generated C and its cffi declarations are a function of: the networks (in order, as
    IR), the dtype, the code generator's files and the cnnc version. Equal keys, equal C (up to the
    Jinja version, which is left out: asking it means importing Jinja), and the code generator's switches
    (c_codegen.codegen_switches: the same files generate other C with Winograd off)."""
    from .c_codegen import codegen_switches

    identity = {"format": FORMAT, "cnnc": __version__, "codegen": codegen_fingerprint(), "dtype": dtype,
                "networks": [ir_data(n) for n in networks]}
    if codegen_switches() != DEFAULT_SWITCHES:  # (the default keys as before: caches stay valid)
        identity["switches"] = codegen_switches()
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def cache_key(source_id: str, compiler: Compiler, options: BuildOptions) -> str:
    """The entry for the C that `source_id` (a `source_key`) names, built by this compiler, with these
    flags, for this Python."""
    identity = {
        "format": FORMAT, "source": source_id, "cffi": cffi_version,
        "python": sys.implementation.cache_tag, "abi": sysconfig.get_config_var("EXT_SUFFIX"),
        "compiler": [compiler.name, compiler.path, compiler.version], "flags": requested_flags(options),
        "cpu": cpu_signature() if options.native else platform.machine(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def module_name(key: str) -> str:
    return f"_cnnc_{key[:32]}"


@dataclass
class Built:
    """A loaded module: `lib` holds the C functions, `ffi` allocates and converts."""

    ffi: object
    lib: object
    key: str
    directory: Path  # the cache entry (or `cnnc compile` directory) it was loaded from
    source: CSource | None = None  # the C, when this process rendered it (a miss); None on a hit
    compiled: bool = False  # True when this call ran the compiler


_LOADED: dict[Path, Built] = {}  # cache entry -> its module, loaded in this process


def build(source_id: str, render: Callable[[], CSource], cache_dir=None, **options) -> Built:
    """The module for the C that `source_id` (a `source_key`) names, from the cache or compiled into it. `render()`
    generates that C; it is called only on a miss."""
    opts = BuildOptions.from_options(**options)
    compiler = find_compiler(cache_dir)
    key = cache_key(source_id, compiler, opts)
    entry = cache_root(cache_dir) / key
    if entry in _LOADED:
        if mark_used(entry):
            return _LOADED[entry]
        del _LOADED[entry]  # pruned or deleted by another process: build it again (this process keeps the module)
    built = load_entry(entry, key)
    if built is None and os.path.isdir(entry):  # (False too where this user may not look)
        # Entries arrive complete, by rename: one that exists now but failed to load a moment ago
        # either just arrived from a concurrent build, or is damaged.
        built = load_entry(entry, key)
        if built is None:
            discard(entry)
    if built is None:
        source = render()
        with build_notice(", ".join(plan.network.name for plan in source.plans)):
            compile_into(entry, key, source, compiler, opts, source_id)
        built = load_entry(entry, key, source, just_built=True)
        if built is None:
            raise CnncError(f"the C module built in {entry} fails its own check right after the build; "
                            f"the cache directory may be unreliable (set CNNC_CACHE_DIR elsewhere) or {NUMPY_HINT}")
        built.compiled = True
        prune_entries(entry.parent)
    _LOADED[entry] = built
    return built


@contextlib.contextmanager
def build_notice(models: str):
    """On a terminal, one line for a cold build, which takes seconds:
    "building the C module for lenet5 ... done in 5.2 s". Nothing when stderr is a pipe or a file."""
    stream = sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        yield
        return
    print(f"building the C module for {models} ...", end="", file=stream, flush=True)
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        print(" failed", file=stream, flush=True)
        raise
    print(f" done in {time.perf_counter() - started:.1f} s", file=stream, flush=True)


# The cache keeps this many entries (LeNet-5's is about 0.3 MB), the most recently used: each build that
# adds one deletes the least recently used beyond it. Use is the mtime of an entry's manifest, which every
# load touches.
MAX_ENTRIES = 256


def prune_entries(root: Path, keep: int | None = None) -> None:
    """Discard the least recently used entries of the cache at `root` beyond the `keep` (default
    MAX_ENTRIES) most recent. Only
    directories with a manifest count (staging and trash directories start with a dot). A process that
    already loaded a discarded module keeps it; one about to load it finds no entry and builds it again."""
    entries = []
    for entry in root.iterdir() if root.is_dir() else ():
        if entry.name.startswith("."):
            continue
        try:
            entries.append((os.stat(entry / MANIFEST).st_mtime_ns, entry.name, entry))
        except OSError:
            continue
    entries.sort()
    keep = MAX_ENTRIES if keep is None else keep
    for _, _, entry in entries[:max(0, len(entries) - keep)]:
        try:
            discard(entry)
        except OSError:
            continue  # not ours to move (permissions, busy): left for another time


MANIFEST_TYPES = {"key": str, "module_file": str, "module_size": int, "module_sha256": str}


def read_manifest(directory: Path) -> dict | None:
    """The entry's manifest, or None when it is missing, unreadable, of another format, or lacks a field
    `load_entry` needs (MANIFEST_TYPES): such an entry is damaged and is rebuilt."""
    manifest = read_json(directory / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if not all(isinstance(manifest.get(k), t) and not isinstance(manifest.get(k), bool) for k, t in MANIFEST_TYPES.items()):
        return None
    return manifest


def load_entry(directory: Path, key: str, source: CSource | None = None, just_built: bool = False) -> Built | None:
    """Import the module in `directory` if its manifest says `key` and its file matches; else None.
    just_built: a module that does not import is a CnncError quoting why (a cached one is just rebuilt)."""
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("key") != key or not isinstance(manifest.get("module_file"), str):
        return None
    so = directory / Path(manifest["module_file"]).name
    if not module_intact(so, manifest):
        return None
    try:
        module = import_module_file(module_name(key), so)
    except ImportError as e:
        if just_built:
            raise CnncError(f"the C module just built in {directory} does not import: {e}; {NUMPY_HINT}") from None
        return None
    mark_used(directory)
    return Built(module.ffi, module.lib, key, directory, source)


def mark_used(entry: Path) -> bool:
    """Touch the entry's manifest: it was just used, so a build making room keeps it. False if the entry is
    gone; a cache that cannot be written (read-only) is still used."""
    try:
        os.utime(entry / MANIFEST)
    except FileNotFoundError:
        return False
    except OSError:
        pass
    return True


def module_intact(so: Path, manifest: dict) -> bool:
    try:
        if so.stat().st_size != manifest.get("module_size"):
            return False
        return file_sha256(so) == manifest.get("module_sha256")
    except OSError:
        return False


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# GOMP_SPINCOUNT: how many times (each a `pause`, tens of cycles) an idle thread checks for work before it sleeps.
SPIN_COUNT = "10000"


def set_wait_policy(environ) -> None:
    """OMP_WAIT_POLICY=passive with GOMP_SPINCOUNT=SPIN_COUNT (libgomp: an explicit spin count wins over the
    policy's), unless the user chose either."""
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["OMP_WAIT_POLICY"] = "passive"
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def import_module_file(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    # Idle OpenMP threads spin briefly, then sleep: long spinning on a busy machine (or next to NumPy's
    # BLAS threads) keeps a core from the thread a pass is waiting for, while sleeping at once makes
    # every pass wait for a thread to wake up (a third of LeNet-5's 2-thread inference speed). About
    # 0.2 ms of spinning covers the gap between the passes of a training step. libgomp reads these once,
    # when the first module that links it is loaded; if the user set either, both are left alone.
    set_wait_policy(os.environ)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def discard(entry: Path) -> None:
    """Move a bad entry aside (one rename, so no reader sees it half-deleted), then delete it."""
    trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.rename(entry, trash)
    except FileNotFoundError:
        return  # another process got there first
    shutil.rmtree(trash, ignore_errors=True)


# ---- compiling -----------------------------------------------------------------------------------------
# The module is built from two translation units compiled at the same time (CNNC_PART in module.c.j2):
# cffi's wrapper around everything but the backward passes, and the backward passes on their own. gcc -O3
# on the blocked kernels is most of a cold build, and the two halves take about as long each, so on two
# cores a cold build takes about half the compiler time. The link is what setuptools would run: Python's
# LDSHARED with our compiler in place of the one Python was built with.
PART_ONE, PART_TWO = "module.c", "backward.c"


def link_command(compiler: Compiler) -> list[str]:
    """Python's shared-object link command (e.g. `gcc -shared ...`), with `compiler` as its driver."""
    ldshared = shlex.split(sysconfig.get_config_var("LDSHARED") or "cc -shared")
    python_cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    if ldshared[:len(python_cc)] == python_cc:
        ldshared = [*compiler.command, *ldshared[len(python_cc):]]
    return ldshared


def write_parts(work: Path, name: str, source: CSource) -> None:
    """The two translation units: PART_ONE is cffi's wrapper (the module's Python bindings) around the C
    with CNNC_PART 1, PART_TWO the C with CNNC_PART 2."""
    import cffi
    from cffi.recompiler import make_c_source  # what ffi.emit_c_code runs, without its "generating" line

    ffi = cffi.FFI()
    ffi.cdef(source.cdef)
    make_c_source(ffi, name, "#define CNNC_PART 1\n" + source.text, str(work / PART_ONE))
    (work / PART_TWO).write_text("#define CNNC_PART 2\n" + source.text, encoding="utf-8")
    write_headers(work, source)


def write_headers(directory: Path, source: CSource) -> None:
    """The kernel headers the glue includes (`#include "kernels/conv.h"`), copied beside it from their texts."""
    for name, text in source.headers:
        path = directory.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


COMPILE_TIMEOUT_S = 1800


def run_compilers(commands: list[list[str]], work: Path, failure: Callable[[list[str], str], str]) -> None:
    """Run the commands at once (in `work`, each one's messages to a log file there) and wait for all,
    at most COMPILE_TIMEOUT_S in all. The first that failed is a CnncError: failure(command, its messages).
    Each runs in its own process group, so a timeout kills the compiler driver's children too."""
    import signal
    import subprocess

    started = []
    deadline = time.monotonic() + COMPILE_TIMEOUT_S
    try:
        for number, command in enumerate(commands):
            with open(work / f"compiler-{number}.log", "w+b") as log:
                try:
                    process = subprocess.Popen(command, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True)
                except OSError as e:
                    raise CnncError(f"cannot run '{command[0]}' ({e.strerror}); {NUMPY_HINT}") from None
                started.append((process, command, log.name))
        for process, command, _ in started:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise CnncError(f"'{command[0]}' did not finish within {COMPILE_TIMEOUT_S // 60} minutes; "
                                f"{NUMPY_HINT}") from None
    finally:
        with interrupts_deferred():  # a second Ctrl-C must not leave a compiler running
            for process, _, _ in started:
                if process.poll() is None:
                    with contextlib.suppress(OSError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    for process, command, log in started:
        if process.returncode != 0:
            raise CnncError(failure(command, Path(log).read_text(encoding="utf-8", errors="replace")))


def compile_into(entry: Path, key: str, source: CSource, compiler: Compiler, options: BuildOptions,
                 source_id: str) -> None:
    """Build in a private directory beside `entry`, then rename it into place. If a concurrent build
    renamed its entry there first, the rename fails and the finished entry is used instead. The staging
    directory holds a lock (BUILD_LOCK) while the build runs, so that the next build can tell one whose
    process was killed (SIGKILL: no cleanup ran) and reap it (`sweep_leftovers`)."""
    lock = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(entry.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".build-{key[:12]}-", dir=entry.parent))
        lock = hold_build_lock(staging)
    except OSError as e:
        raise CnncError(f"cannot write to the C module cache {entry.parent} ({e.strerror}); set CNNC_CACHE_DIR "
                        f"to a writable directory") from None
    try:
        manifest = compile_module(staging, key, source, compiler, options)
        manifest["source_key"] = source_id
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        (staging / BUILD_LOCK).unlink()  # (still held through `lock`: a lock-less directory is young, left alone)
        try:
            os.rename(staging, entry)
        except OSError as e:
            if not entry.is_dir():  # not a concurrent build that won the race
                raise CnncError(f"cannot move the built module into the cache at {entry} ({e.strerror})") from None
    except OSError as e:
        raise CnncError(f"building in the C module cache {staging} failed ({e}); set CNNC_CACHE_DIR to a "
                        f"writable directory with free space") from None
    finally:
        with interrupts_deferred():  # a second Ctrl-C must not leave the staging directory behind
            shutil.rmtree(staging, ignore_errors=True)
            if lock is not None:
                os.close(lock)


@contextlib.contextmanager
def interrupts_deferred():
    """Hold back Ctrl-C (SIGINT) while the block runs, and deliver it after: cleanup that kills the
    compilers and deletes the staging directory is not cut short by a second Ctrl-C. Only in the main
    thread (the only one Python runs signal handlers in); elsewhere the block just runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(signal.SIGINT, None)  # Python's handler raises KeyboardInterrupt now


# A staging directory's lock file: an exclusive flock held by the building process. The kernel drops it
# when that process dies, however it dies, so a lock that can be taken marks an abandoned build.
BUILD_LOCK = ".lock"
STALE_SECONDS = COMPILE_TIMEOUT_S + 600  # a staging directory without a lock file this old is abandoned


def hold_build_lock(staging: Path) -> int | None:
    """Create and lock staging/BUILD_LOCK; the open descriptor (closed when the build ends), or None where
    there is no flock (the directory is then judged by its age)."""
    try:
        import fcntl
    except ImportError:
        return None
    # Locked under a private name, then renamed: a concurrent sweep sees no lock file (a young
    # directory, left alone) or a held one, never one it could take in between and judge abandoned.
    private = staging / f"{BUILD_LOCK}-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(private, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(private, staging / BUILD_LOCK)
    return fd


def build_abandoned(staging: Path) -> bool:
    """Whether no live process is building in `staging`: its lock can be taken, or it has no lock file
    and is older than any build can take."""
    try:
        import fcntl
        fd = os.open(staging / BUILD_LOCK, os.O_RDWR | os.O_CLOEXEC)
    except ImportError:
        fd = None
    except FileNotFoundError:
        fd = None
    except OSError:
        return False
    if fd is None:
        try:
            return time.time() - staging.stat().st_mtime > STALE_SECONDS
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held: a build in progress
        return False
    finally:
        os.close(fd)


def stop_leftover_compilers(staging: Path) -> list[int]:
    """Kill (SIGKILL) this user's processes whose working directory is inside `staging`: the compilers
    of a build whose process was killed run on in its work/ directory (each in a session of its own, so
    nothing else stops them). Linux (/proc); elsewhere nothing. Returns the process ids signalled."""
    import signal

    proc, target, uid, killed = Path("/proc"), os.path.realpath(staging), os.getuid(), []
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone, or not ours to look at
        if cwd == target or cwd.startswith(target + os.sep):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


def sweep_leftovers(root: Path) -> None:
    """Delete what killed processes left: entries moved aside for deletion, and abandoned staging
    directories (`build_abandoned`), after killing the compilers still running in them."""
    for path in root.glob(".*-*"):
        try:
            if path.name.startswith(".trash-"):
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith(".build-") and build_abandoned(path):
                stop_leftover_compilers(path)
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def compile_module(directory: Path, key: str, source: CSource, compiler: Compiler, options: BuildOptions) -> dict:
    """Compile `source` into `directory` -> the manifest describing what was built. Leaves only
    model.c and the module there."""
    work = directory / "work"
    work.mkdir()
    cflags, ldflags = usable_flags(compiler, options)
    name = module_name(key)
    write_parts(work, name, source)
    paths = sysconfig.get_paths()
    includes = [f"-I{d}" for d in dict.fromkeys((paths["include"], paths["platinclude"]))]
    compile_flags = [*cflags, "-fPIC"]

    def compile_failure(command, output):
        return (f"C compiler '{compiler.name}' failed to build the generated module (flags: {' '.join(cflags)}):\n"
                f"{_tail(output)}\n{NUMPY_HINT}")

    run_compilers([[*compiler.command, *compile_flags, *includes, "-c", PART_ONE, "-o", "module.o"],
                   [*compiler.command, *compile_flags, "-c", PART_TWO, "-o", "backward.o"]], work, compile_failure)
    so_name = name + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")

    def link_failure(command, output):
        return f"linking the generated module failed ({shlex.join(command)}):\n{_tail(output)}\n{NUMPY_HINT}"

    # the compile flags go to the link too: the driver ignores what is only for compiling, and some
    # (-fopenmp, -fsanitize=...) decide what is linked
    run_compilers([[*link_command(compiler), "module.o", "backward.o", *cflags, *ldflags, "-o", so_name]], work,
                  link_failure)
    so = directory / so_name
    os.replace(work / so_name, so)
    (directory / C_FILE).write_text(source.text, encoding="utf-8")
    write_headers(directory, source)
    shutil.rmtree(work)
    return {"format": FORMAT, "key": key, "module": name, "module_file": so.name, "module_size": so.stat().st_size,
            "module_sha256": file_sha256(so), "dtype": source.dtype, "cnnc": __version__, "compiler": compiler.name,
            "compiler_path": compiler.path, "compiler_version": compiler.version.splitlines()[0] if compiler.version else "",
            "cflags": cflags, "ldflags": ldflags, "models": [p.network.name for p in source.plans]}


def _tail(output: str, lines: int = 25) -> str:
    """The last lines of the compiler's messages, indented."""
    kept = [line for line in output.strip().splitlines() if line.strip()]
    return "\n".join("    " + line for line in kept[-lines:])
