"""`cnnc draw`: the architecture, from the IR alone: one box per layer, windows to scale, a graph's
branches side by side (cnnc/graph_layout.py)."""
from __future__ import annotations


from ..graph_layout import graph_layout
from ..ir import CONV_KINDS, POOL_KINDS, WINDOW_KINDS, Layer, Network
from ..shapes import fmt_shape
from .figure import TIMES, kind_label, require_matplotlib


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
