"""A QuantizedModel -> int8 standalone C99: `cnnc export --format c --quantize int8`.

    q = cnnc.quantize.calibrate(model, x_calibration)
    paths = export_int8_c(q, "out/", prefix="lenet5")   # out/lenet5.h, lenet5.c, kernels/, main.c, Makefile

The same folder as the float export (export_c.py), built the same way: the float export's memory plan
(one byte per element instead of four), its step comments, prefix checks, example main.c and Makefile,
and one kernel call per layer, here into kernels/int8.h (graphs: int8_graph.h; issue 15's kinds:
int8_extra.h). The API is

    int PREFIX_predict(const float *input, float *output);     /* quantises, runs, dequantises */
    int PREFIX_predict_q(const int8_t *input, int8_t *output); /* int8 in and out: PREFIX_INPUT_SCALE, ... */

Nothing from the spec reaches the C but checked names in comments and numbers.
"""
from __future__ import annotations

import os
from math import prod
from pathlib import Path

import numpy as np

from .c_names import c_int, comment_name
from .diagnostics import CnncError
from .export_c import (FLOAT_BYTES, MemoryPlan, Step, _kernel, c_double, c_float, checked_prefix, export_context,
                       memory_plan, render_files, shape_text, step_comment, write_export)
from .ir import Network
from .quantize import (ADD_LEFT_SHIFT, INT8_MAX, INT8_MIN, QuantizedModel, QuantStep, int8_batchnorm_folds,
                       int8_flash_bytes)
from .summary import human_bytes

INTS_PER_LINE = 16
EXTRA_OPS = ("conv_transpose", "global_maxpool", "channel_shuffle", "lrn", "log_softmax")  # kernels/int8_extra.h


def int8_memory_plan(network: Network) -> MemoryPlan:
    """The float export's memory plan with the int8 export's batch norm folds (into transposed convolutions and
    dense layers too) and no float scratch for an unfolded batch norm; one byte per element."""
    return memory_plan(network, folds=int8_batchnorm_folds(network), batchnorm_scratch=False)


def int8_arena_bytes(network: Network) -> tuple[int, int]:
    """(bytes predict_q needs, bytes predict needs: those plus the quantised input and output)."""
    plan = int8_memory_plan(network)
    return plan.arena_floats, plan.arena_floats + plan.input_floats + plan.output_floats


def memory_report_int8(network: Network, prefix: str | None = None) -> str:
    """Flash and RAM of the float32 and the int8 export side by side (what `cnnc export --quantize int8` prints)."""
    plan = memory_plan(network)
    flash = int8_flash_bytes(network)
    arena_q, arena = int8_arena_bytes(network)
    p = (prefix or network.name).upper()
    rows = [("flash: weights and biases", plan.weight_bytes, flash["weights"]),
            ("flash: multipliers, shifts, tables", 0, flash["constants"]),
            ("RAM: scratch arena", plan.arena_bytes, arena),
            ("caller's input buffer", plan.input_floats * FLOAT_BYTES, plan.input_floats),
            ("caller's output buffer", plan.output_floats * FLOAT_BYTES, plan.output_floats)]
    lines = [f"model {network.name}: standalone C export, float32 vs int8 (bytes)",
             f"  {'':36}{'float32':>12}{'int8':>12}{'int8/float':>12}"]
    for name, float_bytes, int8_bytes in rows:
        ratio = f"{int8_bytes / float_bytes:.2f}x" if float_bytes else "-"
        lines.append(f"  {name:36}{float_bytes:>12,}{int8_bytes:>12,}{ratio:>12}")
    lines.append(f"  int8: {human_bytes(flash['weights'] + flash['constants'])} flash in all, "
                 f"{p}_ARENA_BYTES = {arena} ({arena_q} for {p.lower()}_predict_q alone)")
    return "\n".join(lines)


# ---- numbers as C -------------------------------------------------------------------------------------
def c_int_lines(values: np.ndarray, indent: str = "    ") -> str:
    """The initializer of an integer array, INTS_PER_LINE values a line."""
    texts = [str(int(v)) for v in np.asarray(values).ravel().tolist()]
    texts = [t if t != str(-(2**31)) else "INT32_MIN" for t in texts]  # -2147483648 is not an int literal
    return ",\n".join(indent + ", ".join(texts[i:i + INTS_PER_LINE]) for i in range(0, len(texts), INTS_PER_LINE))


def _array(ident: str, ctype: str, values: np.ndarray, comment: str, shape) -> dict:
    return {"ident": ident, "ctype": ctype, "size": int(np.asarray(values).size), "shape": shape_text(shape),
            "comment": comment, "initializer": c_int_lines(values)}


def _encoding(q) -> str:
    return f"s = {float(q.scale):.6g}, zp = {int(q.zero_point)}"


def _encoded_fields(pairs) -> str:
    """A designated initializer of checked ints: zero points in [-128, 127], sizes in [0, 2^31)."""
    return "{" + ", ".join(f".{field} = {c_int(int(value), field, INT8_MIN, INT8_MAX)}" if field.endswith("zero_point")
                           else f".{field} = {c_int(int(value), field)}" for field, value in pairs) + "}"


def _requant_fields(q: QuantStep) -> str:
    """The Int8Requant initializer of a step: the zero points and the clamp, each checked to be int8."""
    requant = [("in_zero_point", q.inp.zero_point), ("out_zero_point", q.out.zero_point),
               ("act_min", q.act_min), ("act_max", q.act_max)]
    fields = [f".{field} = {c_int(int(value), field, INT8_MIN, INT8_MAX)}" for field, value in requant]
    return "{" + ", ".join(fields) + "}"


# ---- the statements ------------------------------------------------------------------------------------
def _statement(step: Step, q: QuantStep, name: str, arrays: list, geometries: list) -> str:
    """The C statement of one step of run(), with the constants it needs appended to arrays and geometries."""
    from .backends.c_codegen import c_initializer, conv_geometry, dense_geometry, global_avgpool_geometry, pool_geometry

    out, inp, layer = step.dst.c_expr(), step.src.c_expr(), step.layer
    label = comment_name(layer.name, "layer name")
    if q.op == "none":
        return ("/* done by the conv/dense/batch norm layer's requantisation: its output is clamped at the zero point "
                "(real 0) */")
    if q.op == "clamp" and q.act_max < INT8_MAX:  # relu6
        return f"int8_clamp_range_forward({out}, {out}, {int(q.act_min)}, {int(q.act_max)}, {step.size});"
    if q.op == "clamp":
        return f"int8_clamp_forward({out}, {out}, {int(q.act_min)}, {step.size});"
    if q.op == "lookup":
        arrays.append(_array(f"{name}_table", "int8_t", q.table, f"{label}: {step.op} lookup, out[i] = table[in[i] + 128]",
                             (256,)))
        return f"int8_lookup_forward({out}, {out}, {name}_table, {step.size});"
    if q.op == "softmax":
        arrays.append(_array(f"{name}_exp", "int32_t", q.table, f"{label}: softmax, round(2^16 exp(-d * s_in))", (256,)))
        return f"int8_softmax_forward({out}, {out}, {name}_exp, {step.size});"
    if q.op == "log_softmax":
        arrays.append(_array(f"{name}_exp", "int32_t", q.table, f"{label}: log_softmax, round(2^16 exp(-d * s_in))",
                             (256,)))
        fields = ", ".join([f".step = {c_int(int(q.constants['step']), 'step')}",
                            f".multiplier = {c_int(int(q.constants['multiplier']), 'multiplier')}",
                            f".shift = {c_int(int(q.constants['shift']), 'shift', -31, 30)}",
                            f".out_zero_point = {c_int(int(q.out.zero_point), 'out_zero_point', INT8_MIN, INT8_MAX)}",
                            f".n = {c_int(step.size, 'n', 1)}"])
        geometries.append({"struct": "Int8LogSoftmax", "ident": name, "fields": "{" + fields + "}"})
        return f"int8_log_softmax_forward({out}, {out}, {name}_exp, {name});"
    if q.op in ("add", "concat"):
        arrays.append(_array(f"{name}_multiplier", "int32_t", q.multiplier, f"{label}: rescaling multipliers",
                             q.multiplier.shape))
        arrays.append(_array(f"{name}_shift", "int32_t", q.shift, f"{label}: rescaling shifts", q.shift.shape))
        sources = [b.c_expr() for b in step.srcs]
        zero_points = [int(operand.zero_point) for operand in q.operands]
        if q.op == "add":  # the operands (data and zero point) as a local array of run(): arena addresses
            fields = [("out_zero_point", int(q.out.zero_point)),
                      ("left_shift", c_int(int(q.constants["left_shift"]), "left_shift", 0, ADD_LEFT_SHIFT)),
                      ("count", len(sources)), ("n", step.size)]
            geometries.append({"struct": "Int8Add", "ident": name, "fields": _encoded_fields(fields)})
            operands = ", ".join(f"{{{source}, {c_int(zp, 'zero_point', INT8_MIN, INT8_MAX)}}}"
                                 for source, zp in zip(sources, zero_points))
            return "\n    ".join(["{", f"    const Int8AddOperand {name}_operands[{len(sources)}] = {{{operands}}};",
                                   f"    int8_add_forward({out}, {name}_operands, {name}_multiplier, {name}_shift, "
                                   f"{name});", "}"])
        lines, offset = [], 0
        for k, (source, shape) in enumerate(zip(sources, layer.in_shapes)):
            size = prod(shape)
            fields = [("OUT", step.size), ("OFFSET", offset), ("SIZE", size), ("in_zero_point", zero_points[k]),
                      ("out_zero_point", int(q.out.zero_point))]
            geometries.append({"struct": "Int8Concat", "ident": f"{name}_in{k}", "fields": _encoded_fields(fields)})
            lines.append(f"int8_concat_forward({out}, {source}, {name}_multiplier[{k}], {name}_shift[{k}], {name}_in{k});")
            offset += size
        return "\n    ".join(lines)
    if q.op in ("conv", "conv_transpose", "dense"):
        arrays.append(_array(f"{name}_weight", "int8_t", q.weight, f"{label}.weight, int8", q.weight.shape))
        if q.bias is not None:
            arrays.append(_array(f"{name}_bias", "int32_t", q.bias, f"{label}.bias, int32", q.bias.shape))
        arrays.append(_array(f"{name}_multiplier", "int32_t", q.multiplier, f"{label}: requantisation multipliers",
                             q.multiplier.shape))
        arrays.append(_array(f"{name}_shift", "int32_t", q.shift, f"{label}: requantisation shifts", q.shift.shape))
        struct, geometry = ("Conv2d", conv_geometry(layer)) if q.op == "conv" else ("Dense", dense_geometry(layer))
        if q.op == "conv_transpose":  # groups included; a 1-D one is a 2-D one of height 1
            struct, geometry = _kernel(layer)[1:]
        elif layer.groups != 1:  # one group's geometry: C/G channels, F/G filters
            geometry = [(field, value // layer.groups if field in ("C", "F") else value) for field, value in geometry]
        geometries.append({"struct": struct, "ident": name, "fields": c_initializer(geometry)})
        geometries.append({"struct": "Int8Requant", "ident": f"{name}_requant", "fields": _requant_fields(q)})
        bias = f"{name}_bias" if q.bias is not None else "NULL"
        if q.op == "conv_transpose":
            return (f"int8_conv_transpose2d_forward({out}, {inp}, {name}_weight, {bias}, {name}_multiplier, "
                    f"{name}_shift, {name}, {name}_requant);")
        if layer.groups != 1:
            return (f"int8_conv2d_grouped_forward({out}, {inp}, {name}_weight, {bias}, {name}_multiplier, "
                    f"{name}_shift, {name}, {c_int(layer.groups, 'groups', 1)}, {name}_requant);")
        return (f"int8_{'conv2d' if q.op == 'conv' else 'dense'}_forward({out}, {inp}, {name}_weight, {bias}, "
                f"{name}_multiplier, {name}_shift, {name}, {name}_requant);")
    if q.op == "affine":  # an unfolded batch norm: (C, S) with S the values per channel
        arrays.append(_array(f"{name}_multiplier", "int32_t", q.multiplier,
                             f"{label}: multipliers, a_c s_in / s_out * 2^8", q.multiplier.shape))
        arrays.append(_array(f"{name}_shift", "int32_t", q.shift, f"{label}: shifts", q.shift.shape))
        arrays.append(_array(f"{name}_offset", "int32_t", q.bias, f"{label}: offsets, b_c / s_out * 2^8", q.bias.shape))
        channels = layer.in_shape[0]
        geometries.append({"struct": "Int8Affine", "ident": name,
                           "fields": _encoded_fields([("C", channels), ("S", step.size // channels)])})
        geometries.append({"struct": "Int8Requant", "ident": f"{name}_requant", "fields": _requant_fields(q)})
        return (f"int8_affine_forward({out}, {inp}, {name}_multiplier, {name}_shift, {name}_offset, {name}, "
                f"{name}_requant);")
    if q.op == "global_avgpool":
        geometries.append({"struct": "GlobalAvgPool", "ident": name,
                           "fields": c_initializer(global_avgpool_geometry(layer))})
        return f"int8_global_avgpool_forward({out}, {inp}, {name}, {int(q.inp.zero_point)});"
    clipped_avgpool = q.op == "avgpool" and (layer.ceil or not layer.count_pad)  # a divisor per window
    if q.op in ("global_maxpool", "channel_shuffle", "lrn") or clipped_avgpool:
        struct, geometry = _kernel(layer)[1:]  # the float export's struct: GlobalMaxPool, ChannelShuffle, Lrn,
        geometries.append({"struct": struct, "ident": name, "fields": c_initializer(geometry)})  # AvgPool2dClipped
        if q.op == "lrn":
            constants = ", ".join(f".{field} = {c_double(q.constants[field])}"
                                  for field in ("k", "scaled_alpha", "beta", "rescale"))
            zero_points = [("in_zero_point", q.inp.zero_point), ("out_zero_point", q.out.zero_point)]
            fields = ", ".join(f".{field} = {c_int(int(value), field, INT8_MIN, INT8_MAX)}"
                               for field, value in zero_points)
            geometries.append({"struct": "Int8Lrn", "ident": f"{name}_q",
                               "fields": "{" + constants + ", " + fields + "}"})
            return f"int8_lrn_forward({out}, {inp}, {name}, {name}_q);"
        if q.op == "avgpool":
            return f"int8_avgpool2d_clipped_forward({out}, {inp}, {name}, {int(q.inp.zero_point)});"
        return f"int8_{q.op}_forward({out}, {inp}, {name});"
    geometries.append({"struct": "Pool2d", "ident": name, "fields": c_initializer(pool_geometry(layer))})
    if q.op == "maxpool":
        return f"int8_maxpool2d_forward({out}, {inp}, {name});"
    return f"int8_avgpool2d_forward({out}, {inp}, {name}, {int(q.inp.zero_point)});"


def render_int8_c(qmodel: QuantizedModel, prefix: str) -> dict[str, str]:
    """{file name: text} of PREFIX.h, PREFIX.c, kernels/int8.h and common.h, main.c and Makefile."""
    from .backends.c_codegen import header_closure

    network = qmodel.network
    prefix = checked_prefix(prefix)
    plan = int8_memory_plan(network)
    arena_q, arena = int8_arena_bytes(network)
    arrays, geometries, statements = [], [], []
    for step in plan.steps:
        if step.op == "copy":
            code = f"memcpy({step.dst.c_expr()}, {step.src.c_expr()}, {step.size});"
            statements.append({"comment": step_comment(step, plan.folds), "code": code})
            continue
        q = qmodel.step((step.op, step.index))
        code = _statement(step, q, f"layer{step.index}" + ("" if step.op == "compute" else f"_{step.op}"),
                          arrays, geometries)
        statements.append({"comment": f"{step_comment(step, plan.folds)}; {_encoding(q.inp)} -> {_encoding(q.out)}",
                           "code": code})
    flash = int8_flash_bytes(network)
    stored = sum(int(np.asarray(q_array).nbytes) for q_array in _constant_arrays(qmodel))
    if stored != flash["weights"] + flash["constants"]:  # the report and the C must not disagree
        raise AssertionError(f"export_int8: {stored} bytes of constants, {flash} reported")
    graph_kernels = any(q.op in ("add", "concat") or q.op == "clamp" and q.act_max < INT8_MAX
                        or q.op == "conv" and q.layer.groups != 1 for q in qmodel.steps)
    extra_kernels = any(q.op in EXTRA_OPS or q.op == "avgpool" and (q.layer.ceil or not q.layer.count_pad)
                        for q in qmodel.steps)
    includes = ["int8.h"] + (["int8_graph.h"] if graph_kernels else []) + (["int8_extra.h"] if extra_kernels else [])
    kernel_files = [f"kernels/{name}" for name in header_closure(includes)]
    context = {
        **export_context(network, plan, prefix), "int8": True,
        "arena_bytes": arena, "arena_q_bytes": arena_q, "uses_arena": arena_q > 0,
        "weight_bytes": flash["weights"], "constant_bytes": flash["constants"],
        "input_scale": c_float(qmodel.input.scale), "input_zero_point": int(qmodel.input.zero_point),
        "input_inverse_scale": c_float(qmodel.input.inverse_scale32()),
        "output_scale": c_float(qmodel.output.scale), "output_zero_point": int(qmodel.output.zero_point),
        "calibration": f"{int(qmodel.calibration.get('samples', 0))} samples, "
                       f"{'min/max' if 'percentile' not in str(qmodel.calibration.get('method')) else 'percentile'} ranges",
        "arrays": arrays, "geometries": geometries, "statements": statements, "kernel_files": kernel_files,
        "includes": includes,
    }
    return render_files(prefix, context, kernel_files)


def _constant_arrays(qmodel: QuantizedModel):
    for q in qmodel.steps:
        for array in (q.weight, q.bias, q.multiplier, q.shift, q.table):
            if array is not None:
                yield array


def export_int8_c(qmodel: QuantizedModel, out_dir, prefix: str | None = None, force: bool = False) -> list[Path]:
    """Write the int8 export of qmodel into out_dir (see export_c.export_c for the folder rules)."""
    if not isinstance(qmodel, QuantizedModel):
        raise ValueError(f"export_int8_c needs a cnnc.quantize.QuantizedModel; got {type(qmodel).__name__}")
    program = prefix or qmodel.network.name
    return write_export(render_int8_c(qmodel, program), out_dir, program, force)


__all__ = ["export_int8_c", "render_int8_c", "memory_report_int8", "int8_arena_bytes", "int8_memory_plan"]
