"""int8 quantisation (cnnc/quantize.py) and its standalone C export (export_int8.py, kernels/int8.h).

The exported C and the NumPy int8 reference must agree bit for bit: every exportable spec (specs/ plus the
float export test's extra specs, which use every layer kind) is calibrated on random data, exported, and
linked into ONE test program, built twice in parallel: strict -O2 with static arenas, and with
-fsanitize=address,undefined and caller-owned arenas malloc'd to exactly PREFIX_ARENA_BYTES. The same
program (tests/int8_build.py) also runs kernels/int8.h's requantisation on edge values, so those are compared with the NumPy
reference too. The accuracy test trains LeNet-5 briefly on MNIST-5k.
"""
from __future__ import annotations

import json
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from cnnc.export_c import memory_plan
from cnnc.export_int8 import export_int8_c, int8_arena_bytes, memory_report_int8
from cnnc.quantize import (INT32_MAX, INT32_MIN, QParams, calibrate, choose_qparams, int8_flash_bytes,
                           multiply_by_quantized_multiplier, quantize_multiplier, quantize_weights, requantize,
                           saturating_rounding_doubling_high_mul)
from int8_build import build_int8_programs, calibration_inputs, mismatches, run
from test_export_c import EXTRA_SPECS, GCC, SPECS, STRICT, randomized, spec_models

pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is needed to build the exported C")

BATCH = 6

# Degenerate cases inside one model: a conv filter of zeros (per-channel scale of an all-zero channel) and
# a dense layer whose output is always 0 (a zero range), then a softmax over it. And a 2-D convolution with
# stride, dilation and padding in both directions whose 73 output columns span two of the int8 kernel's
# column blocks (INT8_CONV_OW_BLOCK = 64).
EDGE_SPECS = """
model wide {
    input x[2, 5, 150]
    conv2d a(filters=3, kernel=(3, 5), stride=(1, 2), dilation=(2, 3), padding=4, activation=tanh)
    avgpool2d(size=3, stride=2, padding=1)
    global_avgpool
}
model zero_channel {
    input x[2, 6, 6]
    conv2d c(filters=3, kernel=3, padding=1, activation=relu)
    avgpool2d(size=2)
    flatten
    dense dead(units=4)
    dense out(units=3, activation=softmax)
}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every model quantised and exported (lenet5 also through the CLI), then the two builds."""
    root = tmp_path_factory.mktemp("int8")
    extra, edge = root / "extra.cnn", root / "edge.cnn"
    extra.write_text(EXTRA_SPECS)
    edge.write_text(EDGE_SPECS)
    exports = {}  # prefix -> (export dir, float model, QuantizedModel)
    for seed, (path, name) in enumerate(spec_models(extra) + [(edge, "zero_channel"), (edge, "wide")]):
        m = randomized(path, name, seed)
        if name == "zero_channel":
            m.params["c.weight"][1] = 0.0
            m.params["dead.weight"][...] = 0.0
            m.params["dead.bias"][...] = 0.0
            m.params["out.bias"][...] = 0.0
        q = calibrate(m, calibration_inputs(m.input_shape, seed))
        export_int8_c(q, root / name, prefix=name)
        exports[name] = (root / name, m, q)
    # the CLI, with calibration data from a .npz (x_train is what calibration reads)
    m = randomized(SPECS / "lenet5.cnn", "lenet5", 99)
    m.save(root / "cli.npz")
    x = np.random.default_rng(5).random((80, 1, 28, 28), dtype=np.float32)
    np.savez(root / "calib.npz", x_train=x, y_train=np.arange(80) % 10, x_test=x[:10], y_test=np.arange(10))
    assert main(["export", str(SPECS / "lenet5.cnn"), "--weights", str(root / "cli.npz"), "--format", "c",
                 "--quantize", "int8", "--calibration", str(root / "calib.npz"), "--calibration-samples", "50",
                 "--name", "cli_lenet", "-o", str(root / "cli_lenet")]) == 0
    exports["cli_lenet"] = (root / "cli_lenet", m, None)
    return root, exports, build_int8_programs(root, exports)


def test_every_export_agrees_with_the_numpy_int8_reference_bit_for_bit(built):
    """predict_q on int8 inputs over the whole range, and predict on float inputs (with values beyond the
    input's range and non-finite ones), in the strict and the sanitized build."""
    root, exports, builds = built
    failures = mismatches(root, exports, builds, BATCH, float_extremes=True)
    assert not failures, "\n".join(failures)
    assert len(exports) == 15  # 8 models in specs/, 4 extra, 2 edge-case models, lenet5 through the CLI
    assert exports["wide"][2].network.layers[0].out_shape == (3, 9, 73)


def test_int8_outputs_track_the_float_model(built):
    """Quantisation error, not a different network: outputs within a few output steps of float32."""
    _, exports, _ = built
    for seed, (prefix, (_, m, q)) in enumerate(exports.items()):
        if q is None:
            continue
        x = calibration_inputs(m.input_shape, seed)[:10]  # inside the calibrated ranges
        want, got = m.forward(x), q.forward(x)
        depth = sum(1 for s in q.steps if s.op in ("conv", "dense"))
        assert np.abs(got - want).max() <= (3 + 3 * depth) * q.output.scale, prefix


def test_the_cli_export_runs_its_calibration_and_both_entry_points(built):
    root, exports, builds = built
    out, m, _ = exports["cli_lenet"]
    # the CLI's calibration is the API's on the same 50 samples: the same C, header and source
    x = np.load(root / "calib.npz")["x_train"]
    chosen = np.sort(np.random.default_rng(0).choice(80, 50, replace=False))
    q = calibrate(m, x[chosen])
    assert abs(q.input.scale - 1 / 255) < 1e-4 and q.input.zero_point == -128  # calibration data in [0, 1)
    export_int8_c(q, root / "api_lenet", prefix="cli_lenet")
    for name in ("cli_lenet.h", "cli_lenet.c"):
        assert (root / "api_lenet" / name).read_text() == (out / name).read_text(), name
    xf = np.random.default_rng(3).random((BATCH, 1, 28, 28), dtype=np.float32)
    got = np.frombuffer(run(root / "strict", ["cli_lenet", str(BATCH), "f"], xf.tobytes()), np.float32)
    assert np.array_equal(got, q.forward(xf).ravel())


def test_example_main_and_makefile_build(built, tmp_path):
    root, exports, _ = built
    out, m, q = exports["lenet5"]
    import shutil

    shutil.copytree(out, tmp_path / "c")
    flags = " ".join(STRICT + ["-O2"])
    result = subprocess.run(["make", "-C", str(tmp_path / "c"), "lenet5", "external", f"CFLAGS={flags}"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    x = np.random.default_rng(4).standard_normal((1, 1, 28, 28)).astype(np.float32)
    for program in ("lenet5", "lenet5_external"):
        printed = subprocess.run([str(tmp_path / "c" / program)], input=x.tobytes(), capture_output=True, check=True)
        assert np.array_equal(np.array(printed.stdout.split(), np.float32), q.forward(x)[0])


def test_an_all_zero_channel_and_a_zero_range(built):
    """Filter 1 of zero_channel is all zeros: scale 1, and its outputs are the quantised bias alone (clamped by
    the relu). The dense layer 'dead' always outputs 0: scale 1, zero point 0, and the softmax after it (its
    input all 0, as the last layer's bias is 0 too) is uniform."""
    _, exports, _ = built
    _, m, q = exports["zero_channel"]
    conv = q.step(("compute", 1))
    assert np.all(conv.weight[1] == 0) and np.any(conv.weight[0] != 0)
    _, scales = quantize_weights(m.params["c.weight"])
    assert scales[1] == 1.0
    x = np.random.default_rng(0).integers(-128, 128, (3, 2, 6, 6)).astype(np.int8)
    conv_out = conv.forward(x)
    bias_real = float(m.params["c.bias"][1])
    expected = max(round(bias_real / conv.out.scale) + conv.out.zero_point, conv.out.zero_point)
    assert np.all(np.abs(conv_out[:, 1].astype(int) - expected) <= 1)
    assert np.all(conv_out[:, 1] == conv_out[0, 1, 0, 0])  # the same everywhere
    dead = q.step(("compute", 4))
    assert dead.out == QParams(1.0, 0) and np.all(dead.weight == 0) and np.all(dead.bias == 0)
    probabilities = q.forward(np.random.default_rng(1).standard_normal((2, 2, 6, 6)).astype(np.float32))
    assert np.allclose(probabilities, 1 / 3, atol=1 / 256)


# ---- requantisation --------------------------------------------------------------------------------------
def test_quantize_multiplier_represents_the_factor():
    for real in [0.5, 0.75, 0.999999, 1e-3, 0.3, 1.0, 1.5, 37.2, 2.0**-31, 1000.0]:
        m, shift = quantize_multiplier(real)
        assert 2**30 <= m < 2**31 and -31 <= shift <= 30
        assert abs(Fraction(m) * Fraction(2) ** (shift - 31) - Fraction(real)) <= Fraction(real) * 2**-30
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(2.0**-40) == (0, 0)  # below 2^-32: requantises everything to 0
    assert quantize_multiplier(2.0**40) == (INT32_MAX, 30)  # saturates
    assert quantize_multiplier(0.3)[1] == -1 and quantize_multiplier(1e-3)[1] == -9  # negative shifts


EDGE_XS = [0, 1, -1, 2, -2, 3, -3, 127, -128, 255, -256, 1 << 20, -(1 << 20), INT32_MAX, INT32_MIN, INT32_MIN + 1,
           INT32_MAX - 1, 12345678, -12345678]


def requant_cases() -> np.ndarray:
    """(x, multiplier, shift) triples: edge values and random ones, shifts from -31 to 30."""
    rng = np.random.default_rng(0)
    cases = []
    for real in [0.5, 0.5000001, 0.999, 1e-3, 1e-9, 3.0, 2.0**20, 0.25, 0.75]:
        m, shift = quantize_multiplier(real)
        cases += [(x, m, shift) for x in EDGE_XS]
    cases += [(x, m, s) for x in EDGE_XS for m, s in [(INT32_MIN, 0), (INT32_MAX, 30), (1 << 30, -31), (0, 0)]]
    xs = rng.integers(INT32_MIN, INT32_MAX, 500, endpoint=True)
    ms = rng.integers(1 << 30, INT32_MAX, 500, endpoint=True)
    shifts = rng.integers(-31, 31, 500)
    cases += list(zip(xs.tolist(), ms.tolist(), shifts.tolist()))
    return np.array(cases, np.int64)


def test_requantisation_matches_the_c_and_exact_rounding(built):
    """The NumPy and C requantisation agree on every case; against exact rational arithmetic the result is
    within 1 (two roundings), exact when no shift right follows, and saturates at the int32 range."""
    root, _, _ = built
    cases = requant_cases()
    want = multiply_by_quantized_multiplier(cases[:, 0], cases[:, 1], cases[:, 2])
    got = np.frombuffer(run(root / "sanitized", ["requant", str(len(cases))], cases.astype(np.int32).tobytes()),
                        np.int32)
    assert np.array_equal(got, want)
    for (x, m, shift), y in zip(cases.tolist(), want.tolist()):
        scaled = min(max(x * 2 ** max(shift, 0), INT32_MIN), INT32_MAX)
        exact = Fraction(scaled) * m / 2**31 / 2 ** max(-shift, 0)
        if x == INT32_MIN and m == INT32_MIN:
            assert y == INT32_MAX
            continue
        assert abs(y - exact) <= 1, (x, m, shift, y)
        if shift >= 0:  # one rounding only (gemmlowp's): to nearest, ties upward
            assert y == (exact + Fraction(1, 2)).__floor__(), (x, m, shift, y)
    assert saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN) == INT32_MAX


def test_requantize_saturates_at_the_int8_range_and_clamps_relu():
    out = QParams(0.1, -5)
    m, shift = quantize_multiplier(0.5)
    acc = np.array([0, 10, -10, 1000, -1000, INT32_MAX, INT32_MIN, 263, -247])
    y = requantize(acc, m, shift, out, -128).tolist()
    assert y == [-5, 0, -10, 127, -128, 127, -128, 127, -128]  # 263/2 = 131.5 -> 132 (+ zp: 127); -247/2 = -123.5 -> -123 (-128)
    assert requantize(acc, m, shift, out, -5).tolist() == [-5, 0, -5, 127, -5, 127, -5, 127, -5]  # relu: real >= 0
    assert requantize(np.array([261, 263]), m, shift, out, -128).tolist() == [126, 127]


def test_choose_qparams_zero_ranges_and_ranges_without_zero():
    assert choose_qparams(0.0, 0.0) == QParams(1.0, 0)
    q = choose_qparams(0.0, 2.55)
    assert q.zero_point == -128 and np.isclose(q.scale, 0.01)
    q = choose_qparams(0.5, 1.0)  # widened to hold 0
    assert q.zero_point == -128 and np.isclose(q.scale, 1.0 / 255)
    q = choose_qparams(-1.0, 1.0)
    assert q.quantize(np.float32(0.0)) == q.zero_point  # 0 is exact
    x = np.array([-1.0, -0.5, 0.0, 0.25, 1.0, 5.0, -5.0, np.nan], np.float32)
    back = q.dequantize(q.quantize(x))
    assert np.all(np.abs(back[:5] - x[:5]) <= q.scale / 2 + 1e-6)
    assert back[5] == q.dequantize(np.int8(127)) and back[6] == back[7] == q.dequantize(np.int8(-128))


# ---- sizes, kernels ---------------------------------------------------------------------------------------
def test_flash_and_ram_of_lenet5(capsys):
    network = cnnc.read_network(SPECS / "lenet5.cnn")
    flash = int8_flash_bytes(network)
    assert flash["weights"] == 61470 + 4 * 236  # int8 weights, int32 biases
    assert flash["weights"] <= 0.3 * memory_plan(network).weight_bytes
    assert flash["constants"] == 8 * 236  # a multiplier and a shift per output channel
    assert int8_arena_bytes(network) == (4704 + 1176, 4704 + 1176 + 784 + 10)
    assert main(["export", str(SPECS / "lenet5.cnn"), "--format", "c", "--dry-run", "--quantize", "int8"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"weights and biases\s+246,824\s+62,414\s+0\.25x", printed)
    assert re.search(r"scratch arena\s+23,520\s+6,674", printed)
    assert memory_report_int8(network) in printed


def test_kernels_use_float_only_at_the_boundary_and_in_lrn():
    for header, count, floating in [("int8.h", 14, ["int8_dequantize", "int8_quantize"]), ("int8_graph.h", 4, []),
                                    ("int8_extra.h", 7, ["int8_lrn_forward"])]:
        text = (Path(cnnc.__file__).parent / "kernels" / header).read_text()
        code = re.sub(r"//[^\n]*", "", text)
        functions = re.findall(r"\n(?:CNNC_KERNEL|static inline) [^\n]*? (int8_\w+)\((.*?)\n}\n", code, flags=re.S)
        assert len(functions) >= count, header
        with_float = sorted(name for name, body in functions if re.search(r"\bfloat\b|\bdouble\b|\bpow\b", body))
        assert with_float == floating, header


# ---- the command line ------------------------------------------------------------------------------------
def test_misuse_is_a_clear_error(tmp_path, capsys):
    lenet = str(SPECS / "lenet5.cnn")
    cnnc.load(lenet).save(tmp_path / "w.npz")
    base = ["export", lenet, "--weights", str(tmp_path / "w.npz"), "-o", str(tmp_path / "out")]
    cases = [
        (base + ["--format", "c", "--quantize", "int8"], "needs --calibration DATA"),
        (base + ["--format", "onnx", "--quantize", "int8", "--calibration", "digits"], "float32 only"),
        (base + ["--format", "c", "--calibration", "digits"], "only used with --quantize int8"),
        (base + ["--format", "c", "--quantize", "int8", "--calibration", "digits"], "takes input [1, 28, 28]"),
        (base + ["--format", "c", "--quantize", "int8", "--calibration", str(tmp_path / "none.npz")], "none.npz"),
        (base + ["--format", "c", "--quantize", "int8", "--calibration", "mnist-5k", "--calibration-samples", "0"],
         "at least 1"),
        (base + ["--format", "c", "--quantize", "int8", "--calibration", "mnist-5k", "--calibration-percentile", "30"],
         "above 50"),
        (["eval", lenet, "--weights", str(tmp_path / "w.npz"), "--data", "mnist-5k", "--quantize", "int8"],
         "needs --calibration DATA"),
    ]
    for args, message in cases:
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "out").exists()


def test_lenet5_on_mnist_5k_keeps_its_accuracy_in_int8(tmp_path, capsys):
    """One short training run; then cnnc eval --quantize int8: within 0.5 points of float32."""
    weights = tmp_path / "lenet5.npz"
    assert main(["train", str(SPECS / "lenet5.cnn"), "--data", "mnist-5k", "--epochs", "2", "-q",
                 "-o", str(weights)]) == 0
    capsys.readouterr()
    assert main(["eval", str(SPECS / "lenet5.cnn"), "--weights", str(weights), "--data", "mnist-5k",
                 "--quantize", "int8", "--calibration", "mnist-5k", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 1000 and result["float_accuracy"] > 0.9
    assert abs(result["accuracy"] - result["float_accuracy"]) <= 0.005, result


def test_calibration_takes_a_model_of_any_backend_and_percentiles_narrow_the_ranges():
    """A float64 model is calibrated through a float32 NumPy copy; percentile ranges lie inside min/max."""
    m32 = randomized(SPECS / "lenet5.cnn", "lenet5", 3)
    m64 = cnnc.load(SPECS / "lenet5.cnn", dtype="float64")
    m64.load_weights({k: v.astype(np.float64) for k, v in m32.params.items()})
    x = calibration_inputs(m32.input_shape, 3)
    q32, q64 = calibrate(m32, x), calibrate(m64, x)
    assert all(np.array_equal(a.weight, b.weight) for a, b in zip(q32.steps, q64.steps) if a.weight is not None)
    narrow = calibrate(m32, x, percentile=99.0)
    assert narrow.calibration["method"] == "percentile 99"
    widths = [(s.out.scale, t.out.scale) for s, t in zip(q32.steps, narrow.steps) if s.op in ("conv", "dense")]
    assert all(b <= a for a, b in widths) and any(b < 0.9 * a for a, b in widths)


# ---- PyTorch's quantized operators -------------------------------------------------------------------------
def test_layers_agree_with_pytorch_quantized_operators(tmp_path):
    """Each conv, dense and pooling step against torch.ao.nn.quantized.functional given the same encodings
    (PyTorch's activations are uint8: q + 128): the int8 weights are identical, pooling is identical, and
    conv and dense differ by at most 1 (PyTorch requantises in float, cnnc in fixed point) and rarely."""
    torch = pytest.importorskip("torch")
    import warnings

    functional = torch.ao.nn.quantized.functional
    extra = tmp_path / "extra.cnn"
    extra.write_text(EXTRA_SPECS)

    def as_torch(xq, encoding):
        u8 = torch.from_numpy(xq.astype(np.int32) + 128).to(torch.uint8)
        return torch._make_per_tensor_quantized_tensor(u8, encoding.scale, encoding.zero_point + 128)

    checked = {"conv": 0, "dense": 0, "maxpool": 0, "avgpool": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch deprecates its quantized tensors
        for seed, (path, name) in enumerate([(SPECS / "lenet5.cnn", "lenet5"), (SPECS / "signal1d.cnn", "signal1d"),
                                             (extra, "kitchen")]):
            m = randomized(path, name, seed)
            rng = np.random.default_rng(seed)
            q = calibrate(m, calibration_inputs(m.input_shape, seed))
            for s in q.steps:
                layer = s.layer
                if s.op not in checked or layer.pad_before != layer.pad_after:  # PyTorch pads symmetrically
                    continue
                xq = rng.integers(-128, 128, (4, *layer.in_shape)).astype(np.int8)
                ours = s.forward(xq).astype(np.int64)
                two_d = (lambda v, neutral: (neutral, *v)) if layer.spatial_dims == 1 else (lambda v, neutral: v)
                x = as_torch(xq[:, :, None] if layer.spatial_dims == 1 else xq, s.inp)
                if s.op in ("conv", "dense"):
                    w = np.asarray(m.params[f"{layer.name}.weight"], np.float32)
                    w = w[:, :, None] if layer.spatial_dims == 1 else w
                    _, scales = quantize_weights(w)
                    wq = torch.quantize_per_channel(torch.from_numpy(np.ascontiguousarray(w)), torch.from_numpy(scales),
                                                    torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8)
                    assert np.array_equal(wq.int_repr().numpy().reshape(s.weight.shape), s.weight), layer.name
                    b = torch.from_numpy(np.asarray(m.params[f"{layer.name}.bias"], np.float32)) if layer.bias else None
                    out = (s.out.scale, s.out.zero_point + 128)
                    if s.op == "dense":
                        y = functional.linear(x, wq, b, *out)
                    else:
                        y = functional.conv2d(x, wq, b, stride=two_d(layer.stride, 1), padding=two_d(layer.pad_before, 0),
                                              dilation=two_d(layer.dilation, 1), scale=out[0], zero_point=out[1])
                    if s.act_min > -128:  # a fused relu: the clamp at the zero point
                        y = torch.relu(y)
                else:
                    pool = functional.max_pool2d if s.op == "maxpool" else functional.avg_pool2d
                    y = pool(x, two_d(layer.kernel, 1), two_d(layer.stride, 1), two_d(layer.pad_before, 0))
                theirs = y.int_repr().numpy().astype(np.int64).reshape(ours.shape) - 128
                difference = np.abs(theirs - ours)
                if s.op in ("conv", "dense"):
                    assert difference.max() <= 1 and (difference == 0).mean() > 0.99, (name, layer.name)
                else:
                    assert difference.max() == 0, (name, layer.name)
                checked[s.op] += 1
    assert checked == {"conv": 6, "dense": 6, "maxpool": 4, "avgpool": 1}, checked
