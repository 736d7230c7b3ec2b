"""`cnnc viz filters`: the learned kernels of a conv layer, on one symmetric colour scale."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..diagnostics import CnncError
from ..ir import CONV_KINDS, Layer, Network
from .figure import TIMES, require_matplotlib


FILTER_MODES = ("auto", "channels", "rgb")
MAX_FILTERS, MAX_CHANNELS = 64, 32  # a bigger layer shows its first filters/channels, and says so


def conv_layer(network: Network, name: str | None) -> Layer:
    """The named conv layer, or the first one; unknown or non-conv names list the conv layers."""
    convs = [layer for layer in network.layers if layer.kind in CONV_KINDS]
    listing = ", ".join(layer.name for layer in convs) or "none"
    if not convs:
        raise CnncError(f"model '{network.name}' ({network.file}) has no convolution layers to show")
    if name is None:
        return convs[0]
    try:
        layer = network.layer(name)
    except KeyError:
        raise CnncError(f"model '{network.name}' has no layer '{name}'; its conv layers are: {listing}") from None
    if layer.kind not in CONV_KINDS:
        raise CnncError(f"layer '{name}' of model '{network.name}' is a {layer.kind} layer, which has no kernels; "
                        f"its conv layers are: {listing}")
    return layer


def filter_mode(layer: Layer, requested: str) -> str:
    """rgb for 3-channel 2-D kernels, one tile per filter for 1-channel or 1-D ones, else filter x channel."""
    channels = layer.in_shape[0]
    if requested == "rgb" and (channels != 3 or layer.spatial_dims != 2):
        raise CnncError(f"--as rgb needs a conv2d layer with 3 input channels; '{layer.name}' is a {layer.kind} "
                        f"with {channels}")
    if requested != "auto":
        return requested
    if layer.spatial_dims == 1 or channels == 1:
        return "filters"
    return "rgb" if channels == 3 else "channels"


def mosaic(tiles: np.ndarray, rows: int, cols: int, gap: int = 1) -> np.ndarray:
    """tiles: (T, h, w[, 3]) -> one (rows*(h+gap)-gap, cols*(w+gap)-gap[, 3]) array; gaps and unused cells are NaN."""
    T, h, w = tiles.shape[:3]
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *tiles.shape[3:]), np.nan)
    for t in range(T):
        r, c = divmod(t, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[t]
    return out


def grid_shape(count: int) -> tuple[int, int]:
    """Rows and columns for `count` tiles, about square, wider than tall."""
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def filter_tiles(weight: np.ndarray, layer: Layer, mode: str) -> tuple[np.ndarray, int, int, float]:
    """The tiles a filter grid shows, its rows and columns, and the colour scale's limit max|w|.

    weight: (F, C, KH, KW) or (F, C, K); at most MAX_FILTERS filters and MAX_CHANNELS channels are shown.
      filters:  (F, KH, KW) for one input channel, (F, C, K) for conv1d: a C x K tile per filter
      channels: (F*C, KH, KW), one row per filter, one column per input channel
      rgb:      (F, KH, KW, 3) in [0, 1], with 0.5 grey for a zero weight
    """
    w = weight[:MAX_FILTERS, :MAX_CHANNELS].astype(np.float64)
    F, C = w.shape[:2]
    limit = float(np.abs(w).max()) or 1.0
    if mode == "channels":
        return w.reshape(F * C, *w.shape[2:]), F, C, limit
    if mode == "rgb":
        return 0.5 + 0.5 * np.moveaxis(w, 1, -1) / limit, *grid_shape(F), limit
    tiles = w[:, 0] if layer.spatial_dims == 2 else w
    return tiles, *grid_shape(F), limit


def filters_figure(network: Network, weight: np.ndarray, layer: Layer, mode: str = "auto", source: str = ""):
    """A grid of a conv layer's kernels, colour-mapped on one symmetric scale (0 is the middle colour)."""
    new_figure = require_matplotlib()
    mode = filter_mode(layer, mode)
    tiles, rows, cols, limit = filter_tiles(weight, layer, mode)
    image = mosaic(tiles, rows, cols)
    fig = _filter_canvas(new_figure, image.shape[:2])
    ax, cax = fig.axes
    if mode == "rgb":
        ax.imshow(np.where(np.isnan(image), 1.0, image), interpolation="nearest")  # white gaps
        fig.colorbar(_grey_scale(limit), cax=cax, label="weight (each of R, G, B)")
    else:
        im = ax.imshow(np.ma.masked_invalid(image), cmap=_diverging_cmap(), vmin=-limit, vmax=limit,
                       interpolation="nearest")
        fig.colorbar(im, cax=cax, label="weight")
    shown_f, shown_c = min(weight.shape[0], MAX_FILTERS), min(weight.shape[1], MAX_CHANNELS)
    _label_filter_axes(ax, mode, tiles.shape[1:3], rows, cols, shown_f, shown_c, layer)
    _outline_tiles(ax, len(tiles), cols, tiles.shape[1:3])
    F, C = weight.shape[:2]
    title = f"{network.name}: {layer.kind} {layer.name}, {F} filters of {TIMES.join(map(str, weight.shape[1:]))}"
    notes = [f"first {shown_f} filters shown"] if shown_f < F else []
    if shown_c < C:
        notes.append(f"first {shown_c} input channels shown")
    if source:
        notes.append(f"weights: {Path(source).name}")
    ax.set_title(title + ("\n" + ", ".join(notes) if notes else ""), fontsize=10, pad=12)
    return fig


def _diverging_cmap():
    from matplotlib import colormaps

    return colormaps["RdBu_r"].with_extremes(bad="white")


def _grey_scale(limit: float):
    """A grey scale from -limit to +limit for the colour bar of an RGB mosaic."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    return ScalarMappable(Normalize(-limit, limit), colormaps["gray"])


def _filter_canvas(new_figure, image_hw: tuple[int, int]):
    """A figure sized so one kernel pixel is a readable square, with an axes and a colour-bar axes."""
    h, w = image_hw
    pixel = min(0.3, 7.0 / w, 7.0 / h)        # inches per kernel pixel
    plot_w, plot_h = max(w * pixel, 2.5), max(h * pixel, 1.5)
    margin_l, margin_r, margin_t, margin_b = 0.8, 1.3, 0.95, 0.6
    fig = new_figure(plot_w + margin_l + margin_r, plot_h + margin_t + margin_b)
    W, H = fig.get_size_inches()
    fig.add_axes((margin_l / W, margin_b / H, plot_w / W, plot_h / H))
    fig.add_axes(((margin_l + plot_w + 0.25) / W, margin_b / H, 0.18 / W, plot_h / H))
    return fig


def _outline_tiles(ax, count: int, cols: int, tile_hw: tuple[int, int]) -> None:
    """A thin grey frame around each tile, so near-zero weights (white) do not merge with the gaps."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    h, w = tile_hw
    cells = [divmod(t, cols) for t in range(count)]  # (row, column) of each tile
    frames = [Rectangle((c * (w + 1) - 0.5, r * (h + 1) - 0.5), w, h) for r, c in cells]
    ax.add_collection(PatchCollection(frames, facecolor="none", edgecolor="#9a9a9a", linewidth=0.5, clip_on=False))


def _label_filter_axes(ax, mode, tile_hw, rows, cols, shown_f, shown_c, layer: Layer) -> None:
    h, w = tile_hw
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if mode == "channels":
        step_c, step_f = max(1, shown_c // 16), max(1, shown_f // 16)
        shown_cols, shown_rows = range(0, cols, step_c), range(0, rows, step_f)
        ax.set_xticks([c * (w + 1) + (w - 1) / 2 for c in shown_cols], [str(c) for c in shown_cols], fontsize=7)
        ax.set_yticks([f * (h + 1) + (h - 1) / 2 for f in shown_rows], [str(f) for f in shown_rows], fontsize=7)
        ax.set_xlabel("input channel")
        ax.set_ylabel("filter")
        ax.tick_params(length=0)
        return
    for f in range(shown_f):
        r, c = divmod(f, cols)
        ax.text(c * (w + 1) + (w - 1) / 2, r * (h + 1) - 0.5, str(f), ha="center", va="bottom", fontsize=6.5,
                color="#555555")
    if layer.spatial_dims == 1:
        ax.set_xlabel("tiles: one per filter, rows = input channels, columns = kernel taps", fontsize=8)
    else:
        ax.set_xlabel("one tile per filter", fontsize=8)
