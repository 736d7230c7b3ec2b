"""Pictures of a network and of what it learned: `cnnc draw` and `cnnc viz filters|maps|curves`.

    cnnc draw specs/lenet5.cnn -o lenet5.svg                     the architecture, from the IR alone
    cnnc viz filters specs/digits.cnn --weights w.npz -o f.png    the learned kernels of a conv layer
    cnnc viz maps specs/digits.cnn --weights w.npz --input 3.png -o maps.png
                                                                   what every layer makes of one input
    cnnc viz curves metrics.jsonl -o curves.png                    loss and accuracy per epoch

Plotting needs the optional extra `cnnc[viz]` (matplotlib, Pillow). Both are imported inside the
functions that use them, so `import cnnc` stays fast. Figures are plain `matplotlib.figure.Figure`
objects drawn on an Agg canvas: no pyplot, no global state, no display needed.

Every picture is built by a `*_figure` function (data in, Figure out) and written by `save_figure`;
the `run_*` functions at the bottom only connect the command line to them.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from .diagnostics import CnncError
from .fileio import atomic_path, check_distinct, read_bytes_limited
from .graph_layout import graph_layout
from .ir import CONV_KINDS, POOL_KINDS, WINDOW_KINDS, Layer, Network
from .shapes import fmt_shape

VIZ_EXTRA = "pip install 'cnnc[viz]'"
IMAGE_FORMATS = ("png", "svg")
PNG_DPI = 150


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
    from .frontend import read_network

    return read_network(path, model)


def trained_model(network: Network, weights):
    """A NumPy-backend model of `network` holding the parameters in the .npz file `weights`."""
    from .backends.numpy_backend import NumpyModel

    m = NumpyModel(network, dtype="float32")
    try:
        m.load_weights(weights)
    except ValueError as e:
        raise CnncError(str(e)) from None
    return m


def kind_label(layer: Layer) -> str:
    return f"{layer.kind} + {layer.activation}" if layer.activation else layer.kind


# =====================================================================================================
# cnnc draw: the architecture
# =====================================================================================================
# (fill, edge) per family of layer kinds
PALETTE = {
    "input": ("#fff4d6", "#b8860b"),
    "conv": ("#dceaf7", "#2f6fad"),
    "pool": ("#dff0d8", "#3c8d3c"),
    "dense": ("#fbe3d6", "#c0504d"),
    "activation": ("#eeeeee", "#777777"),
    "reshape": ("#efe7f7", "#7b5ea7"),
}
BOX_X, BOX_W, BOX_H = 0.25, 3.7, 0.62   # inches
SKETCH_X = BOX_X + BOX_W + 0.45          # where the window sketches start
SKETCH_MAX_H, SKETCH_MAX_W = 1.3, 3.0    # the biggest sketch is drawn this big
SKETCH_GAP = 0.45                        # between the input plane and the output plane
BAR_H = 0.14                             # the height of a 1-D plane
CAPTION_W = 2.5
ROW_MIN_H = 0.95
TIMES = "×"
TITLE_H = 0.55
# Bounds that keep a drawing small and quick whatever the spec: a window of more taps than this is drawn as
# one rectangle labelled with its size (not a patch per tap), and a network of more layers than
# MAX_DRAWN_LAYERS shows its first HEAD_LAYERS and last TAIL_LAYERS with a "... N more layers" row between.
MAX_DRAWN_TAPS = 256
MAX_DRAWN_LAYERS, HEAD_LAYERS, TAIL_LAYERS = 40, 32, 7
GAP_ROW_H = 0.7
LANE_GAP = 0.45                          # between the lanes of a graph's branches
LANE_W = BOX_W + LANE_GAP
MERGE_SPREAD = 0.35                      # between the arrows into a merge's box
EDGE_COLOUR = "#444444"


def family(kind: str) -> str:
    if kind in CONV_KINDS:
        return "conv"
    if kind in POOL_KINDS or kind == "global_avgpool":
        return "pool"
    if kind == "dense":
        return "dense"
    if kind in ("flatten", "dropout"):
        return "reshape"
    return "activation"


def padded_extent(layer: Layer) -> tuple[int, ...]:
    """The window layer's input size plus padding, per spatial axis."""
    spatial = layer.in_shape[1:]
    return tuple(s + b + a for s, b, a in zip(spatial, layer.pad_before, layer.pad_after))


def window_span(layer: Layer) -> tuple[int, ...]:
    """Input pixels from the first tap of the window to the last, per spatial axis."""
    return tuple(d * (k - 1) + 1 for k, d in zip(layer.kernel, layer.dilation or (1,) * len(layer.kernel)))


def sketch_scale(network: Network, layers=None) -> float:
    """Inches per input pixel, the same for every layer drawn (default: all), so the sketches compare to
    scale. 2-D layers put the input and output planes side by side; 1-D layers stack them."""
    windows = [layer for layer in (network.layers if layers is None else layers) if layer.kind in WINDOW_KINDS]
    if not windows:
        return 0.0
    if windows[0].spatial_dims == 1:
        return SKETCH_MAX_W / max(padded_extent(layer)[0] for layer in windows)
    widest = max(padded_extent(layer)[1] + layer.out_shape[2] for layer in windows)
    tallest = max(padded_extent(layer)[0] for layer in windows)
    return min((SKETCH_MAX_W - SKETCH_GAP) / widest, SKETCH_MAX_H / tallest)


def sketch_size(layer: Layer, scale: float) -> tuple[float, float]:
    """(width, height) in inches of a window layer's sketch; (0, 0) for other layers."""
    if layer.kind not in WINDOW_KINDS:
        return 0.0, 0.0
    padded = padded_extent(layer)
    if layer.spatial_dims == 1:
        return padded[0] * scale, 2 * BAR_H + SKETCH_GAP * 0.7
    return (padded[1] + layer.out_shape[2]) * scale + SKETCH_GAP, padded[0] * scale


def drawn_rows(network: Network) -> list:
    """What the diagram has a row for: None (the input), then the layers; beyond MAX_DRAWN_LAYERS layers,
    the first HEAD_LAYERS and the last TAIL_LAYERS with an int between, the number of layers left out."""
    layers = list(network.layers)
    if len(layers) <= MAX_DRAWN_LAYERS:
        return [None, *layers]
    return [None, *layers[:HEAD_LAYERS], len(layers) - HEAD_LAYERS - TAIL_LAYERS, *layers[-TAIL_LAYERS:]]


def diagram_figure(network: Network):
    """One box per layer (name, kind, output shape, parameters), arrows from each tensor to the layers
    that read it, and beside every convolution and pooling layer its input and output planes drawn to
    scale, with the window at its first position joined to the output it makes. A graph's branches stand
    side by side in lanes (`graph_layout`); arrows into a merge arrive side by side at its box. Bounded
    whatever the network: see MAX_DRAWN_TAPS and MAX_DRAWN_LAYERS (at most 41 rows, each at most
    SKETCH_MAX_H + 0.35 inches high)."""
    new_figure = require_matplotlib()
    layout = graph_layout(network)
    rows = drawn_rows(network)
    drawn = [row for row in rows if isinstance(row, Layer)]
    scale = sketch_scale(network, drawn)
    lanes_w = layout.lane_count * LANE_W - LANE_GAP
    sketch_x = SKETCH_X + lanes_w - BOX_W
    heights = [max(ROW_MIN_H, sketch_size(row, scale)[1] + 0.35) if isinstance(row, Layer)
               else GAP_ROW_H if isinstance(row, int) else ROW_MIN_H for row in rows]
    widest = max(sketch_size(layer, scale)[0] for layer in drawn) if drawn else 0.0
    width = sketch_x + widest + CAPTION_W if widest else BOX_X + lanes_w + 0.3
    width = max(width, 6.6)  # room for the title line
    height = TITLE_H + sum(heights) + 0.1
    fig = new_figure(width, height)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # inches, y growing downwards
    ax.axis("off")
    _draw_title(ax, network)
    top, centres, gap_centre = TITLE_H, {}, None
    for row, row_h in zip(rows, heights):
        centre = top + row_h / 2
        if isinstance(row, int):
            _draw_gap(ax, network, row, centre, BOX_X + lanes_w / 2)
            gap_centre = centre
        else:
            name = network.input_name if row is None else row.name
            _draw_box(ax, network, row, centre, lane_x(layout.lanes[name]))
            centres[name] = centre
            if row is not None and row.kind in WINDOW_KINDS:
                _draw_window_sketch(ax, row, centre, scale, sketch_x)
        top += row_h
    into_gap = set()
    for edge in layout.edges:
        if edge.target not in centres:
            if edge.source in centres and edge.source not in into_gap:  # into the "... more layers" row
                into_gap.add(edge.source)
                x = lane_x(layout.lanes[edge.source]) + BOX_W / 2
                _draw_arrow(ax, x, centres[edge.source] + BOX_H / 2, gap_centre - GAP_ROW_H / 2 + 0.12)
            continue
        operands = len(network.layer(edge.target).inputs)
        if edge.source in centres:
            _draw_edge(ax, layout, edge, centres[edge.source], centres[edge.target], operands)
        else:  # from a layer in the "... more layers" row
            x = lane_x(layout.lanes[edge.target]) + BOX_W / 2
            _draw_arrow(ax, x, gap_centre + GAP_ROW_H / 2 - 0.12, centres[edge.target] - BOX_H / 2)
    return fig


def lane_x(lane: int) -> float:
    """The left edge of the boxes in `lane`."""
    return BOX_X + lane * LANE_W


def _draw_edge(ax, layout, edge, source_centre: float, target_centre: float, operands: int) -> None:
    """A straight arrow from the box just above in the same lane; otherwise a path that leaves the source
    box at its bottom, runs down the gutter right of the target's lane (no box stands there) and enters
    the target box at its top, each operand of a merge at its own point."""
    source_x = lane_x(layout.lanes[edge.source]) + BOX_W / 2
    target_left = lane_x(layout.lanes[edge.target])
    arrive_x = target_left + BOX_W / 2 + (edge.operand - (operands - 1) / 2) * MERGE_SPREAD
    start, end = source_centre + BOX_H / 2, target_centre - BOX_H / 2
    if layout.is_straight(edge):
        if operands > 1:  # bend to this operand's point of arrival
            middle = (start + end) / 2
            ax.plot([source_x, source_x, arrive_x], [start, middle, middle], color=EDGE_COLOUR, linewidth=1.0)
            start, source_x = middle, arrive_x
        _draw_arrow(ax, source_x, start, end)
        return
    gutter = target_left + BOX_W + LANE_GAP / 2 + (edge.operand - (operands - 1) / 2) * 0.05
    below, above = start + 0.1, end - 0.1 - 0.04 * edge.operand
    ax.plot([source_x, source_x, gutter, gutter, arrive_x], [start, below, below, above, above],
            color=EDGE_COLOUR, linewidth=1.0, solid_joinstyle="round")
    _draw_arrow(ax, arrive_x, above, end)


def _draw_gap(ax, network: Network, left_out: int, centre: float, x: float) -> None:
    """The row standing for the layers not drawn: how many, and of which kinds."""
    hidden = network.layers[HEAD_LAYERS:HEAD_LAYERS + left_out]
    kinds: dict[str, int] = {}
    for layer in hidden:
        kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
    listed = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1])[:4])
    more = ", ..." if len(kinds) > 4 else ""
    ax.text(x, centre, f"... {left_out:,} more layers ({listed}{more})",
            fontsize=9, fontstyle="italic", color="#555555", va="center", ha="center")


def _draw_title(ax, network: Network) -> None:
    ax.text(BOX_X, 0.2, f"{network.name}", fontsize=13, fontweight="bold", va="center")
    ax.text(BOX_X, 0.42, f"{fmt_shape(network.input_shape)} → {fmt_shape(network.output_shape)}   "
            f"{network.param_count:,} parameters   {network.macs:,} multiply-accumulates per sample",
            fontsize=8.5, color="#555555", va="center")


def _draw_box(ax, network: Network, layer: Layer | None, centre: float, left: float) -> None:
    from matplotlib.patches import FancyBboxPatch

    if layer is None:
        name, kind, shape, params, fill_edge = network.input_name, "input", network.input_shape, "", PALETTE["input"]
    else:
        name, kind, shape = layer.name, kind_label(layer), layer.out_shape
        params = f"{layer.param_count:,} params" if layer.param_count else "no params"
        fill_edge = PALETTE[family(layer.kind)]
    fill, edge = fill_edge
    top = centre - BOX_H / 2
    ax.add_patch(FancyBboxPatch((left, top), BOX_W, BOX_H, boxstyle="round,pad=0,rounding_size=0.08",
                                facecolor=fill, edgecolor=edge, linewidth=1.2))
    left, right = left + 0.14, left + BOX_W - 0.14
    upper, lower = top + BOX_H * 0.32, top + BOX_H * 0.70
    ax.text(left, upper, name, fontsize=10, fontweight="bold", va="center")
    ax.text(left, lower, kind, fontsize=8.5, color=edge, va="center")
    ax.text(right, upper, fmt_shape(shape), fontsize=9.5, family="monospace", va="center", ha="right")
    ax.text(right, lower, params, fontsize=8.5, color="#555555", va="center", ha="right")


def _draw_arrow(ax, x: float, start: float, end: float) -> None:
    ax.annotate("", xy=(x, end), xytext=(x, start),
                arrowprops=dict(arrowstyle="-|>", color=EDGE_COLOUR, linewidth=1.1, shrinkA=1, shrinkB=1))


def _draw_window_sketch(ax, layer: Layer, centre: float, scale: float, x0: float) -> None:
    """Input plane (padding hatched), the window at its first position (one filled cell per tap) and
    its next position along the width (dashed); the output plane with the output that window makes;
    lines joining them. 2-D planes side by side, 1-D planes one above the other, all to one scale."""
    fill, edge = PALETTE[family(layer.kind)]
    padded, span = padded_extent(layer), window_span(layer)
    sketch_w, sketch_h = sketch_size(layer, scale)
    y0 = centre - sketch_h / 2
    if layer.spatial_dims == 2:
        cell_h, out_x, out_y = scale, x0 + padded[1] * scale + SKETCH_GAP, centre - layer.out_shape[1] * scale / 2
        window_corners = [(x0 + span[1] * scale, y0), (x0 + span[1] * scale, y0 + span[0] * scale)]
        cell_corners = [(out_x, out_y), (out_x, out_y + scale)]
    else:
        cell_h, out_x, out_y = BAR_H, x0, y0 + sketch_h - BAR_H
        window_corners = [(x0, y0 + BAR_H), (x0 + span[0] * scale, y0 + BAR_H)]
        cell_corners = [(out_x, out_y), (out_x + scale, out_y)]
    _draw_plane(ax, x0, y0, scale, cell_h, padded, layer.in_shape[1:], layer.pad_before)
    _draw_plane(ax, out_x, out_y, scale, cell_h, layer.out_shape[1:], layer.out_shape[1:], (0,) * layer.spatial_dims)
    _draw_window(ax, layer, x0, y0, scale, cell_h, padded, edge)
    _draw_cell(ax, out_x, out_y, scale, cell_h, edge)
    for a, b in zip(window_corners, cell_corners):
        ax.plot([a[0], b[0]], [a[1], b[1]], color=edge, linewidth=0.7, alpha=0.8)
    caption_x = x0 + sketch_w + 0.2
    ax.text(caption_x, centre - 0.1, _window_caption(layer), fontsize=8, va="center", color="#333333")
    ax.text(caption_x, centre + 0.1, _plane_caption(layer), fontsize=8, va="center", color="#777777")


def _draw_plane(ax, x, y, scale, cell_h, extent, inner, inner_offset) -> None:
    """A plane of `extent` cells (H, W) or (L,), with the real `inner` part at `inner_offset`; the rest,
    padding, is hatched. Cells are gridded when big enough to see."""
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    w = extent[-1] * scale
    h = extent[0] * scale if len(extent) == 2 else cell_h
    padded = tuple(extent) != tuple(inner)
    ax.add_patch(Rectangle((x, y), w, h, facecolor="white", edgecolor="#999999", linewidth=0.6,
                           hatch="////" if padded else None))
    ix, iy = x + inner_offset[-1] * scale, y + (inner_offset[0] * scale if len(extent) == 2 else 0.0)
    iw, ih = inner[-1] * scale, (inner[0] * scale if len(extent) == 2 else cell_h)
    ax.add_patch(Rectangle((ix, iy), iw, ih, facecolor="#f5f5f5", edgecolor="#666666", linewidth=0.8))
    if scale >= 0.04:
        lines = [((x + i * scale, y), (x + i * scale, y + h)) for i in range(1, extent[-1])]
        if len(extent) == 2:
            lines += [((x, y + j * scale), (x + w, y + j * scale)) for j in range(1, extent[0])]
        ax.add_collection(LineCollection(lines, colors="#d6d6d6", linewidths=0.4))


def _draw_window(ax, layer: Layer, x0, y0, scale, cell_h, padded, edge) -> None:
    """The window at output 0: one filled cell per tap (so dilation shows as gaps), its outline, and the
    outline of the next window along the width, `stride` cells on."""
    from matplotlib.patches import Rectangle

    two_d = layer.spatial_dims == 2
    dilation = layer.dilation or (1,) * layer.spatial_dims
    span = window_span(layer)
    span_w, span_h = span[-1] * scale, (span[0] * scale if two_d else cell_h)
    taps = layer.kernel[0] * layer.kernel[-1] if two_d else layer.kernel[-1]
    if taps > MAX_DRAWN_TAPS:  # one rectangle for the whole window, its size written on it
        ax.add_patch(Rectangle((x0, y0), span_w, span_h, facecolor=edge, alpha=0.3, edgecolor="none"))
        ax.text(x0 + span_w / 2, y0 + span_h / 2, f"{TIMES.join(map(str, layer.kernel))} taps", fontsize=7,
                color="#222222", va="center", ha="center")
    else:
        tap_rows = range(layer.kernel[0]) if two_d else range(1)
        for i in tap_rows:
            for j in range(layer.kernel[-1]):
                ax.add_patch(Rectangle((x0 + j * dilation[-1] * scale,
                                        y0 + (i * dilation[0] * scale if two_d else 0.0)),
                                       scale, cell_h, facecolor=edge, alpha=0.5, edgecolor="none"))
    ax.add_patch(Rectangle((x0, y0), span_w, span_h, facecolor="none", edgecolor=edge, linewidth=1.3))
    stride_w = layer.stride[-1] * scale
    if layer.stride[-1] + span[-1] <= padded[-1]:
        ax.add_patch(Rectangle((x0 + stride_w, y0), span_w, span_h, facecolor="none", edgecolor=edge,
                               linestyle=(0, (3, 2)), linewidth=0.9))


def _draw_cell(ax, x, y, scale, cell_h, edge) -> None:
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x, y), scale, cell_h, facecolor=edge, alpha=0.8, edgecolor=edge, linewidth=0.8))


def _window_caption(layer: Layer) -> str:
    what = "kernel" if layer.kind in CONV_KINDS else "window"
    parts = [f"{what} {TIMES.join(map(str, layer.kernel))}", f"stride {TIMES.join(map(str, layer.stride))}"]
    if any(layer.pad_before + layer.pad_after):
        pads = [str(b) if b == a else f"{b}/{a}" for b, a in zip(layer.pad_before, layer.pad_after)]
        parts.append(f"pad {pads[0] if len(set(pads)) == 1 else TIMES.join(pads)}")
    if layer.dilation and any(d > 1 for d in layer.dilation):
        parts.append(f"dilation {TIMES.join(map(str, layer.dilation))}")
    return ", ".join(parts)


def _plane_caption(layer: Layer) -> str:
    in_size, out_size = TIMES.join(map(str, layer.in_shape[1:])), TIMES.join(map(str, layer.out_shape[1:]))
    return f"{in_size} → {out_size},  {layer.in_shape[0]} → {layer.out_shape[0]} channels"



# =====================================================================================================
# cnnc viz filters: the learned kernels
# =====================================================================================================
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


# =====================================================================================================
# cnnc viz maps: what every layer makes of one input
# =====================================================================================================
MAX_MAPS = 16  # channels shown per layer


def read_input(path, shape: tuple[int, ...]) -> np.ndarray:
    """One input, read exactly as `cnnc predict` reads it (cnnc.inference): an image (to the model's
    channels, resized, scaled to [0, 1]) or a .npy array of one sample. Returns x: shape, float32."""
    from .inference import read_inputs

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
    from .backends.numpy_backend import NumpyModel, add_forward, concat_forward

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


# =====================================================================================================
# cnnc viz curves: the training log
# =====================================================================================================
SERIES = ("train", "val", "test")
METRICS = ("loss", "accuracy")


MAX_METRICS_BYTES = 64 << 20  # a log of a million epochs is under 300 MB; 64 MiB is plenty for a plot


def read_metrics(path) -> list[dict]:
    """The records of a `cnnc train --log` JSONL file, one per epoch; every fault names the file and line."""
    path = Path(path)
    try:
        data = read_bytes_limited(path, MAX_METRICS_BYTES, "a metrics .jsonl file")
    except CnncError as e:
        if "no such file" in str(e):
            raise CnncError(f"{path}: no such metrics file") from None
        raise
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise CnncError(f"{path}: cannot read the metrics file ({e})") from None
    records = [_metrics_record(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not records:
        raise CnncError(f"{path}: no epochs in the metrics file (expected one JSON object per line, "
                        f"as written by `cnnc train --log`)")
    return records


def _metrics_record(path: Path, number: int, line: str) -> dict:
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise CnncError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise CnncError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as e:  # a number too long to convert, ...
        raise CnncError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise CnncError(f"{where}: expected a JSON object per line; got {type(record).__name__}")
    epoch = record.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise CnncError(f"{where}: 'epoch' must be an integer; got {epoch!r}")
    for series in SERIES:
        for metric in METRICS:
            value = record.get(f"{series}_{metric}")
            if value is not None and not _is_number(value):
                raise CnncError(f"{where}: '{series}_{metric}' must be a number or null; got {value!r}")
    return record


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def curves_figure(records: list[dict], source: str = ""):
    """Loss (left) and accuracy (right) per epoch, one line per split that has values."""
    new_figure = require_matplotlib()
    fig = new_figure(10.0, 4.0)
    axes = fig.subplots(1, 2)
    colours = {"train": "#2f6fad", "val": "#e08a1e", "test": "#c0504d"}
    epochs = [r["epoch"] for r in records]
    for ax, metric in zip(axes, METRICS):
        for series in SERIES:
            points = [(e, r.get(f"{series}_{metric}")) for e, r in zip(epochs, records)]
            points = [(e, v) for e, v in points if v is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.6, color=colours[series], label=series)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric, fontsize=11)
        ax.grid(True, color="#e5e5e5", linewidth=0.6)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False)
        else:
            ax.text(0.5, 0.5, f"no {metric} in the log", transform=ax.transAxes, ha="center", color="#777777")
    best = [r.get("test_accuracy") for r in records if r.get("test_accuracy") is not None]
    title = Path(source).name if source else "training"
    if best:
        title += f": final test accuracy {best[-1]:.4f}, best {max(best):.4f}"
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.85, wspace=0.22)
    return fig


# =====================================================================================================
# the command line
# =====================================================================================================
def add_viz_parsers(subparsers) -> None:
    p = subparsers.add_parser("draw", help="draw a network's architecture (PNG or SVG)",
                              description="Draw a diagram of the network: one box per layer with its kind, name, "
                                          "output shape and parameter count, and convolution/pooling windows to "
                                          f"scale. Needs {VIZ_EXTRA}.")
    p.add_argument("file", metavar="FILE", help="the .cnn file")
    p.add_argument("--model", help="the model to draw (for a file with several)")
    p.add_argument("-o", "--output", required=True, metavar="IMAGE", help="output file, .png or .svg")
    p.set_defaults(func=run_draw)

    viz = subparsers.add_parser("viz", help="pictures of what a trained network learned",
                                description=f"Pictures of a trained network and its training. Needs {VIZ_EXTRA}.")
    commands = viz.add_subparsers(dest="viz_command", metavar="WHAT", required=True)
    f = commands.add_parser("filters", help="the learned kernels of a conv layer",
                            description="A grid of the learned kernels of a conv layer (the first one by default), on one "
                                        "symmetric colour scale with a colour bar.")
    _add_model_arguments(f)
    f.add_argument("--layer", help="the conv layer (default: the first)")
    f.add_argument("--as", dest="mode", choices=FILTER_MODES, default="auto",
                   help="auto: RGB tiles for 3 input channels, one tile per filter for 1, else filter x channel "
                        "(default: auto)")
    f.add_argument("-o", "--output", required=True, metavar="IMAGE", help="output file, .png or .svg")
    f.set_defaults(func=run_viz_filters)

    m = commands.add_parser("maps", help="the feature maps each layer produces for one input",
                            description="Run one input through the trained network (NumPy backend) and show the input "
                                        "and every layer's output (or one layer's).")
    _add_model_arguments(m)
    m.add_argument("--input", required=True, metavar="IMAGE|NPY",
                   help="a PNG/PGM/... image (converted to the model's channels, resized, scaled to [0, 1]) or a .npy "
                        "array of the input shape")
    m.add_argument("--layer", help="show only this layer's output (default: every layer)")
    m.add_argument("-o", "--output", required=True, metavar="IMAGE", help="output file, .png or .svg")
    m.set_defaults(func=run_viz_maps)

    c = commands.add_parser("curves", help="loss and accuracy per epoch from a training log",
                            description="Plot loss and accuracy per epoch for the train, validation and test splits from "
                                        "the JSONL log written by `cnnc train --log`.")
    c.add_argument("metrics", metavar="METRICS.jsonl", help="the training log")
    c.add_argument("-o", "--output", required=True, metavar="IMAGE", help="output file, .png or .svg")
    c.set_defaults(func=run_viz_curves)


def _add_model_arguments(p) -> None:
    p.add_argument("file", metavar="FILE", help="the .cnn file")
    p.add_argument("--model", help="the model (for a file with several)")
    p.add_argument("--weights", required=True, metavar="W.npz", help="trained weights (.npz, as written by cnnc train)")


def _wrote(path) -> int:
    print(f"wrote {path}")
    return 0


def run_draw(args) -> int:
    image_format(args.output)
    check_distinct({"the image (-o)": args.output}, {"the spec": args.file})
    network = read_spec(args.file, args.model)
    save_figure(diagram_figure(network), args.output)
    return _wrote(args.output)


def run_viz_filters(args) -> int:
    image_format(args.output)
    check_distinct({"the image (-o)": args.output}, {"the spec": args.file, "the weights": args.weights})
    network = read_spec(args.file, args.model)
    layer = conv_layer(network, args.layer)
    if layer.groups != 1:
        raise CnncError(f"cnnc viz filters shows ungrouped convolutions only so far; '{layer.name}' has "
                        f"groups={layer.groups}")
    model = trained_model(network, args.weights)
    fig = filters_figure(network, model.params[f"{layer.name}.weight"], layer, args.mode, args.weights)
    save_figure(fig, args.output)
    return _wrote(args.output)


def run_viz_maps(args) -> int:
    image_format(args.output)
    check_distinct({"the image (-o)": args.output},
                   {"the spec": args.file, "the weights": args.weights, "the input": args.input})
    network = read_spec(args.file, args.model)
    if args.layer is not None and args.layer not in [layer.name for layer in network.layers]:
        raise CnncError(f"model '{network.name}' has no layer '{args.layer}'; its layers are: "
                        f"{', '.join(layer.name for layer in network.layers)}")
    model = trained_model(network, args.weights)
    x = read_input(args.input, network.input_shape)
    outputs = layer_outputs(model, x)
    if args.layer is not None:
        outputs = [(layer, y) for layer, y in outputs if layer.name == args.layer]
    save_figure(maps_figure(network, x, outputs, args.input), args.output)
    return _wrote(args.output)


def run_viz_curves(args) -> int:
    image_format(args.output)
    check_distinct({"the image (-o)": args.output}, {"the metrics log": args.metrics})
    save_figure(curves_figure(read_metrics(args.metrics), args.metrics), args.output)
    return _wrote(args.output)
