"""int8 batch norm in every place the float export takes it (issue 19, "every float-exportable spec").

A batch norm right after a convolution, a transposed convolution or a dense layer (no fused activation, nothing
else reading it) folds into that layer's float weights and bias before quantising; any other one (on the input,
after pooling, add, concat, a fused activation, a layer read twice, batchnorm1d after flatten) is an int8
per-channel affine step: int8_affine_forward in kernels/int8.h, affine_int8 in cnnc/quantize.py.

The models below put batch norm in each of those places (with negative and zero gammas), are calibrated,
exported and linked into ONE program built twice (tests/int8_build.py: strict -O2, and ASan/UBSan with
caller-owned arenas); the C must agree with the NumPy int8 reference bit for bit. The folds are checked against
PyTorch's layer followed by its batch norm, the affine step against PyTorch's batch norm on the dequantised
input, and the int8 models against the float ones.
"""
from __future__ import annotations

import numpy as np
import pytest

import cnnc
from cnnc.export_int8 import export_int8_c, int8_memory_plan
from cnnc.ir import CONV_TRANSPOSE_KINDS
from cnnc.quantize import (AFFINE_FRACTION, QParams, affine_step, calibrate, folded_linear_params, int8_batchnorm_folds,
                           int8_flash_bytes)
from int8_build import build_int8_programs, calibration_inputs, mismatches
from test_export_c import GCC

BATCH = 5

BATCHNORM_MODELS = """
model bn_input {
    input x[3, 6, 6]
    batchnorm n0
    conv2d c(filters=4, kernel=3, padding=1)
    maxpool2d(size=2)
    batchnorm pooled
    relu
    avgpool2d(size=3, stride=1, padding=1)
    batchnorm averaged
    relu6
    global_avgpool
    batchnorm flat
}
model bn_transposed {
    input x[4, 3, 3]
    conv_transpose2d t(filters=6, kernel=3, stride=2, padding=1, output_padding=1, groups=2, bias=false)
    batchnorm t_bn
    relu
    conv_transpose2d u(filters=3, kernel=2, stride=2)
    batchnorm u_bn
}
model bn_transposed1d {
    input s[3, 8]
    conv_transpose1d t(filters=4, kernel=3, stride=2)
    batchnorm t_bn
    conv1d c(filters=4, kernel=3, activation=relu)
    batchnorm after_relu
    maxpool1d(size=2)
    batchnorm pooled
}
model bn_graph {
    input x[2, 6, 6]
    conv2d a(filters=3, kernel=3, padding=1)
    batchnorm a_bn
    conv2d b(filters=3, kernel=1, from=x)
    add s(a_bn, b)
    batchnorm s_bn
    relu s_act
    conv2d c(filters=3, kernel=1)
    batchnorm c_bn
    concat cat(c, s_act)
    batchnorm cat_bn
    relu6
    flatten
    dense out(units=4)
}
model bn_dense {
    input v[12]
    batchnorm v_bn
    dense a(units=8)
    batchnorm a_bn
    relu
    dense b(units=6, activation=relu)
    batchnorm b_bn
    dense c(units=5, bias=false)
    batchnorm c_bn
}
"""

# What each batch norm must become: folded into the named layer, or an affine step; and the relus that fold
# into the clamp of the layer (or affine step) they read.
FOLDED = {"bn_input": {}, "bn_transposed": {"t_bn": "t", "u_bn": "u"}, "bn_transposed1d": {"t_bn": "t"},
          "bn_graph": {"a_bn": "a"}, "bn_dense": {"a_bn": "a", "c_bn": "c"}}
AFFINE = {"bn_input": {"n0", "pooled", "averaged", "flat"}, "bn_transposed": set(),
          "bn_transposed1d": {"after_relu", "pooled"}, "bn_graph": {"s_bn", "c_bn", "cat_bn"},
          "bn_dense": {"v_bn", "b_bn"}}
FOLDED_RELUS = {"bn_input": {"relu_1": "pooled", "relu6_1": "averaged"}, "bn_transposed": {"relu_1": "t"},
                "bn_transposed1d": {}, "bn_graph": {"relu6_1": "cat_bn"}, "bn_dense": {"relu_1": "a"}}

pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is needed to build the exported C")


def randomized(path: str, name: str, seed: int):
    """A NumPy model with non-zero biases and batch norms far from the identity: gammas of both signs (one
    channel's 0 where there are three or more), means and variances per channel."""
    m = cnnc.load(path, model=name, seed=seed)
    rng = np.random.default_rng(seed)
    norms = [layer.name for layer in m.network.layers if layer.kind == "batchnorm"]
    for key, p in m.params.items():
        layer, role = key.rsplit(".", 1)
        if layer in norms and role == "weight":
            p[...] = rng.uniform(0.5, 2.0, p.shape) * rng.choice([-1.0, 1.0], p.shape)
            if p.size >= 3:
                p[1] = 0.0
        elif role == "bias":
            p[...] = rng.normal(0.0, 0.5, p.shape)
    for key, b in m.buffers.items():
        b[...] = rng.normal(0.0, 1.0, b.shape) if key.endswith("mean") else rng.uniform(0.2, 3.0, b.shape)
    return m


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8_batchnorm")
    spec = root / "bn.cnn"
    spec.write_text(BATCHNORM_MODELS)
    exports = {}
    for seed, name in enumerate(FOLDED):
        m = randomized(str(spec), name, seed)
        for relu, into in FOLDED_RELUS[name].items():
            if relu.startswith("relu6"):  # reach well past 6, so that the folded relu6 really clamps
                m.params[f"{into}.weight"][...] *= 10.0
        q = calibrate(m, calibration_inputs(m.input_shape, seed))
        export_int8_c(q, root / name, prefix=name)
        exports[name] = (root / name, m, q)
    return root, exports, build_int8_programs(root, exports)


def test_every_placement_of_batch_norm_exports_and_agrees_with_the_numpy_int8_reference_bit_for_bit(built):
    """predict_q and predict of both builds (strict, ASan/UBSan) against the reference, on int8 inputs over the
    whole range and float inputs with NaN, infinity and -1e30."""
    root, exports, builds = built
    failures = mismatches(root, exports, builds, BATCH, float_extremes=True)
    for seed, (prefix, (_, m, q)) in enumerate(exports.items()):
        xq = np.random.default_rng(seed).integers(-128, 128, (BATCH, *m.input_shape)).astype(np.int8)
        if len(np.unique(q.forward_q(xq))) < 3:
            failures.append(f"{prefix}: degenerate outputs")
    assert not failures, "\n".join(failures)


def test_each_batch_norm_folds_or_becomes_an_affine_step_and_relus_fold_into_it(built):
    _, exports, _ = built
    for prefix, (_, m, q) in exports.items():
        network = m.network
        folds = {bn: layer.name for bn, layer in int8_batchnorm_folds(network).items()}
        assert folds == FOLDED[prefix], prefix
        affine = {s.layer.name for s in q.steps if s.op == "affine"}
        assert affine == AFFINE[prefix], prefix
        assert not any(s.layer.name in folds for s in q.steps), prefix  # a folded batch norm has no step
        by_name = {s.layer.name: s for s in q.steps if s.key[0] == "compute"}
        for relu, into in FOLDED_RELUS[prefix].items():
            relu_step = next(s for s in q.steps if s.layer.name == relu)
            assert relu_step.op == "none", (prefix, relu)
            target = by_name[into]
            assert target.act_min == max(-128, target.out.zero_point), (prefix, relu)
            if relu.startswith("relu6"):  # calibrated after the relu6: int8's 127 is real 6, the clamp at 6
                assert abs(target.out.dequantize(np.int8(127)) - 6.0) < target.out.scale, (prefix, relu)
        # the plan has a statement for every step and none for a folded batch norm; no float scratch
        plan = int8_memory_plan(network)
        assert {(s.op, s.index) for s in plan.steps if s.op != "copy"} == {s.key for s in q.steps}
        assert all(s.scratch is None for s in plan.steps if s.layer is not None and s.layer.kind == "batchnorm")
        stored = sum(a.nbytes for s in q.steps for a in (s.weight, s.bias, s.multiplier, s.shift, s.table)
                     if a is not None)
        flash = int8_flash_bytes(network)
        assert stored == flash["weights"] + flash["constants"], prefix
    # bn_transposed1d's c has a fused relu: its batch norm cannot fold, and the relu stays c's clamp
    c = exports["bn_transposed1d"][2].step(("compute", 3))
    assert c.op == "conv" and c.act_min == max(-128, c.out.zero_point)
    # bn_dense's b has a fused relu (b_bn does not fold)
    assert exports["bn_dense"][2].step(("compute", 6)).op == "affine"


def test_int8_tracks_the_float_model(built):
    """On the calibration inputs, every output within 5% of the largest float output (a few output steps)."""
    _, exports, _ = built
    for seed, (prefix, (_, m, q)) in enumerate(exports.items()):
        x = calibration_inputs(m.input_shape, seed)
        want, got = m.forward(x).reshape(len(x), -1), q.forward(x).reshape(len(x), -1)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 0.05, f"{prefix}: int8 is {err:.3f} (relative) from float"


def torch_layer(F, layer, x, w, b):
    """PyTorch's dense, convolution or transposed convolution `layer` of x with weight w and bias b."""
    if layer.kind == "dense":
        return F.linear(x, w, b)
    geometry = {"stride": layer.stride, "padding": layer.pad_before, "groups": layer.groups, "dilation": layer.dilation}
    if layer.kind in CONV_TRANSPOSE_KINDS:
        transposed = F.conv_transpose1d if layer.spatial_dims == 1 else F.conv_transpose2d
        return transposed(x, w, b, output_padding=layer.output_padding, **geometry)
    return (F.conv1d if layer.spatial_dims == 1 else F.conv2d)(x, w, b, **geometry)


def test_folds_into_transposed_convolutions_and_dense_layers_are_pytorchs_layer_then_batch_norm(built, torch):
    """The folded weight and bias, in float64, give PyTorch's layer followed by its inference batch norm."""
    F = torch.nn.functional
    _, exports, _ = built
    checked = 0
    for prefix, (_, m, _) in exports.items():
        network = m.network
        for bn_name, layer in int8_batchnorm_folds(network).items():
            bn = network.layer(bn_name)
            weight, bias = folded_linear_params(layer, bn, m.params, m.buffers)
            x = torch.from_numpy(np.random.default_rng(checked).standard_normal((3, *layer.in_shape)))
            w = torch.from_numpy(np.asarray(m.params[f"{layer.name}.weight"], np.float64))
            b = torch.from_numpy(np.asarray(m.params[f"{layer.name}.bias"], np.float64)) if layer.bias else None
            stats = [torch.from_numpy(np.asarray(m.buffers[f"{bn.name}.running_{r}"], np.float64))
                     for r in ("mean", "var")]
            gamma, beta = (torch.from_numpy(np.asarray(m.params[f"{bn.name}.{r}"], np.float64))
                           for r in ("weight", "bias"))
            want = F.batch_norm(torch_layer(F, layer, x, w, b), *stats, gamma, beta, training=False, eps=bn.eps)
            got = torch_layer(F, layer, x, torch.from_numpy(weight), torch.from_numpy(bias))
            assert layer.kind != "dense" or bn.in_shape == (layer.out_shape[0],)  # batchnorm1d on (N, U)
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-12,
                                       err_msg=f"{prefix}: {bn_name}")
            checked += 1
    assert checked == 6  # two transposed 2-D, one transposed 1-D, two dense, one conv2d (bn_graph's a)


def test_the_affine_step_is_pytorchs_batch_norm_within_half_a_step(built, torch):
    """On every int8 input value, each affine step's output is PyTorch's inference batch norm of the dequantised
    input, in output steps, to within half a step (plus the fixed-point rounding: a few 2^-8 of a step), clamped
    to int8 and to a folded relu's or relu6's range; a zero gamma gives the constant beta."""
    F = torch.nn.functional
    _, exports, _ = built
    checked = zero_gammas = negative = 0
    unclamped = []  # per step, the share of inputs whose output is not clamped
    for prefix, (_, m, q) in exports.items():
        for s in (s for s in q.steps if s.op == "affine"):
            layer = s.layer
            C = layer.in_shape[0]
            values = np.arange(-128, 128, dtype=np.int8).reshape(256, *[1] * len(layer.in_shape))
            xq = np.ascontiguousarray(np.broadcast_to(values, (256, *layer.in_shape)))  # every value everywhere
            y = s.forward(xq).astype(np.int64).reshape(256, C, -1)
            assert np.all(y == y[:, :, :1]), (prefix, layer.name)  # the same map at every position
            y = y[:, :, 0]
            xq = xq.reshape(256, C, -1)[:, :, 0]
            stats = [torch.from_numpy(np.asarray(m.buffers[f"{layer.name}.running_{r}"], np.float64))
                     for r in ("mean", "var")]
            gamma, beta = (torch.from_numpy(np.asarray(m.params[f"{layer.name}.{r}"], np.float64))
                           for r in ("weight", "bias"))
            x = torch.from_numpy(s.inp.dequantize(xq).astype(np.float64).reshape(256, C))
            real = F.batch_norm(x, *stats, gamma, beta, training=False, eps=layer.eps).numpy()
            want = real / s.out.scale + s.out.zero_point  # the exact int8 value before rounding and clamping
            clamped = np.clip(want, s.act_min, s.act_max)  # int8's range, or a folded relu's or relu6's
            assert (clamped == want).any(), (prefix, layer.name)  # not all saturated
            unclamped.append((clamped == want).mean())
            assert np.abs(y - clamped).max() <= 0.5 + 4.0 / (1 << AFFINE_FRACTION), (prefix, layer.name)
            zero = gamma.numpy() == 0
            assert np.all(y[:, zero] == y[:1, zero]), (prefix, layer.name)  # constant: beta
            zero_gammas += int(zero.sum())
            negative += int((gamma.numpy() < 0).sum())
            checked += 1
    assert checked == 11 and zero_gammas == 11 and negative >= 10, (checked, zero_gammas, negative)
    assert np.mean(unclamped) > 0.3, unclamped


def test_affine_step_extremes_saturate_and_round_like_the_requantisation():
    """Factors far above and below 1, offsets beyond int32, and a gamma of 0: the step saturates at the int8
    range (never wraps), an offset beyond int32 is clipped, and a tiny factor leaves the constant offset."""
    net = cnnc.network_from_text("model m { input v[4]; batchnorm n }")
    layer = net.layers[0]
    params = {"n.weight": np.array([1e6, -1e6, 1e-12, 0.0]), "n.bias": np.array([0.0, 0.0, 0.5, 1e12])}
    buffers = {"n.running_mean": np.zeros(4), "n.running_var": np.ones(4)}
    inp, out = QParams(0.05, 3), QParams(0.02, -7)
    s = affine_step(("compute", 1), layer, params, buffers, inp, out)
    x = np.arange(-128, 128, dtype=np.int8)[:, None].repeat(4, axis=1)
    y = s.forward(x).astype(np.int64)
    centred = x[:, 0].astype(np.int64) - inp.zero_point
    assert np.all(y[:, 0] == np.where(centred > 0, 127, np.where(centred < 0, -128, out.zero_point)))
    assert np.all(y[:, 1] == np.where(centred > 0, -128, np.where(centred < 0, 127, out.zero_point)))
    assert np.all(y[:, 2] == out.zero_point + 25)  # 0.5 / 0.02: the 1e-12 factor is 0
    assert np.all(y[:, 3] == 127) and s.bias[3] == 2**31 - 1
    assert s.multiplier[1] < 0 < s.multiplier[0] and s.multiplier[3] == 0
