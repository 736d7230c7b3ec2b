"""IR + weights -> an ONNX model: `cnnc export --format onnx`.

    export_onnx(model, "lenet5.onnx")      # model: a cnnc Model with its weights (and buffers) loaded

One ONNX node per cnnc layer (plus the nodes of a fused activation, and a Flatten after global average
pooling, whose ONNX output keeps its 1x1 spatial axes), opset 17, float32, with a dynamic batch
dimension "N". Graphs export as they are: each node reads the tensors its layer reads (`from=`,
merges). Tensors and nodes are named after the layers, with a block instance's dots made underscores
("s1.c1" -> "s1_c1"; a name already taken gets a number). Parameters and buffers are initializers
named like cnnc's ("c1.weight", "s1.bn1.running_mean"), in the same (PyTorch) layouts, so nothing is
transposed:

    conv1d/conv2d    Conv(x, weight[, bias], group=groups), pads = [begin per axis..., end per axis...]
    conv_transpose*  ConvTranspose(x, weight[, bias], group, output_padding): weight (C, filters/groups, k...)
    maxpool*         MaxPool (padding never wins), avgpool* AveragePool(count_include_pad=1, or 0 for
                     count_pad=false); ceil=true is ceil_mode=1 (the same rule for a last window)
    global_avgpool   GlobalAveragePool then Flatten(axis=1); global_maxpool GlobalMaxPool then Flatten
    lrn              LRN(size, alpha, beta, bias=k) for an odd size (1-D: between Reshapes to (N, C, L, 1) and
                     back, as onnxruntime's LRN takes 4-D tensors only); for an even one ONNX's window is one
                     channel off PyTorch's, so the formula: x / (k + alpha * mean of x^2 over the window) ** beta,
                     the window mean an AveragePool of the zero-padded squares viewed as (N, 1, C, positions)
    channel_shuffle  Reshape to (N, groups, C/groups, ...), Transpose(perm=[0, 2, 1, ...]), Reshape back
    flatten          Flatten(axis=1): C, H, W order, the same as cnnc's
    dense            Gemm(x, weight, bias, transB=1): weight is (units, inputs)
    batchnorm        BatchNormalization(x, weight, bias, running_mean, running_var), inference mode
                     (epsilon=eps, momentum = 1 - cnnc's momentum, ONNX's convention)
    add, concat      Add (two operands) or Sum (more), Concat(axis=1)
    dropout          Dropout(x, ratio): the identity at inference, kept so the rate survives a round trip
    activations      Relu, Sigmoid, Tanh, LeakyRelu(alpha=slope), Softmax(axis=1), relu6 as Clip(x, 0, 6),
                     silu as Mul(x, Sigmoid(x)), hardswish as HardSwish (opset >= 14; below, the formula
                     x * HardSigmoid(x, alpha=1/6, beta=1/2)), Elu(alpha=1), Selu (PyTorch's constants, ONNX's
                     defaults), hardsigmoid as HardSigmoid(alpha=1/6, beta=1/2), LogSoftmax(axis=1)

onnx and onnxruntime are optional: without them these functions raise a CnncError that says how to
install them.
"""
from __future__ import annotations

import os
import re

import numpy as np

from .diagnostics import CnncError
from .fileio import atomic_write_bytes
from .ir import AVGPOOL_KINDS, CONV_KINDS, CONV_TRANSPOSE_KINDS, MAXPOOL_KINDS, Layer, Network

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17: readable by every onnxruntime since 1.11
INSTALL_HINT = "pip install 'cnnc[onnx]'"
ONNX_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "leaky_relu": "LeakyRelu",
                    "softmax": "Softmax", "relu6": "Clip", "silu": "Mul", "hardswish": "HardSwish", "elu": "Elu",
                    "selu": "Selu", "hardsigmoid": "HardSigmoid", "log_softmax": "LogSoftmax"}


def require_onnx(*modules: str):
    """Import the optional ONNX packages, or raise a CnncError naming the install command."""
    imported = []
    for name in modules or ("onnx",):
        try:
            imported.append(__import__(name))
        except ImportError:
            raise CnncError(f"this needs the optional package '{name}', which is not installed; install the ONNX "
                            f"extras with: {INSTALL_HINT}") from None
    return imported[0] if len(imported) == 1 else imported


class _GraphBuilder:
    """Collects nodes and initializers while the layers are walked in order (a topological order)."""

    def __init__(self, onnx, network: Network, params: dict[str, np.ndarray], buffers: dict[str, np.ndarray],
                 opset: int):
        self.onnx, self.helper = onnx, onnx.helper
        self.network, self.params, self.buffers, self.opset = network, params, buffers, opset
        self.nodes, self.initializers = [], []
        self.taken: set[str] = {network.input_name}
        self.tensor = {network.input_name: network.input_name}  # cnnc tensor (layer) name -> ONNX tensor name

    def fresh(self, name: str) -> str:
        """An ONNX name from a cnnc name: dots (block instances) become underscores; unique."""
        base = re.sub(r"[^A-Za-z0-9_]", "_", name)
        candidate, k = base, 1
        while candidate in self.taken:
            k += 1
            candidate = f"{base}_{k}"
        self.taken.add(candidate)
        return candidate

    def constant(self, name: str, value: np.ndarray, dtype=np.float32) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.array(value, dtype=dtype, order="C"), name))
        return name

    def shape_constant(self, name: str, values) -> str:
        """An int64 initializer (a Reshape target; 0 keeps the batch size), named after `name`, made unique."""
        return self.constant(self.fresh(name), np.array(values, np.int64), np.int64)

    def node(self, op: str, name: str, inputs: list[str], **attributes) -> str:
        """A node named `name` (made unique) writing the tensor of the same name; returns that name."""
        output = self.fresh(name)
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def layer(self, layer: Layer) -> None:
        kind, name = layer.kind, layer.name
        x = [self.tensor[i] for i in layer.inputs]
        fused = layer.activation is not None
        if kind in CONV_KINDS or kind in CONV_TRANSPOSE_KINDS or kind == "dense":
            inputs = [x[0], self.constant(f"{name}.weight", self.params[f"{name}.weight"])]
            if layer.bias:
                inputs.append(self.constant(f"{name}.bias", self.params[f"{name}.bias"]))
            if kind == "dense":
                out = self.node("Gemm", name, inputs, transB=1)
            elif kind in CONV_TRANSPOSE_KINDS:
                out = self.node("ConvTranspose", name, inputs, **_window_attributes(layer),
                                dilations=list(layer.dilation), group=int(layer.groups),
                                output_padding=list(layer.output_padding))
            else:
                out = self.node("Conv", name, inputs, **_window_attributes(layer), dilations=list(layer.dilation),
                                group=int(layer.groups))
            if fused:
                out = self.activation(layer.activation, f"{name}.{layer.activation}", out, layer.slope)
        elif kind in MAXPOOL_KINDS:
            out = self.node("MaxPool", name, x, **_window_attributes(layer), ceil_mode=int(layer.ceil))
        elif kind in AVGPOOL_KINDS:
            out = self.node("AveragePool", name, x, **_window_attributes(layer), ceil_mode=int(layer.ceil),
                            count_include_pad=int(layer.count_pad))
        elif kind in ("global_avgpool", "global_maxpool"):
            op = "GlobalAveragePool" if kind == "global_avgpool" else "GlobalMaxPool"
            pooled = self.node(op, f"{name}.pool", x)
            out = self.node("Flatten", name, [pooled], axis=1)  # (N, C, 1, 1) -> (N, C), cnnc's shape
        elif kind == "lrn":
            out = self.lrn(layer, x[0])
        elif kind == "channel_shuffle":
            # x: (N, C, *S) -> (N, g, C/g, *S) -> (N, C/g, g, *S) -> (N, C, *S)
            channels, spatial, groups = layer.in_shape[0], list(layer.in_shape[1:]), int(layer.groups)
            split = self.shape_constant(f"{name}.split_shape", [0, groups, channels // groups, *spatial])
            grouped = self.node("Reshape", f"{name}.split", [x[0], split])
            swapped = self.node("Transpose", f"{name}.swap", [grouped], perm=[0, 2, 1, *range(3, 3 + len(spatial))])
            back = self.shape_constant(f"{name}.shape", [0, channels, *spatial])
            out = self.node("Reshape", name, [swapped, back])
        elif kind == "flatten":
            out = self.node("Flatten", name, x, axis=1)
        elif kind == "dropout":
            ratio = self.constant(f"{name}.ratio", np.array(layer.rate, np.float32))
            out = self.node("Dropout", name, [x[0], ratio])
        elif kind == "batchnorm":
            stats = [self.constant(f"{name}.{role}", self.params[f"{name}.{role}"]) for role in ("weight", "bias")]
            stats += [self.constant(f"{name}.{role}", self.buffers[f"{name}.{role}"])
                      for role in ("running_mean", "running_var")]
            out = self.node("BatchNormalization", name, [x[0], *stats], epsilon=float(layer.eps),
                            momentum=float(1.0 - layer.momentum))
        elif kind == "add":
            out = self.node("Add" if len(x) == 2 else "Sum", name, x)
        elif kind == "concat":
            out = self.node("Concat", name, x, axis=1)
        elif kind in ONNX_ACTIVATIONS:
            out = self.activation(kind, name, x[0], layer.slope)
        else:
            raise AssertionError(f"export_onnx: unhandled layer kind {kind!r}")
        self.tensor[name] = out

    def lrn(self, layer: Layer, x: str) -> str:
        """LRN for an odd size (ONNX's window is PyTorch's then); for an even size the formula with ONNX's ops."""
        name, size = layer.name, int(layer.lrn_size)
        if size % 2 and len(layer.in_shape) == 3:
            return self.node("LRN", name, [x], size=size, alpha=float(layer.alpha), beta=float(layer.beta),
                             bias=float(layer.k))
        if size % 2:  # onnxruntime runs LRN on 4-D tensors only: (N, C, L) -> (N, C, L, 1) and back
            wide = self.node("Reshape", f"{name}.wide", [x, self.shape_constant(f"{name}.wide_shape",
                                                                                [0, *layer.in_shape, 1])])
            normed = self.node("LRN", f"{name}.lrn", [wide], size=size, alpha=float(layer.alpha),
                               beta=float(layer.beta), bias=float(layer.k))
            return self.node("Reshape", name, [normed, self.shape_constant(f"{name}.shape", [0, *layer.in_shape])])
        # x: (N, C, *S) -> squares viewed as (N, 1, C, P) (P positions), zero-padded by size//2 channels before and
        # (size-1)//2 after, averaged over `size` channels -> (N, C, *S): PyTorch's LocalResponseNorm
        channels, positions = layer.in_shape[0], int(np.prod(layer.in_shape[1:]))
        squares = self.node("Mul", f"{name}.square", [x, x])
        flat = self.node("Reshape", f"{name}.view", [squares, self.shape_constant(f"{name}.view_shape",
                                                                                  [0, 1, channels, positions])])
        pads = self.shape_constant(f"{name}.pads", [0, 0, size // 2, 0, 0, 0, (size - 1) // 2, 0])
        padded = self.node("Pad", f"{name}.pad", [flat, pads])
        mean = self.node("AveragePool", f"{name}.mean", [padded], kernel_shape=[size, 1])
        mean = self.node("Reshape", f"{name}.mean_shape", [mean, self.shape_constant(f"{name}.shape",
                                                                                     [0, *layer.in_shape])])
        scaled = self.node("Mul", f"{name}.scaled", [mean, self.constant(self.fresh(f"{name}.alpha"),
                                                                         np.array(layer.alpha, np.float32))])
        shifted = self.node("Add", f"{name}.shifted", [scaled, self.constant(self.fresh(f"{name}.k"),
                                                                             np.array(layer.k, np.float32))])
        power = self.node("Pow", f"{name}.power", [shifted, self.constant(self.fresh(f"{name}.beta"),
                                                                          np.array(layer.beta, np.float32))])
        return self.node("Div", name, [x, power])

    def activation(self, kind: str, name: str, x: str, slope: float) -> str:
        if kind == "leaky_relu":
            return self.node("LeakyRelu", name, [x], alpha=float(slope))
        if kind in ("softmax", "log_softmax"):
            return self.node(ONNX_ACTIVATIONS[kind], name, [x], axis=1)
        if kind == "hardsigmoid":  # PyTorch's relu6(x + 3) / 6, not ONNX's default slope 0.2
            return self.node("HardSigmoid", name, [x], alpha=1.0 / 6.0, beta=0.5)
        if kind == "relu6":
            low = self.constant(self.fresh(f"{name}.min"), np.array(0.0, np.float32))
            high = self.constant(self.fresh(f"{name}.max"), np.array(6.0, np.float32))
            return self.node("Clip", name, [x, low, high])
        if kind == "silu":
            gate = self.node("Sigmoid", f"{name}.sigmoid", [x])
            return self.node("Mul", name, [x, gate])
        if kind == "hardswish" and self.opset < 14:  # HardSwish is opset 14's; before, its formula
            gate = self.node("HardSigmoid", f"{name}.gate", [x], alpha=1.0 / 6.0, beta=0.5)
            return self.node("Mul", name, [x, gate])
        return self.node(ONNX_ACTIVATIONS[kind], name, [x])


def _window_attributes(layer: Layer) -> dict:
    return {"kernel_shape": list(layer.kernel), "strides": list(layer.stride),
            "pads": list(layer.pad_before) + list(layer.pad_after)}


def build_onnx(network: Network, params: dict[str, np.ndarray], buffers: dict[str, np.ndarray] | None = None,
               opset: int = OPSET):
    """The ONNX ModelProto of a network with the given parameters and buffers ({name: array}, PyTorch layouts;
    batch norm's running statistics are buffers: without them, the initial 0 and 1)."""
    onnx = require_onnx("onnx")
    if not 13 <= opset <= OPSET:
        raise CnncError(f"the ONNX export writes opsets 13 to {OPSET}; got {opset}")
    buffers = dict(buffers or {})
    for spec in network.buffer_specs:
        buffers.setdefault(spec.name, np.full(spec.shape, spec.fill, np.float32))
    g = _GraphBuilder(onnx, network, params, buffers, opset)
    for layer in network.layers:  # every network has a layer, and every layer writes a node
        g.layer(layer)
    output = g.tensor[network.layers[-1].name]
    FLOAT = onnx.TensorProto.FLOAT
    graph_input = onnx.helper.make_tensor_value_info(network.input_name, FLOAT, ["N", *network.input_shape])
    graph_output = onnx.helper.make_tensor_value_info(output, FLOAT, ["N", *network.output_shape])
    graph = onnx.helper.make_graph(g.nodes, network.name, [graph_input], [graph_output], g.initializers,
                                   doc_string=f"cnnc model {network.name}: input {list(network.input_shape)} -> "
                                              f"output {list(network.output_shape)} per sample")
    from ._version import __version__

    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="cnnc", producer_version=__version__, ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(model, path) -> None:
    """Write `model` (a cnnc Model with its weights) to an .onnx file, atomically."""
    from .export_c import network_and_params

    network, params = network_and_params(model)
    if os.path.isdir(os.fspath(path)):
        raise CnncError(f"{os.fspath(path)}: is a directory; the ONNX export writes one file, "
                        f"e.g. -o {network.name}.onnx")

    buffers = dict(getattr(model, "buffers", None) or {})
    atomic_write_bytes(path, build_onnx(network, params, buffers).SerializeToString())


__all__ = ["export_onnx", "build_onnx", "require_onnx", "OPSET", "INSTALL_HINT"]
