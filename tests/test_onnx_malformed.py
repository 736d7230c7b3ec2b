"""Malformed ONNX given to `cnnc import` (issue 18, item 12, and the ONNX part of its fuzz test): every
graph the tests craft with onnx.helper is refused with a CnncError naming the file, the node, its
operator and the attribute or input at fault; never a ZeroDivisionError, AssertionError, TypeError or
AttributeError, and nothing is written (an existing .cnn at the output path is left as it was)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cnnc.cli import main  # noqa: E402
from cnnc.diagnostics import CnncError  # noqa: E402
from cnnc.import_onnx import import_onnx  # noqa: E402

F32 = np.float32


def graph(nodes, inits: dict, in_shape, out_shape=(1,), opset=17):
    g = helper.make_graph(nodes, "crafted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape])],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def conv(**attrs):
    return graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c1", **attrs)],
                 {"w": np.ones((2, 1, 3, 3), F32)}, (1, 8, 8))


def pool(op, **attrs):
    return graph([helper.make_node(op, ["x"], ["y"], name="p1", **attrs)], {}, (1, 8, 8))


def dense(op, inputs, inits, **attrs):
    return graph([helper.make_node(op, ["x", *inputs], ["y"], name="fc", **attrs)], inits, (4,))


def dropout(inputs, inits, **attrs):
    return graph([helper.make_node("Dropout", ["x", *inputs], ["y"], name="drop", **attrs)], inits, (4,), opset=17)


CASES = {  # name: (model, what the message must say after "node '<name>' (<op>): ")
    "conv stride 0": (conv(strides=[0, 0]), "c1", "Conv", "attribute strides=[0, 0] must hold values of at least 1"),
    "conv stride 0, auto_pad": (conv(strides=[0, 1], auto_pad="SAME_UPPER"), "c1", "Conv",
                                "attribute strides=[0, 1] must hold values of at least 1"),
    "conv strides too short": (conv(strides=[1]), "c1", "Conv",
                               "attribute strides=[1] has 1 values; expected 2 (one per spatial axis)"),
    "conv dilations too long": (conv(dilations=[1, 1, 1]), "c1", "Conv",
                                "attribute dilations=[1, 1, 1] has 3 values; expected 2"),
    "conv dilation 0": (conv(dilations=[0, 1]), "c1", "Conv", "attribute dilations=[0, 1] must hold values of at least 1"),
    "conv pads of the wrong length": (conv(pads=[1, 1]), "c1", "Conv", "attribute pads=[1, 1] has 2 values; expected 4"),
    "conv strides as a float": (conv(strides=1.5), "c1", "Conv", "attribute strides must be a list of integers; got 1.5"),
    "conv group as a string": (conv(group="two"), "c1", "Conv", "attribute group must be an integer; got 'two'"),
    "conv auto_pad as a list": (conv(auto_pad=[1, 2]), "c1", "Conv", "attribute auto_pad must be a string; got [1, 2]"),
    "maxpool stride 0": (pool("MaxPool", kernel_shape=[2, 2], strides=[0, 0]), "p1", "MaxPool",
                         "attribute strides=[0, 0] must hold values of at least 1"),
    "maxpool kernel 0": (pool("MaxPool", kernel_shape=[0, 2]), "p1", "MaxPool",
                         "attribute kernel_shape=[0, 2] must hold values of at least 1"),
    "avgpool strides too long": (pool("AveragePool", kernel_shape=[2, 2], strides=[2, 2, 2]), "p1", "AveragePool",
                                 "attribute strides=[2, 2, 2] has 3 values; expected 2"),
    "avgpool dilations too short": (pool("AveragePool", kernel_shape=[2, 2], dilations=[1]), "p1", "AveragePool",
                                    "attribute dilations=[1] has 1 values; expected 2"),
    "avgpool ceil_mode 7": (pool("AveragePool", kernel_shape=[3, 3], ceil_mode=7), "p1", "AveragePool",
                            "attribute ceil_mode=7 must be one of 0, 1"),
    "gemm without a weight": (dense("Gemm", [], {}), "fc", "Gemm", "it has no weight input (input 2)"),
    "matmul without a weight": (dense("MatMul", [], {}), "fc", "MatMul", "it has no weight input (input 2)"),
    "gemm weight of text": (dense("Gemm", ["w"], {"w": np.array([["a"] * 4] * 3)}), "fc", "Gemm",
                            "its weight 'w' holds"),
    "matmul weight of 3 dimensions": (dense("MatMul", ["w"], {"w": np.ones((4, 3, 1), F32)}), "fc", "MatMul",
                                      "its weight 'w' has shape (4, 3, 1); expected 2 dimensions"),
    "gemm alpha as a list": (dense("Gemm", ["w"], {"w": np.ones((3, 4), F32)}, transB=1, alpha=[1.0, 2.0]), "fc",
                             "Gemm", "attribute alpha must be a finite number; got [1.0, 2.0]"),
    "gemm infinite beta": (dense("Gemm", ["w", "b"], {"w": np.ones((3, 4), F32), "b": np.ones(3, F32)}, transB=1,
                                 beta=float("inf")), "fc", "Gemm", "attribute beta must be a finite number; got inf"),
    "dropout ratio as an array input": (dropout(["r"], {"r": np.array([0.1, 0.2], F32)}), "drop", "Dropout",
                                        "its ratio 'r' must be one finite number; it is a float32 array of shape (2,)"),
    "dropout ratio as a list attribute": (graph([helper.make_node("Dropout", ["x"], ["y"], name="drop",
                                                                  ratio=[0.5, 0.25])], {}, (4,), opset=9),
                                          "drop", "Dropout", "attribute ratio must be a finite number; got [0.5, 0.25]"),
    "dropout training_mode as an array": (dropout(["r", "t"], {"r": np.array(0.1, F32), "t": np.array([True, False])}),
                                          "drop", "Dropout", "its training_mode 't' must be one finite number"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_attributes_and_inputs_are_refused_naming_node_operator_and_attribute(case, tmp_path, capsys):
    model, node, op, phrase = CASES[case]
    path, out = tmp_path / "bad.onnx", tmp_path / "bad.cnn"
    onnx.save(model, str(path))
    out.write_text("model keep { input x[1] }\n")  # an earlier import: a refusal must not replace it
    assert main(["import", str(path), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: node '{node}' ({op}): "), err
    assert phrase in err, err
    assert err.count("\n") == 1, err  # one line: the message, no traceback
    assert out.read_text() == "model keep { input x[1] }\n"
    assert not (tmp_path / "bad.npz").exists()


def test_a_real_process_refuses_stride_0_with_exit_1_and_no_traceback(tmp_path):
    path = tmp_path / "stride0.onnx"
    onnx.save(CASES["conv stride 0, auto_pad"][0], str(path))
    result = subprocess.run([sys.executable, "-m", "cnnc.cli", "import", str(path), "-o", str(tmp_path / "m.cnn")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == (f"error: {path}: node 'c1' (Conv): attribute strides=[0, 1] must hold values of at "
                             f"least 1\n")
    assert result.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["stride0.onnx"]


def test_an_initializer_whose_data_does_not_match_its_shape_is_refused_naming_it(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), F32), "w")
    w.raw_data = w.raw_data[:10]  # 18 floats declared, 2.5 present
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c1")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 6])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(tmp_path / "t.onnx"))
    with pytest.raises(CnncError, match=r"t\.onnx: the initializer 'w' cannot be read as an array"):
        import_onnx(tmp_path / "t.onnx", tmp_path / "t.cnn")


def test_a_well_formed_graph_still_imports_with_every_checked_attribute_given(tmp_path):
    """The checks refuse only what is malformed: explicit, valid values of each attribute still import."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="c1", strides=[1, 1], dilations=[1, 1],
                              pads=[1, 1, 1, 1], group=1, kernel_shape=[3, 3], auto_pad="NOTSET"),
             helper.make_node("MaxPool", ["c"], ["p"], name="p1", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=0),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Dropout", ["f", "r"], ["d"], name="drop"),
             helper.make_node("Gemm", ["d", "g", "b"], ["y"], name="fc", alpha=2.0, beta=0.5, transA=0, transB=1)]
    inits = {"w": rng.standard_normal((2, 1, 3, 3)).astype(F32), "r": np.array(0.3, F32),
             "g": rng.standard_normal((3, 32)).astype(F32), "b": np.ones(3, F32)}
    onnx.save(graph(nodes, inits, (1, 8, 8), (3,)), str(tmp_path / "ok.onnx"))
    network, arrays = import_onnx(tmp_path / "ok.onnx", tmp_path / "ok.cnn")
    assert [layer.kind for layer in network.layers] == ["conv2d", "maxpool2d", "flatten", "dropout", "dense"]
    assert np.array_equal(arrays["fc.weight"], inits["g"] * 2) and np.array_equal(arrays["fc.bias"], np.full(3, 0.5, F32))
    assert "dropout drop(rate=0.3)" in (tmp_path / "ok.cnn").read_text()


# ---- the fuzz test: random and malformed attributes ------------------------------------------------------
def attribute_values():
    """What a crafted file may put in any attribute: ints of any sign and size, floats including inf and
    nan, strings, and lists of each (empty, short, long)."""
    ints = st.integers(-3, 5) | st.sampled_from([0, -1, 2**31, 2**62, -(2**63)])
    floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
    scalar = ints | floats | st.sampled_from(["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET", "junk", ""])
    return scalar | st.lists(ints, max_size=5) | st.lists(floats, min_size=1, max_size=3)


ATTRIBUTES = {
    "Conv": ["strides", "dilations", "pads", "kernel_shape", "group", "auto_pad"],
    "MaxPool": ["strides", "dilations", "pads", "kernel_shape", "auto_pad", "ceil_mode", "storage_order"],
    "AveragePool": ["strides", "pads", "kernel_shape", "auto_pad", "ceil_mode", "count_include_pad"],
    "Gemm": ["alpha", "beta", "transA", "transB"],
    "Dropout": ["ratio", "seed"],
    "Flatten": ["axis"],
    "Reshape": ["allowzero"],
    "ConvTranspose": ["strides", "dilations", "pads", "kernel_shape", "group", "auto_pad", "output_padding",
                      "output_shape"],
    "LRN": ["size", "alpha", "beta", "bias"],
    "Elu": ["alpha"],
    "Selu": ["alpha", "gamma"],
    "HardSigmoid": ["alpha", "beta"],
    "LogSoftmax": ["axis"],
    "Transpose": ["perm"],
}
SPATIAL = ("Conv", "MaxPool", "AveragePool", "ConvTranspose", "LRN", "Transpose")


def constants():
    """A constant input: a well-shaped one most of the time, else any small array of any type."""
    shapes = st.lists(st.integers(0, 3), max_size=4).map(tuple)
    return st.one_of(st.none(), shapes.flatmap(lambda s: st.sampled_from([F32, np.float64, np.int64, np.bool_]).map(
        lambda t: np.ones(s, t))))


@st.composite
def crafted_graphs(draw):
    op = draw(st.sampled_from(sorted(ATTRIBUTES)))
    names = draw(st.lists(st.sampled_from(ATTRIBUTES[op]), unique=True, max_size=4))
    attrs = {name: draw(attribute_values()) for name in names}
    attrs = {k: v for k, v in attrs.items() if not (isinstance(v, list) and not v)}  # helper cannot type []
    in_shape = (1, 6, 6) if op in SPATIAL else (2, 3, 2) if op in ("Flatten", "Reshape") else (4,)
    default = {"Conv": np.ones((2, 1, 3, 3), F32), "Gemm": np.ones((4, 3), F32), "Dropout": np.array(0.5, F32),
               "Reshape": np.array([0, -1], np.int64), "ConvTranspose": np.ones((1, 2, 3, 3), F32)}.get(op)
    inputs, inits = ["x"], {}
    if default is not None and op not in ("MaxPool", "AveragePool"):
        value = draw(st.one_of(st.just(default), constants()))
        if value is not None:
            inputs.append("k")
            inits["k"] = value
    if op == "MaxPool" and "kernel_shape" not in attrs:
        attrs["kernel_shape"] = [2, 2]
    if op == "LRN" and "size" not in attrs:
        attrs["size"] = 3
    node = helper.make_node(op, inputs, ["y"], name="n1", **attrs)
    return op, graph([node], inits, in_shape, opset=draw(st.sampled_from([9, 17])))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(crafted_graphs())
def test_fuzzed_attributes_import_or_are_refused_as_cnnc_errors(tmp_path, crafted):
    op, model = crafted
    path = tmp_path / "fuzz.onnx"
    onnx.save(model, str(path))
    try:
        import_onnx(path, tmp_path / "fuzz.cnn")
    except CnncError as e:
        message = str(e)
        assert message.startswith(f"error: {path}: "), message
        assert len(message) < 1000, message


@pytest.mark.parametrize("node, phrase", [
    (helper.make_node("ConstantOfShape", ["huge"], ["w"], name="fill"),
     "node 'fill' (ConstantOfShape): it would make a constant of 1,000,000,000,000 elements"),
    (helper.make_node("Range", ["zero", "big", "one"], ["w"], name="count"), "node 'count' (Range): it would make"),
    (helper.make_node("ConstantOfShape", ["x"], ["w"], name="from_input"),
     "node 'from_input' (ConstantOfShape): the operator ConstantOfShape is not supported"),
])
def test_constant_folding_refuses_what_would_exhaust_memory(node, phrase, tmp_path, capsys):
    """A crafted file may ask the import-time folding for a constant of any size: refused before it is made."""
    inits = {"huge": np.array([10 ** 6, 10 ** 6], np.int64), "zero": np.array(0, np.int64),
             "big": np.array(10 ** 12, np.int64), "one": np.array(1, np.int64)}
    nodes = [node, helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(tmp_path / "big.onnx"))
    assert main(["import", str(tmp_path / "big.onnx"), "-o", str(tmp_path / "big.cnn")]) == 1
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err


def test_constant_shorthand_attributes_are_read(tmp_path):
    nodes = [helper.make_node("Constant", [], ["shape"], value_ints=[0, -1]),
             helper.make_node("Constant", [], ["slope"], value_float=0.5),
             helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("Relu", ["flat"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(tmp_path / "s.onnx"))
    network, _ = import_onnx(tmp_path / "s.onnx", tmp_path / "s.cnn")
    assert [layer.kind for layer in network.layers] == ["flatten", "relu"]
