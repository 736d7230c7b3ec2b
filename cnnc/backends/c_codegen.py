"""IR -> C glue over the kernel library: plan each layer, then render templates/module.c.j2.

    source = generate([network], "float32")       # one C translation unit (the glue)
    source.text                                  # the glue C, readable on its own
    source.headers                               # {"kernels/conv.h": text, ...}: the kernel library it includes
    source.cdef                                  # the declarations cffi binds
    source.plans[0].param_count                  # the layout the Python side views

Pipeline: the front end's IR is the contract (its shapes are already checked); `plan_network` turns each
layer into a typed plan (one dataclass per layer kind and variant: ConvPlan, BlockedConvPlan, DensePlan, ...)
holding the layer's geometry, the buffers it reads and writes and its scratch; each plan says which kernel
header it needs and prints its own calls. The template only lays out the blocks and prints the calls.

What reaches the C text (see cnnc.c_names): numbers checked by c_int / c_real, identifiers built here from
layer positions (`l3_weight`, `L3`), and, in comments only, layer and model names that are plain identifiers.

The kernels themselves are hand-written C in cnnc/kernels/*.h, written once; the glue calls each one with a
`static const` geometry of constants, and the kernels are always-inline, so gcc specialises every call site.
`choose_kernel` is the one place that picks a variant (blocked, 2x2, direct) per layer at compile time.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from functools import cache
from math import gcd, prod
from typing import ClassVar

from .._version import __version__
from ..c_names import MAX_INT32, c_int, c_real, comment_name
from ..diagnostics import CnncError
from ..ir import (ACTIVATIONS, AVGPOOL_KINDS, CONV_KINDS, CONV_TRANSPOSE_KINDS, LAYER_KINDS, MAXPOOL_KINDS, MERGE_KINDS,
                  POOL_KINDS, Layer, Network)
from ..resources import kernel_header_texts, template_loader

C_TYPES = {"float32": "float", "float64": "double"}
# Per-network sizes the C defines as <prefix>MODEL_<what> and Python reads back through cffi.
SIZE_CONSTANTS = ("PARAM_COUNT", "ACT_COUNT", "FIXED_COUNT", "ARGMAX_COUNT", "IN_SIZE", "OUT_SIZE", "DROPOUT_LAYERS",
                  "BUFFER_COUNT")
# The blocked kernels work on vectors of VECTOR_BYTES (GCC vector extensions: AVX-512 where the CPU has it,
# two AVX2 or four SSE registers elsewhere); VL = VECTOR_BYTES / sizeof(real) lanes.
VECTOR_BYTES = 64
ITEM_SIZE = {"float32": 4, "float64": 8}
# Kernel headers every glue file includes: the library's common definitions, the vectors and the loss and
# optimiser kernels behind the module's shared entry points.
BASE_HEADERS = ("blocks.h", "common.h", "vector.h", "loss.h", "optim.h")


def kernel_headers() -> dict[str, str]:
    """{name: text} of every header of the kernel library (cnnc/kernels/*.h), read as package resources."""
    return kernel_header_texts()


def header_closure(names) -> list[str]:
    """The headers `names` need, with the ones they include (`#include "x.h"`), sorted."""
    texts = kernel_headers()
    needed, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += re.findall(r'^#include "([a-z_]+\.h)"', texts[name], flags=re.M)
    return sorted(needed)


# ---- kernel choice ---------------------------------------------------------------------------------
# A blocked convolution needs this many filters (vector lanes to fill) and output and input columns (a tile).
BLOCKED_MIN_CHANNELS = 4
BLOCKED_MIN_WIDTH = 4
# The blocked convolutions copy their input zero-padded (and spread the output gradient over that extent);
# where the windows reach over more than this many times the input's area, the direct loops, which skip
# taps in the padding and copy nothing, are chosen: a huge padding or dilation must not cost memory.
BLOCKED_MAX_PADDED_GROWTH = 4
# kernels/conv_grouped.h's DEPTHWISE_ROUND: the depthwise backward's product rows are whole multiples of it.
DEPTHWISE_ROUND = 16
# A blocked dense layer needs this many inputs (a vector's worth, in float32).
BLOCKED_MIN_INPUTS = 16
# Register budget of one tile: at most this many vector accumulators (MAX_TILE in kernels/vector.h).
MAX_TILE = 16
# Winograd F(2x2, 3x3) (kernels/winograd.h) for the forward pass and both gradients of a blocked 3x3
# convolution of stride 1 with at least this many channels in and out and planes of at least this many rows
# and columns. CNNC_WINOGRAD=0 in the environment (read at import) or WINOGRAD = False turns it off (A/B runs).
# Measured at ResNet-8's shapes (batch 64, one thread, calls alternating in one process): 16 channels at
# 28x28 forward -9 to -14%, input gradient -27 to -31%; 32 at 14x14 -6 to -16% and -10 to -18%; 64 at 7x7
# forward +5 to +7% (the tiles cover 8x8: 30% wasted), input gradient even. With the weight gradient by
# Winograd too and the register transposes (kernels/winograd.h), 64 channels at 7x7 win as well: ResNet-8's
# `s3.c2` backward step 23% fewer perf samples, its forward 20% fewer. Hence planes of at least 7.
WINOGRAD = os.environ.get("CNNC_WINOGRAD", "1") != "0"
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_PLANE = 7
# Accumulators of one Winograd GEMM tile (the size of winograd_gemm_tile's array).
WINOGRAD_TILE = 24


def round_up(count: int, multiple: int) -> int:
    """count rounded up to a whole number of multiples (whole vectors, with multiple = VL)."""
    return -(-count // multiple) * multiple


def kernel_family(layer: Layer) -> str | None:
    if layer.kind in CONV_KINDS:
        return "conv"
    if layer.kind in MAXPOOL_KINDS:
        return "maxpool"
    if layer.kind in AVGPOOL_KINDS:
        return "avgpool"
    if layer.kind in ("dense", "global_avgpool"):
        return layer.kind
    if layer.kind in CONV_TRANSPOSE_KINDS:
        return "conv_transpose"
    return None  # elementwise, or a view (flatten)


def choose_kernel(layer: Layer) -> str:
    """The implementation of this layer's kind to use, decided at compile time from its shapes.

    conv: "blocked" (kernels/conv_blocked.h: register tiles of output columns x a vector of channels) when
    there are enough filters to fill some vector lanes and rows long enough for a tile, and the stride is at
    most 2 (a strided input gradient goes phase by phase, but with few input channels, by columns, it
    correlates the stride-dilated output gradient, which wastes stride^2 of the work); "direct" (kernels/conv.h, the plain loops) otherwise. dense: "blocked" from BLOCKED_MIN_INPUTS
    inputs. maxpool2d: "2x2" (four fixed loads per window) for the 2x2 window, stride 2, no padding. A grouped
    convolution (groups > 1, depthwise included): "grouped" (kernels/conv_grouped.h).
    Everything else: "direct"."""
    if kernel_family(layer) == "conv" and layer.groups != 1:
        return "grouped"
    if kernel_family(layer) == "conv":
        H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW = geometry_2d(layer)
        reach = ((OH - 1) * SH + DH * (KH - 1) + 1) * ((OW - 1) * SW + DW * (KW - 1) + 1)  # the windows' extent
        if (layer.out_shape[0] >= BLOCKED_MIN_CHANNELS and OW >= BLOCKED_MIN_WIDTH and W >= BLOCKED_MIN_WIDTH
                and max(SH, SW) <= 2 and reach <= BLOCKED_MAX_PADDED_GROWTH * H * W):
            return "blocked"
    if layer.kind == "dense" and layer.in_shape[0] >= BLOCKED_MIN_INPUTS:
        return "blocked"
    if (layer.kind == "maxpool2d" and layer.kernel == (2, 2) and layer.stride == (2, 2)
            and not any(layer.pad_before + layer.pad_after) and not layer.ceil):  # ceil's last window is partial
        return "2x2"
    return "direct"


def codegen_switches() -> dict[str, bool]:
    """The switches that change the generated C for the same IR (part of the C module cache's key)."""
    return {"winograd": WINOGRAD}


def winograd_fits(layer: Layer) -> bool:
    """Whether a convolution that choose_kernel made "blocked" runs its forward pass and gradients by
    Winograd F(2x2, 3x3) (kernels/winograd.h): 3x3, stride 1, dilation 1, one group, padding 0-2 on every
    side, WINOGRAD_MIN_CHANNELS in and out and both planes at least WINOGRAD_MIN_PLANE rows and columns."""
    if not WINOGRAD or kernel_family(layer) != "conv" or layer.groups != 1 or layer.spatial_dims != 2:
        return False
    H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW = geometry_2d(layer)
    pads = (*layer.pad_before, *layer.pad_after)
    return ((KH, KW, SH, SW, DH, DW) == (3, 3, 1, 1, 1, 1) and min(pads) >= 0 and max(pads) <= 2
            and min(layer.in_shape[0], layer.out_shape[0]) >= WINOGRAD_MIN_CHANNELS
            and min(H, W, OH, OW) >= WINOGRAD_MIN_PLANE)


def winograd_pass(CIN: int, M: int, IH: int, IW: int, OH: int, OW: int, TOP: int, LEFT: int,
                  vl: int) -> list[tuple[str, int]]:
    """kernels/winograd.h's WinogradPass: M planes (OH, OW) from CIN planes (IH, IW) at (TOP, LEFT) of the
    tile plane; the GEMM tile is FB vectors of outputs (a divisor of them up to 4) x as many tiles as fit
    WINOGRAD_TILE accumulators."""
    MV = -(-M // vl)
    TH, TW = -(-OH // 2), -(-OW // 2)
    FB = max(d for d in (1, 2, 3, 4) if MV % d == 0)
    TB = min(TH * TW, WINOGRAD_TILE // FB)
    return [("CIN", CIN), ("M", M), ("MV", MV), ("IH", IH), ("IW", IW), ("OH", OH), ("OW", OW), ("TOP", TOP),
            ("LEFT", LEFT), ("TH", TH), ("TW", TW), ("CP", round_up(CIN, vl)), ("TB", TB), ("FB", FB)]


def winograd_scratch(p: dict, vl: int) -> int:
    """Reals of scratch one pass needs (winograd_scratch_size): tile plane, V and M."""
    T = p["TH"] * p["TW"]
    return (2 * p["TH"] + 2) * (2 * p["TW"] + 2) * p["CP"] + 16 * T * p["CP"] + 16 * T * p["MV"] * vl


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
    return width / round_up(width, vl) > channels / round_up(channels, vl)


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


def geometry_2d(layer: Layer):
    """(H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW): a 1-D layer runs as a 2-D one of height 1."""
    if layer.spatial_dims == 1:
        (L,), (OL,) = layer.in_shape[1:], layer.out_shape[1:]
        return (1, L, 1, OL, 1, layer.kernel[0], 1, layer.stride[0], 1, layer.dilation[0], 0, layer.pad_before[0])
    (H, W), (OH, OW) = layer.in_shape[1:], layer.out_shape[1:]
    return (H, W, OH, OW, *layer.kernel, *layer.stride, *layer.dilation, *layer.pad_before)


def phase_taps(r: int, S: int, P: int, K: int, D: int) -> tuple[int, int]:
    """(taps, first output-gradient position read) of phase r of a strided input gradient along one dimension
    (kernels/conv_blocked.h's phase_taps): the taps p with r + P - p*D a multiple of S."""
    taps = [p for p in range(K) if (r + P - p * D) % S == 0]
    return len(taps), ((r + P - taps[-1] * D) // S if taps else 0)


def phase_plane(extent: int, out_extent: int, K: int, S: int, D: int, P: int) -> int:
    """Rows (or columns) of the padded output gradient the phase-by-phase input gradient reads: phase_top
    before the output gradient, and room after it for every phase's last tap."""
    top = ((K - 1) * D + S - 1) // S
    reach = D // gcd(S, D)
    end = out_extent
    for r in range(min(S, extent)):
        count, base = phase_taps(r, S, P, K, D)
        size = -(-(extent - r) // S)
        if count:
            end = max(end, base + (count - 1) * reach + size)
    return top + end


@dataclass(frozen=True)
class BlockedConv:
    """The sizes of a blocked convolution beyond its geometry (kernels/conv_blocked.h's Conv2dBlocked):
    vectors, tiles and scratch planes."""

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
    FMB: int  # by columns: output channels and rows per tile, forward and input gradient
    FRB: int
    input_grad_by_columns: bool
    XMB: int
    XRB: int
    # The weight gradient vectorised over output columns (few filters): WMB filters x KW taps per tile.
    weight_grad_by_columns: bool
    WMB: int
    # Stride > 1 and vectors over channels: the input gradient one phase of the stride at a time
    # (conv2d_blocked_input_grad_phases); HD, WD are then the padded, not spread, output gradient's plane.
    input_grad_phases: bool
    # 1x1, no padding: forward, input and weight gradient as GEMMs over the flat planes, vectorised over
    # positions (kernels/conv_blocked.h, "pointwise"); the fields above are then unused.
    pointwise: bool = False
    pointwise_weight_grad: bool = False  # the two backward GEMMs (with a stride always; see pointwise_blocking)
    pointwise_input_grad: bool = False
    PMB: int = 0  # forward and input gradient: outputs x vectors of positions per tile
    PSB: int = 0
    PFB: int = 0  # weight gradient: filters x channels per tile, samples per block that fits L2
    PCB: int = 0
    PNB: int = 0

    @property
    def packs(self) -> bool:
        """Whether forward packs the weights (filters last) and bias first: not by columns, not as a GEMM."""
        return not (self.pointwise or self.forward_by_columns)

    @classmethod
    def of(cls, layer: Layer, vl: int) -> "BlockedConv":
        H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW = geometry_2d(layer)
        C, F = layer.in_shape[0], layer.out_shape[0]
        HP = max(PH + H, (OH - 1) * SH + (KH - 1) * DH + 1)
        WP = max(PW + W, (OW - 1) * SW + (KW - 1) * DW + 1)
        HD = (KH - 1) * DH + max(PH + H, (OH - 1) * SH + 1)
        WD = (KW - 1) * DW + max(PW + W, (OW - 1) * SW + 1)
        fwd_cols = SW == 1 and by_columns(F, OW, vl)
        dx_cols = by_columns(C, W, vl)
        OB, OB_TAIL = (vl, OW % vl) if fwd_cols else column_block(OW)
        XB, XB_TAIL = (vl, W % vl) if dx_cols else column_block(W)
        FMB, FRB = column_tile(F, OH) if fwd_cols else (0, 0)
        XMB, XRB = column_tile(C, H) if dx_cols else (0, 0)
        pointwise = pointwise_blocking(C, H, W, F, OH, OW, KH, KW, SH, SW, PH, PW, vl)
        wgrad_cols = weight_grad_by_columns(F, OW, KW, SW, vl) and not pointwise
        phases = max(SH, SW) > 1 and not dx_cols
        if phases:
            HD, WD = phase_plane(H, OH, KH, SH, DH, PH), phase_plane(W, OW, KW, SW, DW, PW)
        return cls(-(-F // vl), -(-C // vl), HP, WP, HD, WD, OB, OB_TAIL, XB, XB_TAIL, *weight_grad_block(C, KW),
                   padded=(HP, WP, PH, PW) != (H, W, 0, 0), forward_by_columns=fwd_cols, FMB=FMB, FRB=FRB,
                   input_grad_by_columns=dx_cols, XMB=XMB, XRB=XRB, weight_grad_by_columns=wgrad_cols,
                   WMB=weight_grad_column_tile(F, KW) if wgrad_cols else 0, input_grad_phases=phases, **pointwise)


# Accumulators in one pointwise tile (kernels/conv_blocked.h keeps up to 32 vectors; 24 leave registers for
# the operands on AVX-512), the vector registers a tile may use in all (30 of AVX-512's 32: one or two
# spare for gcc), and the bytes of dout and x one weight-gradient block of samples may take (half of this
# CPU's 1 MiB L2).
POINTWISE_TILE = 24
POINTWISE_REGISTERS = 30
POINTWISE_BLOCK_BYTES = 512 * 1024


def pointwise_blocking(C, H, W, F, OH, OW, KH, KW, SH, SW, PH, PW, vl) -> dict:
    """The pointwise fields of BlockedConv: empty unless the convolution is 1x1 with no padding (any stride:
    the output plane is the input's subsampled), else the tiles. Tiles prefer sizes that divide the channels and
    filters, so that no narrower tail tile runs."""
    if (KH, KW, PH, PW) != (1, 1, 0, 0) or (OH, OW) != ((H - 1) // SH + 1, (W - 1) // SW + 1):
        return {}
    S = OH * OW
    # vectors of positions per forward / input-gradient tile: the plane's whole vectors up to 4 (a last,
    # partial vector is a tile of its own when they divide the whole ones), and as many outputs as fit
    # POINTWISE_TILE accumulators, a divisor of the channels and filters if one is close. Measured on a stack of
    # 1x1 layers at 7x7 (3 whole vectors + 1): 8 x 3 tiles ran the forward pass 1.5x faster than 4 x 4.
    sb = max(1, min(4, S // vl))
    most = POINTWISE_TILE // sb
    mb = max(d for d in range(1, most + 1) if F % d == 0 and C % d == 0)
    if 3 * mb < 2 * most:
        mb = most

    def loads(fb: int, cb: int) -> int:  # vector loads per position of the weight gradient, over all tiles
        # each (filter tile, channel tile) pair loads its f + c vectors: summed over the -(-F // fb) filter
        # tiles (the last one narrower if fb does not divide F) and the -(-C // cb) channel tiles
        return F * -(-C // cb) + C * -(-F // fb)

    # weight-gradient tiles: fb * cb accumulators, and beside them the fb output-gradient vectors a step holds,
    # one input vector and the mask of a plane's last vector, within 30 registers (6 x 4 spilled, 4 x 6 did not)
    fb, cb = min(((f, c) for f in range(1, 7) for c in range(1, 9)
                  if f * c <= POINTWISE_TILE and f * c + f + 2 <= POINTWISE_REGISTERS),
                 key=lambda t: (loads(*t), -t[0] * t[1]))
    itemsize = 64 // vl  # VECTOR_BYTES (64) / VL
    nb = max(1, POINTWISE_BLOCK_BYTES // ((F + C) * S * itemsize))
    # Backward as GEMMs too, with or without a stride (MobileNet-style training 35.7 against 39.3 CPU ms per
    # step with the stride-1 ones on; docs/performance.md, round 4). The fields stay so that a shape where
    # the general backward wins can be left to it.
    return {"pointwise": True, "pointwise_weight_grad": True, "pointwise_input_grad": True,
            "PMB": mb, "PSB": sb, "PFB": fb, "PCB": cb, "PNB": nb}


# ---- buffers ---------------------------------------------------------------------------------------
@dataclass
class Buffer:
    """One tensor in the activation block (or the int32 argmax block): (N, *shape), or (shape) if fixed."""

    field: str
    shape: tuple[int, ...]
    note: str
    ctype: str = "real"
    fixed: bool = False  # one copy per batch slice whatever the batch (packed weights), first in the block
    align: int = 1  # the size is rounded up to a multiple of this many elements

    @property
    def elements(self) -> int:
        return prod(self.shape)

    @property
    def size(self) -> int:
        return round_up(self.elements, self.align)

    @property
    def count_expr(self) -> str:
        """Its elements in C: the shape's product, rounded up to whole vectors where it is aligned."""
        product = " * ".join(map(str, self.shape))
        return f"WHOLE_VECTORS({product})" if self.align > 1 else product


@dataclass
class ParamBuffer:
    """One tensor of the parameter block (or of the buffer block: batch norm's running statistics)."""

    field: str
    offset: int  # in reals, from the start of the parameter block (the Python views use it)
    shape: tuple[int, ...]
    note: str

    @property
    def count_expr(self) -> str:
        return " * ".join(map(str, self.shape))


# ---- typed plans: one per layer kind and variant ---------------------------------------------------
@dataclass(eq=False, repr=False)
class LayerPlan:
    """What every layer's plan holds: where it is, what it reads and writes, and how it prints.

    Plans compare and print field by field, as dataclasses do, through the __eq__ and __repr__ below rather
    than ones @dataclass would write for every kind: each class it writes them for costs ~0.5 ms when this
    module is imported, and every cached load imports it (docs/performance.md, "2026-12-03: cached load").
    So a plan kind that adds fields is a @dataclass(eq=False, repr=False); one that adds only methods and
    class constants is a plain subclass (it inherits __init__ and the fields)."""

    index: int
    layer: Layer
    K: str  # its C constant name: "L3" (with the network's prefix in a bundle, "M1_L3")
    summary: str  # the banner line: "conv2d 'c1' + relu: (1, 28, 28) -> (6, 28, 28)"
    notes: list[str]
    inp: str  # expressions for the buffers it reads and writes, e.g. "a.l2_out"
    out: str
    pre: str | None = None  # the fused activation's input (the layer's own output before it)

    header: ClassVar[str | None] = None  # the kernel header it needs
    struct: ClassVar[str | None] = None  # the C type of its geometry constant
    writes_whole_input_grad: ClassVar[bool] = False  # backward writes (=) every element of dinp: no zeroing
    has_params: ClassVar[bool] = False

    def geometry(self) -> list[tuple[str, object]]:
        """The fields of its `static const` geometry (nested lists for nested structs)."""
        return []

    def forward(self, target: str) -> list[str]:
        """The forward call(s), writing `target` (the output, or `pre` under a fused activation)."""
        raise NotImplementedError

    def backward(self, dinp: str, dout: str) -> list[str]:
        raise NotImplementedError

    def prepared_inputs(self) -> list[str]:
        """The parameters and buffers (`p.l3_weight`, `s.l4_running_var`) its inference forward prepares from:
        what it packs, transforms or folds into scratch before computing (under the step's `prepare`)."""
        return []

    @property
    def is_view(self) -> bool:
        return self.out == self.inp

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        compared = [f.name for f in fields(self) if f.compare]
        return [getattr(self, name) for name in compared] == [getattr(other, name) for name in compared]

    def __repr__(self):
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        return f"{type(self).__qualname__}({shown})"


class ViewPlan(LayerPlan):
    """flatten, or dropout that never drops: the output is the input's memory, no code."""

    def forward(self, target: str) -> list[str]:
        return []

    def backward(self, dinp: str, dout: str) -> list[str]:
        return []


@dataclass(eq=False, repr=False)
class ParamLayerPlan(LayerPlan):
    """A layer with a weight and maybe a bias (fields of the parameter structs p and g)."""

    weight: str = ""
    bias: str | None = None
    # A convolution's batch norm, when inference folds it in. That plan's `fold` names this one: the link is
    # neither compared nor printed, which would go round in circles.
    folded_into: "LayerPlan | None" = field(default=None, compare=False, repr=False)
    has_params: ClassVar[bool] = True

    def param_args(self, block: str) -> str:
        return f"{block}.{self.weight}, " + (f"{block}.{self.bias}" if self.bias else "NULL")

    def param_fields(self, block: str) -> list[str]:
        return [f"{block}.{self.weight}"] + ([f"{block}.{self.bias}"] if self.bias else [])


# ---- the geometry structs of the kernel library, shared with the standalone export ----
def conv_geometry(layer: Layer) -> list[tuple[str, int]]:
    """kernels/conv.h's Conv2d."""
    H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW = geometry_2d(layer)
    return [("C", layer.in_shape[0]), ("H", H), ("W", W), ("F", layer.out_shape[0]), ("OH", OH), ("OW", OW),
            ("KH", KH), ("KW", KW), ("SH", SH), ("SW", SW), ("DH", DH), ("DW", DW), ("PH", PH), ("PW", PW)]


def pool_geometry(layer: Layer) -> list[tuple[str, int]]:
    """kernels/pool.h's Pool2d."""
    H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW = geometry_2d(layer)
    return [("C", layer.in_shape[0]), ("H", H), ("W", W), ("OH", OH), ("OW", OW), ("KH", KH), ("KW", KW),
            ("SH", SH), ("SW", SW), ("PH", PH), ("PW", PW)]


def dense_geometry(layer: Layer) -> list[tuple[str, int]]:
    """kernels/dense.h's Dense."""
    return [("D", layer.in_shape[0]), ("U", layer.units)]


def batchnorm_geometry(layer: Layer) -> list[tuple[str, int]]:
    """kernels/batchnorm.h's BatchNorm: channels, and values per channel in one sample."""
    return [("C", layer.in_shape[0]), ("S", prod(layer.in_shape[1:]))]


def global_avgpool_geometry(layer: Layer) -> list[tuple[str, int]]:
    """kernels/pool.h's GlobalAvgPool."""
    return [("C", layer.in_shape[0]), ("HW", prod(layer.in_shape[1:]))]


class ConvPlan(ParamLayerPlan):
    header: ClassVar[str] = "conv.h"
    struct: ClassVar[str] = "Conv2d"

    def geometry(self):
        return conv_geometry(self.layer)

    def forward(self, target, weights: str | None = None, prepare: str = "a.prepare"):
        """weights: "weight, bias" expressions other than the layer's own (batch norm folded into them).
        prepare: the C expression saying whether the weights must be prepared again (packed, transformed),
        for the kernels that prepare them; conv.h reads them as they are."""
        return [f"conv2d_forward({target}, {self.inp}, {weights or self.param_args('p')}, N, {self.K});"]

    def backward(self, dinp, dout):
        return [f"conv2d_backward({dinp}, {self.param_args('g')}, {dout}, {self.inp}, p.{self.weight}, N, {self.K});"]


@dataclass(eq=False, repr=False)
class BlockedConvPlan(ConvPlan):
    """A convolution on register tiles (kernels/conv_blocked.h): its sizes, packed weights and scratch."""

    blocking: BlockedConv | None = None
    xpad: str = "NULL"  # the zero-padded input (kept for backward) when blocking.padded; a strided pointwise one's xsub
    wpack: str = "NULL"  # the packed weights and bias, when forward packs them (BlockedConv.packs)
    bpack: str = "NULL"
    wrot: str = ""
    dyt: str = "NULL"  # the output gradient with filters last, unless the weight gradient goes by columns
    dypad: str = ""
    header: ClassVar[str] = "conv_blocked.h"
    struct: ClassVar[str] = "Conv2dBlocked"
    writes_whole_input_grad: ClassVar[bool] = True

    def geometry(self):
        b = self.blocking
        pointwise_only = {"pointwise", "pointwise_weight_grad", "pointwise_input_grad", "PMB", "PSB", "PFB", "PCB", "PNB"}
        return [("conv", super().geometry())] + [(f.name, int(getattr(b, f.name))) for f in fields(b)
                                                 if b.pointwise or f.name not in pointwise_only]  # (0 when left out)

    def forward(self, target, weights: str | None = None, prepare: str = "a.prepare"):
        return [f"conv2d_blocked_forward({target}, {self.inp}, {weights or self.param_args('p')}, {self.xpad}, {self.wpack}, "
                f"{self.bpack}, {prepare}, N, {self.K});"]

    def prepared_inputs(self):
        return self.param_fields("p") if self.blocking.packs else []

    def backward(self, dinp, dout):
        x = self.xpad if self.xpad != "NULL" else self.inp  # padded, or subsampled by a pointwise stride
        return [f"conv2d_blocked_backward({dinp}, {self.param_args('g')}, {dout}, {x}, p.{self.weight}, {self.dyt}, "
                f"{self.dypad}, {self.wrot}, N, {self.K});"]


@dataclass(eq=False, repr=False)
class WinogradConvPlan(BlockedConvPlan):
    """A blocked convolution whose forward pass, input gradient and weight gradient run by Winograd F(2x2, 3x3)
    (kernels/winograd.h)."""

    passes: tuple = ()  # (forward, input gradient): winograd_pass fields
    u: str = ""  # the transformed weights of the pass running
    wino: str = ""  # the tile plane, V and M of the pass running
    header: ClassVar[str] = "winograd.h"
    struct: ClassVar[str] = "Conv2dWinograd"

    def geometry(self):
        return [("blocked", super().geometry()), ("forward", list(self.passes[0])),
                ("input_grad", list(self.passes[1]))]

    def forward(self, target, weights: str | None = None, prepare: str = "a.prepare"):
        return [f"conv2d_winograd_forward({target}, {self.inp}, {weights or self.param_args('p')}, {self.u}, "
                f"{self.bpack}, {self.wino}, {prepare}, N, {self.K});"]

    def prepared_inputs(self):
        return self.param_fields("p")

    def backward(self, dinp, dout):
        return [f"conv2d_winograd_backward({dinp}, {self.param_args('g')}, {dout}, {self.inp}, p.{self.weight}, "
                f"{self.u}, {self.wino}, N, {self.K});"]


@dataclass(eq=False, repr=False)
class GroupedConvPlan(ParamLayerPlan):
    """A grouped or depthwise convolution (groups > 1), kernels/conv_grouped.h: conv.h's loops per group, or
    for a depthwise one (one channel per group) the padded-plane loops over `scratch`."""

    scratch: str = "NULL"  # depthwise: the phase planes of the input and its gradient, the spread output gradient, the per-tap sums
    header: ClassVar[str] = "conv_grouped.h"
    struct: ClassVar[str] = "Conv2dGrouped"

    def geometry(self):
        return [("conv", conv_geometry(self.layer)), ("G", self.layer.groups)]

    @property
    def writes_whole_input_grad(self) -> bool:  # type: ignore[override]
        return self.scratch != "NULL"  # the depthwise backward writes (=) dinp; conv.h's loops per group add

    def forward(self, target, weights: str | None = None, prepare: str = "a.prepare"):
        weights = weights or self.param_args('p')
        if self.scratch == "NULL":
            return [f"conv2d_grouped_forward({target}, {self.inp}, {weights}, N, {self.K});"]
        return [f"conv2d_depthwise_forward({target}, {self.inp}, {weights}, {self.scratch}, N, {self.K});"]

    def backward(self, dinp, dout):
        if self.scratch == "NULL":
            return [f"conv2d_grouped_backward({dinp}, {self.param_args('g')}, {dout}, {self.inp}, p.{self.weight}, N, "
                    f"{self.K});"]
        return [f"conv2d_depthwise_backward({dinp}, {self.param_args('g')}, {dout}, {self.inp}, p.{self.weight}, "
                f"{self.scratch}, N, {self.K});"]


def depthwise_plane(layer: Layer) -> tuple[int, int] | None:
    """(HP, WP): the zero-padded plane kernels/conv_grouped.h's depthwise path copies each channel into, or
    None for conv.h's loops per group: a grouped convolution with several channels per group, or a plane out
    of proportion to the input (BLOCKED_MAX_PADDED_GROWTH)."""
    if layer.in_shape[0] != layer.groups:
        return None
    H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW = geometry_2d(layer)
    plane = (OH - 1) * SH + (KH - 1) * DH + 1, (OW - 1) * SW + (KW - 1) * DW + 1
    return plane if plane[0] * plane[1] <= BLOCKED_MAX_PADDED_GROWTH * H * W else None


def depthwise_scratch(layer: Layer) -> int:
    """The reals of scratch kernels/conv_grouped.h's depthwise kernels use (depthwise_scratch_reals there): the
    padded plane split by the strides into SH * SW phase planes of HQ x WQ, twice (the input and its gradient),
    one more plane and a margin for the spread output gradient, and one row of flat positions per tap for each
    filter of a block."""
    H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW = geometry_2d(layer)
    HP, WP = depthwise_plane(layer)
    HQ, WQ = -(-HP // SH), -(-WP // SW)
    margin = (KH - 1) * DH // SH * WQ + (KW - 1) * DW // SW
    flat = -(-((OH - 1) * WQ + OW) // DEPTHWISE_ROUND) * DEPTHWISE_ROUND  # rounded up to whole vectors
    per_channel = layer.out_shape[0] // layer.groups  # filters per channel
    channels = max(4096 // (KH * KW * flat * per_channel), 1)  # a block of whole channels' filters (16 KiB)
    block = channels * per_channel if channels < layer.groups else layer.out_shape[0]
    return 2 * SH * SW * HQ * WQ + 2 * DEPTHWISE_ROUND + margin + HQ * WQ + block * KH * KW * flat


@dataclass(eq=False, repr=False)
class BatchNormPlan(ParamLayerPlan):
    """Batch norm (kernels/batchnorm.h): the running statistics are fields of the buffer struct `s`; forward
    saves the mean and invstd it used (per batch slice) for backward. In training mode the pass runs the whole
    batch as one slice (the statistics are the batch's)."""

    running_mean: str = ""
    running_var: str = ""
    mean: str = ""
    invstd: str = ""
    # Inference folds the batch norm into the convolution before it (when that convolution has no activation
    # and nothing else reads its output): the convolution's step does nothing, and this one runs it with
    # weight * scale and (bias - mean) * scale + shift, scale = weight_bn * invstd, shift = bias_bn.
    fold: "ConvPlan | None" = None
    wfold: str = ""  # the folded weights and bias (per batch slice, folded again when the weights change)
    bfold: str = ""
    # The relu or relu6 that is this batch norm's only reader, applied as the output is written (the
    # activation is then a view of this output: fuse_batchnorm_activation); backward masks dout by it.
    act: str | None = None
    header: ClassVar[str] = "batchnorm.h"
    struct: ClassVar[str] = "BatchNorm"
    writes_whole_input_grad: ClassVar[bool] = True

    def geometry(self):
        return batchnorm_geometry(self.layer)

    def forward(self, target):
        lines = self.unfolded_forward(target)
        if self.fold is None:
            return lines
        conv = self.fold
        weight = conv.layer.params[0]
        fold = (f"batchnorm_fold({self.wfold}, {self.bfold}, {self.mean}, {self.invstd}, "
                f"{conv.param_args('p')}, s.{self.running_mean}, s.{self.running_var}, {self.param_args('p')}, "
                f"{c_real(self.layer.eps, 'eps')}, {c_int(weight.size // weight.shape[0], 'weights per filter')}, {self.K});")
        activation = [f"{self.act}_forward({target}, {target}, N * {self.K}_OUT_SIZE);"] if self.act else []
        return (["if (train) {"] + [f"    {line}" for line in lines]
                + ["} else {  // folded into the convolution before it: one pass, no separate normalisation",
                   "    if (a.prepare) {", f"        {fold}", "    }"]
                + [f"    {line}" for line in conv.forward(target, f"{self.wfold}, {self.bfold}") + activation] + ["}"])

    def prepared_inputs(self):
        if self.fold is None:
            return []
        return (self.fold.param_fields("p") + self.param_fields("p")
                + [f"s.{self.running_mean}", f"s.{self.running_var}"])

    @property
    def act_constant(self) -> str:
        return {"relu": "BATCHNORM_RELU", "relu6": "BATCHNORM_RELU6"}[self.act]

    def unfolded_forward(self, target):
        layer = self.layer
        kernel, act = ("batchnorm_act_forward", f"{self.act_constant}, ") if self.act else ("batchnorm_forward", "")
        return [f"{kernel}({target}, {self.mean}, {self.invstd}, s.{self.running_mean}, s.{self.running_var}, "
                f"{self.inp}, {self.param_args('p')}, N, train, {c_real(layer.eps, 'eps')}, "
                f"{c_real(layer.momentum, 'momentum')}, {act}{self.K});"]

    def backward(self, dinp, dout):
        if self.act:
            lines = [f"batchnorm_act_backward({dinp}, {self.param_args('g')}, {dout}, {self.inp}, {self.mean}, "
                     f"{self.invstd}, {self.param_args('p')}, N, train, {self.act_constant}, {self.K});"]
        else:
            lines = [f"batchnorm_backward({dinp}, {self.param_args('g')}, {dout}, {self.inp}, {self.mean}, {self.invstd}, "
                     f"p.{self.weight}, N, train, {self.K});"]
        if self.fold is None:
            return lines
        # an inference forward skipped the convolution's own output, which both backward passes read
        recompute = [f"    {line}" for line in self.fold.forward(self.fold.out, prepare="1")]
        return ["if (!train) {  // the forward pass folded this batch norm: compute the convolution's output"] + \
            recompute + ["}"] + lines


@dataclass(eq=False, repr=False)
class MergePlan(LayerPlan):
    """A layer reading two or more tensors (kernels/merge.h): inputs holds each operand's buffer, in order.
    Backward goes operand by operand (`operand_backward`), writing or accumulating into its gradient."""

    inputs: list[str] = field(default_factory=list)
    header: ClassVar[str] = "merge.h"

    def backward(self, dinp, dout):
        raise NotImplementedError("a merge's backward goes operand by operand: operand_backward")

    def operand_backward(self, i: int, dinp: str, dout: str, accumulate: bool) -> list[str]:
        raise NotImplementedError


@dataclass(eq=False, repr=False)
class AddPlan(MergePlan):
    """The sum of its operands (kernels/merge.h)."""

    # An add of two operands whose only reader is a relu computes that relu too (merge.h's add_relu_*): one
    # pass instead of two each way; the relu is then a view of this output (fuse_add_relu).
    relu: bool = False

    def forward(self, target):
        count = f"N * {self.K}_OUT_SIZE"
        if self.relu:
            return [f"add_relu_forward({target}, {self.inputs[0]}, {self.inputs[1]}, {count});"]
        lines = [f"add_forward({target}, {self.inputs[0]}, {self.inputs[1]}, {count});"]
        return lines + [f"accumulate({target}, {operand}, {count});" for operand in self.inputs[2:]]

    def operand_backward(self, i, dinp, dout, accumulate):
        """dout: the gradient of this layer's output (after the relu, if it computes one)."""
        if self.relu:
            kernel = "add_relu_backward_accumulate" if accumulate else "add_relu_backward"
            return [f"{kernel}({dinp}, {dout}, {self.out}, N * {self.K}_OUT_SIZE);"]
        return [f"{'accumulate' if accumulate else 'add_backward'}({dinp}, {dout}, N * {self.K}_OUT_SIZE);"]


class ConcatPlan(MergePlan):
    def placement(self, i: int) -> str:
        """Operand i's Concat {OUT, OFFSET, SIZE}, a compound literal of constants."""
        sizes = [prod(shape) for shape in self.layer.in_shapes]
        return "(Concat)" + c_initializer([("OUT", self.layer.out_size), ("OFFSET", sum(sizes[:i])), ("SIZE", sizes[i])])

    def forward(self, target):
        return [f"concat_forward({target}, {operand}, N, {self.placement(i)});" for i, operand in enumerate(self.inputs)]

    def operand_backward(self, i, dinp, dout, accumulate):
        kernel = "concat_backward_accumulate" if accumulate else "concat_backward"
        return [f"{kernel}({dinp}, {dout}, N, {self.placement(i)});"]


class DensePlan(ParamLayerPlan):
    header: ClassVar[str] = "dense.h"
    struct: ClassVar[str] = "Dense"

    def geometry(self):
        return dense_geometry(self.layer)

    def forward(self, target):
        return [f"dense_forward({target}, {self.inp}, {self.param_args('p')}, N, {self.K});"]

    def backward(self, dinp, dout):
        return [f"dense_backward({dinp}, {self.param_args('g')}, {dout}, {self.inp}, p.{self.weight}, N, {self.K});"]


@dataclass(eq=False, repr=False)
class BlockedDensePlan(DensePlan):
    """A dense layer on vectors of vl inputs (kernels/dense_blocked.h)."""

    vl: int = 16
    header: ClassVar[str] = "dense_blocked.h"
    struct: ClassVar[str] = "DenseBlocked"
    writes_whole_input_grad: ClassVar[bool] = True

    def geometry(self):
        D, U, vl = self.layer.in_shape[0], self.layer.units, self.vl
        full, tail = divmod(D % (4 * vl), vl)  # the backward's last column panel: vectors, reals in its last one
        rest_vecs, rest_last = (full + 1, tail) if tail else ((full, vl) if full else (0, 0))
        return [("dense", super().geometry()), ("DV", D // vl), ("DT", D % vl), ("UT", U % 4),
                ("REST_VECS", rest_vecs), ("REST_LAST", rest_last)]

    def forward(self, target):
        return [f"dense_blocked_forward({target}, {self.inp}, {self.param_args('p')}, N, {self.K});"]

    def backward(self, dinp, dout):
        return [f"dense_blocked_backward({dinp}, {self.param_args('g')}, {dout}, {self.inp}, p.{self.weight}, N, "
                f"{self.K});"]


class PoolPlan(LayerPlan):
    header: ClassVar[str] = "pool.h"
    struct: ClassVar[str] = "Pool2d"

    def geometry(self):
        return pool_geometry(self.layer)


@dataclass(eq=False, repr=False)
class MaxPoolPlan(PoolPlan):
    """Max pooling (kernels/pool.h); forward saves each window's winner in argmax for backward."""

    argmax: str = ""  # the winners, saved for backward
    variant: str = "direct"  # or "2x2"

    @property
    def writes_whole_input_grad(self) -> bool:  # type: ignore[override]
        return self.variant == "2x2"

    @property
    def kernel(self) -> str:
        return "maxpool2d_2x2" if self.variant == "2x2" else "maxpool2d"

    def forward(self, target):
        return [f"{self.kernel}_forward({target}, {self.argmax}, {self.inp}, N, {self.K});"]

    def backward(self, dinp, dout):
        return [f"{self.kernel}_backward({dinp}, {dout}, {self.argmax}, N, {self.K});"]


class AvgPoolPlan(PoolPlan):
    def forward(self, target):
        return [f"avgpool2d_forward({target}, {self.inp}, N, {self.K});"]

    def backward(self, dinp, dout):
        return [f"avgpool2d_backward({dinp}, {dout}, N, {self.K});"]


class GlobalAvgPoolPlan(LayerPlan):
    header: ClassVar[str] = "pool.h"
    struct: ClassVar[str] = "GlobalAvgPool"
    writes_whole_input_grad: ClassVar[bool] = True

    def geometry(self):
        return global_avgpool_geometry(self.layer)

    def forward(self, target):
        return [f"global_avgpool_forward({target}, {self.inp}, N, {self.K});"]

    def backward(self, dinp, dout):
        return [f"global_avgpool_backward({dinp}, {dout}, N, {self.K});"]


# ---- issue 15's additions: transposed convolutions, pooling options, global max pooling, lrn, channel shuffle ----
def conv_transpose_geometry(layer: Layer) -> list[tuple[str, int]]:
    """kernels/conv_transpose.h's ConvTranspose2d (a 1-D layer has height 1; output_padding only makes OH, OW
    larger)."""
    (H, W), (OH, OW) = ((1, layer.in_shape[1]), (1, layer.out_shape[1])) if layer.spatial_dims == 1 else \
        (layer.in_shape[1:], layer.out_shape[1:])
    one = lambda values, neutral: (neutral, values[0]) if layer.spatial_dims == 1 else tuple(values)  # noqa: E731
    (KH, KW), (SH, SW), (DH, DW), (PH, PW) = (one(layer.kernel, 1), one(layer.stride, 1), one(layer.dilation, 1),
                                              one(layer.pad_before, 0))
    return [("C", layer.in_shape[0]), ("H", H), ("W", W), ("F", layer.out_shape[0]), ("OH", OH), ("OW", OW),
            ("KH", KH), ("KW", KW), ("SH", SH), ("SW", SW), ("DH", DH), ("DW", DW), ("PH", PH), ("PW", PW),
            ("G", layer.groups)]


def channels_and_positions(layer: Layer) -> list[tuple[str, int]]:
    """(C, S): a sample's channels and the positions of each (H*W, L or 1)."""
    return [("C", layer.in_shape[0]), ("S", prod(layer.in_shape[1:]))]


class ConvTransposePlan(ParamLayerPlan):
    """conv_transpose1d/2d, groups included: the reference loops of kernels/conv_transpose.h. Backward reads the
    layer's input (no padded copy: the kernel skips the taps that land in the cropped border)."""

    header: ClassVar[str] = "conv_transpose.h"
    struct: ClassVar[str] = "ConvTranspose2d"

    def geometry(self):
        return conv_transpose_geometry(self.layer)

    def forward(self, target):
        return [f"conv_transpose2d_forward({target}, {self.inp}, {self.param_args('p')}, N, {self.K});"]

    def backward(self, dinp, dout):
        return [f"conv_transpose2d_backward({dinp}, {self.param_args('g')}, {dout}, {self.inp}, p.{self.weight}, N, "
                f"{self.K});"]


class ClippedAvgPoolPlan(PoolPlan):
    """Average pooling with ceil=true or count_pad=false: a divisor per window (kernels/pool.h's
    avgpool2d_clipped_*)."""

    struct: ClassVar[str] = "AvgPool2dClipped"

    def geometry(self):
        layer = self.layer
        PHA, PWA = (0, layer.pad_after[0]) if layer.spatial_dims == 1 else layer.pad_after
        return [("pool", pool_geometry(layer)), ("PHA", PHA), ("PWA", PWA), ("count_pad", int(layer.count_pad))]

    def forward(self, target):
        return [f"avgpool2d_clipped_forward({target}, {self.inp}, N, {self.K});"]

    def backward(self, dinp, dout):
        return [f"avgpool2d_clipped_backward({dinp}, {dout}, N, {self.K});"]


@dataclass(eq=False, repr=False)
class GlobalMaxPoolPlan(LayerPlan):
    """The maximum of each channel (kernels/pool.h); forward saves its position in argmax for backward."""

    argmax: str = ""  # each channel's winner, saved for backward
    header: ClassVar[str] = "pool.h"
    struct: ClassVar[str] = "GlobalMaxPool"

    def geometry(self):
        return global_avgpool_geometry(self.layer)

    def forward(self, target):
        return [f"global_maxpool_forward({target}, {self.argmax}, {self.inp}, N, {self.K});"]

    def backward(self, dinp, dout):
        return [f"global_maxpool_backward({dinp}, {dout}, {self.argmax}, N, {self.K});"]


@dataclass(eq=False, repr=False)
class LrnPlan(LayerPlan):
    """Local response normalisation (kernels/lrn.h): forward saves the divisor base d; backward reads the
    input and d."""

    divisor: str = ""
    header: ClassVar[str] = "lrn.h"
    struct: ClassVar[str] = "Lrn"
    writes_whole_input_grad: ClassVar[bool] = True

    def geometry(self):
        return channels_and_positions(self.layer) + [("SIZE", self.layer.lrn_size)]

    def forward(self, target):
        layer = self.layer
        return [f"lrn_forward({target}, {self.divisor}, {self.inp}, {c_real(layer.alpha, 'alpha')}, "
                f"{c_real(layer.beta, 'beta')}, {c_real(layer.k, 'k')}, N, {self.K});"]

    def backward(self, dinp, dout):
        layer = self.layer
        return [f"lrn_backward({dinp}, {dout}, {self.inp}, {self.divisor}, {c_real(layer.alpha, 'alpha')}, "
                f"{c_real(layer.beta, 'beta')}, N, {self.K});"]


class ChannelShufflePlan(LayerPlan):
    header: ClassVar[str] = "channel_shuffle.h"
    struct: ClassVar[str] = "ChannelShuffle"
    writes_whole_input_grad: ClassVar[bool] = True

    def geometry(self):
        return channels_and_positions(self.layer) + [("G", self.layer.groups)]

    def forward(self, target):
        return [f"channel_shuffle_forward({target}, {self.inp}, N, {self.K});"]

    def backward(self, dinp, dout):
        return [f"channel_shuffle_backward({dinp}, {dout}, N, {self.K});"]


# Which tensor an activation's backward reads: its input ("pre") or its output.
ACTIVATION_READS = {"relu": "pre", "leaky_relu": "pre", "sigmoid": "out", "tanh": "out", "softmax": "out",
                    "relu6": "pre", "silu": "pre", "hardswish": "pre", "elu": "out", "selu": "pre", "hardsigmoid": "pre",
                    "log_softmax": "out"}
# The activations that work on whole rows (N, K) rather than elementwise.
ROW_ACTIVATIONS = ("softmax", "log_softmax")


def activation_call(kind: str, direction: str, dst: str, src: str, saved: str | None, K: str, slope: float) -> str:
    """A call of an elementwise kernel (kernels/activations.h), e.g. relu_forward(a.l1_out, a.l1_pre, N * L1_OUT_SIZE)."""
    args = [dst, src] if direction == "forward" else [dst, src, saved]
    if kind in ROW_ACTIVATIONS:
        return f"{kind}_{direction}({', '.join(args)}, N, {K}_OUT_SIZE);"
    if kind == "leaky_relu":
        args.append(c_real(slope, "slope"))
    return f"{kind}_{direction}({', '.join(args)}, N * {K}_OUT_SIZE);"


class ActivationPlan(LayerPlan):
    """A standalone elementwise layer (relu, leaky_relu, sigmoid, tanh, softmax, relu6, silu, hardswish, elu, selu,
    hardsigmoid, log_softmax)."""

    header: ClassVar[str] = "activations.h"
    writes_whole_input_grad: ClassVar[bool] = True

    def forward(self, target):
        return [activation_call(self.layer.kind, "forward", target, self.inp, None, self.K, self.layer.slope)]

    def backward(self, dinp, dout):
        saved = self.inp if ACTIVATION_READS[self.layer.kind] == "pre" else self.out
        return [activation_call(self.layer.kind, "backward", dinp, dout, saved, self.K, self.layer.slope)]


@dataclass(eq=False, repr=False)
class DropoutPlan(LayerPlan):
    """Dropout by the caller's masks[mask_index], kept in mask for backward (no masks: the identity)."""

    mask: str = ""  # the mask forward applied, saved for backward
    mask_index: int = 0  # which of the caller's masks it takes
    header: ClassVar[str] = "activations.h"
    writes_whole_input_grad: ClassVar[bool] = True

    def forward(self, target):
        count = f"N * {self.K}_OUT_SIZE"
        return ["if (masks != NULL) {",
                f"    dropout_forward({target}, {self.mask}, {self.inp}, masks[{self.mask_index}] + n0 * {self.K}_OUT_SIZE, "
                f"{count});",
                "} else {",
                f"    identity_forward({target}, {self.inp}, {count});",
                "}"]

    def backward(self, dinp, dout):
        count = f"N * {self.K}_OUT_SIZE"
        return ["if (dropout) {", f"    dropout_backward({dinp}, {dout}, {self.mask}, {count});",
                "} else {", f"    identity_backward({dinp}, {dout}, {count});", "}"]


# ---- the network plan ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One layer's part of a pass: a function of the glue (`l3_forward`) holding the layer's kernel calls."""

    name: str
    index: int
    summary: str
    lines: tuple[str, ...]


@dataclass
class NetworkPlan:
    """A network's plan: the layer plans, the blocks' layout (what the Python views read) and the passes' steps."""

    network: Network
    P: str  # symbol prefix: "" alone, "m2_" in a bundle
    K: str  # constant prefix: "" alone, "M2_" in a bundle
    title: str
    layers: list[LayerPlan]
    params: list[ParamBuffer]
    param_count: int
    acts: list[Buffer]  # fixed buffers first, then per-sample ones, then int32 ones
    act_count: int  # reals per sample
    fixed_count: int  # reals whatever the batch: every slice's fixed buffers, then slices 1..'s gradient blocks
    argmax_count: int  # int32 per sample
    dropout_layers: list[str]  # names of the layers that take a mask, in order
    forward_steps: list[Step]  # one function per computing layer, in forward order
    backward_steps: list[Step]  # in backward order
    output_buffer: str
    slices: int  # a batch runs as at most this many slices (see batch_slices)
    slice_fixed_count: int  # the fixed buffers of one batch slice (fixed_count holds `slices` of them)
    grad_stride: int  # the parameter count rounded up to whole vectors: one slice's gradient block
    work: int  # multiply-adds per sample of the whole network, for the parallel-or-not choice
    buffers: list[ParamBuffer] = field(default_factory=list)  # the running statistics, in buffer_specs order
    buffer_count: int = 0  # reals in the buffer block
    batch_statistics: bool = False  # training mode normalises with the batch's statistics: one slice per pass
    # What inference prepares its weights from (packs, transforms, folds: prepared_inputs), as (field, reals):
    # each slice keeps its prepared weights between inference passes, and prepares them again only when one
    # of these differs from the copy the last preparation read. At prepared_offset in the activation block:
    # a flag per slice (nonzero: its prepared weights are current), then that copy.
    prepared: list = field(default_factory=list)
    prepared_offset: int = 0
    prepared_flags: int = 0  # reals of the flags: `slices` rounded up to whole vectors (the copy is aligned)

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
    def dropout_count(self) -> int:
        return len(self.dropout_layers)

    @property
    def dropout_names(self) -> str:
        return ", ".join(f"'{name}'" for name in self.dropout_layers)

    @property
    def headers(self) -> set[str]:
        return {lp.header for lp in self.layers if lp.header and not lp.is_view} | (
            {"activations.h"} if any(lp.layer.activation or getattr(lp, "act", None) for lp in self.layers) else set())

    @property
    def constants(self) -> list[LayerPlan]:
        return [lp for lp in self.layers if not lp.is_view]

    def scratch_bytes(self, n: int, item_size: int) -> int:
        """The bytes of the activation block for a batch of n (every buffer, scratch included), as the C
        backend allocates it: the fixed buffers, n samples' buffers, the argmax block and the alignment slack."""
        return (self.fixed_count + n * self.act_count + 2 * VECTOR_BYTES // item_size) * item_size + \
            n * self.argmax_count * 4


def shape_text(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def work(layer: Layer) -> int:
    """Multiply-adds (or adds, for pooling) per sample of the layer's kernels: how much a loop over the
    batch has to share out between threads."""
    if layer.macs:
        return layer.macs
    if layer.kind in POOL_KINDS:
        return layer.out_size * prod(layer.kernel)
    return layer.in_size


# Below this many multiply-adds a pass runs its batch slices on one thread (see module.c.j2).
PARALLEL_MIN_WORK = 1 << 20

# A batch is cut into at most this many contiguous slices, each run through the whole network by one
# thread (module.c.j2): the most threads one forward or backward pass can use. Each slice has its own
# scratch and its own parameter-gradient block, summed in slice order, so no result depends on the
# thread count. Extra slices cost one thread each time: every slice re-reads the weights and writes a
# gradient block of its own. So a network gets MAX_BATCH_SLICES only while its parameters fit in
# SMALL_PARAM_BYTES (a quarter of one core's L2 here), otherwise MIN_BATCH_SLICES.
MAX_BATCH_SLICES = 4
MIN_BATCH_SLICES = 2
SMALL_PARAM_BYTES = 256 * 1024


def batch_slices(param_count: int, item_size: int) -> int:
    return MAX_BATCH_SLICES if param_count * item_size <= SMALL_PARAM_BYTES else MIN_BATCH_SLICES


def check_safe(network: Network) -> None:
    """The minimal safety check (the front end checked the shapes): names that reach comments are plain
    identifiers, kinds and activations are known words, every size is an int and every real is finite."""
    comment_name(network.name, "model name")
    comment_name(network.input_name, "input name")
    if not network.layers:
        raise ValueError(f"model '{network.name}' has no layers")
    known = {network.input_name}  # the tensors a layer may read: the input and every earlier layer's output
    for layer in network.layers:
        comment_name(layer.name, "layer name")
        merge = layer.kind in MERGE_KINDS
        if (not isinstance(layer.inputs, tuple) or len(layer.inputs) < (2 if merge else 1)
                or (not merge and len(layer.inputs) != 1) or not all(name in known for name in layer.inputs)):
            raise ValueError(f"layer '{layer.name}': inputs {layer.inputs!r} must name "
                             f"{'two or more' if merge else 'one'} of the input and the earlier layers")
        if not isinstance(layer.in_shapes, tuple) or (merge and len(layer.in_shapes) != len(layer.inputs)):
            raise ValueError(f"layer '{layer.name}': in_shapes must hold one shape per input")
        known.add(layer.name)
        c_int(layer.groups, f"layer '{layer.name}': groups", 1)
        c_real(layer.eps, f"layer '{layer.name}': eps")
        c_real(layer.momentum, f"layer '{layer.name}': momentum")
        if layer.kind not in LAYER_KINDS:
            raise ValueError(f"layer '{layer.name}': unknown layer kind {layer.kind!r}")
        if layer.activation is not None and (layer.activation not in ACTIVATIONS
                                             or layer.kind not in CONV_KINDS + CONV_TRANSPOSE_KINDS + ("dense",)):
            raise ValueError(f"layer '{layer.name}': activation {layer.activation!r} is not a fused activation "
                             f"of a conv or dense layer")
        c_real(layer.slope, f"layer '{layer.name}': slope")
        c_real(layer.rate, f"layer '{layer.name}': rate")
        for what in ("in_shape", "out_shape", "kernel", "stride", "dilation", "pad_before", "pad_after"):
            values = getattr(layer, what)
            if not isinstance(values, tuple):
                raise ValueError(f"layer '{layer.name}': {what} must be a tuple of integers; got {values!r}")
            for value in values:
                c_int(value, f"layer '{layer.name}': {what}", 1 if what.endswith(("shape", "kernel", "stride", "dilation")) else 0)
        c_int(layer.filters, f"layer '{layer.name}': filters")
        c_int(layer.units, f"layer '{layer.name}': units")
        check_safe_additions(layer)


def check_safe_additions(layer: Layer) -> None:
    """check_safe for the fields of issue 15's additions: the output padding, lrn's size and reals, a transposed
    convolution's or channel shuffle's groups dividing its channels."""
    if not isinstance(layer.output_padding, tuple):
        raise ValueError(f"layer '{layer.name}': output_padding must be a tuple of integers; "
                         f"got {layer.output_padding!r}")
    for value in layer.output_padding:
        c_int(value, f"layer '{layer.name}': output_padding", 0)
    for what in ("alpha", "beta", "k"):
        c_real(getattr(layer, what), f"layer '{layer.name}': {what}")
    if layer.kind == "lrn":
        c_int(layer.lrn_size, f"layer '{layer.name}': size", 1)
    if layer.kind in CONV_TRANSPOSE_KINDS + ("channel_shuffle",) and (
            layer.in_shape[0] % layer.groups or layer.out_shape[0] % layer.groups):
        raise ValueError(f"layer '{layer.name}': groups {layer.groups} must divide its channels")


class _Planner:
    """Walks one network, assigning buffers and writing the forward and backward call sequences."""

    def __init__(self, network: Network, P: str, K: str, vl: int):
        self.network, self.P, self.K, self.vl = network, P, K, vl
        self.acts: list[Buffer] = []
        self.fixed: list[Buffer] = []
        self.argmax: list[Buffer] = []
        self.params: list[ParamBuffer] = []
        self.param_offset = 0
        self.dropout_layers: list[str] = []
        self.stats: list[ParamBuffer] = []  # the buffer block: running statistics
        self.stat_offset = 0
        self.buffer("input", network.input_shape, f"a copy of x '{network.input_name}': backward reads it")

    def buffer(self, field_name: str, shape, note: str, ctype: str = "real", fixed: bool = False) -> str:
        """A buffer of (N, *shape) (or of shape, if fixed), every real one a whole number of vectors long
        so that each starts on a vector boundary. Its size per sample must fit an int (the kernels index a
        sample's tensors with int): a larger one is refused here."""
        b = Buffer(field_name, tuple(shape), f"{shape_text(shape)} {note}", ctype, fixed=fixed,
                   align=1 if ctype == "int32_t" else self.vl)
        if b.size > MAX_INT32:
            raise CnncError(f"model '{self.network.name}': the C backend's buffer {field_name} {shape_text(shape)} would "
                            f"hold {b.elements:,} elements per sample, more than it indexes (2^31 - 1); make the "
                            f"layer's padding, dilation or size smaller")
        (self.argmax if ctype == "int32_t" else self.fixed if fixed else self.acts).append(b)
        return f"a.{field_name}"

    def param(self, field_name: str, spec) -> str:
        self.params.append(ParamBuffer(field_name, self.param_offset, tuple(spec.shape),
                                       f"{spec.name} {shape_text(spec.shape)}"))
        self.param_offset += spec.size
        return field_name

    def stat(self, field_name: str, spec) -> str:
        """A running statistic in the buffer block (a field of the struct `s`)."""
        self.stats.append(ParamBuffer(field_name, self.stat_offset, tuple(spec.shape), f"{spec.name} {shape_text(spec.shape)}"))
        self.stat_offset += spec.size
        return field_name

    def plan(self) -> NetworkPlan:
        layers = []
        # tensor name -> the buffer holding it (a view's name maps to its input's buffer)
        self.tensors = {self.network.input_name: "a.input"}
        planned: dict[str, LayerPlan] = {}
        for index, layer in enumerate(self.network.layers, start=1):
            lp = (self.fuse_add_relu(index, layer, planned) or self.fuse_batchnorm_activation(index, layer, planned)
                  or self.plan_layer(index, layer, [self.tensors[name] for name in layer.inputs]))
            layers.append(lp)
            planned[layer.name] = lp
            self.tensors[layer.name] = lp.out
        self.fold_batchnorms(layers)
        current = layers[-1].out
        forward_steps = [Step(f"{self.P}l{lp.index}_forward", lp.index, lp.summary, tuple(self.forward_calls(lp)))
                         for lp in layers if not lp.is_view]
        backward = self.backward_calls(layers) if self.network.is_chain else self.graph_backward_calls(layers)
        backward_steps = [Step(f"{self.P}l{lp.index}_backward", lp.index, lp.summary, tuple(lines))
                          for lp, lines in backward if lines]
        n = self.network
        params = sum(lp.layer.param_count for lp in layers)
        title = (f"model '{n.name}': {n.input_name} {shape_text(n.input_shape)} -> {shape_text(n.output_shape)}, "
                 f"{len(n.layers)} layers, {params:,} parameters")
        slice_fixed = sum(b.size for b in self.fixed)
        grad_stride = round_up(self.param_offset, self.vl)
        slices = batch_slices(self.param_offset, VECTOR_BYTES // self.vl)
        fixed_count = slices * slice_fixed + (slices - 1) * grad_stride
        prepared = self.prepared_inputs(layers)
        prepared_flags = round_up(slices, self.vl) if prepared else 0
        copy = round_up(sum(count for _, count in prepared), self.vl)  # whole vectors: what follows is aligned
        prepared_offset, fixed_count = fixed_count, fixed_count + prepared_flags + copy
        network_work = min(sum(work(lp.layer) for lp in layers if kernel_family(lp.layer) and not lp.is_view), MAX_INT32)
        return NetworkPlan(n, self.P, self.K, title, layers, self.params, self.param_offset,
                           self.fixed + self.acts + self.argmax, sum(b.size for b in self.acts),
                           fixed_count, sum(b.size for b in self.argmax),
                           self.dropout_layers, forward_steps, backward_steps, current,
                           slices, slice_fixed, grad_stride, network_work, self.stats, self.stat_offset,
                           any(layer.kind == "batchnorm" for layer in n.layers), prepared, prepared_offset,
                           prepared_flags)

    def prepared_inputs(self, layers: list[LayerPlan]) -> list[tuple[str, int]]:
        """(field, reals) of every parameter and buffer inference prepares weights from, once each, in layer
        order. A folded convolution's inference runs in its batch norm's step, whose list holds its weights."""
        sizes = {f"p.{b.field}": prod(b.shape) for b in self.params} | {f"s.{b.field}": prod(b.shape) for b in self.stats}
        names = [name for lp in layers if getattr(lp, "folded_into", None) is None for name in lp.prepared_inputs()]
        return [(name, sizes[name]) for name in dict.fromkeys(names)]

    # ---- one layer's plan ----
    def plan_layer(self, index: int, layer: Layer, inputs: list[str]) -> LayerPlan:
        sym, K = f"l{index}", f"{self.K}L{index}"
        inp = inputs[0]
        kind_word = layer.kind + (f" + {layer.activation}" if layer.activation else "")
        summary = f"{kind_word} '{layer.name}': {shape_text(layer.in_shape)} -> {shape_text(layer.out_shape)}"
        notes = []
        if layer.kind in CONV_KINDS + POOL_KINDS:
            if layer.spatial_dims == 1:
                notes.append(f"{layer.kind} runs as a {layer.kind[:-2]}2d of height 1: (C, L) is (C, 1, L)")
            if any(layer.pad_before + layer.pad_after) and (layer.kind not in CONV_KINDS or layer.pad_before != layer.pad_after):
                notes.append("padding (before+after) per axis: "
                             + ", ".join(f"{b}+{a}" for b, a in zip(layer.pad_before, layer.pad_after)))
        common = dict(index=index, layer=layer, K=K, summary=summary, notes=notes, inp=inp, out=inp)
        if layer.kind in MERGE_KINDS:
            common["out"] = self.buffer(f"{sym}_out", layer.out_shape, f"'{layer.name}'")
            notes.append("reads " + ", ".join(f"'{name}' {shape_text(shape)}" for name, shape in zip(layer.inputs, layer.in_shapes)))
            return (AddPlan if layer.kind == "add" else ConcatPlan)(**common, inputs=list(inputs))
        if layer.kind == "batchnorm":
            weight = self.param(f"{sym}_weight", layer.params[0])
            bias = self.param(f"{sym}_bias", layer.params[1])
            running_mean = self.stat(f"{sym}_running_mean", layer.buffers[0])
            running_var = self.stat(f"{sym}_running_var", layer.buffers[1])
            C = layer.in_shape[0]
            mean = self.buffer(f"{sym}_mean", (C,), f"'{layer.name}' mean used by the last forward", fixed=True)
            invstd = self.buffer(f"{sym}_invstd", (C,), f"'{layer.name}' 1/sqrt(var + eps) used by the last forward",
                                 fixed=True)
            out = self.buffer(f"{sym}_out", layer.out_shape, f"'{layer.name}'")
            common.update(out=out, weight=weight, bias=bias)
            return BatchNormPlan(**common, running_mean=running_mean, running_var=running_var, mean=mean, invstd=invstd)
        if layer.kind == "flatten" or (layer.kind == "dropout" and layer.rate == 0):
            notes.append("no code: the output is the input's memory" + (" viewed flat" if layer.kind == "flatten" else ""))
            return ViewPlan(**common)
        if layer.kind in CONV_TRANSPOSE_KINDS + ("global_maxpool", "lrn", "channel_shuffle") or (
                layer.kind in AVGPOOL_KINDS and (layer.ceil or not layer.count_pad)):
            return self.plan_addition(layer, sym, common)
        choice = choose_kernel(layer)
        family = kernel_family(layer)
        if family in ("conv", "dense"):
            weight = self.param(f"{sym}_weight", layer.params[0])
            bias = self.param(f"{sym}_bias", layer.params[1]) if layer.bias else None
            pre = self.buffer(f"{sym}_pre", layer.out_shape, f"'{layer.name}' before {layer.activation}") if layer.activation else None
            out = self.buffer(f"{sym}_out", layer.out_shape, f"'{layer.name}'")
            common.update(out=out, pre=pre, weight=weight, bias=bias)
            if family == "dense":
                return BlockedDensePlan(**common, vl=self.vl) if choice == "blocked" else DensePlan(**common)
            if choice == "grouped":
                plane = depthwise_plane(layer)
                scratch = (self.buffer(f"{sym}_planes", (depthwise_scratch(layer),),
                                       f"'{layer.name}' padded planes and per-tap sums (depthwise)", fixed=True)
                           if plane else "NULL")
                return GroupedConvPlan(**common, scratch=scratch)
            if choice != "blocked":
                return ConvPlan(**common)
            if winograd_fits(layer):
                return self.plan_winograd_conv(layer, sym, common)
            return self.plan_blocked_conv(BlockedConvPlan(**common, blocking=BlockedConv.of(layer, self.vl)), sym)
        common["out"] = self.buffer(f"{sym}_out", layer.out_shape, f"'{layer.name}'")
        if family == "maxpool":
            argmax = self.buffer(f"{sym}_argmax", layer.out_shape, f"'{layer.name}' winners", "int32_t")
            return MaxPoolPlan(**common, argmax=argmax, variant=choice)
        if family == "avgpool":
            return AvgPoolPlan(**common)
        if family == "global_avgpool":
            return GlobalAvgPoolPlan(**common)
        if layer.kind == "dropout":
            mask = self.buffer(f"{sym}_mask", layer.in_shape, f"'{layer.name}' mask, 0 or 1/(1 - {layer.rate!r})")
            self.dropout_layers.append(layer.name)
            return DropoutPlan(**common, mask=mask, mask_index=len(self.dropout_layers) - 1)
        return ActivationPlan(**common)

    def plan_addition(self, layer: Layer, sym: str, common: dict) -> LayerPlan:
        """The plans of issue 15's additions (see their kernels)."""
        if layer.kind in CONV_TRANSPOSE_KINDS:
            if layer.spatial_dims == 1:
                common["notes"].append(f"{layer.kind} runs as a conv_transpose2d of height 1: (C, L) is (C, 1, L)")
            weight = self.param(f"{sym}_weight", layer.params[0])
            bias = self.param(f"{sym}_bias", layer.params[1]) if layer.bias else None
            pre = (self.buffer(f"{sym}_pre", layer.out_shape, f"'{layer.name}' before {layer.activation}")
                   if layer.activation else None)
            out = self.buffer(f"{sym}_out", layer.out_shape, f"'{layer.name}'")
            return ConvTransposePlan(**{**common, "out": out, "pre": pre}, weight=weight, bias=bias)
        common["out"] = self.buffer(f"{sym}_out", layer.out_shape, f"'{layer.name}'")
        if layer.kind == "global_maxpool":
            argmax = self.buffer(f"{sym}_argmax", layer.out_shape, f"'{layer.name}' winners", "int32_t")
            return GlobalMaxPoolPlan(**common, argmax=argmax)
        if layer.kind == "lrn":
            divisor = self.buffer(f"{sym}_divisor", layer.out_shape,
                                  f"'{layer.name}' divisor base k + alpha/size * sum of squares: backward reads it")
            return LrnPlan(**common, divisor=divisor)
        if layer.kind == "channel_shuffle":
            return ChannelShufflePlan(**common)
        common["notes"].append("divides each window by its own cell count (" + ("ceil=true" if layer.ceil else "")
                               + (", " if layer.ceil and not layer.count_pad else "")
                               + ("count_pad=false" if not layer.count_pad else "") + ")")
        return ClippedAvgPoolPlan(**common)

    def fuse_add_relu(self, index: int, layer: Layer, planned: dict[str, LayerPlan]) -> ViewPlan | None:
        """A relu whose input is an add of two operands read by nothing else: the add computes the relu in the
        same pass (AddPlan.relu), and the relu becomes a view of the add's output, with no code of its own."""
        if layer.kind != "relu":
            return None
        add = planned.get(layer.inputs[0])
        if (not isinstance(add, AddPlan) or len(add.inputs) != 2 or add.relu
                or self.network.consumers(add.layer.name) != (layer,)):
            return None
        add.relu = True
        add.summary += " + relu"
        add.notes.append(f"computes '{layer.name}' (relu) in the same pass")
        summary = f"relu '{layer.name}': {shape_text(layer.in_shape)} -> {shape_text(layer.out_shape)}"
        return ViewPlan(index=index, layer=layer, K=f"{self.K}L{index}", summary=summary,
                        notes=[f"no code: '{add.layer.name}' computes it"], inp=add.out, out=add.out)

    def fuse_batchnorm_activation(self, index: int, layer: Layer, planned: dict[str, LayerPlan]) -> ViewPlan | None:
        """A relu or relu6 whose input is a batch norm read by nothing else: the batch norm applies it as it
        writes its output (BatchNormPlan.act), and the activation becomes a view of that output, no code."""
        if layer.kind not in ("relu", "relu6"):
            return None
        bn = planned.get(layer.inputs[0])
        if not isinstance(bn, BatchNormPlan) or bn.act or self.network.consumers(bn.layer.name) != (layer,):
            return None
        bn.act = layer.kind
        bn.summary += f" + {layer.kind}"
        bn.notes.append(f"applies '{layer.name}' ({layer.kind}) as it writes its output")
        summary = f"{layer.kind} '{layer.name}': {shape_text(layer.in_shape)} -> {shape_text(layer.out_shape)}"
        return ViewPlan(index=index, layer=layer, K=f"{self.K}L{index}", summary=summary,
                        notes=[f"no code: '{bn.layer.name}' computes it"], inp=bn.out, out=bn.out)

    def fold_batchnorms(self, layers: list[LayerPlan]) -> None:
        """Mark each batch norm that inference folds into the convolution before it: the convolution has no
        fused activation and the batch norm is the only layer reading its output."""
        by_name = {lp.layer.name: lp for lp in layers}
        for lp in layers:
            if not isinstance(lp, BatchNormPlan) or lp.layer.inputs[0] not in by_name:
                continue
            conv = by_name[lp.layer.inputs[0]]
            if (isinstance(conv, (ConvPlan, GroupedConvPlan)) and conv.layer.activation is None
                    and self.network.consumers(conv.layer.name) == (lp.layer,)):
                sym = f"l{lp.index}"
                lp.fold, conv.folded_into = conv, lp
                lp.wfold = self.buffer(f"{sym}_wfold", conv.layer.params[0].shape,
                                       f"'{conv.layer.name}' weights with '{lp.layer.name}' folded in", fixed=True)
                lp.bfold = self.buffer(f"{sym}_bfold", (conv.layer.out_shape[0],),
                                       f"'{conv.layer.name}' bias with '{lp.layer.name}' folded in", fixed=True)
                lp.notes.append(f"inference folds it into '{conv.layer.name}'")

    def plan_winograd_conv(self, layer: Layer, sym: str, common: dict) -> WinogradConvPlan:
        """A Winograd convolution's passes and scratch: the bias padded to whole vectors, the transformed
        weights (and the weight gradient's sums) and the tile scratch, each the larger of the two passes'. No
        padded copy of the input: every pass places its input in the zero tile plane itself."""
        vl, b = self.vl, replace(BlockedConv.of(layer, self.vl), padded=False)
        C, F = layer.in_shape[0], layer.out_shape[0]
        H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW = geometry_2d(layer)
        forward = winograd_pass(C, F, H, W, OH, OW, PH, PW, vl)
        input_grad = winograd_pass(F, C, OH, OW, H, W, 2 - PH, 2 - PW, vl)
        common["notes"].append("forward, input and weight gradients by Winograd F(2x2, 3x3)")
        lp = WinogradConvPlan(**common, blocking=b, passes=(tuple(forward), tuple(input_grad)))
        name = layer.name
        lp.bpack = self.buffer(f"{sym}_bpack", (b.FV * vl,), f"'{name}' bias, padded to whole vectors", fixed=True)
        lp.u = self.buffer(f"{sym}_u", (16, max(C * b.FV, F * b.CV) * vl),
                           f"'{name}' weights transformed (G g G^T), forward or turned for the input gradient; "
                           f"the weight gradient's sums",
                           fixed=True)
        size = max(winograd_scratch(dict(forward), vl), winograd_scratch(dict(input_grad), vl))
        lp.wino = self.buffer(f"{sym}_wino", (size,), f"'{name}' Winograd tile plane, V and M", fixed=True)
        return lp

    def plan_blocked_conv(self, lp: BlockedConvPlan, sym: str) -> BlockedConvPlan:
        """The scratch a blocked convolution needs: the padded input (kept for backward), the packed
        weights, the output gradient with filters last and spread out, the rotated weights."""
        layer, vl, b = lp.layer, self.vl, lp.blocking
        C, F = layer.in_shape[0], layer.out_shape[0]
        H, W, OH, OW, KH, KW = geometry_2d(layer)[:6]
        name = layer.name
        if b.padded:
            lp.xpad = self.buffer(f"{sym}_xpad", (C, b.HP, b.WP), f"'{name}' input, zero-padded: backward reads it")
        if b.packs:
            lp.wpack = self.buffer(f"{sym}_wpack", (KH, KW, C, b.FV * vl), f"'{name}' weights, filters last", fixed=True)
            lp.bpack = self.buffer(f"{sym}_bpack", (b.FV * vl,), f"'{name}' bias, padded to whole vectors", fixed=True)
        if b.pointwise_input_grad:  # a GEMM with the weights transposed (in wrot): no rotated or spread copies
            lp.wrot = self.buffer(f"{sym}_wrot", (C, F), f"'{name}' weights transposed", fixed=True)
        if b.pointwise and (OH, OW) != (H, W):  # a stride: the inputs it reads, and their gradient, on the output's grid
            lp.xpad = self.buffer(f"{sym}_xsub", (C, OH, OW), f"'{name}' input at the stride: backward reads it")
            lp.dypad = self.buffer(f"{sym}_dsub", (C, OH, OW), f"'{name}' input gradient at the stride")
            return lp
        if not b.weight_grad_by_columns and not b.pointwise_weight_grad:  # these two read dout itself
            lp.dyt = self.buffer(f"{sym}_dyt", (OH, OW, b.FV * vl), f"'{name}' output gradient, filters last")
        if b.pointwise_input_grad:
            lp.dypad = "NULL"
            return lp
        lp.wrot = self.buffer(f"{sym}_wrot", (KH, KW, F, b.CV * vl), f"'{name}' weights turned 180 degrees, channels last",
                              fixed=True)
        lp.dypad = self.buffer(f"{sym}_dypad", (F, b.HD, b.WD), f"'{name}' output gradient, spread and padded")
        return lp

    # ---- forward ----
    def forward_calls(self, lp: LayerPlan) -> list[str]:
        lines = lp.forward(lp.pre or lp.out)
        if getattr(lp, "folded_into", None) is not None:  # inference runs it in the batch norm's step
            return ["if (train) {"] + [f"    {line}" for line in lines] + ["}"]
        if lp.pre:
            lines.append(activation_call(lp.layer.activation, "forward", lp.out, lp.pre, None, lp.K, lp.layer.slope))
        return lines

    # ---- backward ----
    def backward_calls(self, layers: list[LayerPlan]) -> list[tuple[LayerPlan, list[str]]]:
        """Walk the layers backwards: (layer, its backward calls) in backward order. The gradient flows
        through two scratch buffers, grad_a and grad_b: each step reads one and writes the other (dy and
        dx, the caller's arrays, at the two ends)."""
        compute = [lp for lp in layers if not lp.is_view]
        scratch_size = {"a.grad_a": 0, "a.grad_b": 0}

        def other_than(buffer: str, per_sample: int) -> str:
            chosen = "a.grad_b" if buffer == "a.grad_a" else "a.grad_a"
            scratch_size[chosen] = max(scratch_size[chosen], per_sample)
            return chosen

        steps: list[tuple[LayerPlan, list[str]]] = []
        dout = "dy"
        for lp in reversed(compute):
            layer, K = lp.layer, lp.K
            first = lp is compute[0]
            lines: list[str] = []
            steps.append((lp, lines))
            if lp.pre:  # through the fused activation first: dout -> dpre (written whole: no zeroing)
                dpre = other_than(dout, layer.out_size)
                saved = lp.pre if ACTIVATION_READS[layer.activation] == "pre" else lp.out
                lines.append(activation_call(layer.activation, "backward", dpre, dout, saved, K, layer.slope))
                dout = dpre
            dinp = "dx" if first else other_than(dout, layer.in_size)
            if first and lp.has_params:
                # the first layer's input gradient only when the caller wants dx
                if not lp.writes_whole_input_grad:
                    lines.append(f"if (input_grad) {{ zero(dx, N * {K}_IN_SIZE); }}")
                dinp = "input_grad ? dx : NULL"
            elif not lp.writes_whole_input_grad:
                lines.append(f"zero({dinp}, N * {K}_IN_SIZE);")
            lines += lp.backward(dinp, dout)
            dout = dinp
        for name, size in scratch_size.items():
            if size:
                self.buffer(name[2:], (size,), "gradient scratch: backward alternates between grad_a and grad_b")
        return steps


    def graph_backward_calls(self, layers: list[LayerPlan]) -> list[tuple[LayerPlan, list[str]]]:
        """Backward through a graph: (layer, its backward calls) in backward order (the reverse of forward).

        Every tensor that receives a gradient has a gradient buffer of its own (`a.l3_grad`; the input's is
        the caller's dx; a view's is its input's). A tensor read by several layers sums their contributions:
        the first contribution in backward order writes the buffer (a kernel that writes (=) writes it
        directly; one that accumulates gets it zeroed first), later ones add to it (an accumulating kernel
        directly, a writing one into the scratch `a.grad_part`, then `accumulate`). A layer whose output
        received no gradient (a branch the output does not depend on) is skipped: its gradients are zero.
        The fused activation's gradient goes through the scratch `a.grad_pre`."""
        by_buffer = {lp.out: lp for lp in layers if not lp.is_view}
        by_buffer["a.input"] = None
        scratch = {"grad_pre": 0, "grad_part": 0}
        written: set[str] = set()  # tensor buffers whose gradient holds a contribution already
        grad_fields: dict[str, int] = {}  # gradient buffer -> per-sample size

        def grad_of(buffer: str) -> str:
            if buffer == "a.input":
                return "dx"
            name = buffer[2:].replace("_out", "_grad", 1) if buffer.endswith("_out") else buffer[2:] + "_grad"
            grad_fields[name] = by_buffer[buffer].layer.out_size
            return f"a.{name}"

        output = layers[-1].out
        if output == "a.input":
            return []  # nothing but views: the template copies dy to dx
        readers = any(output in ([lp.inp] if not isinstance(lp, MergePlan) else lp.inputs)
                      for lp in layers if not lp.is_view)
        steps: list[tuple[LayerPlan, list[str]]] = []
        compute = [lp for lp in layers if not lp.is_view]
        start: list[str] = []
        if readers:  # the output is also read inside the network: its gradient buffer starts as dy
            start.append(f"memcpy({grad_of(output)}, dy, (size_t)(N * {compute[-1].K}_OUT_SIZE) * sizeof(real));")
        written.add(output)

        def contribution(source: str, size_expr: str, emit, writes: bool, nullable: bool) -> list[str]:
            """The lines that add one reader's gradient for the tensor in buffer `source`: emit(target) prints the
            kernel call writing (writes) or accumulating into target; nullable: the call takes NULL for no dinp."""
            target = grad_of(source)
            first = source not in written
            written.add(source)
            if not first and writes:
                scratch["grad_part"] = max(scratch["grad_part"], by_buffer[source].layer.out_size if source != "a.input"
                                           else prod(self.network.input_shape))
            if source == "a.input" and nullable:  # the kernel runs for its parameters' gradients whatever input_grad is
                if first:
                    zeroing = [] if writes else [f"if (input_grad) {{ zero(dx, {size_expr}); }}"]
                    return zeroing + emit("input_grad ? dx : NULL")
                if not writes:
                    return emit("input_grad ? dx : NULL")
                return emit("input_grad ? a.grad_part : NULL") + [
                    f"if (input_grad) {{ accumulate(dx, a.grad_part, {size_expr}); }}"]
            if first:
                lines = emit(target) if writes else [f"zero({target}, {size_expr});"] + emit(target)
            elif not writes:
                lines = emit(target)
            else:
                lines = emit("a.grad_part") + [f"accumulate({target}, a.grad_part, {size_expr});"]
            if source != "a.input":
                return lines
            return ["if (input_grad) {"] + [f"    {line}" for line in lines] + ["}"]

        for lp in reversed(compute):
            layer, K = lp.layer, lp.K
            lines: list[str] = list(start) if lp is compute[-1] else []
            steps.append((lp, lines))
            if lp.out not in written:  # nothing downstream reads it: no gradient (but the output's copy of dy)
                continue
            dout = "dy" if lp.out == output and not readers else grad_of(lp.out)
            if lp.pre:  # through the fused activation first: dout -> dpre (written whole)
                scratch["grad_pre"] = max(scratch["grad_pre"], layer.out_size)
                saved = lp.pre if ACTIVATION_READS[layer.activation] == "pre" else lp.out
                lines.append(activation_call(layer.activation, "backward", "a.grad_pre", dout, saved, K, layer.slope))
                dout = "a.grad_pre"
            if isinstance(lp, MergePlan):
                for i, (source, shape) in enumerate(zip(lp.inputs, layer.in_shapes)):
                    size = f"N * {prod(shape)}"
                    first = source not in written
                    target = grad_of(source)
                    written.add(source)
                    call = lp.operand_backward(i, target, dout, accumulate=not first)
                    lines += (["if (input_grad) {", f"    {call[0]}", "}"] if source == "a.input" else call)
                continue
            size = f"N * {K}_IN_SIZE"
            lines += contribution(lp.inp, size, lambda target, lp=lp, dout=dout: lp.backward(target, dout),
                                  lp.writes_whole_input_grad, lp.has_params)
        for name, per_sample in grad_fields.items():
            self.buffer(name, (per_sample,), "gradient of the tensor (summed over its readers)")
        for name, per_sample in scratch.items():
            if per_sample:
                self.buffer(name, (per_sample,), "gradient scratch")
        return steps


# ---- rendering -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CSource:
    """A module's generated C: the glue, its cffi declarations and the kernel headers, with the plans."""

    text: str  # the glue: one C translation unit that includes the kernel headers below
    cdef: str  # its exported declarations, for cffi
    dtype: str
    plans: tuple[NetworkPlan, ...]
    headers: tuple[tuple[str, str], ...] = field(default=())  # ("kernels/conv.h", text), ...: what it includes


@cache
def _environment():
    import jinja2  # here, not at the top: a cache hit plans the network but renders nothing

    env = jinja2.Environment(loader=template_loader(), undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["initializer"] = c_initializer
    return env


def c_initializer(pairs, indent: str = "    ", width: int = 110) -> str:
    """A designated initializer `{.C = 1, .H = 28, ...}` of checked ints (nested lists: nested structs),
    wrapped to `width` columns."""
    parts = []
    for name, value in pairs:
        if isinstance(value, list):
            parts.append(f".{name} = " + c_initializer(value, indent + "    ", width))
        else:
            parts.append(f".{name} = {c_int(int(value) if isinstance(value, bool) else value, name)}")
    one_line = "{" + ", ".join(parts) + "}"
    if len(one_line) + len(indent) <= width:
        return one_line
    lines, line = [], ""
    for part in parts:
        if line and len(indent) + len(line) + len(part) + 2 > width:
            lines.append(line.rstrip())
            line = ""
        line += part + ", "
    lines.append(line.rstrip(", "))
    return "{\n" + "\n".join(indent + text for text in lines) + "\n" + indent[:-4] + "}"


def plan_network(network: Network, prefix: str = "", dtype: str = "float32") -> NetworkPlan:
    """Plan the network's C. prefix: "" for a module of one network, "m<k>_" in a bundle. dtype is a name of
    C_TYPES; a Model checks it where it enters (model.check_dtype), and this is the code generator's one check,
    for callers of plan_network or generate (which plans every network first) that pass anything else."""
    check_safe(network)
    if not re.fullmatch(r"(m[0-9]+_)?", prefix):
        raise ValueError(f"network symbol prefix must be '' or m<k>_; got {prefix!r}")
    if dtype not in C_TYPES:
        raise ValueError(f"dtype must be one of {', '.join(C_TYPES)}; got {dtype!r}")
    return _Planner(network, prefix, prefix.upper(), VECTOR_BYTES // ITEM_SIZE[dtype]).plan()


def uses_nll(plans) -> bool:
    """Whether a network of the module has loss nll: only then does the module export nll_loss."""
    return any(plan.network.loss == "nll" for plan in plans)


def cdef_for(plans, ctype: str) -> str:
    """What cffi binds: each network's entry points and sizes, then the shared loss and optimiser."""
    lines = []
    for plan in plans:
        P, K = plan.P, plan.K
        # "..." asks cffi to read each value from the compiled C: Python checks them against the plan.
        lines += [f"#define {K}MODEL_{what} ..." for what in SIZE_CONSTANTS]
        lines += [
                  f"void {P}model_forward(real* y, real* act_block, int32_t* argmax_block, const real* x, "
                  f"real* param_block, real* buffer_block, const real* const* masks, int64_t N, int train);",
                  f"void {P}model_backward(real* dx, real* grad_block, const real* dy, real* param_block, "
                  f"real* act_block, int32_t* argmax_block, int64_t N, int dropout, int input_grad, int train);"]
        if plan.prepared:
            lines.append(f"void {P}model_forget_weights(real* act_block);")
    lines += ["double cross_entropy_loss(real* dlogits, const real* logits, const int64_t* labels, int64_t N, int K);",
              "double mse_loss(real* dy, const real* y, const real* target, int64_t count);",
              "int all_finite(const real* x, int64_t count);",
              *(["double nll_loss(real* dy, const real* y, const int64_t* labels, int64_t N, int K);"]
                if uses_nll(plans) else []),
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
    single = len(networks) == 1
    plans = tuple(plan_network(n, "" if single else f"m{k}_", dtype) for k, n in enumerate(networks))
    includes = sorted(set(BASE_HEADERS).union(*(p.headers for p in plans)))
    title = (f"model '{plans[0].network.name}'" if single else
             f"{len(plans)} models: " + ", ".join(f"'{p.network.name}'" for p in plans)) + f", {dtype}"
    text = _environment().get_template("module.c.j2").render(
        title=title, version=__version__, ctype=C_TYPES[dtype], dtype=dtype, networks=plans, includes=includes,
        parallel_min_work=PARALLEL_MIN_WORK, vector_bytes=VECTOR_BYTES, uses_nll=uses_nll(plans))
    texts = kernel_headers()
    headers = tuple((f"kernels/{name}", texts[name]) for name in header_closure(includes))
    return CSource(text, cdef_for(plans, C_TYPES[dtype]), dtype, plans, headers)
