"""The front of the pipeline as three calls: text or file -> shape-inferred Networks.

A spec read from a file is also remembered: its Networks are pickled in cnnc's cache directory
(cache_home()/ir), keyed by content alone: the file's name and text and the contents of everything
else that decides its IR (see `front_end_fingerprint`). A later process loading the unchanged file
unpickles them, and so never imports Lark, the parser (cnnc.syntax) or the shape checker
(cnnc.shapes): about half of a cached `cnnc.load` (docs/performance.md). A file with errors is not
remembered (it is parsed again, to report them). Code that replaces front-end functions at run time
(a test) sets IR_CACHE = False. The cache keeps the IR_CACHE_ENTRIES most recently used entries (each
a few KB). Entries are pickles: the cache directory is trusted as the C module cache beside it is
(whose entries are native code).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import sys
from functools import cache
from pathlib import Path

from ._version import __version__
from .diagnostics import CnncError, SpecError
from .fileio import atomic_path, cache_home, make_room, read_bytes_limited
from .ir import Network
from .resources import resource


def network_list_from_text(text: str, file: str = "<string>") -> list[Network]:
    """Parse and shape-check every model in `text`. Raises SpecError with located diagnostics."""
    if not isinstance(text, str):
        raise ValueError(f"the spec text must be a str; got {type(text).__name__} (for a file, use read_network(path))")
    from .shapes import infer  # imported here: a cached load needs neither (nor Lark)
    from .syntax import parse

    text = normalise_newlines(text)
    return infer(parse(text, file), text)


MAX_SPEC_BYTES = 4 << 20  # 4 MiB: a spec of 100,000 layers is under 2 MiB


def read_source(path) -> str:
    """The text of a .cnn file (LF, CRLF or CR line endings, like `normalise_newlines`); a missing or
    unreadable file, one that is not a regular file (a FIFO, /dev/zero) or one over MAX_SPEC_BYTES is a
    CnncError naming it."""
    path = os.fspath(path)
    try:
        data = read_bytes_limited(path, MAX_SPEC_BYTES, "a .cnn file")
    except CnncError as e:
        if "is a directory" in str(e):
            raise CnncError(f"{path}: is a directory, expected a .cnn file") from None
        raise
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CnncError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    return normalise_newlines(text)


def normalise_newlines(text: str) -> str:
    """CRLF and lone CR line endings as LF: the one rule for files and for text given to the API."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def networks_from_file(path) -> list[Network]:
    return remembered_network_list(read_source(path), os.fspath(path))


def select(networks: list[Network], model: str | None, where: str) -> Network:
    """Pick the named model; a file with several models needs a name."""
    names = [n.name for n in networks]
    if model is None:
        if len(networks) == 1:
            return networks[0]
        raise CnncError(f"{where} holds {len(networks)} models ({', '.join(names)}); choose one with model=NAME (--model NAME)")
    for network in networks:
        if network.name == model:
            return network
    raise CnncError(f"{where} has no model '{model}'; it has: {', '.join(names)}")


def network_from_text(text: str, model: str | None = None, file: str = "<string>") -> Network:
    return select(network_list_from_text(text, file), model, file)


def read_network(path, model: str | None = None) -> Network:
    return select(networks_from_file(path), model, os.fspath(path))


# ---- the IR cache: a spec file's Networks, remembered --------------------------------------------
IR_FORMAT = 3  # of the entries and their key; bump when either changes
IR_CACHE_ENTRIES = 256
# False: every spec is parsed and checked (tests that replace front-end code at run time set this,
# as the cache cannot tell their IR from the genuine code's)
IR_CACHE = True
_MODULE_DIR = Path(__file__).resolve().parent
# cnnc's modules whose code decides a spec's IR (shapes.py and syntax.py, and what they build it from)
FRONT_END_MODULES = ("frontend.py", "syntax.py", "shapes.py", "ir.py", "diagnostics.py")


def front_end_files() -> list[Path]:
    """Every file whose contents decide the IR of a given text: the front end's modules, the grammar,
    and Lark's __init__.py (which holds its version), found without importing Lark."""
    grammar = resource("grammar", "cnn.lark")
    if not isinstance(grammar, Path):
        raise OSError("the grammar is not a file on disk (an installed zip?): the IR is not cached")
    spec = importlib.util.find_spec("lark")
    if spec is None or spec.origin is None:
        raise OSError("the lark package is not installed")
    return [_MODULE_DIR / name for name in FRONT_END_MODULES] + [grammar, Path(spec.origin)]


@cache
def front_end_fingerprint() -> str | None:
    """SHA-256 of what decides a text's IR besides the text: the contents of the front end's files
    (modules, grammar, Lark's version), cnnc's version and Python's; hashed once per process. None
    (nothing is cached) when a file cannot be read."""
    import hashlib  # here and in ir_cache_path: `import cnnc` alone does not load OpenSSL

    digest = hashlib.sha256(f"{IR_FORMAT}\0{__version__}\0{sys.implementation.cache_tag}\0{sys.version}\0".encode())
    try:
        for path in front_end_files():
            data = path.read_bytes()
            digest.update(f"{path.name}\0{len(data)}\0".encode())
            digest.update(data)
    except OSError:
        return None
    return digest.hexdigest()


def ir_cache_path(text: str, file: str, fingerprint: str) -> Path:
    """The entry for this text read from this file (the IR records where each layer was written)."""
    import hashlib

    key = hashlib.sha256(f"{fingerprint}\0{file}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()
    return cache_home() / "ir" / f"{key[:40]}.pickle"


def remembered_network_list(text: str, file: str) -> list[Network]:
    """network_list_from_text(text, file), from the IR cache when this text was checked before by a
    front end of the same contents; else computed, and remembered for the next process."""
    fingerprint = front_end_fingerprint() if IR_CACHE else None
    if fingerprint is None:
        return network_list_from_text(text, file)
    path = ir_cache_path(text, file, fingerprint)
    networks = _read_entry(path, text, file)
    if networks is None:
        networks = network_list_from_text(text, file)  # a SpecError leaves nothing behind
        _write_entry(path, text, file, networks)
    return networks


def _read_entry(path: Path, text: str, file: str) -> list[Network] | None:
    """The Networks remembered in `path` for exactly this text and file name; else None."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f)
    except Exception:  # missing, truncated, foreign or from classes that changed: parse afresh
        return None
    if not (isinstance(entry, dict) and entry.get("format") == IR_FORMAT and entry.get("text") == text
            and entry.get("file") == file):
        return None
    networks = entry.get("networks")
    if not isinstance(networks, list) or not networks or not all(type(n) is Network for n in networks):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: kept when the cache makes room
    return networks


def _write_entry(path: Path, text: str, file: str, networks: list[Network]) -> None:
    entry = {"format": IR_FORMAT, "file": file, "text": text, "networks": networks}
    with contextlib.suppress(OSError, CnncError):  # an unwritable cache only costs the next process a parse
        make_room(path.parent, "*.pickle", 0, IR_CACHE_ENTRIES, 1 << 62)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(entry, f, protocol=pickle.HIGHEST_PROTOCOL)


__all__ = ["read_source", "network_from_text", "network_list_from_text", "networks_from_file", "read_network", "select",
           "remembered_network_list", "SpecError"]
