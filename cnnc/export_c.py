"""IR + weights -> standalone C99 for a microcontroller or any C program: `cnnc export --format c`.

    plan = memory_plan(network)                   # what the export will need, no weights required
    paths = export_c(model, "out/", prefix="lenet5")  # out/lenet5.h, lenet5.c, kernels/*.h, main.c, Makefile

The generated `PREFIX.c` depends on nothing beyond the C standard library and libm, never calls
malloc, keeps the weights in `static const` arrays (flash on a microcontroller) and does all its work
in one scratch arena of `PREFIX_ARENA_BYTES` bytes. Its API is exactly

    int PREFIX_predict(const float *input, float *output);   /* one sample, C, H, W order; 0 = success */

The arena plan. Layers fall into three groups:
  compute  (conv, pooling, global_avgpool, dense) read one buffer and write another;
  in place (relu, sigmoid, tanh, leaky_relu, softmax, and the activation fused into conv/dense)
           rewrite the buffer the previous compute layer wrote;
  alias    (flatten, dropout at inference) change nothing in memory: no code at all.
The first compute layer reads the caller's input, the last writes the caller's output, and each
tensor in between lives exactly from the layer that writes it to the layer that reads it. So at
most two intermediates are alive at once, and the arena is the largest sum of two adjacent
intermediates: the odd-numbered ones sit at the bottom of the arena, the even-numbered ones at the
top, and adjacent pairs never overlap. No out-of-place plan needs less.

The layers are computed by cnnc's kernel library (cnnc/kernels/*.h), the same C the C backend runs: the
export copies the plain C99 reference headers it needs (conv.h, pool.h, dense.h, activations.h and
common.h, never the vectorised ones) into kernels/ beside PREFIX.c, so the folder builds on its own, and
PREFIX.c calls each kernel with one sample and a `static const` geometry per layer.

What this module deliberately is not: an optimiser. The kernels it uses are the plain reference loops,
so that a reader can check them against the maths.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from .c_names import comment_name, is_c_symbol
from .diagnostics import CnncError
from .fileio import write_owned_folder
from .ir import ACTIVATIONS, AVGPOOL_KINDS, CONV_KINDS, MAXPOOL_KINDS, Layer, Network, chain_only_refusal
from .summary import human_bytes

FLOAT_BYTES = 4  # the exported C computes in float32
DTYPES = ("float32",)
COMPUTE_KINDS = CONV_KINDS + MAXPOOL_KINDS + AVGPOOL_KINDS + ("global_avgpool", "dense")
ALIAS_KINDS = ("flatten", "dropout")
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

    op: "compute" (the layer's own kind), "copy" (the input into a writable buffer), or an activation
        applied in place to `dst` (standalone, or fused into `layer` when layer.kind is conv/dense).
    index: the layer's 1-based position in the network (0 for the copy)."""

    op: str
    layer: Layer | None
    index: int
    src: Buffer
    dst: Buffer
    size: int  # elements written to dst


@dataclass(frozen=True)
class MemoryPlan:
    steps: tuple[Step, ...]
    arena_floats: int
    weight_floats: int
    input_floats: int
    output_floats: int

    @property
    def arena_bytes(self) -> int:
        return self.arena_floats * FLOAT_BYTES

    @property
    def weight_bytes(self) -> int:
        return self.weight_floats * FLOAT_BYTES


def _operations(network: Network) -> list[tuple[str, Layer | None, int]]:
    """(op, layer, 1-based layer index) per statement of predict(), in order; see Step.op."""
    ops: list[tuple[str, Layer | None, int]] = []
    for index, layer in enumerate(network.layers, 1):
        if layer.kind in COMPUTE_KINDS:
            ops.append(("compute", layer, index))
            if layer.activation:
                ops.append((layer.activation, layer, index))
        elif layer.kind in ACTIVATIONS:
            ops.append((layer.kind, layer, index))
        elif layer.kind not in ALIAS_KINDS:
            raise AssertionError(f"export_c: unhandled layer kind {layer.kind!r}")
    if not ops or ops[0][0] != "compute":  # the input is const: in-place work needs a copy of it first
        ops.insert(0, ("copy", None, 0))
    return ops


def _arena_floats(between: list[int]) -> int:
    """The arena for the tensors written between the input and the output, in order: each is alive
    only while it is written and while the next layer reads it, so the largest adjacent pair."""
    if not between:
        return 0
    return max([between[0]] + [a + b for a, b in zip(between, between[1:])])


def memory_plan(network: Network) -> MemoryPlan:
    """Every statement of the generated predict() with its buffers, and the bytes it all needs."""
    refusal = chain_only_refusal(network, "the standalone C export")
    if refusal:
        raise CnncError(f"model '{network.name}': {refusal}")
    input_floats = prod(network.input_shape)
    ops = _operations(network)
    sizes = [layer.out_size if layer else input_floats for op, layer, _ in ops if op in ("compute", "copy")]
    arena = _arena_floats(sizes[:-1])  # the last computed tensor goes to the caller's output
    steps, current, produced = [], Buffer("input"), 0
    for op, layer, index in ops:
        if op not in ("compute", "copy"):  # an activation, in place
            steps.append(Step(op, layer, index, current, current, layer.out_size))
            continue
        size = sizes[produced]
        produced += 1
        if produced == len(sizes):
            dst = Buffer("output")
        elif produced % 2 == 1:
            dst = Buffer("arena", 0)  # the 1st, 3rd, ... computed tensors at the bottom of the arena
        else:
            dst = Buffer("arena", arena - size)  # the 2nd, 4th, ... at the top
        steps.append(Step(op, layer, index, current, dst, size))
        current = dst
    return MemoryPlan(tuple(steps), arena, network.param_count, input_floats, prod(network.output_shape))


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


def c_float_lines(values: np.ndarray, indent: str = "    ") -> str:
    """The initializer of a float array, FLOATS_PER_LINE values a line."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    if not np.isfinite(flat).all():
        raise ValueError("cannot write non-finite weights as C constants")
    texts = [f"{v:.9g}" for v in flat.tolist()]
    texts = [(t if ("." in t or "e" in t) else t + ".0") + "f" for t in texts]
    return ",\n".join(indent + ", ".join(texts[i:i + FLOATS_PER_LINE]) for i in range(0, len(texts), FLOATS_PER_LINE))


# ---- rendering -----------------------------------------------------------------------------------------
def _environment():
    import jinja2

    from .resources import template_loader

    return jinja2.Environment(loader=template_loader("export"),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True, autoescape=False)


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _layer_comment(layer: Layer) -> str:
    """Every part is a checked name (cnnc.c_names), a number or one of cnnc's own words."""
    return (f"{comment_name(layer.name, 'layer name')}: {layer.kind} {_shape_text(layer.in_shape)} -> "
            f"{_shape_text(layer.out_shape)}")


def _weight_arrays(network: Network, params: dict[str, np.ndarray]) -> list[dict]:
    arrays = []
    for index, layer in enumerate(network.layers, 1):
        for spec in layer.params:
            role = spec.name.rsplit(".", 1)[1]  # "weight" or "bias"
            arrays.append({"ident": f"layer{index}_{role}", "size": spec.size, "shape": _shape_text(spec.shape),
                           "comment": f"{comment_name(layer.name, 'layer name')}.{role}",
                           "initializer": c_float_lines(params[spec.name])})
    return arrays


# The kernel header and geometry struct of each computing layer kind (kernels/*.h).
def _kernel(layer: Layer) -> tuple[str, str, list]:
    from .backends.c_codegen import conv_geometry, dense_geometry, global_avgpool_geometry, pool_geometry

    if layer.kind in CONV_KINDS:
        return "conv.h", "Conv2d", conv_geometry(layer)
    if layer.kind == "dense":
        return "dense.h", "Dense", dense_geometry(layer)
    if layer.kind == "global_avgpool":
        return "pool.h", "GlobalAvgPool", global_avgpool_geometry(layer)
    return "pool.h", "Pool2d", pool_geometry(layer)


def _statement(step: Step, geometries: list[dict], headers: set[str]) -> str:
    """The C statement of one step of predict(): a call of a kernel with one sample (N = 1)."""
    from .backends.c_codegen import c_initializer

    out, inp, layer = step.dst.c_expr(), step.src.c_expr(), step.layer
    if step.op == "copy":
        return f"memcpy({out}, {inp}, {step.size} * sizeof(float));"
    if step.op != "compute":  # an activation, in place
        headers.add("activations.h")
        if step.op == "leaky_relu":
            return f"leaky_relu_forward({out}, {out}, {c_float(layer.slope)}, {step.size});"
        if step.op == "softmax":
            return f"softmax_forward({out}, {out}, 1, {step.size});"
        return f"{step.op}_forward({out}, {out}, {step.size});"
    header, struct, geometry = _kernel(layer)
    headers.add(header)
    name = f"layer{step.index}"
    geometries.append({"struct": struct, "ident": name, "fields": c_initializer(geometry)})
    params = f"{name}_weight, " + (f"{name}_bias" if layer.bias else "NULL")
    if layer.kind in CONV_KINDS:
        return f"conv2d_forward({out}, {inp}, {params}, 1, {name});"
    if layer.kind == "dense":
        return f"dense_forward({out}, {inp}, {params}, 1, {name});"
    if layer.kind in MAXPOOL_KINDS:
        return f"maxpool2d_forward({out}, NULL, {inp}, 1, {name});"
    kind = "global_avgpool" if layer.kind == "global_avgpool" else "avgpool2d"
    return f"{kind}_forward({out}, {inp}, 1, {name});"


def _step_comment(step: Step) -> str:
    if step.op == "copy":
        return "the input is const: copy it to a writable buffer for the in-place layers"
    if step.op == "compute":
        return f"layer {step.index}, {_layer_comment(step.layer)}"
    if step.layer.kind in ACTIVATIONS:
        return f"layer {step.index}, {_layer_comment(step.layer)}, in place"
    return f"the activation of layer {step.index}, in place"


def render_c(network: Network, params: dict[str, np.ndarray], prefix: str) -> dict[str, str]:
    """{file name: text} of PREFIX.h, PREFIX.c, the kernel headers it includes (kernels/*.h), main.c and
    Makefile."""
    from ._version import __version__
    from .backends.c_codegen import header_closure
    from .resources import kernel_header_texts

    prefix = checked_prefix(prefix)
    plan = memory_plan(network)
    geometries: list[dict] = []
    statements, headers = [], set()
    for step in plan.steps:
        statements.append({"comment": _step_comment(step), "code": _statement(step, geometries, headers)})
    kernel_files = [f"kernels/{name}" for name in header_closure(headers)]
    names = {"prefix": prefix, "PREFIX": prefix.upper(), "version": __version__,
             "model": comment_name(network.name, "model name")}
    context = {
        **names,
        "input_shape": _shape_text(network.input_shape), "output_shape": _shape_text(network.output_shape),
        "input_size": plan.input_floats, "output_size": plan.output_floats,
        "arena_floats": plan.arena_floats, "arena_bytes": plan.arena_bytes,
        "weight_bytes": plan.weight_bytes, "weight_floats": plan.weight_floats,
        "layers": [f"{i:>3}  {_layer_comment(layer)}" + (f" + {layer.activation}" if layer.activation else "")
                   for i, layer in enumerate(network.layers, 1)],
        "arrays": _weight_arrays(network, params), "geometries": geometries,
        "includes": sorted(headers), "kernel_files": kernel_files, "statements": statements,
    }
    env = _environment()
    texts = kernel_header_texts()
    return {
        f"{prefix}.h": env.get_template("header.h.j2").render(context),
        f"{prefix}.c": env.get_template("source.c.j2").render(context),
        **{name: texts[name.split("/", 1)[1]] for name in kernel_files},
        "main.c": env.get_template("main.c.j2").render(context),
        "Makefile": env.get_template("Makefile.j2").render(context),
    }


def network_and_params(model) -> tuple[Network, dict[str, np.ndarray]]:
    """The Network and the {name: array} parameters of a cnnc Model; what both exports read."""
    network, params = getattr(model, "network", None), getattr(model, "params", None)
    if not isinstance(network, Network) or not isinstance(params, dict):
        raise ValueError(f"export needs a cnnc Model (from cnnc.load) with .network and .params; "
                         f"got {type(model).__name__}")
    return network, params


def export_c(model, out_dir, prefix: str | None = None, dtype: str = "float32", force: bool = False) -> list[Path]:
    """Write PREFIX.h, PREFIX.c, kernels/*.h, main.c and Makefile into out_dir (created if missing); returns
    the paths.

    model: a cnnc Model (its .network and .params: load the trained weights into it first).
    prefix: the C identifier prefix, by default the model's name.
    force: write into a folder holding files an earlier export did not write (see fileio.write_owned_folder)."""
    if dtype not in DTYPES:
        raise CnncError(f"the standalone C export computes in float32 only; got --dtype {dtype}")
    network, params = network_and_params(model)
    refusal = chain_only_refusal(network, "the standalone C export")
    if refusal:  # graphs and the layer kinds of issue #14 come with the C backend's support for them
        raise CnncError(f"model '{network.name}': {refusal}")
    files = render_c(network, params, prefix or network.name)
    out = Path(os.fspath(out_dir))
    if out.exists() and not out.is_dir():
        raise CnncError(f"{out}: exists and is not a directory; the C export writes a directory of files")
    program = prefix or network.name
    return write_owned_folder(out, files, products=(program, f"{program}_external"), force=force)


__all__ = ["memory_plan", "memory_report", "render_c", "export_c", "is_identifier", "checked_prefix", "c_float",
           "MemoryPlan", "Step", "Buffer"]
