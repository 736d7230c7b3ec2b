"""IR + weights -> an ONNX model: `cnnc export --format onnx`.

    export_onnx(model, "lenet5.onnx")      # model: a cnnc Model with its weights loaded

One ONNX node per cnnc layer (plus one for a fused activation, and a Flatten after global average
pooling, whose ONNX output keeps its 1x1 spatial axes), opset 17, float32, with a dynamic batch
dimension "N". Parameters are initializers named like cnnc's parameters ("c1.weight"), in the same
(PyTorch) layouts, so nothing is transposed:

    conv1d/conv2d    Conv(x, weight[, bias]), pads = [begin per axis..., end per axis...]
    maxpool*         MaxPool (padding never wins), avgpool* AveragePool(count_include_pad=1)
    global_avgpool   GlobalAveragePool then Flatten(axis=1)
    flatten          Flatten(axis=1): C, H, W order, the same as cnnc's
    dense            Gemm(x, weight, bias, transB=1): weight is (units, inputs)
    dropout          Dropout(x, ratio): the identity at inference, kept so the rate survives a round trip
    activations      Relu, Sigmoid, Tanh, LeakyRelu(alpha=slope), Softmax(axis=1)

onnx and onnxruntime are optional: without them these functions raise a CnncError that says how to
install them.
"""
from __future__ import annotations

import os

import numpy as np

from .diagnostics import CnncError
from .fileio import atomic_write_bytes
from .ir import AVGPOOL_KINDS, CONV_KINDS, MAXPOOL_KINDS, Layer, Network, chain_only_refusal

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17: readable by every onnxruntime since 1.11
INSTALL_HINT = "pip install 'cnnc[onnx]'"
ONNX_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "leaky_relu": "LeakyRelu",
                    "softmax": "Softmax"}


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
    """Collects nodes and initializers while the layers are walked in order."""

    def __init__(self, onnx, network: Network, params: dict[str, np.ndarray]):
        self.onnx, self.helper = onnx, onnx.helper
        self.network, self.params = network, params
        self.nodes, self.initializers = [], []
        self.current = network.input_name  # the name of the tensor the next node reads

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.array(value, dtype=np.float32, order="C"), name))
        return name

    def node(self, op: str, name: str, inputs: list[str], **attributes) -> str:
        output = name
        self.nodes.append(self.helper.make_node(op, [self.current, *inputs], [output], name=name, **attributes))
        self.current = output
        return output

    def layer(self, layer: Layer) -> None:
        kind, name = layer.kind, layer.name
        if kind in CONV_KINDS or kind == "dense":
            inputs = [self.constant(f"{name}.weight", self.params[f"{name}.weight"])]
            if layer.bias:
                inputs.append(self.constant(f"{name}.bias", self.params[f"{name}.bias"]))
            if kind == "dense":
                self.node("Gemm", name, inputs, transB=1)
            else:
                self.node("Conv", name, inputs, **_window_attributes(layer), dilations=list(layer.dilation), group=1)
            if layer.activation:
                self.activation(layer.activation, f"{name}.{layer.activation}", layer.slope)
        elif kind in MAXPOOL_KINDS:
            self.node("MaxPool", name, [], **_window_attributes(layer))
        elif kind in AVGPOOL_KINDS:
            self.node("AveragePool", name, [], **_window_attributes(layer), count_include_pad=1)
        elif kind == "global_avgpool":
            self.node("GlobalAveragePool", f"{name}.pool", [])
            self.node("Flatten", name, [], axis=1)  # (N, C, 1, 1) -> (N, C), cnnc's shape
        elif kind == "flatten":
            self.node("Flatten", name, [], axis=1)
        elif kind == "dropout":
            ratio = self.constant(f"{name}.ratio", np.array(layer.rate, np.float32))
            self.node("Dropout", name, [ratio])
        elif kind in ONNX_ACTIVATIONS:
            self.activation(kind, name, layer.slope)
        else:
            raise AssertionError(f"export_onnx: unhandled layer kind {kind!r}")

    def activation(self, kind: str, name: str, slope: float) -> None:
        if kind == "leaky_relu":
            self.node("LeakyRelu", name, [], alpha=float(slope))
        elif kind == "softmax":
            self.node("Softmax", name, [], axis=1)
        else:
            self.node(ONNX_ACTIVATIONS[kind], name, [])


def _window_attributes(layer: Layer) -> dict:
    return {"kernel_shape": list(layer.kernel), "strides": list(layer.stride),
            "pads": list(layer.pad_before) + list(layer.pad_after)}


def build_onnx(network: Network, params: dict[str, np.ndarray]):
    """The ONNX ModelProto of a network with the given parameters ({name: array}, PyTorch layouts)."""
    refusal = chain_only_refusal(network, "the ONNX export")
    if refusal:  # graphs and the layer kinds of issue #14 are the next issue's
        raise CnncError(f"model '{network.name}': {refusal}")
    onnx = require_onnx("onnx")
    g = _GraphBuilder(onnx, network, params)
    for layer in network.layers:  # every network has a layer, and every layer writes a node
        g.layer(layer)
    FLOAT = onnx.TensorProto.FLOAT
    graph_input = onnx.helper.make_tensor_value_info(network.input_name, FLOAT, ["N", *network.input_shape])
    graph_output = onnx.helper.make_tensor_value_info(g.current, FLOAT, ["N", *network.output_shape])
    graph = onnx.helper.make_graph(g.nodes, network.name, [graph_input], [graph_output], g.initializers,
                                   doc_string=f"cnnc model {network.name}: input {list(network.input_shape)} -> "
                                              f"output {list(network.output_shape)} per sample")
    from ._version import __version__

    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
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

    atomic_write_bytes(path, build_onnx(network, params).SerializeToString())


__all__ = ["export_onnx", "build_onnx", "require_onnx", "OPSET", "INSTALL_HINT"]
