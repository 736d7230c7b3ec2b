"""Issue 15's language additions on the C backend: conv_transpose1d/2d, global_maxpool, lrn, channel_shuffle,
elu/selu/hardsigmoid/log_softmax (statements and activation=), loss nll, pooling with ceil=true and
count_pad=false, asymmetric padding and `same` at any stride.

Every case of tests/test_layers_extra.py (and more: graphs, the additions after other layers, nll, random
conv_transpose2d geometries) is compiled into ONE float64 module per session, then checked against the NumPy
backend (outputs in training and inference mode, dx, every parameter gradient, the loss and its gradient),
against PyTorch in float64 and with finite differences through the C backend. One float32 module checks the
float32 build.
"""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_layers_extra import CASES, GRADCHECK_ONLY, torch_run

import cnnc
from cnnc.backends.c_backend import compile_networks
from cnnc.backends.c_codegen import choose_kernel, generate
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.cli import main
from cnnc.diagnostics import SpecError

import c_model_checks
from c_model_checks import (assert_close, assert_compiles_without_warnings, assert_gradients_match_finite_differences,
                            rel_err, run)

# Beyond test_layers_extra's cases: the additions after other layers (their input gradient is not the caller's
# dx), in graphs (gradients summed over readers), the 2x2 max pooling with ceil (not the fixed 2x2 kernel: its
# last window is partial), lrn on one position per channel, and loss nll after log_softmax.
EXTRA_CASES = {
    "log_softmax and nll after the additions":
        "input x[2, 5, 5]\nconv_transpose2d t(filters=3, kernel=2, stride=2, activation=hardsigmoid)\nlrn(size=2)\n"
        "global_maxpool\ndense d(units=4)\nlog_softmax\nloss nll",
    "conv_transpose2d after a convolution":
        "input x[3, 6, 6]\nconv2d c(filters=4, kernel=3, stride=2, padding=1, activation=elu)\n"
        "conv_transpose2d t(filters=2, kernel=3, stride=2, padding=1, output_padding=1, groups=2)",
    "conv_transpose1d after a convolution, dilated, no bias":
        "input x[2, 9]\nconv1d c(filters=4, kernel=2, activation=selu)\n"
        "conv_transpose1d t(filters=2, kernel=3, stride=2, dilation=2, padding=2, bias=false)",
    "maxpool2d 2x2 with ceil": "input x[2, 7, 5]\nmaxpool2d p(size=2, ceil=true)",
    "lrn on [C, 1], selu, elu, mse":
        "input x[6, 1]\nlrn n(size=3, alpha=0.3)\nflatten\ndense d(units=4, activation=selu)\nelu\nloss mse",
    "a graph of the additions":
        "input x[4, 4, 4]\nconv_transpose2d a(filters=4, kernel=3, padding=1)\nchannel_shuffle s(groups=2, from=x)\n"
        "add m(a, s)\nlrn n(size=3)\nconcat k(n, x, m)\navgpool2d p(size=3, stride=2, padding=1, ceil=true, "
        "count_pad=false)\nglobal_maxpool\ndense d(units=3, activation=log_softmax)\nloss nll",
}


def random_conv_transpose_cases(count: int = 20) -> dict[str, str]:
    """conv_transpose2d over random geometries (kernel, stride, dilation, padding, output_padding, groups,
    input size), those the language accepts: the tap ranges of the kernel at every edge."""
    rng, cases = np.random.default_rng(11), {}
    while len(cases) < count:
        kh, kw, sh, sw, dh, dw = (int(v) for v in rng.integers(1, 4, size=6))
        oph, opw = int(rng.integers(0, max(sh, dh))), int(rng.integers(0, max(sw, dw)))
        groups = int(rng.choice([1, 2]))
        ph, pw = (int(v) for v in rng.integers(0, 3, size=2))
        h, w = (int(v) for v in rng.integers(1, 6, size=2))
        body = (f"input x[{2 * groups}, {h}, {w}]\nconv_transpose2d t(filters={2 * groups}, kernel=({kh}, {kw}), "
                f"stride=({sh}, {sw}), dilation=({dh}, {dw}), padding=({ph}, {pw}), output_padding=({oph}, {opw}), "
                f"groups={groups})")
        try:
            cnnc.network_from_text("model m {\n" + body + "\n}")
        except SpecError:
            continue  # the padding crops the whole output
        cases[f"random conv_transpose2d {len(cases)}"] = body
    return cases


ALL_CASES = {**CASES, **GRADCHECK_ONLY, **EXTRA_CASES, **random_conv_transpose_cases()}
NAMES = {case: f"case{i}" for i, case in enumerate(ALL_CASES)}
NETWORKS = {case: cnnc.network_from_text(f"model {NAMES[case]} {{\n{body}\n}}") for case, body in ALL_CASES.items()}
# PyTorch runs the chains (torch_run), with every pooling option where the padding is symmetric
TORCH_CASES = [case for case in ALL_CASES if NETWORKS[case].is_chain and case not in GRADCHECK_ONLY]
FLOAT32_CASES = ("a decoder", "log_softmax and nll after the additions", "a graph of the additions",
                 "avgpool2d ceil, count_pad=false", "elu, selu, hardsigmoid fused and as statements")


@pytest.fixture(scope="session")
def module(tmp_path_factory):
    """The float64 C module of every case (one compiler run)."""
    return compile_networks(list(NETWORKS.values()), "float64", cache_dir=tmp_path_factory.mktemp("cnnc-cache"))


def twin_models(module, case: str, seed: int = 3):
    """The C model and a NumPy model with the same random parameters (biases included)."""
    return c_model_checks.twin_models(module, NETWORKS[case], 0.7, seed)


def loss_target(m, rng, n: int):
    if m.loss_kind in ("cross_entropy", "nll"):
        return rng.integers(0, m.output_shape[0], n)
    return rng.normal(size=(n, *m.output_shape))


# ==== against the NumPy backend, float64 =================================================================
@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", ALL_CASES)
def test_c_agrees_with_numpy(module, case, train):
    c, ref = twin_models(module, case)
    rng = np.random.default_rng(4)
    n = 5  # more than one batch slice
    x = rng.normal(size=(n, *c.input_shape))
    dy = rng.normal(size=(n, *c.output_shape))
    assert_close(run(c, x, dy, train), run(ref, x, dy, train), 1e-10, "the NumPy backend")
    # the loss and its gradient in C, then backward without the input gradient
    target = loss_target(c, rng, n)
    (loss_c, dy_c), (loss_n, dy_n) = c.loss(c.forward(x, train=train), target), ref.loss(ref.forward(x, train=train), target)
    assert abs(loss_c - loss_n) <= 1e-10 * abs(loss_n) and rel_err(dy_c, dy_n) <= 1e-12
    assert c.backward(dy_c, input_grad=False) is None
    ref.backward(dy_n)
    assert_close(dict(c.grads), dict(ref.grads), 1e-10, "the NumPy backend (input_grad=False)")


def test_the_nll_loss_in_c_by_hand(module):
    """Log-probabilities y and labels [1, 0]: loss = -(y[0][1] + y[1][0]) / 2, dy -1/2 at the labels."""
    c = module.model(NAMES["log_softmax and nll after the additions"])
    assert c.loss_kind == "nll"
    y = np.log(np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]))
    loss, dy = c.loss(y, np.array([1, 0]))
    assert loss == pytest.approx(-(np.log(0.2) + np.log(0.25)) / 2, rel=1e-15)
    assert dy.tolist() == [[0.0, -0.5, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="label"):
        c.loss(y, np.array([1, 4]))


def test_the_2x2_max_pooling_with_ceil_takes_the_general_kernel(module):
    layer = NETWORKS["maxpool2d 2x2 with ceil"].layers[0]
    assert layer.ceil and layer.out_shape == (2, 4, 3)
    assert choose_kernel(layer) == "direct"
    assert choose_kernel(dataclasses.replace(layer, ceil=False, in_shape=(2, 8, 6))) == "2x2"
    # the partial last windows: row 6 and column 4 pool alone
    c = module.model(NAMES["maxpool2d 2x2 with ceil"])
    x = np.arange(70.0).reshape(1, 2, 7, 5)
    y = c.forward(x)
    assert y[0, 0, 3].tolist() == [31.0, 33.0, 34.0] and y[0, 1, :, 2].tolist() == [44.0, 54.0, 64.0, 69.0]


# ==== against PyTorch, float64 =========================================================================
@pytest.mark.parametrize("case", TORCH_CASES)
def test_c_agrees_with_pytorch(module, case):
    c, _ = twin_models(module, case)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, *c.input_shape))
    dy = rng.normal(size=(3, *c.output_shape))
    got = run(c, x, dy, False)
    ty, tx, tparams = torch_run(c.network, c.params, x)
    ty.backward(torch.tensor(dy))
    expected = {"y": ty.detach().numpy(), "dx": tx.grad.numpy(), **{f"grad {k}": p.grad.numpy() for k, p in tparams.items()}}
    # PyTorch's hardsigmoid backward multiplies by the float32 1.0f/6.0f even in float64 (3e-8 relative off)
    assert_close(got, expected, 1e-7 if "hardsigmoid" in ALL_CASES[case] else 1e-10, "PyTorch")


def test_log_softmax_and_nll_agree_with_pytorch(module):
    c, _ = twin_models(module, "log_softmax and nll after the additions")
    rng = np.random.default_rng(6)
    x, labels = rng.normal(size=(4, *c.input_shape)), np.array([3, 0, 2, 2])
    loss, dy = c.loss(c.forward(x), labels)
    c.backward(dy)
    ty, tx, tparams = torch_run(c.network, c.params, x)
    tloss = F.nll_loss(ty, torch.tensor(labels))
    tloss.backward()
    assert abs(loss - tloss.item()) <= 1e-12 * abs(tloss.item())
    for name, p in tparams.items():
        assert rel_err(c.grads[name], p.grad.numpy()) <= 1e-7, name  # hardsigmoid: see above


# ==== finite differences through the C backend ==========================================================
@pytest.mark.parametrize("case", ALL_CASES)
def test_c_gradients_match_finite_differences(module, case):
    assert_gradients_match_finite_differences(module.model(NAMES[case], seed=0), case, 1e-6, batch=2, seed=3)


# ==== float32 ===========================================================================================
def test_float32_module_agrees_with_numpy(tmp_path):
    networks = [NETWORKS[case] for case in FLOAT32_CASES]
    module = compile_networks(networks, "float32", cache_dir=tmp_path / "cache")
    rng = np.random.default_rng(8)
    for network in networks:
        c = module.model(network.name, seed=1)
        ref = NumpyModel(network, "float64", 0)
        ref.load_weights(c.state_dict())
        x = rng.normal(size=(4, *c.input_shape)).astype(np.float32)
        dy = rng.normal(size=(4, *c.output_shape)).astype(np.float32)
        for train in (True, False):
            got, expected = run(c, x, dy, train), run(ref, x.astype(np.float64), dy.astype(np.float64), train)
            assert all(v.dtype == np.float32 for v in got.values())
            assert_close(got, expected, 1e-4, f"the NumPy backend in float32 ({network.name})")


# ==== the generated C and the refusals ==================================================================
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_glue_and_new_kernels_compile_without_warnings(tmp_path):
    """Every case's glue and the new kernels (conv_transpose.h, lrn.h, channel_shuffle.h, the additions to
    pool.h, activations.h and loss.h), in float32, under -Wall -Wextra -Werror, with OpenMP and as plain C99."""
    source = generate(list(NETWORKS.values()), "float32")
    assert {"kernels/conv_transpose.h", "kernels/lrn.h", "kernels/channel_shuffle.h"} <= dict(source.headers).keys()
    assert_compiles_without_warnings(source, tmp_path)


@pytest.mark.parametrize("case,layer_index,change,message", [
    ("conv_transpose2d groups, dilation, no bias", 0, {"groups": 3}, "groups 3 must divide its channels"),
    ("channel_shuffle 2-D", 0, {"groups": 4}, "groups 4 must divide its channels"),
    ("lrn default", 0, {"lrn_size": 0}, "size must be an integer in [1,"),
    ("lrn default", 0, {"alpha": float("nan")}, "alpha must be a finite number"),
    ("lrn default", 0, {"beta": float("inf")}, "beta must be a finite number"),
    ("conv_transpose2d stride 2, padding, output_padding", 0, {"output_padding": (1, -1)},
     "output_padding must be an integer in [0,"),
])
def test_hand_built_ir_that_fails_the_checks_is_refused_before_any_c(case, layer_index, change, message):
    network = NETWORKS[case]
    layers = list(network.layers)
    layers[layer_index] = dataclasses.replace(layers[layer_index], **change)
    with pytest.raises(ValueError) as error:
        generate(dataclasses.replace(network, layers=tuple(layers)), "float64")
    assert message in str(error.value)


def test_cli_compiles_and_trains_an_addition_on_the_c_backend(tmp_path, capsys):
    """`cnnc compile` builds a spec of the additions, `cnnc check` reports its C memory, and the compiled
    directory loads with the same outputs as the spec through the NumPy backend."""
    spec = tmp_path / "decoder.cnn"
    spec.write_text("model decoder {\n" + ALL_CASES["log_softmax and nll after the additions"] + "\n}\n")
    assert main(["check", str(spec)]) == 0
    assert "C backend memory (float32, with saved state and scratch)" in capsys.readouterr().out
    assert main(["compile", str(spec), "-o", str(tmp_path / "build"), "--dtype", "float64"]) == 0
    capsys.readouterr()
    c = cnnc.load(tmp_path / "build", backend="c", dtype="float64")
    ref = cnnc.load(spec, dtype="float64")
    ref.load_weights(c.state_dict())
    x = np.random.default_rng(9).normal(size=(3, *c.input_shape))
    assert rel_err(c.forward(x), ref.forward(x)) <= 1e-12
