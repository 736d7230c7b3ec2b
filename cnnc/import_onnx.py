"""An ONNX model -> a readable .cnn file and its weights: `cnnc import model.onnx -o model.cnn`.

    network, weights = import_onnx("model.onnx", "model.cnn")     # also writes model.npz

The graph must be a simple chain (each tensor read by the next node only) of these operators:

    Conv                  -> conv1d / conv2d (group 1); a Relu, Sigmoid, Tanh or LeakyRelu right after
                             becomes its activation=
    MaxPool, AveragePool  -> maxpool*/avgpool* (average pooling with padding must count the padded
                             zeros, count_include_pad=1, as cnnc's does)
    GlobalAveragePool     -> global_avgpool (with the Flatten/Reshape after it, which cnnc needs not)
    Gemm, MatMul (+ Add)  -> dense (MatMul's Add of a constant becomes the bias)
    Flatten, Reshape      -> flatten (only to (batch, everything else))
    Relu, Sigmoid, Tanh, LeakyRelu, Softmax -> the activation layers (Softmax on flat scores only)
    Dropout               -> dropout(rate=...);  Identity -> nothing

Padding: ONNX gives a begin and an end per axis. Equal per axis -> padding=P or (PH, PW); otherwise,
for a stride-1 convolution, `same` when it is exactly cnnc's split (the odd pixel at the end);
anything else cannot be written in the language and is refused. Every refusal names the node and
its operator. Weights keep their layouts (cnnc's are PyTorch's, the same as ONNX's Conv and
Gemm(transB=1)); MatMul's and Gemm(transB=0)'s matrices are transposed, Gemm's alpha and beta folded in.
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
from .model import weight_mismatches

SUPPORTED = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm", "MatMul", "Add", "Flatten", "Reshape",
             "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Softmax", "Dropout", "Identity")
OPERATOR_HINTS = {  # why a common unsupported operator appears, and how to avoid it
    "BatchNormalization": "PyTorch folds it into the convolution before it when it exports in eval mode with "
                          "constant folding (the default)",
    "Shape": "the graph computes a reshape from the input's shape (x.view(x.size(0), -1)); flatten with "
             "torch.flatten(x, 1) or nn.Flatten() instead",
    "Pad": "give the padding to the Conv or pooling node itself",
}
RESERVED = set(LAYER_KINDS) | {"model", "input", "loss"}
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

    def text(self) -> str:
        head = self.kind + (f" {self.name}" if self.name else "")
        args = ", ".join(f"{k}={v}" for k, v in self.args.items())
        return head + (f"({args})" if args else "")


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


class Importer:
    """Walks the ONNX graph node by node, keeping the cnnc shape of the current tensor."""

    def __init__(self, onnx, proto, source: str):
        self.onnx, self.proto, self.graph, self.source = onnx, proto, proto.graph, source
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.constants = {t.name: self._tensor(t, f"the initializer '{_comment_safe(t.name)}'")
                          for t in self.graph.initializer}
        self.consumers: dict[str, int] = {}
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers[name] = self.consumers.get(name, 0) + 1
        self.statements: list[Statement] = []
        self.used_names: set[str] = set()
        self.counts: dict[str, int] = {}
        self.unit_axes = 0  # trailing size-1 axes ONNX still has after GlobalAveragePool (cnnc drops them)
        self.input_name, self.shape, self.batch = self._graph_input()
        self.input_shape = self.shape
        self.current = self.graph_input_tensor

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
        if len(parts) > 1 and parts[-1] == node.op_type:  # PyTorch's "/module/Op"
            parts.pop()
        candidate = parts[-1] if parts else ""
        if fallback is not None:
            candidate = re.sub(r"[^A-Za-z0-9_]", "_", candidate).strip("_")
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

    def emit(self, node, kind: str, name: str | None, args: dict, out_shape, weights=None, **extra) -> Statement:
        statement = Statement(kind, name, args, weights or {}, tuple(out_shape), node.output[0], **extra)
        self.statements.append(statement)
        self.shape = tuple(out_shape)
        return statement

    def last_fusable(self) -> Statement | None:
        """The previous statement, when it is a conv/dense without an activation whose output is the current tensor."""
        if self.statements:
            last = self.statements[-1]
            fusable = last.kind in ("conv1d", "conv2d", "dense") and "activation" not in last.args
            if fusable and last.output == self.current:
                return last
        return None

    # ---- the walk ------------------------------------------------------------------------------------
    def run(self) -> tuple[str, list[Statement]]:
        outputs = [v.name for v in self.graph.output]
        if len(outputs) != 1:
            self.fail(f"cnnc imports a graph with exactly one output; this one has {len(outputs)}")
        for node in self.graph.node:
            if node.domain not in ("", "ai.onnx"):
                self.refuse(node, f"operators of the domain '{node.domain}' are not supported")
            if not node.output or not node.output[0]:
                self.refuse(node, "it has no output")
            if node.op_type == "Constant":
                self._constant_node(node)
                continue
            if node.op_type == "Identity" and node.input and node.input[0] in self.constants:
                self.constants[node.output[0]] = self.constants[node.input[0]]  # another name for a weight
                continue
            if node.op_type not in SUPPORTED:
                hint = f"; {OPERATOR_HINTS[node.op_type]}" if node.op_type in OPERATOR_HINTS else ""
                self.refuse(node, f"the operator {node.op_type} is not supported by cnnc import (supported: "
                                  f"{', '.join(SUPPORTED)}){hint}")
            if not node.input or node.input[0] != self.current:
                reads = node.input[0] if node.input else "nothing"
                self.refuse(node, f"it reads '{reads}', not the previous layer's output '{self.current}': cnnc imports "
                                  f"only a simple chain of layers (no branches, no skip connections)")
            if self.consumers.get(self.current, 0) > 1:
                self.refuse(node, f"the tensor '{self.current}' feeds {self.consumers[self.current]} nodes; cnnc "
                                  f"imports only a simple chain of layers")
            for extra in node.output[1:]:
                if extra and (self.consumers.get(extra) or extra in outputs):
                    self.refuse(node, f"its extra output '{extra}' is used; cnnc layers have one output")
            getattr(self, "_" + node.op_type)(node)
            self.current = node.output[0]
        if not self.statements:
            self.fail("the graph has no layer cnnc can write (only Identity, Flatten or Reshape of the input)")
        if self.current != outputs[0]:
            self.fail(f"the graph's output '{outputs[0]}' is not the end of the chain of layers (which ends at "
                      f"'{self.current}')")
        return self.input_name, self.statements

    def _constant_node(self, node) -> None:
        attributes = self.attributes(node)
        if "value" not in attributes:
            self.refuse(node, f"only Constant nodes holding a tensor ('value') are supported; got {sorted(attributes)}")
        if not isinstance(attributes["value"], self.onnx.TensorProto):
            self.refuse(node, f"attribute value must be a tensor; got {_shown(attributes['value'])}")
        self.constants[node.output[0]] = self._tensor(attributes["value"], "attribute value", node)

    # ---- geometry ------------------------------------------------------------------------------------
    def _pads(self, node, attrs, kernel, stride, dilation) -> tuple[list[int], list[int]]:
        """(pad_before, pad_after) per spatial axis, from pads or auto_pad."""
        dims = len(kernel)
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        if not isinstance(auto_pad, (bytes, str)):
            self.refuse(node, f"attribute auto_pad must be a string; got {_shown(auto_pad)}")
        auto_pad = auto_pad.decode("utf-8", "replace") if isinstance(auto_pad, bytes) else auto_pad
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
        self.refuse(node, f"its padding (begin {before}, end {after}) differs between the two sides of an axis and is "
                          f"not padding=same (begin {same_before}, end {same_after}"
                          f"{', stride 1' if conv else ', and only convolutions take same'}); cnnc cannot write it")

    def _output_size(self, node, attrs, before, after, kernel, stride, dilation) -> list[int]:
        out = []
        for size, b, a, k, s, d in zip(self.shape[1:], before, after, kernel, stride, dilation):
            span = d * (k - 1) + 1
            if span > size + b + a:
                self.refuse(node, f"its window {k} is larger than the padded input {size + b + a}")
            if self.integer(node, attrs, "ceil_mode", 0, allowed=(0, 1)) and (size + b + a - span) % s:
                self.refuse(node, "ceil_mode=1 changes the output size here; cnnc rounds the output size down "
                                  "(ceil_mode=0)")
            out.append((size + b + a - span) // s + 1)
        return out

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
    def _Conv(self, node) -> None:
        attrs = self.attributes(node)
        weight = self.matrix(node, 1, "weight", (3, 4))
        bias = self.constant(node, 2, "bias")
        dims = self._spatial_input(node, weight.ndim - 2)
        group = self.integer(node, attrs, "group", 1)
        if group != 1:
            self.refuse(node, f"grouped convolution (group={group}) is not supported; cnnc convolutions use group=1")
        filters, channels = weight.shape[:2]
        if channels != self.shape[0]:
            self.refuse(node, f"its weight {tuple(weight.shape)} expects {channels} input channels; the input has "
                              f"{self.shape[0]}")
        kernel = self.ints(node, attrs, "kernel_shape", None, weight.shape[2:])
        if kernel != list(weight.shape[2:]):
            self.refuse(node, f"attribute kernel_shape={_shown(kernel)} does not match the weight's "
                              f"{list(weight.shape[2:])}")
        stride = self.ints(node, attrs, "strides", dims, [1] * dims, minimum=1)
        dilation = self.ints(node, attrs, "dilations", dims, [1] * dims, minimum=1)
        before, after = self._pads(node, attrs, kernel, stride, dilation)
        padding = self._padding_arg(node, before, after, kernel, stride, dilation, conv=True)
        out = self._output_size(node, attrs, before, after, kernel, stride, dilation)
        args = {"filters": str(filters), "kernel": _window(kernel)}
        if any(s != 1 for s in stride):
            args["stride"] = _window(stride)
        if padding:
            args["padding"] = padding
        if any(d != 1 for d in dilation):
            args["dilation"] = _window(dilation)
        weights = {"weight": weight}
        if bias is None:
            args["bias"] = "false"
        else:
            weights["bias"] = bias.reshape(-1)
            if weights["bias"].shape != (filters,) or bias.dtype.kind not in "iuf":
                self.refuse(node, f"its bias is a {bias.dtype.name} array of shape {tuple(bias.shape)}; expected "
                                  f"({filters},) numbers")
        self.emit(node, f"conv{dims}d", self.layer_name(node, "conv"), args, (filters, *out), weights)

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
        before, after = self._pads(node, attrs, kernel, stride, [1] * dims)
        count_include_pad = self.integer(node, attrs, "count_include_pad", 0, allowed=(0, 1))
        if kind == "avgpool" and any(before + after) and not count_include_pad:
            self.refuse(node, "it averages only the real inputs at a padded border (count_include_pad=0); cnnc's "
                              "average pooling counts the padded zeros (count_include_pad=1)")
        if any(p > k // 2 for p, k in zip(before + after, kernel + kernel)):
            self.refuse(node, f"its padding (begin {before}, end {after}) is more than half the window {kernel}")
        padding = self._padding_arg(node, before, after, kernel, stride, [1] * dims, conv=False)
        out = self._output_size(node, attrs, before, after, kernel, stride, [1] * dims)
        args = {"size": _window(kernel)}
        if stride != kernel:  # cnnc's pooling stride defaults to the window size
            args["stride"] = _window(stride)
        if padding:
            args["padding"] = padding
        self.emit(node, f"{kind}{dims}d", self.layer_name(node, None), args, (self.shape[0], *out))

    def _MaxPool(self, node) -> None:
        self._pool(node, "maxpool")

    def _AveragePool(self, node) -> None:
        self._pool(node, "avgpool")

    def _GlobalAveragePool(self, node) -> None:
        dims = self._spatial_input(node, None)
        self.emit(node, "global_avgpool", self.layer_name(node, None), {}, (self.shape[0],))
        self.unit_axes = dims  # ONNX keeps (N, C, 1, 1); the Flatten or Reshape after it is cnnc's no-op

    def _to_flat(self, node) -> None:
        if self.unit_axes:
            self.unit_axes = 0
            self.statements[-1].output = node.output[0]
        elif len(self.shape) > 1:
            self.emit(node, "flatten", self.layer_name(node, None), {}, (prod(self.shape),))
        elif self.statements:
            self.statements[-1].output = node.output[0]

    def _Flatten(self, node) -> None:
        axis = self.integer(node, self.attributes(node), "axis", 1)
        rank = 1 + len(self.shape) + self.unit_axes
        if axis not in (1, 1 - rank):
            self.refuse(node, f"Flatten(axis={axis}) would not keep the batch axis alone; cnnc flattens with axis=1")
        self._to_flat(node)

    def _Reshape(self, node) -> None:
        target = self.constant(node, 1, "target shape")
        if target is None:
            self.refuse(node, "it has no target shape")
        if target.dtype.kind not in "iu" or target.ndim != 1:
            self.refuse(node, f"its target shape must be a list of integers; it is a {target.dtype.name} array of "
                              f"shape {tuple(target.shape)}")
        target = [int(t) for t in target[:3]]  # more than two entries is refused below whatever they are
        size = prod(self.shape)
        batch_ok = target[:1] == [0] or target[:1] == [-1] or (self.batch is not None and target[:1] == [self.batch])
        if len(target) != 2 or not batch_ok or target[1] not in (size, -1) or target == [-1, -1]:
            self.refuse(node, f"it reshapes to {target}; cnnc imports only a reshape to (batch, {size}) such as "
                              f"[-1, {size}] or [0, -1]")
        if self.integer(node, self.attributes(node), "allowzero", 0, allowed=(0, 1)) and 0 in target:
            self.refuse(node, "allowzero=1 with a 0 in the target shape makes an empty tensor")
        self._to_flat(node)

    def _dense_input(self, node) -> int:
        if self.unit_axes or len(self.shape) != 1:
            self.refuse(node, f"it needs a flat (batch, D) input; the previous layer outputs {self._onnx_shape()} "
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
            if (bias.size not in (1, units) or (bias.ndim == 2 and bias.shape[0] != 1) or bias.ndim > 2
                    or bias.dtype.kind not in "iuf"):
                self.refuse(node, f"its bias (a {bias.dtype.name} array of shape {tuple(bias.shape)}) is not one "
                                  f"number per output ({units})")
            bias = np.broadcast_to(bias.reshape(-1), (units,)) * np.asarray(beta, bias.dtype)
            weights["bias"] = np.ascontiguousarray(bias)
        args = {"units": str(units)} if bias is not None else {"units": str(units), "bias": "false"}
        self.emit(node, "dense", self.layer_name(node, "fc"), args, (units,), weights)

    def _MatMul(self, node) -> None:
        inputs = self._dense_input(node)
        matrix = self.matrix(node, 1, "weight", (2,))
        if matrix.shape[0] != inputs:
            self.refuse(node, f"its weight {tuple(matrix.shape)} is not ({inputs}, units)")
        units = matrix.shape[1]
        self.emit(node, "dense", self.layer_name(node, "fc"), {"units": str(units), "bias": "false"}, (units,),
                  {"weight": np.ascontiguousarray(matrix.T)}, from_matmul=True)

    def _Add(self, node) -> None:
        last = self.statements[-1] if self.statements else None
        if not (last and last.from_matmul and last.output == self.current and "bias" not in last.weights):
            self.refuse(node, "Add is supported only as the bias right after a MatMul")
        bias = self.constant(node, 1, "bias")
        units = last.out_shape[0]
        if bias is None or bias.size not in (1, units) or bias.ndim > 2 or bias.dtype.kind not in "iuf":
            self.refuse(node, f"the added value must be a constant with one value per output ({units})")
        last.weights["bias"] = np.ascontiguousarray(np.broadcast_to(bias.reshape(-1), (units,)))
        del last.args["bias"]
        last.from_matmul = False
        last.output = node.output[0]

    def _activation(self, node, kind: str, args: dict) -> None:
        last = self.last_fusable()
        if kind == "softmax" and (self.unit_axes or len(self.shape) != 1):
            self.refuse(node, f"softmax normalises flat class scores; its input is {self._onnx_shape()}")
        if last is not None and not (kind == "softmax" and last.kind != "dense"):
            last.args["activation"] = kind
            last.args.update(args)
            last.output = node.output[0]
            return
        self.emit(node, kind, self.layer_name(node, None), args, self.shape)

    def _Relu(self, node) -> None:
        self._activation(node, "relu", {})

    def _Sigmoid(self, node) -> None:
        self._activation(node, "sigmoid", {})

    def _Tanh(self, node) -> None:
        self._activation(node, "tanh", {})

    def _LeakyRelu(self, node) -> None:
        alpha = self.real(node, self.attributes(node), "alpha", 0.01)
        self._activation(node, "leaky_relu", {} if np.float32(alpha) == np.float32(0.01) else {"slope": _real(alpha)})

    def _Softmax(self, node) -> None:
        axis = self.integer(node, self.attributes(node), "axis", -1 if self.opset >= 13 else 1)
        if axis not in (1, -1):
            self.refuse(node, f"Softmax(axis={axis}) is not over the class scores of a (batch, K) tensor")
        self._activation(node, "softmax", {})

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

    def _Identity(self, node) -> None:
        if self.statements:
            self.statements[-1].output = node.output[0]


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
    lines += [s.text() for s in statements]
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


def import_onnx(onnx_path, cnn_path, weights_path=None, model_name: str | None = None) -> tuple[Network, dict]:
    """Read an ONNX model and write the .cnn file and its weights (.npz, by default beside the .cnn).
    Returns the shape-checked Network and the weights {name: array}. Refuses, with a CnncError naming the
    node and operator, anything the language cannot express."""
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
    text = cnn_text(name, input_name, importer.input_shape, statements, header)
    network = network_from_text(text, file=os.fspath(cnn_path))
    if network.output_shape != importer.shape:
        raise AssertionError(f"import_onnx: cnnc infers the output {network.output_shape}, "
                             f"the importer {importer.shape}")
    arrays = _weights(statements)
    problems = weight_mismatches(network, arrays)
    if problems:
        raise CnncError(f"{source}: the imported weights do not fit the written model:\n  " + "\n  ".join(problems))
    atomic_write_text(cnn_path, text)
    with atomic_path(weights_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return network, arrays


__all__ = ["import_onnx", "Importer", "cnn_text", "SUPPORTED"]
