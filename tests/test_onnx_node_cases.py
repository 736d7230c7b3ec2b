"""ONNX's own single-operator test cases (onnx.backend.test.case.node) for the operators of CNNs: each either
imports and reproduces the expected outputs on the NumPy backend, or is refused with a CnncError that says
why (docs/deploy.md lists the refusals). The cases pass their weights as graph inputs; here every input
after the first becomes an initializer holding the case's values, as a trained model would hold them."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from cnnc.backends.numpy_backend import NumpyModel
from cnnc.diagnostics import CnncError

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

from cnnc.import_onnx import import_onnx  # noqa: E402

OPERATORS = ("Conv ConvTranspose MaxPool AveragePool GlobalAveragePool GlobalMaxPool Gemm MatMul BatchNormalization "
             "LRN Add Sum Concat Pad Relu LeakyRelu Clip Sigmoid HardSigmoid HardSwish Tanh Elu Selu Softmax "
             "LogSoftmax Flatten Reshape Dropout").split()
# Every refusal is for one of these reasons (the words its message contains).
REASONS = {
    "integer tensors": "is not a float tensor",
    "no batch axis, or rank 5": "must be (batch, D), (batch, C, L) or (batch, C, H, W)",
    "several graph outputs (masks, training statistics)": "exactly one output",
    "operators without a layer": "is not supported by cnnc import",
    "activation constants other than PyTorch's": ("is not PyTorch's hardsigmoid", "the language's elu has alpha 1",
                                                  "the language's selu has PyTorch's constants"),
    "transposed convolution padding cropping more at the end": "crops more at the end than at the start",
    "clip other than relu/relu6": "cnnc imports Clip(0, 6) as relu6",
    "pooling geometry": ("count_include_pad=0", "more than half the window", "ceil_mode=1", "dilated pooling",
                         "differs between the two sides"),
    "axes other than channels/batch": ("Flatten(axis=", "Softmax(axis=", "softmax normalises flat", "reshapes to",
                                       "only as the start of a channel shuffle",
                                       "needs a flat (batch, D) input"),
    "constants computed with the input": ("it adds a constant", "is a constant; cnnc's", "is not one number per output",
                                          "transA=1"),
    "dropout in training mode": "training_mode is true",
    "padding other than zeros of the spatial axes": ("cnnc pads with zeros only", "it pads chosen axes"),
    "the Pad alone as the output": "reads the output of a Pad node",
}


# Cases whose expected outputs the onnx package writes rounded to four decimals (the import itself was checked
# against onnxruntime to 1e-4 of the largest output): compared to that precision.
ROUNDED = {"test_averagepool_2d_ceil_last_window_starts_on_pad": 1e-4}


def cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some generators of other operators' cases overflow on purpose
        found = collect_testcases(None)
    return [c for c in found if len(c.model.graph.node) == 1 and c.model.graph.node[0].op_type in OPERATORS]


CASES = cases()


def with_constant_weights(case):
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, _ = case.data_sets[0]
    names = [i.name for i in model.graph.input]
    for name, value in list(zip(names, inputs))[1:]:
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    first = [i for i in model.graph.input if i.name == names[0]]
    del model.graph.input[:]
    model.graph.input.extend(first)
    return model


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("node_cases")
    results = {}
    for case in CASES:
        path = folder / f"{case.name}.onnx"
        onnx.save(with_constant_weights(case), str(path))
        try:
            network, weights = import_onnx(path, folder / f"{case.name}.cnn")
        except CnncError as e:
            results[case.name] = ("refused", str(e))
            continue
        inputs, outputs = case.data_sets[0]
        m = NumpyModel(network, dtype="float64")
        m.load_weights({k: np.asarray(v, np.float64) for k, v in weights.items()})
        got = m.forward(np.asarray(inputs[0], np.float64))
        want = np.asarray(outputs[0], np.float64)
        atol = ROUNDED.get(case.name, 1e-6)
        matches = got.size == want.size and np.allclose(got.reshape(want.shape), want, rtol=1e-4, atol=atol)
        results[case.name] = ("imported", matches)
    return results


def test_the_cases_are_found():
    assert len(CASES) > 150 and {c.model.graph.node[0].op_type for c in CASES} == set(OPERATORS)


def test_every_imported_case_reproduces_its_expected_outputs(outcomes):
    imported = {name: ok for name, (what, ok) in outcomes.items() if what == "imported"}
    assert not [name for name, ok in imported.items() if not ok]
    assert len(imported) >= 70
    for name in ("test_basic_conv_with_padding", "test_conv_with_autopad_same", "test_batchnorm_example",
                 "test_gemm_alpha", "test_globalmaxpool", "test_hardswish", "test_maxpool_2d_precomputed_same_upper",
                 "test_matmul_2d", "test_softmax_large_number"):
        assert name in imported
    for name in NEWLY_IMPORTED:
        assert name in imported, name


# The cases of issue 15's language additions (all refused before): LRN -> lrn, LogSoftmax -> log_softmax,
# ConvTranspose -> conv_transpose1d/2d, Elu/Selu -> elu/selu, ceil_mode -> ceil=true, count_include_pad=0 ->
# count_pad=false, SAME_LOWER/UPPER at a stride and other one-sided pads -> padding=((before, after), ...).
NEWLY_IMPORTED = (
    "test_lrn", "test_lrn_default", "test_logsoftmax_example_1", "test_logsoftmax_large_number", "test_convtranspose",
    "test_convtranspose_1d", "test_convtranspose_pad", "test_convtranspose_pads", "test_convtranspose_kernel_shape",
    "test_convtranspose_dilations", "test_convtranspose_group_2", "test_convtranspose_group_2_image_3",
    "test_convtranspose_output_shape", "test_elu_default", "test_selu_default", "test_averagepool_2d_ceil",
    "test_averagepool_2d_ceil_last_window_starts_on_pad", "test_maxpool_2d_ceil",
    "test_maxpool_2d_ceil_output_size_reduce_by_one", "test_averagepool_2d_precomputed_pads",
    "test_averagepool_2d_same_upper", "test_averagepool_2d_same_lower", "test_maxpool_2d_same_lower",
    "test_globalmaxpool_precomputed")
# Refused with the reason the language gives: ONNX's default HardSigmoid slope (0.2) is not PyTorch's (1/6); Elu
# and Selu with other constants; SAME_UPPER on a ConvTranspose crops the extra cell at the end.
REFUSED = {"test_hardsigmoid_default": "is not PyTorch's hardsigmoid", "test_elu": "has alpha 1 (PyTorch's default)",
           "test_selu": "has PyTorch's constants", "test_convtranspose_autopad_same": "crops more at the end",
           "test_logsoftmax_axis_2": "LogSoftmax(axis=2) is not over the class scores"}


def test_the_new_kinds_outside_the_language_are_refused_with_their_reason(outcomes):
    for name, phrase in REFUSED.items():
        what, message = outcomes[name]
        assert what == "refused" and phrase in message, (name, message)


def test_every_refused_case_says_why(outcomes):
    unexplained = []
    for name, (what, message) in outcomes.items():
        if what != "refused":
            continue
        words = [w for reason in REASONS.values() for w in ((reason,) if isinstance(reason, str) else reason)]
        if "Traceback" in message or not any(w in message for w in words):
            unexplained.append(f"{name}: {message}")
    assert not unexplained, "\n".join(unexplained)
