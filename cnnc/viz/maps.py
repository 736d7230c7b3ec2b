"""`cnnc viz maps`: what every layer makes of one input."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..diagnostics import CnncError
from ..ir import Layer, Network
from ..shapes import fmt_shape
from .figure import kind_label, require_matplotlib


MAX_MAPS = 16  # channels shown per layer


def read_input(path, shape: tuple[int, ...]) -> np.ndarray:
    """One input, read exactly as `cnnc predict` reads it (cnnc.inference): an image (to the model's
    channels, resized, scaled to [0, 1]) or a .npy array of one sample. Returns x: shape, float32."""
    from ..inference import read_inputs

    if Path(path).is_dir():
        raise CnncError(f"{path}: is a directory; --input takes one image or .npy file")
    x, _ = read_inputs([path], tuple(shape))
    if len(x) != 1:
        stored = list(np.load(path, mmap_mode="r").shape)
        raise CnncError(f"{path}: an array of shape {stored} is a batch of {len(x)} inputs; --input takes one "
                        f"input of shape {list(shape)}")
    return x[0]


def layer_outputs(model, x: np.ndarray) -> list[tuple[Layer, np.ndarray]]:
    """Every layer's output for one input, x: (*input_shape,) -> [(layer, y: layer.out_shape)].

    The Model API returns only the last output, so each single-input layer runs as a one-layer network
    of the NumPy backend fed with the tensor it reads and holding that layer's trained parameters (in
    inference mode); merges (add, concat) are computed from their operands' outputs."""
    from ..backends.numpy_backend import NumpyModel, add_forward, concat_forward

    values = {model.network.input_name: x[None]}
    outputs = []
    state = model.state_dict()
    for layer in model.network.layers:
        xs = [values[name] for name in layer.inputs]
        if layer.kind in ("add", "concat"):
            y = add_forward(xs) if layer.kind == "add" else concat_forward(xs)
        else:
            single = replace(model.network, input_name=layer.inputs[0], input_shape=layer.in_shape, layers=(layer,),
                             warnings=())
            step = NumpyModel(single, dtype=model.dtype.name)
            step.load_weights({spec.name: state[spec.name] for spec in (*layer.params, *layer.buffers)})
            y = step.forward(xs[0], train=False)
        values[layer.name] = y
        outputs.append((layer, y[0]))
    return outputs


def maps_figure(network: Network, x: np.ndarray, outputs: list[tuple[Layer, np.ndarray]], source: str = ""):
    """One row per layer: its output channels as images on one colour scale per row, flat outputs as
    bars; layers that pass values on unchanged (flatten, dropout at inference) get a one-line note."""
    new_figure = require_matplotlib()
    rows = [("input", network.input_name, x, None)] + [(kind_label(layer), layer.name, y, layer) for layer, y in outputs]
    label_w, tile, gap_h, title_h, bottom = 1.9, 0.82, 0.12, 0.7, 0.25
    heights = [NOTE_ROW_H if _unchanged_note(layer, rows[i - 1][1] if i else "") else MAP_ROW_H
               for i, (_, _, _, layer) in enumerate(rows)]
    body_w = max(MAX_MAPS * tile, 6.0)
    width, height = label_w + body_w + 1.3, title_h + sum(heights) + bottom
    fig = new_figure(width, height)
    title = f"{network.name}: what each layer makes of {Path(source).name or 'the input'}"
    fig.text(0.15 / width, 1 - 0.3 / height, title, fontsize=12, fontweight="bold", va="center")
    top = title_h
    for i, ((kind, name, y, layer), row_h) in enumerate(zip(rows, heights)):
        box = (label_w, height - top - row_h + gap_h, body_w, row_h - 2 * gap_h)  # inches: x, y, w, h
        middle = 1 - (top + row_h / 2) / height
        fig.text(0.15 / width, middle + 0.12 / height, name, fontsize=10, fontweight="bold", va="center")
        fig.text(0.15 / width, middle - 0.14 / height, f"{kind} {fmt_shape(y.shape)}", fontsize=7.5,
                 color="#555555", va="center")
        note = _unchanged_note(layer, rows[i - 1][1] if i else "")
        is_last = layer is not None and layer is network.layers[-1]
        if note:
            fig.text(label_w / width, middle, note, fontsize=8.5, color="#777777", va="center", style="italic")
        elif y.ndim == 1:
            _draw_bars(fig, box, y, width, height, highlight=is_last and network.loss == "cross_entropy")
        elif y.ndim == 2:
            _draw_sequence_map(fig, box, y, width, height)
        elif layer is None and y.shape[0] == 3:
            _draw_rgb(fig, box, y, width, height, tile)
        else:
            _draw_channel_tiles(fig, box, y, width, height, tile, numbered=len(y) > 1)
        top += row_h
    return fig


MAP_ROW_H, NOTE_ROW_H = 1.05, 0.6


def _unchanged_note(layer: Layer | None, previous: str) -> str:
    """What to say instead of a picture for a layer whose output holds its input's values unchanged."""
    if layer is None:
        return ""
    if layer.kind == "flatten":
        return f"the {layer.out_shape[0]:,} values of {previous}, in (channel, row, column) order"
    if layer.kind == "dropout":
        return f"the values of {previous} unchanged: dropout is the identity at inference"
    return ""


def _axes_at(fig, box, width, height):
    x, y, w, h = box
    return fig.add_axes((x / width, y / height, w / width, h / height))


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_channel_tiles(fig, box, y: np.ndarray, width, height, tile, numbered: bool = True) -> None:
    """y: (C, H, W): the first MAX_MAPS channels side by side on one shared colour scale, and a colour bar."""
    x0, y0, _, h = box
    shown = min(len(y), MAX_MAPS)
    lo, hi = float(y.min()), float(y.max())
    hi = hi if hi > lo else lo + 1e-6
    side = min(h, tile - 0.06)
    for c in range(shown):
        ax = _axes_at(fig, (x0 + c * tile, y0 + (h - side) / 2, side, side), width, height)
        im = ax.imshow(y[c], cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
        _bare(ax)
        if numbered:
            ax.set_title(str(c), fontsize=6, pad=1.5, color="#555555")
    cax = _axes_at(fig, (x0 + shown * tile + 0.1, y0 + (h - side) / 2, 0.1, side), width, height)
    fig.colorbar(im, cax=cax).ax.tick_params(labelsize=6)
    if shown < len(y):
        fig.text((x0 + shown * tile + 0.55) / width, (y0 + h / 2) / height, f"first {shown}\nof {len(y)}\nchannels",
                 fontsize=7, color="#777777", va="center")


def _draw_rgb(fig, box, y: np.ndarray, width, height, tile) -> None:
    """y: (3, H, W) in [0, 1] shown as one colour image."""
    x0, y0, _, h = box
    side = min(h, tile - 0.06)
    ax = _axes_at(fig, (x0, y0 + (h - side) / 2, side, side), width, height)
    ax.imshow(np.clip(np.moveaxis(y, 0, -1), 0, 1), interpolation="nearest")
    _bare(ax)


def _draw_sequence_map(fig, box, y: np.ndarray, width, height) -> None:
    """y: (C, L): one row per channel."""
    x0, y0, w, h = box
    ax = _axes_at(fig, (x0, y0, w - 0.6, h), width, height)
    im = ax.imshow(y[:MAX_MAPS * 4], cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_yticks([])
    ax.tick_params(labelsize=6)
    cax = _axes_at(fig, (x0 + w - 0.5, y0, 0.1, h), width, height)
    fig.colorbar(im, cax=cax).ax.tick_params(labelsize=6)


def _draw_bars(fig, box, y: np.ndarray, width, height, highlight: bool) -> None:
    """y: (D,): one bar per value; for a classifier's scores the winning class is highlighted."""
    x0, y0, w, h = box
    bar_w = min(w - 0.6, max(1.6, 0.22 * len(y)))
    ax = _axes_at(fig, (x0, y0, bar_w, h), width, height)
    colours = ["#2f6fad"] * len(y)
    if highlight:
        winner = int(np.argmax(y))
        colours[winner] = "#c0504d"
        p = np.exp(y - y.max())
        p /= p.sum()
        fig.text((x0 + bar_w + 0.15) / width, (y0 + h / 2) / height, f"predicted class {winner}\np = {p[winner]:.3f}",
                 fontsize=8.5, va="center", color="#c0504d")
    ax.bar(np.arange(len(y)), y, color=colours, width=0.8 if len(y) <= 64 else 1.0)
    ax.axhline(0, color="#999999", linewidth=0.5)
    ax.set_xlim(-0.6, len(y) - 0.4)
    ax.tick_params(labelsize=6)
    if len(y) <= 20:
        ax.set_xticks(range(len(y)))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
