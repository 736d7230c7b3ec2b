"""Every model shipped in specs/ loads, runs forward and backward on the NumPy backend: the chains pass
gradcheck, the graphs agree with PyTorch in both modes. (tests/test_c_backend.py checks the chains on the
C backend against NumPy and PyTorch.)

Graph models and the layer kinds of issue #14 (batch norm, grouped convolutions, relu6/silu/hardswish,
merges) run on the NumPy backend and the C backend (tests/test_c_graphs.py) and export to ONNX
(tests/test_onnx_graphs.py) and to standalone C (tests/test_export_c_graphs.py builds and runs them)."""

import numpy as np
import pytest

import cnnc
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.gradcheck import THRESHOLD, gradcheck

from conftest import SPECS, is_classic_chain
MODELS = [(path, net.name) for path in sorted(SPECS.glob("*.cnn")) for net in cnnc.networks_from_file(path)]
GRAPH_MODELS = [(path, name) for path, name in MODELS if not is_classic_chain(cnnc.read_network(path, name))]
CHAIN_MODELS = [model for model in MODELS if model not in GRAPH_MODELS]


@pytest.mark.parametrize("path,name", CHAIN_MODELS, ids=[name for _, name in CHAIN_MODELS])
def test_spec_passes_gradcheck_on_the_numpy_backend(path, name):
    model = cnnc.load(path, backend="numpy", model=name, dtype="float64", seed=0)
    # Up to 12 random entries of each tensor (the input's too): the large dense layers would otherwise
    # take minutes; the per-layer suites check every entry of small layers.
    errors = gradcheck(model, batch=2, seed=3, samples=12)
    assert set(errors) == {spec.name for spec in model.network.param_specs} | {"input"}
    worst = max(errors, key=errors.get)
    assert errors[worst] < THRESHOLD, f"{name}: {worst} has relative error {errors[worst]:.2e}"


@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("path,name", GRAPH_MODELS, ids=[name for _, name in GRAPH_MODELS])
def test_graph_spec_agrees_with_pytorch_on_the_numpy_backend(path, name, train):
    """The graph specs against PyTorch in float64 rather than finite differences: they are deep, so their
    input gradients are small (max |dx| ~ 1e-3 at gradcheck's parameters) and the loss's rounding over a
    step of 2e-6 is ~1e-5 of them, while a step large enough to drown the rounding crosses the kinks of
    ReLU6 and hardswish. tests/test_graphs.py checks every layer kind by finite differences in small models."""
    torch_reference = pytest.importorskip("torch_reference")
    model = cnnc.load(path, backend="numpy", model=name, dtype="float64", seed=0)
    rng = np.random.default_rng(3)
    for buffer_name, value in model.buffers.items():  # away from the initial 0 and 1
        value[...] = rng.uniform(0.5, 1.5, value.shape) if buffer_name.endswith("var") else rng.normal(0, 0.2, value.shape)
    buffers = {k: v.copy() for k, v in model.buffers.items()}
    x = rng.normal(size=(2, *model.input_shape))
    masks = model._dropout_masks(2) if train else None  # the same dropout masks for both
    model._dropout_masks = lambda n: masks
    y = model.forward(x, train=train)
    dy = rng.normal(size=y.shape)
    dx = model.backward(dy)
    ty, tdx, tgrads = torch_reference.torch_forward_backward(model.network, model.params, x, dy, masks,
                                                             buffers=buffers, train=train)
    for what, got, expected in [("y", y, ty), ("dx", dx, tdx), *((k, model.grads[k], tgrads[k]) for k in tgrads),
                                *((k, model.buffers[k], buffers[k]) for k in buffers)]:
        scale = max(np.abs(expected).max(), 1e-6)  # a bias before training-mode batch norm has a zero gradient
        assert np.abs(got - expected).max() <= 1e-9 * scale, f"{name}: {what} differs from PyTorch"


def test_the_graph_specs_are_the_ones_issue_14_promises():
    assert {name for _, name in GRAPH_MODELS} >= {"resnet8", "mobilenet_small", "inception_small"}
    assert cnnc.read_network(SPECS / "resnet8.cnn").param_count == 77_754  # "about 78k"


@pytest.mark.parametrize("path,name", GRAPH_MODELS, ids=[name for _, name in GRAPH_MODELS])
def test_graph_specs_export_to_standalone_c(path, name, tmp_path):
    """The C backend runs them (tests/test_c_graphs.py), ONNX exports them, and so does the standalone C export
    (tests/test_export_c_graphs.py builds the C and compares it with NumPy); here: the files are written."""
    from cnnc.export_c import export_c

    network = cnnc.read_network(path, name)
    model = NumpyModel(network)
    paths = export_c(model, tmp_path / "c")
    assert {p.name for p in paths} >= {f"{name}.c", f"{name}.h", "merge.h", "main.c", "Makefile"}
