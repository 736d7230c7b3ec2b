"""An ONNX model -> a readable .cnn file and its weights: `cnnc import model.onnx -o model.cnn`.

    network, weights = import_onnx("model.onnx", "model.cnn")     # also writes model.npz

The graph may branch and merge. Its nodes are walked in order (ONNX lists them topologically), keeping
for every tensor what it is in cnnc terms (`Tensor`: the layer whose output it is, its shape); a layer
that does not read the previous statement's output gets `from=`, merges name their operands. Nodes
whose inputs are all constants are evaluated at import time (onnx's reference implementation), and
`Shape` gives the batch size as a marker that shape-moving nodes may carry into a Reshape target, so
weight subgraphs, computed pads and x.view(x.size(0), -1) fold away. The operators:

    Conv                  -> conv1d / conv2d (groups=); a Relu, Sigmoid, Tanh, LeakyRelu, Clip(0, 6),
                             x*Sigmoid(x), HardSwish... right after becomes its activation= when nothing
                             else reads the convolution's output
    ConvTranspose         -> conv_transpose1d / conv_transpose2d (pads begin >= end: padding=begin and the
                             difference as more output_padding; output_shape and SAME_* turned into pads)
    MaxPool, AveragePool  -> maxpool*/avgpool* (ceil_mode=1 -> ceil=true where it changes the size,
                             count_include_pad=0 at a padded border -> count_pad=false); a Pad of zeros
                             before a Conv or AveragePool adds to its padding
    GlobalAveragePool, ReduceMean over the spatial axes -> global_avgpool when flattened after, else an
                             average pooling over the whole input ((C, 1, 1), as ONNX); GlobalMaxPool alike
    LRN (odd size)        -> lrn (PyTorch's LocalResponseNorm; an even size puts the window elsewhere)
    Reshape (N, g, C/g, ...) -> Transpose(perm=[0, 2, 1, ...]) -> Reshape back -> channel_shuffle(groups=g)
    Gemm, MatMul (+ Add)  -> dense (an Add of a per-unit constant becomes the bias; a conv's likewise)
    BatchNormalization    -> batchnorm with its running statistics (a per-channel Mul/Add after it folds in)
    Add, Sum, Concat      -> add, concat
    Flatten, Reshape      -> flatten (only to (batch, everything else))
    Relu, Sigmoid, Tanh, LeakyRelu, Softmax, LogSoftmax, Clip(0, 6), Mul(x, Sigmoid(x)), HardSwish,
    Mul(x, HardSigmoid(x)), Elu(alpha 1), Selu, HardSigmoid(1/6, 1/2) -> the activation layers
    Dropout               -> dropout(rate=...);  Identity -> nothing

Padding: ONNX gives a begin and an end per axis. Equal per axis -> padding=P or (PH, PW); otherwise,
for a stride-1 convolution, `same` when it is exactly cnnc's split (the odd pixel at the end), and
anything else ((before, after), ...) per axis. Every refusal names the node, its
operator and the reason. Weights keep their layouts (cnnc's are PyTorch's, the same as ONNX's Conv and
Gemm(transB=1)); MatMul's and Gemm(transB=0)'s matrices are transposed, Gemm's alpha and beta folded in.
Before anything is written, the imported model is compared with onnxruntime (compare_with_onnxruntime).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import numpy as np

from .diagnostics import CnncError
from .export_onnx import require_onnx
from .fileio import atomic_path, atomic_write_text, check_distinct, describe_contents
from .ir import LAYER_KINDS, Network
from .shapes import KEYWORDS
from .model import weight_mismatches

SUPPORTED = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Gemm", "MatMul",
             "Add", "Sum", "Concat", "BatchNormalization", "LRN", "Pad", "ReduceMean", "Flatten", "Reshape",
             "Transpose", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Mul", "Tanh", "LeakyRelu", "Elu",
             "Selu", "Softmax", "LogSoftmax", "Dropout", "Identity")
MERGES = ("Add", "Sum", "Concat", "Mul")  # read several computed tensors (Add and Mul: or one and a constant)
OPERATOR_HINTS: dict[str, str] = {}  # why a common unsupported operator appears, and how to avoid it
# PyTorch's SELU constants (the language's selu), which are also ONNX's defaults
SELU_ALPHA, SELU_GAMMA = 1.6732632423543772, 1.0507009873554805
# Shape computations fold at import time: Shape gives the batch size as BATCH, which only these operators
# may carry on (into a Reshape's target, where it means "the batch"); arithmetic on it is refused.
BATCH = -(2 ** 62) + 12345
MAX_FOLDED = 2 ** 31 - 1
SHAPE_MOVING = ("Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Identity", "Reshape", "Flatten")
RESERVED = set(LAYER_KINDS) | set(KEYWORDS)
AUTO_NAME = re.compile(r"(%s)_[0-9]+\Z" % "|".join(LAYER_KINDS))  # names cnnc gives unnamed layers
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass
class Statement:
    """One layer line of the .cnn file being written."""

    kind: str
    name: str | None
    args: dict[str, str] = field(default_factory=dict)  # key -> the value as written
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # "weight"/"bias" -> array
    out_shape: tuple[int, ...] = ()
    output: str = ""  # the ONNX tensor this layer's output stands for
    from_matmul: bool = False  # a dense layer whose bias may still come from an Add
    layer_name: str = ""  # its name in the model: `name`, or the automatic one cnnc gives (relu_2)
    inputs: list[str] = field(default_factory=list)  # the cnnc names of what it reads

    def text(self, previous: str) -> str:
        """The statement; `previous` is the name of the statement before it (or the input's)."""
        head = self.kind + (f" {self.name}" if self.name else "")
        args = [f"{k}={v}" for k, v in self.args.items()]
        if self.kind in ("add", "concat"):
            args = [*self.inputs, *args]
        elif self.inputs and self.inputs[0] != previous:
            args.append(f"from={self.inputs[0]}")
        return head + (f"({', '.join(args)})" if args else "")


def _real(value: float) -> str:
    """The shortest text that reads back as the same float32, always with a '.' or an exponent."""
    text = str(np.float32(value))
    return text if any(c in text for c in ".e") else text + ".0"


def _window(values) -> str:
    """[3] or [3, 3] -> "3", [3, 5] -> "(3, 5)": the shortest way the language says it."""
    values = [int(v) for v in values]
    return str(values[0]) if len(set(values)) == 1 else f"({values[0]}, {values[1]})"


def _shown(value, limit: int = 60) -> str:
    """An attribute's value for a message, shortened: a crafted file may hold a million-entry list."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = repr(value) if isinstance(value, (str, int, float, list)) else f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _comment_safe(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", str(text))[:120]


class _Refusal(CnncError):
    pass


@dataclass
class Tensor:
    """What an ONNX tensor of the graph is in cnnc terms.

    layer: the cnnc name (the layer's, automatic ones included, or the input's) whose output it is
    shape: its cnnc per-sample shape; unit_axes: trailing size-1 axes ONNX has and cnnc dropped (after
    GlobalAveragePool, whose Flatten or Reshape is then cnnc's no-op)
    pad: (before, after) per spatial axis of a Pad node still to be folded into the Conv or pooling that
    reads it (shape is then the unpadded one)
    shuffle: the middle of a channel shuffle, ("split", groups) after its first Reshape to (N, g, C/g, ...),
    ("swapped", groups) after its Transpose; only the pattern's next node may read it (shape: the input's)"""

    layer: str
    shape: tuple[int, ...]
    unit_axes: int = 0
    pad: tuple[list[int], list[int]] | None = None
    shuffle: tuple[str, int] | None = None


class Importer:
    """Walks the ONNX graph node by node (ONNX lists them in a topological order), keeping the cnnc meaning of
    every tensor computed so far and folding every node whose inputs are all constants."""

    def __init__(self, onnx, proto, source: str):
        self.onnx, self.proto, self.graph, self.source = onnx, proto, proto.graph, source
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.constants = {t.name: self._tensor(t, f"the initializer '{_comment_safe(t.name)}'")
                          for t in self.graph.initializer}
        self.readers: dict[str, list] = {}  # ONNX tensor -> the nodes reading it
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.readers.setdefault(name, []).append(node)
        self.outputs = [v.name for v in self.graph.output]
        self.statements: list[Statement] = []
        self.by_name: dict[str, Statement] = {}
        self.used_names: set[str] = set()
        self.counts: dict[str, int] = {}
        self.kind_counts: dict[str, int] = {}  # for cnnc's automatic names: relu_1, relu_2...
        self.gates: dict[str, str] = {}  # Sigmoid/HardSigmoid output -> "silu"/"hardswish" (read by its Mul)
        self.input_name, self.shape, self.batch = self._graph_input()
        self.input_shape = self.shape
        self.tensors: dict[str, Tensor] = {self.graph_input_tensor: Tensor(self.input_name, self.shape)}
        self.x = self.tensors[self.graph_input_tensor]  # the data input of the node being imported
        self.auto_pad = "NOTSET"
        self.unit_axes = 0
        self.output_unit_axes = 0

    # ---- errors ------------------------------------------------------------------------------------
    def refuse(self, node, message: str):
        label = f"'{node.name}'" if node.name else f"#{list(self.graph.node).index(node) + 1}"
        raise _Refusal(f"{self.source}: node {label} ({node.op_type}): {message}")

    def fail(self, message: str):
        raise _Refusal(f"{self.source}: {message}")

    def _tensor(self, tensor, what: str, node=None) -> np.ndarray:
        """A TensorProto as an array; one that cannot be read (declared size and data disagree, an unknown
        element type) is refused, naming it."""
        try:
            return self.onnx.numpy_helper.to_array(tensor)
        except Exception as e:  # onnx raises ValueError, TypeError, KeyError... for malformed tensors
            message = f"{what} cannot be read as an array ({type(e).__name__}: {_shown(str(e), 120)})"
            if node is not None:
                self.refuse(node, message)
            self.fail(message)

    # ---- the graph's input and output -------------------------------------------------------------------
    def _graph_input(self):
        inputs = [v for v in self.graph.input if v.name not in self.constants]
        if len(inputs) != 1:
            self.fail(f"cnnc imports a graph with exactly one input; this one has {len(inputs)} "
                      f"({', '.join(repr(v.name) for v in inputs)})")
        value = inputs[0]
        self.graph_input_tensor = value.name
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type not in (self.onnx.TensorProto.FLOAT, self.onnx.TensorProto.DOUBLE):
            self.fail(f"the input '{value.name}' is not a float tensor (ONNX element type {tensor_type.elem_type})")
        dims = list(tensor_type.shape.dim)
        if not 2 <= len(dims) <= 4 or any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims[1:]):
            shown = ", ".join(d.dim_param or str(d.dim_value) for d in dims)
            self.fail(f"the input '{value.name}' must be (batch, D), (batch, C, L) or (batch, C, H, W) with known "
                      f"sizes after the batch; it is ({shown})")
        shape = tuple(int(d.dim_value) for d in dims[1:])
        batch = int(dims[0].dim_value) if dims[0].HasField("dim_value") else None
        default = {1: "features", 2: "signal", 3: "image"}[len(shape)]
        name = value.name if IDENTIFIER.match(value.name) and value.name not in RESERVED else default
        self.used_names.add(name)
        return name, shape, batch

    # ---- names ---------------------------------------------------------------------------------------
    def layer_name(self, node, fallback: str | None) -> str | None:
        """A name for the layer from the ONNX node's: "c1" from "c1" or from PyTorch's "/c1/Conv".
        Parameterised layers always get one (their weights are keyed by it): `fallback` numbered, like
        conv1, when the node's name will not do; other layers stay unnamed then."""
        parts = [p for p in re.split(r"[/:]", node.name or "") if p]
        if parts and re.fullmatch(re.escape(node.op_type) + r"(_[0-9]+)?", parts[-1]):  # PyTorch's "/module/Op_2"
            parts.pop()
        candidates = [parts[-1] if parts else ""]
        if fallback is not None:  # also the module's path, when its last name is taken: "layer1_0_conv1"
            dotted = [k for k in range(len(parts)) if "." in parts[k]]
            start = dotted[-1] if dotted else max(0, len(parts) - 2)
            candidates.append("_".join(parts[start:]))
            candidates = [re.sub(r"[^A-Za-z0-9_]", "_", c).strip("_") for c in candidates]
        for candidate in candidates:
            if self._usable(candidate):
                self.used_names.add(candidate)
                return candidate
        if fallback is None:
            return None
        while True:
            self.counts[fallback] = self.counts.get(fallback, 0) + 1
            name = f"{fallback}{self.counts[fallback]}"
            if self._usable(name):
                self.used_names.add(name)
                return name

    def _usable(self, name: str) -> bool:
        return (bool(IDENTIFIER.match(name)) and name not in RESERVED and not AUTO_NAME.match(name)
                and name not in self.used_names and name.lower() not in ("true", "false", "same", "valid", "none"))

    # ---- helpers -------------------------------------------------------------------------------------
    def attributes(self, node) -> dict:
        values = {}
        for a in node.attribute:
            try:
                values[a.name] = self.onnx.helper.get_attribute_value(a)
            except Exception as e:  # an attribute of an unknown or undefined type
                self.refuse(node, f"attribute {_comment_safe(a.name)} cannot be read ({type(e).__name__})")
        return values

    # Attribute readers: the value as the operator needs it, or a refusal naming the node, the operator and
    # the attribute. A crafted file may give any attribute any type and any value.
    def ints(self, node, attrs: dict, name: str, count: int | None, default, minimum: int | None = None) -> list[int]:
        """A list of `count` (None: any number of) integers, each at least `minimum`; `default` when absent."""
        if name not in attrs:
            return list(default)
        value = attrs[name]
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            self.refuse(node, f"attribute {name} must be a list of integers; got {_shown(value)}")
        if count is not None and len(value) != count:
            self.refuse(node, f"attribute {name}={_shown(value)} has {len(value)} values; expected {count} "
                              f"(one per spatial axis{', begin then end' if name == 'pads' else ''})")
        if minimum is not None and any(v < minimum for v in value):
            self.refuse(node, f"attribute {name}={_shown(value)} must hold values of at least {minimum}")
        return list(value)

    def integer(self, node, attrs: dict, name: str, default: int, allowed=None) -> int:
        """One integer (one of `allowed`, when given); `default` when absent."""
        value = attrs.get(name, default)
        if not isinstance(value, int):
            self.refuse(node, f"attribute {name} must be an integer; got {_shown(value)}")
        if allowed is not None and value not in allowed:
            self.refuse(node, f"attribute {name}={_shown(value)} must be one of {', '.join(map(str, allowed))}")
        return value

    def real(self, node, attrs: dict, name: str, default: float) -> float:
        """One finite number; `default` when absent."""
        value = attrs.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            self.refuse(node, f"attribute {name} must be a finite number; got {_shown(value)}")
        return float(value)

    def scalar(self, node, index: int, what: str) -> float | None:
        """The node's index-th input as one finite number (a constant of one element); None if absent."""
        value = self.constant(node, index, what)
        if value is None:
            return None
        if value.size != 1 or value.dtype.kind not in "biuf" or not np.isfinite(value).all():
            self.refuse(node, f"its {what} '{node.input[index]}' must be one finite number; it is a "
                              f"{value.dtype.name} array of shape {tuple(value.shape)}")
        return float(value.reshape(-1)[0])

    def matrix(self, node, index: int, what: str, ndim: tuple[int, ...]) -> np.ndarray:
        """The node's index-th input: a constant numeric array with one of the dimensions `ndim` and no empty axis."""
        value = self.constant(node, index, what)
        if value is None:
            self.refuse(node, f"it has no {what} input (input {index + 1}); cnnc imports layers with constant weights")
        if value.dtype.kind not in "iuf":
            self.refuse(node, f"its {what} '{node.input[index]}' holds {value.dtype.name} values, not numbers")
        if value.ndim not in ndim or 0 in value.shape:
            self.refuse(node, f"its {what} '{node.input[index]}' has shape {tuple(value.shape)}; expected "
                              f"{' or '.join(str(d) for d in ndim)} dimensions, none of them empty")
        return value

    def constant(self, node, index: int, what: str) -> np.ndarray | None:
        """The node's index-th input as an array; it must be a constant (an initializer or a Constant node)."""
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.constants:
            self.refuse(node, f"its {what} '{name}' must be a constant (an initializer), not computed in the graph")
        return self.constants[name]

    def emit(self, node, kind: str, name: str | None, args: dict, out_shape, weights=None, inputs=None,
             output=None, **extra) -> Statement:
        """A new statement reading `inputs` (cnnc names; default: the node's data input) and standing for the
        ONNX tensor `output` (default: the node's first output)."""
        self.kind_counts[kind] = self.kind_counts.get(kind, 0) + 1
        layer_name = name or f"{kind}_{self.kind_counts[kind]}"
        output = output or node.output[0]
        statement = Statement(kind, name, args, weights or {}, tuple(out_shape), output, layer_name=layer_name,
                              inputs=list(inputs or [self.x.layer]), **extra)
        self.statements.append(statement)
        self.by_name[layer_name] = statement
        self.shape = tuple(out_shape)
        self.tensors[output] = Tensor(layer_name, tuple(out_shape))
        return statement

    # ---- the walk ------------------------------------------------------------------------------------
    def run(self) -> tuple[str, list[Statement]]:
        if len(self.outputs) != 1:
            self.fail(f"cnnc imports a graph with exactly one output; this one has {len(self.outputs)}")
        for node in self.graph.node:
            if node.domain not in ("", "ai.onnx"):
                self.refuse(node, f"operators of the domain '{node.domain}' are not supported")
            if not node.output or not node.output[0]:
                self.refuse(node, "it has no output")
            if node.op_type == "Constant":
                self._constant_node(node)
                continue
            inputs = [name for name in node.input if name]
            if inputs and all(name in self.constants for name in inputs):
                self._fold(node)  # weights and shapes computed from constants: evaluated now
                continue
            if node.op_type == "Shape":
                self._shape(node)
                continue
            if node.op_type not in SUPPORTED:
                hint = f"; {OPERATOR_HINTS[node.op_type]}" if node.op_type in OPERATOR_HINTS else ""
                self.refuse(node, f"the operator {node.op_type} is not supported by cnnc import (supported: "
                                  f"{', '.join(SUPPORTED)}){hint}")
            for name in inputs:
                if name not in self.constants and name not in self.tensors:
                    self.refuse(node, f"it reads '{_comment_safe(name)}', which no earlier node computes (the graph is "
                                      f"not in topological order, or the tensor does not exist)")
            for extra in node.output[1:]:
                if extra and (self.readers.get(extra) or extra in self.outputs):
                    self.refuse(node, f"its extra output '{extra}' is used; cnnc layers have one output")
            if node.op_type not in MERGES:
                if not node.input or node.input[0] not in self.tensors:
                    self.refuse(node, "its first input must be computed in the graph (from the model's input); cnnc "
                                      "imports layers whose other inputs are constants")
                self.x = self.tensors[node.input[0]]
                self.shape, self.unit_axes = self.x.shape, self.x.unit_axes
                if self.x.pad is not None and node.op_type not in ("Conv", "AveragePool", "MaxPool", "Pad"):
                    self.refuse(node, "it reads the output of a Pad node; cnnc imports Pad only right before a Conv "
                                      "or pooling node, into whose padding it folds")
                if self.x.shuffle is not None and node.op_type not in ("Transpose", "Reshape"):
                    self.refuse(node, "it reads the middle of a channel shuffle (the Reshape to (N, groups, C/groups, "
                                      "...) and its Transpose); cnnc imports the pattern Reshape -> Transpose -> "
                                      "Reshape back only as a whole, each read by the next alone")
            result = getattr(self, "_" + node.op_type)(node)
            if node.output[0] not in self.tensors:
                if result is None:
                    raise AssertionError(f"import_onnx: the {node.op_type} handler left its output undefined")
                self.tensors[node.output[0]] = result
        if not self.statements:
            self.fail("the graph has no layer cnnc can write (only Identity, Flatten or Reshape of the input)")
        output = self.outputs[0]
        if output in self.constants:
            self.fail(f"the graph's output '{_comment_safe(output)}' is a constant; it does not depend on the input")
        last = self.statements[-1]
        end = self.tensors.get(output)
        if end is None or end.layer != last.layer_name:
            self.fail(f"the graph's output '{_comment_safe(output)}' is not computed by its last layer "
                      f"('{_comment_safe(last.output)}'); cnnc's model outputs its last statement's result")
        self.output_unit_axes = end.unit_axes  # (N, C, 1, 1) after global pooling and softmax: written as (N, C)
        if end.pad is not None or end.shuffle is not None:
            self.fail(f"the graph's output '{_comment_safe(output)}' is (N, "
                      f"{', '.join(map(str, end.shape + (1,) * end.unit_axes))}), which cnnc cannot write as a model "
                      f"output")
        self.shape = end.shape
        return self.input_name, self.statements

    def _constant_node(self, node) -> None:
        attributes = self.attributes(node)
        simple = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
        for key, dtype in simple.items():  # opset 12's shorthands
            if key in attributes and len(attributes) == 1:
                value = attributes[key]
                if not isinstance(value, (int, float, list)) or isinstance(value, list) and len(value) > 2 ** 20:
                    self.refuse(node, f"attribute {key} must be a number or a list of numbers; got {_shown(value)}")
                try:
                    self.constants[node.output[0]] = np.array(value, dtype)
                except (TypeError, ValueError, OverflowError):
                    self.refuse(node, f"attribute {key} must be a number or a list of numbers; got {_shown(value)}")
                return
        if "value" not in attributes:
            self.refuse(node, f"only Constant nodes holding a tensor ('value') are supported; got {sorted(attributes)}")
        if not isinstance(attributes["value"], self.onnx.TensorProto):
            self.refuse(node, f"attribute value must be a tensor; got {_shown(attributes['value'])}")
        self.constants[node.output[0]] = self._tensor(attributes["value"], "attribute value", node)

    def _shape(self, node) -> None:
        """Shape of a computed tensor: its sizes, the batch as BATCH (folded on only by shape-moving nodes)."""
        tensor = self.tensors.get(node.input[0]) if node.input else None
        if tensor is None:
            self.refuse(node, "it reads no tensor of the graph")
        if tensor.pad is not None:
            self.refuse(node, "it reads the output of a Pad node")
        attrs = self.attributes(node)
        full = np.array([BATCH, *tensor.shape, *(1,) * tensor.unit_axes], np.int64)
        start, end = self.integer(node, attrs, "start", 0), attrs.get("end")
        end = self.integer(node, attrs, "end", 0) if end is not None else None
        self.constants[node.output[0]] = full[start:end]

    def _fold(self, node) -> None:
        """Evaluate a node whose inputs are all constants with onnx's reference implementation."""
        values = {name: self.constants[name] for name in node.input if name}
        if any(v.dtype.kind in "iu" and (v == BATCH).any() for v in values.values()) and \
                node.op_type not in SHAPE_MOVING:
            self.refuse(node, f"it computes with the batch size (from a Shape node); cnnc folds only "
                              f"{', '.join(SHAPE_MOVING)} of a shape")
        if node.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                            "Bernoulli"):
            self.refuse(node, "it draws random numbers; cnnc imports a deterministic graph")
        elements = self._folded_size(node, values)
        if elements > MAX_FOLDED:
            self.refuse(node, f"it would make a constant of {elements:,} elements; cnnc folds constants of at most "
                              f"{MAX_FOLDED:,} (2^31 - 1, the language's limit for one tensor)")
        helper = self.onnx.helper
        try:
            from onnx.reference import ReferenceEvaluator

            inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
                      for name, value in values.items()]
            outputs = [helper.make_value_info(name, self.onnx.TypeProto()) for name in node.output if name]
            graph = helper.make_graph([node], "fold", inputs, outputs)
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
            results = ReferenceEvaluator(model).run(None, values)
        except Exception as e:  # an operator the reference implementation lacks, or inputs it rejects
            self.refuse(node, f"cnnc computes constant nodes at import time, and this one failed "
                              f"({type(e).__name__}: {_shown(str(e), 160)})")
        for name, value in zip([n for n in node.output if n], results):
            self.constants[name] = np.asarray(value)

    @staticmethod
    def _folded_size(node, values: dict) -> int:
        """An upper bound of the elements a constant node makes, for the operators that make more than they
        read (the others make at most what they read, which is in the file already)."""
        arrays = [values[name] if name in values else np.zeros(0) for name in node.input]

        def product(array) -> int:
            total = 1
            for v in np.asarray(array).reshape(-1)[:64].tolist():
                total *= max(int(v), 1) if isinstance(v, (int, float)) and np.isfinite(v) else 1
            return total

        largest = max([a.size for a in arrays] + [1])
        if node.op_type == "ConstantOfShape" and arrays:
            return product(arrays[0])
        if node.op_type == "Expand" and len(arrays) > 1:
            return max(largest, product(arrays[1]) * max(arrays[0].size, 1))
        if node.op_type == "Tile" and len(arrays) > 1:
            return arrays[0].size * product(arrays[1])
        if node.op_type == "Range" and len(arrays) == 3 and all(a.size == 1 for a in arrays):
            start, limit, delta = (float(a.reshape(-1)[0]) for a in arrays)
            if delta == 0 or not all(np.isfinite([start, limit, delta])):
                return MAX_FOLDED + 1
            return int(max(0.0, np.ceil((limit - start) / delta)))
        if node.op_type in ("MatMul", "Gemm", "Einsum", "Resize", "Upsample", "OneHot", "EyeLike", "Pad"):
            return largest * max([a.size for a in arrays] + [1])  # generous; these are rare in weight subgraphs
        return largest

    def tensor(self, node, index: int) -> Tensor:
        """The node's index-th input, a tensor computed in the graph (not a constant)."""
        name = node.input[index] if index < len(node.input) else ""
        if name not in self.tensors:
            self.refuse(node, f"its input {index + 1} '{_comment_safe(name)}' must be computed in the graph")
        return self.tensors[name]

    # ---- geometry ------------------------------------------------------------------------------------
    def _pads(self, node, attrs, kernel, stride, dilation) -> tuple[list[int], list[int]]:
        """(pad_before, pad_after) per spatial axis, from pads or auto_pad."""
        dims = len(kernel)
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        if not isinstance(auto_pad, (bytes, str)):
            self.refuse(node, f"attribute auto_pad must be a string; got {_shown(auto_pad)}")
        auto_pad = auto_pad.decode("utf-8", "replace") if isinstance(auto_pad, bytes) else auto_pad
        self.auto_pad = auto_pad  # for the refusal of padding the language cannot write
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            before, after = [], []
            for size, k, s, d in zip(self.shape[1:], kernel, stride, dilation):
                total = max(0, (-(-size // s) - 1) * s + d * (k - 1) + 1 - size)
                small, large = total // 2, total - total // 2
                before.append(small if auto_pad == "SAME_UPPER" else large)
                after.append(large if auto_pad == "SAME_UPPER" else small)
            return before, after
        if auto_pad == "VALID":
            return [0] * dims, [0] * dims
        if auto_pad != "NOTSET":
            self.refuse(node, f"attribute auto_pad={_shown(auto_pad)} is not an ONNX value cnnc knows")
        pads = self.ints(node, attrs, "pads", 2 * dims, [0] * (2 * dims), minimum=0)
        return pads[:dims], pads[dims:]

    def _padding_arg(self, node, before, after, kernel, stride, dilation, conv: bool) -> str | None:
        """The padding= text, None for no padding; refuses what the language cannot write."""
        if before == after:
            return None if not any(before) else _window(before)
        same_before = [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
        same_after = [d * (k - 1) - b for k, d, b in zip(kernel, dilation, same_before)]
        if conv and all(s == 1 for s in stride) and (before, after) == (same_before, same_after):
            return "same"
        # asymmetric: (before, after) per axis, `padding=(1, 2)` in 1-D, `padding=((1, 2), (0, 1))` in 2-D
        pairs = [f"({b}, {a})" for b, a in zip(before, after)]
        return pairs[0] if len(pairs) == 1 else f"({', '.join(pairs)})"

    def _output_size(self, node, attrs, before, after, kernel, stride, dilation) -> tuple[list[int], bool]:
        """The output size per axis, and whether ceil_mode=1 changed it (then the layer gets ceil=true: the
        division rounds up, less a last window that would start in the right padding, PyTorch's rule)."""
        out, ceil_changes = [], False
        ceil = self.integer(node, attrs, "ceil_mode", 0, allowed=(0, 1))
        for size, b, a, k, s, d in zip(self.shape[1:], before, after, kernel, stride, dilation):
            span = d * (k - 1) + 1
            if span > size + b + a + (s - 1 if ceil else 0):
                self.refuse(node, f"its window {k} is larger than the padded input {size + b + a}")
            n = (size + b + a - span) // s + 1
            if ceil:
                up = -(-(size + b + a - span) // s) + 1
                if (up - 1) * s >= size + b:
                    up -= 1
                ceil_changes |= up != n
                n = up
            out.append(n)
        return out, ceil_changes

    def _spatial_input(self, node, dims_from) -> int:
        if self.unit_axes or len(self.shape) not in (2, 3):
            self.refuse(node, f"it needs a (batch, C, L) or (batch, C, H, W) input; the previous layer outputs "
                              f"{self._onnx_shape()}")
        if dims_from is not None and dims_from != len(self.shape) - 1:
            self.refuse(node, f"its window has {dims_from} axes but its input has {len(self.shape) - 1} spatial axes")
        return len(self.shape) - 1

    def _onnx_shape(self) -> str:
        return "(N, " + ", ".join(str(s) for s in self.shape + (1,) * self.unit_axes) + ")"

    # ---- the operators --------------------------------------------------------------------------------
    def _with_pad(self, node, before, after) -> tuple[list[int], list[int]]:
        """The node's own padding plus that of a Pad node before it."""
        if self.x.pad is None:
            return before, after
        return [a + b for a, b in zip(before, self.x.pad[0])], [a + b for a, b in zip(after, self.x.pad[1])]

    def _Conv(self, node) -> None:
        attrs = self.attributes(node)
        weight = self.matrix(node, 1, "weight", (3, 4))
        bias = self.constant(node, 2, "bias")
        dims = self._spatial_input(node, weight.ndim - 2)
        group = self.integer(node, attrs, "group", 1)
        filters, channels = weight.shape[:2]
        if group < 1 or self.shape[0] % group or filters % group:
            self.refuse(node, f"group={group} does not divide its {self.shape[0]} input channels and {filters} filters")
        if channels * group != self.shape[0]:
            self.refuse(node, f"its weight {tuple(weight.shape)} expects {channels * group} input channels "
                              f"({channels} per group, group={group}); the input has {self.shape[0]}")
        kernel = self.ints(node, attrs, "kernel_shape", None, weight.shape[2:])
        if kernel != list(weight.shape[2:]):
            self.refuse(node, f"attribute kernel_shape={_shown(kernel)} does not match the weight's "
                              f"{list(weight.shape[2:])}")
        stride = self.ints(node, attrs, "strides", dims, [1] * dims, minimum=1)
        dilation = self.ints(node, attrs, "dilations", dims, [1] * dims, minimum=1)
        before, after = self._with_pad(node, *self._pads(node, attrs, kernel, stride, dilation))
        padding = self._padding_arg(node, before, after, kernel, stride, dilation, conv=True)
        out, _ = self._output_size(node, attrs, before, after, kernel, stride, dilation)
        args = {"filters": str(filters), "kernel": _window(kernel)}
        if any(s != 1 for s in stride):
            args["stride"] = _window(stride)
        if padding:
            args["padding"] = padding
        if any(d != 1 for d in dilation):
            args["dilation"] = _window(dilation)
        if group != 1:
            args["groups"] = str(group)
        weights = self._weight_and_bias(node, args, weight, bias, filters)
        self.emit(node, f"conv{dims}d", self.layer_name(node, "conv"), args, (filters, *out), weights)

    def _weight_and_bias(self, node, args: dict, weight, bias, filters: int) -> dict:
        """A convolution's weights; with no bias, `bias=false` goes into its arguments."""
        weights = {"weight": weight}
        if bias is None:
            args["bias"] = "false"
            return weights
        weights["bias"] = bias.reshape(-1)
        if weights["bias"].shape != (filters,) or bias.dtype.kind not in "iuf":
            self.refuse(node, f"its bias is a {bias.dtype.name} array of shape {tuple(bias.shape)}; expected "
                              f"({filters},) numbers")
        return weights

    def _pool(self, node, kind: str) -> None:
        attrs = self.attributes(node)
        if "kernel_shape" not in attrs:
            self.refuse(node, "it has no kernel_shape")
        kernel = self.ints(node, attrs, "kernel_shape", None, (), minimum=1)
        dims = self._spatial_input(node, len(kernel))
        stride = self.ints(node, attrs, "strides", dims, [1] * dims, minimum=1)
        dilation = self.ints(node, attrs, "dilations", dims, [1] * dims, minimum=1)
        if any(d != 1 for d in dilation):
            self.refuse(node, f"dilated pooling (dilations={_shown(dilation)}) is not supported")
        self.integer(node, attrs, "storage_order", 0, allowed=(0,))
        own_before, own_after = self._pads(node, attrs, kernel, stride, [1] * dims)
        count_include_pad = self.integer(node, attrs, "count_include_pad", 0, allowed=(0, 1))
        count_pad = not (kind == "avgpool" and any(own_before + own_after) and not count_include_pad)
        if not count_pad and self.x.pad is not None:
            self.refuse(node, "it averages only the real inputs at its own padded border (count_include_pad=0) "
                              "but reads a Pad node's zeros, which count; cnnc's average pooling counts all of its "
                              "padding or none of it")
        if kind == "maxpool" and self.x.pad is not None:
            self.refuse(node, "it reads the output of a Pad node, whose zeros can win a max; cnnc's max pooling pads "
                              "with minus infinity (give the padding to the MaxPool node itself)")
        before, after = self._with_pad(node, own_before, own_after)
        if any(p > k // 2 for p, k in zip(before + after, kernel + kernel)):
            self.refuse(node, f"its padding (begin {before}, end {after}) is more than half the window {kernel}")
        padding = self._padding_arg(node, before, after, kernel, stride, [1] * dims, conv=False)
        out, ceil = self._output_size(node, attrs, before, after, kernel, stride, [1] * dims)
        args = {"size": _window(kernel)}
        if stride != kernel:  # cnnc's pooling stride defaults to the window size
            args["stride"] = _window(stride)
        if padding:
            args["padding"] = padding
        if ceil:
            args["ceil"] = "true"
        if not count_pad:
            args["count_pad"] = "false"
        self.emit(node, f"{kind}{dims}d", self.layer_name(node, None), args, (self.shape[0], *out))

    def _MaxPool(self, node) -> None:
        self._pool(node, "maxpool")

    def _AveragePool(self, node) -> None:
        self._pool(node, "avgpool")

    def _global_pool(self, node, kind: str) -> None:
        dims = self._spatial_input(node, None)
        readers = self.readers.get(node.output[0], [])
        flattened = readers and node.output[0] not in self.outputs and all(
            r.op_type in ("Flatten", "Reshape", "Softmax", "LogSoftmax") for r in readers)
        if flattened:
            self.emit(node, f"global_{kind}", self.layer_name(node, None), {}, (self.shape[0],))
            self.tensors[node.output[0]].unit_axes = dims  # ONNX keeps (N, C, 1, 1): the Flatten after is a no-op
            return
        # (N, C, 1, 1) is read as it is: a pooling window over the whole input gives exactly that
        self.emit(node, f"{kind}{dims}d", self.layer_name(node, None), {"size": _window(self.shape[1:])},
                  (self.shape[0], *(1,) * dims))

    def _GlobalAveragePool(self, node) -> None:
        self._global_pool(node, "avgpool")

    def _GlobalMaxPool(self, node) -> None:
        self._global_pool(node, "maxpool")

    def _ReduceMean(self, node) -> None:
        """The mean over every spatial axis (x.mean((2, 3))): global average pooling."""
        attrs = self.attributes(node)
        dims = self._spatial_input(node, None)
        axes = self.constant(node, 1, "axes") if self.opset >= 18 else None
        axes = [int(a) for a in axes] if axes is not None else self.ints(node, attrs, "axes", None, [])
        rank = 1 + len(self.shape)
        if sorted(a % rank for a in axes) != list(range(2, rank)):
            self.refuse(node, f"it averages over the axes {axes}; cnnc imports ReduceMean over every spatial axis "
                              f"({list(range(2, rank))}) as global_avgpool")
        if self.integer(node, attrs, "keepdims", 1, allowed=(0, 1)):
            self._global_pool(node, "avgpool")
            return
        self.emit(node, "global_avgpool", self.layer_name(node, None), {}, (self.shape[0],))
        del dims

    def _to_flat(self, node) -> Tensor:
        if len(self.shape) == 1:  # already flat for cnnc (unit axes after global pooling or not): the same tensor
            return Tensor(self.x.layer, self.shape)
        self.emit(node, "flatten", self.layer_name(node, None), {}, (prod(self.shape),))

    def _Flatten(self, node):
        axis = self.integer(node, self.attributes(node), "axis", 1)
        rank = 1 + len(self.shape) + self.unit_axes
        if axis not in (1, 1 - rank):
            self.refuse(node, f"Flatten(axis={axis}) would not keep the batch axis alone; cnnc flattens with axis=1")
        return self._to_flat(node)

    def _Reshape(self, node):
        target = self.constant(node, 1, "target shape")
        if target is None:
            self.refuse(node, "it has no target shape")
        if target.dtype.kind not in "iu" or target.ndim != 1:
            self.refuse(node, f"its target shape must be a list of integers; it is a {target.dtype.name} array of "
                              f"shape {tuple(target.shape)}")
        ints = [int(t) for t in target]
        if len(self.shape) == 2 and len(ints) == 4 and not self.unit_axes and self._batch_entry(ints[0]) and \
                ints[1:] in ([*self.shape, 1], [-1, self.shape[1], 1], [self.shape[0], -1, 1]):
            return Tensor(self.x.layer, self.shape, 1)  # (N, C, L) -> (N, C, L, 1): a trailing unit axis (for LRN)
        if len(self.shape) == 2 and self.unit_axes == 1 and len(ints) == 3 and self._batch_entry(ints[0]) and \
                ints[1:] in ([*self.shape], [-1, self.shape[1]], [self.shape[0], -1]):
            return Tensor(self.x.layer, self.shape, 0)  # and back
        if self.x.shuffle is not None or (len(target) == len(self.shape) + 2 and len(self.shape) in (2, 3)
                                          and not self.unit_axes):
            return self._shuffle_reshape(node, [int(t) for t in target])
        target = [int(t) for t in target[:3]]  # more than two entries is refused below whatever they are
        size = prod(self.shape)
        batch_ok = target[:1] in ([0], [-1], [BATCH]) or (self.batch is not None and target[:1] == [self.batch])
        if len(target) != 2 or not batch_ok or target[1] not in (size, -1) or target[1] == -1 == target[0]:
            shown = ["N" if t == BATCH else t for t in target]
            self.refuse(node, f"it reshapes to {shown}; cnnc imports only a reshape to (batch, {size}) such as "
                              f"[-1, {size}], [0, -1] or x.view(x.size(0), -1)")
        if self.integer(node, self.attributes(node), "allowzero", 0, allowed=(0, 1)) and 0 in target:
            self.refuse(node, "allowzero=1 with a 0 in the target shape makes an empty tensor")
        return self._to_flat(node)

    def _batch_entry(self, value: int) -> bool:
        """Whether a Reshape target's first entry keeps the batch: 0, -1, the batch from a Shape node, or the
        graph's fixed batch size."""
        return value in (0, -1, BATCH) or (self.batch is not None and value == self.batch)

    def _shuffle_reshape(self, node, target: list[int]):
        """ShuffleNet's channel shuffle, Reshape (N, C, *S) -> (N, g, C/g, *S), Transpose(perm=[0, 2, 1, ...]),
        Reshape back to (N, C, *S): the first and last Reshape (the Transpose is _Transpose)."""
        shown = ["N" if t == BATCH else t for t in target]
        channels, spatial = self.shape[0], list(self.shape[1:])
        if self.x.shuffle is not None:  # the last Reshape of the pattern: back to (N, C, *S)
            stage, groups = self.x.shuffle
            rest = target[1:]
            if stage != "swapped" or not self._batch_entry(target[0]) or len(target) != 2 + len(spatial) or \
                    rest not in ([channels, *spatial], [-1, *spatial]) or (target[0] == -1 and rest[0] == -1):
                what = ("the Transpose of a channel shuffle" if stage == "swapped" else
                        "a Reshape of a channel shuffle, before its Transpose")
                self.refuse(node, f"it reshapes {what} to {shown}; a channel shuffle (Reshape -> Transpose -> "
                                  f"Reshape) ends with a Reshape back to (N, {', '.join(map(str, self.shape))})")
            if self.integer(node, self.attributes(node), "allowzero", 0, allowed=(0, 1)) and 0 in target:
                self.refuse(node, "allowzero=1 with a 0 in the target shape makes an empty tensor")
            self.emit(node, "channel_shuffle", self.layer_name(node, None), {"groups": str(groups)}, self.shape)
            return None
        groups = target[1]
        if not self._batch_entry(target[0]) or target[3:] != spatial or groups <= 0 or channels % groups or \
                target[2] not in (channels // groups, -1):
            self.refuse(node, f"it reshapes {self._onnx_shape()} to {shown}; cnnc imports a reshape to "
                              f"{len(target)} axes only as the start of a channel shuffle, (N, groups, C/groups, "
                              f"{', '.join(map(str, spatial))}) with groups dividing the {channels} channels")
        if self.integer(node, self.attributes(node), "allowzero", 0, allowed=(0, 1)) and 0 in target:
            self.refuse(node, "allowzero=1 with a 0 in the target shape makes an empty tensor")
        readers = self.readers.get(node.output[0], [])
        if len(readers) != 1 or readers[0].op_type != "Transpose" or node.output[0] in self.outputs:
            self.refuse(node, f"it reshapes {self._onnx_shape()} to {shown} (a channel shuffle's first step), but "
                              f"its output is not read by exactly one Transpose; cnnc imports the pattern Reshape "
                              f"-> Transpose -> Reshape back as channel_shuffle")
        return Tensor(self.x.layer, self.shape, 0, shuffle=("split", groups))

    def _Transpose(self, node):
        if self.x.shuffle is None or self.x.shuffle[0] != "split":
            self.refuse(node, f"it transposes {self._onnx_shape()}; cnnc layers keep the (N, C, H, W) layout, and "
                              f"import Transpose only inside a channel shuffle (Reshape to (N, groups, C/groups, "
                              f"...) -> Transpose(perm=[0, 2, 1, ...]) -> Reshape back)")
        rank = 3 + len(self.shape) - 1
        expected = [0, 2, 1, *range(3, rank)]
        perm = self.ints(node, self.attributes(node), "perm", None, list(reversed(range(rank))))
        if perm != expected:
            self.refuse(node, f"perm={_shown(perm)} is not a channel shuffle's {expected} (swap the groups and the "
                              f"channels per group)")
        readers = self.readers.get(node.output[0], [])
        if len(readers) != 1 or readers[0].op_type != "Reshape" or node.output[0] in self.outputs:
            self.refuse(node, "its output is not read by exactly one Reshape back to (N, C, ...); cnnc imports the "
                              "pattern Reshape -> Transpose -> Reshape back as channel_shuffle")
        return Tensor(self.x.layer, self.shape, 0, shuffle=("swapped", self.x.shuffle[1]))

    def _dense_input(self, node) -> int:
        if self.unit_axes or len(self.shape) != 1:
            self.refuse(node, f"it needs a flat (batch, D) input; its input is {self._onnx_shape()} "
                              f"(add a Flatten before it)")
        return self.shape[0]

    def _Gemm(self, node) -> None:
        attrs = self.attributes(node)
        inputs = self._dense_input(node)
        if self.integer(node, attrs, "transA", 0, allowed=(0, 1)):
            self.refuse(node, "transA=1 transposes the batch; cnnc's dense layer reads (batch, D)")
        trans_b = self.integer(node, attrs, "transB", 0, allowed=(0, 1))
        alpha, beta = self.real(node, attrs, "alpha", 1.0), self.real(node, attrs, "beta", 1.0)
        matrix = self.matrix(node, 1, "weight", (2,))
        weight = matrix if trans_b else matrix.T  # -> (units, inputs)
        if weight.shape[1] != inputs:
            self.refuse(node, f"its weight {tuple(matrix.shape)} (transB={trans_b}) does not take {inputs} inputs")
        units = weight.shape[0]
        weights = {"weight": weight * np.asarray(alpha, weight.dtype)}
        bias = self.constant(node, 2, "bias")
        if bias is not None:
            if bias.dtype.kind not in "iuf" or not self._per_channel(bias.shape, (units,)):
                self.refuse(node, f"its bias (a {bias.dtype.name} array of shape {tuple(bias.shape)}) is not one "
                                  f"number per output ({units}) the same for every sample")
            bias = np.broadcast_to(bias.reshape(-1), (units,)) * np.asarray(beta, bias.dtype)
            weights["bias"] = np.ascontiguousarray(bias)
        args = {"units": str(units)} if bias is not None else {"units": str(units), "bias": "false"}
        self.emit(node, "dense", self.layer_name(node, "fc"), args, (units,), weights)

    def _MatMul(self, node) -> None:
        if len(node.input) > 1 and node.input[1] in self.tensors:
            self.refuse(node, "it multiplies two computed tensors; cnnc imports MatMul by a constant weight only")
        inputs = self._dense_input(node)
        matrix = self.matrix(node, 1, "weight", (2,))
        if matrix.shape[0] != inputs:
            self.refuse(node, f"its weight {tuple(matrix.shape)} is not ({inputs}, units)")
        units = matrix.shape[1]
        self.emit(node, "dense", self.layer_name(node, "fc"), {"units": str(units), "bias": "false"}, (units,),
                  {"weight": np.ascontiguousarray(matrix.T)}, from_matmul=True)

    @staticmethod
    def _per_channel(shape, tensor_shape) -> bool:
        """Whether a constant of `shape` broadcasts against (N, *tensor_shape) as one value per channel (or one
        value): 1 on the batch axis and every axis after the channel's, the channel count or 1 on the channel's."""
        full = (1, *tensor_shape)
        if len(shape) > len(full):
            return False
        padded = (1,) * (len(full) - len(shape)) + tuple(shape)
        return padded[0] == 1 and padded[1] in (1, full[1]) and all(s == 1 for s in padded[2:])

    def _direct_producer(self, node, index: int, readers: int,
                         kinds=("conv1d", "conv2d", "dense", "conv_transpose1d", "conv_transpose2d")
                         ) -> Statement | None:
        """The statement of one of `kinds` whose own output is the node's index-th input, when that output is read
        by `readers` nodes only and is not a graph output: an activation, a bias or a scale may go into it."""
        name = node.input[index]
        tensor = self.tensors.get(name)
        statement = self.by_name.get(tensor.layer) if tensor else None
        if (statement is None or statement.output != name or statement.kind not in kinds
                or len(self.readers.get(name, [])) != readers or name in self.outputs):
            return None
        return statement

    def _merge_inputs(self, node, what: str) -> list[Tensor]:
        tensors = []
        for index, name in enumerate(node.input):
            if not name:
                continue
            if name not in self.tensors:
                self.refuse(node, f"its input {index + 1} '{_comment_safe(name)}' is a constant; cnnc's {what} "
                                  f"merges tensors computed from the input")
            tensor = self.tensors[name]
            if tensor.pad is not None:
                self.refuse(node, "it reads the output of a Pad node; cnnc imports Pad only right before a Conv or "
                                  "pooling node")
            tensors.append(tensor)
        return tensors

    def _add(self, node, tensors: list[Tensor]) -> None:
        shapes = {(t.shape, t.unit_axes) for t in tensors}
        if len(shapes) != 1:
            shown = " and ".join("(N, " + ", ".join(map(str, t.shape + (1,) * t.unit_axes)) + ")" for t in tensors)
            self.refuse(node, f"it adds tensors of different shapes ({shown}); cnnc's add needs one shape "
                              f"(no broadcasting)")
        if len(tensors) == 1:
            self.tensors[node.output[0]] = tensors[0]
            return
        self.shape, self.unit_axes = tensors[0].shape, tensors[0].unit_axes
        self.emit(node, "add", self.layer_name(node, "add"), {}, tensors[0].shape,
                  inputs=[t.layer for t in tensors])
        self.tensors[node.output[0]].unit_axes = tensors[0].unit_axes

    def _Add(self, node) -> None:
        if len(node.input) != 2:
            self.refuse(node, f"Add takes two inputs; it has {len(node.input)}")
        constant_side = [i for i, name in enumerate(node.input) if name in self.constants]
        if not constant_side:
            self._add(node, self._merge_inputs(node, "add"))
            return
        if len(constant_side) == 2:
            raise AssertionError("import_onnx: an Add of two constants is folded")
        data = 1 - constant_side[0]
        self.x = self.tensors[node.input[data]]
        self.shape, self.unit_axes = self.x.shape, self.x.unit_axes
        bias = self.constants[node.input[constant_side[0]]]
        full = self.shape + (1,) * self.unit_axes
        norm = self._direct_producer(node, data, readers=1, kinds=("batchnorm",))
        if norm is not None:  # batch norm then a per-channel shift (Caffe2's exports): into batch norm's bias
            self._into_batch_norm(node, norm, bias, full, "bias", "added")
            return
        target = self._direct_producer(node, data, readers=1)
        if target is None or "bias" in target.weights or "activation" in target.args:
            self.refuse(node, f"it adds a constant to '{_comment_safe(node.input[data])}'; cnnc imports an Add of a "
                              f"constant only as the bias of the Conv, Gemm or MatMul right before it (one without "
                              f"a bias, whose output nothing else reads)")
        channels = target.out_shape[0]
        if bias.dtype.kind not in "iuf" or not self._per_channel(bias.shape, full):
            self.refuse(node, f"the added constant has shape {tuple(bias.shape)}, which ONNX broadcasts against "
                              f"(N, {', '.join(map(str, full))}) as something other than one value per channel "
                              f"({channels}); cnnc cannot import it as a bias")
        target.weights["bias"] = np.ascontiguousarray(np.broadcast_to(bias.reshape(-1), (channels,)))
        del target.args["bias"]
        target.from_matmul = False
        target.output = node.output[0]
        self.tensors[node.output[0]] = Tensor(target.layer_name, self.x.shape, self.x.unit_axes)

    def _Sum(self, node) -> None:
        self._add(node, self._merge_inputs(node, "add"))

    def _Concat(self, node) -> None:
        tensors = self._merge_inputs(node, "concat")
        axis = self.integer(node, self.attributes(node), "axis", 1)
        first = tensors[0]
        rank = 1 + len(first.shape) + first.unit_axes
        if axis not in (1, 1 - rank):
            self.refuse(node, f"Concat(axis={axis}) is not over the channel axis (axis 1); cnnc's concat joins "
                              f"channels")
        if len({(t.shape[1:], t.unit_axes) for t in tensors}) != 1 or len({len(t.shape) for t in tensors}) != 1:
            shown = " and ".join("(N, " + ", ".join(map(str, t.shape + (1,) * t.unit_axes)) + ")" for t in tensors)
            self.refuse(node, f"it joins tensors whose other axes differ ({shown})")
        if len(tensors) == 1:
            self.tensors[node.output[0]] = first
            return
        self.shape, self.unit_axes = first.shape, first.unit_axes
        shape = (sum(t.shape[0] for t in tensors), *first.shape[1:])
        self.emit(node, "concat", self.layer_name(node, "cat"), {}, shape, inputs=[t.layer for t in tensors])
        self.tensors[node.output[0]].unit_axes = first.unit_axes

    def _BatchNormalization(self, node) -> None:
        attrs = self.attributes(node)
        if self.integer(node, attrs, "training_mode", 0, allowed=(0, 1)):
            self.refuse(node, "training_mode=1: this graph normalises with the batch's statistics at inference")
        if len(self.shape) + self.unit_axes > 3:
            self.refuse(node, f"its input {self._onnx_shape()} has more than two spatial axes")
        channels = self.shape[0]
        arrays = {}
        for index, role in enumerate(("weight", "bias", "running_mean", "running_var"), start=1):
            value = self.matrix(node, index, role.replace("_", " "), (0, 1, 2, 3))
            if value.size != channels or value.dtype.kind not in "iuf":
                self.refuse(node, f"its {role.replace('_', ' ')} '{node.input[index]}' has shape "
                                  f"{tuple(value.shape)}; expected one number per channel ({channels})")
            arrays[role] = value.reshape(-1)
        if (arrays["running_var"] < 0).any():
            self.refuse(node, "its running variance has negative entries")
        eps = self.real(node, attrs, "epsilon", 1e-5)
        momentum = self.real(node, attrs, "momentum", 0.9)
        if not 0 < eps or not 0 <= momentum <= 1:
            self.refuse(node, f"epsilon={eps} must be positive and momentum={momentum} in [0, 1]")
        args = {}
        if np.float32(eps) != np.float32(1e-5):
            args["eps"] = _real(eps)
        momentum = float(f"{1 - momentum:.7g}")  # ONNX keeps `momentum` of the old value, PyTorch of the new one;
        if momentum != 0.1:                          # 1 - float32(0.9) is 0.1 to float32's 7 digits
            args["momentum"] = _real(momentum)
        self.emit(node, "batchnorm", self.layer_name(node, "bn"), args, self.shape, arrays)
        self.tensors[node.output[0]].unit_axes = self.unit_axes

    def _activation(self, node, kind: str, args: dict, readers: int = 1) -> None:
        target = self._direct_producer(node, 0, readers)
        if kind in ("softmax", "log_softmax") and len(self.shape) != 1:
            self.refuse(node, f"{kind} normalises flat class scores; its input is {self._onnx_shape()}")
        softmax_on_conv = kind in ("softmax", "log_softmax") and target is not None and target.kind != "dense"
        if target is not None and "activation" not in target.args and not softmax_on_conv:
            target.args["activation"] = kind
            target.args.update(args)
            target.output = node.output[0] if readers == 1 else self._gate_output
            self.tensors[target.output] = Tensor(target.layer_name, self.shape, self.unit_axes)
            return
        output = node.output[0] if readers == 1 else self._gate_output
        self.emit(node, kind, self.layer_name(node, None), args, self.shape, output=output)
        self.tensors[output].unit_axes = self.unit_axes

    def _Relu(self, node) -> None:
        self._activation(node, "relu", {})

    def _gate(self, node, kind: str) -> bool:
        """Whether this Sigmoid or HardSigmoid output is read only by a Mul with its own input: then it is the
        gate of x * sigmoid(x) (silu) or x * hardsigmoid(x) (hardswish), imported at the Mul."""
        readers = self.readers.get(node.output[0], [])
        if len(readers) != 1 or readers[0].op_type != "Mul" or node.output[0] in self.outputs:
            return False
        if sorted(readers[0].input) != sorted([node.input[0], node.output[0]]):
            return False
        self.gates[node.output[0]] = kind
        self.tensors[node.output[0]] = Tensor(self.x.layer, self.shape, self.unit_axes)  # read by the Mul only
        return True

    def _Sigmoid(self, node) -> None:
        if not self._gate(node, "silu"):
            self._activation(node, "sigmoid", {})

    def _HardSigmoid(self, node) -> None:
        attrs = self.attributes(node)
        alpha, beta = self.real(node, attrs, "alpha", 0.2), self.real(node, attrs, "beta", 0.5)
        if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
            self.refuse(node, f"HardSigmoid(alpha={alpha}, beta={beta}) is not PyTorch's hardsigmoid "
                              f"(alpha=1/6, beta=0.5), the language's; cnnc's hardsigmoid has no other slope "
                              f"(ONNX's default is alpha=0.2)")
        if not self._gate(node, "hardswish"):
            self._activation(node, "hardsigmoid", {})

    def _Elu(self, node) -> None:
        alpha = self.real(node, self.attributes(node), "alpha", 1.0)
        if np.float32(alpha) != np.float32(1.0):
            self.refuse(node, f"Elu(alpha={alpha}): the language's elu has alpha 1 (PyTorch's default) only")
        self._activation(node, "elu", {})

    def _Selu(self, node) -> None:
        attrs = self.attributes(node)
        alpha, gamma = self.real(node, attrs, "alpha", SELU_ALPHA), self.real(node, attrs, "gamma", SELU_GAMMA)
        if abs(alpha - SELU_ALPHA) > 1e-6 * SELU_ALPHA or abs(gamma - SELU_GAMMA) > 1e-6 * SELU_GAMMA:
            self.refuse(node, f"Selu(alpha={alpha}, gamma={gamma}): the language's selu has PyTorch's constants "
                              f"(alpha {SELU_ALPHA:.6f}, gamma {SELU_GAMMA:.6f}) only")
        self._activation(node, "selu", {})

    def _LRN(self, node) -> None:
        """Local response normalisation across channels: ONNX's LRN is PyTorch's LocalResponseNorm (the language's
        lrn) for an odd size; for an even one the two put the window's extra channel on opposite sides."""
        attrs = self.attributes(node)
        if "size" not in attrs:
            self.refuse(node, "it has no size")
        size = self.integer(node, attrs, "size", 1)
        alpha, beta = self.real(node, attrs, "alpha", 1e-4), self.real(node, attrs, "beta", 0.75)
        bias = self.real(node, attrs, "bias", 1.0)
        if len(self.shape) + self.unit_axes not in (2, 3) or len(self.shape) == 1:
            self.refuse(node, f"it needs a (batch, C, L) or (batch, C, H, W) input; its input is {self._onnx_shape()}")
        if size < 1 or size % 2 == 0:
            self.refuse(node, f"size={size}: ONNX's LRN window for an even size reaches one channel further after "
                              f"than before, PyTorch's LocalResponseNorm (the language's lrn) one further before; "
                              f"cnnc imports odd sizes")
        if alpha < 0 or bias <= 0:
            self.refuse(node, f"alpha={alpha} must be at least 0 and bias={bias} positive (the language's lrn "
                              f"alpha and k)")
        args = {"size": str(size)}
        if np.float32(alpha) != np.float32(1e-4):
            args["alpha"] = _real(alpha)
        if np.float32(beta) != np.float32(0.75):
            args["beta"] = _real(beta)
        if np.float32(bias) != np.float32(1.0):
            args["k"] = _real(bias)
        self.emit(node, "lrn", self.layer_name(node, None), args, self.shape)
        self.tensors[node.output[0]].unit_axes = self.unit_axes  # (N, C, L, 1): across channels all the same

    def _ConvTranspose(self, node) -> None:
        """ConvTranspose -> conv_transpose1d/2d: weight (C, filters/groups, *kernel), PyTorch's layout. ONNX pads
        crop the full output; padding (b, a) with b >= a is cnnc's padding=b with b - a more output_padding."""
        attrs = self.attributes(node)
        weight = self.matrix(node, 1, "weight", (3, 4))
        bias = self.constant(node, 2, "bias")
        dims = self._spatial_input(node, weight.ndim - 2)
        group = self.integer(node, attrs, "group", 1)
        channels, per_group = weight.shape[:2]
        if group < 1 or self.shape[0] % group:
            self.refuse(node, f"group={group} does not divide its {self.shape[0]} input channels")
        if channels != self.shape[0]:
            self.refuse(node, f"its weight {tuple(weight.shape)} expects {channels} input channels; the input has "
                              f"{self.shape[0]}")
        filters = per_group * group
        kernel = self.ints(node, attrs, "kernel_shape", None, weight.shape[2:])
        if kernel != list(weight.shape[2:]):
            self.refuse(node, f"attribute kernel_shape={_shown(kernel)} does not match the weight's "
                              f"{list(weight.shape[2:])}")
        stride = self.ints(node, attrs, "strides", dims, [1] * dims, minimum=1)
        dilation = self.ints(node, attrs, "dilations", dims, [1] * dims, minimum=1)
        extra = self.ints(node, attrs, "output_padding", dims, [0] * dims, minimum=0)
        full = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip(self.shape[1:], stride, dilation, kernel)]
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode("utf-8", "replace") if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
            self.refuse(node, f"attribute auto_pad={_shown(auto_pad)} is not an ONNX value cnnc knows")
        if "output_shape" in attrs or auto_pad.startswith("SAME"):
            # ONNX derives the pads: total = full + output_padding - output size, split by auto_pad
            wanted = (self.ints(node, attrs, "output_shape", None, (), minimum=1) if "output_shape" in attrs
                      else [n * s for n, s in zip(self.shape[1:], stride)])
            wanted = wanted[-dims:]
            if len(wanted) != dims:
                self.refuse(node, f"attribute output_shape={_shown(attrs['output_shape'])} does not give the "
                                  f"{dims} spatial sizes")
            totals = [f + e - w for f, e, w in zip(full, extra, wanted)]
            upper = auto_pad == "SAME_UPPER"  # ONNX: SAME_UPPER puts the smaller half first, otherwise the larger
            before = [max(t, 0) // 2 if upper else max(t, 0) - max(t, 0) // 2 for t in totals]
            after = [t - b for t, b in zip(totals, before)]  # negative: cells added at the end (output_padding)
        elif auto_pad == "VALID":
            before, after = [0] * dims, [0] * dims
        else:
            pads = self.ints(node, attrs, "pads", 2 * dims, [0] * (2 * dims), minimum=0)
            before, after = pads[:dims], pads[dims:]
        if any(b < a for b, a in zip(before, after)):
            self.refuse(node, f"its padding (begin {before}, end {after}) crops more at the end than at the start "
                              f"of an axis; cnnc's conv_transpose crops `padding` from both sides and can add "
                              f"output_padding at the end, so it writes only begin >= end")
        output_padding = [e + b - a for e, b, a in zip(extra, before, after)]
        if any(o >= max(s, d) for o, s, d in zip(output_padding, stride, dilation)):
            self.refuse(node, f"it needs output_padding {output_padding} (its own {extra} plus the begin-end "
                              f"difference of its padding, begin {before}, end {after}), which must be smaller "
                              f"than the stride {stride} or the dilation {dilation} in the language")
        out = [f + o - 2 * b for f, o, b in zip(full, output_padding, before)]
        if any(n < 1 for n in out):
            self.refuse(node, f"its output would have size {out}: the padding crops everything")
        args = {"filters": str(filters), "kernel": _window(kernel)}
        if any(s != 1 for s in stride):
            args["stride"] = _window(stride)
        if any(before):
            args["padding"] = _window(before)
        if any(output_padding):
            args["output_padding"] = _window(output_padding)
        if any(d != 1 for d in dilation):
            args["dilation"] = _window(dilation)
        if group != 1:
            args["groups"] = str(group)
        weights = self._weight_and_bias(node, args, weight, bias, filters)
        self.emit(node, f"conv_transpose{dims}d", self.layer_name(node, "deconv"), args, (filters, *out), weights)

    def _into_batch_norm(self, node, norm: Statement, value: np.ndarray, full, role: str, verb: str) -> None:
        """Batch norm followed by a per-channel scale or shift: folded into its weight and bias (exact)."""
        channels = norm.out_shape[0]
        if value.dtype.kind not in "iuf" or not self._per_channel(value.shape, full):
            self.refuse(node, f"the {verb} constant has shape {tuple(value.shape)}, which ONNX broadcasts against "
                              f"(N, {', '.join(map(str, full))}) as something other than one value per channel "
                              f"({channels}); cnnc cannot fold it into the batch norm before it")
        per_channel = np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)
        if role == "scale":
            norm.weights["weight"] = norm.weights["weight"] * per_channel
            norm.weights["bias"] = norm.weights["bias"] * per_channel
        else:
            norm.weights["bias"] = norm.weights["bias"] + per_channel
        norm.output = node.output[0]
        data = node.input[0] if node.input[0] in self.tensors else node.input[1]
        self.tensors[node.output[0]] = Tensor(norm.layer_name, norm.out_shape, self.tensors[data].unit_axes)

    def _Mul(self, node) -> None:
        gate = next((name for name in node.input if name in self.gates), None)
        constant_side = [i for i, name in enumerate(node.input) if name in self.constants]
        if gate is None and len(constant_side) == 1:
            data = 1 - constant_side[0]
            norm = self._direct_producer(node, data, readers=1, kinds=("batchnorm",))
            if norm is not None:
                tensor = self.tensors[node.input[data]]
                self._into_batch_norm(node, norm, self.constants[node.input[constant_side[0]]],
                                      tensor.shape + (1,) * tensor.unit_axes, "scale", "multiplying")
                return
        if gate is None:
            self.refuse(node, "cnnc imports Mul only as x * Sigmoid(x) (silu), x * HardSigmoid(x) (hardswish), or a "
                              "per-channel scale right after a BatchNormalization (folded into it)")
        x_index = 0 if node.input[1] == gate else 1
        self.x = self.tensors[node.input[x_index]]
        self.shape, self.unit_axes = self.x.shape, self.x.unit_axes
        self._gate_output = node.output[0]
        # the activation goes into the conv or dense layer before it when the gate and the Mul are its only readers
        self._activation(_Reading(node.input[x_index], node), self.gates[gate], {}, readers=2)

    def _HardSwish(self, node) -> None:
        self._activation(node, "hardswish", {})

    def _Clip(self, node) -> None:
        attrs = self.attributes(node)
        if self.opset < 11:
            low, high = self.real(node, attrs, "min", -np.inf), self.real(node, attrs, "max", np.inf)
        else:
            low, high = self.scalar(node, 1, "min"), self.scalar(node, 2, "max")
        low = -np.inf if low is None else low
        high = np.inf if high is None else high
        if low == 0 and high == 6:
            self._activation(node, "relu6", {})
        elif low == 0 and high == np.inf:
            self._activation(node, "relu", {})
        else:
            self.refuse(node, f"it clips to [{low}, {high}]; cnnc imports Clip(0, 6) as relu6 and Clip(0) as relu")

    def _Pad(self, node):
        attrs = self.attributes(node)
        mode = attrs.get("mode", b"constant")
        mode = mode.decode("utf-8", "replace") if isinstance(mode, bytes) else str(mode)
        if mode != "constant":
            self.refuse(node, f"mode={_shown(mode)}: cnnc pads with zeros only (mode=constant)")
        if self.opset < 11:
            pads, value = self.ints(node, attrs, "pads", None, ()), self.real(node, attrs, "value", 0.0)
        else:
            pads = self.constant(node, 1, "pads")
            if pads is None or pads.dtype.kind not in "iu" or pads.ndim != 1:
                self.refuse(node, "its pads must be a constant list of integers")
            pads = [int(p) for p in pads]
            value = self.scalar(node, 2, "constant value") or 0.0
            if len(node.input) > 3 and node.input[3]:
                self.refuse(node, "it pads chosen axes (the axes input); cnnc imports a Pad of every axis")
        rank = 1 + len(self.shape) + self.unit_axes
        if value != 0:
            self.refuse(node, f"it pads with {value}; cnnc pads with zeros only")
        if len(pads) != 2 * rank or any(p < 0 for p in pads):
            self.refuse(node, f"its pads {_shown(pads)} are not {2 * rank} non-negative numbers")
        if self.unit_axes or len(self.shape) == 1 or any(pads[i] or pads[rank + i] for i in (0, 1)):
            self.refuse(node, f"it pads {self._onnx_shape()} on the batch or channel axis, or a flat tensor; cnnc "
                              f"pads only the spatial axes, as the Conv or pooling node after it")
        before, after = pads[2:rank], pads[rank + 2:]
        if self.x.pad is not None:
            before = [a + b for a, b in zip(before, self.x.pad[0])]
            after = [a + b for a, b in zip(after, self.x.pad[1])]
        return Tensor(self.x.layer, self.shape, 0, (before, after))

    def _Tanh(self, node) -> None:
        self._activation(node, "tanh", {})

    def _LeakyRelu(self, node) -> None:
        alpha = self.real(node, self.attributes(node), "alpha", 0.01)
        self._activation(node, "leaky_relu", {} if np.float32(alpha) == np.float32(0.01) else {"slope": _real(alpha)})

    def _Softmax(self, node, kind: str = "softmax") -> None:
        axis = self.integer(node, self.attributes(node), "axis", -1 if self.opset >= 13 else 1)
        if self.unit_axes:  # over (N, C, 1, 1) after global pooling: axis 1 is the same as over C
            rank = 1 + len(self.shape) + self.unit_axes
            if axis not in (1, 1 - rank):
                self.refuse(node, f"{node.op_type}(axis={axis}) of {self._onnx_shape()} is not over the channels "
                                  f"(axis 1)")
            axis = 1
        if axis not in (1, -1):
            self.refuse(node, f"{node.op_type}(axis={axis}) is not over the class scores of a (batch, K) tensor")
        self._activation(node, kind, {})

    def _LogSoftmax(self, node) -> None:
        self._Softmax(node, "log_softmax")

    def _Dropout(self, node) -> None:
        attrs = self.attributes(node)
        ratio = self.scalar(node, 1, "ratio")
        ratio = ratio if ratio is not None else self.real(node, attrs, "ratio", 0.5)
        if len(node.input) > 2 and node.input[2]:
            training = self.scalar(node, 2, "training_mode")
            if training:
                self.refuse(node, "training_mode is true: this graph applies dropout at inference")
        if not 0 <= ratio < 1:
            self.refuse(node, f"ratio {ratio} is outside [0, 1)")
        self.emit(node, "dropout", self.layer_name(node, None), {"rate": _real(ratio)}, self.shape)
        self.tensors[node.output[0]].unit_axes = self.unit_axes

    def _Identity(self, node):
        return self.x


class _Reading:
    """A node seen as reading one given input first: the Mul of x * gate(x), read as an activation of x."""

    def __init__(self, name: str, node):
        self.input, self.output, self.name, self.op_type = [name], list(node.output), node.name, node.op_type


# ---- writing -----------------------------------------------------------------------------------------
def _model_name(requested: str | None, graph_name: str, cnn_path: Path) -> str:
    if requested is not None:
        if not IDENTIFIER.match(requested) or requested in RESERVED:
            raise CnncError(f"--model {requested!r} is not a usable model name: it must match [A-Za-z_][A-Za-z0-9_]* "
                            f"and not be a keyword")
        return requested
    generic = ("main_graph", "torch_jit", "torch-jit-export", "graph")  # exporters' default graph names
    for candidate in ("" if graph_name in generic else graph_name, re.sub(r"[^A-Za-z0-9_]", "_", cnn_path.stem)):
        if IDENTIFIER.match(candidate or "") and candidate not in RESERVED:
            return candidate
    return "imported"


def cnn_text(model_name: str, input_name: str, input_shape, statements: list[Statement], header: list[str]) -> str:
    """The .cnn file: one statement a line, each layer's output shape as a comment."""
    lines = [f"input {input_name}[{', '.join(map(str, input_shape))}]"]
    previous = input_name
    for s in statements:
        lines.append(s.text(previous))
        previous = s.layer_name
    shapes = [""] + [f"# -> [{', '.join(map(str, s.out_shape))}]" for s in statements]
    width = max(len(line) for line in lines)
    body = [f"    {line.ljust(width)}   {shape}".rstrip() for line, shape in zip(lines, shapes)]
    return "\n".join([*(f"# {_comment_safe(h)}" for h in header), f"model {model_name} {{", *body, "}", ""])


def _weights(statements: list[Statement]) -> dict[str, np.ndarray]:
    arrays = {}
    for s in statements:
        for role, value in s.weights.items():
            value = np.asarray(value)
            dtype = np.float64 if value.dtype == np.float64 else np.float32
            arrays[f"{s.name}.{role}"] = np.ascontiguousarray(value, dtype=dtype)
    return arrays


def _read_model(onnx, source: str):
    """The ModelProto in `source`. Protobuf parses some foreign bytes (an empty file, for one) as an
    empty message, so a model without a graph is refused too, saying what the file looks like."""
    try:
        proto = onnx.load(source)
    except FileNotFoundError:
        raise CnncError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise CnncError(f"{source}: is a directory, expected an .onnx file") from None
    except Exception as e:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise CnncError(f"{source}: not a readable ONNX model: it is {describe_contents(source)} "
                        f"({type(e).__name__}: {e})") from None
    if not proto.HasField("graph"):
        raise CnncError(f"{source}: not an ONNX model: it holds no graph (it is {describe_contents(source)})")
    return proto


def compare_with_onnxruntime(proto, network: Network, arrays: dict, source: str, seed: int = 0,
                             batch: int = 2) -> float | None:
    """Run the ONNX model in onnxruntime and the imported network on the NumPy backend (float64) on the same
    random batch (of `batch` samples: a graph may fix it); a CnncError if they disagree by more than 1e-4 of the
    largest output. Returns the relative difference, or None when onnxruntime is not installed or cannot run the model itself."""
    try:
        import onnxruntime
    except ImportError:
        return None
    from .backends.numpy_backend import NumpyModel

    x = np.random.default_rng(seed).standard_normal((batch, *network.input_shape))
    try:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: not its notes on unused initializers
        session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0]
        dtype = np.float64 if feed.type == "tensor(double)" else np.float32
        expected = np.asarray(session.run(None, {feed.name: x.astype(dtype)})[0], np.float64)
    except Exception:  # onnxruntime refuses the file (an operator it lacks...): nothing to compare with
        return None
    model = NumpyModel(network, dtype="float64")
    model.load_weights({k: np.asarray(v, np.float64) for k, v in arrays.items()})
    got = model.forward(x.astype(np.float64))
    if got.size == expected.size and expected.shape[:2] == got.shape[:2] and set(expected.shape[2:]) <= {1}:
        got = got.reshape(expected.shape)  # (N, C) for ONNX's (N, C, 1, 1), which the .cnn's header states
    if got.shape != expected.shape:
        raise CnncError(f"{source}: the imported model outputs {got.shape[1:]} per sample where onnxruntime gives "
                        f"{expected.shape[1:]}; nothing was written")
    scale = max(float(np.abs(expected).max()), 1e-30)
    difference = float(np.abs(got - expected).max()) / scale
    if not difference <= 1e-4:
        raise CnncError(f"{source}: the imported model computes something else than onnxruntime on a random input "
                        f"(largest difference {difference:.1e} of the largest output); nothing was written. Please "
                        f"report this: the importer should have refused the graph")
    return difference


def import_onnx(onnx_path, cnn_path, weights_path=None, model_name: str | None = None,
                verify: bool = True) -> tuple[Network, dict]:
    """Read an ONNX model and write the .cnn file and its weights (.npz, by default beside the .cnn).
    Returns the shape-checked Network and the weights {name: array}. Refuses, with a CnncError naming the
    node and operator, anything the language cannot express. With `verify` (and onnxruntime installed), the
    imported model is run against onnxruntime on a random batch first (compare_with_onnxruntime)."""
    from ._version import __version__
    from .frontend import network_from_text

    onnx = require_onnx("onnx")
    source, cnn_path = os.fspath(onnx_path), Path(os.fspath(cnn_path))
    weights_path = Path(os.fspath(weights_path)) if weights_path is not None else cnn_path.with_suffix(".npz")
    check_distinct({"the .cnn file": cnn_path, "the weights file": weights_path}, {"the ONNX model": source})
    proto = _read_model(onnx, source)
    importer = Importer(onnx, proto, source)
    input_name, statements = importer.run()
    name = _model_name(model_name, proto.graph.name, cnn_path)
    producer = f"{proto.producer_name} {proto.producer_version}".strip() or "an unknown producer"
    header = [f"Imported from {Path(source).name} (ONNX opset {importer.opset}, written by {producer}) by cnnc "
              f"{__version__}.",
              f"Weights: {weights_path.name}. No loss statement: add one (e.g. `loss cross_entropy`) to train it."]
    if importer.output_unit_axes:
        shape = ", ".join(map(str, importer.shape + (1,) * importer.output_unit_axes))
        header.append(f"The ONNX graph's output is (N, {shape}); this model gives the same values as "
                      f"(N, {', '.join(map(str, importer.shape))}).")
    text = cnn_text(name, input_name, importer.input_shape, statements, header)
    network = network_from_text(text, file=os.fspath(cnn_path))
    if network.output_shape != importer.shape:
        raise AssertionError(f"import_onnx: cnnc infers the output {network.output_shape}, "
                             f"the importer {importer.shape}")
    arrays = _weights(statements)
    problems = weight_mismatches(network, arrays)
    if problems:
        raise CnncError(f"{source}: the imported weights do not fit the written model:\n  " + "\n  ".join(problems))
    if verify:
        compare_with_onnxruntime(proto, network, arrays, source, batch=importer.batch or 2)
    atomic_write_text(cnn_path, text)
    with atomic_path(weights_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return network, arrays


__all__ = ["import_onnx", "compare_with_onnxruntime", "Importer", "cnn_text", "SUPPORTED"]
