"""The language additions of issue 15 on the NumPy reference: pooling with ceil=true and count_pad=false,
asymmetric padding, padding=same at any stride, global_maxpool, log_softmax and loss nll, elu, selu,
hardsigmoid, conv_transpose1d/2d, lrn and channel_shuffle.

Each is checked forward and backward (dx and every parameter gradient) against PyTorch in float64, with
finite differences (cnnc.gradcheck), for its output shapes over grids against PyTorch's, and for its
located errors; the exports refuse them with a clean message (they do not run them yet). The C backend runs
them all: tests/test_c_layers_extra.py.
"""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_reference import layer_forward as base_layer_forward

import cnnc
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.cli import main
from cnnc.diagnostics import SpecError
from cnnc.gradcheck import gradcheck
from cnnc.ir import Layer, Network
from conftest import is_classic_chain


def network(body: str) -> Network:
    return cnnc.network_from_text("model m {\n" + body + "\n}")


def model(body: str, seed: int = 0) -> NumpyModel:
    """A float64 model with random parameters, biases included (non-zero, so every bias path runs)."""
    m = NumpyModel(network(body), dtype="float64", seed=seed)
    rng = np.random.default_rng(seed + 1)
    for p in m.params.values():
        p[...] = rng.normal(size=p.shape)
    return m


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-300))


# ---- PyTorch's side: the new kinds with torch's own functions -------------------------------------
TORCH_ACTIVATIONS = {"elu": F.elu, "selu": F.selu, "hardsigmoid": F.hardsigmoid,
                     "log_softmax": lambda z: F.log_softmax(z, dim=1)}


def torch_activation(kind: str, z, slope: float):
    if kind in TORCH_ACTIVATIONS:
        return TORCH_ACTIVATIONS[kind](z)
    return base_layer_forward(Layer("a", kind, (), ()), z, {}, None) if kind != "leaky_relu" else F.leaky_relu(z, slope)


def torch_layer(layer: Layer, x, params):
    """One layer of a chain with torch.nn.functional (pooling with PyTorch's own padding, ceil_mode and
    count_include_pad where the padding is symmetric)."""
    kind, symmetric = layer.kind, layer.pad_before == layer.pad_after
    if kind.startswith("conv_transpose"):
        op = F.conv_transpose1d if kind.endswith("1d") else F.conv_transpose2d
        z = op(x, params[f"{layer.name}.weight"], params.get(f"{layer.name}.bias"), stride=layer.stride,
               padding=layer.pad_before, output_padding=layer.output_padding, groups=layer.groups,
               dilation=layer.dilation)
        return torch_activation(layer.activation, z, layer.slope) if layer.activation else z
    if kind.startswith("maxpool") and symmetric:
        op = F.max_pool1d if kind.endswith("1d") else F.max_pool2d
        return op(x, layer.kernel, layer.stride, padding=layer.pad_before, ceil_mode=layer.ceil)
    if kind.startswith("avgpool") and symmetric:
        op = F.avg_pool1d if kind.endswith("1d") else F.avg_pool2d
        return op(x, layer.kernel, layer.stride, padding=layer.pad_before, ceil_mode=layer.ceil,
                  count_include_pad=layer.count_pad)
    if kind.startswith(("maxpool", "avgpool")):
        assert not layer.ceil and layer.count_pad, "no PyTorch reference for asymmetric padding with these"
    if kind == "global_maxpool":
        return x.flatten(2).amax(dim=2)
    if kind == "lrn":
        return F.local_response_norm(x, layer.lrn_size, layer.alpha, layer.beta, layer.k)
    if kind == "channel_shuffle":
        return F.channel_shuffle(x, layer.groups)
    if kind in TORCH_ACTIVATIONS:
        return TORCH_ACTIVATIONS[kind](x)
    if kind in ("conv1d", "conv2d", "dense") and layer.activation in TORCH_ACTIVATIONS:
        z = base_layer_forward(Layer(layer.name, kind, layer.in_shape, layer.out_shape, kernel=layer.kernel,
                                     stride=layer.stride, dilation=layer.dilation, pad_before=layer.pad_before,
                                     pad_after=layer.pad_after, groups=layer.groups), x, params, None)
        return TORCH_ACTIVATIONS[layer.activation](z)
    return base_layer_forward(layer, x, params, None)


def torch_run(net: Network, params, x):
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    tx = torch.tensor(x, requires_grad=True)
    y = tx
    for layer in net.layers:
        y = torch_layer(layer, y, tparams)
    return y, tx, tparams


def assert_matches_torch(m: NumpyModel, seed: int = 0, batch: int = 3, tol: float = 1e-10):
    """Forward, dx and every parameter gradient of the NumPy model against PyTorch, float64."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *m.input_shape))
    dy = rng.normal(size=(batch, *m.output_shape))
    y = m.forward(x)
    dx = m.backward(dy)
    ty, tx, tparams = torch_run(m.network, m.params, x)
    ty.backward(torch.tensor(dy))
    assert y.shape == tuple(ty.shape), (y.shape, ty.shape)
    assert rel_err(y, ty.detach().numpy()) <= tol, f"forward differs from PyTorch: {rel_err(y, ty.detach()):.2e}"
    assert rel_err(dx, tx.grad.numpy()) <= tol, f"dx differs from PyTorch: {rel_err(dx, tx.grad):.2e}"
    assert set(m.grads) == set(tparams)
    for name, p in tparams.items():
        assert rel_err(m.grads[name], p.grad.numpy()) <= tol, f"{name} gradient differs from PyTorch"


# Every addition in a few configurations, including the edge cases.
CASES = {
    # ceil: the last, partial window (8 rows, size 3, stride 2: 4 outputs, not 3)
    "maxpool2d ceil": "input x[2, 8, 7]\nmaxpool2d p(size=3, stride=2, ceil=true)",
    # height 5, size 2, stride 3, padding 1: ceil's 3rd window would start in the right padding: dropped
    "maxpool2d ceil, last window in the padding": "input x[2, 5, 8]\nmaxpool2d p(size=(2, 3), stride=(3, 2), padding=1, ceil=true)",
    "maxpool1d ceil": "input x[3, 9]\nmaxpool1d p(size=2, ceil=true)",
    "avgpool2d ceil with padding": "input x[2, 8, 9]\navgpool2d p(size=3, stride=2, padding=1, ceil=true)",
    "avgpool2d count_pad=false": "input x[2, 7, 6]\navgpool2d p(size=3, stride=2, padding=1, count_pad=false)",
    "avgpool2d ceil, count_pad=false": "input x[2, 8, 7]\navgpool2d p(size=(3, 2), stride=2, padding=1, ceil=true, count_pad=false)",
    "avgpool1d ceil, count_pad=false": "input x[3, 10]\navgpool1d p(size=3, stride=2, padding=1, ceil=true, count_pad=false)",
    "avgpool1d ceil, last window in the padding": "input x[2, 5]\navgpool1d p(size=2, stride=3, padding=1, ceil=true)",
    "conv2d asymmetric padding": "input x[2, 6, 7]\nconv2d c(filters=3, kernel=3, padding=((1, 2), (0, 1)))",
    "conv1d asymmetric padding": "input x[2, 9]\nconv1d c(filters=2, kernel=3, stride=2, padding=(0, 2))",
    "maxpool2d asymmetric padding": "input x[2, 7, 6]\nmaxpool2d p(size=3, stride=2, padding=((1, 0), (0, 1)))",
    "avgpool2d asymmetric padding, mixed forms": "input x[2, 5, 6]\navgpool2d p(size=2, padding=(0, (1, 0)))",
    "conv2d same at stride 2, odd sizes": "input x[2, 7, 9]\nconv2d c(filters=2, kernel=3, stride=2, padding=same)",
    "conv2d same at stride 3, dilated": "input x[1, 11, 10]\nconv2d c(filters=2, kernel=(4, 3), stride=3, dilation=(1, 2), padding=same)",
    "conv1d same at stride 2, even kernel": "input x[2, 9]\nconv1d c(filters=3, kernel=4, stride=2, padding=same)",
    "global_maxpool 2-D": "input x[3, 5, 4]\nglobal_maxpool",
    "global_maxpool 1-D, then dense": "input x[3, 7]\nglobal_maxpool\ndense d(units=2)",
    "log_softmax": "input x[2, 3, 3]\nflatten\ndense d(units=5)\nlog_softmax",
    "dense activation=log_softmax": "input x[6]\ndense d(units=4, activation=log_softmax)",
    "elu, selu, hardsigmoid fused and as statements":
        "input x[2, 6, 6]\nconv2d c(filters=3, kernel=3, activation=elu)\nselu\nflatten\ndense d(units=4, activation=hardsigmoid)",
    "selu, hardsigmoid, elu on 1-D": "input x[2, 8]\nconv1d c(filters=3, kernel=3, activation=selu)\nhardsigmoid\nelu",
    "conv_transpose2d stride 2, padding, output_padding":
        "input x[2, 4, 5]\nconv_transpose2d t(filters=3, kernel=3, stride=2, padding=1, output_padding=1)",
    "conv_transpose2d groups, dilation, no bias":
        "input x[4, 3, 4]\nconv_transpose2d t(filters=4, kernel=(2, 3), stride=(2, 1), dilation=(1, 2), groups=2, bias=false)",
    "conv_transpose2d output_padding below the dilation":
        "input x[2, 4, 4]\nconv_transpose2d t(filters=2, kernel=3, dilation=3, padding=2, output_padding=2)",
    "conv_transpose1d groups, activation":
        "input x[3, 5]\nconv_transpose1d t(filters=6, kernel=4, stride=3, padding=1, output_padding=2, groups=3, activation=elu)",
    "lrn default": "input x[5, 3, 3]\nlrn n(size=3)",
    "lrn even size, 1-D": "input x[6, 7]\nlrn n(size=4, alpha=0.1, beta=0.6, k=2)",
    "lrn wider than the channels": "input x[3, 4, 4]\nlrn n(size=7, alpha=0.5, beta=1.2)",
    "channel_shuffle 2-D": "input x[6, 2, 3]\nchannel_shuffle s(groups=3)",
    "channel_shuffle 1-D between convolutions":
        "input x[4, 5]\nconv1d c(filters=4, kernel=2, groups=2)\nchannel_shuffle(groups=2)\nconv1d e(filters=2, kernel=2, groups=2)",
    "a decoder": "input x[4, 3, 3]\nconv_transpose2d t1(filters=4, kernel=4, stride=2, padding=1, activation=selu)\n"
                 "lrn n(size=3, alpha=0.2)\nchannel_shuffle(groups=2)\nmaxpool2d p(size=3, stride=2, ceil=true)\n"
                 "global_maxpool\ndense d(units=3, activation=log_softmax)",
}


@pytest.mark.parametrize("body", CASES.values(), ids=CASES.keys())
def test_addition_matches_pytorch_forward_and_backward(body):
    # PyTorch's hardsigmoid backward multiplies by the float32 1.0f/6.0f even in float64 (3e-8 relative off)
    assert_matches_torch(model(body), tol=1e-7 if "hardsigmoid" in body else 1e-10)


@pytest.mark.parametrize("body", CASES.values(), ids=CASES.keys())
def test_addition_passes_the_finite_difference_gradcheck(body):
    errors = gradcheck(model(body), batch=2, seed=3)
    assert "input" in errors and all(e < 1e-6 for e in errors.values()), errors


# Asymmetric padding with ceil or count_pad=false: PyTorch has no such pooling, so finite differences only.
GRADCHECK_ONLY = {
    "maxpool2d asymmetric padding with ceil": "input x[2, 7, 6]\nmaxpool2d p(size=3, stride=2, padding=((0, 1), (1, 0)), ceil=true)",
    "avgpool2d asymmetric padding, ceil, count_pad=false":
        "input x[2, 6, 7]\navgpool2d p(size=(2, 3), stride=2, padding=((1, 0), (0, 1)), ceil=true, count_pad=false)",
}


@pytest.mark.parametrize("body", GRADCHECK_ONLY.values(), ids=GRADCHECK_ONLY.keys())
def test_asymmetric_pooling_options_pass_the_gradcheck(body):
    assert network(body).layers[0].ceil
    errors = gradcheck(model(body), batch=2, seed=4)
    assert all(e < 1e-6 for e in errors.values()), errors


def test_average_pooling_divisors_by_hand():
    """x = [1, 2, 3, 4], size 2, stride 2, padding (1, 0): windows [pad, 1], [2, 3], and with ceil [4, past the end]."""
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    # (ceil, count_pad): (y, dx for dy = 1: each input gets 1 / divisor from every window holding it)
    expected = {("false", "true"): ([0.5, 2.5], [0.5, 0.5, 0.5, 0.0]),
                ("false", "false"): ([1.0, 2.5], [1.0, 0.5, 0.5, 0.0]),
                ("true", "true"): ([0.5, 2.5, 4.0], [0.5, 0.5, 0.5, 1.0]),
                ("true", "false"): ([1.0, 2.5, 4.0], [1.0, 0.5, 0.5, 1.0])}
    for (ceil, count_pad), (y, dx) in expected.items():
        m = model(f"input x[1, 4]\navgpool1d p(size=2, padding=(1, 0), ceil={ceil}, count_pad={count_pad})")
        assert m.forward(x)[0, 0].tolist() == y, (ceil, count_pad)
        assert m.backward(np.ones((1, 1, len(y))))[0, 0].tolist() == dx, (ceil, count_pad)


def test_conv_transpose2d_matches_pytorch_on_random_geometries():
    rng, checked = np.random.default_rng(7), 0
    for _ in range(25):
        kh, kw, sh, sw, dh, dw = rng.integers(1, 4, size=6)
        oph, opw = rng.integers(0, max(sh, dh)), rng.integers(0, max(sw, dw))
        groups = int(rng.choice([1, 2]))
        ph, pw = rng.integers(0, 3, size=2)
        h, w = rng.integers(1, 6, size=2)
        body = (f"input x[{2 * groups}, {h}, {w}]\nconv_transpose2d t(filters={2 * groups}, kernel=({kh}, {kw}), "
                f"stride=({sh}, {sw}), dilation=({dh}, {dw}), padding=({ph}, {pw}), output_padding=({oph}, {opw}), "
                f"groups={groups})")
        try:
            m = model(body)
        except SpecError as e:
            assert "crops the whole output" in e.diagnostics[0].message, body
            continue
        assert_matches_torch(m, batch=2)
        checked += 1
    assert checked >= 15


def test_the_edge_cases_are_the_ones_they_claim():
    ceil_dropped = network(CASES["maxpool2d ceil, last window in the padding"]).layers[0]
    assert ceil_dropped.out_shape == (2, 2, 5) and ceil_dropped.ceil  # height 2 by the rule, width 5 by ceil
    assert network(CASES["maxpool2d ceil"]).layers[0].out_shape == (2, 4, 3)
    ceil_noop = network(CASES["avgpool1d ceil, last window in the padding"]).layers[0]
    assert ceil_noop.out_shape == (2, 2) and not ceil_noop.ceil  # ceil would add a window in the padding: no change
    avg = network(CASES["avgpool2d ceil, count_pad=false"]).layers[0]
    assert avg.ceil and not avg.count_pad and avg.out_shape == (2, 5, 4)  # width: ceil's 5th window is dropped
    same2 = network(CASES["conv2d same at stride 2, odd sizes"]).layers[0]
    assert same2.pad_before == (1, 1) and same2.pad_after == (1, 1) and same2.out_shape == (2, 4, 5)
    same3 = network(CASES["conv2d same at stride 3, dilated"]).layers[0]
    # height: out 4, (4-1)*3 + 4 - 11 = 2 -> 1 + 1; width: out 4, (4-1)*3 + 5 - 10 = 4 -> 2 + 2
    assert same3.pad_before == (1, 2) and same3.pad_after == (1, 2) and same3.out_shape == (2, 4, 4)
    same1d = network(CASES["conv1d same at stride 2, even kernel"]).layers[0]
    assert (same1d.pad_before, same1d.pad_after, same1d.out_shape) == ((1,), (2,), (3, 5))  # 3 in total, 1 + 2


def test_options_that_change_nothing_are_dropped_so_the_c_backend_runs_them():
    net = network("input x[1, 8, 8]\nmaxpool2d p(size=2, ceil=true)\navgpool2d q(size=2, count_pad=false)")
    assert not net.layers[0].ceil and net.layers[1].count_pad
    assert is_classic_chain(net)


# ---- shapes over grids, against PyTorch ----------------------------------------------------------
def one_layer(input_shape, text: str):
    try:
        return network(f"input x[{', '.join(map(str, input_shape))}]\n{text}").layers[0]
    except SpecError as e:
        return e


@pytest.mark.parametrize("kind", ["maxpool1d", "avgpool1d"])
def test_ceil_and_count_pad_match_pytorch_over_a_grid(kind):
    """Output sizes and values, forward and backward, for every small geometry; refusals where PyTorch
    refuses too (padding over half the window, a window larger than the padded input)."""
    checked = 0
    pool = F.max_pool1d if kind == "maxpool1d" else F.avg_pool1d
    rng = np.random.default_rng(0)
    count_pads = [True] if kind == "maxpool1d" else [True, False]
    for n, k, s, p, count_pad in itertools.product(range(1, 9), range(1, 5), range(1, 4), range(3), count_pads):
        extra = "" if kind == "maxpool1d" else f", count_pad={str(count_pad).lower()}"
        layer = one_layer((2, n), f"{kind} p(size={k}, stride={s}, padding={p}, ceil=true{extra})")
        options = {} if kind == "maxpool1d" else {"count_include_pad": count_pad}
        x = torch.tensor(rng.normal(size=(2, 2, n)), requires_grad=True)
        if isinstance(layer, SpecError):
            with pytest.raises(RuntimeError):
                pool(x, k, s, p, ceil_mode=True, **options)
            continue
        y = pool(x, k, s, p, ceil_mode=True, **options)
        assert layer.out_shape == tuple(y.shape[1:]), (n, k, s, p)
        m = NumpyModel(Network("m", "x", (2, n), (layer,), None), dtype="float64")
        dy = rng.normal(size=tuple(y.shape))
        y.backward(torch.tensor(dy))
        assert rel_err(m.forward(x.detach().numpy()), y.detach().numpy()) < 1e-12, (n, k, s, p, count_pad)
        assert rel_err(m.backward(dy), x.grad.numpy()) < 1e-12, (n, k, s, p, count_pad)
        checked += 1
    assert checked > 150


def test_same_at_any_stride_is_tensorflows_split():
    """Known TensorFlow SAME paddings: out = ceil(in / stride), the odd row after."""
    for n, k, s, d, before, after in [(7, 3, 2, 1, 1, 1), (8, 3, 2, 1, 0, 1), (10, 4, 3, 1, 1, 2), (5, 1, 3, 1, 0, 0),
                                      (6, 3, 1, 1, 1, 1), (6, 4, 1, 1, 1, 2), (9, 3, 2, 2, 2, 2), (4, 5, 4, 1, 0, 1)]:
        layer = one_layer((1, n), f"conv1d c(filters=1, kernel={k}, stride={s}, dilation={d}, padding=same)")
        assert (layer.pad_before, layer.pad_after, layer.out_shape) == ((before,), (after,), (1, -(-n // s))), (n, k, s)


def test_conv_transpose_shapes_match_pytorch_over_a_grid():
    checked = rejected = 0
    for n, k, s, p, op, d in itertools.product([1, 2, 5], [1, 2, 3], [1, 2, 3], [0, 1, 2], [0, 1, 2], [1, 2]):
        layer = one_layer((2, n), f"conv_transpose1d t(filters=3, kernel={k}, stride={s}, padding={p}, "
                                  f"output_padding={op}, dilation={d})")
        x, w = torch.randn(1, 2, n), torch.randn(2, 3, k)
        if isinstance(layer, SpecError):
            message = layer.diagnostics[0].message
            assert "output_padding" in message or "crops the whole output" in message, message
            with pytest.raises(RuntimeError):
                F.conv_transpose1d(x, w, stride=s, padding=p, output_padding=op, dilation=d)
            rejected += 1
            continue
        y = F.conv_transpose1d(x, w, stride=s, padding=p, output_padding=op, dilation=d)
        assert layer.out_shape == tuple(y.shape[1:]), (n, k, s, p, op, d)
        assert layer.param_count == w.numel() + 3 and layer.macs == 2 * n * 3 * k
        checked += 1
    assert checked > 150 and rejected > 50


def test_padding_forms_parse_to_before_and_after():
    for text, before, after in [("padding=((1, 2), (0, 1))", (1, 0), (2, 1)), ("padding=(1, (0, 3))", (1, 0), (1, 3)),
                                ("padding=(2, 1)", (2, 1), (2, 1)), ("padding=1", (1, 1), (1, 1)),
                                ("padding=valid", (0, 0), (0, 0))]:
        layer = one_layer((1, 9, 9), f"conv2d c(filters=1, kernel=3, {text})")
        assert (layer.pad_before, layer.pad_after) == (before, after), text
    layer = one_layer((1, 9), "maxpool1d p(size=3, padding=(0, 1))")
    assert (layer.pad_before, layer.pad_after, layer.out_shape) == ((0,), (1,), (1, 3))


# ---- the loss ------------------------------------------------------------------------------------
def test_log_softmax_then_nll_matches_pytorch_and_equals_cross_entropy():
    body = "input x[2, 4, 4]\nconv2d c(filters=3, kernel=3, activation=elu)\nglobal_maxpool\ndense d(units=5)\n"
    m = model(body + "log_softmax\nloss nll")
    ce = model(body + "loss cross_entropy")
    ce.params.update({name: m.params[name] for name in ce.params})
    rng = np.random.default_rng(5)
    x, labels = rng.normal(size=(4, 2, 4, 4)), np.array([0, 4, 2, 2])
    loss, dy = m.loss(m.forward(x), labels)
    dx = m.backward(dy)
    ty, tx, tparams = torch_run(m.network, m.params, x)
    tloss = F.nll_loss(ty, torch.tensor(labels))
    tloss.backward()
    assert abs(loss - tloss.item()) < 1e-12
    assert rel_err(dx, tx.grad.numpy()) < 1e-10
    for name, p in tparams.items():
        assert rel_err(m.grads[name], p.grad.numpy()) < 1e-10, name
    ce_loss, _ = ce.loss(ce.forward(x), labels)
    assert abs(loss - ce_loss) < 1e-12
    errors = gradcheck(m, batch=3, seed=2)
    assert all(e < 1e-6 for e in errors.values()), errors


def test_nll_refuses_bad_labels_naming_itself():
    m = model("input x[4]\ndense d(units=3, activation=log_softmax)\nloss nll")
    y = m.forward(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        m.loss(y, [0, 3])
    with pytest.raises(ValueError, match="nll targets must have shape"):
        m.loss(y, [0])


# ---- errors, the summary and the refusals ---------------------------------------------------------
@pytest.mark.parametrize("text, message, caret", [
    ("input x[3, 5, 5]\nmaxpool2d p(size=2, padding=(0, (0, 2)))", "padding width after 2 is more than half", "(0, (0, 2))"),
    ("input x[3, 5]\nconv_transpose1d t(filters=2, kernel=3, stride=2, output_padding=2)",
     "output_padding 2 must be smaller than the stride (2) or the dilation (1)", "2"),
    ("input x[3, 5]\nchannel_shuffle(groups=2)", "groups=2 does not divide the 3 channels (3 = 1 x 2 + 1)", "2"),
    ("input x[3, 5, 5]\nconv_transpose2d t(filters=4, kernel=3, groups=2)", "groups=2 does not divide the 3 input", "2"),
    ("input x[3, 5, 5]\nflatten\nlog_softmax", None, None),
    ("input x[3, 5, 5]\nlog_softmax", "log_softmax 'log_softmax_1' normalises flat class scores", "log_softmax"),
    ("input x[3, 5, 5]\nconv2d c(filters=2, kernel=3, padding=((1, 2, 3)))", "unexpected ','", ","),
    ("input x[3, 5, 5]\nglobal_maxpool\nglobal_maxpool", "global_maxpool 'global_maxpool_2' needs a [C, L] or [C, H, W]",
     "global_maxpool"),
    ("input x[3, 5, 5]\nlrn(size=2, alpha=-1)", "alpha must be a non-negative number; got -1", "-1"),
    ("input x[3, 5, 5]\navgpool2d(size=2, ceil=yes)", "ceil must be true or false; got the word 'yes'", "yes"),
    ("input x[8]\ndense d(units=3)\nloss nll", "nll reads log-probabilities, but the model's last layer is dense 'd'", "nll"),
])
def test_bad_arguments_get_located_errors(text, message, caret):
    source = "model m {\n" + text + "\n}"
    try:
        cnnc.network_from_text(source)
    except SpecError as e:
        d = e.diagnostics[0]
        assert message is not None and message in d.message, d.message
        line = source.splitlines()[d.loc.line - 1]
        assert line[d.loc.col - 1:].startswith(caret), (line, d.loc)
        return
    assert message is None, "expected an error"


def test_check_json_shows_the_new_layers(tmp_path, capsys):
    spec = tmp_path / "m.cnn"
    spec.write_text("model m {\n" + CASES["a decoder"] + "\nloss nll\n}\n")
    assert main(["check", str(spec), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)["models"][0]
    layers = {layer["name"]: layer for layer in record["layers"]}
    t1 = torch.nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)
    assert layers["t1"]["output"] == [4, 6, 6] and layers["t1"]["params"] == sum(p.numel() for p in t1.parameters())
    assert layers["t1"]["macs"] == 4 * 3 * 3 * 4 * 16 and layers["t1"]["activation"] == "selu"
    assert layers["n"]["macs"] == 4 * 6 * 6 * 3 and layers["p"]["ceil"] is True and layers["p"]["output"] == [4, 3, 3]
    assert layers["global_maxpool_1"]["output"] == [4] and layers["d"]["activation"] == "log_softmax"
    assert record["loss"] == "nll" and record["c_backend_bytes"]["per_sample"] > 0  # the C backend runs it
    assert main(["check", str(spec)]) == 0
    table = capsys.readouterr().out
    assert "conv_transpose2d+selu" in table and "C backend memory (float32, with saved state and scratch)" in table


ADDITIONS = {  # how `cnnc export` named each when the int8 export still refused it
    "pooling with ceil=true": "input x[1, 7, 7]\nmaxpool2d p(size=2, ceil=true)",
    "pooling with count_pad=false": "input x[1, 8, 8]\navgpool2d p(size=3, padding=1, count_pad=false)",
    "'conv_transpose2d'": "input x[1, 4, 4]\nconv_transpose2d t(filters=2, kernel=2, stride=2)",
    "'conv_transpose1d'": "input x[1, 4]\nconv_transpose1d t(filters=2, kernel=2)",
    "'lrn'": "input x[3, 4, 4]\nlrn(size=3)",
    "'channel_shuffle'": "input x[4, 4, 4]\nchannel_shuffle(groups=2)",
    "'global_maxpool'": "input x[2, 4, 4]\nglobal_maxpool",
    "'elu'": "input x[4]\nelu",
    "activation=selu": "input x[1, 4, 4]\nconv2d c(filters=2, kernel=3, activation=selu)",
    "activation=hardsigmoid": "input x[4]\ndense d(units=2, activation=hardsigmoid)",
    "activation=log_softmax": "input x[4]\ndense d(units=3, activation=log_softmax)\nloss nll",
}


@pytest.mark.parametrize("phrase, body", ADDITIONS.items(), ids=ADDITIONS.keys())
def test_every_export_writes_them_int8_included(phrase, body, tmp_path, capsys):
    """Both backends run every addition (tests/test_c_layers_extra.py), the ONNX export writes them
    (tests/test_onnx.py round-trips them) and so do the standalone C export (tests/test_export_c_extra.py
    compares its outputs) and its int8 quantisation (tests/test_quantize_extra.py compares the C with the NumPy
    int8 reference bit for bit)."""
    from cnnc.export_c import export_refusal

    spec = tmp_path / "m.cnn"
    spec.write_text("model m {\n" + body + "\n}\n")
    weights = tmp_path / "w.npz"
    cnnc.load(spec).save(weights)
    assert main(["export", str(spec), "--weights", str(weights), "--format", "c", "-o", str(tmp_path / "c")]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and (tmp_path / "c" / "m.c").stat().st_size > 0, err
    assert export_refusal(network(body)) is None
    net = network(body)
    x = np.random.default_rng(0).standard_normal((12, *net.input_shape)).astype(np.float32)
    if len(net.input_shape) == 1:  # a data file holds images or signals: calibrate through the API
        from cnnc.export_int8 import export_int8_c
        from cnnc.quantize import calibrate

        export_int8_c(calibrate(cnnc.load(spec), x), tmp_path / "q")  # the weights saved above (seed 0)
    else:
        layout = {"layout": "NCL"} if len(net.input_shape) == 2 else {}  # (N, C, L) signals, not (N, H, W) images
        np.savez(tmp_path / "data.npz", x_train=x, y_train=np.arange(12) % 2, x_test=x[:4], y_test=np.arange(4) % 2,
                 **layout)
        int8_argv = ["export", str(spec), "--weights", str(weights), "--format", "c", "--quantize", "int8",
                     "--calibration", str(tmp_path / "data.npz"), "-o", str(tmp_path / "q")]
        assert main(int8_argv) == 0, (phrase, capsys.readouterr().err)
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "int8" in out, err
    assert (tmp_path / "q" / "m.c").stat().st_size > 0
    onnx_argv = ["export", str(spec), "--weights", str(weights), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]
    assert main(onnx_argv) == 0 and (tmp_path / "m.onnx").stat().st_size > 0
