"""Initial parameters and the dropout stream: what each init rule draws (He-normal into a ReLU,
Glorot-uniform otherwise, zeros for biases, ones for batch norm's scale), that the seed alone decides
them (the dtype only rounds the same draw), that the C backend starts from exactly the NumPy backend's
values, and that dropout masks come from a stream seeded by the model's seed."""
from __future__ import annotations

import math

import numpy as np
import pytest

import cnnc
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.fileio import cache_home

from conftest import SPECS

# big enough tensors for tight sample statistics: 25,600 and 40,960 weights
WIDE = """model wide {
    input x[16, 8, 8]
    conv2d c(filters=64, kernel=5, padding=2, activation=relu)
    batchnorm bn
    flatten
    dense out(units=10)
}
"""


def test_each_init_rule_draws_its_distribution():
    network = cnnc.network_from_text(WIDE)
    m = NumpyModel(network, "float64", seed=0)
    rules = {spec.name: spec.init for spec in network.param_specs}
    assert rules == {"c.weight": "he", "c.bias": "zeros", "bn.weight": "ones", "bn.bias": "zeros",
                     "out.weight": "glorot", "out.bias": "zeros"}
    for spec in network.param_specs:
        value = m.params[spec.name]
        if spec.init == "zeros":
            assert not value.any()
        elif spec.init == "ones":
            assert (value == 1).all()
        elif spec.init == "he":  # normal, mean 0, std sqrt(2 / fan_in); fan_in = 16 * 5 * 5
            std = math.sqrt(2 / spec.fan_in)
            assert spec.fan_in == 400 and abs(value.std() / std - 1) < 0.02
            assert abs(value.mean()) < 4 * std / math.sqrt(value.size)
        else:  # uniform on +-sqrt(6 / (fan_in + fan_out)): std limit / sqrt(3)
            limit = math.sqrt(6 / (spec.fan_in + spec.fan_out))
            assert (spec.fan_in, spec.fan_out) == (4096, 10)
            assert np.abs(value).max() <= limit and np.abs(value).max() > 0.999 * limit
            assert abs(value.std() / (limit / math.sqrt(3)) - 1) < 0.02


def test_the_seed_decides_the_initial_values_and_the_dtype_only_rounds_them():
    network = cnnc.read_network(SPECS / "lenet5.cnn")
    first, again, other = (NumpyModel(network, "float64", seed) for seed in (7, 7, 8))
    single = NumpyModel(network, "float32", 7)
    for name, value in first.params.items():
        assert np.array_equal(value, again.params[name])
        assert np.array_equal(single.params[name], value.astype(np.float32))
        if value.any():
            assert not np.array_equal(value, other.params[name]), name


@pytest.mark.parametrize("spec", ["lenet5.cnn", "vgg_small.cnn"])
def test_the_c_backend_starts_from_the_numpy_backends_values(spec):
    c_model = cnnc.load(SPECS / spec, backend="c", seed=3, cache_dir=str(cache_home()))
    numpy_model = cnnc.load(SPECS / spec, seed=3)
    assert list(c_model.params) == list(numpy_model.params)
    for name, value in numpy_model.params.items():
        assert c_model.params[name].dtype == value.dtype
        assert c_model.params[name].tobytes() == value.tobytes(), name


def test_the_dropout_stream_is_seeded_from_the_model_seed():
    network = cnnc.read_network(SPECS / "digits.cnn")
    x = np.random.default_rng(0).random((4, *network.input_shape), dtype=np.float32)
    a, b, c = (NumpyModel(network, "float32", seed) for seed in (11, 11, 12))
    a.seed = 99  # the stream belongs to the seed the model was made with
    assert np.array_equal(a.dropout_rng.random(5), np.random.default_rng([11, 1]).random(5))
    b.dropout_rng.random(5)
    c.load_weights(b.state_dict())
    y_b, y_c = b.forward(x, train=True), c.forward(x, train=True)
    assert np.array_equal(a.forward(x, train=True), y_b)  # same seed, same masks
    assert not np.array_equal(y_b, y_c)                   # same weights, other seed: other masks
