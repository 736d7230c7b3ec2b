"""The classic architectures as the onnx package ships them (onnx/backend/test/data/light/: full-size graphs
whose weights are ConstantOfShape nodes, given random values here) import and agree with onnxruntime at
224x224, or are refused naming the node and the layer the language lacks."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from cnnc.backends.numpy_backend import NumpyModel
from cnnc.cli import main
from cnnc.diagnostics import CnncError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from cnnc.import_onnx import import_onnx  # noqa: E402

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
IMPORTED = ["resnet50", "vgg19", "squeezenet", "densenet121", "bvlc_alexnet", "zfnet512", "inception_v1",
            "inception_v2", "shufflenet"]
# What of issue 15's additions they use: LRN (AlexNet, ZFNet, GoogLeNet), pooling padded on one side (Caffe2's
# ceil mode as explicit pads: GoogLeNet, Inception v2), count_include_pad=0 (Inception v2), Reshape -> Transpose ->
# Reshape (ShuffleNet).
NEW_KINDS = {"bvlc_alexnet": {"lrn"}, "zfnet512": {"lrn"}, "inception_v1": {"lrn", "concat", "one-sided"},
             "inception_v2": {"concat", "one-sided", "count_pad=false"}, "shufflenet": {"channel_shuffle"}}


def features(network) -> set[str]:
    kinds = {layer.kind for layer in network.layers}
    if any(layer.pad_before != layer.pad_after for layer in network.layers):
        kinds.add("one-sided")
    if any(not layer.count_pad for layer in network.layers):
        kinds.add("count_pad=false")
    return kinds


def with_random_weights(name: str, tmp_path, seed: int = 0):
    """The model with every ConstantOfShape (its weights) replaced by random values: normal with standard
    deviation 1/sqrt(fan in) for weights, uniform in [0.5, 1.5] for per-channel vectors (batch norm's variance
    must be positive); the 1-D initializers likewise."""
    proto = onnx.load(os.path.join(LIGHT, f"light_{name}.onnx"))
    rng = np.random.default_rng(seed)
    initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}

    def random(shape):
        if len(shape) == 1:
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[-1] if shape[0] > shape[-1] else shape[0]
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    nodes, new = [], {}
    for node in proto.graph.node:
        if node.op_type == "ConstantOfShape":
            new[node.output[0]] = random(tuple(int(d) for d in initializers[node.input[0]]))
        else:
            nodes.append(node)
    for name_, value in initializers.items():
        if value.dtype == np.float32 and value.ndim == 1 and name_ not in new:
            new[name_] = random(value.shape)
    keep = [t for t in proto.graph.initializer if t.name not in new]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep + [numpy_helper.from_array(v, k) for k, v in new.items()])
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("name", IMPORTED)
def test_classic_architecture_imports_and_agrees_with_onnxruntime(name, tmp_path):
    path = with_random_weights(name, tmp_path)
    # compared with onnxruntime below, in float32 (the import's own check runs the NumPy backend in float64,
    # which for VGG-19 at 224x224 takes a minute)
    network, weights = import_onnx(path, tmp_path / f"{name}.cnn", verify=False)
    start = time.perf_counter()
    assert main(["check", str(tmp_path / f"{name}.cnn")]) == 0
    assert time.perf_counter() - start < 5  # the issue asks for under a second; shared CI machines vary
    m = NumpyModel(network)
    m.load_weights(weights)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    got = m.forward(x).reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert NEW_KINDS.get(name, set()) <= features(network)


def test_a_near_miss_of_the_channel_shuffle_is_refused_naming_the_transpose(tmp_path):
    """ShuffleNet with one Transpose's perm changed (groups and spatial axes swapped) is no channel shuffle."""
    proto = onnx.load(str(with_random_weights("shufflenet", tmp_path)))
    transpose = next(n for n in proto.graph.node if n.op_type == "Transpose")
    del transpose.attribute[:]
    transpose.attribute.append(onnx.helper.make_attribute("perm", [0, 2, 1, 4, 3]))
    path = tmp_path / "near_miss.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(CnncError, match=r"\(Transpose\): perm=\[0, 2, 1, 4, 3\] is not a channel shuffle's "
                                        r"\[0, 2, 1, 3, 4\]"):
        import_onnx(path, tmp_path / "near_miss.cnn")
    assert not (tmp_path / "near_miss.cnn").exists()
