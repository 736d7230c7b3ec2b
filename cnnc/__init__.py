"""cnnc: a compiler for convolutional networks written in a small declarative language.

Pipeline: text -> parse tree (grammar/cnn.lark) -> AST (cnnc.syntax) -> shape-inferred IR
(cnnc.shapes -> cnnc.ir.Network) -> a backend (cnnc.backends.numpy_backend, cnnc.backends.c_backend).
"""
from __future__ import annotations

import os

from ._version import __version__
from .diagnostics import CnncError, SpecError
from .frontend import network_from_text, networks_from_file, read_network
from .model import Model  # every backend's Model; brings in NumPy, which any use of cnnc needs

BACKENDS = ("numpy", "c")


def __getattr__(name: str):
    """cnnc.optim (SGD, Adam) is imported on first use: loading a model does not need it."""
    if name == "optim":
        import importlib

        return importlib.import_module(".optim", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(path, backend: str = "numpy", model: str | None = None, dtype: str = "float32", seed: int = 0, **options):
    """Parse and shape-check a .cnn file and build a runnable Model on the chosen backend.

    path: a .cnn file, or (backend "c") a directory written by `cnnc compile`.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a .cnn file (or a `cnnc compile` directory) as str or Path; got {path!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "c":
        from .backends.c_backend import load_c_model

        return load_c_model(path, model=model, dtype=dtype, seed=seed, **options)
    if options:
        raise ValueError(f"the numpy backend takes no options; got {', '.join(sorted(options))}")
    if os.path.isfile(os.path.join(path, "manifest.json")):
        raise CnncError(f"{os.fspath(path)}: a directory written by `cnnc compile`, which the C backend loads: "
                        f"cnnc.load(path, backend='c')")
    from .backends.numpy_backend import NumpyModel

    return NumpyModel(read_network(path, model), dtype=dtype, seed=seed)


__all__ = ["load", "Model", "optim", "read_network", "networks_from_file", "network_from_text", "CnncError", "SpecError", "__version__"]
