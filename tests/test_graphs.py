"""Graphs, batch norm, grouped convolutions, the new activations and blocks (issue #14), on the NumPy backend.

Organised by feature: the language and the IR it produces; the NumPy reference against PyTorch in float64
(forward in both modes, the input gradient, every parameter gradient, the updated running statistics) on
residual, inception-style, densely connected, depthwise-separable, 1-D, flat and block-based models;
finite-difference checks of every new layer kind and merge; the Model API's buffers and weights files;
`cnnc check`'s table and JSON; and the clear refusal of the standalone C and ONNX exports, whose half of the
issue comes next. The located errors are in tests/invalid/ (tests/test_errors.py).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import cnnc
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.cli import main
from cnnc.diagnostics import CnncError
from cnnc.gradcheck import THRESHOLD, gradcheck

from conftest import SPECS

# The issue's example, exactly as written there.
ISSUE_EXAMPLE = """
block basic(width, stride=1) {
    conv2d c1(filters=width, kernel=3, stride=stride, padding=1, bias=false)
    batchnorm bn1
    relu r1
    conv2d c2(filters=width, kernel=3, padding=1, bias=false)
    batchnorm bn2
    add sum(bn2, in)            # `in` is the block's input
    relu out                    # an instance's output is its last statement's output
}

model resnet {
    input image[1, 28, 28]
    conv2d stem(filters=16, kernel=3, padding=1, bias=false)
    batchnorm stem_bn
    relu stem_relu
    basic s1(width=16)          # an instance: layers s1.c1, s1.bn1, ...
    basic s2(width=16)          # reads s1's output
    basic s3(width=16, from=s1) # from= also works on instances
    global_avgpool
    dense fc(units=10)
    loss cross_entropy
}
"""

# The one-line forms of the issue, each in a model where it fits.
ISSUE_FORMS = """
model forms {
    input image[32, 8, 8]
    conv2d b1_out(filters=32, kernel=3, padding=1)
    conv2d proj(filters=32, kernel=1, stride=2, bias=false, from=b1_out)
    conv2d a(filters=32, kernel=3, stride=2, padding=1, from=image)
    batchnorm bn2
    add sum1(bn2, proj)
    conv2d b(filters=8, kernel=1, from=sum1)
    conv2d c(filters=8, kernel=1, from=sum1)
    concat cat1(a, b, c)
    batchnorm bn1(eps=1e-5, momentum=0.1)
    conv2d dw(filters=48, kernel=3, padding=1, groups=48)
    conv2d pw(filters=64, kernel=1, activation=relu6)
}
"""


def network(text: str, model: str | None = None):
    return cnnc.network_from_text(text, model)


def numpy_model(text: str, dtype: str = "float64", seed: int = 0) -> NumpyModel:
    return NumpyModel(network(text), dtype=dtype, seed=seed)


def rel_err(a, b) -> float:
    """max|a - b| relative to the larger of the two; the floor 1e-6 lets a gradient that is zero in exact
    arithmetic (a bias just before training-mode batch norm) compare as the rounding noise it is."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-6))


# ==== the language and the IR ========================================================================
def test_the_issue_example_parses_checks_and_names_layers_with_dots():
    net = network(ISSUE_EXAMPLE)
    names = [layer.name for layer in net.layers]
    assert names[:4] == ["stem", "stem_bn", "stem_relu", "s1.c1"]
    assert "s3.out" in names and names[-2:] == ["global_avgpool_1", "fc"]
    assert net.layer("s1.sum").inputs == ("s1.bn2", "stem_relu")  # `in` is the instance's input
    assert net.layer("s2.c1").inputs == ("s1.out",)                # an instance reads the previous statement
    assert net.layer("s3.c1").inputs == ("s1.out",)                # from=s1: s1's last statement's output
    assert net.layer("s3.sum").inputs == ("s3.bn2", "s1.out")
    assert net.layer("global_avgpool_1").inputs == ("s3.out",)
    assert "s1.c1.weight" in [p.name for p in net.param_specs]
    assert [b.name for b in net.layer("s1.bn1").buffers] == ["s1.bn1.running_mean", "s1.bn1.running_var"]


def test_the_issue_one_line_forms_check_with_their_shapes_and_layouts():
    net = network(ISSUE_FORMS)
    assert net.layer("proj").inputs == ("b1_out",) and net.layer("proj").out_shape == (32, 4, 4)
    assert net.layer("sum1").inputs == ("bn2", "proj") and net.layer("sum1").out_shape == (32, 4, 4)
    assert net.layer("cat1").out_shape == (48, 4, 4)  # 32 + 8 + 8 channels
    assert net.layer("bn1").eps == 1e-5 and net.layer("bn1").momentum == 0.1
    dw = net.layer("dw")
    assert dw.groups == 48 and dw.params[0].shape == (48, 1, 3, 3)  # (filters, C/groups, kh, kw)
    assert dw.macs == 48 * 4 * 4 * 1 * 9  # output elements x C/groups x kernel area
    assert net.layer("pw").activation == "relu6"


def test_chains_keep_their_ir_and_read_the_previous_statement():
    for path in sorted(SPECS.glob("*.cnn")):
        for net in cnnc.networks_from_file(path):
            if all(layer.kind in ("conv1d", "conv2d", "maxpool2d", "maxpool1d", "avgpool1d", "avgpool2d", "dense",
                                  "flatten", "dropout", "relu", "tanh", "sigmoid", "softmax", "leaky_relu",
                                  "global_avgpool") for layer in net.layers):
                assert net.is_chain, net.name
                previous = net.input_name
                for layer in net.layers:
                    assert layer.inputs == (previous,) and layer.in_shapes == (layer.in_shape,)
                    previous = layer.name


def test_unnamed_merges_and_layers_follow_the_kind_count_rule():
    net = network("""model m {
        input x[4, 6]
        conv1d a(filters=4, kernel=1)
        batchnorm
        add(a, batchnorm_1)
        batchnorm
        concat(add_1, a)
    }""")
    assert [layer.name for layer in net.layers] == ["a", "batchnorm_1", "add_1", "batchnorm_2", "concat_1"]
    assert net.layer("concat_1").out_shape == (8, 6)


def test_from_may_name_the_input_and_concat_joins_flat_features():
    net = network("""model flat {
        input v[6]
        dense a(units=4)
        dense b(units=3, from=v)
        concat both(a, b, v)
        batchnorm bn
        dense out(units=2)
    }""")
    assert net.layer("b").inputs == ("v",) and net.layer("both").out_shape == (13,)
    assert net.layer("bn").params[0].shape == (13,) and not net.is_chain


def test_blocks_nest_default_their_parameters_and_scope_names():
    net = network("""
    block down(d) { conv2d c(filters=d, kernel=1) }
    block pair(width, k=3) {
        down d(d=width)
        conv2d conv(filters=width, kernel=k, padding=same)
        add s(d, conv)
    }
    model m {
        input x[2, 5, 5]
        pair p1(width=4)
        pair p2(width=4, k=1)
    }""")
    assert "p1.d.c.weight" in [p.name for p in net.param_specs]
    assert net.layer("p1.conv").kernel == (3, 3) and net.layer("p2.conv").kernel == (1, 1)
    assert net.layer("p2.d.c").inputs == ("p1.s",)
    assert net.layer("p1.s").inputs == ("p1.d.c", "p1.conv")


def test_blocks_may_be_defined_after_the_models_that_use_them_and_shared_by_models():
    text = """
    model a { input x[1, 4, 4]; twice t(f=2) }
    model b { input x[3, 4, 4]; twice t(f=3) }
    block twice(f) { conv2d c1(filters=f, kernel=1); conv2d c2(filters=f, kernel=1) }
    """
    from cnnc.frontend import network_list_from_text

    a, b = network_list_from_text(text)
    assert a.layer("t.c2").out_shape == (2, 4, 4) and b.layer("t.c2").out_shape == (3, 4, 4)


@pytest.mark.parametrize("kind", ["relu6", "silu", "hardswish"])
def test_new_activations_work_as_statements_and_as_activation(kind):
    net = network(f"model m {{ input x[2, 6]; conv1d c(filters=3, kernel=3, activation={kind}); {kind} a }}")
    assert net.layer("c").activation == kind and net.layer("a").kind == kind


def test_he_init_follows_batch_norm_and_sums_to_the_relu():
    net = network(ISSUE_EXAMPLE)
    assert net.layer("stem").params[0].init == "he"     # stem -> stem_bn -> relu
    assert net.layer("s1.c2").params[0].init == "he"    # c2 -> bn2 -> sum -> relu
    assert net.layer("fc").params[0].init == "glorot"
    assert [p.init for p in net.layer("stem_bn").params] == ["ones", "zeros"]


# ==== the NumPy reference against PyTorch, float64 ======================================================
# Each model exercises a family of the issue's networks; every comparison covers both modes.
RESIDUAL = ISSUE_EXAMPLE.replace("image[1, 28, 28]", "image[1, 9, 9]").replace("filters=16", "filters=4").replace(
    "width=16", "width=4")

INCEPTION = """
model inception {
    input image[3, 8, 8]
    conv2d stem(filters=6, kernel=3, padding=1, activation=relu)
    conv2d b1(filters=4, kernel=1, activation=relu)
    conv2d b3r(filters=3, kernel=1, activation=relu, from=stem)
    conv2d b3(filters=4, kernel=3, padding=1, activation=relu)
    conv2d b5(filters=2, kernel=5, padding=2, dilation=1, activation=silu, from=stem)
    maxpool2d bp(size=3, stride=1, padding=1, from=stem)
    conv2d bpp(filters=2, kernel=1)
    concat mixed(b1, b3, b5, bpp)
    maxpool2d pool(size=2)
    flatten
    dense out(units=5)
    loss cross_entropy
}
"""

DENSE_NET = """
model densenet {
    input image[2, 6, 6]
    conv2d c0(filters=4, kernel=3, padding=1)
    batchnorm n1
    relu r1
    conv2d c1(filters=3, kernel=3, padding=1)
    concat k1(c0, c1)
    batchnorm n2
    relu r2
    conv2d c2(filters=3, kernel=3, padding=1)
    concat k2(k1, c2)
    batchnorm n3(momentum=0.3, eps=1e-3)
    global_avgpool
    dense out(units=3)
}
"""

DEPTHWISE_SEPARABLE = """
block inverted(c, expand) {
    conv2d up(filters=expand, kernel=1, bias=false)
    batchnorm bn_up
    relu6 a1
    conv2d dw(filters=expand, kernel=3, padding=1, groups=expand, bias=false)
    batchnorm bn_dw
    hardswish a2
    conv2d down(filters=c, kernel=1, bias=false)
    batchnorm bn_down
    add res(bn_down, in)
}
model mobile {
    input image[3, 7, 7]
    conv2d stem(filters=4, kernel=3, stride=2, padding=1, activation=relu6)
    inverted i1(c=4, expand=8)
    conv2d grouped(filters=6, kernel=3, groups=2, padding=1)
    global_avgpool
    dense out(units=3)
}
"""

ONE_D = """
model signal {
    input s[2, 20]
    conv1d a(filters=4, kernel=3, padding=1, groups=2)
    batchnorm bn
    silu act
    conv1d b(filters=4, kernel=5, padding=2, from=s)
    add sum(act, b)
    conv1d c(filters=6, kernel=3, stride=2, groups=2, activation=hardswish)
    concat both(c, c)
    flatten
    dense out(units=3)
    loss mse
}
"""

FLAT = """
model vector {
    input v[5]
    dense h1(units=6)
    batchnorm bn(momentum=0.5)
    relu6 r
    dense h2(units=6, from=v, activation=silu)
    add s(r, h2)
    concat both(s, v)
    dense out(units=4)
}
"""

# Layers named like C keywords and standard-library names: the C half must mangle them; the IR keeps them.
C_KEYWORDS = """
block static(int) {
    conv2d for(filters=int, kernel=3, padding=1)
    batchnorm while
    add return(while, in)
}
model main {
    input float[2, 5, 5]
    conv2d char(filters=3, kernel=1)
    static void(int=3)
    static double(int=3, from=char)
    concat struct(void, double)
    global_avgpool
    dense printf(units=2)
}
"""

REFERENCE_MODELS = {"residual": RESIDUAL, "inception": INCEPTION, "densenet": DENSE_NET,
                    "depthwise_separable": DEPTHWISE_SEPARABLE, "1d": ONE_D, "flat": FLAT, "c_keywords": C_KEYWORDS}


def randomized(text: str, seed: int) -> NumpyModel:
    """A float64 model with random parameters and running statistics (so inference mode is not the identity)."""
    m = numpy_model(text)
    rng = np.random.default_rng(seed)
    for p in m.params.values():
        p[...] = rng.normal(0, 0.5, p.shape)
    for name, b in m.buffers.items():
        b[...] = rng.uniform(0.5, 1.5, b.shape) if name.endswith("running_var") else rng.normal(0, 0.3, b.shape)
    return m


def assert_agrees_with_torch(m: NumpyModel, x, train: bool, tol: float = 1e-9) -> None:
    buffers = {name: value.copy() for name, value in m.buffers.items()}
    y = m.forward(x, train=train)
    dy = np.random.default_rng(1).normal(size=y.shape)
    dx = m.backward(dy)
    from torch_reference import torch_forward_backward  # needs torch: the callers take the torch fixture

    ty, tdx, tgrads = torch_forward_backward(m.network, m.params, x, dy, buffers=buffers, train=train)
    assert rel_err(y, ty) <= tol, f"forward differs from PyTorch: {rel_err(y, ty):.1e}"
    assert rel_err(dx, tdx) <= tol, f"dx differs from PyTorch: {rel_err(dx, tdx):.1e}"
    assert set(tgrads) == set(m.grads)
    for name in tgrads:
        assert rel_err(m.grads[name], tgrads[name]) <= tol, f"{name}: {rel_err(m.grads[name], tgrads[name]):.1e}"
    assert set(buffers) == set(m.buffers)
    for name in buffers:  # updated by both in training mode, untouched by both in inference
        np.testing.assert_allclose(m.buffers[name], buffers[name], rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("name", list(REFERENCE_MODELS))
def test_numpy_agrees_with_pytorch(name, train, torch):
    m = randomized(REFERENCE_MODELS[name], seed=3)
    x = np.random.default_rng(4).normal(size=(3, *m.input_shape))
    assert_agrees_with_torch(m, x, train)


def test_running_statistics_follow_pytorch_over_several_training_steps(torch):
    m = randomized(DENSE_NET, seed=5)
    rng = np.random.default_rng(6)
    bn = torch.nn.BatchNorm2d(4, momentum=0.1, dtype=torch.float64)
    bn.load_state_dict({"weight": torch.tensor(m.params["n1.weight"]), "bias": torch.tensor(m.params["n1.bias"]),
                        "running_mean": torch.tensor(m.buffers["n1.running_mean"]),
                        "running_var": torch.tensor(m.buffers["n1.running_var"])}, strict=False)
    for _ in range(3):
        x = rng.normal(size=(2, 2, 6, 6))
        m.forward(x, train=True)
        c0 = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(m.params["c0.weight"]),
                                        torch.tensor(m.params["c0.bias"]), padding=1)
        bn.train()(c0)
    np.testing.assert_allclose(m.buffers["n1.running_mean"], bn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(m.buffers["n1.running_var"], bn.running_var.numpy(), rtol=1e-12)


def test_inference_uses_the_running_statistics_and_leaves_them_alone():
    m = randomized(FLAT, seed=1)
    before = {k: v.copy() for k, v in m.buffers.items()}
    x = np.random.default_rng(0).normal(size=(4, 5))
    y1, y2 = m.forward(x), m.forward(x[:1])
    np.testing.assert_allclose(y1[:1], y2)  # per-sample: no batch statistics
    assert all(np.array_equal(before[k], m.buffers[k]) for k in before)
    m.forward(x, train=True)
    assert not np.array_equal(before["bn.running_mean"], m.buffers["bn.running_mean"])


def test_training_mode_needs_two_values_per_channel():
    m = numpy_model(FLAT)
    with pytest.raises(CnncError, match="batchnorm 'bn' needs more than one value per channel"):
        m.forward(np.zeros((1, 5)), train=True)
    m.forward(np.zeros((1, 5)), train=False)  # inference is per sample


def test_an_output_nothing_reads_gets_a_zero_gradient():
    m = numpy_model("model m { input x[4]; dense unused(units=3); dense out(units=2, from=x) }")
    y = m.forward(np.ones((2, 4)))
    m.backward(np.ones_like(y))
    assert not m.grads["unused.weight"].any() and m.grads["out.weight"].any()


# ==== finite differences for every new layer kind and merge ==============================================
GRADCHECK_CASES = {
    "batchnorm_2d": "input x[2, 3, 3]; batchnorm bn(momentum=0.2); conv2d c(filters=2, kernel=2)",
    "batchnorm_1d": "input x[3, 5]; conv1d c(filters=2, kernel=2); batchnorm bn",
    "batchnorm_flat": "input x[4]; dense d(units=3); batchnorm bn(eps=0.1); dense out(units=2)",
    "grouped_conv2d": "input x[4, 5, 5]; conv2d g(filters=6, kernel=3, stride=2, padding=1, groups=2)",
    "depthwise_conv2d": "input x[3, 5, 4]; conv2d dw(filters=3, kernel=(3, 2), dilation=(1, 2), groups=3, bias=false)",
    "depthwise_multiplier": "input x[2, 5, 5]; conv2d dw(filters=4, kernel=3, padding=same, groups=2)",
    "grouped_conv1d": "input x[4, 9]; conv1d g(filters=4, kernel=3, stride=2, groups=4, activation=silu)",
    "relu6": "input x[2, 6]; conv1d c(filters=2, kernel=1, activation=relu6); relu6 r; flatten; dense(units=2)",
    "silu": "input x[2, 6]; conv1d c(filters=2, kernel=1, activation=silu); silu s",
    "hardswish": "input x[2, 6]; conv1d c(filters=2, kernel=1, activation=hardswish); hardswish h",
    "add": "input x[2, 4, 4]; conv2d a(filters=2, kernel=1); conv2d b(filters=2, kernel=3, padding=1, from=x); "
           "add s(a, b, x, a)",
    "concat": "input x[2, 4, 4]; conv2d a(filters=3, kernel=1); concat k(x, a, x)",
    "concat_flat": "input v[3]; dense a(units=2); concat k(v, a); dense out(units=2)",
    "from_input_twice": "input v[3]; dense a(units=2, activation=tanh); dense b(units=2, from=v); add s(a, b)",
}
GRADCHECK_BLOCK = """
block res(w) { conv2d c(filters=w, kernel=3, padding=1); batchnorm bn; add s(bn, in) }
model m { input x[2, 4, 4]; res r1(w=2); res r2(w=2, from=x); concat k(r1, r2); global_avgpool; dense out(units=2) }
"""


def gradcheck_model(case: str) -> NumpyModel:
    text = GRADCHECK_BLOCK if case == "block" else "model m { " + GRADCHECK_CASES[case] + " }"
    m = numpy_model(text)
    rng = np.random.default_rng(2)
    for name, b in m.buffers.items():  # inference mode with non-trivial running statistics
        b[...] = rng.uniform(0.5, 2.0, b.shape) if name.endswith("var") else rng.normal(size=b.shape)
    return m


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("case", [*GRADCHECK_CASES, "block"])
def test_gradients_match_finite_differences(case, train):
    m = gradcheck_model(case)
    buffers = {k: v.copy() for k, v in m.buffers.items()}
    errors = gradcheck(m, batch=3, seed=1, train=train)
    assert set(errors) == {p.name for p in m.network.param_specs} | {"input"}
    worst = max(errors, key=errors.get)
    assert errors[worst] < THRESHOLD, f"{case}: {worst} has relative error {errors[worst]:.2e}"
    assert all(np.array_equal(buffers[k], m.buffers[k]) for k in buffers)  # put back after the check


def test_gradcheck_in_training_mode_refuses_dropout():
    m = numpy_model("model m { input v[3]; dropout(rate=0.5); dense out(units=2) }")
    with pytest.raises(ValueError, match="training mode needs a model without dropout"):
        gradcheck(m, train=True)


def test_cli_gradcheck_has_a_training_mode(tmp_path, capsys):
    path = tmp_path / "bn.cnn"
    path.write_text("model m { " + GRADCHECK_CASES["batchnorm_2d"] + " }\n")
    assert main(["gradcheck", str(path), "--train"]) == 0
    assert "training mode" in capsys.readouterr().out


# ==== the Model API: buffers, weights files, PyTorch state_dicts, checkpoints ==================================
def test_buffers_are_a_dict_like_params_initialised_to_zero_and_one():
    m = numpy_model(ISSUE_EXAMPLE, dtype="float32")
    assert list(m.buffers)[:2] == ["stem_bn.running_mean", "stem_bn.running_var"]
    assert m.buffers["s1.bn1.running_mean"].dtype == np.float32
    assert not m.buffers["s1.bn1.running_mean"].any() and (m.buffers["s1.bn1.running_var"] == 1).all()
    assert (m.params["s1.bn1.weight"] == 1).all() and not m.params["s1.bn1.bias"].any()
    with pytest.raises(KeyError, match="buffers has no tensor"):
        m.buffers["nope"] = 1


def test_state_dict_save_and_load_carry_the_buffers(tmp_path):
    m = randomized(DENSE_NET, seed=0)
    state = m.state_dict()
    assert {"n1.running_mean", "n1.running_var", "n1.weight", "c0.weight"} <= set(state)
    m.save(tmp_path / "w.npz")
    other = numpy_model(DENSE_NET)
    other.load_weights(tmp_path / "w.npz")
    for name, value in state.items():
        assert np.array_equal(other.state_dict()[name], value), name
    missing = {k: v for k, v in state.items() if k != "n2.running_var"}
    with pytest.raises(ValueError, match="missing buffer 'n2.running_var' with shape \\(7,\\)"):
        other.load_weights(missing)


def torch_resnet(torch):
    """The issue's example written directly in PyTorch, with the same attribute names."""

    class TorchResNet(torch.nn.Module):
        class Basic(torch.nn.Module):
            def __init__(self, width):
                super().__init__()
                self.c1 = torch.nn.Conv2d(width, width, 3, padding=1, bias=False)
                self.bn1 = torch.nn.BatchNorm2d(width)
                self.c2 = torch.nn.Conv2d(width, width, 3, padding=1, bias=False)
                self.bn2 = torch.nn.BatchNorm2d(width)

            def forward(self, x):
                return torch.relu(self.bn2(self.c2(torch.relu(self.bn1(self.c1(x))))) + x)

        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(1, 16, 3, padding=1, bias=False)
            self.stem_bn = torch.nn.BatchNorm2d(16)
            self.s1, self.s2, self.s3 = self.Basic(16), self.Basic(16), self.Basic(16)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            s1 = self.s1(torch.relu(self.stem_bn(self.stem(x))))
            self.s2(s1)  # computed, unused: the model's output reads s3, which reads s1
            return self.fc(self.s3(s1).mean(dim=(2, 3)))

    return TorchResNet()


def test_a_pytorch_state_dict_of_the_same_network_loads_directly(torch):
    torch.manual_seed(0)
    reference = torch_resnet(torch).double()
    with torch.no_grad():
        reference.train()(torch.randn(8, 1, 28, 28, dtype=torch.float64))  # move the running statistics
    reference.eval()
    m = numpy_model(ISSUE_EXAMPLE)
    m.load_weights({k: v.numpy() for k, v in reference.state_dict().items()})  # num_batches_tracked is ignored
    x = np.random.default_rng(0).normal(size=(2, 1, 28, 28))
    with torch.no_grad():
        expected = reference(torch.tensor(x)).numpy()
    assert rel_err(m.forward(x), expected) < 1e-10


def test_training_resumes_bit_exactly_with_batch_norm(tmp_path, monkeypatch):
    """Stop after one epoch of two and resume: weights and running statistics equal the uninterrupted run's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "res.cnn").write_text("""
    block res(w) { conv2d c(filters=w, kernel=3, padding=1, bias=false); batchnorm bn; add s(bn, in); relu r }
    model res {
        input image[1, 8, 8]
        conv2d stem(filters=4, kernel=3, padding=1)
        res r1(w=4)
        global_avgpool
        dense out(units=10)
        loss cross_entropy
    }""")
    common = ["--data", "digits", "--epochs", "2", "--backend", "numpy", "--quiet"]
    assert main(["train", "res.cnn", *common, "-o", "full.npz"]) == 0
    assert main(["train", "res.cnn", *common, "-o", "part.npz", "--stop-after", "1"]) == 0
    assert main(["train", "res.cnn", "--resume", "part.ckpt.npz", "--quiet"]) == 0
    with np.load("full.npz") as full, np.load("part.npz") as part:
        assert sorted(full.files) == sorted(part.files) and "r1.bn.running_var" in full.files
        for name in full.files:
            assert np.array_equal(full[name], part[name]), name
        assert not np.array_equal(full["r1.bn.running_var"], np.ones(4))  # training moved them
    assert main(["eval", "res.cnn", "--weights", "full.npz", "--data", "digits", "--backend", "numpy"]) == 0


# ==== cnnc check ====================================================================================
def test_check_shows_the_inputs_of_graph_layers_and_trainable_totals(tmp_path, capsys):
    path = tmp_path / "resnet.cnn"
    path.write_text(ISSUE_EXAMPLE)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(("-", "model"))}
    assert "reads" in rows["layer"]
    assert "s1.bn2, stem_relu" in rows["s1.sum"] and "s1.out" in rows["s3.c1"]
    assert rows["s2.c1"].split()[2] == "[16," and "s1.out" not in rows["s2.c1"]  # the previous statement: blank
    net = network(ISSUE_EXAMPLE)
    assert f"parameters: {net.param_count:,} " in out and "trainable; plus 224 values of batch norm" in out


def test_check_json_lists_every_layer_under_its_dotted_name(tmp_path, capsys):
    path = tmp_path / "forms.cnn"
    path.write_text(ISSUE_EXAMPLE + ISSUE_FORMS)
    assert main(["check", str(path), "--json"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    resnet = {layer["name"]: layer for layer in models["resnet"]["layers"]}
    assert resnet["s3.c1"]["inputs"] == ["s1.out"] and resnet["s3.c1"]["output"] == [16, 28, 28]
    assert resnet["s3.c1"]["params"] == 16 * 16 * 9 and resnet["s3.bn1"]["params"] == 32
    assert models["resnet"]["params"] == sum(layer["params"] for layer in resnet.values())
    forms = {layer["name"]: layer for layer in models["forms"]["layers"]}
    assert forms["dw"]["macs"] == 48 * 4 * 4 * (48 // 48) * 3 * 3 and forms["dw"]["groups"] == 48
    assert forms["cat1"]["inputs"] == ["a", "b", "c"]


def test_check_html_reports_a_graph_model(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    spec, report = tmp_path / "resnet.cnn", tmp_path / "report.html"
    spec.write_text(ISSUE_EXAMPLE)
    assert main(["check", str(spec), "--html", str(report)]) == 0
    assert "s3.sum" in report.read_text()


# ==== the exports write graphs and the new kinds ================================================================
@pytest.mark.parametrize("text", [
    ISSUE_EXAMPLE,
    "model m { input v[4]; dense a(units=2); dense b(units=2, from=v); add s(a, b) }",
    "model m { input x[2, 4]; conv1d c(filters=2, kernel=1, groups=2) }",
    "model m { input v[4]; dense a(units=2, activation=silu) }",
    "model m { input v[4]; dense a(units=2); dense b(units=2, from=v); concat c(a, b) }",
])
def test_the_exports_write_graphs_and_new_kinds(tmp_path, text):
    """The C backend runs all of these (tests/test_c_graphs.py); so do the ONNX export (checked against
    onnxruntime here) and the standalone C export (built and run by tests/test_export_c_graphs.py)."""
    net = network(text)
    from cnnc.export_c import export_c, memory_report
    from cnnc.export_onnx import build_onnx

    m = NumpyModel(net)
    assert "standalone C export" in memory_report(net)
    assert any(p.name == f"{net.name}.c" for p in export_c(m, tmp_path / "out"))
    # the ONNX export writes them (tests/test_onnx_graphs.py checks it on every spec)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(build_onnx(net, m.params, m.buffers).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, *net.input_shape)).astype(np.float32)
    y = session.run(None, {net.input_name: x})[0]
    assert np.abs(y - m.forward(x)).max() <= 1e-5 * max(np.abs(y).max(), 1.0)


def test_the_cli_exports_a_graph_and_refuses_what_it_cannot_with_exit_status_1_and_no_traceback(tmp_path, capsys):
    spec = tmp_path / "resnet.cnn"
    spec.write_text(ISSUE_EXAMPLE)
    weights = tmp_path / "w.npz"
    numpy_model(ISSUE_EXAMPLE, dtype="float32").save(weights)
    assert main(["export", str(spec), "--weights", str(weights), "--format", "c", "-o", str(tmp_path / "c")]) == 0
    assert "RESNET_ARENA_BYTES" in capsys.readouterr().out
    # the float export writes every kind, and int8 quantisation takes them too: global_maxpool, and a batch norm
    # that folds into no layer (an int8 affine step, tests/test_quantize_batchnorm.py)
    maxpool = tmp_path / "maxpool.cnn"
    maxpool.write_text("model m { input x[1, 6, 6]; conv2d c(filters=2, kernel=3); global_maxpool g; batchnorm n }")
    assert main(["export", str(maxpool), "--format", "c", "--dry-run"]) == 0
    capsys.readouterr()
    numpy_model(maxpool.read_text(), dtype="float32").save(tmp_path / "m.npz")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x_train=rng.random((20, 1, 6, 6), dtype=np.float32), y_train=np.arange(20) % 2,
             x_test=rng.random((4, 1, 6, 6), dtype=np.float32), y_test=np.arange(4) % 2)
    argv = ["export", str(maxpool), "--weights", str(tmp_path / "m.npz"), "--format", "c", "--quantize", "int8",
            "--calibration", str(tmp_path / "data.npz"), "-o", str(tmp_path / "q")]
    assert main(argv) == 0
    assert "calibrated on 20 samples" in capsys.readouterr().out
    assert {"m.c", "m.h", "main.c", "Makefile"} <= {p.name for p in (tmp_path / "q").iterdir()}
    # an add of three operands quantises too (int8 adds of any number: tests/test_quantize_graphs.py)
    three = tmp_path / "three.cnn"
    three.write_text("model m { input x[1, 6, 6]; conv2d c(filters=1, kernel=1); conv2d d(filters=1, kernel=1, "
                     "from=x); add s(c, d, x) }")
    numpy_model(three.read_text(), dtype="float32").save(tmp_path / "three.npz")
    assert main(["export", str(three), "--format", "c", "--dry-run"]) == 0
    capsys.readouterr()
    argv = ["export", str(three), "--weights", str(tmp_path / "three.npz"), "--format", "c", "--quantize", "int8",
            "--calibration", str(tmp_path / "data.npz"), "-o", str(tmp_path / "q3")]
    assert main(argv) == 0
    assert "calibrated on 20 samples" in capsys.readouterr().out
    assert {"m.c", "m.h", "main.c", "Makefile"} <= {p.name for p in (tmp_path / "q3").iterdir()}
