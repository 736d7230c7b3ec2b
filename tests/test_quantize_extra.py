"""int8 export of issue 15's layer kinds (issue 19): transposed convolutions (int8 weights with a scale per output
channel, int32 sums, requantised), global max pooling, max pooling with ceil=true and channel shuffle (on int8,
the encoding kept), average pooling with ceil=true or count_pad=false (a divisor per window), elu, selu and
hardsigmoid (lookup tables), log_softmax (integers: an exp table, a fixed-point log2, one requantisation) and
lrn (float64 between int8 tensors).

The float export test's models of these kinds (tests/test_export_c_extra.py) and two int8-specific ones are
calibrated, exported and linked into ONE program built twice (tests/int8_build.py: strict -O2, and ASan/UBSan
with caller-owned arenas); the C must agree with the NumPy int8 reference bit for bit. The layers are checked
against PyTorch on the dequantised values, the int8 models against the float ones on calibration data, and a
digits classifier made of these kinds keeps its accuracy in int8.
"""
from __future__ import annotations

import numpy as np
import pytest

from cnnc.export_int8 import export_int8_c
from cnnc.frontend import network_list_from_text
from cnnc.quantize import (LOG2_FRACTION, QParams, calibrate, check_quantizable, int8_flash_bytes, log2_fixed,
                           quantize_transposed_weights)
from int8_build import build_int8_programs, calibration_inputs, mismatches
from test_export_c import GCC
from test_export_c_extra import EXPECTED, EXTRA_MODELS, extra_models, randomized

BATCH = 5

# A relu fused into a transposed convolution and one folded into another (bias=false); lrn with k, alpha and
# beta far from PyTorch's defaults, in 2-D and 1-D; ceil-mode pooling of both kinds after it; hardsigmoid and
# selu fused into convolutions; log_softmax fused and as a layer.
INT8_EXTRA = """
model q_decoder {
    input x[3, 4, 4]
    conv_transpose2d t(filters=4, kernel=3, stride=2, padding=1, output_padding=1, activation=relu)
    conv_transpose2d u(filters=2, kernel=2, stride=2, bias=false)
    relu
    lrn(size=2, alpha=0.5, beta=1.5, k=2)
    avgpool2d(size=3, stride=2, ceil=true, count_pad=false)
    flatten
    dense out(units=4, activation=log_softmax)
}
model q_lrn1d {
    input s[5, 12]
    lrn(size=5, alpha=1.0, beta=0.5, k=0.5)
    conv1d c(filters=4, kernel=3, activation=hardsigmoid)
    elu
    maxpool1d(size=3, stride=2, ceil=true)
    conv1d d(filters=3, kernel=1, activation=selu)
    global_maxpool
    log_softmax
}
"""

pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is needed to build the exported C")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8_extra")
    extra, ours = root / "extra.cnn", root / "int8_extra.cnn"
    extra.write_text(EXTRA_MODELS)
    ours.write_text(INT8_EXTRA)
    exports = {}
    for seed, (path, name) in enumerate(extra_models(extra) + [(ours, "q_decoder"), (ours, "q_lrn1d")]):
        m = randomized(path, name, seed)
        q = calibrate(m, calibration_inputs(m.input_shape, seed))
        export_int8_c(q, root / name, prefix=name)
        exports[name] = (root / name, m, q)
    return root, exports, build_int8_programs(root, exports)


def test_every_issue15_kind_exports_and_agrees_with_the_numpy_int8_reference_bit_for_bit(built):
    root, exports, builds = built
    assert EXPECTED | {"q_decoder", "q_lrn1d"} <= set(exports)
    ops = {s.op for _, _, q in exports.values() for s in q.steps}
    assert {"conv_transpose", "global_maxpool", "channel_shuffle", "lrn", "log_softmax", "lookup", "avgpool",
            "maxpool"} <= ops
    kinds = {kind for _, m, _ in exports.values() for layer in m.network.layers for kind in (layer.kind, layer.activation)}
    assert {"conv_transpose1d", "conv_transpose2d", "elu", "selu", "hardsigmoid"} <= kinds
    failures = mismatches(root, exports, builds, BATCH, float_extremes=True)
    assert not failures, "\n".join(failures)


def test_int8_tracks_the_float_model_on_calibration_data(built):
    """Dequantised int8 outputs near the float outputs, and the same class for nearly every sample of the
    models that end in log_softmax (classifiers)."""
    _, exports, _ = built
    for seed, (prefix, (_, m, q)) in enumerate(exports.items()):
        x = calibration_inputs(m.input_shape, seed)
        want, got = m.forward(x).reshape(len(x), -1), q.forward(x).reshape(len(x), -1)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 0.12, f"{prefix}: int8 is {err:.3f} (relative) from float"
        if m.network.layers[-1].kind == "log_softmax" or m.network.layers[-1].activation == "log_softmax":
            agree = (got.argmax(axis=1) == want.argmax(axis=1)).mean()
            assert agree >= 0.9, f"{prefix}: int8 picks the float model's class for {agree:.0%} of the samples"


def steps_of(exports, op):
    return [(m, q, s) for _, m, q in exports.values() for s in q.steps if s.op == op]


def test_transposed_convolutions_against_pytorch(built, torch):
    """Each int8 transposed convolution is PyTorch's conv_transpose on the dequantised input, weights and bias,
    requantised: within half an output step (plus the fixed-point requantisation's first rounding), or
    saturated; and its int8 weights are within half a step of the float ones, per output channel."""
    F = torch.nn.functional
    _, exports, _ = built
    checked = 0
    for m, q, s in steps_of(exports, "conv_transpose"):
        layer = s.layer
        rng = np.random.default_rng(checked)
        xq = rng.integers(-128, 128, (3, *layer.in_shape)).astype(np.int8)
        y = s.forward(xq).astype(np.int64)
        w = np.asarray(m.params[f"{layer.name}.weight"], np.float64)
        _, scales = quantize_transposed_weights(w, layer.groups)
        per_output = np.repeat(scales.reshape(layer.groups, -1), layer.in_shape[0] // layer.groups, axis=0)  # (C, F/G)
        w_real = s.weight.astype(np.float64) * per_output.reshape(*per_output.shape, *[1] * (w.ndim - 2))
        b_real = s.bias * s.inp.scale * scales if s.bias is not None else None
        conv = F.conv_transpose1d if layer.spatial_dims == 1 else F.conv_transpose2d
        real = conv(torch.from_numpy(s.inp.scale * (xq.astype(np.float64) - s.inp.zero_point)), torch.from_numpy(w_real),
                    None if b_real is None else torch.from_numpy(b_real), stride=layer.stride, padding=layer.pad_before,
                    output_padding=layer.output_padding, groups=layer.groups, dilation=layer.dilation).numpy()
        if s.act_min > -128:  # a fused (or folded) relu
            real = np.maximum(real, 0.0)
        want = real / s.out.scale + s.out.zero_point
        inside = (want > -127.5) & (want < 126.5)
        assert inside.mean() > 0.3, layer.name  # random int8 inputs reach beyond the calibrated range
        # a right shift rounds twice (gemmlowp's): up to half a step of 2^shift more than one rounding
        assert np.abs(y - want)[inside].max() <= 0.5 + 0.5 * 2.0 ** min(int(s.shift.max()), 0) + 1e-6, layer.name
        assert np.all(y[~inside] == np.where(want[~inside] > 0, 127, -128)), layer.name
        assert np.all(np.abs(s.weight.astype(np.float64) * per_output.reshape(*per_output.shape, *[1] * (w.ndim - 2))
                             - w) <= per_output.reshape(*per_output.shape, *[1] * (w.ndim - 2)) / 2 + 1e-12)
        checked += 1
    assert checked == 7  # decoder2d's three, decoder1d's two, q_decoder's two


def test_pooling_and_permutations_are_pytorchs_on_the_int8_steps(built, torch):
    """Max pooling (ceil too), global max pooling and channel shuffle are PyTorch's on the int8 values exactly;
    average pooling (ceil=true, count_pad=false) is PyTorch's on q - zp, rounded half away from zero."""
    F = torch.nn.functional
    _, exports, _ = built
    checked = {"maxpool": 0, "avgpool": 0, "global_maxpool": 0, "channel_shuffle": 0}
    for op in checked:
        for _, _, s in steps_of(exports, op):
            layer = s.layer
            xq = np.random.default_rng(7).integers(-128, 128, (3, *layer.in_shape)).astype(np.int8)
            ours = s.forward(xq).astype(np.int64).reshape(3, *layer.out_shape)
            x = torch.from_numpy(xq.astype(np.float64) - (s.inp.zero_point if op == "avgpool" else 0))
            if layer.spatial_dims == 1 and op in ("maxpool", "avgpool"):
                x = x[:, :, None, :]
            two_d = (lambda v: (1, *v)) if layer.spatial_dims == 1 else (lambda v: tuple(v))
            pad = (0, *layer.pad_before) if layer.spatial_dims == 1 else tuple(layer.pad_before)
            if op == "maxpool":
                theirs = F.max_pool2d(x, two_d(layer.kernel), two_d(layer.stride), pad, ceil_mode=layer.ceil).numpy()
            elif op == "avgpool":
                mean = F.avg_pool2d(x, two_d(layer.kernel), two_d(layer.stride), pad, ceil_mode=layer.ceil,
                                    count_include_pad=layer.count_pad).numpy()
                theirs = np.sign(mean) * np.floor(np.abs(mean) + 0.5) + s.inp.zero_point
            elif op == "global_maxpool":
                theirs = x.reshape(3, layer.in_shape[0], -1).amax(dim=2).numpy()
            else:
                theirs = torch.nn.ChannelShuffle(layer.groups)(x.reshape(3, layer.in_shape[0], -1, 1)).numpy()
            assert np.array_equal(ours.reshape(3, -1), theirs.reshape(3, -1).astype(np.int64)), (op, layer.name)
            checked[op] += 1
    assert checked["avgpool"] >= 6 and checked["maxpool"] >= 3 and checked["global_maxpool"] >= 5, checked
    assert checked["channel_shuffle"] == 2, checked


def test_log_softmax_is_within_a_step_of_the_exact_one(built):
    """On int8 inputs over the whole range: the dequantised output is log_softmax of the dequantised input to
    within an output step (the exp table's rounding and the log2's 2^-20 add a little to the final rounding)."""
    _, exports, _ = built
    checked = 0
    for _, _, s in steps_of(exports, "log_softmax"):
        n = s.layer.out_size
        xq = np.random.default_rng(checked).integers(-128, 128, (50, n)).astype(np.int8)
        xq[0], xq[1, : n // 2] = 127, -128  # all equal; half at the far end
        x = s.inp.dequantize(xq).astype(np.float64)
        exact = x - x.max(axis=1, keepdims=True)
        exact -= np.log(np.exp(exact).sum(axis=1, keepdims=True))
        y = s.forward(xq)
        inside = exact > s.out.dequantize(np.int8(-128)) + s.out.scale
        assert np.abs(s.out.dequantize(y) - exact)[inside].max() <= 0.6 * s.out.scale, s.layer.name
        assert np.all(y[~inside] <= -127)
        checked += 1
    assert checked == 4


def test_the_fixed_point_log2_is_exact_to_its_last_digit():
    totals = np.concatenate([np.arange(1, 5000), 2 ** np.arange(0, 52), 2 ** np.arange(1, 52) - 1,
                             np.random.default_rng(0).integers(1 << 16, 1 << 40, 5000)]).astype(np.int64)
    got = log2_fixed(totals)
    exact = np.log2(totals.astype(np.float64)) * (1 << LOG2_FRACTION)
    assert np.all(got <= exact + 1e-6) and np.all(got >= exact - 2.0)  # rounded down, truncated squarings
    assert np.array_equal(log2_fixed(2 ** np.arange(0, 52)), np.arange(0, 52) << LOG2_FRACTION)


def test_lookup_tables_and_lrn_follow_the_float_functions(built):
    """elu, selu and hardsigmoid tables are the float function of each dequantised int8 input, rounded; lrn's
    output is the float lrn of the dequantised input to within half an output step."""
    from cnnc.backends.numpy_backend import ACTIVATION_FUNCTIONS, lrn_forward

    _, exports, _ = built
    kinds = set()
    for _, _, s in steps_of(exports, "lookup"):
        kind = s.key[0]
        x = s.inp.dequantize(np.arange(-128, 128).astype(np.int8)).astype(np.float64)
        y = ACTIVATION_FUNCTIONS[kind][0](x, s.layer.slope)
        want = np.clip(np.floor(y / s.out.scale + 0.5) + s.out.zero_point, -128, 127)
        assert np.abs(s.table.astype(np.int64) - want).max() <= 1 and (s.table == want).mean() > 0.98, kind
        kinds.add(kind)
    assert {"elu", "selu", "hardsigmoid"} <= kinds
    hardsigmoid = next(s for _, _, s in steps_of(exports, "lookup") if s.key[0] == "hardsigmoid")
    assert hardsigmoid.out == QParams(float(np.float32(1 / 255)), -128)
    lrns = steps_of(exports, "lrn")
    assert len(lrns) == 4
    for _, _, s in lrns:
        layer = s.layer
        xq = np.random.default_rng(1).integers(-128, 128, (4, *layer.in_shape)).astype(np.int8)
        real, _ = lrn_forward(s.inp.dequantize(xq).astype(np.float64), layer.lrn_size, layer.alpha, layer.beta, layer.k)
        want = real / s.out.scale + s.out.zero_point
        inside = (want > -127.5) & (want < 126.5)
        assert np.abs(s.forward(xq) - want)[inside].max() <= 0.5 + 1e-9, layer.name


def test_flash_counts_the_new_constants(built):
    _, exports, _ = built
    for prefix, (_, m, q) in exports.items():
        stored = sum(a.nbytes for s in q.steps for a in (s.weight, s.bias, s.multiplier, s.shift, s.table)
                     if a is not None)
        flash = int8_flash_bytes(m.network)
        assert stored == flash["weights"] + flash["constants"], prefix


def test_the_issue15_models_pass_the_quantisability_check():
    """Nothing the float export takes is refused for its kind any more (what int8 still refuses, and why, is
    tests/test_quantize_graphs.py's)."""
    networks = network_list_from_text(EXTRA_MODELS + INT8_EXTRA)
    assert len(networks) == 7
    for net in networks:
        check_quantizable(net)


# A digits classifier made of issue 15's kinds: elu, lrn, channel_shuffle, ceil max pooling, a grouped selu
# convolution, average pooling without count_pad, a transposed convolution, global max pooling and log_softmax.
DIGITS_EXTRA = """
model digits_extra {
    input image[1, 8, 8]
    conv2d c1(filters=8, kernel=3, padding=1, activation=elu)
    lrn(size=3)
    channel_shuffle(groups=2)
    maxpool2d(size=3, stride=2, ceil=true)
    conv2d c2(filters=16, kernel=3, padding=1, groups=2, activation=selu)
    avgpool2d(size=3, stride=2, padding=1, count_pad=false)
    conv_transpose2d t(filters=16, kernel=2, stride=2, activation=relu)
    global_maxpool
    dense out(units=10, activation=log_softmax)
    loss nll
}
"""


def test_a_classifier_of_issue15_kinds_keeps_its_accuracy_in_int8(tmp_path, capsys):
    """Trained on digits (30 epochs, about 90% accuracy), then `cnnc eval --quantize int8 --calibration digits`:
    the int8 reference within 1 point of float32 on the 360 test images (3 images)."""
    import json

    from cnnc.cli import main

    spec, weights = tmp_path / "digits_extra.cnn", tmp_path / "w.npz"
    spec.write_text(DIGITS_EXTRA)
    assert main(["train", str(spec), "--data", "digits", "--epochs", "30", "-q", "-o", str(weights)]) == 0
    capsys.readouterr()
    assert main(["eval", str(spec), "--weights", str(weights), "--data", "digits", "--quantize", "int8",
                 "--calibration", "digits", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 360 and result["float_accuracy"] > 0.85, result
    assert abs(result["accuracy"] - result["float_accuracy"]) <= 0.01, result
