"""The NumPy reference backend: every layer kind and geometry against PyTorch and finite differences,
the two worked examples of the lecture notes by hand, the loss, the Model API's errors and weights files.
Without PyTorch installed, the comparisons with it skip and everything else still runs."""
from __future__ import annotations

import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnc
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.gradcheck import gradcheck

try:
    import torch
    from torch_reference import torch_forward_backward, torch_loss_backward
except ImportError:  # the hand-worked examples, gradchecks and API tests still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference this test compares against")

from conftest import SPECS


def model_from(body: str, dtype: str = "float64", seed: int = 0) -> NumpyModel:
    return NumpyModel(cnnc.network_from_text("model m {\n" + body + "\n}"), dtype=dtype, seed=seed)


def randomize(m: NumpyModel, rng: np.random.Generator) -> None:
    """Non-zero biases too, so every code path of the bias is exercised. Written in place."""
    for name, p in m.params.items():
        p[...] = rng.normal(size=p.shape)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-300))


def assert_matches_torch(m: NumpyModel, x, dy, masks=None, tol=1e-9):
    """Forward, dx and every parameter gradient against torch.nn.functional + autograd.
    masks: dropout masks for a training pass. Model.forward draws its own, so the backend's
    _forward/_backward contract is called directly with these."""
    if masks is None:
        y = m.forward(x)
        dx = m.backward(dy)
    else:
        y = m._forward(np.ascontiguousarray(x, m.dtype), True, masks)
        dx = m._backward(np.ascontiguousarray(dy, m.dtype))
    ty, tdx, tgrads = torch_forward_backward(m.network, m.params, x, dy, masks)
    assert y.shape == ty.shape and dx.shape == tdx.shape
    assert rel_err(y, ty) <= tol, f"forward differs from PyTorch: {rel_err(y, ty):.2e}"
    assert rel_err(dx, tdx) <= tol, f"dx differs from PyTorch: {rel_err(dx, tdx):.2e}"
    assert set(tgrads) == set(m.grads)
    for name in tgrads:
        assert rel_err(m.grads[name], tgrads[name]) <= tol, f"{name} gradient differs from PyTorch"


# Each layer kind across strides 1-3, paddings 0/1/2/same (odd and even kernels: asymmetric), dilations
# 1-2, non-square kernels and windows, pooling padding, 1-D and 2-D. Sizes are chosen so that some
# strides leave the last input rows unread (their gradient must be exactly 0).
LAYER_CASES = {
    # conv2d
    "conv2d k3": "input x[2, 6, 7]\n conv2d c(filters=3, kernel=3)",
    "conv2d k3 s2 p1": "input x[3, 7, 8]\n conv2d c(filters=2, kernel=3, stride=2, padding=1)",
    "conv2d k(3,2) s(3,1) p2 d(2,1) unused rows": "input x[2, 9, 6]\n conv2d c(filters=3, kernel=(3,2), stride=(3,1), padding=2, dilation=(2,1))",
    "conv2d k(2,3) s(1,2) p(0,1) d2": "input x[2, 7, 9]\n conv2d c(filters=2, kernel=(2,3), stride=(1,2), padding=(0,1), dilation=2)",
    "conv2d k3 s3 p(2,1) d2 no bias": "input x[2, 10, 8]\n conv2d c(filters=2, kernel=3, stride=3, padding=(2,1), dilation=2, bias=false)",
    "conv2d same k3": "input x[2, 5, 6]\n conv2d c(filters=2, kernel=3, padding=same)",
    "conv2d same k4 (pads 1,2)": "input x[2, 6, 5]\n conv2d c(filters=2, kernel=4, padding=same)",
    "conv2d same k(2,5) d2": "input x[2, 6, 9]\n conv2d c(filters=2, kernel=(2,5), padding=same, dilation=2)",
    "conv2d 1x1 s2": "input x[4, 5, 5]\n conv2d c(filters=3, kernel=1, stride=2)",
    # conv1d
    "conv1d k3": "input x[2, 9]\n conv1d c(filters=3, kernel=3)",
    "conv1d k4 s3 p2 unused": "input x[3, 12]\n conv1d c(filters=2, kernel=4, stride=3, padding=2)",
    "conv1d k3 s2 p1 d2": "input x[2, 11]\n conv1d c(filters=2, kernel=3, stride=2, padding=1, dilation=2)",
    "conv1d same k2 (pads 0,1)": "input x[2, 7]\n conv1d c(filters=2, kernel=2, padding=same)",
    "conv1d same k4 d2 no bias": "input x[2, 10]\n conv1d c(filters=2, kernel=4, padding=same, dilation=2, bias=false)",
    # fused activations
    "conv2d relu": "input x[2, 6, 6]\n conv2d c(filters=2, kernel=3, padding=1, activation=relu)",
    "conv2d leaky_relu": "input x[2, 6, 6]\n conv2d c(filters=2, kernel=3, activation=leaky_relu, slope=0.2)",
    "conv1d sigmoid": "input x[2, 8]\n conv1d c(filters=2, kernel=3, activation=sigmoid)",
    "conv1d tanh": "input x[2, 8]\n conv1d c(filters=2, kernel=3, stride=2, activation=tanh)",
    "dense softmax": "input x[5]\n dense d(units=4, activation=softmax)",
    "dense tanh no bias": "input x[5]\n dense d(units=3, bias=false, activation=tanh)",
    # pooling
    "maxpool2d 2": "input x[2, 6, 8]\n maxpool2d p(size=2)",
    "maxpool2d (3,2) s(2,1) p1": "input x[2, 7, 6]\n maxpool2d p(size=(3,2), stride=(2,1), padding=1)",
    "maxpool2d 3 s1 p1 overlap": "input x[2, 5, 5]\n maxpool2d p(size=3, stride=1, padding=1)",
    "maxpool2d 3 s3 unused": "input x[2, 8, 7]\n maxpool2d p(size=3)",
    "maxpool2d (4,2) p(2,1)": "input x[2, 7, 6]\n maxpool2d p(size=(4,2), stride=(2,3), padding=(2,1))",
    "avgpool2d 2": "input x[2, 6, 8]\n avgpool2d p(size=2)",
    "avgpool2d (3,2) s(2,1) p1": "input x[2, 7, 6]\n avgpool2d p(size=(3,2), stride=(2,1), padding=1)",
    "avgpool2d 3 s1 p1 overlap": "input x[2, 5, 5]\n avgpool2d p(size=3, stride=1, padding=1)",
    "avgpool2d (4,2) p(2,1)": "input x[2, 7, 6]\n avgpool2d p(size=(4,2), stride=(2,3), padding=(2,1))",
    "maxpool1d 2": "input x[2, 9]\n maxpool1d p(size=2)",
    "maxpool1d 3 s2 p1": "input x[2, 10]\n maxpool1d p(size=3, stride=2, padding=1)",
    "maxpool1d 4 s3 p2": "input x[2, 11]\n maxpool1d p(size=4, stride=3, padding=2)",
    "avgpool1d 3 s2 p1": "input x[2, 10]\n avgpool1d p(size=3, stride=2, padding=1)",
    "avgpool1d 4 s1 p2": "input x[2, 7]\n avgpool1d p(size=4, stride=1, padding=2)",
    "global_avgpool 2d": "input x[3, 4, 5]\n global_avgpool",
    "global_avgpool 1d": "input x[3, 6]\n global_avgpool",
    # flat layers
    "flatten": "input x[2, 3, 4]\n flatten",
    "dense": "input x[6]\n dense d(units=4)",
    "relu": "input x[2, 3, 4]\n relu",
    "leaky_relu": "input x[2, 7]\n leaky_relu(slope=0.1)",
    "sigmoid": "input x[2, 3, 4]\n sigmoid",
    "tanh": "input x[9]\n tanh",
    "softmax": "input x[7]\n softmax",
    "dropout (eval: identity)": "input x[2, 3, 4]\n dropout(rate=0.5)",
}


@needs_torch
@pytest.mark.parametrize("body", LAYER_CASES.values(), ids=LAYER_CASES.keys())
def test_layer_matches_pytorch(body):
    rng = np.random.default_rng(zlib.crc32(body.encode()))
    m = model_from(body)
    randomize(m, rng)
    x = rng.normal(size=(3, *m.input_shape))
    dy = rng.normal(size=(3, *m.output_shape))
    assert_matches_torch(m, x, dy)


@pytest.mark.parametrize("body", LAYER_CASES.values(), ids=LAYER_CASES.keys())
def test_layer_passes_gradcheck(body):
    m = model_from(body)
    errors = gradcheck(m, batch=2, seed=1)
    assert set(errors) == set(m.params) | {"input"}
    assert max(errors.values()) < 1e-6, errors


def test_unread_input_rows_get_zero_gradient():
    # kernel 3, stride 3 on 8 rows: windows cover rows 0-5; rows 6 and 7 are never read.
    m = model_from("input x[1, 8, 4]\n conv2d c(filters=2, kernel=3, stride=3)")
    randomize(m, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(2, 1, 8, 4))
    m.forward(x)
    dx = m.backward(np.ones((2, *m.output_shape)))
    assert np.all(dx[:, :, 6:, :] == 0) and np.all(dx[:, :, :, 3] == 0)
    assert np.all(dx[:, :, :6, :3] != 0)


# ---- random geometries ----------------------------------------------------------------------------
@st.composite
def window_layers(draw):
    """A random conv or pool layer, 1-D or 2-D, whose window fits its padded input -> its spec body.
    Convolutions take padding=same half the time (asymmetric when dilation*(kernel-1) is odd)."""
    kind = draw(st.sampled_from(["conv", "conv same", "maxpool", "avgpool"]))
    dims = draw(st.sampled_from([1, 2]))
    kernel, stride, dilation, padding, size = [], [], [], [], []
    for _ in range(dims):
        k = draw(st.integers(1, 4))
        kernel.append(k)
        stride.append(1 if kind == "conv same" else draw(st.integers(1, 3)))
        dilation.append(draw(st.integers(1, 2)) if kind.startswith("conv") else 1)
        padding.append(draw(st.integers(0, 2)) if kind == "conv" else draw(st.integers(0, k // 2)))
        span = dilation[-1] * (k - 1) + 1
        size.append(draw(st.integers(max(1, span - 2 * padding[-1]), 9)))

    def arg(values):
        return str(values[0]) if dims == 1 else f"({values[0]},{values[1]})"

    shape = ", ".join(map(str, (draw(st.integers(1, 3)), *size)))
    if kind.startswith("conv"):
        bias = draw(st.sampled_from(["true", "false"]))
        layer = (f"conv{dims}d c(filters={draw(st.integers(1, 3))}, kernel={arg(kernel)}, stride={arg(stride)}, "
                 f"dilation={arg(dilation)}, padding={'same' if kind == 'conv same' else arg(padding)}, bias={bias})")
    else:
        layer = f"{kind}{dims}d p(size={arg(kernel)}, stride={arg(stride)}, padding={arg(padding)})"
    return f"input x[{shape}]\n {layer}"


@needs_torch
@settings(max_examples=150, deadline=None)
@given(body=window_layers(), seed=st.integers(0, 2**32 - 1))
def test_random_window_geometries_match_pytorch(body, seed):
    rng = np.random.default_rng(seed)
    m = model_from(body)
    randomize(m, rng)
    x = rng.normal(size=(2, *m.input_shape))
    dy = rng.normal(size=(2, *m.output_shape))
    assert_matches_torch(m, x, dy)


# ---- whole networks --------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("spec, model", [("lenet5.cnn", None), ("signal1d.cnn", None), ("digits.cnn", None)])
def test_shipped_networks_match_pytorch_through_the_loss(spec, model):
    m = NumpyModel(cnnc.read_network(SPECS / spec, model), dtype="float64", seed=3)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, *m.input_shape))
    labels = rng.integers(0, m.output_shape[0], size=4)
    y = m.forward(x)
    loss, dy = m.loss(y, labels)
    dx = m.backward(dy)
    t_loss, ty, tdx, tgrads = torch_loss_backward(m.network, m.params, x, labels)
    assert abs(loss - t_loss) < 1e-12 * abs(t_loss)
    assert rel_err(y, ty) < 1e-9 and rel_err(dx, tdx) < 1e-9
    for name, g in tgrads.items():
        assert rel_err(m.grads[name], g) < 1e-9, name


@needs_torch
def test_dropout_in_training_applies_the_mask_forward_and_backward():
    body = "input x[2, 3, 4]\n conv2d c(filters=3, kernel=2, activation=tanh)\n dropout d(rate=0.4)\n flatten\n dense o(units=2)"
    m = model_from(body)
    randomize(m, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, 3, 4))
    mask = (rng.random((3, 3, 2, 3)) >= 0.4) / 0.6
    dy = rng.normal(size=(3, 2))
    assert_matches_torch(m, x, dy, masks={"d": mask})
    assert np.all(m.grads["c.weight"] != 0)


def test_dropout_masks_drawn_by_forward_are_zero_or_scaled_and_reach_backward():
    m = model_from("input x[1000]\n dropout d(rate=0.25)")
    x = np.random.default_rng(0).uniform(1, 2, size=(4, 1000))
    y = m.forward(x, train=True)
    kept = y != 0
    assert np.allclose(y[kept], x[kept] / 0.75)
    assert 0.7 < kept.mean() < 0.8  # about 1 - rate kept
    dy = np.random.default_rng(1).normal(size=y.shape)
    assert np.allclose(m.backward(dy), np.where(kept, dy / 0.75, 0.0), rtol=1e-15, atol=0)
    assert np.array_equal(m.forward(x, train=False), x)


# ---- the worked examples of the lecture notes, by hand -------------------------------------------
def test_worked_example_1d_by_hand():
    m = NumpyModel(cnnc.read_network(SPECS / "worked_1d.cnn"), dtype="float64")
    x1, x2, x3, x4 = 1.0, -2.0, 3.0, 0.5
    w1, w2, b = 2.0, -1.5, 0.25
    dy1, dy2, dy3 = 1.0, -0.5, 2.0
    m.params["conv.weight"][...] = [[[w1, w2]]]
    m.params["conv.bias"][...] = [b]
    y = m.forward(np.array([[[x1, x2, x3, x4]]]))
    assert y.tolist() == [[[w1 * x1 + w2 * x2 + b, w1 * x2 + w2 * x3 + b, w1 * x3 + w2 * x4 + b]]]
    dx = m.backward(np.array([[[dy1, dy2, dy3]]]))
    assert m.grads["conv.bias"].tolist() == [dy1 + dy2 + dy3]
    assert m.grads["conv.weight"].tolist() == [[[x1 * dy1 + x2 * dy2 + x3 * dy3, x2 * dy1 + x3 * dy2 + x4 * dy3]]]
    assert dx.tolist() == [[[w1 * dy1, w2 * dy1 + w1 * dy2, w2 * dy2 + w1 * dy3, w2 * dy3]]]


def test_worked_example_2d_by_hand():
    m = NumpyModel(cnnc.read_network(SPECS / "worked_2d.cnn"), dtype="float64")
    x = np.array([[1, 2, -1, 0], [3, 0, 2, 1], [-2, 1, 1, 4], [0, 2, -3, 1]], dtype=float)
    w = np.array([[1, -2], [0.5, 3]])
    b = -1.0
    dy = np.array([[1, 0, -1], [2, 0.5, 0], [-1, 1, 3]])
    m.params["conv.weight"][...] = w
    m.params["conv.bias"][...] = b
    y = m.forward(x[None, None])[0, 0]
    dx = m.backward(dy[None, None])[0, 0]
    # The notes' indices run from 1; here from 0: y[i,j] = w[0,0]x[i,j] + w[0,1]x[i,j+1] + w[1,0]x[i+1,j] + w[1,1]x[i+1,j+1] + b
    assert y[0, 0] == w[0, 0] * x[0, 0] + w[0, 1] * x[0, 1] + w[1, 0] * x[1, 0] + w[1, 1] * x[1, 1] + b
    assert y[0, 1] == w[0, 0] * x[0, 1] + w[0, 1] * x[0, 2] + w[1, 0] * x[1, 1] + w[1, 1] * x[1, 2] + b
    assert y[2, 2] == w[0, 0] * x[2, 2] + w[0, 1] * x[2, 3] + w[1, 0] * x[3, 2] + w[1, 1] * x[3, 3] + b
    assert y.tolist() == [[sum(w[k, l] * x[i + k, j + l] for k in range(2) for l in range(2)) + b for j in range(3)]
                          for i in range(3)]
    # db = sum_ij dy[i,j]
    assert m.grads["conv.bias"][0] == dy.sum()
    # dw[m,n] = sum_ij dy[i,j] x[i+m, j+n]: x correlated with dy
    assert m.grads["conv.weight"][0, 0, 0, 0] == sum(dy[i, j] * x[i, j] for i in range(3) for j in range(3))
    assert m.grads["conv.weight"][0, 0, 1, 0] == sum(dy[i, j] * x[i + 1, j] for i in range(3) for j in range(3))
    assert m.grads["conv.weight"][0, 0].tolist() == [[sum(dy[i, j] * x[i + a, j + c] for i in range(3) for j in range(3))
                                                      for c in range(2)] for a in range(2)]
    # dx[m,n] = sum_ij dy[i,j] w[m-i, n-j] (terms with w outside the kernel vanish): the full convolution
    # of dy padded by one with w rotated 180 degrees.
    assert dx[0, 0] == dy[0, 0] * w[0, 0]
    assert dx[0, 1] == dy[0, 0] * w[0, 1] + dy[0, 1] * w[0, 0]
    assert dx[1, 1] == dy[0, 0] * w[1, 1] + dy[0, 1] * w[1, 0] + dy[1, 0] * w[0, 1] + dy[1, 1] * w[0, 0]
    assert dx[3, 3] == dy[2, 2] * w[1, 1]
    expected = [[sum(dy[i, j] * w[a - i, c - j] for i in range(3) for j in range(3) if 0 <= a - i < 2 and 0 <= c - j < 2)
                 for c in range(4)] for a in range(4)]
    assert dx.tolist() == expected


@needs_torch
@pytest.mark.parametrize("body", ["input x[6]\n relu", "input x[6]\n leaky_relu(slope=0.2)",
                                  "input x[1, 3]\n conv1d c(filters=1, kernel=1, padding=1, activation=relu)"])
def test_activation_derivative_at_exactly_zero_follows_pytorch(body):
    # relu'(0) = 0 and leaky_relu'(0) = slope in PyTorch; the conv's padded corners output exactly its bias 0.
    m = model_from(body)
    if m.params:
        m.params["c.weight"][...] = 2.0
        m.params["c.bias"][...] = 0.0
    x = np.array([-1.0, 0.0, 2.0, 0.0, -0.0, 3.0]).reshape(-1, *m.input_shape)
    dy = np.arange(1.0, 1 + x.shape[0] * int(np.prod(m.output_shape))).reshape(-1, *m.output_shape)
    assert_matches_torch(m, x, dy, tol=0)


# ---- pooling details ------------------------------------------------------------------------------
@needs_torch
def test_maxpool_ties_go_to_the_first_in_window_order_like_pytorch():
    m = model_from("input x[1, 4, 6]\n maxpool2d p(size=(2,3), stride=(2,1))")
    x = np.ones((1, 1, 4, 6))
    x[0, 0, 2:, :] = [[0, 5, 5, 5, 0, 0], [5, 5, 0, 0, 0, 0]]
    y = m.forward(x)
    dy = np.arange(1.0, 1 + y.size).reshape(y.shape)
    dx = m.backward(dy)
    # top row of windows: all ones, each window's winner is its top-left cell
    assert dx[0, 0, 0].tolist() == [1, 2, 3, 4, 0, 0]
    assert dx[0, 0, 1].tolist() == [0] * 6
    # bottom row: windows at columns 0..3 read [0 5 5 / 5 5 0], [5 5 5 / 5 0 0], [5 5 0 / 0 0 0], [5 0 0 / 0 0 0]
    assert dx[0, 0, 2].tolist() == [0, 5 + 6, 7, 8, 0, 0]
    assert dx[0, 0, 3].tolist() == [0] * 6
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(tx, (2, 3), (2, 1)).backward(torch.tensor(dy))
    assert np.array_equal(dx, tx.grad.numpy())


def test_maxpool_padding_never_wins_even_for_negative_inputs():
    m = model_from("input x[1, 3, 3]\n maxpool2d p(size=2, stride=1, padding=1)")
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # all negative: zero padding would win
    y = m.forward(x)
    assert y[0, 0, 0, 0] == -1 and y[0, 0, 3, 3] == -9 and np.all(y < 0)


def test_avgpool_divides_by_the_full_window_including_padding():
    m = model_from("input x[1, 2, 2]\n avgpool2d p(size=2, padding=1)")
    y = m.forward(np.array([[[[4.0, 8.0], [12.0, 16.0]]]]))
    assert y.tolist() == [[[[1.0, 2.0], [3.0, 4.0]]]]
    dx = m.backward(np.ones_like(y))
    assert dx.tolist() == [[[[0.25, 0.25], [0.25, 0.25]]]]


# ---- the loss --------------------------------------------------------------------------------------
@needs_torch
def test_cross_entropy_value_and_gradient_match_pytorch():
    m = model_from("input x[5]\n dense d(units=4)\n loss cross_entropy")
    rng = np.random.default_rng(0)
    y = rng.normal(size=(6, 4)) * 5
    labels = np.array([0, 3, 1, 1, 2, 3])
    loss, dy = m.loss(y, labels)
    ty = torch.tensor(y, requires_grad=True)
    t_loss = torch.nn.functional.cross_entropy(ty, torch.tensor(labels))
    t_loss.backward()
    assert abs(loss - t_loss.item()) < 1e-12
    assert rel_err(dy, ty.grad.numpy()) < 1e-12


@needs_torch
def test_mse_value_and_gradient_match_pytorch():
    m = model_from("input x[2, 5]\n conv1d c(filters=3, kernel=2)\n loss mse")
    rng = np.random.default_rng(0)
    y, target = rng.normal(size=(3, 3, 4)), rng.normal(size=(3, 3, 4))
    loss, dy = m.loss(y, target)
    ty = torch.tensor(y, requires_grad=True)
    t_loss = torch.nn.functional.mse_loss(ty, torch.tensor(target))
    t_loss.backward()
    assert abs(loss - t_loss.item()) < 1e-12
    assert rel_err(dy, ty.grad.numpy()) < 1e-12


# ---- dtypes, storage and speed -------------------------------------------------------------------------
def test_float32_runs_in_float32_and_agrees_with_float64():
    body = "input x[2, 9, 9]\n conv2d c(filters=4, kernel=3, stride=2, activation=relu)\n maxpool2d(size=2)\n flatten\n dense o(units=3)"
    m32, m64 = model_from(body, "float32", seed=5), model_from(body, "float64", seed=5)
    x = np.random.default_rng(0).normal(size=(4, 2, 9, 9))
    y32, y64 = m32.forward(x), m64.forward(x)
    assert y32.dtype == np.float32 and all(p.dtype == np.float32 for p in m32.params.values())
    dy = np.random.default_rng(1).normal(size=y64.shape)
    dx32, dx64 = m32.backward(dy), m64.backward(dy)
    assert dx32.dtype == np.float32 and all(g.dtype == np.float32 for g in m32.grads.values())
    assert rel_err(y32, y64) < 1e-5 and rel_err(dx32, dx64) < 1e-5
    for name in m64.grads:
        assert rel_err(m32.grads[name], m64.grads[name]) < 1e-5


def test_params_are_used_in_place_and_grads_overwritten_in_place():
    m = model_from("input x[3]\n dense d(units=2)")
    weight, grad_w, grad_b = m.params["d.weight"], m.grads["d.weight"], m.grads["d.bias"]
    weight[...] = [[1, 2, 3], [0, -1, 0]]
    m.params["d.bias"][...] = [0.5, 0]
    assert m.forward(np.array([[1.0, 1.0, 1.0]])).tolist() == [[6.5, -1.0]]
    m.backward(np.array([[1.0, 2.0]]))
    m.forward(np.array([[2.0, 0.0, 1.0]]))
    m.backward(np.array([[1.0, -1.0]]))  # overwrites, never accumulates
    assert m.grads["d.weight"] is grad_w and m.grads["d.bias"] is grad_b
    assert grad_w.tolist() == [[2, 0, 1], [-2, 0, -1]] and grad_b.tolist() == [1, -1]
    assert np.shares_memory(grad_w, m.grad_block) and np.shares_memory(weight, m.param_block)


def test_lenet5_training_step_at_batch_64_takes_milliseconds():
    m = cnnc.load(SPECS / "lenet5.cnn", dtype="float32")
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(64, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 64)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        _, dy = m.loss(m.forward(x, train=True), labels)
        m.backward(dy)
        times.append(time.perf_counter() - start)
    # About 25 ms on an idle 2-core machine; a Python loop over LeNet's 300k output pixels takes seconds.
    # The fastest of 5 and a wide bound keep the test meaningful on a loaded, shared machine.
    assert min(times) < 1.0, f"fastest step {min(times) * 1e3:.0f} ms: something is looping over pixels"


# ---- errors ---------------------------------------------------------------------------------------
@pytest.fixture
def small():
    return model_from("input x[1, 4, 4]\n conv2d c(filters=2, kernel=3)\n flatten\n dense o(units=3)\n loss cross_entropy")


def test_wrong_input_shape_says_expected_and_given(small):
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 4, 4\) for model 'm'; got \(2, 4, 4\)"):
        small.forward(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"got \(2, 1, 4, 5\)"):
        small.forward(np.zeros((2, 1, 4, 5)))


def test_wrong_input_dtype_nan_and_empty_batch_are_refused(small):
    with pytest.raises(ValueError, match="real numeric array.*got dtype <U1"):
        small.forward(np.full((1, 1, 4, 4), "a"))
    with pytest.raises(ValueError, match="real numeric array.*complex128"):
        small.forward(np.zeros((1, 1, 4, 4), complex))
    x = np.zeros((2, 1, 4, 4))
    x[1, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        small.forward(x)
    with pytest.raises(ValueError, match="empty batch"):
        small.forward(np.zeros((0, 1, 4, 4)))


def test_labels_out_of_range_and_of_wrong_shape_are_refused(small):
    y = small.forward(np.zeros((2, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\] for 3 classes; got 3"):
        small.loss(y, [0, 3])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\] for 3 classes; got -1"):
        small.loss(y, [-1, 0])
    with pytest.raises(ValueError, match=r"must have shape \(2,\), one label per sample; got \(3,\)"):
        small.loss(y, [0, 1, 2])
    with pytest.raises(ValueError, match="integer class labels"):
        small.loss(y, [0.5, 1])


def test_backward_before_forward_and_wrong_dy_are_refused(small):
    with pytest.raises(ValueError, match=r"backward\(\) needs a forward\(\) first"):
        small.backward(np.zeros((2, 3)))
    small.forward(np.zeros((2, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3\) for model 'm'; got \(3, 3\)"):
        small.backward(np.zeros((3, 3)))


# ---- weights files --------------------------------------------------------------------------------
def test_save_and_load_weights_round_trip(small, tmp_path):
    randomize(small, np.random.default_rng(0))
    small.save(tmp_path / "w.npz")
    other = model_from("input x[1, 4, 4]\n conv2d c(filters=2, kernel=3)\n flatten\n dense o(units=3)\n loss cross_entropy",
                       seed=9)
    x = np.random.default_rng(1).normal(size=(2, 1, 4, 4))
    assert not np.array_equal(other.forward(x), small.forward(x))
    weight = other.params["c.weight"]
    other.load_weights(tmp_path / "w.npz")
    assert other.params["c.weight"] is weight  # loaded in place
    for name in small.params:
        assert np.array_equal(other.params[name], small.params[name])
    assert np.array_equal(other.forward(x), small.forward(x))


def test_load_weights_mismatches_are_listed(small, tmp_path):
    arrays = {k: v.copy() for k, v in small.params.items()}
    arrays["c.weight"] = np.zeros((2, 1, 2, 2))
    del arrays["o.bias"]
    arrays["extra"] = np.zeros(3)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError) as err:
        small.load_weights(tmp_path / "bad.npz")
    message = str(err.value)
    assert "does not fit model 'm'" in message
    assert "'c.weight' has shape (2, 1, 2, 2); expected (2, 1, 3, 3)" in message
    assert "missing parameter 'o.bias' with shape (3,)" in message
    assert "unexpected array 'extra'" in message
    with pytest.raises(ValueError, match="does not exist"):
        small.load_weights(tmp_path / "nothing.npz")
