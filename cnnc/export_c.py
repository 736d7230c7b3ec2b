"""IR + weights -> standalone C99 for a microcontroller or any C program: `cnnc export --format c`.

    plan = memory_plan(network)                   # what the export will need, no weights required
    paths = export_c(model, "out/", prefix="lenet5")  # out/lenet5.h, lenet5.c, main.c, Makefile

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

What this module deliberately is not: an optimiser. The C is straightforward loops in the order
stated at the top of the generated file, so that a reader can check it against the maths.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from .diagnostics import CnncError
from .fileio import atomic_write_text
from .ir import ACTIVATIONS, AVGPOOL_KINDS, CONV_KINDS, MAXPOOL_KINDS, Layer, Network, chain_only_refusal
from .summary import human_bytes

FLOAT_BYTES = 4  # the exported C computes in float32
DTYPES = ("float32",)
COMPUTE_KINDS = CONV_KINDS + MAXPOOL_KINDS + AVGPOOL_KINDS + ("global_avgpool", "dense")
ALIAS_KINDS = ("flatten", "dropout")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
C_KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern float for goto if inline int long
    register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while
    _Bool _Complex _Imaginary _Alignas _Alignof _Atomic _Generic _Noreturn _Static_assert _Thread_local
    bool true false alignas alignof static_assert thread_local typeof typeof_unqual constexpr nullptr
""".split())
FLOATS_PER_LINE = 8


# ---- identifiers -------------------------------------------------------------------------------------
def is_identifier(text: str) -> bool:
    """A C identifier that is not a keyword (C99 to C23) and not reserved for the implementation."""
    return (isinstance(text, str) and IDENTIFIER.match(text) is not None and text not in C_KEYWORDS
            and not text.startswith("__") and not re.match(r"_[A-Z]", text))


RESERVED_PREFIXES = ("main", "clean", "external")  # PREFIX.c would overwrite main.c; Makefile targets


def checked_prefix(prefix: str) -> str:
    if not is_identifier(prefix):
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


def _layer_label(layer: Layer) -> str:
    """The spec's layer name, for comments only, and only after it is checked to be a plain identifier."""
    return layer.name if is_identifier(layer.name) else "(unnamed)"


def _layer_comment(layer: Layer) -> str:
    """Every part is the checked name, a number or one of cnnc's own words."""
    return f"{_layer_label(layer)}: {layer.kind} {_shape_text(layer.in_shape)} -> {_shape_text(layer.out_shape)}"


def _geometry_2d(layer: Layer):
    """(kernel, stride, dilation, pad_before) as (H, W) pairs; 1-D layers run as 2-D of height 1."""
    g = (layer.kernel, layer.stride, layer.dilation or (1,) * layer.spatial_dims, layer.pad_before)
    if layer.spatial_dims == 1:
        return tuple((neutral, v[0]) for neutral, v in zip((1, 1, 1, 0), g))
    return g


def _hw(shape) -> tuple[int, int, int]:
    """(C, H, W) of a per-sample shape; (C, L) is (C, 1, L)."""
    return (shape[0], 1, shape[1]) if len(shape) == 2 else tuple(shape)


def _weight_arrays(network: Network, params: dict[str, np.ndarray]) -> list[dict]:
    arrays = []
    for index, layer in enumerate(network.layers, 1):
        for spec in layer.params:
            role = spec.name.rsplit(".", 1)[1]  # "weight" or "bias"
            arrays.append({"ident": f"layer{index}_{role}", "size": spec.size, "shape": _shape_text(spec.shape),
                           "comment": f"{_layer_label(layer)}.{role}",
                           "initializer": c_float_lines(params[spec.name])})
    return arrays


def _statement(step: Step, windows: list[dict]) -> tuple[str, str]:
    """(helper the statement calls, the C statement) for one step of predict()."""
    out, inp, layer = step.dst.c_expr(), step.src.c_expr(), step.layer
    if step.op == "copy":
        return "copy", f"memcpy({out}, {inp}, {step.size} * sizeof(float));"
    if step.op != "compute":
        if step.op == "leaky_relu":
            return "leaky_relu", f"leaky_relu_inplace({out}, {step.size}, {c_float(layer.slope)});"
        return step.op, f"{step.op}_inplace({out}, {step.size});"
    i = step.index
    weight = f"layer{i}_weight"
    bias = f"layer{i}_bias" if layer.bias else "NULL"
    if layer.kind == "dense":
        return "dense", f"dense_forward({out}, {inp}, {weight}, {bias}, {layer.in_shape[0]}, {layer.units});"
    if layer.kind == "global_avgpool":
        C, H, W = _hw(layer.in_shape)
        return "global_avgpool", f"global_avgpool_forward({out}, {inp}, {C}, {H * W});"
    (kh, kw), (sh, sw), (dh, dw), (pt, pl) = _geometry_2d(layer)
    C, H, W = _hw(layer.in_shape)
    F, OH, OW = _hw(layer.out_shape)
    window = f"layer{i}_window"
    windows.append({"ident": window, "fields": f"{kh}, {kw}, {sh}, {sw}, {dh}, {dw}, {pt}, {pl}"})
    if layer.kind in CONV_KINDS:
        return "conv", (f"conv2d_forward({out}, {inp}, {weight}, {bias},\n"
                        f"                   {C}, {H}, {W}, {F}, {OH}, {OW}, &{window});")
    helper = "maxpool" if layer.kind in MAXPOOL_KINDS else "avgpool"
    return helper, f"{helper}2d_forward({out}, {inp}, {C}, {H}, {W}, {OH}, {OW}, &{window});"


def _step_comment(step: Step) -> str:
    if step.op == "copy":
        return "the input is const: copy it to a writable buffer for the in-place layers"
    if step.op == "compute":
        return f"layer {step.index}, {_layer_comment(step.layer)}"
    if step.layer.kind in ACTIVATIONS:
        return f"layer {step.index}, {_layer_comment(step.layer)}, in place"
    return f"the activation of layer {step.index}, in place"


def render_c(network: Network, params: dict[str, np.ndarray], prefix: str) -> dict[str, str]:
    """{file name: text} of PREFIX.h, PREFIX.c, main.c and Makefile."""
    from ._version import __version__

    prefix = checked_prefix(prefix)
    plan = memory_plan(network)
    windows: list[dict] = []
    statements, helpers = [], set()
    for step in plan.steps:
        helper, code = _statement(step, windows)
        helpers.add(helper)
        statements.append({"comment": _step_comment(step), "code": code})
    names = {"prefix": prefix, "PREFIX": prefix.upper(), "version": __version__,
             "model": network.name if is_identifier(network.name) else "(unnamed)"}
    context = {
        **names,
        "input_shape": _shape_text(network.input_shape), "output_shape": _shape_text(network.output_shape),
        "input_size": plan.input_floats, "output_size": plan.output_floats,
        "arena_floats": plan.arena_floats, "arena_bytes": plan.arena_bytes,
        "weight_bytes": plan.weight_bytes, "weight_floats": plan.weight_floats,
        "layers": [f"{i:>3}  {_layer_comment(layer)}" + (f" + {layer.activation}" if layer.activation else "")
                   for i, layer in enumerate(network.layers, 1)],
        "arrays": _weight_arrays(network, params), "windows": windows,
        "helpers": helpers, "statements": statements,
    }
    env = _environment()
    return {
        f"{prefix}.h": env.get_template("header.h.j2").render(context),
        f"{prefix}.c": env.get_template("source.c.j2").render(context),
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


def export_c(model, out_dir, prefix: str | None = None, dtype: str = "float32") -> list[Path]:
    """Write PREFIX.h, PREFIX.c, main.c and Makefile into out_dir (created if missing); returns the paths.

    model: a cnnc Model (its .network and .params: load the trained weights into it first).
    prefix: the C identifier prefix, by default the model's name."""
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
    paths = []
    for name, text in files.items():
        atomic_write_text(out / name, text)
        paths.append(out / name)
    return paths


__all__ = ["memory_plan", "memory_report", "render_c", "export_c", "is_identifier", "checked_prefix", "c_float",
           "MemoryPlan", "Step", "Buffer"]
