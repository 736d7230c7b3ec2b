"""int8 export of graph models (issue 19 on top of issue 15): add of two or more operands (each rescaled, summed
in int32, the sum rescaled to the output's encoding), concat (each operand requantised), batch norm folded into
its convolution before quantising, from=.

ResNet-8, the Inception-style spec and five small graphs are calibrated with random weights and running
statistics, exported, linked into one program with tests/int8_build.py's driver and built twice (strict,
and ASan/UBSan with caller-owned arenas of exactly PREFIX_ARENA_BYTES); the C must agree with the NumPy int8
reference (cnnc.quantize) bit for bit on both entry points.
"""
from __future__ import annotations

import numpy as np
import pytest

import cnnc
from cnnc.diagnostics import CnncError
from cnnc.export_int8 import export_int8_c
import cnnc.quantize
from cnnc.quantize import (ADD_LEFT_SHIFT, ADD_OPERANDS_MAX, INT32_MAX, QParams, add_left_shift, add_operand_bound,
                           add_step, calibrate, check_quantizable, concat_step, int8_flash_bytes,
                           multiply_by_quantized_multiplier, quantize_multiplier)

from conftest import SPECS
from int8_build import build_int8_programs, calibration_inputs, mismatches
from test_export_c import GCC
from test_export_c_graphs import randomized

BATCH = 4

# relu folded into a convolution through a folded batch norm; a relu that cannot fold (its convolution is read
# twice); add of tensors with very different scales; concat of three operands, one of them the input; 1-D.
INT8_GRAPHS = """
model q_residual {
    input x[2, 10, 10]
    conv2d a(filters=4, kernel=3, padding=1, bias=false)
    batchnorm a_bn
    relu a_act
    conv2d b(filters=4, kernel=1, from=x)
    relu b_act(from=b)
    add s(a_act, b)
    conv2d c(filters=3, kernel=3, stride=2, padding=1, activation=relu)
    concat cat(c, c)
    avgpool2d(size=2)
    flatten
    dense out(units=5)
}
model q_branches1d {
    input s[3, 16]
    conv1d a(filters=4, kernel=3, padding=1)
    batchnorm a_bn
    conv1d b(filters=2, kernel=5, padding=2, activation=relu, from=s)
    concat cat(a_bn, b, s)
    maxpool1d p(size=2)
    conv1d d(filters=9, kernel=1)
    add sum(d, p)
    global_avgpool
    dense out(units=3, activation=softmax)
}
model q_mobile {
    input x[4, 8, 8]
    conv2d a(filters=8, kernel=3, padding=1, groups=2, activation=relu6)
    conv2d dw(filters=8, kernel=3, padding=1, groups=8, bias=false)
    batchnorm dw_bn
    relu6 dw_act
    conv2d wide(filters=8, kernel=1, from=a)
    add s(dw_act, wide)
    relu6 big
    conv2d pw(filters=6, kernel=1, activation=hardswish)
    silu
    global_avgpool
}
model q_sum3 {
    input x[3, 6, 6]
    conv2d a(filters=4, kernel=3, padding=1)
    conv2d b(filters=4, kernel=1, from=x)
    conv2d c(filters=4, kernel=3, padding=1, activation=relu, from=x)
    add s(a, b, c)
    relu s_act
    conv2d d(filters=4, kernel=1)
    add t(d, s_act, d, c)
    global_avgpool
    dense out(units=5)
}
model q_sum_many {
    input v[6]
    dense a(units=6)
    dense b(units=6, activation=relu, from=v)
    add s(a, b, v, a)
    relu s_act
    dense c(units=6)
    add wide(c, s_act, c, c, c, c, c, c, c, c, c, c, c, c, c, c, v)
    dense out(units=4)
}
"""
# q_sum3: an add of three operands of very different scales (b's weights scaled by 40, c's by 0.02) with a relu
# after it, then one of four (d twice). q_sum_many: four operands, one of them the input, one twice, with a relu
# after; then seventeen, past the sixteen that a left shift of 20 allows: the shift drops to 19.

GRAPHS = [(SPECS / "resnet8.cnn", "resnet8"), (SPECS / "inception_small.cnn", "inception_small"),
          (SPECS / "mobilenet_small.cnn", "mobilenet_small"), ("extra", "q_residual"), ("extra", "q_branches1d"),
          ("extra", "q_mobile"), ("extra", "q_sum3"), ("extra", "q_sum_many")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8_graphs")
    extra = root / "extra.cnn"
    extra.write_text(INT8_GRAPHS)
    exports = {}
    for seed, (path, name) in enumerate(GRAPHS):
        m = randomized(extra if path == "extra" else path, name, seed)
        if name == "q_residual":  # operands of very different scales
            m.params["b.weight"][...] *= 20.0
        if name == "q_mobile":  # the sum goes well past 6: the unfolded relu6 clamps at real 6 below int8's 127
            m.params["wide.weight"][...] *= 30.0
        if name == "q_sum3":
            m.params["b.weight"][...] *= 40.0
            m.params["c.weight"][...] *= 0.02
        q = calibrate(m, calibration_inputs(m.input_shape, seed))
        export_int8_c(q, root / name, prefix=name)
        exports[name] = (root / name, m, q)
    return root, exports, build_int8_programs(root, exports)


pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is needed to build the exported C")


def test_graph_exports_agree_with_the_numpy_int8_reference_bit_for_bit(built):
    root, exports, builds = built
    relu6 = next(q for q in exports["q_mobile"][2].steps if q.layer.name == "big")
    assert relu6.op == "clamp" and -128 < relu6.act_max < 127  # the clamp at real 6 is really exercised
    adds = {(prefix, q.layer.name): q for prefix in ("q_sum3", "q_sum_many") for q in exports[prefix][2].steps
            if q.op == "add"}
    assert {key: (len(q.operands), q.constants["left_shift"]) for key, q in adds.items()} == {
        ("q_sum3", "s"): (3, 20), ("q_sum3", "t"): (4, 20), ("q_sum_many", "s"): (4, 20),
        ("q_sum_many", "wide"): (17, 19)}
    scales = [q.scale for q in adds[("q_sum3", "s")].operands]
    assert max(scales) > 1000 * min(scales)  # operands of very different scales
    failures = mismatches(root, exports, builds, BATCH)
    for seed, (prefix, (_, m, q)) in enumerate(exports.items()):
        rng = np.random.default_rng(seed)
        xq = rng.integers(-128, 128, (BATCH, *m.input_shape)).astype(np.int8)
        xq[0], xq[1] = -128, 127
        want_q = q.forward_q(xq)
        if len(np.unique(want_q)) < 3:
            failures.append(f"{prefix}: degenerate outputs {np.unique(want_q)}")
    assert not failures, "\n".join(failures)


def test_int8_graphs_track_the_float_model(built):
    """On inputs like the calibration data, the dequantised int8 outputs stay near the float outputs."""
    _, exports, _ = built
    for seed, (prefix, (_, m, q)) in enumerate(exports.items()):
        x = calibration_inputs(m.input_shape, seed)[:16]
        want = m.forward(x)
        err = np.abs(q.forward(x) - want).max() / np.abs(want).max()
        assert err < 0.1, f"{prefix}: int8 is {err:.3f} (relative) from float"


def test_batch_norm_folds_before_quantising_and_the_flash_counts_its_bias(built):
    _, exports, _ = built
    network = exports["resnet8"][2].network
    steps = {s.layer.name: s for s in exports["resnet8"][2].steps if s.key[0] == "compute"}
    assert not any(s.layer.kind == "batchnorm" for s in steps.values())
    assert steps["stem"].bias is not None  # from stem_bn
    # stem_relu folds into stem: its calibrated range starts at 0 (zero point -128), and its step does nothing
    relu = next(s for s in exports["resnet8"][2].steps if s.layer.name == "stem_relu")
    assert relu.op == "none" and steps["stem"].out.zero_point == -128 == steps["stem"].act_min
    flash = int8_flash_bytes(network)
    # int8 weights of 9 convolutions and fc, int32 biases: fc's 10 and one per folded convolution's filter
    convs = [layer for layer in network.layers if layer.kind == "conv2d"]
    assert flash["weights"] == sum(c.params[0].size + 4 * c.out_shape[0] for c in convs) + 640 + 4 * 10


def test_int8_add_is_the_real_sum_within_rounding():
    """add of two encodings far apart: every pair of int8 inputs gives the real sum to within one step of the
    output encoding (plus the operands' rescaling error, far below it), or saturates."""
    a_enc, b_enc, out = QParams(0.02, -5), QParams(0.7, 30), QParams(0.75, 3)
    a, b = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128))  # every pair, two per sample
    a, b = a.reshape(-1, 2).astype(np.int8), b.reshape(-1, 2).astype(np.int8)
    add, concat = cnnc.network_from_text("model m { input v[2]; dense d(units=2); add s(d, v); concat c(d, v) }").layers[1:]
    step = add_step(("compute", 2), add, [a_enc, b_enc], out)
    y = step.forward(a, b)
    real = a_enc.dequantize(a) + b_enc.dequantize(b)
    inside = (real > out.dequantize(np.int8(-128))) & (real < out.dequantize(np.int8(127)))
    assert inside.mean() > 0.5 and (~inside).any()
    assert np.abs(out.dequantize(y) - real)[inside].max() <= 0.5 * out.scale * (1 + 1e-4)
    assert ADD_LEFT_SHIFT == 20 == step.constants["left_shift"]
    assert (y[~inside] == np.where(real[~inside] > 0, 127, -128)).all()
    # concat requantises (x - zp) directly: a factor below 1/2 (a right shift e < 0) rounds twice, as in
    # TensorFlow Lite, which costs up to half a step of 2^e on top of the final rounding
    step = concat_step(("compute", 3), concat, [a_enc, b_enc], out)
    joined = step.forward(a, b)
    for part, enc, x, shift in ((joined[:, :2], a_enc, a, step.shift[0]), (joined[:, 2:], b_enc, b, step.shift[1])):
        real = enc.dequantize(x)
        ok = (real > out.dequantize(np.int8(-128))) & (real < out.dequantize(np.int8(127)))
        assert np.abs(out.dequantize(part) - real)[ok].max() <= 0.5 * out.scale * (1 + 2.0 ** min(shift, 0) + 1e-4)


@pytest.mark.parametrize("encodings,out", [
    ([QParams(0.02, -5), QParams(0.7, 30), QParams(0.003, -128)], QParams(0.75, 3)),
    ([QParams(0.05, 0), QParams(0.05, 0), QParams(1.3, -100), QParams(0.0001, 7)], QParams(0.9, -20)),
    ([QParams(0.01, 10)] * 17, QParams(0.02, 0)),  # a left shift of 19
])
def test_int8_add_of_more_operands_is_the_real_sum_within_rounding(encodings, out):
    """add of n operands, scales far apart: the real sum to within half a step of the output encoding (plus the
    operands' rescaling, each within 2 max s / 2^L, far below a step), or saturated at the right end."""
    n = len(encodings)
    text = f"model m {{ input v[8]; add s({', '.join(['v'] * n)}) }}"
    layer = cnnc.network_from_text(text).layers[0]
    step = add_step(("compute", 1), layer, encodings, out)
    left_shift = step.constants["left_shift"]
    assert left_shift == (20 if n <= 16 else 19)
    rng = np.random.default_rng(n)
    xs = [rng.integers(-128, 128, (4000, 8)).astype(np.int8) for _ in encodings]
    for x in xs[:n - 1]:  # the extremes of every operand at once
        x[0], x[1] = 127, -128
    y = step.forward(*xs)
    real = sum(enc.dequantize(x).astype(np.float64) for enc, x in zip(encodings, xs))
    lo, hi = out.dequantize(np.int8(-128)), out.dequantize(np.int8(127))
    inside = (real > lo) & (real < hi)
    assert inside.mean() > 0.3 and (~inside).any()
    rescaling = n * 2 * max(enc.scale for enc in encodings) / 2**left_shift
    assert np.abs(out.dequantize(y) - real)[inside].max() <= 0.5 * out.scale * (1 + 1e-4) + rescaling
    assert (y[~inside] == np.where(real[~inside] > 0, 127, -128)).all()


def test_the_int8_add_sum_stays_inside_int32():
    """add_operand_bound(L) bounds every rescaled operand (x - zp) * 2^L * f, f <= 1/2 (the reference computes it
    in int64, so nothing wraps here), and add_left_shift keeps n of them inside int32: with 16 operands a shift of
    20 just fits; 17 at the extremes would pass 2^31 - 1, so they shift by 19."""
    rng = np.random.default_rng(0)
    factors = np.concatenate([[0.5, 0.5 * (1 - 1e-12), 0.5 * (1 - 2.0**-33), 0.25, 2.0**-33],
                              0.5 * rng.random(200)])
    for left_shift in (0, 1, 7, 19, 20):
        worst = 0
        for f in factors:
            m, e = quantize_multiplier(float(f))
            assert e <= 0  # no left shift inside the rescaling, so nothing saturates
            r = multiply_by_quantized_multiplier(np.array([255, -255]) * 2**left_shift, m, e)
            worst = max(worst, int(np.abs(r).max()))
        assert worst <= add_operand_bound(left_shift) <= worst + 1
    assert [add_left_shift(n) for n in (2, 3, 4, 16, 17, 32, 33, 10**6)] == [20, 20, 20, 20, 19, 19, 18, 4]
    # equal scales (factor 1/2 exactly) and every operand at 127 - (-128): the largest sum there is
    m, e = quantize_multiplier(0.5)
    extreme = int(multiply_by_quantized_multiplier(np.array(255 << 20), m, e))
    assert 16 * extreme <= INT32_MAX < 17 * extreme
    assert add_left_shift(ADD_OPERANDS_MAX) == 0 and add_left_shift(ADD_OPERANDS_MAX + 1) is None
    assert ADD_OPERANDS_MAX * add_operand_bound(0) <= INT32_MAX


def test_what_int8_cannot_quantise_is_refused_naming_the_layer(monkeypatch):
    """Every batch norm (tests/test_quantize_batchnorm.py) and an add of any number of operands quantise; only an
    add of more than ADD_OPERANDS_MAX (16777215) operands, whose int32 sum could overflow, is refused. That limit
    is lowered here to see the message."""
    text = "model m { input v[4]; dense a(units=4); dense b(units=4, from=v); add s(a, b, v, a) }"
    check_quantizable(cnnc.network_from_text(text))
    monkeypatch.setattr(cnnc.quantize, "ADD_OPERANDS_MAX", 3)
    with pytest.raises(CnncError, match="add 's' of 4 operands cannot be quantised to int8: its int32 sum could "
                                        "overflow past 3 operands"):
        check_quantizable(cnnc.network_from_text(text))
    for placement in ("dense a(units=3); batchnorm n", "batchnorm n; dense a(units=3)", "dense a(units=3, "
                      "activation=relu); batchnorm n"):
        check_quantizable(cnnc.network_from_text(f"model m {{ input v[4]; {placement} }}"))
