"""What `cnnc check` says a model needs is what the backends take (issue #18, item 6).

`check` prints the C backend's memory: activations, saved state and scratch, per sample and fixed. The C
model allocates exactly that (tests/test_c_backend.py). The NumPy reference stays within it, give or take
its im2col columns (one layer's at a time; VGG-style measures 1.2x the figure): no layer may cost memory
out of proportion to the figure. A hostile spec once did: a convolution with a large padding and
dilation (a few hundred parameters) asked NumPy for gigabytes, because it stored the padded input and
computed the input gradient over the whole padding, and a transposed convolution built its uncropped
output however much the padding cropped. The padding is now implied, never stored.
"""
import tracemalloc

import numpy as np
import pytest

import cnnc
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.cli import main
from cnnc.summary import c_backend_memory, human_bytes
from conftest import SPECS

BATCH = 8
SLACK = 1 << 20  # bytes: NumPy's small temporaries, which matter only for the tiny examples
FACTOR = 1.5  # NumPy's im2col columns against the C backend's blocked scratch

HOSTILE = {
    "padded dilated convolution": "input x[1, 8, 8]\n conv2d c(filters=4, kernel=3, dilation=200, padding=200)",
    "padded dilated strided convolution": "input x[2, 9, 7]\n"
                                          " conv2d c(filters=3, kernel=(3, 2), stride=2, dilation=150, padding=160)",
    "padded dilated convolution 1d": "input x[2, 16]\n conv1d c(filters=2, kernel=5, dilation=400, padding=800)",
    "cropping transposed convolution": "input x[2, 6, 6]\n"
                                       " conv_transpose2d t(filters=3, kernel=3, stride=2, dilation=100, padding=90)",
    "cropping transposed convolution 1d": "input x[2, 5]\n"
                                          " conv_transpose1d t(filters=2, kernel=4, stride=3, dilation=300, padding=440)",
}


def hostile_network(tmp_path, name):
    path = tmp_path / "hostile.cnn"
    path.write_text(f"model hostile {{\n {HOSTILE[name]}\n relu\n global_avgpool\n flatten\n dense d(units=2)\n}}\n")
    return cnnc.read_network(path)


def numpy_training_step_peak(network) -> int:
    """Bytes NumPy holds at its peak in a forward and backward pass at batch BATCH (parameters excluded)."""
    model = NumpyModel(network)
    x = np.random.default_rng(0).standard_normal((BATCH, *network.input_shape)).astype(np.float32)
    tracemalloc.start()
    try:
        y = model.forward(x)
        model.backward(np.ones_like(y))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def c_figure(network) -> int:
    memory = c_backend_memory(network, "float32")
    return memory["fixed"] + BATCH * memory["per_sample"]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_numpy_stays_within_the_reported_memory_on_large_padding_and_dilation(tmp_path, name):
    network = hostile_network(tmp_path, name)
    assert network.param_count < 1000
    assert numpy_training_step_peak(network) <= FACTOR * c_figure(network) + SLACK


@pytest.mark.parametrize("spec", ["lenet5.cnn", "resnet8.cnn", "mobilenet_small.cnn", "inception_small.cnn",
                                  "signal1d.cnn", "worked_2d.cnn"])
def test_numpy_stays_within_the_reported_memory_on_the_examples(spec):
    network = cnnc.read_network(SPECS / spec)
    assert numpy_training_step_peak(network) <= FACTOR * c_figure(network) + SLACK


def test_check_prints_the_figure_these_tests_hold_the_backends_to(tmp_path, capsys):
    network = hostile_network(tmp_path, "padded dilated convolution")
    memory = c_backend_memory(network, "float32")
    assert main(["check", str(tmp_path / "hostile.cnn")]) == 0
    out = capsys.readouterr().out
    assert (f"C backend memory (float32, with saved state and scratch): {human_bytes(memory['per_sample'])} per sample"
            f" + {human_bytes(memory['fixed'])} fixed") in out


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_the_c_backend_copies_no_padding_out_of_proportion_to_the_input(tmp_path, name):
    """The blocked kernels' padded copies are skipped where the padding would dwarf the input (the direct
    loops skip taps in the padding instead): what check reports per sample stays in kilobytes."""
    network = hostile_network(tmp_path, name)
    memory = c_backend_memory(network, "float32")
    assert memory["per_sample"] < 64 * 1024 and memory["fixed"] < 64 * 1024, memory
