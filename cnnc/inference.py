"""Using a trained classifier: evaluation on a labelled split, and reading inputs for `cnnc predict`.

    result = evaluate(model, ds.x_test, ds.y_test)     # {"accuracy", "loss", "n", "confusion"}
    x, names = read_inputs(["seven.png", "batch.npy"], model.input_shape)
    probs = model.predict_proba(x)                     # (N, K)

Preprocessing of images (stated in `cnnc predict --help` and docs/training.md): Pillow opens the file,
converts it to grayscale ("L") for a 1-channel model or RGB for a 3-channel one, resizes it to the
model's input height and width when the size differs (area-averaged when shrinking, bilinear when
enlarging), and scales the 8-bit values 0..255 to [0, 1]. 16-bit grayscale images are scaled from 0..65535 and floating-point ones
used as they are (each repeated over 3 channels for an RGB model). Nothing else: no inversion, no
centring, no normalisation. `cnnc viz maps` reads its input the same way.
.npy arrays are used as given (float), except uint8 arrays, which are scaled to [0, 1] like images.
"""
from __future__ import annotations

import warnings

import numpy as np

from .diagnostics import CnncError
from .fileio import check_input_file, is_zip, load_npy_checked
from .model import Model

EVAL_BATCH = 500  # samples per forward pass when evaluating; only memory depends on it


class NonFiniteOutputs(CnncError):
    """The network computed inf or NaN: a metric or probability would be NaN, so none is given."""


# ---- evaluation ----------------------------------------------------------------------------------
def evaluate(model: Model, x: np.ndarray, y: np.ndarray, batch: int = EVAL_BATCH) -> dict:
    """Accuracy, mean loss and confusion matrix of a classifier on x: (N, *input_shape), y: (N,) labels.

    confusion[i][j] counts samples of true class i predicted as class j."""
    classes = model.output_shape[0]
    confusion = np.zeros((classes, classes), dtype=np.int64)
    loss_sum = 0.0
    for start in range(0, len(x), batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        with np.errstate(over="ignore", invalid="ignore"):  # reported below, not as NumPy warnings
            scores = model.forward(xb, train=False)   # (B, K)
        if not np.isfinite(scores).all():
            bad = start + int(np.flatnonzero(~np.isfinite(scores).all(axis=1))[0])
            raise NonFiniteOutputs(f"the network's outputs are not finite (inf or NaN) for sample {bad} of {len(x)}: "
                                   f"no accuracy or loss can be reported; the weights or the inputs are too large "
                                   f"for {model.dtype.name} arithmetic")
        loss, _ = model.loss(scores, yb)
        loss_sum += loss * len(xb)
        np.add.at(confusion, (yb, scores.argmax(axis=1)), 1)
    correct = int(np.trace(confusion))
    return {"accuracy": correct / len(x), "loss": loss_sum / len(x), "n": int(len(x)), "confusion": confusion}


def confusion_table(confusion: np.ndarray) -> str:
    """The confusion matrix as aligned text: rows are true classes, columns predicted classes."""
    k = confusion.shape[0]
    width = max(len(str(int(confusion.max()))), len(str(k - 1)), 3)
    head = "true\\pred " + " ".join(f"{j:>{width}}" for j in range(k))
    rows = [f"{i:>9} " + " ".join(f"{int(v):>{width}}" for v in confusion[i]) for i in range(k)]
    return "\n".join([head] + rows)


# ---- inputs for predict --------------------------------------------------------------------------
IMAGE_MODES = {1: "L", 3: "RGB"}


def read_inputs(paths: list[str], input_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """Every file as model input: x: (N, *input_shape) float32, and one name per sample
    ("seven.png", or "batch.npy[3]" for sample 3 of a batch)."""
    arrays, names = [], []
    for path in paths:
        x = read_npy(path, input_shape) if str(path).lower().endswith(".npy") else read_image(path, input_shape)
        arrays.append(x)
        names += [str(path)] if len(x) == 1 else [f"{path}[{i}]" for i in range(len(x))]
    return np.concatenate(arrays).astype(np.float32), names


def read_image(path, input_shape: tuple[int, ...]) -> np.ndarray:
    """An image file -> (1, C, H, W) in [0, 1] (see the module docstring for the preprocessing)."""
    if len(input_shape) != 3 or input_shape[0] not in IMAGE_MODES:
        raise CnncError(f"{path}: the model takes input {list(input_shape)}, not 1- or 3-channel images; "
                        "give a .npy array instead")
    channels, height, width = input_shape
    image = _open_image(path)
    wide = image.mode == "F" or image.mode == "I" or image.mode.startswith("I;16")  # float or 16-bit grey
    high = 1.0 if image.mode == "F" else 65535.0 if wide else 255.0
    image = image.convert("F" if wide else IMAGE_MODES[channels])  # ("F" keeps the precision)
    if image.size != (width, height):
        from PIL import Image

        shrinking = image.width > width or image.height > height
        image = image.resize((width, height), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(high)  # (H, W) or (H, W, 3)
    chw = np.repeat(pixels[None], channels, axis=0) if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return chw[None]                                                   # (1, C, H, W)


MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # 8192 x 8192: far above any input a model takes; Pillow's bomb limit is 89M


def _open_image(path):
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise CnncError(f"{path}: reading images needs Pillow (pip install 'cnnc[viz]', or pip install pillow), "
                        f"or give a .npy array") from None
    try:
        check_input_file(path, "an image or a .npy file")
    except CnncError as e:
        if "is a directory" in str(e):
            raise CnncError(f"{path}: is a directory, expected an image or a .npy file") from None
        raise
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > MAX_IMAGE_PIXELS:
                raise CnncError(f"{path}: the image declares {width:,} x {height:,} pixels, more than the "
                                f"{MAX_IMAGE_PIXELS:,} cnnc reads (a decompression bomb, or a photo to shrink first)")
            image.load()
        return image
    except CnncError:
        raise
    except FileNotFoundError:
        raise CnncError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CnncError(f"{path}: is a directory, expected an image or a .npy file") from None
    except UnidentifiedImageError:
        raise CnncError(f"{path}: not an image Pillow can read (PNG, PGM, JPEG, ...) and not a .npy array") from None
    except Image.DecompressionBombError as e:
        raise CnncError(f"{path}: refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError, MemoryError) as e:
        raise CnncError(f"{path}: cannot read the image ({e or type(e).__name__})") from None


def read_npy(path, input_shape: tuple[int, ...]) -> np.ndarray:
    """A .npy array -> (N, *input_shape): one sample (*input_shape), (H, W) for a 1-channel image
    model, or a batch (N, *input_shape) / (N, H, W). uint8 is scaled to [0, 1]; floats are used as given."""
    a = _load_npy(path)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / np.float32(255.0)
    elif a.dtype.kind not in "fiu":
        raise CnncError(f"{path}: holds {a.dtype} values; expected a numeric array (float, or uint8 0..255)")
    x = _as_batch(a, tuple(input_shape))
    if x is None:
        shape = tuple(input_shape)
        forms = [f"{shape} (one sample)", f"(N, {', '.join(map(str, shape))}) (a batch)"]
        if len(shape) == 3 and shape[0] == 1:
            forms[1:1] = [f"{shape[1:]} (one image)", f"(N, {shape[1]}, {shape[2]})"]
        raise CnncError(f"{path}: array of shape {a.shape} does not fit the model's input {list(shape)}; "
                        f"expected {' or '.join(forms)}")
    if not np.isfinite(x).all():
        raise CnncError(f"{path}: contains NaN or infinite values")
    return x.astype(np.float32)


def _as_batch(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    if a.shape == shape:
        return a[None]
    if a.ndim == len(shape) + 1 and a.shape[1:] == shape and len(a):
        return a
    if len(shape) == 3 and shape[0] == 1:   # 1-channel images may come without the channel axis
        if a.shape == shape[1:]:
            return a[None, None]
        if a.ndim == 3 and a.shape[1:] == shape[1:] and len(a):
            return a[:, None]
    return None


def _load_npy(path) -> np.ndarray:
    try:
        check_input_file(path, "a .npy file")
    except CnncError as e:
        if "is a directory" in str(e):
            raise CnncError(f"{path}: is a directory, expected a .npy file") from None
        raise
    if is_zip(path):
        raise CnncError(f"{path}: is an .npz archive; predict reads one .npy array per file")
    return load_npy_checked(path, "a .npy file")


def probabilities(model: Model, x: np.ndarray, names: list[str]) -> np.ndarray:
    """model.predict_proba(x), refusing outputs that are not finite (the input named) instead of NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        probs = model.predict_proba(x)
    finite = np.isfinite(probs).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise NonFiniteOutputs(f"{names[bad]}: the network's outputs for this input are not finite (inf or NaN), so "
                               f"it has no class probabilities; its values (largest magnitude "
                               f"{float(np.abs(x[bad]).max()):.3g}) or the weights are too large for "
                               f"{model.dtype.name} arithmetic")
    return probs


def light_background(x: np.ndarray) -> np.ndarray:
    """x: (N, C, H, W) in [0, 1] -> (N,) bool: whether each picture's outer frame of pixels averages above
    one half, i.e. dark ink on light paper. MNIST, the digits and Fashion-MNIST are light on dark, and a
    network trained on them is confidently wrong on the other polarity."""
    if x.ndim != 4 or min(x.shape[2:]) < 3:
        return np.zeros(len(x), dtype=bool)
    frame = np.concatenate([x[:, :, 0, :], x[:, :, -1, :], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], axis=2)
    return frame.reshape(len(x), -1).mean(axis=1) > 0.5


def top_k(probs: np.ndarray, k: int = 3) -> list[list[tuple[int, float]]]:
    """probs: (N, K) -> for each sample the k most likely (class, probability), most likely first."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(int(c), float(p[c])) for c in row] for p, row in zip(probs, order)]


__all__ = ["NonFiniteOutputs", "probabilities", "evaluate", "confusion_table", "read_inputs", "read_image", "read_npy", "top_k"]
