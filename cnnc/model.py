"""The Model API shared by every backend.

    m = cnnc.load("specs/lenet5.cnn", backend="numpy", dtype="float32", seed=0)
    y = m.forward(x, train=False)     # x: (N, *m.input_shape) -> y: (N, *m.output_shape)
    loss, dy = m.loss(y, target)      # mean over the batch
    dx = m.backward(dy)               # fills m.grads (same keys and shapes as m.params)
    m.buffers                         # batch norm's running statistics: updated by forward(x, train=True)

This base class owns everything that is the same for every backend: checking inputs, initialising
parameters from the seed, drawing dropout masks, the loss, and saving and loading weights.
A backend subclass supplies storage and arithmetic:

    _allocate()                      -> (params, grads): dicts of zeroed arrays, one per ParamSpec
    _allocate_buffers()              -> {name: array} per BufferSpec (default: NumPy zeros)
    _forward(x, train, masks)        -> y     x: (N, *input_shape) C-contiguous, of self.dtype;
                                              with train, updates self.buffers (the running statistics)
    _backward(dy)                    -> dx    overwrites self.grads
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np

from .diagnostics import CnncError
from .fileio import (ArrayHeader, atomic_path, available_memory, check_input_file, describe_contents, human_size,
                     is_zip, load_npz_checked, npy_headers_in_npz)
from .ir import BufferSpec, Network, ParamSpec

DTYPES = ("float32", "float64")


def initial_value(spec: ParamSpec, rng: np.random.Generator) -> np.ndarray:
    """He-normal for layers feeding ReLU-like activations, Glorot-uniform otherwise, zero biases (and
    batch norm's weight ones, its bias zeros, as PyTorch)."""
    if spec.init == "zeros":
        return np.zeros(spec.shape)
    if spec.init == "ones":
        return np.ones(spec.shape)
    if spec.init == "he":
        return rng.normal(0.0, np.sqrt(2.0 / spec.fan_in), size=spec.shape)
    limit = np.sqrt(6.0 / (spec.fan_in + spec.fan_out))
    return rng.uniform(-limit, limit, size=spec.shape)


def check_dtype(dtype) -> str:
    """The dtype's name if cnnc computes in it (DTYPES), else a ValueError. Called once where a dtype enters
    (a Model's constructor, a compilation); the functions it is passed on to take the checked name."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return name


class Model:
    backend_name = "abstract"

    def __init__(self, network: Network, dtype: str = "float32", seed: int = 0):
        self._setup(network, check_dtype(dtype), seed)

    def _setup(self, network: Network, dtype: str, seed: int) -> None:
        """The constructor's work, for a dtype already checked (a backend's constructor checks it once,
        where it first needs it, and calls this)."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
        self.network = network
        self.dtype = np.dtype(dtype)
        self.seed = int(seed)
        check_parameter_memory(network, self.dtype)
        try:
            params, grads = self._allocate()
            self.params, self.grads = TensorDict(params, "params"), TensorDict(grads, "grads")
            self.buffers = TensorDict(self._allocate_buffers(), "buffers")
            self.reset_parameters(self.seed)
        except MemoryError:
            raise CnncError(parameter_memory_message(network, self.dtype, available_memory())) from None
        # Dropout masks come from their own stream so that training is reproducible from the seed.
        self.dropout_rng = np.random.default_rng([self.seed, 1])
        self._forward_batch: int | None = None  # batch size of the last forward, None before any

    # ---- what a backend provides -------------------------------------------------------------
    def _allocate(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        raise NotImplementedError

    def _allocate_buffers(self) -> dict[str, np.ndarray]:
        """One zeroed array per BufferSpec (batch norm's running statistics); a backend may hand out views
        on its own memory instead."""
        return {spec.name: np.zeros(spec.shape, self.dtype) for spec in self.network.buffer_specs}

    def _forward(self, x: np.ndarray, train: bool, masks: dict[str, np.ndarray] | None) -> np.ndarray:
        raise NotImplementedError

    def _check_batch_statistics(self, n: int) -> None:
        """Batch norm in training mode needs two or more values per channel (PyTorch refuses one too)."""
        for layer in self.network.layers:
            if layer.kind == "batchnorm" and n * (layer.in_size // layer.in_shape[0]) < 2:
                raise CnncError(f"batchnorm '{layer.name}' needs more than one value per channel in training mode; "
                                f"got a batch of {n} with input {list(layer.in_shape)}: train with a batch of 2 or "
                                "more, or run inference (train=False)")

    def _backward(self, dy: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # ---- shapes --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.network.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.network.input_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.network.output_shape

    @property
    def loss_kind(self) -> str:
        """The spec's loss; without a loss statement, cross_entropy for flat outputs, else mse."""
        if self.network.loss:
            return self.network.loss
        return "cross_entropy" if len(self.output_shape) == 1 else "mse"

    def reset_parameters(self, seed: int) -> None:
        """Parameters drawn from the seed; running statistics back to their initial 0 (mean) and 1 (var)."""
        rng = np.random.default_rng(seed)
        for spec in self.network.param_specs:
            self.params[spec.name][...] = initial_value(spec, rng)
        for buffer in self.network.buffer_specs:
            self.buffers[buffer.name][...] = buffer.fill

    # ---- the API -------------------------------------------------------------------------------
    def forward(self, x, train: bool = False) -> np.ndarray:
        """x: (N, *input_shape) -> (N, *output_shape), the last layer's output before the loss.
        train=True: dropout drops, batch norm normalises with the batch's statistics and updates m.buffers;
        train=False (inference): dropout is the identity, batch norm uses the running statistics."""
        if not isinstance(train, (bool, np.bool_)):
            raise ValueError(f"train must be True or False; got {train!r}")
        x = self._checked_array(x, "x", (None, *self.input_shape))
        masks = self._dropout_masks(x.shape[0]) if train else None
        y = self._forward(x, bool(train), masks)
        self._forward_batch = x.shape[0]
        return y

    def loss(self, y, target) -> tuple[float, np.ndarray]:
        """Mean loss over the batch and its gradient dy with respect to y."""
        y = self._checked_array(y, "y", (None, *self.output_shape))
        if self.loss_kind == "cross_entropy":
            return cross_entropy(y, self._checked_labels(target, y.shape[0]))
        if self.loss_kind == "nll":
            return nll(y, self._checked_labels(target, y.shape[0]))
        target = self._checked_array(target, "target", y.shape)
        return mse(y, target)

    def backward(self, dy) -> np.ndarray:
        """dy: (N, *output_shape), the gradient of the loss w.r.t. the last forward's output.
        Returns dx: (N, *input_shape) and overwrites m.grads."""
        if self._forward_batch is None:
            raise ValueError("backward() needs a forward() first: there is no saved forward pass to differentiate")
        dy = self._checked_array(dy, "dy", (self._forward_batch, *self.output_shape))
        return self._backward(dy)

    def predict_proba(self, x) -> np.ndarray:
        """Class probabilities (softmax of the scores) for a flat classifier output."""
        y = self.forward(x, train=False).astype(np.float64)
        z = np.exp(y - y.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    # ---- weights files -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters and buffers under PyTorch's names ("c1.weight", "bn1.running_mean")."""
        return {name: value.copy() for name, value in {**self.params, **self.buffers}.items()}

    def save(self, path) -> None:
        """Write the parameters and buffers to an .npz keyed by name, atomically."""
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"save takes a file path; got {type(path).__name__}")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **self.params, **self.buffers)

    def load_weights(self, source) -> None:
        """Load parameters and buffers from an .npz path or a dict of arrays (a PyTorch state_dict converted
        to NumPy arrays loads as it is; its `num_batches_tracked` entries are ignored); every name, shape and
        dtype is checked. A training checkpoint (.ckpt.npz) is refused with a message naming its run's
        weights file."""
        is_path = isinstance(source, (str, os.PathLike))
        if not is_path and not isinstance(source, Mapping):
            raise ValueError(f"load_weights takes an .npz path or a mapping of name -> array; got {type(source).__name__}")
        where = f"weights file {os.fspath(source)}" if is_path else "weights"
        from .checkpoint import checkpoint_given_as_weights, is_checkpoint  # a training run's format, asked for here only

        if is_path:  # names, shapes and dtypes first, from the headers: a mismatched array is never read
            headers = without_torch_extras(self.network, read_npz_headers(source))
            problems = [] if is_checkpoint(headers) else weight_mismatches(self.network, headers)
            if problems:
                raise ValueError(f"{where} does not fit model '{self.name}':\n  " + "\n  ".join(problems))
        arrays = without_torch_extras(self.network, read_npz(source) if is_path else dict(source))
        if is_path and is_checkpoint(arrays):
            raise ValueError(checkpoint_given_as_weights(source, arrays))
        problems = weight_mismatches(self.network, arrays, self.dtype)
        if problems:
            raise ValueError(f"{where} does not fit model '{self.name}':\n  " + "\n  ".join(problems))
        for name, value in arrays.items():
            (self.params if name in self.params else self.buffers)[name][...] = value

    # ---- input checking ------------------------------------------------------------------------
    def _checked_array(self, a, what: str, shape: tuple) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype.kind not in "fiu":
            raise ValueError(f"{what} must be a real numeric array (float32 or float64); got dtype {a.dtype}")
        expected = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
            raise ValueError(f"{what} must have shape {expected} for model '{self.name}'; got {tuple(a.shape)}")
        if a.shape[0] == 0:
            raise ValueError(f"{what} must hold at least one sample; got an empty batch {tuple(a.shape)}")
        given = a
        with np.errstate(over="ignore"):
            a = np.ascontiguousarray(a, dtype=self.dtype)
        if not np.isfinite(a).all():
            if np.isfinite(given).all():
                raise ValueError(f"{what} has values beyond the {self.dtype.name} range (largest magnitude "
                                 f"{np.abs(given).max():.3g}); scale the data or use dtype='float64'")
            raise ValueError(f"{what} contains NaN or infinite values; cnnc rejects non-finite inputs")
        return a

    def _checked_labels(self, target, n: int) -> np.ndarray:
        t = np.asarray(target)
        classes = self.output_shape[0]
        if t.dtype.kind not in "iu" and not (t.dtype.kind == "f" and np.all(t == np.round(t))):
            raise ValueError(f"{self.loss_kind} targets must be integer class labels; got dtype {t.dtype}")
        if t.shape != (n,):
            raise ValueError(f"{self.loss_kind} targets must have shape ({n},), one label per sample; got {t.shape}")
        outside = (t < 0) | (t >= classes)  # on the given values: 1e30 must not wrap to a negative int64
        if outside.any():
            bad = t[outside][0]
            shown = f"{bad:g}" if t.dtype.kind == "f" else str(bad)
            raise ValueError(f"labels must be in [0, {classes - 1}] for {classes} classes; got {shown}")
        return t.astype(np.int64)

    def _dropout_masks(self, n: int) -> dict[str, np.ndarray] | None:
        """Inverted dropout: per dropout layer a (N, *shape) array of 0 or 1/(1-rate)."""
        masks = {}
        for layer in self.network.layers:
            if layer.kind == "dropout" and layer.rate > 0:
                keep = self.dropout_rng.random((n, *layer.in_shape)) >= layer.rate
                masks[layer.name] = (keep / (1.0 - layer.rate)).astype(self.dtype)
        return masks or None


def check_parameter_memory(network: Network, dtype) -> None:
    """Refuse, before allocating, a model whose parameters and gradients (plus the float64 initial values of
    its largest tensor) need more memory than is available: a CnncError naming the largest tensor and its size."""
    itemsize = np.dtype(dtype).itemsize
    sizes = [math.prod(p.shape) for p in network.param_specs]
    need = 2 * itemsize * sum(sizes) + 8 * max(sizes, default=0)
    free = available_memory()
    if need > free:
        raise CnncError(parameter_memory_message(network, dtype, free))


def parameter_memory_message(network: Network, dtype, free: int) -> str:
    itemsize = np.dtype(dtype).itemsize
    specs = list(network.param_specs)
    total = sum(math.prod(p.shape) for p in specs)
    big = max(specs, key=lambda p: math.prod(p.shape)) if specs else None
    largest = (f"its largest tensor '{big.name}' of shape {tuple(big.shape)} holds {math.prod(big.shape):,} values "
               f"({human_size(math.prod(big.shape) * itemsize)} as {np.dtype(dtype).name}); " if big else "")
    return (f"model '{network.name}': {largest}its {total:,} parameters and their gradients need "
            f"{human_size(2 * total * itemsize)}, more than the {human_size(free)} of memory available")


class TensorDict(dict):
    """A model's params or grads: the backend's own arrays, which must stay the same objects (the C
    backend's are views on its memory). Assigning `m.params[name] = value` copies value into place,
    checking its shape; adding or removing names is refused."""

    def __init__(self, arrays: dict[str, np.ndarray], what: str):
        super().__init__(arrays)
        self.what = what

    def __setitem__(self, name, value) -> None:
        if name not in self:
            raise KeyError(f"{self.what} has no tensor '{name}'; it has: {', '.join(self)}")
        target = dict.__getitem__(self, name)
        if value is target:  # `m.params[k] -= step` rebinds the same array after updating it in place
            return
        value = np.asarray(value)
        if value.shape != target.shape or value.dtype.kind not in "fiu":
            raise ValueError(f"{self.what}['{name}'] expects a real array of shape {target.shape}; "
                             f"got shape {value.shape}, dtype {value.dtype}")
        target[...] = value

    def __delitem__(self, name) -> None:
        raise TypeError(f"{self.what} has a fixed set of tensors; '{name}' cannot be removed")

    def _fixed(self, *args, **kwargs):
        raise TypeError(f"{self.what} has a fixed set of tensors; none can be removed or added")

    pop = popitem = clear = setdefault = _fixed

    def update(self, *args, **kwargs) -> None:
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def __ior__(self, other):
        self.update(other)
        return self


def cross_entropy(y: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Softmax + negative log-likelihood, mean over the batch. y: (N, K) scores, labels: (N,)."""
    n = y.shape[0]
    shifted = y - y.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_sum
    loss = -log_p[np.arange(n), labels].mean()
    dy = np.exp(log_p)
    dy[np.arange(n), labels] -= 1.0
    return float(loss), (dy / n).astype(y.dtype)


def nll(y: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Negative log-likelihood of log-probabilities y: (N, K), mean over the batch (PyTorch's nll_loss):
    loss = -mean_n y[n, labels[n]]; dy is -1/N at each sample's label, 0 elsewhere."""
    n = y.shape[0]
    dy = np.zeros_like(y)
    dy[np.arange(n), labels] = -1.0 / n
    return float(-y[np.arange(n), labels].mean()), dy


def mse(y: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean squared error over every element (PyTorch's MSELoss default)."""
    diff = y - target
    return float(np.mean(diff * diff)), (2.0 * diff / diff.size).astype(y.dtype)


def read_npz_headers(path) -> dict[str, ArrayHeader]:
    """What each array of a weights .npz declares (shape, dtype), read from the headers alone; a missing file,
    a directory, a FIFO or device, another kind of file, a damaged archive or an array declaring more than the
    file holds is a ValueError naming the file."""
    where = f"weights file {os.fspath(path)}"
    try:
        check_input_file(path, "a weights .npz file")
    except CnncError as e:
        if "no such file" in str(e):
            raise ValueError(f"{where} does not exist") from None
        if "is a directory" in str(e):
            raise ValueError(f"{where}: is a directory, expected a .npz file") from None
        raise ValueError(f"{where}: {_without_path(e, path)}") from None
    try:
        if not is_zip(path):  # a text file would otherwise get NumPy's message about pickled data
            raise ValueError(f"{where}: not a NumPy .npz archive (it is {describe_contents(path)})")
    except OSError as e:
        raise ValueError(f"{where} cannot be read ({e.strerror or e})") from None
    try:
        return npy_headers_in_npz(path)
    except CnncError as e:
        raise ValueError(f"{where}: {_without_path(e, path)}") from None


def read_npz(path) -> dict[str, np.ndarray]:
    """The arrays of a weights .npz, after `read_npz_headers` has checked what each declares; any failure is
    a ValueError naming the file."""
    read_npz_headers(path)
    try:
        return load_npz_checked(path, "a weights .npz file")
    except CnncError as e:
        raise ValueError(f"weights file {os.fspath(path)}: {_without_path(e, path)}") from None


def _without_path(error: CnncError, path) -> str:
    """The message of a fileio error about `path`, without the path it starts with."""
    message, prefix = error.diagnostics[0].message, f"{os.fspath(path)}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def without_torch_extras(network: Network, arrays: dict) -> dict:
    """`arrays` without PyTorch entries cnnc has no use for (BatchNorm's num_batches_tracked)."""
    return {name: value for name, value in arrays.items() if not _is_ignored_torch_entry(network, name)}


def _is_ignored_torch_entry(network: Network, name) -> bool:
    """PyTorch's BatchNorm keeps `num_batches_tracked` beside its running statistics; cnnc has no use for it."""
    if not isinstance(name, str) or not name.endswith(".num_batches_tracked"):
        return False
    layer = name[: -len(".num_batches_tracked")]
    return any(b.name == f"{layer}.running_mean" for b in network.buffer_specs)


def weight_mismatches(network: Network, arrays: dict[str, np.ndarray], dtype=None) -> list[str]:
    """Every way `arrays` fails to match the network's parameters and buffers, one line each. With `dtype` (the
    model's), finite values that it cannot hold (1e300 for float32, which would become inf) are one too."""
    specs: dict[str, ParamSpec | BufferSpec] = {p.name: p for p in network.param_specs}
    specs.update({b.name: b for b in network.buffer_specs})
    problems = [f"missing {'buffer' if isinstance(spec, BufferSpec) else 'parameter'} '{name}' with shape {spec.shape}"
                for name, spec in specs.items() if name not in arrays]
    problems += [f"unexpected array '{name}' (the model has no such parameter)" for name in arrays if name not in specs]
    for name, value in arrays.items():
        if name not in specs:
            continue
        value = value if isinstance(value, ArrayHeader) else np.asarray(value)  # a header: shape and dtype only
        if value.dtype.kind != "f":
            problems.append(f"'{name}' has dtype {value.dtype}; expected floating point")
        elif tuple(value.shape) != specs[name].shape:
            problems.append(f"'{name}' has shape {tuple(value.shape)}; expected {specs[name].shape}")
        elif isinstance(value, ArrayHeader):
            continue
        elif not np.isfinite(value).all():
            problems.append(f"'{name}' contains NaN or infinite values")
        elif dtype is not None and value.size and np.abs(value).max() > np.finfo(dtype).max:
            problems.append(f"'{name}' holds {float(np.abs(value).max()):.3g}, beyond the {np.dtype(dtype).name} "
                            f"range of the model (largest {float(np.finfo(dtype).max):.3g})")
    return problems
