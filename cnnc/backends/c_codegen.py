"""IR -> C source: plan each network's memory and calls, then render templates/*.c.j2.

    source = generate([network], "float32")       # one C translation unit
    source.text                                  # the C file, readable on its own
    source.cdef                                  # the declarations cffi binds
    source.plans[0].param_count                  # the layout the Python side views

Pipeline: `check_network` refuses anything that could put unchecked text or inconsistent sizes into
C; `plan_network` decides, per layer, its constants, its kernel templates and which buffer each call
reads and writes; the templates only print what the plan says.

What reaches the C text: numbers (Python ints and finite floats, checked here), identifiers built
here from layer positions (`l3_conv2d_forward`, `L3_OH`), and, in comments only, layer and model names
that match ^[A-Za-z_][A-Za-z0-9_]*$. Nothing else from the spec.

Kernel choice: `KERNELS` maps a layer kind to its forward/backward templates. `choose_kernel` is the
one place to pick a different implementation per layer (im2col, blocked, fused) at compile time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from math import isfinite, prod

from .._version import __version__
from ..ir import ACTIVATIONS, AVGPOOL_KINDS, CONV_KINDS, LAYER_KINDS, MAXPOOL_KINDS, POOL_KINDS, Layer, Network
from ..resources import template_loader

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
C_TYPES = {"float32": "float", "float64": "double"}
MAX_INT32 = 2**31 - 1
# Per-network sizes the C defines as <prefix>MODEL_<what> and Python reads back through cffi.
SIZE_CONSTANTS = ("PARAM_COUNT", "ACT_COUNT", "FIXED_COUNT", "ARGMAX_COUNT", "IN_SIZE", "OUT_SIZE", "DROPOUT_LAYERS")
# The blocked kernels work on vectors of VECTOR_BYTES (GCC vector extensions: AVX-512 where the CPU has it,
# two AVX2 or four SSE registers elsewhere); VL = VECTOR_BYTES / sizeof(real) lanes.
VECTOR_BYTES = 64
ITEM_SIZE = {"float32": 4, "float64": 8}


# ---- validation: nothing unchecked reaches the C text ----------------------------------------------
def check_identifier(name, what: str) -> str:
    """A name that may appear in a C comment: a plain identifier, nothing else."""
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise ValueError(f"{what} {name!r} is not a valid identifier (expected [A-Za-z_][A-Za-z0-9_]*); "
                         f"the C backend refuses to generate code for it")
    return name


def c_int(value, what: str, minimum: int = 0, maximum: int = MAX_INT32) -> int:
    """A Python int (not a bool, not a string that looks like one) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValueError(f"{what} must be an integer in [{minimum}, {maximum}]; got {value!r}")
    return value


def c_real(value, what: str) -> str:
    """A finite real number as a C literal (repr round-trips a double exactly)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not isfinite(value):
        raise ValueError(f"{what} must be a finite number; got {value!r}")
    return repr(float(value))


def _ints(values, what: str, length: int, minimum: int) -> tuple[int, ...]:
    if not isinstance(values, tuple) or len(values) != length:
        raise ValueError(f"{what} must be a tuple of {length} integers; got {values!r}")
    return tuple(c_int(v, what, minimum) for v in values)


def check_layer(layer: Layer, in_shape: tuple[int, ...]) -> None:
    """Every field the C code uses, re-derived from the input shape: a hand-made IR whose sizes do not
    add up would otherwise compile into out-of-bounds loops."""
    name = check_identifier(layer.name, "layer name")
    where = f"layer '{name}'"
    if layer.kind not in LAYER_KINDS:
        raise ValueError(f"{where}: unknown layer kind {layer.kind!r}")
    if layer.activation is not None and (layer.activation not in ACTIVATIONS or layer.kind not in CONV_KINDS + ("dense",)):
        raise ValueError(f"{where}: activation {layer.activation!r} is not a fused activation of a conv or dense layer")
    if layer.in_shape != in_shape:
        raise ValueError(f"{where}: in_shape {layer.in_shape} does not match the previous output {in_shape}")
    _ints(layer.in_shape, f"{where}: in_shape", len(layer.in_shape), 1)
    if not 1 <= len(layer.in_shape) <= 3:
        raise ValueError(f"{where}: in_shape must have 1 to 3 dimensions; got {layer.in_shape}")
    for size, what in [(layer.in_size, "input"), (layer.out_size, "output")]:
        c_int(size, f"{where}: {what} elements per sample", 1)
    c_real(layer.slope, f"{where}: slope")
    c_real(layer.rate, f"{where}: rate")
    expected_out, expected_params = _expected_shapes(layer, where)
    if layer.out_shape != expected_out:
        raise ValueError(f"{where}: out_shape {layer.out_shape} does not follow from its input and geometry "
                         f"(expected {expected_out})")
    got_params = [(p.name, p.shape) for p in layer.params]
    if got_params != expected_params:
        raise ValueError(f"{where}: parameters {got_params} do not match its kind and shapes (expected {expected_params})")
    for p in layer.params:
        c_int(p.size, f"{where}: size of {p.name}", 1)


def _expected_shapes(layer: Layer, where: str):
    """(out_shape, [(param name, shape)]) that the layer's kind, geometry and input imply."""
    kind, shape = layer.kind, layer.in_shape
    if kind in CONV_KINDS + POOL_KINDS:
        dims = 1 if kind.endswith("1d") else 2
        if len(shape) != dims + 1:
            raise ValueError(f"{where}: {kind} needs a {dims + 1}-D input; got {shape}")
        kernel = _ints(layer.kernel, f"{where}: kernel", dims, 1)
        stride = _ints(layer.stride, f"{where}: stride", dims, 1)
        dilation = _ints(layer.dilation, f"{where}: dilation", dims, 1)
        before = _ints(layer.pad_before, f"{where}: pad_before", dims, 0)
        after = _ints(layer.pad_after, f"{where}: pad_after", dims, 0)
        out = []
        for size, k, s, d, pb, pa in zip(shape[1:], kernel, stride, dilation, before, after):
            span = d * (k - 1) + 1
            if span > size + pb + pa:
                raise ValueError(f"{where}: window {span} is larger than the padded input {size + pb + pa}")
            out.append((size + pb + pa - span) // s + 1)
        if kind in POOL_KINDS:
            if any(d != 1 for d in dilation):
                raise ValueError(f"{where}: pooling has dilation 1; got {dilation}")
            if any(p > k // 2 for p, k in zip(before + after, kernel + kernel)):
                raise ValueError(f"{where}: pooling padding {before}/{after} exceeds half the window {kernel}")
            return (shape[0], *out), []
        filters = c_int(layer.filters, f"{where}: filters", 1)
        params = [(f"{layer.name}.weight", (filters, shape[0], *kernel))]
        return (filters, *out), params + ([(f"{layer.name}.bias", (filters,))] if layer.bias else [])
    if kind == "dense":
        if len(shape) != 1:
            raise ValueError(f"{where}: dense needs a flat input; got {shape}")
        units = c_int(layer.units, f"{where}: units", 1)
        params = [(f"{layer.name}.weight", (units, shape[0]))]
        return (units,), params + ([(f"{layer.name}.bias", (units,))] if layer.bias else [])
    if kind == "flatten":
        return (prod(shape),), []
    if kind == "global_avgpool":
        if len(shape) < 2:
            raise ValueError(f"{where}: global_avgpool needs a (C, ...) input; got {shape}")
        return (shape[0],), []
    if kind == "softmax" and len(shape) != 1:
        raise ValueError(f"{where}: softmax needs a flat input; got {shape}")
    if kind == "dropout" and not 0 <= layer.rate < 1:
        raise ValueError(f"{where}: dropout rate must be in [0, 1); got {layer.rate}")
    return shape, []


def check_network(network: Network) -> None:
    """Raise ValueError unless every name is an identifier and every size follows from the input."""
    check_identifier(network.name, "model name")
    check_identifier(network.input_name, "input name")
    if not network.layers:
        raise ValueError(f"model '{network.name}' has no layers")
    shape = _ints(network.input_shape, "input shape", len(network.input_shape), 1)
    names = set()
    for layer in network.layers:
        check_layer(layer, shape)
        if layer.name in names:
            raise ValueError(f"model '{network.name}': duplicate layer name '{layer.name}'")
        names.add(layer.name)
        shape = layer.out_shape


# ---- kernels: which templates implement a layer ---------------------------------------------------
@dataclass(frozen=True)
class Kernel:
    forward: str  # template file
    backward: str


KERNELS: dict[str, dict[str, Kernel]] = {
    "conv": {"direct": Kernel("conv2d_forward.c.j2", "conv2d_backward.c.j2"),
             "blocked": Kernel("conv2d_blocked_forward.c.j2", "conv2d_blocked_backward.c.j2")},
    "dense": {"direct": Kernel("dense_forward.c.j2", "dense_backward.c.j2"),
              "blocked": Kernel("dense_blocked_forward.c.j2", "dense_blocked_backward.c.j2")},
    "maxpool": {"direct": Kernel("maxpool2d_forward.c.j2", "maxpool2d_backward.c.j2"),
                "2x2": Kernel("maxpool2d_2x2_forward.c.j2", "maxpool2d_2x2_backward.c.j2")},
    "avgpool": {"direct": Kernel("avgpool2d_forward.c.j2", "avgpool2d_backward.c.j2")},
    "global_avgpool": {"direct": Kernel("global_avgpool_forward.c.j2", "global_avgpool_backward.c.j2")},
}


# Backward kernels that write (=) every element of their input gradient, so it is not zeroed first (the
# others accumulate into it). The elementwise helpers do too; they have no kernel family.
WRITES_WHOLE_INPUT_GRAD = {"maxpool2d_2x2_backward.c.j2", "dense_blocked_backward.c.j2"}


def kernel_family(layer: Layer) -> str | None:
    if layer.kind in CONV_KINDS:
        return "conv"
    if layer.kind in MAXPOOL_KINDS:
        return "maxpool"
    if layer.kind in AVGPOOL_KINDS:
        return "avgpool"
    if layer.kind in ("dense", "global_avgpool"):
        return layer.kind
    return None  # elementwise, or a view (flatten)


def choose_kernel(layer: Layer) -> str:
    """The implementation of this layer's kind to use, decided at compile time from its shapes.

    conv: "blocked" (register tiles of output columns x a vector of channels, see conv2d_blocked.c.j2)
    when there are enough filters and input channels to fill some vector lanes and rows long enough for a
    tile, and the stride is at most 2 (its input gradient correlates a stride-dilated output gradient,
    which wastes stride^2 of the work); "direct" (the plain loops) otherwise. dense: "blocked" from
    BLOCKED_MIN_INPUTS inputs. maxpool2d: "2x2" (four fixed loads per window) for the 2x2 window, stride 2,
    no padding. Everything else: "direct"."""
    if kernel_family(layer) == "conv":
        H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW = _geometry_2d(layer)
        filters, channels = layer.out_shape[0], layer.in_shape[0]
        if filters >= BLOCKED_MIN_CHANNELS and OW >= BLOCKED_MIN_WIDTH and W >= BLOCKED_MIN_WIDTH and max(SH, SW) <= 2:
            return "blocked"
    if layer.kind == "dense" and layer.in_shape[0] >= BLOCKED_MIN_INPUTS:
        return "blocked"
    if (layer.kind == "maxpool2d" and layer.kernel == (2, 2) and layer.stride == (2, 2)
            and not any(layer.pad_before + layer.pad_after)):
        return "2x2"
    return "direct"


# A blocked convolution needs this many filters (vector lanes to fill) and output and input columns (a tile).
BLOCKED_MIN_CHANNELS = 4
BLOCKED_MIN_WIDTH = 4
# A blocked dense layer needs this many inputs (a vector's worth, in float32).
BLOCKED_MIN_INPUTS = 16
# Register budget of one tile: at most this many vector accumulators.
MAX_TILE = 16


def column_block(width: int) -> tuple[int, int]:
    """(columns per register tile, columns in the last, shorter tile or 0) for rows of `width`: a divisor
    of the width in [4, 16] when there is one (the largest), else tiles of 8 and a tail."""
    if width <= MAX_TILE:
        return width, 0
    for block in range(MAX_TILE, 3, -1):
        if width % block == 0:
            return block, 0
    return 8, width % 8


def by_columns(channels: int, width: int, vl: int) -> bool:
    """Whether a correlation with `channels` outputs on rows of `width` fills more vector lanes with
    columns than with channels."""
    return width / (-(-width // vl) * vl) > channels / (-(-channels // vl) * vl)


def column_tile(channels: int, rows: int) -> tuple[int, int]:
    """(output channels, output rows) per tile of the by-columns correlation: a divisor of the channels up
    to 8, and two rows when the rows pair up and it fits MAX_TILE accumulators."""
    mb = max(d for d in range(1, min(channels, 8) + 1) if channels % d == 0)
    return mb, 2 if rows % 2 == 0 and 2 * mb <= MAX_TILE else 1


def weight_grad_by_columns(filters: int, width: int, kernel_width: int, stride: int, vl: int) -> bool:
    """Whether the weight gradient should be vectorised over output columns (few filters: vectors of VL
    filters would stay mostly empty). Needs unit column stride, a tile of filters x kernel columns that fits
    the registers, and rows of at least one vector (a row's last vector overlaps the one before it rather
    than reading past the row)."""
    return stride == 1 and width >= vl and kernel_width <= MAX_TILE and by_columns(filters, width, vl)


def weight_grad_column_tile(filters: int, kernel_width: int) -> int:
    """Filters per tile of the by-columns weight gradient: the largest divisor of the filters whose tile of
    filters x kernel columns vector sums fits MAX_TILE accumulators."""
    return max(d for d in range(1, filters + 1) if filters % d == 0 and d * kernel_width <= MAX_TILE)


def weight_grad_block(channels: int, kernel_width: int) -> tuple[int, int]:
    """(input channels, kernel columns) per weight-gradient tile: the largest divisor of the channels up to
    MAX_TILE, then as many kernel columns (a divisor of the kernel width) as still fit."""
    cb = max(d for d in range(1, min(channels, MAX_TILE) + 1) if channels % d == 0)
    kb = max(d for d in range(1, kernel_width + 1) if kernel_width % d == 0 and cb * d <= MAX_TILE)
    return cb, kb


# ---- the plan --------------------------------------------------------------------------------------
@dataclass
class Buffer:
    """One tensor in the activation block (or the int32 argmax block): (N, *shape)."""

    field: str
    shape: tuple[int, ...]
    note: str
    ctype: str = "real"
    offset: int = 0  # per sample, within its block (for a fixed buffer: within the fixed region)
    fixed: bool = False  # one copy whatever the batch (packed weights), at the start of the activation block
    align: int = 1  # the size is rounded up to a multiple of this many elements

    @property
    def size(self) -> int:
        return -(-prod(self.shape) // self.align) * self.align


@dataclass
class ParamBuffer:
    field: str
    offset: int
    note: str


@dataclass
class LayerPlan:
    index: int
    layer: Layer
    fn: str  # C function prefix: "l3_conv2d" (with the network prefix in a bundle)
    K: str  # C constant prefix: "L3"
    summary: str  # the banner line: "conv2d 'c1' + relu: (1, 28, 28) -> (6, 28, 28)"
    notes: list[str]
    constant_rows: list[str]
    forward_template: str | None
    backward_template: str | None
    inp: str = ""  # expressions for the buffers it reads and writes, e.g. "a.l2_out"
    pre: str | None = None
    out: str = ""
    extra: dict = field(default_factory=dict)  # argmax / mask buffer, weight / bias fields


@dataclass
class NetworkPlan:
    network: Network
    P: str  # symbol prefix: "" alone, "m2_" in a bundle
    K: str  # constant prefix: "" alone, "M2_" in a bundle
    title: str
    layers: list[LayerPlan]
    params: list[ParamBuffer]
    param_count: int
    acts: list[Buffer]
    act_count: int
    fixed_count: int
    argmax_count: int
    dropout_layers: list[str]  # names of the layers that take a mask, in order
    forward_lines: list[str]
    backward_lines: list[str]
    output_buffer: str
    slices: int  # a batch runs as at most this many slices (see batch_slices)
    slice_fixed_count: int  # the fixed buffers of one batch slice (fixed_count holds `slices` of them)
    grad_stride: int  # the parameter count rounded up to whole vectors: one slice's gradient block
    work: int  # multiply-adds per sample of the whole network, for the parallel-or-not choice

    # ---- what the template prints ----
    @property
    def grad_slices_offset(self) -> int:
        """Where the gradient blocks of slices 1.. start in the fixed region (slice 0 uses the caller's)."""
        return self.slices * self.slice_fixed_count

    @property
    def in_size(self) -> int:
        return prod(self.network.input_shape)

    @property
    def out_size(self) -> int:
        return prod(self.network.output_shape)

    @property
    def in_shape(self) -> str:
        return ", ".join(map(str, self.network.input_shape))

    @property
    def out_shape(self) -> str:
        return ", ".join(map(str, self.network.output_shape))

    @property
    def backward_reads_acts(self) -> bool:
        return any("a." in line for line in self.backward_lines)

    @property
    def dropout_count(self) -> int:
        return len(self.dropout_layers)

    @property
    def dropout_names(self) -> str:
        return ", ".join(f"'{name}'" for name in self.dropout_layers)

    @property
    def params_width(self) -> int:
        return max((len(t.field) for t in self.params), default=0)

    @property
    def acts_width(self) -> int:
        return max(len(t.field) + len(t.ctype) for t in self.acts)


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _geometry_2d(layer: Layer):
    """(H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW): a 1-D layer runs as a 2-D one of height 1."""
    if layer.spatial_dims == 1:
        (L,), (OL,) = layer.in_shape[1:], layer.out_shape[1:]
        return (1, L, 1, OL, 1, layer.kernel[0], 1, layer.stride[0], 1, layer.dilation[0], 0, layer.pad_before[0])
    (H, W), (OH, OW) = layer.in_shape[1:], layer.out_shape[1:]
    return (H, W, OH, OW, *layer.kernel, *layer.stride, *layer.dilation, *layer.pad_before)


def _constants(layer: Layer, K: str, blocked: BlockedConv | None = None) -> tuple[list[str], list[str]]:
    """The layer's enum rows (`L3_C = 6, L3_H = 14,  // input`) and any notes for its banner."""
    rows: list[tuple[str, list[tuple[str, int]]]] = []
    notes: list[str] = []
    family = kernel_family(layer)
    if family in ("conv", "maxpool", "avgpool"):
        H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW = _geometry_2d(layer)
        is_conv = family == "conv"
        rows.append(("input: channels, height, width", [("C", layer.in_shape[0]), ("H", H), ("W", W)]))
        out = [("F", layer.out_shape[0])] if is_conv else []
        rows.append(("output" + (": filters, height, width" if is_conv else ": height, width"), out + [("OH", OH), ("OW", OW)]))
        rows.append(("kernel" if is_conv else "window", [("KH", KH), ("KW", KW)]))
        rows.append(("stride", [("SH", SH), ("SW", SW)]))
        if is_conv:
            rows.append(("dilation", [("DH", DH), ("DW", DW)]))
        rows.append(("zero rows above, columns left (those below/right follow from OH, OW)" if is_conv
                     else "padding above, left", [("PH", PH), ("PW", PW)]))
        if blocked is not None:
            rows += blocked.rows()
        elif is_conv:
            rows.append(("output columns per block of the weight gradient's partial sums",
                         [("OW_BLOCK", min(OW, OW_BLOCK_MAX))]))
        if layer.spatial_dims == 1:
            notes.append(f"{layer.kind} runs as a {layer.kind[:-2]}2d of height 1: (C, L) is (C, 1, L)")
        if family != "conv" or layer.pad_before != layer.pad_after:
            pads = ", ".join(f"{b}+{a}" for b, a in zip(layer.pad_before, layer.pad_after))
            if any(layer.pad_before) or any(layer.pad_after):
                notes.append(f"padding (before+after) per axis: {pads}")
    elif family == "dense":
        rows.append(("inputs, units", [("D", layer.in_shape[0]), ("U", layer.units)]))
    elif family == "global_avgpool":
        rows.append(("channels, positions per channel", [("C", layer.in_shape[0]), ("HW", prod(layer.in_shape[1:]))]))
    rows.append(("elements per sample", [("IN_SIZE", layer.in_size), ("OUT_SIZE", layer.out_size)]))
    return [_enum_row(K, layer.name, comment, pairs) for comment, pairs in rows], notes


def _enum_row(K: str, layer_name: str, comment: str, pairs) -> str:
    body = ", ".join(f"{K}_{name} = {c_int(value, f'{name} of layer {layer_name}', 0)}" for name, value in pairs) + ","
    return f"{body:<44}  // {comment}"


@dataclass
class BlockedConv:
    """Sizes of a blocked convolution beyond its geometry: vectors, tiles and scratch planes."""

    FV: int  # vectors of VL filters
    CV: int  # vectors of VL input channels (the input gradient's outputs)
    HP: int  # rows and columns of the (zero-padded) input as the forward correlation reads it
    WP: int
    HD: int  # rows and columns of the spread-out, padded output gradient
    WD: int
    OB: int  # output columns per forward tile, and in the last tile (0: none)
    OB_TAIL: int
    XB: int  # input columns per input-gradient tile, and in the last tile
    XB_TAIL: int
    CB: int  # input channels and kernel columns per weight-gradient tile
    KB: int
    padded: bool  # whether forward copies the input into a padded buffer
    # Forward and input gradient each vectorise over output channels, or over output columns (few channels):
    forward_by_columns: bool
    input_grad_by_columns: bool
    FMB: int = 0  # by columns: output channels and rows per tile, forward and input gradient
    FRB: int = 0
    XMB: int = 0
    XRB: int = 0
    # The weight gradient vectorised over output columns (few filters): WMB filters x KW taps per tile.
    weight_grad_by_columns: bool = False
    WMB: int = 0

    @classmethod
    def of(cls, layer: Layer, vl: int) -> "BlockedConv":
        H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW = _geometry_2d(layer)
        C, F = layer.in_shape[0], layer.out_shape[0]
        HP = max(PH + H, (OH - 1) * SH + (KH - 1) * DH + 1)
        WP = max(PW + W, (OW - 1) * SW + (KW - 1) * DW + 1)
        HD = (KH - 1) * DH + max(PH + H, (OH - 1) * SH + 1)
        WD = (KW - 1) * DW + max(PW + W, (OW - 1) * SW + 1)
        fwd_cols = SW == 1 and by_columns(F, OW, vl)
        dx_cols = by_columns(C, W, vl)
        OB, OB_TAIL = (vl, OW % vl) if fwd_cols else column_block(OW)
        XB, XB_TAIL = (vl, W % vl) if dx_cols else column_block(W)
        b = cls(-(-F // vl), -(-C // vl), HP, WP, HD, WD, OB, OB_TAIL, XB, XB_TAIL, *weight_grad_block(C, KW),
                padded=(HP, WP, PH, PW) != (H, W, 0, 0), forward_by_columns=fwd_cols, input_grad_by_columns=dx_cols)
        if fwd_cols:
            b.FMB, b.FRB = column_tile(F, OH)
        if dx_cols:
            b.XMB, b.XRB = column_tile(C, H)
        if weight_grad_by_columns(F, OW, KW, SW, vl):
            b.weight_grad_by_columns, b.WMB = True, weight_grad_column_tile(F, KW)
        return b

    def rows(self) -> list[tuple[str, list[tuple[str, int]]]]:
        tiles = []
        if self.forward_by_columns:
            tiles.append(("forward by columns: output channels, rows per tile", [("FMB", self.FMB), ("FRB", self.FRB)]))
        if self.input_grad_by_columns:
            tiles.append(("input gradient by columns: channels, rows per tile", [("XMB", self.XMB), ("XRB", self.XRB)]))
        if self.weight_grad_by_columns:
            tiles.append(("weight gradient by columns: filters per tile (x KW taps)", [("WMB", self.WMB)]))
        return tiles + [("vectors of VL filters, of VL input channels", [("FV", self.FV), ("CV", self.CV)]),
                ("input plane as forward reads it" + (" (zero-padded copy)" if self.padded else ""),
                 [("HP", self.HP), ("WP", self.WP)]),
                ("output gradient plane, spread by the stride and padded by the kernel's reach", [("HD", self.HD), ("WD", self.WD)]),
                ("output columns per forward tile, in the last tile", [("OB", self.OB), ("OB_TAIL", self.OB_TAIL)]),
                ("input columns per input-gradient tile, in the last tile", [("XB", self.XB), ("XB_TAIL", self.XB_TAIL)]),
                ("input channels, kernel columns per weight-gradient tile", [("CB", self.CB), ("KB", self.KB)])]

    def geometries(self, K: str) -> tuple[dict, dict]:
        """The constant names the shared correlation macro reads, for forward and for the input gradient."""
        common = {"KH": f"{K}_KH", "KW": f"{K}_KW", "DH": f"{K}_DH", "DW": f"{K}_DW"}
        # the rows that may be nonzero: the input inside its zero padding; the spread output gradient
        forward_rows = {"ROW_LO": f"{K}_PH", "ROW_HI": f"{K}_PH + {K}_H - 1"}
        grad_rows = {"ROW_LO": f"({K}_KH - 1) * {K}_DH", "ROW_HI": f"({K}_KH - 1) * {K}_DH + ({K}_OH - 1) * {K}_SH"}
        forward = {**common, **forward_rows, "CIN": f"{K}_C", "M": f"{K}_F", "MV": f"{K}_FV", "IH": f"{K}_HP", "IW": f"{K}_WP",
                   "OH": f"{K}_OH", "OW": f"{K}_OW", "SH": f"{K}_SH", "SW": f"{K}_SW", "ROW0": "0", "COL0": "0",
                   "OB": f"{K}_OB", "OB_TAIL": f"{K}_OB_TAIL", "tail": self.OB_TAIL > 0,
                   "by_columns": self.forward_by_columns, "MB": f"{K}_FMB", "RB": f"{K}_FRB"}
        backward = {**common, **grad_rows, "CIN": f"{K}_F", "M": f"{K}_C", "MV": f"{K}_CV", "IH": f"{K}_HD", "IW": f"{K}_WD",
                    "OH": f"{K}_H", "OW": f"{K}_W", "SH": "1", "SW": "1", "ROW0": f"{K}_PH", "COL0": f"{K}_PW",
                    "OB": f"{K}_XB", "OB_TAIL": f"{K}_XB_TAIL", "tail": self.XB_TAIL > 0,
                    "by_columns": self.input_grad_by_columns, "MB": f"{K}_XMB", "RB": f"{K}_XRB"}
        return forward, backward


def work(layer: Layer) -> int:
    """Multiply-adds (or adds, for pooling) per sample of the layer's kernels: how much a loop over the
    batch has to share out between threads."""
    if layer.macs:
        return layer.macs
    if layer.kind in POOL_KINDS:
        return layer.out_size * prod(layer.kernel)
    return layer.in_size


# The conv weight gradient keeps one partial sum per output column on the stack, in blocks of at most
# this many columns (8 KiB of doubles).
OW_BLOCK_MAX = 1024

# Below this many multiply-adds a pass runs its batch slices on one thread (see module.c.j2).
PARALLEL_MIN_WORK = 1 << 20

# A batch is cut into at most this many contiguous slices, each run through the whole network by one
# thread (network.c.j2): the most threads one forward or backward pass can use. Each slice has its own
# scratch and its own parameter-gradient block, summed in slice order, so no result depends on the
# thread count. Extra slices cost one thread each time: every slice re-reads the weights and writes a
# gradient block of its own. So a network gets MAX_BATCH_SLICES only while its parameters fit in
# SMALL_PARAM_BYTES (a quarter of one core's L2 here), otherwise MIN_BATCH_SLICES.
MAX_BATCH_SLICES = 4
MIN_BATCH_SLICES = 2
SMALL_PARAM_BYTES = 256 * 1024


def batch_slices(param_count: int, item_size: int) -> int:
    return MAX_BATCH_SLICES if param_count * item_size <= SMALL_PARAM_BYTES else MIN_BATCH_SLICES

ACTIVATION_READS = {"relu": "pre", "leaky_relu": "pre", "sigmoid": "out", "tanh": "out", "softmax": "out"}


def _activation_call(kind: str, direction: str, dst: str, src: str, saved: str | None, count: str, K: str,
                     slope: str) -> str:
    """A call of a shared elementwise helper, e.g. relu_forward(a.l1_out, a.l1_pre, N * L1_OUT_SIZE)."""
    args = [dst, src] if direction == "forward" else [dst, src, saved]
    if kind == "softmax":
        return f"softmax_{direction}({', '.join(args)}, N, {K}_OUT_SIZE);"
    if kind == "leaky_relu":
        args.append(slope)
    return f"{kind}_{direction}({', '.join(args + [count])});"


class _Planner:
    """Walks one network, assigning buffers and writing the forward and backward call sequences."""

    def __init__(self, network: Network, P: str, K: str, vl: int):
        self.network, self.P, self.K, self.vl = network, P, K, vl
        self.acts: list[Buffer] = [Buffer("input", network.input_shape,
                                          f"{_shape(network.input_shape)} a copy of x '{network.input_name}': backward reads it",
                                          align=vl)]
        self.fixed: list[Buffer] = []
        self.argmax: list[Buffer] = []
        self.params: list[ParamBuffer] = []
        self.param_offset = 0
        self.dropout_layers: list[str] = []

    def buffer(self, field_name: str, shape, note: str, ctype: str = "real", fixed: bool = False) -> str:
        """A buffer of (N, *shape) (or of shape, if fixed), every real one a whole number of vectors long
        so that each starts on a vector boundary."""
        b = Buffer(field_name, tuple(shape), f"{_shape(shape)} {note}", ctype, fixed=fixed,
                   align=1 if ctype == "int32_t" else self.vl)
        (self.argmax if ctype == "int32_t" else self.fixed if fixed else self.acts).append(b)
        return f"a.{field_name}"

    def param(self, field_name: str, spec) -> str:
        self.params.append(ParamBuffer(field_name, self.param_offset, f"{spec.name} {_shape(spec.shape)}"))
        self.param_offset += spec.size
        return field_name

    def plan(self) -> NetworkPlan:
        layers = []
        current = "a.input"
        for index, layer in enumerate(self.network.layers, start=1):
            lp = self.plan_layer(index, layer, current)
            layers.append(lp)
            current = lp.out
        forward_lines = [line for lp in layers for line in self.forward_calls(lp)]
        backward_lines = self.backward_calls(layers)
        for block in (self.acts, self.fixed, self.argmax):
            offset = 0
            for b in block:
                b.offset, offset = offset, offset + b.size
        n = self.network
        params = sum(lp.layer.param_count for lp in layers)
        title = (f"model '{n.name}': {n.input_name} {_shape(n.input_shape)} -> {_shape(n.output_shape)}, "
                 f"{len(n.layers)} layers, {params:,} parameters")
        slice_fixed = sum(b.size for b in self.fixed)
        grad_stride = -(-self.param_offset // self.vl) * self.vl
        slices = batch_slices(self.param_offset, VECTOR_BYTES // self.vl)
        fixed_count = slices * slice_fixed + (slices - 1) * grad_stride
        network_work = min(sum(work(lp.layer) for lp in layers if kernel_family(lp.layer) and lp.out != lp.inp), MAX_INT32)
        return NetworkPlan(n, self.P, self.K, title, layers, self.params, self.param_offset,
                           self.fixed + self.acts + self.argmax, sum(b.size for b in self.acts),
                           fixed_count, sum(b.size for b in self.argmax),
                           self.dropout_layers, forward_lines, backward_lines, current,
                           slices, slice_fixed, grad_stride, network_work)

    # ---- one layer's buffers ----
    def plan_layer(self, index: int, layer: Layer, inp: str) -> LayerPlan:
        family = kernel_family(layer)
        sym = f"l{index}"
        K = f"{self.K}L{index}"
        kind_word = layer.kind + (f" + {layer.activation}" if layer.activation else "")
        summary = f"{kind_word} '{layer.name}': {_shape(layer.in_shape)} -> {_shape(layer.out_shape)}"
        choice = choose_kernel(layer) if family else None
        blocked = BlockedConv.of(layer, self.vl) if family == "conv" and choice == "blocked" else None
        rows, notes = _constants(layer, K, blocked)
        kernel = KERNELS[family][choice] if family else None
        lp = LayerPlan(index, layer, f"{self.P}{sym}_{layer.kind}", K, summary, notes, rows,
                       kernel.forward if kernel else None, kernel.backward if kernel else None, inp=inp)
        if layer.kind == "flatten" or (layer.kind == "dropout" and layer.rate == 0):
            lp.out = inp  # a view: same memory, new shape (or dropout that never drops)
            lp.notes.append("no code: the output is the input's memory" + (" viewed flat" if layer.kind == "flatten" else ""))
            return lp
        for spec in layer.params:
            lp.extra[spec.name.rsplit(".", 1)[1]] = self.param(f"{sym}_{spec.name.rsplit('.', 1)[1]}", spec)
        if layer.activation:
            lp.pre = self.buffer(f"{sym}_pre", layer.out_shape, f"'{layer.name}' before {layer.activation}")
        lp.out = self.buffer(f"{sym}_out", layer.out_shape, f"'{layer.name}'")
        if family == "maxpool":
            lp.extra["argmax"] = self.buffer(f"{sym}_argmax", layer.out_shape, f"'{layer.name}' winners", "int32_t")
        if blocked is not None:
            self.plan_blocked_conv(lp, sym, blocked)
        if family == "dense" and choice == "blocked":
            self.plan_blocked_dense(lp)
        if layer.kind == "dropout":
            lp.extra["mask"] = self.buffer(f"{sym}_mask", layer.in_shape, f"'{layer.name}' mask, 0 or 1/(1 - {layer.rate!r})")
            lp.extra["mask_index"] = len(self.dropout_layers)
            self.dropout_layers.append(layer.name)
        return lp

    def plan_blocked_conv(self, lp: LayerPlan, sym: str, b: BlockedConv) -> None:
        """The scratch a blocked convolution needs: the padded input (kept for backward), the packed
        weights, the output gradient with filters last and spread out, the rotated weights."""
        layer, vl = lp.layer, self.vl
        C, F = layer.in_shape[0], layer.out_shape[0]
        H, W, OH, OW, KH, KW = _geometry_2d(layer)[:6]
        forward, backward = b.geometries(lp.K)
        lp.extra.update(padded=b.padded, forward_geometry=forward, input_grad_geometry=backward,
                        weight_grad_by_columns=b.weight_grad_by_columns)
        lp.extra["xpad"] = (self.buffer(f"{sym}_xpad", (C, b.HP, b.WP), f"'{layer.name}' input, zero-padded: backward reads it")
                            if b.padded else "NULL")
        lp.extra["wpack"] = self.buffer(f"{sym}_wpack", (KH, KW, C, b.FV * vl), f"'{layer.name}' weights, filters last", fixed=True)
        lp.extra["bpack"] = self.buffer(f"{sym}_bpack", (b.FV * vl,), f"'{layer.name}' bias, padded to whole vectors", fixed=True)
        lp.extra["wrot"] = self.buffer(f"{sym}_wrot", (KH, KW, F, b.CV * vl), f"'{layer.name}' weights turned 180 degrees, channels last",
                                       fixed=True)
        lp.extra["dyt"] = ("NULL" if b.weight_grad_by_columns else  # the by-columns weight gradient reads dout itself
                           self.buffer(f"{sym}_dyt", (OH, OW, b.FV * vl), f"'{layer.name}' output gradient, filters last"))
        lp.extra["dypad"] = self.buffer(f"{sym}_dypad", (F, b.HD, b.WD), f"'{layer.name}' output gradient, spread and padded")

    def plan_blocked_dense(self, lp: LayerPlan) -> None:
        """Vectors along the inputs: DV whole ones and a tail of DT; tiles of 4 units and a tail of UT."""
        D, U, vl = lp.layer.in_shape[0], lp.layer.units, self.vl
        full, tail = divmod(D % (4 * vl), vl)
        rest = [(full + 1, tail)] if tail else ([(full, vl)] if full else [])
        lp.extra["dense"] = {"DT": D % vl, "UT": U % 4, "rest": rest}
        lp.constant_rows.append(_enum_row(lp.K, lp.layer.name, "whole vectors of inputs, inputs left over; units left over by tiles of 4",
                                          [("DV", D // vl), ("DT", D % vl), ("UT", U % 4)]))

    # ---- forward ----
    def forward_calls(self, lp: LayerPlan) -> list[str]:
        layer, K = lp.layer, lp.K
        if lp.out == lp.inp:
            return []
        lines = [f"// {lp.summary}"]
        family = kernel_family(layer)
        slope = c_real(layer.slope, "slope")
        target = lp.pre or lp.out
        if "wpack" in lp.extra:
            bias = f"p.{lp.extra['bias']}" if "bias" in lp.extra else "NULL"
            lines.append(f"{lp.fn}_forward({target}, {lp.inp}, p.{lp.extra['weight']}, {bias}, {lp.extra['xpad']}, "
                         f"{lp.extra['wpack']}, {lp.extra['bpack']}, N);")
        elif family in ("conv", "dense"):
            bias = f"p.{lp.extra['bias']}" if "bias" in lp.extra else "NULL"
            lines.append(f"{lp.fn}_forward({target}, {lp.inp}, p.{lp.extra['weight']}, {bias}, N);")
        elif family == "maxpool":
            lines.append(f"{lp.fn}_forward({lp.out}, {lp.extra['argmax']}, {lp.inp}, N);")
        elif family in ("avgpool", "global_avgpool"):
            lines.append(f"{lp.fn}_forward({lp.out}, {lp.inp}, N);")
        elif layer.kind == "dropout":
            count = f"N * {K}_OUT_SIZE"
            lines += [f"if (masks != NULL) {{",
                      f"    dropout_forward({lp.out}, {lp.extra['mask']}, {lp.inp}, masks[{lp.extra['mask_index']}] + n0 * {K}_OUT_SIZE, {count});",
                      "} else {",
                      f"    identity_forward({lp.out}, {lp.inp}, {count});",
                      "}"]
        else:  # a standalone activation
            lines.append(_activation_call(layer.kind, "forward", lp.out, lp.inp, None, f"N * {K}_OUT_SIZE", K, slope))
        if lp.pre:
            lines.append(_activation_call(layer.activation, "forward", lp.out, lp.pre, None, f"N * {K}_OUT_SIZE", K, slope))
        return lines

    # ---- backward ----
    def backward_calls(self, layers: list[LayerPlan]) -> list[str]:
        """Walk the layers backwards. The gradient flows through two scratch buffers, grad_a and grad_b:
        each step reads one and writes the other (dy and dx, the caller's arrays, at the two ends)."""
        compute = [lp for lp in layers if lp.out != lp.inp]
        if not compute:
            return [f"memcpy(dx, dy, (size_t)(N * {self.K}MODEL_IN_SIZE) * sizeof(real));"]
        scratch_size = {"a.grad_a": 0, "a.grad_b": 0}

        def other_than(buffer: str, per_sample: int) -> str:
            chosen = "a.grad_b" if buffer == "a.grad_a" else "a.grad_a"
            scratch_size[chosen] = max(scratch_size[chosen], per_sample)
            return chosen

        lines: list[str] = []
        dout = "dy"
        for lp in reversed(compute):
            layer, K = lp.layer, lp.K
            first = lp is compute[0]
            lines.append(f"// {lp.summary}")
            slope = c_real(layer.slope, "slope")
            if lp.pre:  # through the fused activation first: dout -> dpre
                dpre = other_than(dout, layer.out_size)
                saved = lp.pre if ACTIVATION_READS[layer.activation] == "pre" else lp.out
                # elementwise backward helpers write (=) every element: no zeroing first
                lines.append(_activation_call(layer.activation, "backward", dpre, dout, saved, f"N * {K}_OUT_SIZE", K, slope))
                dout = dpre
            dinp = "dx" if first else other_than(dout, layer.in_size)
            family = kernel_family(layer)
            if first and family in ("conv", "dense"):
                # the first layer's input gradient only when the caller wants dx
                if lp.backward_template not in WRITES_WHOLE_INPUT_GRAD:
                    lines.append(f"if (input_grad) {{ zero(dx, N * {K}_IN_SIZE); }}")
                dinp = "input_grad ? dx : NULL"
            elif family is not None and lp.backward_template not in WRITES_WHOLE_INPUT_GRAD:
                # the elementwise helpers and WRITES_WHOLE_INPUT_GRAD write (=) every element, the others accumulate
                lines.append(f"zero({dinp}, N * {K}_IN_SIZE);")
            if "wpack" in lp.extra:
                dbias = f"g.{lp.extra['bias']}" if "bias" in lp.extra else "NULL"
                xin = lp.extra["xpad"] if lp.extra["padded"] else lp.inp
                lines.append(f"{lp.fn}_backward({dinp}, g.{lp.extra['weight']}, {dbias}, {dout}, {xin}, "
                             f"p.{lp.extra['weight']}, {lp.extra['dyt']}, {lp.extra['dypad']}, {lp.extra['wrot']}, N);")
            elif family in ("conv", "dense"):
                dbias = f"g.{lp.extra['bias']}" if "bias" in lp.extra else "NULL"
                lines.append(f"{lp.fn}_backward({dinp}, g.{lp.extra['weight']}, {dbias}, {dout}, {lp.inp}, "
                             f"p.{lp.extra['weight']}, N);")
            elif family == "maxpool":
                lines.append(f"{lp.fn}_backward({dinp}, {dout}, {lp.extra['argmax']}, N);")
            elif family in ("avgpool", "global_avgpool"):
                lines.append(f"{lp.fn}_backward({dinp}, {dout}, N);")
            elif layer.kind == "dropout":
                count = f"N * {K}_OUT_SIZE"
                lines += ["if (dropout) {",
                          f"    dropout_backward({dinp}, {dout}, {lp.extra['mask']}, {count});",
                          "} else {",
                          f"    identity_backward({dinp}, {dout}, {count});",
                          "}"]
            else:
                saved = lp.inp if ACTIVATION_READS[layer.kind] == "pre" else lp.out
                lines.append(_activation_call(layer.kind, "backward", dinp, dout, saved, f"N * {K}_OUT_SIZE", K, slope))
            dout = dinp
        for name, size in scratch_size.items():
            if size:
                field_name = name[2:]
                self.buffer(field_name, (size,), "gradient scratch: backward alternates between grad_a and grad_b")
        return lines


# ---- rendering -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CSource:
    text: str  # the C translation unit
    cdef: str  # its exported declarations, for cffi
    dtype: str
    plans: tuple[NetworkPlan, ...]


@cache
def _environment() -> jinja2.Environment:
    import jinja2  # here, not at the top: a cache hit plans the network but renders nothing

    return jinja2.Environment(loader=template_loader(),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True, autoescape=False)


def plan_network(network: Network, prefix: str = "", dtype: str = "float32") -> NetworkPlan:
    """Check the network and plan its C. prefix: "" for a module of one network, "m<k>_" in a bundle."""
    check_network(network)
    if not re.fullmatch(r"(m[0-9]+_)?", prefix):
        raise ValueError(f"network symbol prefix must be '' or m<k>_; got {prefix!r}")
    if dtype not in C_TYPES:
        raise ValueError(f"dtype must be one of {', '.join(C_TYPES)}; got {dtype!r}")
    return _Planner(network, prefix, prefix.upper(), VECTOR_BYTES // ITEM_SIZE[dtype]).plan()


def cdef_for(plans, ctype: str) -> str:
    """What cffi binds: each network's entry points and sizes, then the shared loss and optimiser."""
    lines = []
    for plan in plans:
        P, K = plan.P, plan.K
        # "..." asks cffi to read each value from the compiled C: Python checks them against the plan.
        lines += [f"#define {K}MODEL_{what} ..." for what in SIZE_CONSTANTS]
        lines += [
                  f"void {P}model_forward(real* y, real* act_block, int32_t* argmax_block, const real* x, "
                  f"real* param_block, const real* const* masks, int64_t N);",
                  f"void {P}model_backward(real* dx, real* grad_block, const real* dy, real* param_block, "
                  f"real* act_block, int32_t* argmax_block, int64_t N, int dropout, int input_grad);"]
    lines += ["double cross_entropy_loss(real* dlogits, const real* logits, const int64_t* labels, int64_t N, int K);",
              "double mse_loss(real* dy, const real* y, const real* target, int64_t count);",
              "int all_finite(const real* x, int64_t count);",
              "void sgd_step(real* param, real* momentum_buffer, const real* grad, int64_t count, double lr, "
              "double momentum, double weight_decay, int nesterov, int first_step);",
              "void adam_step(real* param, real* m, real* v, const real* grad, int64_t count, double lr, double beta1, "
              "double beta2, double eps, double weight_decay, int64_t t);"]
    return f"typedef {ctype} real;\n" + "\n".join(lines) + "\n"


def generate(networks, dtype: str = "float32") -> CSource:
    """One C translation unit for one network, or for several (a bundle: symbols prefixed m0_, m1_, ...)."""
    if isinstance(networks, Network):
        networks = [networks]
    networks = list(networks)
    if not networks:
        raise ValueError("generate needs at least one network")
    if dtype not in C_TYPES:
        raise ValueError(f"dtype must be one of {', '.join(C_TYPES)}; got {dtype!r}")
    single = len(networks) == 1
    plans = tuple(plan_network(n, "" if single else f"m{k}_", dtype) for k, n in enumerate(networks))
    helpers = set().union(*(_helpers_of(p) for p in plans))
    title = (f"model '{plans[0].network.name}'" if single else
             f"{len(plans)} models: " + ", ".join(f"'{p.network.name}'" for p in plans)) + f", {dtype}"
    text = _environment().get_template("module.c.j2").render(
        title=title, version=__version__, ctype=C_TYPES[dtype], dtype=dtype, networks=plans, helpers=helpers,
        parallel_min_work=PARALLEL_MIN_WORK, vector_bytes=VECTOR_BYTES)
    return CSource(text, cdef_for(plans, C_TYPES[dtype]), dtype, plans)


def _helpers_of(plan: NetworkPlan) -> set[str]:
    used = set()
    for lp in plan.layers:
        if lp.out == lp.inp:
            continue
        if lp.layer.activation:
            used.add(lp.layer.activation)
        if lp.layer.kind in ACTIVATIONS:
            used.add(lp.layer.kind)
        if lp.layer.kind == "dropout":
            used.update(("dropout", "identity"))
    return used
