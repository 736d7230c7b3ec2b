"""Graphs on the C backend (issue 14, C half): from=, add, concat, batch norm in both modes, grouped and
depthwise convolutions, relu6/silu/hardswish, blocks; against the NumPy backend and PyTorch in float64
(forward in training and inference mode, the loss, dx, every parameter gradient, the updated running
statistics), finite differences through the C backend, the Model API's buffers, and `cnnc train/eval/predict
--backend c` on ResNet-8.

Every network is compiled into ONE float64 module per session (compile time is what CI pays); the CLI test
builds ResNet-8 in float32 once more, which the float32 comparison then loads from the cache.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import cnnc
from cnnc.backends.c_codegen import generate
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.cli import main
from cnnc.diagnostics import CnncError
from cnnc.gradcheck import THRESHOLD

import c_model_checks
from c_model_checks import (assert_close, assert_compiles_without_warnings, assert_gradients_match_finite_differences,
                            rel_err, run)
from conftest import SPECS, compile_bundles
from test_graphs import GRADCHECK_BLOCK, GRADCHECK_CASES, ISSUE_EXAMPLE, REFERENCE_MODELS

SPEC_MODELS = ("resnet8", "mobilenet_small", "inception_small")

# Graph corners beyond test_graphs' models: a branch the output does not depend on (zero gradients, its
# backward skipped), a view as the output whose tensor other layers read too (dy is summed with their
# gradients), a tensor read twice by one merge, the input read by a merge and a layer with parameters.
EXTRA_MODELS = {
    "dead_branch": "model dead_branch { input v[4]; dense unused(units=3); relu r; dense out(units=2, from=v) }",
    "view_output_read": "model view_output_read { input v[3]; dense a(units=3); dense b(units=3); add s(a, b, a); "
                        "dropout d(rate=0, from=a) }",
    "input_everywhere": "model input_everywhere { input x[2, 5, 5]; conv2d c(filters=2, kernel=3, padding=1); "
                        "batchnorm bn(from=x); add s(c, x, bn); concat k(x, s); conv2d dw(filters=4, kernel=3, "
                        "groups=4, activation=hardswish); global_avgpool; dense out(units=3) }",
    # the depthwise kernel's padded planes: two filters per channel, dilation, padding wider than the kernel's
    # reach on one side ("same" with an even kernel), strides that leave input rows and columns unread, 1-D
    "depthwise_corners": "model depthwise_corners { input x[3, 9, 8]; conv2d m(filters=6, kernel=3, padding=2, "
                         "dilation=2, groups=3); conv2d e(filters=6, kernel=(2, 4), padding=same, groups=6); "
                         "conv2d s(filters=6, kernel=2, stride=(3, 2), groups=6, bias=false); batchnorm bn; "
                         "conv2d w(filters=12, kernel=3, stride=2, padding=(0, 3), groups=6); flatten; dense out(units=2) }",
    # add + relu in one pass: an operand read twice, the fused relu as the network's output; a three-operand
    # add and an add read by a second layer stay unfused
    "add_relu": "model add_relu { input v[6]; dense a(units=6); add s(a, v); relu r; add t(r, r); relu u; "
                "add w(u, a, v); relu x; add y(x, a); relu z(from=y); dense d(units=6, from=y); add o(z, d); relu out }",
    # batch norm + activation in one pass: relu6 and relu (fused, also as the output's producer), silu and a
    # batch norm with two readers (not fused)
    "bn_act": "model bn_act { input x[3, 5, 5]; conv2d c(filters=4, kernel=3, padding=1); batchnorm b1; relu6 r1; "
              "batchnorm b2; silu s2; conv2d d(filters=4, kernel=1, bias=false); batchnorm b4; relu r4; "
              "add a(r4, b4); batchnorm b3; relu out }",
    "depthwise_1d": "model depthwise_1d { input x[4, 11]; conv1d d(filters=4, kernel=5, stride=2, padding=2, groups=4); "
                    "conv1d g(filters=4, kernel=3, groups=2); flatten; dense out(units=2) }",
}


def graph_networks() -> dict[str, object]:
    """{key: Network}: every model of this file, under distinct model names."""
    networks = {name: cnnc.network_from_text(text) for name, text in REFERENCE_MODELS.items()}
    networks["block_resnet"] = cnnc.network_from_text(ISSUE_EXAMPLE.replace("model resnet", "model block_resnet")
                                                      .replace("image[1, 28, 28]", "image[1, 10, 10]"))
    for case, body in GRADCHECK_CASES.items():
        networks[f"gc_{case}"] = cnnc.network_from_text(f"model gc_{case} {{ {body} }}")
    networks["gc_block"] = cnnc.network_from_text(GRADCHECK_BLOCK.replace("model m ", "model gc_block "))
    for name, text in EXTRA_MODELS.items():
        networks[name] = cnnc.network_from_text(text)
    for name in SPEC_MODELS:
        networks[name] = cnnc.read_network(SPECS / f"{name}.cnn")
    return networks


NETWORKS = graph_networks()
COMPARED = [key for key in NETWORKS if not key.startswith("gc_")]


@pytest.fixture(scope="session")
def module(cache_dir):
    """The float64 C module of every network above (one compiler run)."""
    return compile_bundles(NETWORKS.values(), ("float64",), cache_dir)["float64"]


def twin_models(module, key: str, seed: int = 3):
    """The C model and a NumPy model with the same random parameters and running statistics."""
    return c_model_checks.twin_models(module, NETWORKS[key], 0.5, seed)


# ==== against the NumPy backend, float64 =================================================================
@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("key", COMPARED)
def test_c_agrees_with_numpy(module, key, train):
    c, ref = twin_models(module, key)
    rng = np.random.default_rng(4)
    n = 5  # more than one batch slice in inference mode
    x = rng.normal(size=(n, *c.input_shape))
    dy = rng.normal(size=(n, *c.output_shape))
    assert_close(run(c, x, dy, train), run(ref, x, dy, train), 1e-10, "the NumPy backend")
    # the loss path: the loss and its gradient in C, then backward without the input gradient
    target = rng.integers(0, c.output_shape[0], n) if c.loss_kind == "cross_entropy" else rng.normal(size=(n, *c.output_shape))
    (loss_c, dy_c), (loss_n, dy_n) = c.loss(c.forward(x, train=train), target), ref.loss(ref.forward(x, train=train), target)
    assert abs(loss_c - loss_n) <= 1e-10 * abs(loss_n) and rel_err(dy_c, dy_n) <= 1e-10
    assert c.backward(dy_c, input_grad=False) is None
    ref.backward(dy_n)
    assert_close(dict(c.grads), dict(ref.grads), 1e-10, "the NumPy backend (input_grad=False)")


def test_running_statistics_follow_numpy_over_batches_of_several_sizes(module):
    """Training passes of 2, 7 and 3 samples (one slice each: the batch's statistics), inference of 1 and 6
    (per-sample slices) in between: the running statistics and outputs stay equal."""
    c, ref = twin_models(module, "resnet8", seed=8)
    rng = np.random.default_rng(9)
    for n, train in ((2, True), (1, False), (7, True), (6, False), (3, True)):
        x = rng.normal(size=(n, *c.input_shape))
        assert rel_err(c.forward(x, train=train), ref.forward(x, train=train)) <= 1e-10
        for name in ref.buffers:
            assert rel_err(c.buffers[name], ref.buffers[name]) <= 1e-12, name
    assert not np.array_equal(c.buffers["stem_bn.running_var"], np.ones(16))


def test_inference_leaves_the_running_statistics_alone_and_is_per_sample(module):
    c, _ = twin_models(module, "flat")
    before = c.state_dict()
    x = np.random.default_rng(0).normal(size=(4, 5))
    np.testing.assert_allclose(c.forward(x)[:1], c.forward(x[:1]), rtol=1e-13)
    assert all(np.array_equal(before[k], v) for k, v in c.buffers.items())


def test_training_mode_needs_two_values_per_channel(module):
    c, _ = twin_models(module, "flat")
    with pytest.raises(CnncError, match="batchnorm 'bn' needs more than one value per channel"):
        c.forward(np.zeros((1, 5)), train=True)
    c.forward(np.zeros((1, 5)), train=False)


def test_buffers_weights_files_and_state_dicts_carry_over_between_backends(module, tmp_path):
    c, _ = twin_models(module, "block_resnet")
    x = np.random.default_rng(1).normal(size=(3, *c.input_shape))
    c.forward(x, train=True)  # moves the running statistics
    assert set(c.buffers) == {b.name for b in c.network.buffer_specs} and "s1.bn1.running_mean" in c.buffers
    c.save(tmp_path / "w.npz")
    ref = NumpyModel(c.network, "float64", 5)
    ref.load_weights(tmp_path / "w.npz")
    assert rel_err(ref.forward(x), c.forward(x)) <= 1e-12
    fresh = module.model(c.network.name, seed=7)
    fresh.load_weights(ref.state_dict())
    assert all(np.array_equal(fresh.buffers[k], c.buffers[k]) for k in c.buffers)
    fresh.buffers["stem_bn.running_mean"] = np.full(16, 0.25)  # assignment copies into C's memory
    assert fresh.buffers["stem_bn.running_mean"][0] == 0.25
    assert not np.array_equal(fresh.forward(x), c.forward(x))
    fresh.reset_parameters(0)
    assert np.array_equal(fresh.buffers["stem_bn.running_var"], np.ones(16))


# ==== inference folds batch norm into the convolution before it =========================================
def folded(module, key: str) -> set[str]:
    return {lp.layer.name for lp in module.plans[NETWORKS[key].name].layers if getattr(lp, "fold", None)}


def test_inference_folds_batch_norm_where_the_convolution_feeds_only_it(module):
    # every batch norm of ResNet-8 follows a convolution without activation that nothing else reads
    assert folded(module, "resnet8") == {layer.name for layer in NETWORKS["resnet8"].layers if layer.kind == "batchnorm"}
    # densenet: c0 is read by the concat too, n2 and n3 read concats; input_everywhere's reads the input
    assert folded(module, "densenet") == set() and folded(module, "input_everywhere") == set()
    assert folded(module, "1d") == {"bn"}  # after a grouped conv1d
    assert folded(module, "flat") == set()  # after a dense layer: not folded


def fused_add_relu(module, key: str) -> set[str]:
    return {lp.layer.name for lp in module.plans[NETWORKS[key].name].layers if getattr(lp, "relu", False)}


def test_an_add_read_only_by_a_relu_computes_it_in_the_same_pass(module):
    assert fused_add_relu(module, "resnet8") == {"s1.sum", "s2.sum", "s3.sum"}
    assert fused_add_relu(module, "add_relu") == {"s", "t", "o"}  # w has three operands, y two readers
    relu_views = {lp.layer.name for lp in module.plans["add_relu"].layers if lp.layer.kind == "relu" and lp.is_view}
    assert relu_views == {"r", "u", "out"}


def test_a_batch_norm_read_only_by_a_relu_or_relu6_applies_it_as_it_writes(module):
    def fused(key):
        return {lp.layer.name: lp.act for lp in module.plans[NETWORKS[key].name].layers if getattr(lp, "act", None)}

    assert fused("resnet8") == {"stem_bn": "relu", "s1.bn1": "relu", "s2.bn1": "relu", "s3.bn1": "relu"}
    mobilenet = NETWORKS["mobilenet_small"]
    assert fused("mobilenet_small") == {layer.inputs[0]: layer.kind for layer in mobilenet.layers if layer.kind == "relu6"}
    assert fused("bn_act") == {"b1": "relu6", "b3": "relu"}  # b2 feeds a silu, b4 two layers


@pytest.mark.parametrize("key", ["resnet8", "mobilenet_small", "depthwise_separable", "gc_batchnorm_1d"])
def test_folded_inference_equals_the_unfolded_result(module, key):
    """The NumPy backend normalises separately (unfolded); the folded C pass gives the same outputs, and a
    backward pass after it (which recomputes the convolution outputs the fold skipped) the same gradients.
    A training pass in between (unfolded in C too) and another inference pass stay consistent."""
    c, ref = twin_models(module, key, seed=11)
    assert folded(module, key)
    rng = np.random.default_rng(12)
    x = rng.normal(size=(4, *c.input_shape))
    dy = rng.normal(size=(4, *c.output_shape))
    assert_close(run(c, x, dy, False), run(ref, x, dy, False), 1e-10, "the unfolded NumPy backend")
    c.forward(x, train=True), ref.forward(x, train=True)
    assert_close(run(c, x, dy, False), run(ref, x, dy, False), 1e-10, "the unfolded NumPy backend, after training")


# ==== against PyTorch, float64 =========================================================================
@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("key", [*SPEC_MODELS, *REFERENCE_MODELS])
def test_c_agrees_with_pytorch(module, key, train):
    pytest.importorskip("torch")
    from torch_reference import torch_forward_backward

    c, _ = twin_models(module, key)
    buffers = {name: value.copy() for name, value in c.buffers.items()}
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, *c.input_shape))
    dy = rng.normal(size=(3, *c.output_shape))
    state = c.dropout_rng.bit_generator.state  # the dropout masks forward will draw (mobilenet_small has dropout)
    masks = c._dropout_masks(3) if train else None
    c.dropout_rng.bit_generator.state = state
    got = run(c, x, dy, train)
    ty, tdx, tgrads = torch_forward_backward(c.network, c.params, x, dy, masks, buffers=buffers, train=train)
    expected = {"y": ty, "dx": tdx, **{f"grad {k}": v for k, v in tgrads.items()},
                **{f"buffer {k}": v for k, v in buffers.items()}}  # updated in place by PyTorch in training mode
    assert_close(got, expected, 1e-9, "PyTorch")


# ==== finite differences through the C backend ==========================================================
@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("case", [*GRADCHECK_CASES, "block"])
def test_c_gradients_match_finite_differences(module, case, train):
    m = module.model(f"gc_{case}", seed=0)
    rng = np.random.default_rng(2)
    for name, b in m.buffers.items():
        b[...] = rng.uniform(0.5, 2.0, b.shape) if name.endswith("var") else rng.normal(size=b.shape)
    buffers = {k: v.copy() for k, v in m.buffers.items()}
    assert_gradients_match_finite_differences(m, case, THRESHOLD, batch=3, seed=1, train=train)
    assert all(np.array_equal(buffers[k], m.buffers[k]) for k in buffers)


# ==== the generated C ==================================================================================
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_graph_glue_and_kernels_compile_without_warnings(tmp_path):
    """The glue of every graph model and the new kernels (batchnorm.h, merge.h, conv_grouped.h), in float32
    (the session's module is float64), under -Wall -Wextra -Werror, with OpenMP and as plain C99."""
    source = generate(list(NETWORKS.values()), "float32")
    assert {"kernels/batchnorm.h", "kernels/merge.h", "kernels/conv_grouped.h"} <= dict(source.headers).keys()
    assert_compiles_without_warnings(source, tmp_path)


@pytest.mark.parametrize("change,message", [
    ({"inputs": ("nowhere",)}, "must name one of the input and the earlier layers"),
    ({"inputs": ('x); system("id"); //',)}, "must name one of the input and the earlier layers"),
    ({"eps": float("nan")}, "eps must be a finite number"),
    ({"momentum": float("inf")}, "momentum must be a finite number"),
    ({"groups": "2"}, "groups must be an integer"),
])
def test_hand_built_graph_ir_that_fails_the_checks_is_refused_before_any_c(change, message):
    import dataclasses

    network = NETWORKS["densenet"]
    layers = list(network.layers)
    index = next(i for i, layer in enumerate(layers) if layer.kind == "batchnorm")
    layers[index] = dataclasses.replace(layers[index], **change)
    with pytest.raises(ValueError, match=message):
        generate(dataclasses.replace(network, layers=tuple(layers)))


# ==== the command line: train, eval and predict on the C backend ====================================
def test_cli_trains_resnet8_on_the_c_backend_and_evaluates_in_inference_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, size=(48, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 48)
    np.savez("tiny.npz", x_train=images[:32], y_train=labels[:32], x_test=images[32:], y_test=labels[32:])
    spec = str(SPECS / "resnet8.cnn")
    assert main(["train", spec, "--data", "tiny.npz", "--epochs", "1", "--batch", "16", "--backend", "c",
                 "--quiet", "-o", "w.npz"]) == 0
    capsys.readouterr()
    with np.load("w.npz") as w:
        assert "s1.bn1.running_var" in w.files and not np.array_equal(w["s1.bn1.running_var"], np.ones(16))
    results = {}
    for backend in ("c", "numpy"):
        assert main(["eval", spec, "--weights", "w.npz", "--data", "tiny.npz", "--backend", backend, "--json"]) == 0
        results[backend] = json.loads(capsys.readouterr().out)
    assert results["c"]["n"] == 16 and results["c"]["confusion"] == results["numpy"]["confusion"]
    assert abs(results["c"]["loss"] - results["numpy"]["loss"]) <= 1e-4 * abs(results["numpy"]["loss"])
    # inference mode: the trained running statistics, one image at a time gives the batch's answers
    c = cnnc.load(spec, backend="c", dtype="float32")
    c.load_weights("w.npz")
    ref = cnnc.load(spec, backend="numpy", dtype="float32")
    ref.load_weights("w.npz")
    x = images[32:40, None]
    y = c.forward(x)
    assert rel_err(y, ref.forward(x)) <= 1e-4
    assert rel_err(c.forward(x[:1]), y[:1]) <= 1e-5
    np.save("one.npy", images[32])
    assert main(["predict", spec, "--weights", "w.npz", "--backend", "c", "--json", "one.npy"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted[0]["class"] == int(np.argmax(y[0]))


def test_cli_training_with_batch_norm_resumes_bit_exactly_on_the_c_backend(tmp_path, monkeypatch):
    """Two epochs, against one epoch, a checkpoint and a resumed second: the same weights and running
    statistics to the bit (the buffers travel through the checkpoint into C's buffer block)."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 1, size=(40, 28, 28)).astype(np.float32)
    np.savez("tiny.npz", x_train=images[:32], y_train=rng.integers(0, 10, 32), x_test=images[32:],
             y_test=rng.integers(0, 10, 8))
    spec = str(SPECS / "resnet8.cnn")
    common = ["--data", "tiny.npz", "--epochs", "2", "--batch", "16", "--backend", "c", "--quiet"]
    assert main(["train", spec, *common, "-o", "full.npz"]) == 0
    assert main(["train", spec, *common, "-o", "part.npz", "--stop-after", "1"]) == 0
    assert main(["train", spec, "--resume", "part.ckpt.npz", "--quiet"]) == 0
    with np.load("full.npz") as full, np.load("part.npz") as part:
        assert sorted(full.files) == sorted(part.files) and "s3.proj_bn.running_mean" in full.files
        for name in full.files:
            assert np.array_equal(full[name], part[name]), name


def test_float32_resnet8_agrees_with_numpy_in_both_modes():
    """float32 (the training dtype): after the CLI test this module comes from the cache."""
    c = cnnc.load(SPECS / "resnet8.cnn", backend="c", dtype="float32", seed=1)
    ref = cnnc.load(SPECS / "resnet8.cnn", backend="numpy", dtype="float32", seed=1)
    rng = np.random.default_rng(2)
    for train in (True, False):
        x = rng.normal(size=(4, 1, 28, 28)).astype(np.float32)
        dy = rng.normal(size=(4, 10)).astype(np.float32)
        assert_close(run(c, x, dy, train), run(ref, x, dy, train), 1e-4, f"the NumPy backend (float32, train={train})")


THREADS_SCRIPT = """
import sys, numpy as np, cnnc
m = cnnc.load(sys.argv[1], backend="c", dtype="float32", seed=0)
rng = np.random.default_rng(1)
x = rng.normal(size=(64, 1, 28, 28)).astype(np.float32)
y = m.forward(x, train=True)
loss, dy = m.loss(y, rng.integers(0, 10, 64))
out = {"y": y, "dx": m.backward(dy), **{"grad " + k: v for k, v in m.grads.items()},
       **{"buffer " + k: v for k, v in m.buffers.items()}}
np.savez(sys.argv[2], **out)
"""


def test_resnet8_training_step_is_identical_on_one_and_two_threads(tmp_path):
    """A float32 training step at batch 64 (the benchmark's; every parallel threshold passed): output, input
    gradient, parameter gradients and running statistics bit for bit equal with OMP_NUM_THREADS=1 and 2."""
    import os
    import sys
    results = {}
    for threads in (1, 2):
        path = tmp_path / f"threads{threads}.npz"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(SPECS / "resnet8.cnn"), str(path)], env=env,
                       check=True, timeout=600)
        with np.load(path) as data:
            results[threads] = dict(data)
    assert set(results[1]) == set(results[2]) and "grad s2.c1.weight" in results[1]
    differ = [name for name in results[1] if not np.array_equal(results[1][name], results[2][name])]
    assert not differ, f"1 and 2 threads differ in {differ}"
    assert np.abs(results[1]["dx"]).max() > 0 and np.abs(results[1]["grad s3.proj.weight"]).max() > 0
