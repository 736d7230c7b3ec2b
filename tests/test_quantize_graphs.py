"""int8 export of graph models (issue 19 on top of issue 15): add (both operands rescaled to the output's
encoding), concat (each operand requantised), batch norm folded into its convolution before quantising, from=.

ResNet-8, the Inception-style spec and two small graphs are calibrated with random weights and running
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
from cnnc.quantize import (ADD_LEFT_SHIFT, QParams, add_step, calibrate, concat_step, check_quantizable,
                           int8_flash_bytes)

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
"""

GRAPHS = [(SPECS / "resnet8.cnn", "resnet8"), (SPECS / "inception_small.cnn", "inception_small"),
          (SPECS / "mobilenet_small.cnn", "mobilenet_small"), ("extra", "q_residual"), ("extra", "q_branches1d"),
          ("extra", "q_mobile")]


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
        q = calibrate(m, calibration_inputs(m.input_shape, seed))
        export_int8_c(q, root / name, prefix=name)
        exports[name] = (root / name, m, q)
    return root, exports, build_int8_programs(root, exports)


pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is needed to build the exported C")


def test_graph_exports_agree_with_the_numpy_int8_reference_bit_for_bit(built):
    root, exports, builds = built
    relu6 = next(q for q in exports["q_mobile"][2].steps if q.layer.name == "big")
    assert relu6.op == "clamp" and -128 < relu6.act_max < 127  # the clamp at real 6 is really exercised
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
    assert ADD_LEFT_SHIFT == 20 and (y[~inside] == np.where(real[~inside] > 0, 127, -128)).all()
    # concat requantises (x - zp) directly: a factor below 1/2 (a right shift e < 0) rounds twice, as in
    # TensorFlow Lite, which costs up to half a step of 2^e on top of the final rounding
    step = concat_step(("compute", 3), concat, [a_enc, b_enc], out)
    joined = step.forward(a, b)
    for part, enc, x, shift in ((joined[:, :2], a_enc, a, step.shift[0]), (joined[:, 2:], b_enc, b, step.shift[1])):
        real = enc.dequantize(x)
        ok = (real > out.dequantize(np.int8(-128))) & (real < out.dequantize(np.int8(127)))
        assert np.abs(out.dequantize(part) - real)[ok].max() <= 0.5 * out.scale * (1 + 2.0 ** min(shift, 0) + 1e-4)


@pytest.mark.parametrize("text,phrase", [
    ("model m { input v[4]; dense a(units=4); dense b(units=4, from=v); add s(a, b, v) }", "add 's' of 3 operands"),
])
def test_what_int8_cannot_quantise_is_refused_naming_the_layer(text, phrase):
    """Batch norm is no longer refused anywhere (tests/test_quantize_batchnorm.py); add of three operands is."""
    with pytest.raises(CnncError, match=__import__("re").escape(phrase)):
        check_quantizable(cnnc.network_from_text(text))
    for placement in ("dense a(units=3); batchnorm n", "batchnorm n; dense a(units=3)", "dense a(units=3, "
                      "activation=relu); batchnorm n"):
        check_quantizable(cnnc.network_from_text(f"model m {{ input v[4]; {placement} }}"))
