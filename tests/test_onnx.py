"""ONNX export and import: every spec round-trips (cnnc -> ONNX -> onnxruntime -> cnnc), graphs written by
PyTorch's exporter and by onnx.helper import, unsupported graphs are refused naming the node, and a
missing `onnx` package is a clear error."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.cli import main
from cnnc.diagnostics import CnncError
from cnnc.frontend import networks_from_file

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cnnc.export_onnx import OPSET, export_onnx  # noqa: E402
from cnnc.import_onnx import import_onnx  # noqa: E402

from conftest import SPECS
EXTRA_SPECS = """
model kitchen {
    input x[2, 9, 10]
    conv2d a(filters=3, kernel=(2, 3), padding=same, activation=leaky_relu, slope=0.2)
    avgpool2d ap(size=3, stride=2, padding=1)
    conv2d b(filters=4, kernel=2, stride=(1, 2), bias=false, activation=tanh)
    maxpool2d(size=(2, 1), padding=(1, 0))
    leaky_relu(slope=0.05)
    flatten
    dense d(units=7, bias=false, activation=sigmoid)
    dropout(rate=0.5)
    dense e(units=5)
    tanh
    softmax
}
model kitchen1d {
    input s[2, 17]
    conv1d c(filters=3, kernel=4, padding=same, dilation=2)
    avgpool1d(size=2, padding=1)
    sigmoid
    global_avgpool
    softmax
}
model newkinds2d {
    input x[4, 12, 11]
    conv2d a(filters=6, kernel=3, stride=2, padding=((0, 1), (1, 1)), activation=elu)
    lrn(size=3, alpha=0.001, beta=0.6, k=2.0)
    channel_shuffle(groups=3)
    maxpool2d(size=3, stride=2, ceil=true)
    conv_transpose2d t(filters=4, kernel=3, stride=2, padding=1, output_padding=1, groups=2, activation=selu)
    avgpool2d(size=3, stride=2, padding=1, count_pad=false, ceil=true)
    hardsigmoid
    global_maxpool
    dense d(units=5, activation=log_softmax)
}
model newkinds1d {
    input s[3, 20]
    conv_transpose1d t(filters=4, kernel=4, stride=2, padding=1, dilation=2, activation=hardsigmoid)
    selu
    avgpool1d(size=4, stride=3, padding=(2, 1), count_pad=false)
    elu
    maxpool1d(size=3, padding=(1, 0), ceil=true)
    lrn(size=5)
    global_avgpool
    dense d(units=3)
    log_softmax
    loss nll
}
"""
# issue 15's kinds, each in the specs above: exported and imported back as themselves
NEW_KINDS = {"conv_transpose1d", "conv_transpose2d", "lrn", "channel_shuffle", "global_maxpool", "elu", "selu",
             "hardsigmoid", "log_softmax"}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-30))


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})[0]


def all_models(tmp_path_factory) -> list[tuple[Path, str]]:
    extra = tmp_path_factory.getbasetemp() / "onnx_extra.cnn"
    extra.write_text(EXTRA_SPECS)
    return [(path, net.name) for path in sorted(SPECS.glob("*.cnn")) + [extra] for net in networks_from_file(path)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return all_models(tmp_path_factory)


def layer_kinds(network) -> set[str]:
    """The kinds and activations (a standalone activation after a dense layer imports as its activation=)."""
    return {layer.kind for layer in network.layers} | {layer.activation for layer in network.layers} - {None}


def window_geometry(network) -> list[tuple]:
    return [(layer.kind, layer.kernel, layer.stride, layer.dilation, layer.pad_before, layer.pad_after, layer.ceil,
             layer.count_pad, layer.output_padding, layer.groups) for layer in network.layers if layer.kernel]


def test_every_spec_round_trips_through_onnx(models, tmp_path, capsys):
    """export (CLI) -> checker -> onnxruntime at two batch sizes -> import (CLI) -> cnnc check -> same outputs."""
    failures, seen = [], set()
    for seed, (path, name) in enumerate(models):
        m = cnnc.load(path, model=name, seed=seed)
        rng = np.random.default_rng(seed)
        for key, p in m.params.items():
            if key.endswith(".bias"):
                p[...] = rng.normal(0.0, 0.5, p.shape)
        m.save(tmp_path / f"{name}.npz")
        onnx_path = tmp_path / f"{name}.onnx"
        assert main(["export", str(path), "--model", name, "--weights", str(tmp_path / f"{name}.npz"),
                     "--format", "onnx", "-o", str(onnx_path)]) == 0
        proto = onnx.load(str(onnx_path))
        onnx.checker.check_model(proto, full_check=True)
        assert [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)]
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # a dynamic batch
        for batch in (1, 4):
            x = rng.standard_normal((batch, *m.input_shape)).astype(np.float32)
            y = run_onnx(onnx_path, x)
            if y.shape != (batch, *m.output_shape) or rel_err(y, m.forward(x)) > 1e-5:
                failures.append(f"{name}: onnxruntime gives {y.shape}, relative error {rel_err(y, m.forward(x)):.1e}")
        cnn_path = tmp_path / f"{name}_imported.cnn"
        assert main(["import", str(onnx_path), "-o", str(cnn_path)]) == 0
        assert main(["check", str(cnn_path)]) == 0
        back = cnnc.load(cnn_path)
        back.load_weights(tmp_path / f"{name}_imported.npz")
        # a block instance's layer s1.c1 exports as s1_c1 (ONNX names), and imports back so
        flat_names = sorted(key.rsplit(".", 1)[0].replace(".", "_") + "." + key.rsplit(".", 1)[1] for key in m.params)
        assert back.name == name and sorted(back.params) == flat_names
        x = rng.standard_normal((3, *m.input_shape)).astype(np.float32)
        if back.output_shape != m.output_shape or rel_err(back.forward(x), m.forward(x)) > 1e-6:
            failures.append(f"{name}: the imported model computes something else")
        kinds, geometry = layer_kinds(m.network), window_geometry(m.network)
        if layer_kinds(back.network) != kinds or window_geometry(back.network) != geometry:
            failures.append(f"{name}: the imported model has other layers or windows")
        seen |= kinds
    capsys.readouterr()
    assert not failures, "\n".join(failures)
    assert len(models) == 15 and NEW_KINDS <= seen
    assert any(layer.ceil for path, name in models for layer in cnnc.load(path, model=name).network.layers)


def test_imported_file_is_readable_cnn(tmp_path):
    m = cnnc.load(SPECS / "signal1d.cnn")
    export_onnx(m, tmp_path / "s.onnx")
    import_onnx(tmp_path / "s.onnx", tmp_path / "s.cnn")
    text = (tmp_path / "s.cnn").read_text()
    assert "model signal1d {" in text and "input signal[3, 128]" in text
    assert "conv1d c2(filters=32, kernel=5, stride=2, padding=2, activation=relu)" in text
    assert "maxpool1d p1(size=2)" in text and "dropout(rate=0.2)" in text and "# -> [32, 32]" in text


def torch_exported(tmp_path, module, example, name):
    torch = pytest.importorskip("torch")
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return path


def test_a_graph_written_by_pytorch_imports_and_computes_the_same(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net2d = nn.Sequential(nn.Conv2d(2, 4, (2, 3), padding="same"), nn.LeakyReLU(0.2), nn.AvgPool2d(3, 2, padding=1),
                          nn.Conv2d(4, 3, 3, bias=False), nn.Tanh(), nn.MaxPool2d(2, padding=1), nn.Flatten(),
                          nn.Dropout(0.3), nn.Linear(18, 8, bias=False), nn.Sigmoid(), nn.Linear(8, 5), nn.Softmax(dim=1))
    net1d = nn.Sequential(nn.Conv1d(3, 4, 5, padding=2, stride=2, dilation=1), nn.ReLU(), nn.MaxPool1d(3, 2),
                          nn.Conv1d(4, 6, 3, dilation=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, 2))
    for name, module, shape in (("torch2d", net2d, (2, 11, 10)), ("torch1d", net1d, (3, 40))):
        x = torch.randn(5, *shape)
        path = torch_exported(tmp_path, module, x[:1], name)
        network, weights = import_onnx(path, tmp_path / f"{name}.cnn")
        assert main(["check", str(tmp_path / f"{name}.cnn")]) == 0
        m = NumpyModel(network)
        m.load_weights(weights)
        with torch.no_grad():
            want = module(x).numpy()
        assert network.name == name  # the graph's generic name gives way to the file's
        assert rel_err(m.forward(x.numpy()), want) < 1e-5, name
    text = (tmp_path / "torch2d.cnn").read_text()
    assert "conv2d conv1(filters=4, kernel=(2, 3), padding=same, activation=leaky_relu, slope=0.2)" in text
    assert "dense fc1(units=8, bias=false, activation=sigmoid)" in text  # from a MatMul without bias
    assert "dense fc2(units=5, activation=softmax)" in text


# ---- graphs built with onnx.helper ----------------------------------------------------------------------
def make_graph(nodes, inits: dict, in_shape, out_shape, opset=OPSET):
    graph = helper.make_graph(nodes, "handmade", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_a_handmade_graph_with_matmul_add_reshape_and_auto_pad_imports(tmp_path):
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"w1": f32(4, 2, 3, 3), "w2": f32(4, 4, 2, 2), "b2": f32(4), "shape": np.array([0, -1], np.int64),
             "ratio": np.array(0.25, np.float32), "m": f32(4, 6), "bias": f32(6), "g": f32(6, 3), "c": f32(1, 3)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="first", auto_pad="SAME_UPPER", strides=[2, 2]),  # (4, 5, 5)
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="second", pads=[1, 1, 1, 1]),  # (4, 6, 6)
        helper.make_node("GlobalAveragePool", ["c2"], ["g1"]),  # (4, 1, 1): the Reshape after it is cnnc's no-op
        helper.make_node("Reshape", ["g1", "shape"], ["flat4"]),
        helper.make_node("Identity", ["flat4"], ["flat"]),
        helper.make_node("Dropout", ["flat", "ratio"], ["d"], name="drop"),
        helper.make_node("Constant", [], ["four"], value=numpy_helper.from_array(np.array([-1, 4], np.int64))),
        helper.make_node("Reshape", ["d", "four"], ["d2"]),  # already flat: nothing to write
        helper.make_node("MatMul", ["d2", "m"], ["mm"], name="/fc/MatMul"),
        helper.make_node("Add", ["mm", "bias"], ["a"]),
        helper.make_node("Tanh", ["a"], ["t"]),
        helper.make_node("Gemm", ["t", "g", "c"], ["y"], name="head", alpha=0.5, beta=2.0, transB=0),
    ]
    model = make_graph(nodes, inits, (2, 9, 9), (3,))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "hand.onnx"))
    network, weights = import_onnx(tmp_path / "hand.onnx", tmp_path / "hand.cnn")
    text = (tmp_path / "hand.cnn").read_text()
    assert "conv2d first(filters=4, kernel=3, stride=2, padding=1, bias=false, activation=relu)" in text
    assert "dense fc(units=6, activation=tanh)" in text and "dropout drop(rate=0.25)" in text
    assert [layer.kind for layer in network.layers] == ["conv2d", "conv2d", "global_avgpool", "dropout", "dense", "dense"]
    m = NumpyModel(network)
    m.load_weights(weights)
    x = f32(3, 2, 9, 9)
    assert rel_err(m.forward(x), run_onnx(tmp_path / "hand.onnx", x)) < 1e-5


# ---- refusals --------------------------------------------------------------------------------------------
def conv_then(node, extra_inits=None, out_shape=(2, 4, 4)):
    rng = np.random.default_rng(1)
    inits = {"w": rng.standard_normal((2, 1, 3, 3)).astype(np.float32), **(extra_inits or {})}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), node]
    return make_graph(nodes, inits, (1, 4, 4), out_shape)


@pytest.mark.parametrize("model, phrase", [
    (conv_then(helper.make_node("LogSoftmax", ["c"], ["y"], name="logp", axis=1)),
     "node 'logp' (LogSoftmax): log_softmax normalises flat class scores; its input is (N, 2, 4, 4)"),
    (conv_then(helper.make_node("Add", ["c", "k"], ["y"], name="shift"), {"k": np.ones((4, 1), np.float32)}),
     "node 'shift' (Add): the added constant has shape (4, 1)"),
    (conv_then(helper.make_node("ConvTranspose", ["c", "w2"], ["y"], name="up", pads=[0, 0, 1, 1]),
               {"w2": np.ones((2, 2, 3, 3), np.float32)}, (2, 5, 5)),
     "node 'up' (ConvTranspose): its padding (begin [0, 0], end [1, 1]) crops more at the end than at the start"),
    (conv_then(helper.make_node("ConvTranspose", ["c", "w2"], ["y"], name="up2", strides=[2, 2],
                                output_padding=[1, 1], pads=[2, 2, 0, 0]),
               {"w2": np.ones((2, 2, 3, 3), np.float32)}, (2, 8, 8)),
     "node 'up2' (ConvTranspose): it needs output_padding [3, 3]"),
    (conv_then(helper.make_node("Transpose", ["c"], ["y"], name="nhwc", perm=[0, 2, 3, 1]), out_shape=(4, 4, 2)),
     "node 'nhwc' (Transpose): it transposes (N, 2, 4, 4); cnnc layers keep the (N, C, H, W) layout"),
    (conv_then(helper.make_node("Elu", ["c"], ["y"], name="elu2", alpha=2.0)),
     "node 'elu2' (Elu): Elu(alpha=2.0): the language's elu has alpha 1"),
    (conv_then(helper.make_node("LRN", ["c"], ["y"], name="even", size=2)),
     "node 'even' (LRN): size=2: ONNX's LRN window for an even size"),
    (conv_then(helper.make_node("Conv", ["c", "w2"], ["y"], name="grouped", group=2),
               {"w2": np.ones((2, 2, 1, 1), np.float32)}), "expects 4 input channels (2 per group, group=2)"),
    (conv_then(helper.make_node("HardSigmoid", ["c"], ["y"], name="hs")),
     "node 'hs' (HardSigmoid): HardSigmoid(alpha=0.2, beta=0.5) is not PyTorch's hardsigmoid"),
    (conv_then(helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip"),
               {"lo": np.array(-1, np.float32), "hi": np.array(1, np.float32)}), "it clips to [-1.0, 1.0]"),
    (conv_then(helper.make_node("Mul", ["c", "c"], ["y"], name="square")),
     "node 'square' (Mul): cnnc imports Mul only"),
    (conv_then(helper.make_node("Reshape", ["c", "s"], ["y"], name="bad_shuffle"),
               {"s": np.array([1, 2, 1, 4, 4], np.int64)}, (2, 1, 4, 4)),
     "node 'bad_shuffle' (Reshape): it reshapes (N, 2, 4, 4) to [1, 2, 1, 4, 4]; cnnc imports a reshape to 5 axes "
     "only as the start of a channel shuffle"),
])
def test_unsupported_graphs_are_refused_naming_node_and_operator(model, phrase, tmp_path, capsys):
    onnx.save(model, str(tmp_path / "bad.onnx"))
    assert main(["import", str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "bad.cnn")]) == 1
    err = capsys.readouterr().err
    assert phrase in err and str(tmp_path / "bad.onnx") in err
    assert "Traceback" not in err and not (tmp_path / "bad.cnn").exists() and not (tmp_path / "bad.npz").exists()


def test_a_file_that_is_not_onnx_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01not a model at all\xff" * 10)
    assert main(["import", str(tmp_path / "junk.onnx"), "-o", str(tmp_path / "j.cnn")]) == 1
    assert "not a readable ONNX model" in capsys.readouterr().err


def test_missing_onnx_package_names_the_install_command(tmp_path, monkeypatch, capsys):
    m = cnnc.load(SPECS / "worked_1d.cnn")
    m.save(tmp_path / "w.npz")
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(CnncError, match=r"pip install 'cnnc\[onnx\]'"):
        export_onnx(m, tmp_path / "m.onnx")
    with pytest.raises(CnncError, match=r"pip install 'cnnc\[onnx\]'"):
        import_onnx(tmp_path / "m.onnx", tmp_path / "m.cnn")
    code = main(["export", str(SPECS / "worked_1d.cnn"), "--weights", str(tmp_path / "w.npz"), "--format", "onnx",
                 "-o", str(tmp_path / "m.onnx")])
    assert code == 1 and "pip install 'cnnc[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


# ---- the two silent wrong results of issue 15 -------------------------------------------------------------
def test_an_add_of_a_units_by_1_constant_after_matmul_is_refused_not_taken_for_a_bias(tmp_path, capsys):
    """ONNX broadcasts (N, 3) + (3, 1) to (3, 3) (for N = 1 or 3): not a per-unit bias. It used to import as one."""
    rng = np.random.default_rng(2)
    inits = {"m": rng.standard_normal((4, 3)).astype(np.float32), "col": rng.standard_normal((3, 1)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "m"], ["mm"], name="fc"),
             helper.make_node("Add", ["mm", "col"], ["y"], name="plus")]
    onnx.save(make_graph(nodes, inits, (4,), (3,)), str(tmp_path / "col.onnx"))
    assert main(["import", str(tmp_path / "col.onnx"), "-o", str(tmp_path / "col.cnn")]) == 1
    err = capsys.readouterr().err
    assert "node 'plus' (Add): the added constant has shape (3, 1)" in err and "one value per channel (3)" in err
    assert not (tmp_path / "col.cnn").exists()


@pytest.mark.parametrize("bias_shape, bias_first", [((3,), False), ((1, 3), True), ((1,), False)])
def test_per_unit_and_per_channel_bias_adds_import_in_either_operand_order(bias_shape, bias_first, tmp_path):
    rng = np.random.default_rng(3)
    inits = {"w": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
             "cb": rng.standard_normal((1, 3, 1, 1) if bias_shape != (1,) else (1,)).astype(np.float32),
             "m": rng.standard_normal((48, 3)).astype(np.float32),
             "b": rng.standard_normal(bias_shape).astype(np.float32),
             "shape": np.array([-1, 48], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["cb", "c"] if bias_first else ["c", "cb"], ["cc"], name="conv_bias"),
             helper.make_node("Reshape", ["cc", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "m"], ["mm"], name="fc"),
             helper.make_node("Add", ["b", "mm"] if bias_first else ["mm", "b"], ["y"], name="fc_bias")]
    onnx.save(make_graph(nodes, inits, (2, 4, 4), (3,)), str(tmp_path / "bias.onnx"))
    network, weights = import_onnx(tmp_path / "bias.onnx", tmp_path / "bias.cnn")
    assert [layer.kind for layer in network.layers] == ["conv2d", "flatten", "dense"]
    assert all(layer.bias for layer in network.layers if layer.params)
    m = NumpyModel(network)
    m.load_weights(weights)
    x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    assert rel_err(m.forward(x), run_onnx(tmp_path / "bias.onnx", x)) < 1e-5


@pytest.mark.parametrize("last", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pooling_as_the_last_node_keeps_onnx_s_unit_axes(last, tmp_path):
    """ONNX gives (N, C, 1, 1); cnnc's global_avgpool gives (N, C), which used to be imported as the output.
    Now the pooling is a window over the whole input, whose output is exactly (C, 1, 1)."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node(last, ["c"], ["y"])]
    model = make_graph(nodes, {"w": rng.standard_normal((3, 2, 3, 3)).astype(np.float32)}, (2, 7, 6), (3, 1, 1))
    onnx.save(model, str(tmp_path / "gap.onnx"))
    network, weights = import_onnx(tmp_path / "gap.onnx", tmp_path / "gap.cnn")
    assert network.output_shape == (3, 1, 1)
    m = NumpyModel(network)
    m.load_weights(weights)
    x = rng.standard_normal((2, 2, 7, 6)).astype(np.float32)
    want = run_onnx(tmp_path / "gap.onnx", x)
    assert want.shape == m.forward(x).shape == (2, 3, 1, 1) and rel_err(m.forward(x), want) < 1e-5


def test_the_import_is_checked_against_onnxruntime_before_anything_is_written(tmp_path, monkeypatch):
    """A wrong translation is caught by the comparison with onnxruntime: simulated by a Relu written as tanh."""
    import cnnc.import_onnx as importer

    m = cnnc.load(SPECS / "lenet5.cnn")
    export_onnx(m, tmp_path / "l.onnx")
    monkeypatch.setattr(importer.Importer, "_Relu", lambda self, node: self._activation(node, "tanh", {}))
    with pytest.raises(CnncError, match="computes something else than onnxruntime"):
        import_onnx(tmp_path / "l.onnx", tmp_path / "l.cnn")
    assert not (tmp_path / "l.cnn").exists() and not (tmp_path / "l.npz").exists()
    import_onnx(tmp_path / "l.onnx", tmp_path / "l.cnn", verify=False)  # the check can be skipped
    assert (tmp_path / "l.cnn").exists()


@pytest.mark.parametrize("name, node, out_shape, written", [
    ("same_upper_pool", helper.make_node("MaxPool", ["c"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                                         auto_pad="SAME_UPPER"), (2, 2, 2), "padding=((0, 1), (0, 1))"),
    ("lopsided_conv", helper.make_node("Conv", ["c", "w2"], ["y"], name="lopsided", pads=[0, 2, 1, 1]),
     (2, 3, 5), "padding=((0, 1), (2, 1))"),
    ("avg_without_pad", helper.make_node("AveragePool", ["c"], ["y"], name="avg", kernel_shape=[3, 3],
                                         pads=[1, 1, 1, 1]), (2, 4, 4), "count_pad=false"),
    ("ceil_pool", helper.make_node("AveragePool", ["c"], ["y"], name="avg", kernel_shape=[3, 3], strides=[2, 2],
                                   ceil_mode=1), (2, 2, 2), "ceil=true"),
    ("lrn", helper.make_node("LRN", ["c"], ["y"], name="norm", size=3, alpha=0.02, beta=0.5, bias=2.0), (2, 4, 4),
     "lrn norm(size=3, alpha=0.02, beta=0.5, k=2.0)"),
    ("deconv", helper.make_node("ConvTranspose", ["c", "w2"], ["y"], name="up", strides=[2, 2], pads=[1, 1, 0, 0]),
     (2, 8, 8), "conv_transpose2d up(filters=2, kernel=3, stride=2, padding=1, output_padding=1, bias=false)"),
    ("deconv_output_shape", helper.make_node("ConvTranspose", ["c", "w2"], ["y"], name="up", strides=[2, 2],
                                             output_shape=[8, 8]), (2, 8, 8), "output_padding=1"),
    ("selu", helper.make_node("Selu", ["c"], ["y"], name="s"), (2, 4, 4), "activation=selu"),
])
def test_formerly_refused_nodes_import_and_agree_with_onnxruntime(name, node, out_shape, written, tmp_path):
    """Asymmetric padding (auto_pad SAME at a stride, explicit), count_include_pad=0, ceil_mode, LRN, ConvTranspose
    (pads begin > end, output_shape) and the new activations, each after a convolution."""
    model = conv_then(node, {"w2": np.random.default_rng(5).standard_normal((2, 2, 3, 3)).astype(np.float32)},
                      out_shape)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / f"{name}.onnx"))
    network, weights = import_onnx(tmp_path / f"{name}.onnx", tmp_path / f"{name}.cnn")
    assert written in (tmp_path / f"{name}.cnn").read_text()
    m = NumpyModel(network)
    m.load_weights(weights)
    x = np.random.default_rng(6).standard_normal((3, 1, 4, 4)).astype(np.float32)
    want = run_onnx(tmp_path / f"{name}.onnx", x)
    assert m.forward(x).shape == want.shape and rel_err(m.forward(x), want) < 1e-5


@pytest.mark.parametrize("size", [2, 4])
def test_an_even_size_lrn_exports_as_its_formula(size, tmp_path, capsys):
    """ONNX's LRN window for an even size is one channel off PyTorch's (the language's): the export writes the
    formula instead, which onnxruntime computes as cnnc does; the import refuses the formula's Mul of two tensors."""
    spec = tmp_path / "even.cnn"
    spec.write_text(f"model even {{\n    input x[5, 3, 4]\n    conv2d c(filters=6, kernel=1)\n    lrn(size={size}, "
                    f"alpha=0.5, beta=0.8, k=1.5)\n}}\n")
    m = cnnc.load(spec, seed=1)
    export_onnx(m, tmp_path / "even.onnx")
    assert "LRN" not in {node.op_type for node in onnx.load(str(tmp_path / "even.onnx")).graph.node}
    x = np.random.default_rng(2).standard_normal((3, 5, 3, 4)).astype(np.float32) * 2
    assert rel_err(run_onnx(tmp_path / "even.onnx", x), m.forward(x)) < 1e-5
    with pytest.raises(CnncError, match=r"\(Mul\): cnnc imports Mul only"):
        import_onnx(tmp_path / "even.onnx", tmp_path / "even_back.cnn")


@pytest.mark.parametrize("opset", [13, 15])
def test_the_new_kinds_export_at_older_opsets(opset, tmp_path_factory, tmp_path):
    """The specs using issue 15's kinds at opsets 13 and 15 too: checked, run in onnxruntime, imported back."""
    from cnnc.export_onnx import build_onnx

    extra = tmp_path_factory.getbasetemp() / "onnx_new_kinds.cnn"
    extra.write_text(EXTRA_SPECS)
    for name in ("newkinds2d", "newkinds1d"):
        m = cnnc.load(extra, model=name, seed=opset)
        proto = build_onnx(m.network, m.params, opset=opset)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp_path / f"{name}.onnx"))
        x = np.random.default_rng(opset).standard_normal((2, *m.input_shape)).astype(np.float32)
        assert rel_err(run_onnx(tmp_path / f"{name}.onnx", x), m.forward(x)) < 1e-5
        network, weights = import_onnx(tmp_path / f"{name}.onnx", tmp_path / f"{name}.cnn")
        assert window_geometry(network) == window_geometry(m.network)
        back = NumpyModel(network)
        back.load_weights(weights)
        assert rel_err(back.forward(x), m.forward(x)) < 1e-5
