"""ONNX export and re-import of graph models (issue 15): every spec in specs/, the graphs included, exports
at opsets 13 and 17, passes onnx.checker's full check, runs in onnxruntime with the same outputs as the
NumPy backend in inference mode (batch norm with its running statistics), and imports back to a model
that computes the same."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.frontend import networks_from_file
from cnnc.ir import ACTIVATIONS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from cnnc.export_onnx import build_onnx, export_onnx  # noqa: E402
from cnnc.import_onnx import import_onnx  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs"
MODELS = [(path, net.name) for path in sorted(SPECS.glob("*.cnn")) for net in networks_from_file(path)]
GRAPHS = ("resnet8", "mobilenet_small", "inception_small")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-30))


def trained_looking(path, name, seed):
    """A model whose biases and running statistics are away from their initial 0 and 1."""
    m = cnnc.load(path, model=name, seed=seed)
    rng = np.random.default_rng(seed)
    for key, value in m.buffers.items():
        value[...] = rng.uniform(0.5, 1.5, value.shape) if key.endswith("var") else rng.normal(0, 0.2, value.shape)
    for key, value in m.params.items():
        if not key.endswith(".weight"):
            value[...] = rng.normal(0.0, 0.5, value.shape)
        elif len(value.shape) == 1:  # batch norm's scale
            value[...] = rng.uniform(0.5, 1.5, value.shape)
    return m


def layer_kinds(network):
    """The layers' kinds and activations, with an activation statement after a conv or dense layer counted as
    fused (the importer fuses it: the same arithmetic)."""
    kinds = []
    for layer in network.layers:
        if layer.kind in ACTIVATIONS and kinds and kinds[-1][0] in ("conv1d", "conv2d", "dense") and \
                kinds[-1][1] is None and len(network.consumers(layer.inputs[0])) == 1:
            kinds[-1] = (kinds[-1][0], layer.kind)
        else:
            kinds.append((layer.kind, layer.activation))
    return kinds


def run(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})[0]


def test_the_graph_specs_are_among_the_models():
    assert set(GRAPHS) <= {name for _, name in MODELS}


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("path,name", MODELS, ids=[name for _, name in MODELS])
def test_every_spec_exports_and_matches_onnxruntime(path, name, opset):
    m = trained_looking(path, name, seed=len(name))
    proto = build_onnx(m.network, m.params, m.buffers, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", opset)]
    ops = {node.op_type for node in proto.graph.node}
    kinds = {layer.kind for layer in m.network.layers} | {layer.activation for layer in m.network.layers}
    if "batchnorm" in kinds:
        assert "BatchNormalization" in ops
        names = {t.name for t in proto.graph.initializer}
        assert {b.name for b in m.network.buffer_specs} <= names  # the running statistics travel
    if "hardswish" in kinds:
        assert ("HardSwish" in ops) == (opset >= 14) and ("HardSigmoid" in ops) == (opset < 14)
    if any(layer.groups > 1 for layer in m.network.layers):
        assert any(a.name == "group" and a.i > 1 for node in proto.graph.node for a in node.attribute)
    rng = np.random.default_rng(opset)
    for batch in (1, 4):
        x = rng.standard_normal((batch, *m.input_shape)).astype(np.float32)
        y = run(proto, x)
        assert y.shape == (batch, *m.output_shape)
        assert rel_err(y, m.forward(x)) < 1e-5, f"{name} at opset {opset}"


def test_dotted_block_names_are_sanitised_and_unique():
    m = trained_looking(SPECS / "resnet8.cnn", "resnet8", seed=0)
    proto = build_onnx(m.network, m.params, m.buffers)
    names = [node.name for node in proto.graph.node]
    assert len(set(names)) == len(names) and all("." not in n for n in names)
    assert "s2_proj" in names and "s2_sum" in names
    add = next(node for node in proto.graph.node if node.name == "s2_sum")
    assert add.op_type == "Add" and list(add.input) == ["s2_bn2", "s2_proj_bn"]  # the from= wiring


@pytest.mark.parametrize("path,name", MODELS, ids=[name for _, name in MODELS])
def test_every_spec_round_trips_through_import(path, name, tmp_path):
    """export -> import -> `cnnc check` accepts it -> the imported model (its buffers included) computes the same."""
    from cnnc.cli import main

    m = trained_looking(path, name, seed=len(name) + 1)
    export_onnx(m, tmp_path / f"{name}.onnx")
    network, weights = import_onnx(tmp_path / f"{name}.onnx", tmp_path / f"{name}.cnn")
    assert main(["check", str(tmp_path / f"{name}.cnn")]) == 0
    assert "momentum=" not in (tmp_path / f"{name}.cnn").read_text()  # ONNX's 0.9 is PyTorch's default 0.1
    back = cnnc.load(tmp_path / f"{name}.cnn")
    back.load_weights(tmp_path / f"{name}.npz")
    assert back.name == name and back.network.param_count == m.network.param_count
    assert sum(b.size for b in back.network.buffer_specs) == sum(b.size for b in m.network.buffer_specs)
    assert layer_kinds(back.network) == layer_kinds(m.network)
    x = np.random.default_rng(5).standard_normal((3, *m.input_shape)).astype(np.float32)
    assert rel_err(back.forward(x), m.forward(x)) < 1e-6
