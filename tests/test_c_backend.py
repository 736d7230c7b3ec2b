"""The C backend against the NumPy backend and PyTorch: forward, loss, dx and every gradient, for every
layer-kind configuration, float64 and float32; batch sizes; the generated C under -Wall -Wextra;
hostile identifiers; a missing compiler; `cnnc compile`; optimisers on the zero-copy views.

Every configuration is one network of two bundles (one C module per dtype) compiled once per session.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import zlib

import numpy as np
import pytest

import cnnc
from cnnc.backends import c_build
from cnnc.backends.c_backend import CModel, compile_networks
from cnnc.backends import c_codegen
from cnnc.backends.c_codegen import (VECTOR_BYTES, BlockedConv, BlockedConvPlan, GroupedConvPlan, WinogradConvPlan,
                                     choose_kernel, depthwise_plane, generate, plan_network, winograd_fits)
from cnnc.backends.c_optim import FusedAdam, FusedSGD
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.cli import main
from cnnc.gradcheck import gradcheck
from cnnc.optim import SGD, Adam
from cnnc.summary import c_backend_memory, summary_table


@pytest.fixture
def torch_ref():
    """The PyTorch reference (tests/torch_reference.py), for the tests that compare with it; only those are
    skipped when PyTorch is missing."""
    pytest.importorskip("torch", reason="PyTorch is an independent reference for this test")
    import torch_reference

    return torch_reference

from c_model_checks import assert_compiles_without_warnings
from conftest import SPECS, compile_bundles, is_classic_chain
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}

# One model per configuration: strides 1-3, paddings 0/1/2 and asymmetric `same` with even kernels,
# dilations 1-2, non-square kernels and windows, pooling padding, 1-D and 2-D, every activation fused
# and standalone, dropout, dense, flatten, global_avgpool, softmax; then whole networks.
CASES = {
    "conv2d_k3": "input x[2, 6, 7]\nconv2d c(filters=3, kernel=3)",
    "conv2d_k3_s2_p1": "input x[3, 7, 8]\nconv2d c(filters=2, kernel=3, stride=2, padding=1)",
    "conv2d_k32_s31_p2_d21": "input x[2, 9, 6]\nconv2d c(filters=3, kernel=(3,2), stride=(3,1), padding=2, dilation=(2,1))",
    "conv2d_k23_s12_p01_d2": "input x[2, 7, 9]\nconv2d c(filters=2, kernel=(2,3), stride=(1,2), padding=(0,1), dilation=2)",
    "conv2d_k3_s3_p21_d2_nobias": "input x[2, 10, 8]\nconv2d c(filters=2, kernel=3, stride=3, padding=(2,1), dilation=2, bias=false)",
    "conv2d_same_k4": "input x[2, 6, 5]\nconv2d c(filters=2, kernel=4, padding=same)",
    "conv2d_same_k25_d2": "input x[2, 6, 9]\nconv2d c(filters=2, kernel=(2,5), padding=same, dilation=2)",
    "conv2d_1x1_s2": "input x[4, 5, 5]\nconv2d c(filters=3, kernel=1, stride=2)",
    "conv2d_relu": "input x[2, 6, 6]\nconv2d c(filters=2, kernel=3, padding=1, activation=relu)",
    "conv2d_leaky": "input x[2, 6, 6]\nconv2d c(filters=2, kernel=3, activation=leaky_relu, slope=0.2)",
    "conv2d_leaky_negative_slope": "input x[2, 5, 5]\nconv2d c(filters=2, kernel=2, activation=leaky_relu, slope=-0.5)",
    "conv1d_k3": "input x[2, 9]\nconv1d c(filters=3, kernel=3)",
    "conv1d_k4_s3_p2": "input x[3, 12]\nconv1d c(filters=2, kernel=4, stride=3, padding=2)",
    "conv1d_k3_s2_p1_d2": "input x[2, 11]\nconv1d c(filters=2, kernel=3, stride=2, padding=1, dilation=2)",
    "conv1d_same_k2": "input x[2, 7]\nconv1d c(filters=2, kernel=2, padding=same)",
    "conv1d_same_k4_d2_nobias": "input x[2, 10]\nconv1d c(filters=2, kernel=4, padding=same, dilation=2, bias=false)",
    "conv1d_long_rows_in_blocks": "input x[2, 2300]\nconv1d c(filters=2, kernel=4, stride=1, padding=2, dilation=2)",
    "conv1d_sigmoid": "input x[2, 8]\nconv1d c(filters=2, kernel=3, activation=sigmoid)",
    "conv1d_tanh_s2": "input x[2, 8]\nconv1d c(filters=2, kernel=3, stride=2, activation=tanh)",
    "maxpool2d_2": "input x[2, 6, 8]\nmaxpool2d p(size=2)",
    "maxpool2d_2_odd_ties": "input x[3, 7, 9]\nmaxpool2d p(size=2, stride=2)",
    # 2x2 pooling on rows longer than a vector (21 = 16 + 5 in float32, 8 + 8 + 5 in float64) and exactly
    # whole vectors (16)
    # NaN through ReLU and max pooling (made by an inf weight times a zero input)
    "nan_pool_2x2": "input x[1, 4, 6]\nconv2d c(filters=2, kernel=1)\nrelu\nmaxpool2d p(size=2)",
    "nan_pool_general": "input x[1, 5, 5]\nconv2d c(filters=2, kernel=1)\nrelu\nmaxpool2d p(size=3, stride=1, padding=1)",
    "maxpool2d_2_wide": "input x[2, 5, 43]\nmaxpool2d p(size=2)",
    "maxpool2d_2_whole_vectors": "input x[1, 4, 32]\nmaxpool2d p(size=2)",
    "maxpool2d_32_s21_p1": "input x[2, 7, 6]\nmaxpool2d p(size=(3,2), stride=(2,1), padding=1)",
    "maxpool2d_3_s1_p1": "input x[2, 5, 5]\nmaxpool2d p(size=3, stride=1, padding=1)",
    "maxpool2d_3_unused_rows": "input x[2, 8, 7]\nmaxpool2d p(size=3)",
    "maxpool2d_42_s23_p21": "input x[2, 7, 6]\nmaxpool2d p(size=(4,2), stride=(2,3), padding=(2,1))",
    "avgpool2d_2": "input x[2, 6, 8]\navgpool2d p(size=2)",
    "avgpool2d_32_s21_p1": "input x[2, 7, 6]\navgpool2d p(size=(3,2), stride=(2,1), padding=1)",
    "avgpool2d_42_s23_p21": "input x[2, 7, 6]\navgpool2d p(size=(4,2), stride=(2,3), padding=(2,1))",
    "maxpool1d_3_s2_p1": "input x[2, 10]\nmaxpool1d p(size=3, stride=2, padding=1)",
    "maxpool1d_4_s3_p2": "input x[2, 11]\nmaxpool1d p(size=4, stride=3, padding=2)",
    "avgpool1d_4_s1_p2": "input x[2, 7]\navgpool1d p(size=4, stride=1, padding=2)",
    "global_avgpool_2d": "input x[3, 4, 5]\nglobal_avgpool",
    "global_avgpool_1d": "input x[3, 6]\nglobal_avgpool",
    "flatten_dense": "input x[2, 3, 4]\nflatten\ndense d(units=5)",
    "dense_nobias_tanh": "input x[5]\ndense d(units=3, bias=false, activation=tanh)",
    "dense_softmax": "input x[5]\ndense d(units=4, activation=softmax)",
    "dense_sigmoid": "input x[4]\ndense d(units=3, activation=sigmoid)",
    "relu": "input x[2, 3, 4]\nrelu",
    "leaky_relu": "input x[2, 7]\nleaky_relu(slope=0.1)",
    "sigmoid": "input x[2, 3, 4]\nsigmoid",
    "tanh": "input x[9]\ntanh",
    "softmax": "input x[7]\nsoftmax",
    "dropout": "input x[2, 3, 4]\ndropout d(rate=0.5)",
    "dropout_rate0": "input x[6]\ndropout(rate=0)\ndense d(units=2)",
    "flatten_only": "input x[2, 3]\nflatten",
    "net_2d": "input x[2, 9, 9]\nconv2d c1(filters=3, kernel=3, padding=same, activation=relu)\nmaxpool2d p1(size=2)\n"
              "conv2d c2(filters=4, kernel=2, stride=2, activation=tanh)\nflatten\ndropout(rate=0.3)\n"
              "dense d1(units=6, activation=sigmoid)\ndense out(units=3)\nloss cross_entropy",
    "net_1d": "input x[3, 16]\nconv1d c1(filters=4, kernel=5, padding=same, activation=leaky_relu)\navgpool1d p(size=2)\n"
              "conv1d c2(filters=4, kernel=3, dilation=2)\nglobal_avgpool\ndropout d(rate=0.25)\ndense out(units=2)\nloss mse",
    # The blocked convolution (choose_kernel): by output channels or by columns, forward and input gradient;
    # tiny, odd and large channel counts, tiles with a tail, strides, dilations, asymmetric padding, 1-D.
    "blocked_tiny_one_channel": "input x[1, 6, 9]\nconv2d c(filters=4, kernel=3)",
    "blocked_odd_tail_tiles": "input x[3, 5, 19]\nconv2d c(filters=16, kernel=3, activation=relu)",
    "blocked_large_channels": "input x[33, 6, 20]\nconv2d c(filters=40, kernel=3, padding=1)",
    "blocked_s2_d2_nonsquare": "input x[16, 11, 13]\nconv2d c(filters=17, kernel=(3,2), stride=2, padding=(2,1), dilation=(1,2))",
    "blocked_same_even_k4_d2": "input x[6, 9, 10]\nconv2d c(filters=8, kernel=4, padding=same, dilation=2, bias=false)",
    "blocked_conv1d_s2_d2": "input x[5, 40]\nconv1d c(filters=12, kernel=3, stride=2, padding=1, dilation=2)",
    "blocked_conv1d_long": "input x[4, 301]\nconv1d c(filters=20, kernel=5, padding=2, activation=tanh)",
    # few filters on rows of at least a vector: the weight gradient by columns (a last, overlapping vector)
    "blocked_wgrad_columns_d2": "input x[2, 7, 37]\nconv2d c(filters=5, kernel=(2,3), padding=(1,2), dilation=(1,2), activation=relu)",
    "blocked_wgrad_columns_s21": "input x[3, 9, 20]\nconv2d c(filters=5, kernel=3, stride=(2,1), bias=false)",
    # stride 2 with vectors over channels: the input gradient one phase of the stride at a time; phases
    # that no tap reaches (1x1, and stride 2 with dilation 2), phases of different sizes (odd extents),
    # phases wider than a register tile (20 columns: 8 + 8 + 4), 1-D (phases along the columns only)
    "blocked_phases_1x1_s2": "input x[16, 9, 10]\nconv2d c(filters=24, kernel=1, stride=2, bias=false)",
    "blocked_phases_k3_s2_odd": "input x[20, 7, 9]\nconv2d c(filters=16, kernel=3, stride=2, padding=1)",
    "blocked_phases_s2_d2_untouched": "input x[16, 9, 12]\nconv2d c(filters=16, kernel=3, stride=2, padding=1, dilation=2)",
    "blocked_phases_wide_tail": "input x[16, 5, 40]\nconv2d c(filters=16, kernel=3, stride=2, padding=1, activation=relu)",
    "blocked_phases_conv1d": "input x[16, 41]\nconv1d c(filters=16, kernel=4, stride=2, padding=1)",
    # 1x1, no padding: GEMMs over the flat planes (pointwise). Planes of whole vectors (32), with a last
    # overlapping vector (49 = 3 x 16 + 1; 8 + 4 in float64), shorter than a vector in float32 (12), 1-D;
    # filters and channels that the tiles do not divide; several in a row at MobileNet's 14 x 14; strides
    # (odd extents: the last row and column are read, 1-D), and blocked_phases_1x1_s2 below
    "blocked_pointwise_tails": "input x[10, 7, 7]\nconv2d c(filters=13, kernel=1)",
    "blocked_pointwise_whole_vectors": "input x[8, 4, 8]\nconv2d c(filters=24, kernel=1, bias=false, activation=relu)",
    "blocked_pointwise_short_plane": "input x[6, 3, 4]\nconv2d c(filters=5, kernel=1)",
    "blocked_pointwise_conv1d": "input x[7, 40]\nconv1d c(filters=9, kernel=1, bias=false)",
    "blocked_pointwise_net": "input x[3, 14, 14]\nconv2d c1(filters=24, kernel=1, activation=relu)\n"
                             "conv2d c2(filters=96, kernel=1, bias=false, activation=relu)\nconv2d c3(filters=16, kernel=1, stride=2)\n"
                             "global_avgpool\ndense out(units=4)\nloss cross_entropy",
    "blocked_pointwise_s2_odd": "input x[12, 7, 9]\nconv2d c(filters=20, kernel=1, stride=2)",
    "blocked_pointwise_s21": "input x[5, 6, 20]\nconv2d c(filters=8, kernel=1, stride=(2,1), bias=false)",
    "blocked_pointwise_conv1d_s2": "input x[6, 37]\nconv1d c(filters=10, kernel=1, stride=2)",
    # padding out of proportion to the input: the direct loops (blocked: no padded copies), depthwise per group
    "direct_huge_padding_dilation": "input x[2, 8, 8]\nconv2d c(filters=4, kernel=3, dilation=40, padding=40, activation=relu)",
    "grouped_huge_padding_depthwise": "input x[4, 6, 6]\nconv2d c(filters=8, kernel=3, groups=4, dilation=30, padding=31)",
    # depthwise (kernels/conv_grouped.h's phase planes): stride 2 on odd and even extents (four phase planes
    # of different sizes), two filters per channel in several filter blocks, strides that leave input rows
    # and columns unread (their gradient 0), dilation with a stride, 1-D, and a net of them (several batch
    # slices' scratch)
    "depthwise_s2_odd": "input x[12, 9, 8]\nconv2d c(filters=12, kernel=3, stride=2, padding=1, groups=12, bias=false)",
    "depthwise_multiplier_blocks": "input x[24, 7, 7]\nconv2d c(filters=48, kernel=3, padding=1, groups=24)",
    "depthwise_s3_unread": "input x[4, 10, 11]\nconv2d c(filters=4, kernel=2, stride=3, groups=4)",
    "depthwise_conv1d_s2": "input x[6, 29]\nconv1d c(filters=6, kernel=5, stride=2, padding=2, groups=6)",
    "depthwise_net": "input x[8, 10, 10]\nconv2d c1(filters=8, kernel=3, padding=1, groups=8)\n"
                     "conv2d c2(filters=16, kernel=3, stride=2, padding=1, groups=8, activation=relu)\n"
                     "conv2d c3(filters=16, kernel=(3,5), stride=(2,3), padding=(0,2), dilation=(1,2), groups=16)\n"
                     "global_avgpool\ndense out(units=4)\nloss cross_entropy",
    # Winograd F(2x2, 3x3) (kernels/winograd.h): 3x3, stride 1, >= 16 channels in and out, planes >= 7x7.
    # Whole tiles (8x8), odd planes (9x9, 9x8: a last row of tiles half outside), filters and channels that
    # are not whole vectors (17, 20, 24 in float32), no padding, padding 2 (the input gradient's own padding
    # 0) and 1, padding=same on a non-square plane, fused activations, rows of 16 columns and more (the 16 x 16
    # register transposes: two whole blocks; a last block overlapping the one before), 64 channels at 7x7, and a
    # net of two in a row
    "winograd_whole_tiles": "input x[16, 8, 8]\nconv2d c(filters=16, kernel=3, padding=1, bias=false)",
    "winograd_odd_9x9": "input x[20, 9, 9]\nconv2d c(filters=17, kernel=3, padding=1, activation=relu)",
    "winograd_p0_nonsquare": "input x[16, 11, 10]\nconv2d c(filters=32, kernel=3)",
    "winograd_p2_p1": "input x[24, 8, 9]\nconv2d c(filters=16, kernel=3, padding=(2,1))",
    "winograd_same_nonsquare": "input x[16, 9, 12]\nconv2d c(filters=24, kernel=(3,3), padding=same, activation=tanh)",
    "winograd_two_blocks": "input x[16, 8, 32]\nconv2d c(filters=16, kernel=3, padding=1, bias=false)",
    "winograd_wide_rows": "input x[20, 8, 21]\nconv2d c(filters=17, kernel=3, padding=1)",
    "winograd_7x7_64": "input x[64, 7, 7]\nconv2d c(filters=64, kernel=3, padding=1, bias=false)",
    "winograd_net": "input x[3, 14, 14]\nconv2d c1(filters=16, kernel=3, padding=1, activation=relu)\n"
                    "conv2d c2(filters=32, kernel=3, padding=1, activation=relu)\n"
                    "conv2d c3(filters=16, kernel=3, padding=1)\nglobal_avgpool\ndense out(units=4)\nloss cross_entropy",
    "blocked_dense_odd": "input x[77]\ndense d(units=7, activation=relu)\ndense out(units=18)",
    "blocked_net": "input x[3, 12, 12]\nconv2d c1(filters=8, kernel=3, padding=1, activation=relu)\n"
                   "conv2d c2(filters=6, kernel=3, stride=2)\nflatten\ndense out(units=3)\nloss cross_entropy",
}
# What choose_kernel must pick for the cases above (kernel, forward by columns, input gradient by columns,
# weight gradient by columns) in float32, so that every variant is exercised.
BLOCKED_VARIANTS = {
    ("blocked_tiny_one_channel", "c"): (True, True, False),
    ("blocked_odd_tail_tiles", "c"): (False, True, False),
    ("blocked_large_channels", "c"): (False, False, False),
    ("blocked_s2_d2_nonsquare", "c"): (False, False, False),
    ("blocked_same_even_k4_d2", "c"): (True, True, False),
    ("blocked_conv1d_s2_d2", "c"): (False, True, False),
    ("blocked_conv1d_long", "c"): (True, True, True),
    ("blocked_wgrad_columns_d2", "c"): (True, True, True),
    ("blocked_wgrad_columns_s21", "c"): (True, True, True),
    ("blocked_net", "c1"): (True, True, False),
    ("blocked_net", "c2"): (False, True, False),
    ("blocked_phases_1x1_s2", "c"): (False, False, False),
    ("blocked_phases_k3_s2_odd", "c"): (False, False, False),
    ("blocked_phases_s2_d2_untouched", "c"): (False, False, False),
    ("blocked_phases_wide_tail", "c"): (False, False, False),
    ("blocked_phases_conv1d", "c"): (False, False, False),
}
# the shipped specs that are classic chains (conftest.is_classic_chain); tests/test_c_graphs.py runs the graphs
SPEC_MODELS = [(path.name, n.name) for path in sorted(SPECS.glob("*.cnn")) for n in cnnc.networks_from_file(path)
               if is_classic_chain(n)]


def case_network(name: str):
    return cnnc.network_from_text(f"model {name} {{\n{CASES[name]}\n}}")


@pytest.fixture(scope="session")
def bundles(cache_dir):
    """{dtype: CModule}: every case and every shipped model, one module per dtype, built in parallel."""
    networks = [case_network(name) for name in CASES]
    networks += [n for path in sorted(SPECS.glob("*.cnn")) for n in cnnc.networks_from_file(path)
                 if is_classic_chain(n)]
    return compile_bundles(networks, ("float64", "float32"), cache_dir)


# ---- comparing -------------------------------------------------------------------------------------
def rel_err(a, b) -> float:
    """max |a - b| relative to the reference's largest entry: one number per tensor."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.abs(a - b).max(initial=0.0) / max(np.abs(b).max(initial=0.0), 1e-300))


def assert_close(got: dict, expected: dict, tol: float, against: str) -> None:
    assert set(got) == set(expected)
    bad = {name: rel_err(got[name], expected[name]) for name in expected}
    bad = {name: f"{err:.1e}" for name, err in bad.items() if not err <= tol}
    assert not bad, f"differs from {against} beyond {tol:g} (relative to each tensor's largest entry): {bad}"


def randomize(model, seed: int) -> None:
    """Normal parameters, biases too, so every term of every gradient is exercised."""
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        p[...] = rng.normal(size=p.shape) * (1.0 if p.ndim == 1 else 1.0 / np.sqrt(p[0].size))


def masks_for(network, n: int, seed: int) -> dict:
    """The dropout masks a Model with this seed draws for its first training forward of n samples."""
    return NumpyModel(network, "float64", seed)._dropout_masks(n) or {}


def forward_backward(model, x, dy, train: bool) -> dict:
    y = model.forward(x, train=train)
    dx = model.backward(dy)
    return {"y": y, "dx": dx, **{f"grad {k}": v.copy() for k, v in model.grads.items()}}


def c_and_numpy_models(bundles, network, dtype: str, seed: int):
    c = bundles[dtype].model(network.name, seed=seed)
    randomize(c, seed)
    ref = NumpyModel(network, dtype, seed)
    ref.load_weights(c.params)
    return c, ref


def check_against_references(bundles, torch_ref, network, dtype: str, n: int = 3, seed: int = 0) -> None:
    """Train-mode forward (dropout masks, identical in both: same seed) and backward of a random dy, then
    the loss path, each against the NumPy backend and PyTorch (float64) with the dtype's tolerance."""
    tol = TOLERANCE[dtype]
    c, ref = c_and_numpy_models(bundles, network, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=(n, *network.input_shape)).astype(dtype)
    dy = rng.normal(size=(n, *network.output_shape)).astype(dtype)
    masks = masks_for(network, n, seed)

    got = forward_backward(c, x, dy, train=True)
    assert all(v.dtype == np.dtype(dtype) for v in got.values())
    assert_close(got, forward_backward(ref, x, dy, train=True), tol, f"the NumPy backend ({dtype})")
    ty, tdx, tgrads = torch_ref.torch_forward_backward(network, c.params, x, dy, masks)
    assert_close(got, {"y": ty, "dx": tdx, **{f"grad {k}": v for k, v in tgrads.items()}}, tol, "PyTorch")

    # through the model's loss, eval mode
    target = (rng.integers(0, network.output_shape[0], n) if c.loss_kind == "cross_entropy"
              else rng.normal(size=(n, *network.output_shape)))
    results = {}
    for name, model in [("c", c), ("numpy", ref)]:
        y = model.forward(x)
        loss, dloss = model.loss(y, target)
        dx = model.backward(dloss)
        results[name] = {"loss": np.array(loss), "dy": dloss, "dx": dx, **{f"grad {k}": v.copy() for k, v in model.grads.items()}}
    assert_close(results["c"], results["numpy"], tol, f"the NumPy backend's loss path ({dtype})")
    tloss, _, tdx, tgrads = torch_ref.torch_loss_backward(network, c.params, x, target)
    del results["c"]["dy"]
    assert_close(results["c"], {"loss": np.array(tloss), "dx": tdx, **{f"grad {k}": v for k, v in tgrads.items()}},
                 tol, "PyTorch's loss path")


# ---- agreement ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_every_layer_configuration_agrees_with_numpy_and_pytorch(bundles, torch_ref, case, dtype):
    check_against_references(bundles, torch_ref, case_network(case), dtype, seed=zlib.crc32(case.encode()) % 1000)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec,model", SPEC_MODELS)
def test_shipped_models_agree_with_numpy_and_pytorch(bundles, torch_ref, spec, model, dtype):
    check_against_references(bundles, torch_ref, cnnc.read_network(SPECS / spec, model), dtype, n=2)


def test_batch_sizes_one_odd_and_large_reuse_one_growing_block(bundles):
    """N is a runtime argument: the activation block grows to the largest batch and is reused below it."""
    network = case_network("net_2d")
    c, ref = c_and_numpy_models(bundles, network, "float64", 5)
    rng = np.random.default_rng(5)
    capacities = []
    for n in (7, 1, 513, 1, 64):
        x = rng.normal(size=(n, *network.input_shape))
        dy = rng.normal(size=(n, *network.output_shape))
        assert_close(forward_backward(c, x, dy, False), forward_backward(ref, x, dy, False), 1e-10, f"NumPy at N={n}")
        capacities.append(c._capacity)
    assert capacities == [7, 7, 513, 513, 513]
    slack = 2 * 64 // 8  # reals: one vector to align the block, one for vector reads past its end
    assert c.activation_bytes == (c.plan.fixed_count + 513 * c.plan.act_count + slack) * 8 + 513 * c.plan.argmax_count * 4


def test_a_batch_the_system_has_no_memory_for_is_refused_with_its_size_and_the_model_still_works(bundles, monkeypatch):
    """The activation block is an anonymous mapping: when the system refuses it (ENOMEM), the error names the
    batch and the memory it needs, and the block the model had stays in use."""
    import mmap

    from cnnc.diagnostics import CnncError

    network = case_network("net_2d")
    c, ref = c_and_numpy_models(bundles, network, "float64", 5)
    x = np.random.default_rng(5).normal(size=(3, *network.input_shape))
    y = c.forward(x)

    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    with monkeypatch.context() as patch:
        patch.setattr(mmap, "mmap", refuse)
        with pytest.raises(CnncError, match=r"a batch of 1,000 needs [0-9.]+ [KMGT]B of activation memory .* use a smaller batch"):
            c.forward(np.zeros((1000, *network.input_shape)))
    assert c._capacity == 3
    np.testing.assert_array_equal(c.forward(x), y)
    np.testing.assert_allclose(y, ref.forward(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inference_short_path_matches_the_checked_path_and_returns_fresh_arrays(bundles, dtype):
    """forward on a C-contiguous array of the model's dtype skips conversions; anything else is converted
    first. Both give the same bits, and every call returns a new array the next call leaves alone."""
    m = bundles[dtype].model("mnist_cnn", seed=0)
    x = np.random.default_rng(3).normal(size=(3, *m.input_shape)).astype(dtype)
    y = m.forward(x)
    other = "float64" if dtype == "float32" else "float32"
    wide = np.zeros((3, *m.input_shape[:-1], 2 * m.input_shape[-1]), dtype)
    wide[..., ::2] = x  # a strided view: not C-contiguous
    assert np.array_equal(m.forward(wide[..., ::2]), y)
    assert np.array_equal(m.forward(x.tolist()), y)
    assert np.array_equal(m.forward(x.astype(other)), m.forward(x.astype(other).astype(dtype)))
    first = m.forward(x[:1]).copy()
    kept = m.forward(x[:1])
    again = m.forward(x[1:2])
    assert np.array_equal(kept, first) and not np.shares_memory(kept, again)
    assert np.array_equal(again, y[1:2]) and np.array_equal(kept, y[:1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 397, -1])
def test_short_path_rejects_non_finite_inputs_anywhere_in_the_batch(bundles, bad, where):
    """The finiteness check runs in C on the short path: every element, up to the last one, is checked."""
    m = bundles["float32"].model("mnist_cnn", seed=0)
    for n in (1, 3):
        x = np.ones((n, *m.input_shape), np.float32)
        x.reshape(-1)[where] = bad
        with pytest.raises(ValueError, match="x contains NaN or infinite values"):
            m.forward(x)
    huge = np.full((1, *m.input_shape), np.finfo(np.float32).max, np.float32)
    assert m.forward(huge).shape == (1, *m.output_shape)  # the largest finite value is finite


@pytest.mark.parametrize("n", [3, 5, 67])
def test_uneven_batch_slices_agree_with_numpy_and_pytorch(bundles, torch_ref, n):
    """A batch runs as min(N, MODEL_SLICES) slices of unequal sizes (LeNet-5 in float32 has 4: at N=5
    they hold 1, 1, 1 and 2 samples), each with its own scratch and gradient block: every sample's
    output and input gradient, and the summed parameter gradients, must still match the references."""
    network = cnnc.read_network(SPECS / "lenet5.cnn")
    assert bundles["float32"].model(network.name).plan.slices == 4
    check_against_references(bundles, torch_ref, network, "float32", n=n, seed=n)


def test_results_do_not_depend_on_threads_or_on_other_samples_in_the_batch(bundles):
    """Threads split the batch, never a sum: the same input gives the same bits, alone or in a batch."""
    c = bundles["float32"].model("net_2d", seed=1)
    x = np.random.default_rng(2).normal(size=(33, *c.input_shape)).astype(np.float32)
    y = c.forward(x)
    assert np.array_equal(y, c.forward(x))
    assert np.array_equal(y[5:6], c.forward(x[5:6]))


THREADS_SCRIPT = """
import sys, numpy as np, cnnc
from cnnc.backends.c_backend import compile_networks
networks = [cnnc.read_network(sys.argv[2]), cnnc.read_network(sys.argv[3], model="mnist_cnn")]
module = compile_networks(networks, "float32", cache_dir=sys.argv[1])
out = {}
for network in networks:
    m = module.model(network.name, seed=0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, *m.input_shape)).astype(np.float32)
    y = m.forward(x, train=True)
    loss, dy = m.loss(y, rng.integers(0, 10, 64))
    out[network.name + " y"], out[network.name + " dx"] = y, m.backward(dy)
    out.update({network.name + " " + k: v for k, v in m.grads.items()})
np.savez(sys.argv[4], **out)
"""


def test_one_and_two_threads_give_identical_results(cache_dir, tmp_path):
    """LeNet-5 and the MNIST net at batch 64 (past every parallel threshold): threads share out batch slices
    whose gradient blocks are summed in slice order, never in thread order, so OMP_NUM_THREADS=1 and 2 give
    the same bits."""
    import os
    import sys
    results = {}
    for threads in (1, 2):
        path = tmp_path / f"threads{threads}.npz"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(cache_dir), str(SPECS / "lenet5.cnn"),
                        str(SPECS / "mnist_pair.cnn"), str(path)], env=env, check=True, timeout=300)
        with np.load(path) as data:
            results[threads] = dict(data)
    assert len(results[1]) == 2 * 2 + 10 + 6 and set(results[1]) == set(results[2])
    differ = [name for name in results[1] if not np.array_equal(results[1][name], results[2][name])]
    assert not differ, f"1 and 2 threads differ in {differ}"
    assert all(np.abs(v).max() > 0 for v in results[1].values())


def test_kernel_choice_covers_every_blocked_variant_and_the_direct_fallback():
    for (case, layer_name), expected in BLOCKED_VARIANTS.items():
        layer = case_network(case).layer(layer_name)
        assert choose_kernel(layer) == "blocked", case
        blocked = BlockedConv.of(layer, 16)
        assert (blocked.forward_by_columns, blocked.input_grad_by_columns, blocked.weight_grad_by_columns) == expected, case
        if expected[2]:  # in float64 too (8 lanes)
            assert BlockedConv.of(layer, 8).weight_grad_by_columns, case
        # a strided input gradient vectorised over channels goes phase by phase, in float64 too
        stride = layer.stride if layer.spatial_dims == 2 else (1, *layer.stride)
        for vl in (16, 8):
            b = BlockedConv.of(layer, vl)
            assert b.input_grad_phases == (max(stride) > 1 and not b.input_grad_by_columns), (case, vl)
    assert BlockedConv.of(case_network("blocked_s2_d2_nonsquare").layer("c"), 16).input_grad_phases
    assert all(BlockedConv.of(case_network(case).layer("c"), vl).input_grad_phases
               for case in CASES if case.startswith("blocked_phases") for vl in (16, 8))
    # 1x1 with no padding, and only that, runs as pointwise GEMMs (in float64 too), whatever the stride
    for case in CASES:
        for layer in case_network(case).layers:
            if choose_kernel(layer) == "blocked" and layer.kind.startswith("conv"):
                expected = case.startswith("blocked_pointwise") or case == "blocked_phases_1x1_s2"
                for vl in (16, 8):  # backward as GEMMs too, with a stride or without
                    b = BlockedConv.of(layer, vl)
                    assert (b.pointwise, b.pointwise_weight_grad, b.pointwise_input_grad) == (expected,) * 3, (
                        case, layer.name, vl)
                    if expected:  # weight-gradient tiles: accumulators, held dout vectors, x and mask in 30 zmm
                        assert b.PFB * b.PCB + b.PFB + 2 <= 30, (case, layer.name, vl)
    assert sum(case.startswith("blocked_pointwise") for case in CASES) == 8
    for case in ("conv2d_k3", "conv2d_k3_s3_p21_d2_nobias", "conv1d_k4_s3_p2"):  # 3 filters; stride 3
        assert choose_kernel(case_network(case).layer("c")) == "direct", case
    # windows reaching over more than 4x the input's area: no padded copies (depthwise: conv.h per group)
    assert choose_kernel(case_network("direct_huge_padding_dilation").layer("c")) == "direct"
    assert depthwise_plane(case_network("grouped_huge_padding_depthwise").layer("c")) is None
    # dense: blocked from 16 inputs (tails of inputs, of units, of samples), direct below
    assert [choose_kernel(layer) for layer in case_network("blocked_dense_odd").layers] == ["blocked", "direct"]
    assert choose_kernel(case_network("flatten_dense").layer("d")) == "blocked"
    # max pooling: the fixed 2x2 / stride 2 / no padding window, the general one otherwise
    assert choose_kernel(case_network("maxpool2d_2").layer("p")) == "2x2"
    assert choose_kernel(case_network("maxpool2d_2_odd_ties").layer("p")) == "2x2"
    assert choose_kernel(case_network("maxpool2d_2_wide").layer("p")) == "2x2"
    assert choose_kernel(case_network("maxpool2d_2_whole_vectors").layer("p")) == "2x2"
    for case in ("maxpool2d_32_s21_p1", "maxpool2d_3_s1_p1", "maxpool2d_42_s23_p21", "maxpool1d_3_s2_p1"):
        assert choose_kernel(case_network(case).layers[0]) == "direct", case
    # LeNet-5's c1 (6 filters, 28 columns): weight gradient by columns, 3 filters x 5 taps per tile (no
    # transposed output gradient); c3 (16 filters, 10 columns): by filters, tiles of all 10 columns
    plan = plan_network(cnnc.read_network(SPECS / "lenet5.cnn"), "", "float32")
    c1, c3 = plan.layers[0], plan.layers[2]
    assert isinstance(c1, BlockedConvPlan) and c1.blocking.weight_grad_by_columns and c1.blocking.WMB == 3
    assert c1.dyt == "NULL" and not any(b.field == "l1_dyt" for b in plan.acts)
    assert not c3.blocking.weight_grad_by_columns and (c3.blocking.OB, c3.blocking.OB_TAIL) == (10, 0)


@pytest.mark.parametrize("case,dtype", [("blocked_net", "float64"), ("net_2d", "float32"), ("net_1d", "float64")])
def test_backward_without_input_grad_gives_the_same_gradients_and_no_dx(bundles, case, dtype):
    c = bundles[dtype].model(case, seed=4)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, *c.input_shape)).astype(dtype)
    dy = rng.normal(size=(5, *c.output_shape)).astype(dtype)
    c.forward(x)
    assert c.backward(dy).shape == x.shape
    full = {k: v.copy() for k, v in c.grads.items()}
    c.grad_block[...] = np.nan
    assert c.backward(dy, input_grad=False) is None
    for name, value in full.items():
        assert np.array_equal(c.grads[name], value), name


def test_backward_reuses_the_saved_state_of_the_last_forward_only(bundles):
    c = bundles["float64"].model("net_2d")
    x = np.random.default_rng(3).normal(size=(4, *c.input_shape))
    c.forward(x)
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 3\)"):
        c.backward(np.zeros((5, 3)))
    fresh = bundles["float64"].model("net_2d")
    with pytest.raises(ValueError, match="needs a forward"):
        fresh.backward(np.zeros((4, 3)))
    # The C boundary checks what it is handed even when the base class's checks are bypassed.
    with pytest.raises(ValueError, match=r"x must be a C-contiguous float64 array of shape \(4, 2, 9, 9\)"):
        c._forward(x.astype(np.float32), False, None)
    with pytest.raises(ValueError, match="dy"):
        c._backward(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="dropout mask for 'dropout_1'"):
        c._forward(x, True, {"dropout_1": np.ones((4, 5))})


def test_maxpool_2x2_ties_go_to_the_first_in_window_order(bundles):
    network = case_network("maxpool2d_2_odd_ties")
    c, ref = c_and_numpy_models(bundles, network, "float64", 0)
    x = np.zeros((2, *network.input_shape))  # every window a tie, but for a few winners placed by hand
    x[0, 0, 1, 1] = x[0, 1, 2, 3] = x[1, 2, 5, 4] = 1.0
    x[1, 0, 0, :] = x[1, 0, 1, :] = -1.0  # ties of negatives in the top windows
    dy = np.arange(np.prod(network.output_shape), dtype=np.float64).reshape(1, *network.output_shape) + 1
    dy = np.concatenate([dy, 2 * dy])
    got, expected = forward_backward(c, x, dy, False), forward_backward(ref, x, dy, False)
    assert np.array_equal(got["y"], expected["y"]) and np.array_equal(got["dx"], expected["dx"])
    assert got["dx"][0, 0, 1, 1] == dy[0, 0, 0, 0] and got["dx"][0, 0, 0, 0] == 0
    assert got["dx"][1, 0, 0, 2] == dy[1, 0, 0, 1] and got["dx"][0, 2, 0, 0] == dy[0, 2, 0, 0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", ["maxpool2d_2_wide", "maxpool2d_2_whole_vectors", "maxpool2d_2_odd_ties"])
def test_maxpool_2x2_vector_blocks_break_ties_like_the_reference(bundles, case, dtype):
    """Inputs from {-1, 0, 1}: most windows hold ties, across rows longer than a vector, exactly a vector
    and odd-sized; the winners (and so every gradient cell) must be the reference's exactly."""
    network = case_network(case)
    c, ref = c_and_numpy_models(bundles, network, dtype, 0)
    rng = np.random.default_rng(3)
    x = rng.integers(-1, 2, size=(3, *network.input_shape)).astype(dtype)
    dy = rng.normal(size=(3, *network.output_shape)).astype(dtype)
    got, expected = forward_backward(c, x, dy, False), forward_backward(ref, x, dy, False)
    assert np.array_equal(got["y"], expected["y"]) and np.array_equal(got["dx"], expected["dx"])
    assert np.count_nonzero(got["dx"]) == dy.size


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # NumPy's own inf * 0, on purpose
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", ["nan_pool_2x2", "nan_pool_general"])
def test_nan_propagates_through_relu_and_max_pooling_like_the_reference(bundles, torch_ref, case, dtype):
    """A NaN is not a number that loses every comparison: ReLU keeps it (like np.maximum and torch.relu) and
    max pooling lets it win its window, the first NaN in window order (like np.argmax); PyTorch's outputs
    are NaN in the same places."""
    import torch

    network = case_network(case)
    c, ref = c_and_numpy_models(bundles, network, dtype, 0)
    weights = {"c.weight": np.array([np.inf, 1.0]).reshape(2, 1, 1, 1), "c.bias": np.zeros(2)}
    for model in (c, ref):  # (load_weights refuses non-finite weights: set them directly)
        for name, value in weights.items():
            model.params[name][...] = value
    x = np.random.default_rng(4).uniform(0.5, 1.0, size=(2, *network.input_shape)).astype(dtype)
    x[0, 0, 1, 1] = x[0, 0, 2, 4] = x[1, 0, 0, 0] = x[1, 0, 3, 3] = 0.0  # inf * 0: NaN in channel 0 there
    y_c, y_ref = c.forward(x), ref.forward(x)
    assert np.isnan(y_ref).any() and not np.isnan(y_ref).all()
    np.testing.assert_array_equal(y_c, y_ref)  # NaN where the reference has NaN, equal numbers elsewhere
    dy = np.ones_like(y_c)
    np.testing.assert_array_equal(np.isnan(c.backward(dy)), np.isnan(ref.backward(dy)))
    layer = network.layer("p")
    pooled = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(
        torch.from_numpy(x.astype(np.float64)), torch.from_numpy(weights["c.weight"]), torch.zeros(2, dtype=torch.float64))),
        layer.kernel, layer.stride, layer.pad_before)
    np.testing.assert_array_equal(np.isnan(y_c), np.isnan(pooled.flatten(1).numpy().reshape(y_c.shape)))


def test_maxpool_2x2_backward_overwrites_every_input_gradient_cell_including_uncovered_edges(bundles):
    """The 2x2 backward writes (=) its whole input gradient instead of accumulating into a zeroed one:
    cells that lost their window, and the odd last row and column no window covers, must come out 0 even
    when the buffer held other values (a garbage-filled dx, and the reused scratch of a deeper network)."""
    network = case_network("maxpool2d_2_odd_ties")  # (3, 7, 9) -> (3, 3, 4): row 6 and column 8 uncovered
    c, ref = c_and_numpy_models(bundles, network, "float64", 0)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, *network.input_shape))
    dy = rng.normal(size=(2, *network.output_shape))
    c.forward(x)
    dx = np.full((2, *network.input_shape), 7.0)  # garbage where the winners' zeros must go
    c._c_backward(c._ptr(dx, writable=True), c._grad_mem, c._ptr(dy), c._param_mem, c._acts, c._argmax, 2, 0, 1, 0)
    ref.forward(x)
    assert np.array_equal(dx, ref.backward(dy))
    assert not dx[:, :, 6, :].any() and not dx[:, :, :, 8].any()
    assert np.count_nonzero(dx) == dy.size  # one winner per window, every other cell 0
    deeper = case_network("net_2d")  # conv (9x9) -> 2x2 max pool (4x4): its dinp is reused gradient scratch
    c, ref = c_and_numpy_models(bundles, deeper, "float64", 2)
    for n in (3, 3, 2):
        x = rng.normal(size=(n, *deeper.input_shape))
        dy = rng.normal(size=(n, *deeper.output_shape))
        assert_close(forward_backward(c, x, dy, False), forward_backward(ref, x, dy, False), 1e-10, "NumPy")
    # the blocked dense layer's input gradient is not zeroed first either: it lands on scratch still holding
    # a later layer's gradient (mnist_cnn: out's, then the pool's), so garbage there would show
    network = cnnc.read_network(SPECS / "mnist_pair.cnn", model="mnist_cnn")
    c, ref = c_and_numpy_models(bundles, network, "float64", 5)
    for n in (3, 2):
        x = rng.normal(size=(n, *network.input_shape))
        dy = rng.normal(size=(n, *network.output_shape))
        assert_close(forward_backward(c, x, dy, False), forward_backward(ref, x, dy, False), 1e-10, "NumPy")


def test_maxpool_ties_go_to_the_first_in_window_order_and_padding_never_wins(bundles):
    network = case_network("maxpool2d_3_s1_p1")
    c, ref = c_and_numpy_models(bundles, network, "float64", 0)
    x = -np.ones((1, *network.input_shape))  # every window a tie, and padding (-inf) below every value
    x[0, 1, 2, 2] = 5.0
    dy = np.arange(np.prod(network.output_shape), dtype=np.float64).reshape(1, *network.output_shape) + 1
    got, expected = forward_backward(c, x, dy, False), forward_backward(ref, x, dy, False)
    assert np.array_equal(got["y"], expected["y"]) and got["y"].min() == -1.0
    assert np.array_equal(got["dx"], expected["dx"])
    assert got["dx"][0, 0, 0, 0] == dy[0, 0, 0, 0] + dy[0, 0, 0, 1] + dy[0, 0, 1, 0] + dy[0, 0, 1, 1]


def test_activation_derivatives_at_exactly_zero_match_pytorch(bundles, torch_ref):
    for case in ("relu", "leaky_relu"):
        network = case_network(case)
        c = bundles["float64"].model(case)
        x = np.zeros((2, *network.input_shape))
        dy = np.ones((2, *network.output_shape))
        got = forward_backward(c, x, dy, False)
        ty, tdx, _ = torch_ref.torch_forward_backward(network, c.params, x, dy)
        assert np.array_equal(got["y"], ty) and np.array_equal(got["dx"], tdx), case


def test_dropout_in_eval_mode_is_the_identity_and_in_training_uses_the_drawn_masks(bundles):
    network = case_network("dropout")
    c = bundles["float64"].model("dropout", seed=3)
    x = np.random.default_rng(0).normal(size=(5, *network.input_shape))
    assert np.array_equal(c.forward(x), x)
    assert np.array_equal(c.backward(x), x)
    mask = masks_for(network, 5, seed=3)["d"]
    y = c.forward(x, train=True)
    assert np.array_equal(y, x * mask) and set(np.unique(mask)) == {0.0, 2.0}
    assert np.array_equal(c.backward(np.ones_like(x)), mask)


def test_gradcheck_passes_on_a_c_model_in_float64(bundles):
    errors = gradcheck(bundles["float64"].model("net_2d"), batch=2)
    assert set(errors) == {"c1.weight", "c1.bias", "c2.weight", "c2.bias", "d1.weight", "d1.bias", "out.weight",
                           "out.bias", "input"}
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("case", [case for case in CASES if case.startswith("blocked_pointwise")])
def test_pointwise_convolutions_match_finite_differences(bundles, case):
    """The 1x1 convolutions that run as GEMMs over the planes: input and every parameter gradient."""
    errors = gradcheck(bundles["float64"].model(case), batch=3)
    assert "input" in errors and any(name.endswith(".weight") for name in errors)
    assert max(errors.values()) < 1e-6, errors


ONE_STEP_SCRIPT = (
    "import sys, numpy as np, cnnc\n"
    "from cnnc.backends.c_backend import compile_networks\n"
    "network = cnnc.network_from_text(sys.argv[2])\n"
    "m = compile_networks([network], 'float32', cache_dir=sys.argv[1]).model(network.name, seed=0)\n"
    "rng = np.random.default_rng(1)\n"
    "x = rng.normal(size=(64, *m.input_shape)).astype(np.float32)\n"
    "y = m.forward(x, train=True)\n"
    "loss, dy = m.loss(y, rng.integers(0, 4, 64))\n"
    "np.savez(sys.argv[3], y=y, dx=m.backward(dy), **m.grads)\n")


def training_step_on_one_and_two_threads(case: str, cache_dir, tmp_path) -> dict[int, dict]:
    """A float32 training step of CASES[case] at batch 64 (two batch slices) in a fresh process with
    OMP_NUM_THREADS 1 and 2: {threads: {"y", "dx", every gradient: array}}."""
    import os
    import sys
    text = f"model {case}_threads {{\n{CASES[case]}\n}}"
    results = {}
    for threads in (1, 2):
        path = tmp_path / f"threads{threads}.npz"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run([sys.executable, "-c", ONE_STEP_SCRIPT, str(cache_dir), text, str(path)], env=env, check=True,
                       timeout=300)
        with np.load(path) as data:
            results[threads] = dict(data)
    return results


def assert_same_bits(results: dict[int, dict], names: set[str]) -> None:
    assert set(results[1]) == names == set(results[2])
    differ = [name for name in results[1] if not np.array_equal(results[1][name], results[2][name])]
    assert not differ, f"1 and 2 threads differ in {differ}"
    assert all(np.abs(v).max() > 0 for v in results[1].values())


def test_pointwise_convolutions_give_identical_results_on_one_and_two_threads(cache_dir, tmp_path):
    """A training step of the pointwise net at batch 64 (two slices; the strided layer's weight gradient in
    blocks of several samples): the same bits on one thread and on two."""
    results = training_step_on_one_and_two_threads("blocked_pointwise_net", cache_dir, tmp_path)
    assert_same_bits(results, {"y", "dx", "c1.weight", "c1.bias", "c2.weight", "c3.weight", "c3.bias", "out.weight",
                               "out.bias"})


DEPTHWISE_CASES = [case for case in CASES if case.startswith("depthwise")]


def test_depthwise_cases_run_the_phase_plane_kernels():
    for case in DEPTHWISE_CASES:
        for lp in plan_network(case_network(case), "", "float32").layers:
            if lp.layer.kind.startswith("conv"):
                assert isinstance(lp, GroupedConvPlan) and lp.scratch != "NULL", (case, lp.layer.name)
                assert lp.writes_whole_input_grad  # the depthwise backward writes dinp: no zeroing first


@pytest.mark.parametrize("case", DEPTHWISE_CASES)
def test_depthwise_convolutions_match_finite_differences(bundles, case):
    errors = gradcheck(bundles["float64"].model(case), batch=2)
    assert "input" in errors and any(name.endswith(".weight") for name in errors)
    assert max(errors.values()) < 1e-6, errors


def test_depthwise_convolutions_give_identical_results_on_one_and_two_threads(cache_dir, tmp_path):
    """A training step of depthwise_net at batch 64 (two slices, each with its own planes and per-tap sums):
    the same bits on one thread and on two."""
    results = training_step_on_one_and_two_threads("depthwise_net", cache_dir, tmp_path)
    assert_same_bits(results, {"y", "dx", "c1.weight", "c1.bias", "c2.weight", "c2.bias", "c3.weight", "c3.bias",
                               "out.weight", "out.bias"})


WINOGRAD_CASES = [case for case in CASES if case.startswith("winograd")]


def test_the_planner_sizes_depthwise_and_winograd_scratch_as_the_kernels_count_it(tmp_path):
    """The planner allocates a depthwise layer's and a Winograd layer's scratch from its own formulas
    (depthwise_scratch, winograd_scratch); the kernels index it by theirs (depthwise_scratch_reals,
    winograd_scratch_size). They must agree, or a kernel writes past its buffer into the next one: compiled
    and compared for every such layer of the cases and shipped specs, in both dtypes."""
    networks = [case_network(name) for name in CASES]
    networks += [n for path in sorted(SPECS.glob("*.cnn")) for n in cnnc.networks_from_file(path)]
    for dtype, ctype in (("float32", "float"), ("float64", "double")):
        plans = [plan_network(n, "", dtype) for n in networks]
        checked, lines, expected = [], [], []
        for k, plan in enumerate(plans):
            sizes = {b.field: b.elements for b in plan.acts}
            for lp in plan.layers:
                if isinstance(lp, GroupedConvPlan) and lp.scratch != "NULL":
                    call = "depthwise_scratch_reals({})"
                elif isinstance(lp, WinogradConvPlan):
                    call = "(winograd_scratch_size({0}.forward) > winograd_scratch_size({0}.input_grad) ? " \
                           "winograd_scratch_size({0}.forward) : winograd_scratch_size({0}.input_grad))"
                else:
                    continue
                name = f"G{len(checked)}"
                scratch = lp.scratch if isinstance(lp, GroupedConvPlan) else lp.wino
                lines.append(f"static const {lp.struct} {name} = {c_codegen.c_initializer(lp.geometry())};")
                expected.append(sizes[scratch.removeprefix("a.")])
                checked.append(call.format(name))
        assert len(checked) >= 15  # every depthwise and Winograd case, and the shipped MobileNet and ResNet
        headers = dict(generate(networks[:1], dtype).headers) | {f"kernels/{name}": text for name, text in
                                                                  c_codegen.kernel_headers().items()}
        for name, text in headers.items():
            (tmp_path / name).parent.mkdir(exist_ok=True)
            (tmp_path / name).write_text(text)
        program = tmp_path / f"sizes_{dtype}.c"
        program.write_text("\n".join([f"typedef {ctype} real;", "#define CNNC_KERNEL static inline",
                                      '#include "kernels/conv_grouped.h"', '#include "kernels/winograd.h"',
                                      "#include <stdio.h>", *lines, "int main(void)", "{",
                                      *[f'    printf("%lld\\n", (long long)({c}));' for c in checked],
                                      "    return 0;", "}", ""]))
        binary = tmp_path / f"sizes_{dtype}"
        subprocess.run(["gcc", "-O0", "-o", str(binary), str(program), "-lm"], check=True, capture_output=True)
        counted = [int(v) for v in subprocess.run([str(binary)], check=True, capture_output=True,
                                                  text=True).stdout.split()]
        assert counted == expected, dtype


def test_winograd_is_chosen_for_3x3_stride_1_with_enough_channels_and_only_there(monkeypatch):
    for case in WINOGRAD_CASES:
        plan = plan_network(case_network(case), "", "float32")
        chosen = {lp.layer.name: isinstance(lp, WinogradConvPlan) for lp in plan.layers if lp.layer.kind == "conv2d"}
        assert chosen == ({"c1": False, "c2": True, "c3": True} if case == "winograd_net" else {"c": True}), case
    for case in CASES:
        if case in WINOGRAD_CASES:
            continue
        for layer in case_network(case).layers:
            assert not winograd_fits(layer), (case, layer.name)
    layer = case_network("winograd_odd_9x9").layer("c")
    for change in ({"stride": (2, 2)}, {"dilation": (2, 2)}, {"kernel": (3, 2)}, {"groups": 2},
                   {"in_shape": (15, 9, 9)}, {"out_shape": (15, 9, 9)}, {"in_shape": (20, 6, 9)},
                   {"out_shape": (17, 9, 6)}, {"pad_before": (3, 1)}):
        assert not winograd_fits(dataclasses.replace(layer, **change)), change
    monkeypatch.setattr(c_codegen, "WINOGRAD", False)  # the switch for A/B runs: blocked instead
    assert not winograd_fits(layer)
    plan = plan_network(case_network("winograd_odd_9x9"), "", "float32")
    assert type(plan.layers[0]) is BlockedConvPlan
    key_off = c_build.source_key([case_network("winograd_odd_9x9")], "float32")
    monkeypatch.setattr(c_codegen, "WINOGRAD", True)
    assert c_build.source_key([case_network("winograd_odd_9x9")], "float32") != key_off  # another cache entry


def test_winograd_is_exact_in_float64(bundles):
    """F(2x2, 3x3)'s transforms are exact but for rounding: in float64 the forward pass, input and weight
    gradients agree with the NumPy backend's direct sums to about 1e-15 relative."""
    for case in WINOGRAD_CASES:
        network = case_network(case)
        c, ref = c_and_numpy_models(bundles, network, "float64", 3)
        rng = np.random.default_rng(4)
        x = rng.normal(size=(3, *network.input_shape))
        dy = rng.normal(size=(3, *network.output_shape))
        assert_close(forward_backward(c, x, dy, True), forward_backward(ref, x, dy, True), 1e-12, f"NumPy ({case})")


@pytest.mark.parametrize("case", ["winograd_odd_9x9", "winograd_p0_nonsquare", "winograd_p2_p1", "winograd_net"])
def test_winograd_convolutions_match_finite_differences(bundles, case):
    errors = gradcheck(bundles["float64"].model(case), batch=2)
    assert "input" in errors and any(name.endswith(".weight") for name in errors)
    assert max(errors.values()) < 1e-6, errors


def test_winograd_gives_identical_results_on_one_and_two_threads(cache_dir, tmp_path):
    """A training step of winograd_net at batch 64 (two slices, each with its own transformed weights and
    tile scratch): the same bits on one thread and on two."""
    results = training_step_on_one_and_two_threads("winograd_net", cache_dir, tmp_path)
    assert_same_bits(results, {"y", "dx", "c1.weight", "c1.bias", "c2.weight", "c2.bias", "c3.weight", "c3.bias",
                               "out.weight", "out.bias"})


@pytest.mark.parametrize("case", [case for case in CASES if case.startswith("blocked_phases")] + ["blocked_s2_d2_nonsquare"])
def test_phase_by_phase_input_gradients_match_finite_differences(bundles, case):
    """The strided blocked convolutions whose input gradient goes one phase of the stride at a time."""
    errors = gradcheck(bundles["float64"].model(case), batch=2)
    assert "input" in errors and "c.weight" in errors
    assert max(errors.values()) < 1e-6, errors


def test_gradcheck_command_accepts_the_c_backend(cache_dir, monkeypatch, capsys):
    monkeypatch.setenv("CNNC_CACHE_DIR", str(cache_dir))
    assert main(["gradcheck", str(SPECS / "worked_2d.cnn"), "--backend", "c"]) == 0
    out = capsys.readouterr().out
    assert "c backend" in out and "all 3 tensors within" in out


# ---- the zero-copy views ------------------------------------------------------------------------------
def test_params_and_grads_are_views_on_the_c_blocks(bundles):
    c = bundles["float64"].model("flatten_dense")
    w, g = c.params["d.weight"], c.grads["d.weight"]
    assert np.shares_memory(w, c.param_block) and np.shares_memory(g, c.grad_block)
    assert w.flags.writeable and w.shape == (5, 24)
    x = np.ones((1, 2, 3, 4))
    c.params["d.bias"][...] = 0
    w[...] = 0
    w[3, :] = 1.0
    assert np.array_equal(c.forward(x)[0], [0, 0, 0, 24, 0])
    c.backward(np.ones((1, 5)))
    assert c.grads["d.weight"] is g and np.array_equal(g, np.ones((5, 24)))  # backward writes in place


@pytest.mark.parametrize("make", [
    lambda p, g: SGD(p, g, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
    lambda p, g: Adam(p, g, lr=0.01, weight_decay=0.001),
], ids=["sgd", "adam"])
def test_python_optimisers_train_the_c_model_through_its_views(bundles, make):
    network = case_network("net_1d")
    c, ref = c_and_numpy_models(bundles, network, "float64", 7)
    rng = np.random.default_rng(7)
    x, target = rng.normal(size=(6, 3, 16)), rng.normal(size=(6, 2))
    optimisers = [make(m.params, m.grads) for m in (c, ref)]
    losses = {"c": [], "numpy": []}
    for step in range(4):
        for (name, m), opt in zip([("c", c), ("numpy", ref)], optimisers):
            loss, dy = m.loss(m.forward(x, train=True), target)
            m.backward(dy)
            opt.step()
            losses[name].append(loss)
    assert np.allclose(losses["c"], losses["numpy"], rtol=1e-10, atol=0)
    assert losses["c"][-1] < losses["c"][0]
    assert_close(c.params, ref.params, 1e-10, "the NumPy model trained the same way")


@pytest.mark.parametrize("fused,plain,hyper", [
    (FusedSGD, SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "nesterov": True}),
    (FusedSGD, SGD, {"lr": 0.05}),
    (FusedAdam, Adam, {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.001}),
], ids=["sgd-nesterov", "sgd-plain", "adam"])
def test_fused_c_optimisers_step_like_cnnc_optim_and_share_its_checkpoints(bundles, fused, plain, hyper):
    network = case_network("net_2d")
    c, ref = c_and_numpy_models(bundles, network, "float64", 9)
    rng = np.random.default_rng(9)
    x, labels = rng.normal(size=(5, *network.input_shape)), rng.integers(0, 3, 5)
    opts = {"c": fused(c, **hyper), "numpy": plain(ref.params, ref.grads, **hyper)}

    def train(steps: int) -> None:
        for _ in range(steps):
            for name, m in [("c", c), ("numpy", ref)]:
                m.backward(m.loss(m.forward(x), labels)[1])
                opts[name].step()

    train(3)
    assert_close(c.params, ref.params, 1e-10, "cnnc.optim stepping the NumPy model")
    # Checkpoints cross over: the fused optimiser resumes from the NumPy one's state, and back.
    opts["c"].load_state_dict(opts["numpy"].state_dict())
    opts["numpy"].load_state_dict(opts["c"].state_dict())
    train(2)
    assert_close(c.params, ref.params, 1e-10, "cnnc.optim after exchanging checkpoints")
    assert opts["c"].steps == 5
    with pytest.raises(ValueError, match="C backend model"):
        fused(ref)


def test_save_and_load_weights_round_trip_through_the_c_blocks(bundles, tmp_path):
    c = bundles["float32"].model("lenet5", seed=4)
    c.save(tmp_path / "w.npz")
    d = bundles["float32"].model("lenet5", seed=5)
    assert not np.array_equal(c.params["c1.weight"], d.params["c1.weight"])
    d.load_weights(tmp_path / "w.npz")
    x = np.random.default_rng(0).normal(size=(2, 1, 28, 28))
    assert np.array_equal(c.forward(x), d.forward(x))


def test_same_seed_gives_the_same_initial_parameters_as_the_numpy_backend(bundles):
    network = cnnc.read_network(SPECS / "lenet5.cnn")
    c, ref = bundles["float32"].model("lenet5", seed=11), NumpyModel(network, "float32", 11)
    for name in ref.params:
        assert np.array_equal(c.params[name], ref.params[name]), name


def test_a_model_and_a_module_of_another_dtype_do_not_mix(bundles):
    with pytest.raises(ValueError, match="compiled for float32"):
        CModel(case_network("relu"), "float64", module=bundles["float32"])
    with pytest.raises(ValueError, match="no model 'nope'"):
        bundles["float32"].model("nope")


# ---- the generated C ----------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_generated_c_compiles_without_warnings_under_wall_wextra(bundles, tmp_path, dtype):
    assert_compiles_without_warnings(bundles[dtype].source, tmp_path)


def test_code_generation_has_at_most_five_templates():
    """The C is the kernel library plus thin glue: one template for the backend's module and four for the
    standalone export (its header, source, example main and Makefile), shared by the float and int8 exports."""
    from conftest import ROOT

    templates = sorted(p.relative_to(ROOT / "templates").as_posix() for p in (ROOT / "templates").rglob("*.j2"))
    assert templates == ["export/Makefile.j2", "export/header.h.j2", "export/main.c.j2", "export/source.c.j2",
                         "module.c.j2"]


def test_lenet5_glue_is_short_and_every_kernel_comes_from_the_library():
    """The generated file only lays out the blocks and calls the kernels: LeNet-5's glue is at most 500 lines,
    defines no function of the kernel library, and includes only headers that exist in it."""
    source = generate(cnnc.read_network(SPECS / "lenet5.cnn"), "float32")
    assert len(source.text.splitlines()) <= 500
    library = dict(source.headers)
    kernels = {m for text in library.values() for m in re.findall(r"^CNNC_KERNEL \w+ (\w+)\(", text, flags=re.M)}
    assert {"conv2d_blocked_forward", "dense_blocked_backward", "maxpool2d_2x2_forward"} <= kernels
    defined = set(re.findall(r"^\w[\w* ]* (\w+)\([^;]*$", source.text, flags=re.M))
    assert not defined & kernels
    assert set(re.findall(r'#include "(kernels/\w+\.h)"', source.text)) <= set(library)


# ---- memory: what `cnnc check` reports is what the C model allocates ----------------------------------
def test_check_reports_the_c_backends_memory_with_its_scratch_and_the_model_allocates_exactly_that(cache_dir):
    """A padded, dilated convolution's scratch (its zero-padded input and spread output gradient) is most of
    its memory: `cnnc check` counts it, and the C model's activation block for a batch of n is exactly
    fixed + n * per_sample (plus the alignment slack)."""
    network = case_network("blocked_wgrad_columns_d2")
    memory = c_backend_memory(network, "float64")
    assert memory["per_sample"] > 2 * network.activation_elements * 8  # scratch and saved state beyond activations
    c = compile_networks([network], "float64", cache_dir=cache_dir).model(network.name)
    for n in (1, 7):
        c.forward(np.zeros((n, *network.input_shape)))
        assert c.activation_bytes == memory["fixed"] + n * memory["per_sample"] + 2 * VECTOR_BYTES
    assert "C backend memory (float32, with saved state and scratch)" in summary_table(network)


def test_a_buffer_past_2_to_the_31_elements_per_sample_is_refused_by_the_planner_and_reported_by_check(tmp_path, capsys):
    """Indices inside one sample's tensor are int in the kernels (those involving the batch are 64-bit): a
    layer whose scratch would need 2^31 elements or more is a clear error, not an overflow. Here the
    depthwise kernel's phase planes of a 1.8e9-value input (which the front end accepts: under 2^31)."""
    spec = tmp_path / "big.cnn"
    spec.write_text("model big {\n  input x[2, 30000, 30000]\n  conv2d c(filters=2, kernel=3, groups=2, padding=1)\n}\n")
    with pytest.raises(cnnc.CnncError, match="more than it indexes"):
        plan_network(cnnc.read_network(spec), "", "float32")
    assert main(["check", str(spec)]) == 0
    assert "C backend memory: too large" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", ["float16", "int8", np.float32, None])
def test_a_dtype_the_code_generator_has_no_c_type_for_is_a_value_error_naming_the_choices(dtype):
    """Only names of C types reach the generator: plan_network, and generate through it, refuse anything
    else (even NumPy's float32 type: Model checks and names it first) with the choices, not a KeyError."""
    network = cnnc.read_network(SPECS / "lenet5.cnn")
    for call in (lambda: plan_network(network, "", dtype), lambda: generate(network, dtype)):
        with pytest.raises(ValueError, match=r"dtype must be one of float32, float64; got "):
            call()


# ---- safety: nothing unchecked reaches the C -------------------------------------------------------
HOSTILE = ['x); system("rm -rf /"); //', "a*/ evil(); /*", "c1\n#include <stdlib.h>", "", "1abc", "c-1", "näme"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_layer_names_built_directly_as_ir_are_refused(name):
    network = cnnc.read_network(SPECS / "lenet5.cnn")
    layers = list(network.layers)
    layers[0] = dataclasses.replace(layers[0], name=name)
    with pytest.raises(ValueError, match="not a valid identifier"):
        generate(dataclasses.replace(network, layers=tuple(layers)))


@pytest.mark.parametrize("field", ["name", "input_name"])
def test_hostile_model_and_input_names_are_refused(field):
    network = cnnc.read_network(SPECS / "lenet5.cnn")
    with pytest.raises(ValueError, match="not a valid identifier"):
        generate(dataclasses.replace(network, **{field: 'm */ system("id"); /*'}))


@pytest.mark.parametrize("change,message", [
    ({"kind": 'relu"); evil("'}, "unknown layer kind"),
    ({"activation": "system"}, "activation"),
    ({"kernel": ("5); evil(", 5)}, "kernel must be an integer"),
    ({"kernel": (5.0, 5)}, "kernel must be an integer"),
    ({"stride": (True, 1)}, "stride must be an integer"),
    ({"slope": float("nan")}, "slope must be a finite number"),
    ({"out_shape": (6, "28", 28)}, "out_shape must be an integer"),
    ({"filters": 2**31}, "filters must be an integer"),
    ({"pad_before": (-1, 2)}, "pad_before must be an integer"),
])
def test_hostile_layer_fields_are_refused(change, message):
    network = cnnc.read_network(SPECS / "lenet5.cnn")
    layers = list(network.layers)
    layers[0] = dataclasses.replace(layers[0], **change)
    with pytest.raises(ValueError, match=message):
        generate(dataclasses.replace(network, layers=tuple(layers)))


def test_a_missing_compiler_is_a_clear_error_suggesting_the_numpy_backend(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "/nonexistent/cnnc-test-cc")
    with pytest.raises(cnnc.CnncError) as info:
        cnnc.load(SPECS / "worked_1d.cnn", backend="c", cache_dir=tmp_path)
    message = str(info.value)
    assert "/nonexistent/cnnc-test-cc" in message and 'backend="numpy"' in message
    assert "Traceback" not in message and "distutils" not in message


def test_a_failing_compiler_is_a_clear_error_with_its_own_message(monkeypatch, tmp_path):
    fake = tmp_path / "fakecc"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "fakecc 1.0"; exit 0; fi\n'
                    'echo "fakecc: error: out of cheese" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(cnnc.CnncError) as info:
        cnnc.load(SPECS / "worked_1d.cnn", backend="c", cache_dir=tmp_path / "cache", openmp=False, native=False)
    message = str(info.value)
    assert f"C compiler '{fake}' failed" in message and "out of cheese" in message and 'backend="numpy"' in message
    assert not any((tmp_path / "cache" / "c").iterdir())  # no half-built entry left behind


def test_the_cli_prints_the_compiler_error_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setenv("CC", "/nonexistent/cnnc-test-cc")
    assert main(["gradcheck", str(SPECS / "worked_1d.cnn"), "--backend", "c"]) == 1
    err = capsys.readouterr().err
    assert "cnnc-test-cc" in err and "Traceback" not in err


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="unknown C backend option"):
        cnnc.load(SPECS / "worked_1d.cnn", backend="c", optimize=True)


# ---- cnnc compile ---------------------------------------------------------------------------------------
def test_compile_writes_a_directory_that_loads_without_compiling(cache_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNC_CACHE_DIR", str(cache_dir))
    out = tmp_path / "lenet"
    assert main(["compile", str(SPECS / "lenet5.cnn"), "-o", str(out), "--dtype", "float64"]) == 0
    printed = capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert "lenet5.c" in names and "lenet5.cnn" in names and "manifest.json" in names
    assert any(n.startswith("_cnnc_") and n.endswith(".so") for n in names)
    assert all(f"wrote {out / n}" in printed for n in names)

    monkeypatch.setattr(c_build, "compile_module", _no_compiling)
    monkeypatch.setenv("CC", "/nonexistent/cc")  # loading a compiled directory needs no compiler at all
    m = cnnc.load(out, backend="c", dtype="float64", seed=3)
    ref = cnnc.load(SPECS / "lenet5.cnn", backend="numpy", dtype="float64", seed=3)
    x = np.random.default_rng(0).normal(size=(3, 1, 28, 28))
    assert rel_err(m.forward(x), ref.forward(x)) < 1e-10
    assert m.module.built.directory == out

    with pytest.raises(cnnc.CnncError, match="compiled for float64"):
        cnnc.load(out, backend="c")
    with pytest.raises(cnnc.CnncError, match="holds model 'lenet5', not 'other'"):
        cnnc.load(out, backend="c", model="other", dtype="float64")


def test_compile_emit_c_writes_only_source_and_loading_it_builds_through_the_cache(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNC_CACHE_DIR", str(cache_dir))
    out = tmp_path / "w"
    assert main(["compile", str(SPECS / "mnist_pair.cnn"), "--model", "mnist_cnn", "-o", str(out), "--emit-c"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["kernels", "manifest.json", "mnist_cnn.c", "mnist_pair.cnn"]
    if shutil.which("gcc"):  # the C and the kernel headers beside it compile on their own
        result = subprocess.run(["gcc", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-fopenmp", "mnist_cnn.c"],
                                cwd=out, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[:3000]
    m = cnnc.load(out, backend="c")
    assert m.name == "mnist_cnn" and m.forward(np.zeros((2, 1, 28, 28))).shape == (2, 10)


def test_compile_reports_file_errors_through_cnnc_error(tmp_path, capsys):
    assert main(["compile", str(tmp_path / "missing.cnn"), "--emit-c"]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["compile", str(SPECS / "mnist_pair.cnn"), "--emit-c", "-o", str(tmp_path / "o")]) == 1
    assert "choose one with model=NAME" in capsys.readouterr().err
    with pytest.raises(cnnc.CnncError, match="not a directory written by `cnnc compile`"):
        cnnc.load(tmp_path, backend="c")


def _no_compiling(*args, **kwargs):
    raise AssertionError("the compiler ran")
