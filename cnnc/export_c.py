"""IR + weights -> standalone C99 for a microcontroller or any C program: `cnnc export --format c`.

    plan = memory_plan(network)                   # what the export will need, no weights required
    paths = export_c(model, "out/", prefix="lenet5")  # out/lenet5.h, lenet5.c, kernels/*.h, main.c, Makefile

The generated `PREFIX.c` depends on nothing beyond the C standard library and libm, never calls
malloc, keeps the weights in `static const` arrays (flash on a microcontroller) and does all its work
in one scratch arena of `PREFIX_ARENA_BYTES` bytes. Its API is exactly

    int PREFIX_predict(const float *input, float *output);   /* one sample, C, H, W order; 0 = success */

The arena plan (memory_plan). Layers fall into three groups:
  compute  (conv, grouped conv, pooling, global_avgpool, dense, batchnorm, add, concat) read one or more
           tensors and write a new one;
  in place (the activations, standalone or fused into conv/dense) rewrite the tensor they read, when no
           later layer reads it (otherwise they rewrite a copy of it);
  alias    (flatten, dropout at inference, and batch norm folded into the convolution before it) change
           nothing in memory: no code at all.
The input is the caller's (const), the last layer's tensor is written straight into the caller's output,
and every tensor in between lives from the step that writes it to the last step that reads it. Tensors are
placed in one arena greedily, largest first, each at the lowest offset clear of every tensor alive at the
same time (plan_offsets); in a chain that is the largest sum of two adjacent tensors, which no out-of-place
plan can beat. Batch norm whose convolution has no fused activation and no other reader is folded into its
weights at export time (in float64); any other runs kernels/batchnorm.h in inference mode.

The layers are computed by cnnc's kernel library (cnnc/kernels/*.h), the same C the C backend runs: the
export copies the plain C99 reference headers it needs (conv.h, conv_grouped.h, conv_transpose.h, pool.h,
dense.h, batchnorm.h, lrn.h, channel_shuffle.h, merge.h, activations.h and common.h, never the vectorised ones) into kernels/ beside PREFIX.c,
so the folder builds on its own, and PREFIX.c calls each kernel with one sample and a `static const` geometry
per layer.

What this module deliberately is not: an optimiser. The kernels it uses are the plain reference loops,
so that a reader can check them against the maths.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import numpy as np

from .c_names import comment_name, is_c_symbol
from .diagnostics import CnncError
from .fileio import write_owned_folder
from .ir import (ACTIVATIONS, AVGPOOL_KINDS, CONV_KINDS, CONV_TRANSPOSE_KINDS, MAXPOOL_KINDS, MERGE_KINDS, Layer,
                 Network)
from .summary import human_bytes

FLOAT_BYTES = 4  # the exported C computes in float32
DTYPES = ("float32",)
FLOATS_PER_LINE = 8
is_identifier = is_c_symbol  # the name this module has always exported


RESERVED_PREFIXES = ("main", "clean", "external")  # PREFIX.c would overwrite main.c; Makefile targets


def checked_prefix(prefix: str) -> str:
    if not is_c_symbol(prefix):
        raise CnncError(f"C prefix {prefix!r} is not usable: it must match ^[A-Za-z_][A-Za-z0-9_]*$, not be a C "
                        f"keyword and not start with '__' or '_' plus a capital letter (those are reserved); "
                        f"choose one with --name PREFIX")
    if prefix in RESERVED_PREFIXES:
        raise CnncError(f"C prefix {prefix!r} is not usable: the export also writes main.c and a Makefile with the "
                        f"targets clean and external; choose another with --name PREFIX")
    return prefix


# ---- what the export runs ------------------------------------------------------------------------------
# Activations the kernel library has (kernels/activations.h), applied in place to the tensor they rewrite.
EXPORT_ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "softmax", "relu6", "silu", "hardswish", "elu", "selu",
                      "hardsigmoid", "log_softmax")
ROW_ACTIVATIONS = ("softmax", "log_softmax")  # over the whole tensor as one row; the others elementwise
# Layers that read one or more tensors and write a new one.
COMPUTE_KINDS = (CONV_KINDS + CONV_TRANSPOSE_KINDS + MAXPOOL_KINDS + AVGPOOL_KINDS
                 + ("global_avgpool", "global_maxpool", "dense", "batchnorm", "lrn", "channel_shuffle") + MERGE_KINDS)
ALIAS_KINDS = ("flatten", "dropout")  # no code: the same memory read another way (dropout is the identity)
EXPORT_KINDS = COMPUTE_KINDS + EXPORT_ACTIVATIONS + ALIAS_KINDS


# Issue 15's additions to the export (both exports take them; the tests pick the models using them by these).
ISSUE15_KINDS = CONV_TRANSPOSE_KINDS + ("global_maxpool", "lrn", "channel_shuffle", "elu", "selu", "hardsigmoid",
                                        "log_softmax")


def export_refusal(network: Network, what: str = "the standalone C export") -> str | None:
    """Why the standalone C export (float or int8: `what` says which) cannot write `network`, naming the layer,
    or None."""
    for layer in network.layers:
        if layer.kind not in EXPORT_KINDS:
            return f"{what} does not support '{layer.kind}' (layer '{layer.name}') yet; the C and NumPy backends run it"
        if layer.activation is not None and layer.activation not in EXPORT_ACTIVATIONS:
            return (f"{what} does not support activation={layer.activation} (layer '{layer.name}') yet; "
                    "the C and NumPy backends run it")
    return None


def checked_network(network: Network) -> Network:
    refusal = export_refusal(network)
    if refusal:
        raise CnncError(f"model '{network.name}': {refusal}")
    return network


def batchnorm_folds(network: Network) -> dict[str, Layer]:
    """{batch norm layer name: the convolution it folds into}: inference batch norm is an affine map per
    channel, exact to fold into the weights and bias of a convolution right before it that has no fused
    activation and no other reader. Any other batch norm runs batchnorm_forward with its running statistics."""
    folds = {}
    for layer in network.layers:
        if layer.kind != "batchnorm" or layer.inputs[0] == network.input_name:
            continue
        conv = network.layer(layer.inputs[0])
        if conv.kind in CONV_KINDS and conv.activation is None and network.consumers(conv.name) == (layer,):
            folds[layer.name] = conv
    return folds


def exported_weight_floats(network: Network) -> int:
    """Floats of the exported weights: folding a batch norm drops its parameters but gives the convolution a
    bias; an unfolded one keeps its running statistics too."""
    folds = batchnorm_folds(network)
    folded_convs = {conv.name for conv in folds.values()}
    total = 0
    for layer in network.layers:
        if layer.name in folds:
            continue
        total += layer.param_count + sum(b.size for b in layer.buffers)
        if layer.name in folded_convs and not layer.bias:
            total += layer.out_shape[0]
    return total


# ---- the memory plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Buffer:
    """Where a tensor lives: the caller's "input" or "output", or the "arena" at `offset` floats."""

    where: str
    offset: int = 0

    def c_expr(self) -> str:
        if self.where == "arena":
            return f"arena + {self.offset}" if self.offset else "arena"
        return self.where


@dataclass(frozen=True)
class Step:
    """One statement of PREFIX_predict.

    op: "compute" (the layer's own kind), "copy" (a tensor into a new buffer, for an activation that may not
        rewrite it: the caller's input, or a tensor a later layer still reads), or an activation applied in
        place to `dst` (standalone, or fused into `layer` when layer.kind is conv/dense).
    index: the layer's 1-based position in the network (0 for a copy of the input in a chain).
    srcs: the buffers read, in the layer's operand order (one but for add and concat).
    scratch: batch norm's 2 * C floats for the mean and invstd batchnorm_forward writes, lrn's divisor base
        (one float per output element, which lrn_forward writes for a backward pass inference never runs),
        or None."""

    op: str
    layer: Layer | None
    index: int
    srcs: tuple[Buffer, ...]
    dst: Buffer
    size: int  # elements written to dst
    scratch: Buffer | None = None

    @property
    def src(self) -> Buffer:
        return self.srcs[0]


@dataclass(frozen=True)
class MemoryPlan:
    steps: tuple[Step, ...]
    arena_floats: int
    weight_floats: int
    input_floats: int
    output_floats: int
    folds: dict = field(default_factory=dict)  # batchnorm_folds(network)
    tensor_floats: int = 0  # the naive plan: every tensor between input and output in a buffer of its own

    @property
    def arena_bytes(self) -> int:
        return self.arena_floats * FLOAT_BYTES

    @property
    def weight_bytes(self) -> int:
        return self.weight_floats * FLOAT_BYTES

    @property
    def tensor_bytes(self) -> int:
        return self.tensor_floats * FLOAT_BYTES


def plan_offsets(tensors: list[tuple[int, int, int]]) -> tuple[list[int], int]:
    """Offsets in one arena for tensors given as (size, first step, last step), live from the step that
    writes them to the last step that reads them (inclusive): two tensors live at a common step never
    overlap. Greedy by size (TensorFlow Lite's arena planner): the largest first, each at the lowest offset
    clear of every placed tensor whose life overlaps its own. -> (offset per tensor, arena size)."""
    offsets = [0] * len(tensors)
    placed: list[int] = []
    for i in sorted(range(len(tensors)), key=lambda i: (-tensors[i][0], tensors[i][1], i)):
        size, first, last = tensors[i]
        taken = sorted((offsets[j], offsets[j] + tensors[j][0]) for j in placed
                       if tensors[j][1] <= last and first <= tensors[j][2])
        offset = 0
        for lo, hi in taken:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        offsets[i] = offset
        placed.append(i)
    return offsets, max((offsets[i] + tensors[i][0] for i in range(len(tensors))), default=0)


INPUT = 0  # the value id of the caller's input


def memory_plan(network: Network, folds: dict[str, Layer] | None = None,
                batchnorm_scratch: bool = True) -> MemoryPlan:
    """Every statement of the generated predict() with its buffers, and the bytes it all needs.

    Each tensor is a value: the caller's input, or a buffer some step writes. Aliases (flatten, dropout) and a
    batch norm folded into its convolution name the value they read; an activation rewrites its value in place
    when it is the value's last reader, and otherwise works on a copy. The value the last layer leaves is the
    caller's output; every other one gets an arena slot for its life (plan_offsets).
    folds: {batch norm: the layer it folds into}, by default batchnorm_folds(network) (the int8 export folds
    more); batchnorm_scratch: whether an unfolded batch norm gets the float kernel's scratch (2C values)."""
    checked_network(network)
    folds = batchnorm_folds(network) if folds is None else folds
    input_floats = prod(network.input_shape)
    layers = network.layers
    position = {layer.name: i for i, layer in enumerate(layers)}
    aliases: dict[str, list[str]] = {}  # tensor -> the tensors that are the same data (flatten, dropout, folds)
    for layer in layers:
        if layer.kind in ALIAS_KINDS or layer.name in folds:
            aliases.setdefault(layer.inputs[0], []).append(layer.name)

    def last_read(name: str, other_than: Layer) -> int:
        """The position of the last layer but `other_than` that reads the data of tensor `name`."""
        last, todo = -1, [name]
        while todo:
            tensor = todo.pop()
            todo += aliases.get(tensor, [])
            last = max([last] + [position[c.name] for c in network.consumers(tensor)
                                 if c is not other_than and c.kind not in ALIAS_KINDS and c.name not in folds])
        return last

    value_of = {network.input_name: INPUT}
    sizes = [input_floats]  # per value id
    raw: list[tuple] = []  # (op, layer, index, source values, destination value, size, scratch value or None)
    single = network.is_chain

    def new_value(size: int) -> int:
        sizes.append(size)
        return len(sizes) - 1

    def in_place(op: str, layer: Layer, index: int, tensor: str, pos: int) -> int:
        value = value_of[tensor]
        if value == INPUT or last_read(tensor, layer) > pos:
            copy = new_value(sizes[value])
            raw.append(("copy", None if single else layer, 0 if single else index, (value,), copy, sizes[value], None))
            value = copy
        raw.append((op, layer, index, (value,), value, layer.out_size, None))
        return value

    for pos, layer in enumerate(layers):
        index = pos + 1
        if layer.kind in ALIAS_KINDS or layer.name in folds:
            value_of[layer.name] = value_of[layer.inputs[0]]
        elif layer.kind in EXPORT_ACTIVATIONS:
            value_of[layer.name] = in_place(layer.kind, layer, index, layer.inputs[0], pos)
        else:
            sources = tuple(value_of[name] for name in layer.inputs)
            scratch = (new_value(2 * layer.in_shape[0]) if layer.kind == "batchnorm" and batchnorm_scratch
                       else new_value(layer.out_size) if layer.kind == "lrn" else None)
            value = new_value(layer.out_size)
            raw.append(("compute", layer, index, sources, value, layer.out_size, scratch))
            if layer.activation:
                raw.append((layer.activation, layer, index, (value,), value, layer.out_size, None))
            value_of[layer.name] = value
    output = value_of[layers[-1].name] if layers else INPUT
    if output == INPUT:  # nothing writes a new tensor: copy the input to the output
        output = new_value(input_floats)
        raw.append(("copy", None, 0, (INPUT,), output, input_floats, None))
    life: dict[int, list[int]] = {}  # value -> [first step, last step]
    for i, (_, _, _, sources, dst, _, scratch) in enumerate(raw):
        for value in (*sources, dst, *([scratch] if scratch is not None else [])):
            life.setdefault(value, [i, i])[1] = i
    arena_values = [v for v in sorted(life) if v not in (INPUT, output)]
    offsets, arena = plan_offsets([(sizes[v], *life[v]) for v in arena_values])
    where = {INPUT: Buffer("input"), output: Buffer("output")}
    where.update({v: Buffer("arena", offset) for v, offset in zip(arena_values, offsets)})
    steps = tuple(Step(op, layer, index, tuple(where[v] for v in sources), where[dst], size,
                       where[scratch] if scratch is not None else None)
                  for op, layer, index, sources, dst, size, scratch in raw)
    return MemoryPlan(steps, arena, exported_weight_floats(network), input_floats, prod(network.output_shape),
                      folds, sum(sizes[v] for v in arena_values))


def memory_report(network: Network, prefix: str | None = None) -> str:
    """What `cnnc export --format c --dry-run` prints."""
    plan = memory_plan(network)
    p = (prefix or network.name).upper()
    input_bytes, output_bytes = plan.input_floats * FLOAT_BYTES, plan.output_floats * FLOAT_BYTES
    one_buffer_per_layer = network.activation_elements * FLOAT_BYTES - input_bytes - output_bytes
    return "\n".join([
        f"model {network.name}: standalone C export (float32)",
        f"  flash (weights, static const): {plan.weight_bytes:>10,} bytes ({human_bytes(plan.weight_bytes)}), "
        f"{plan.weight_floats:,} floats",
        f"  RAM (scratch arena):           {plan.arena_bytes:>10,} bytes ({human_bytes(plan.arena_bytes)}) "
        f"= {p}_ARENA_BYTES",
        f"  caller's buffers:              {input_bytes:>10,} bytes input ({p}_INPUT_SIZE = {plan.input_floats}), "
        f"{output_bytes:,} bytes output ({p}_OUTPUT_SIZE = {plan.output_floats})",
        f"  peak memory, arena + weights:  {plan.arena_bytes + plan.weight_bytes:>10,} bytes "
        f"({human_bytes(plan.arena_bytes + plan.weight_bytes)})",
        f"  (for comparison, one buffer per layer would need {one_buffer_per_layer:,} bytes of scratch)",
    ])


# ---- numbers as C ------------------------------------------------------------------------------------
def c_float(value) -> str:
    """A float32 as a C literal that converts back to exactly the same float: 9 significant digits."""
    v = float(np.float32(value))
    if not np.isfinite(v):
        raise ValueError(f"cannot write a non-finite weight ({v}) as a C constant")
    text = f"{v:.9g}"
    if not any(ch in text for ch in ".e"):
        text += ".0"
    return text + "f"


def c_double(value) -> str:
    """A finite number as a C double literal that converts back to exactly the same double."""
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"cannot write a non-finite number ({v}) as a C constant")
    text = repr(v)
    return text if any(ch in text for ch in ".e") else text + ".0"


def c_float_lines(values: np.ndarray, indent: str = "    ") -> str:
    """The initializer of a float array, FLOATS_PER_LINE values a line."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    if not np.isfinite(flat).all():
        raise ValueError("cannot write non-finite weights as C constants")
    texts = [f"{v:.9g}" for v in flat.tolist()]
    texts = [(t if ("." in t or "e" in t) else t + ".0") + "f" for t in texts]
    return ",\n".join(indent + ", ".join(texts[i:i + FLOATS_PER_LINE]) for i in range(0, len(texts), FLOATS_PER_LINE))


# ---- rendering -----------------------------------------------------------------------------------------
def template_environment():
    """The Jinja environment of templates/export/ (the float and the int8 exports)."""
    import jinja2

    from .resources import template_loader

    return jinja2.Environment(loader=template_loader("export"),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True, autoescape=False)


def shape_text(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def layer_comment(layer: Layer) -> str:
    """Every part is a checked name (cnnc.c_names), a number or one of cnnc's own words."""
    return (f"{comment_name(layer.name, 'layer name')}: {layer.kind} {shape_text(layer.in_shape)} -> "
            f"{shape_text(layer.out_shape)}")


def layer_lines(network: Network, folds: dict | None = None) -> list[str]:
    """The header comment's list of layers: number, name, kind, shapes, fused activation, what it reads."""
    folds = folds or {}
    index_of = {layer.name: i for i, layer in enumerate(network.layers, 1)}
    lines = []
    for i, layer in enumerate(network.layers, 1):
        line = f"{i:>3}  {layer_comment(layer)}" + (f" + {layer.activation}" if layer.activation else "")
        previous = network.layers[i - 2].name if i > 1 else network.input_name
        if layer.inputs != (previous,):
            line += ", reads " + ", ".join("the input" if name == network.input_name else f"layer {index_of[name]}"
                                           for name in layer.inputs)
        if layer.name in folds:
            line += f", folded into layer {index_of[folds[layer.name].name]}"
        lines.append(line)
    return lines


def folded_conv_params(conv: Layer, bn: Layer, params: dict, buffers: dict) -> tuple[np.ndarray, np.ndarray]:
    """The weight (F, C/groups, *kernel) and bias (F) of `conv` with inference batch norm `bn` applied, in
    float64: scale = gamma / sqrt(running_var + eps); weight * scale per filter, (bias - mean) * scale + beta."""
    gamma, beta = (np.asarray(params[f"{bn.name}.{role}"], np.float64) for role in ("weight", "bias"))
    mean, var = (np.asarray(buffers[f"{bn.name}.running_{stat}"], np.float64) for stat in ("mean", "var"))
    scale = gamma / np.sqrt(var + bn.eps)
    weight = np.asarray(params[f"{conv.name}.weight"], np.float64)
    bias = np.asarray(params[f"{conv.name}.bias"], np.float64) if conv.bias else np.zeros(conv.out_shape[0])
    return weight * scale.reshape(-1, *([1] * (weight.ndim - 1))), (bias - mean) * scale + beta


def _weight_arrays(network: Network, params: dict, buffers: dict, folds: dict) -> list[dict]:
    """The static const arrays: every layer's parameters (a batch norm's running statistics too), named by
    layer position; a convolution with a batch norm folded in has the folded weight and bias."""
    folded_into = {conv.name: network.layer(bn) for bn, conv in folds.items()}
    arrays = []

    def add(ident: str, comment: str, values) -> None:
        values = np.asarray(values)
        arrays.append({"ident": ident, "size": int(values.size), "shape": shape_text(values.shape),
                       "comment": comment, "initializer": c_float_lines(values)})

    for index, layer in enumerate(network.layers, 1):
        name = comment_name(layer.name, "layer name")
        if layer.name in folds:
            continue
        if layer.name in folded_into:
            bn = folded_into[layer.name]
            weight, bias = folded_conv_params(layer, bn, params, buffers)
            bn_name = comment_name(bn.name, "layer name")
            add(f"layer{index}_weight", f"{name}.weight with batch norm {bn_name} folded in", weight)
            add(f"layer{index}_bias", f"{name}.bias with batch norm {bn_name} folded in", bias)
            continue
        for spec in layer.params + layer.buffers:
            role = spec.name.rsplit(".", 1)[1]  # weight, bias, running_mean, running_var
            add(f"layer{index}_{role}", f"{name}.{role}", params[spec.name] if spec in layer.params else buffers[spec.name])
    return arrays


# The kernel header and geometry struct of each computing layer kind (kernels/*.h).
def _kernel(layer: Layer) -> tuple[str, str, list]:
    from .backends.c_codegen import (batchnorm_geometry, channels_and_positions, conv_geometry,
                                     conv_transpose_geometry, dense_geometry, global_avgpool_geometry, pool_geometry)

    if layer.kind in CONV_KINDS and layer.groups != 1:
        return "conv_grouped.h", "Conv2dGrouped", [("conv", conv_geometry(layer)), ("G", layer.groups)]
    if layer.kind in CONV_KINDS:
        return "conv.h", "Conv2d", conv_geometry(layer)
    if layer.kind == "dense":
        return "dense.h", "Dense", dense_geometry(layer)
    if layer.kind == "batchnorm":
        return "batchnorm.h", "BatchNorm", batchnorm_geometry(layer)
    if layer.kind == "global_avgpool":
        return "pool.h", "GlobalAvgPool", global_avgpool_geometry(layer)
    if layer.kind == "global_maxpool":
        return "pool.h", "GlobalMaxPool", global_avgpool_geometry(layer)
    if layer.kind in CONV_TRANSPOSE_KINDS:
        return "conv_transpose.h", "ConvTranspose2d", conv_transpose_geometry(layer)
    if layer.kind == "lrn":
        return "lrn.h", "Lrn", channels_and_positions(layer) + [("SIZE", layer.lrn_size)]
    if layer.kind == "channel_shuffle":
        return "channel_shuffle.h", "ChannelShuffle", channels_and_positions(layer) + [("G", layer.groups)]
    if layer.kind in AVGPOOL_KINDS and (layer.ceil or not layer.count_pad):  # a divisor per window
        PHA, PWA = (0, layer.pad_after[0]) if layer.spatial_dims == 1 else layer.pad_after
        return "pool.h", "AvgPool2dClipped", [("pool", pool_geometry(layer)), ("PHA", PHA), ("PWA", PWA),
                                              ("count_pad", int(layer.count_pad))]
    return "pool.h", "Pool2d", pool_geometry(layer)


def _merge_statement(step: Step, name: str, geometries: list[dict], headers: set[str]) -> str:
    """add: the first two operands summed into out, the others accumulated; concat: each operand copied to its
    place in out (kernels/merge.h)."""
    from .backends.c_codegen import c_initializer

    headers.add("merge.h")
    out, sources = step.dst.c_expr(), [b.c_expr() for b in step.srcs]
    if step.layer.kind == "add":
        lines = [f"add_forward({out}, {sources[0]}, {sources[1]}, {step.size});"]
        return "\n".join(lines + [f"accumulate({out}, {source}, {step.size});" for source in sources[2:]])
    lines, offset = [], 0
    for k, (source, shape) in enumerate(zip(sources, step.layer.in_shapes)):
        size = prod(shape)
        geometries.append({"struct": "Concat", "ident": f"{name}_in{k}",
                           "fields": c_initializer([("OUT", step.size), ("OFFSET", offset), ("SIZE", size)])})
        lines.append(f"concat_forward({out}, {source}, 1, {name}_in{k});")
        offset += size
    return "\n".join(lines)


def _statement(step: Step, folded: set[str], geometries: list[dict], headers: set[str],
               winners: list[dict] | None = None) -> str:
    """The C statement(s) of one step of predict(): kernel calls with one sample (N = 1). folded: the names of
    the convolutions a batch norm is folded into (they have a bias now). winners: gets the static int32_t
    array each global max pooling writes its winners to (global_maxpool_forward's argmax, unread here)."""
    from .backends.c_codegen import c_initializer

    out, inp, layer = step.dst.c_expr(), step.src.c_expr(), step.layer
    if step.op == "copy":
        return f"memcpy({out}, {inp}, {step.size} * sizeof(float));"
    if step.op != "compute":  # an activation, in place
        headers.add("activations.h")
        if step.op == "leaky_relu":
            return f"leaky_relu_forward({out}, {out}, {c_float(layer.slope)}, {step.size});"
        if step.op in ROW_ACTIVATIONS:
            return f"{step.op}_forward({out}, {out}, 1, {step.size});"
        return f"{step.op}_forward({out}, {out}, {step.size});"
    name = f"layer{step.index}"
    if layer.kind in MERGE_KINDS:
        return _merge_statement(step, name, geometries, headers)
    header, struct, geometry = _kernel(layer)
    headers.add(header)
    geometries.append({"struct": struct, "ident": name, "fields": c_initializer(geometry)})
    params = f"{name}_weight, " + (f"{name}_bias" if layer.bias or layer.name in folded else "NULL")
    if layer.kind in CONV_TRANSPOSE_KINDS:  # a 1-D one runs as a 2-D one of height 1
        return f"conv_transpose2d_forward({out}, {inp}, {params}, 1, {name});"
    if layer.kind in CONV_KINDS:
        kernel = "conv2d_grouped_forward" if layer.groups != 1 else "conv2d_forward"
        return f"{kernel}({out}, {inp}, {params}, 1, {name});"
    if layer.kind == "dense":
        return f"dense_forward({out}, {inp}, {params}, 1, {name});"
    if layer.kind == "batchnorm":  # inference (train = 0): the running statistics are only read
        channels = layer.in_shape[0]
        mean = step.scratch.c_expr()
        invstd = Buffer("arena", step.scratch.offset + channels).c_expr()
        return (f"batchnorm_forward({out}, {mean}, {invstd}, (real *){name}_running_mean, (real *){name}_running_var, "
                f"{inp}, {name}_weight, {name}_bias, 1, 0, {c_double(layer.eps)}, {c_double(layer.momentum)}, {name});")
    if layer.kind == "lrn":  # the divisor base goes to arena scratch: only backward would read it
        return (f"lrn_forward({out}, {step.scratch.c_expr()}, {inp}, {c_float(layer.alpha)}, {c_float(layer.beta)}, "
                f"{c_float(layer.k)}, 1, {name});")
    if layer.kind == "channel_shuffle":
        return f"channel_shuffle_forward({out}, {inp}, 1, {name});"
    if layer.kind == "global_maxpool":
        if winners is None:
            raise ValueError("global_maxpool needs the winners list to declare its argmax array")
        winners.append({"ident": f"{name}_winners", "size": layer.out_size})
        return f"global_maxpool_forward({out}, {name}_winners, {inp}, 1, {name});"
    if layer.kind in MAXPOOL_KINDS:
        return f"maxpool2d_forward({out}, NULL, {inp}, 1, {name});"
    if struct == "AvgPool2dClipped":
        return f"avgpool2d_clipped_forward({out}, {inp}, 1, {name});"
    kind = "global_avgpool" if layer.kind == "global_avgpool" else "avgpool2d"
    return f"{kind}_forward({out}, {inp}, 1, {name});"


def step_comment(step: Step, folds: dict | None = None) -> str:
    """The comment above a step's statement: the layer, and what the plan did with it."""
    if step.op == "copy":
        if step.src.where == "input":
            return "the input is const: copy it to a writable buffer for the in-place layers"
        return f"layer {step.index} rewrites a tensor that a later layer still reads: copy it first"
    if step.op == "compute":
        text = f"layer {step.index}, {layer_comment(step.layer)}"
        if step.layer.kind == "batchnorm":
            text += ", inference: batchnorm_forward only reads the running statistics"
        for bn, conv in (folds or {}).items():
            if conv is step.layer:
                text += f", batch norm {comment_name(bn, 'layer name')} folded in"
        return text
    if step.layer.kind in ACTIVATIONS:
        return f"layer {step.index}, {layer_comment(step.layer)}, in place"
    return f"the activation of layer {step.index}, in place"


def export_context(network: Network, plan: MemoryPlan, prefix: str) -> dict:
    """What every export template reads, float and int8 alike: names, shapes, sizes and the layer list; int8
    is False here (the int8 export sets it: header.h.j2 and source.c.j2 serve both exports)."""
    from ._version import __version__

    return {"prefix": prefix, "PREFIX": prefix.upper(), "version": __version__, "int8": False,
            "model": comment_name(network.name, "model name"),
            "input_shape": shape_text(network.input_shape), "output_shape": shape_text(network.output_shape),
            "input_size": plan.input_floats, "output_size": plan.output_floats,
            "layers": layer_lines(network, plan.folds)}


def render_files(prefix: str, context: dict, kernel_files: list[str]) -> dict[str, str]:
    """{file name: text} of an export, float or int8 (context["int8"]): PREFIX.h and PREFIX.c, the kernel
    headers (kernels/*.h, copied), main.c and Makefile."""
    from .resources import kernel_header_texts

    env = template_environment()
    texts = kernel_header_texts()
    return {
        f"{prefix}.h": env.get_template("header.h.j2").render(context),
        f"{prefix}.c": env.get_template("source.c.j2").render(context),
        **{name: texts[name.split("/", 1)[1]] for name in kernel_files},
        "main.c": env.get_template("main.c.j2").render(context),
        "Makefile": env.get_template("Makefile.j2").render(context),
    }


def render_c(network: Network, params: dict[str, np.ndarray], prefix: str,
             buffers: dict[str, np.ndarray] | None = None) -> dict[str, str]:
    """{file name: text} of PREFIX.h, PREFIX.c, the kernel headers it includes (kernels/*.h), main.c and
    Makefile. buffers: batch norm's running statistics (a Model's .buffers), needed when the network has any."""
    from .backends.c_codegen import header_closure

    prefix = checked_prefix(prefix)
    plan = memory_plan(network)
    buffers = buffers if buffers is not None else {}
    missing = [spec.name for spec in network.buffer_specs if spec.name not in buffers]
    if missing:
        raise ValueError(f"export of model '{network.name}' needs the running statistics {', '.join(missing)}")
    folded = {conv.name for conv in plan.folds.values()}
    geometries: list[dict] = []
    statements, headers, winners = [], set(), []
    for step in plan.steps:
        statements.append({"comment": step_comment(step, plan.folds),
                           "code": _statement(step, folded, geometries, headers, winners).replace("\n", "\n    ")})
    kernel_files = [f"kernels/{name}" for name in header_closure(headers)]
    context = {
        **export_context(network, plan, prefix),
        "arena_floats": plan.arena_floats, "arena_bytes": plan.arena_bytes,
        "weight_bytes": plan.weight_bytes, "weight_floats": plan.weight_floats,
        "tensor_bytes": plan.tensor_bytes, "folds": len(plan.folds),
        "arrays": _weight_arrays(network, params, buffers, plan.folds), "geometries": geometries,
        "winners": winners,
        "includes": sorted(headers), "kernel_files": kernel_files, "statements": statements,
    }
    return render_files(prefix, context, kernel_files)


def network_and_params(model) -> tuple[Network, dict[str, np.ndarray]]:
    """The Network and the {name: array} parameters of a cnnc Model; what both exports read."""
    network, params = getattr(model, "network", None), getattr(model, "params", None)
    if not isinstance(network, Network) or not isinstance(params, dict):
        raise ValueError(f"export needs a cnnc Model (from cnnc.load) with .network and .params; "
                         f"got {type(model).__name__}")
    return network, params


def write_export(files: dict[str, str], out_dir, program: str, force: bool = False) -> list[Path]:
    """Write an export's files into out_dir (created if missing; see fileio.write_owned_folder for what may be
    there already); `program` is what its Makefile builds. Returns the paths."""
    out = Path(os.fspath(out_dir))
    if out.exists() and not out.is_dir():
        raise CnncError(f"{out}: exists and is not a directory; the C export writes a directory of files")
    return write_owned_folder(out, files, products=(program, f"{program}_external"), force=force)


def export_c(model, out_dir, prefix: str | None = None, dtype: str = "float32", force: bool = False) -> list[Path]:
    """Write PREFIX.h, PREFIX.c, kernels/*.h, main.c and Makefile into out_dir (created if missing); returns
    the paths.

    model: a cnnc Model (its .network, .params and .buffers: load the trained weights into it first).
    prefix: the C identifier prefix, by default the model's name.
    force: write into a folder holding files an earlier export did not write (see fileio.write_owned_folder)."""
    if dtype not in DTYPES:
        raise CnncError(f"the standalone C export computes in float32 only; got --dtype {dtype}")
    network, params = network_and_params(model)
    checked_network(network)
    buffers = dict(getattr(model, "buffers", None) or {})
    files = render_c(network, params, prefix or network.name, buffers)
    return write_export(files, out_dir, prefix or network.name, force)


__all__ = ["memory_plan", "memory_report", "render_c", "export_c", "is_identifier", "checked_prefix", "c_float",
           "MemoryPlan", "Step", "Buffer", "plan_offsets", "export_refusal", "batchnorm_folds", "write_export",
           "render_files", "export_context", "step_comment", "layer_comment", "shape_text", "template_environment"]
