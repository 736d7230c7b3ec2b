"""Shared by every figure: the optional plotting dependencies, writing a figure as PNG or SVG, and
reading a spec and its trained weights."""
from __future__ import annotations

import io
import os
import re
from pathlib import Path


from ..diagnostics import CnncError
from ..fileio import atomic_path
from ..ir import Layer, Network


VIZ_EXTRA = "pip install 'cnnc[viz]'"
IMAGE_FORMATS = ("png", "svg")
PNG_DPI = 150
TIMES = "×"  # in sizes: 5×5


# ---- optional dependencies -------------------------------------------------------------------------
def require_matplotlib():
    """A function (width, height in inches) -> a new Figure on an Agg canvas; a CnncError naming the
    extra if matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CnncError(f"plotting needs matplotlib, which is not installed: {VIZ_EXTRA}") from None

    def new_figure(width: float, height: float) -> Figure:
        fig = Figure(figsize=(width, height))
        FigureCanvasAgg(fig)
        return fig

    return new_figure


def require_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise CnncError(f"reading images needs Pillow, which is not installed: {VIZ_EXTRA}") from None
    return Image


def image_format(path) -> str:
    """'png' or 'svg' from the output file's suffix."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in IMAGE_FORMATS:
        raise CnncError(f"{os.fspath(path)}: cannot tell the image format from the suffix "
                        f"'{Path(path).suffix}'; use .png or .svg")
    return suffix


def save_figure(fig, path) -> None:
    """Write a figure as PNG or SVG (by suffix), atomically, with the mode a plain open() would give."""
    fmt = image_format(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=PNG_DPI, facecolor="white")


def figure_svg(fig) -> str:
    """The figure as an <svg> element for inlining in an HTML page: no XML prolog, no metadata block
    (matplotlib's RDF names remote vocabularies and a date)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", facecolor="white")
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.DOTALL)


# ---- loading a trained model -----------------------------------------------------------------------
def read_spec(path, model: str | None) -> Network:
    from ..frontend import read_network

    return read_network(path, model)


def trained_model(network: Network, weights):
    """A NumPy-backend model of `network` holding the parameters in the .npz file `weights`."""
    from ..backends.numpy_backend import NumpyModel

    m = NumpyModel(network, dtype="float32")
    try:
        m.load_weights(weights)
    except ValueError as e:
        raise CnncError(str(e)) from None
    return m


def kind_label(layer: Layer) -> str:
    return f"{layer.kind} + {layer.activation}" if layer.activation else layer.kind
