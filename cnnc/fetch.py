"""`cnnc data fetch`: download MNIST or Fashion-MNIST's four gzipped IDX files, verified by SHA-256.

Each file streams to a temporary name beside its target and is renamed into place only when its
SHA-256 matches the table below, so the data directory never holds a partial or altered file.
Standard library only (urllib). This is the only module in cnnc that touches the network.
"""
from __future__ import annotations

import hashlib
import http.client
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .datasets import default_data_dir
from .diagnostics import CnncError
from .fileio import atomic_path

CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """A published file: its size in bytes and the SHA-256 of its (gzipped) bytes."""

    size: int
    sha256: str


# The upstream .gz files, as served by every mirror below (the same bytes as yann.lecun.com's
# MNIST files and Zalando's Fashion-MNIST release, whose published MD5s they also match).
FILES = {
    "mnist": {
        "train-images-idx3-ubyte.gz": Remote(9_912_422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "train-labels-idx1-ubyte.gz": Remote(28_881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "t10k-images-idx3-ubyte.gz": Remote(1_648_877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz": Remote(4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": Remote(26_421_880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        "train-labels-idx1-ubyte.gz": Remote(29_515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        "t10k-images-idx3-ubyte.gz": Remote(4_422_102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        "t10k-labels-idx1-ubyte.gz": Remote(5_148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    },
}

# Tried in order when no --url is given; a file that fails on one mirror is tried on the next.
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": (
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}


def fetch(name: str, base_url: str | None = None, dest=None, progress: bool = True,
          sha256: dict[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Download the four .gz files of `name` into `dest` and return that directory.

    base_url: where the files are (BASE/train-images-idx3-ubyte.gz ...); default: MIRRORS[name].
    dest: default $CNNC_DATA_DIR/NAME, else ~/.cache/cnnc/data/NAME (where load_dataset looks).
    sha256: overrides for the expected checksums, by file name (tests serve their own files).
    Files already present with the right checksum are kept, not downloaded again.
    """
    known = _known_files(name)
    expected = {file: remote.sha256 for file, remote in known.items()} | dict(sha256 or {})
    directory = Path(dest).expanduser() if dest is not None else default_data_dir(name)
    bases = [base_url] if base_url else list(MIRRORS[name])
    for file, remote in known.items():
        target = directory / file
        if target.is_file() and sha256_of(target) == expected[file]:
            _say(progress, f"{file}: already present, checksum ok")
            continue
        _download_from_any(bases, target, expected[file], remote.size, progress, timeout)
    return directory


def _known_files(name: str) -> dict[str, Remote]:
    if name not in FILES:
        raise CnncError(f"{name}: cannot fetch this data set; `cnnc data fetch` knows {', '.join(FILES)}")
    return FILES[name]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_from_any(bases: list[str], target: Path, expected: str, size: int,
                       progress: bool, timeout: float) -> None:
    """Try each base URL in turn; raise one CnncError listing every failure if none works."""
    failures = []
    for base in bases:
        url = base.rstrip("/") + "/" + target.name
        try:
            return download(url, target, expected, size=size, progress=progress, timeout=timeout)
        except CnncError as e:
            failures.append(e)
    if len(failures) == 1:
        raise failures[0]
    raise CnncError([d for e in failures for d in e.diagnostics])


def download(url: str, target: Path, expected_sha256: str, size: int = 0,
             progress: bool = True, timeout: float = 60.0) -> None:
    """Stream `url` to a temporary file beside `target`; rename it onto `target` only if the SHA-256 matches."""
    try:
        with atomic_path(target, suffix=".part") as tmp:
            actual = _stream(url, Path(tmp), size, progress, timeout)
            if actual != expected_sha256:
                raise CnncError(f"{target.name}: SHA-256 mismatch for {url}: expected {expected_sha256}, "
                                f"got {actual}; the download was discarded")
    except OSError as e:
        raise CnncError(f"{target}: cannot write ({e.strerror or e})") from None


def _stream(url: str, out_path: Path, size: int, progress: bool, timeout: float) -> str:
    """Copy the response body to `out_path` in chunks; return its SHA-256."""
    from ._version import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"cnnc/{__version__}"})
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(out_path, "wb") as out:
            meter = _Meter(url, size or _content_length(response), progress)
            for chunk in iter(lambda: response.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
                meter.advance(len(chunk))
            meter.done()
    except urllib.error.HTTPError as e:
        e.close()
        raise CnncError(f"{url}: download failed: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise CnncError(f"{url}: download failed: {e.reason}") from None
    except (http.client.HTTPException, OSError) as e:  # timeouts, resets, a full disk
        raise CnncError(f"{url}: download failed: {e or type(e).__name__}") from None
    return digest.hexdigest()


def _content_length(response) -> int:
    try:
        return int(response.headers.get("Content-Length") or 0)
    except ValueError:
        return 0


class _Meter:
    """Progress on stderr: a live percentage on a terminal, one line per file otherwise."""

    def __init__(self, url: str, total: int, enabled: bool):
        self.url, self.total, self.seen = url, total, 0
        self.live = enabled and sys.stderr.isatty()
        _say(enabled and not self.live, f"downloading {url} ({_megabytes(total)})")

    def advance(self, n: int) -> None:
        self.seen += n
        if self.live:
            share = f"{100 * self.seen // self.total:3d}%" if self.total else _megabytes(self.seen)
            print(f"\r  {self.url}  {share} of {_megabytes(self.total)}", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.live:
            print(file=sys.stderr)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n else "size unknown"


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr)


__all__ = ["fetch", "download", "sha256_of", "FILES", "MIRRORS"]
