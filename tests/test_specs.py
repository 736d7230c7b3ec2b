"""Every shipped example checks cleanly, with shapes and counts computed independently by hand."""
import json
import subprocess
import sys

import pytest

import cnnc
from cnnc.cli import main

from conftest import SPECS


def conv_out(size, kernel, pad=0, stride=1, dilation=1):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def test_lenet5_shapes_and_counts_match_the_hand_computation():
    net = cnnc.read_network(SPECS / "lenet5.cnn")
    shapes = {layer.name: layer.out_shape for layer in net.layers}
    assert shapes["c1"] == (6, 28, 28)
    assert shapes["s2"] == (6, 14, 14)
    assert shapes["c3"] == (16, 10, 10)
    assert shapes["s4"] == (16, 5, 5)
    assert shapes["flatten_1"] == (400,)
    assert shapes["out"] == (10,)
    # params: conv (F*C*K*K + F), dense (in*out + out)
    expected_params = (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert net.param_count == expected_params == 61706
    expected_macs = 6 * 28 * 28 * 25 + 16 * 10 * 10 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10
    assert net.macs == expected_macs == 416520
    assert net.layer("c1").activation == "relu"
    assert net.layer("relu_1").kind == "relu"
    assert net.layer("c3").receptive_field == (14, 14)
    assert net.warnings == ()


def test_lenet5_matches_pytorch_shapes_and_parameter_counts():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    ref = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                        nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                        nn.Linear(84, 10))
    net = cnnc.read_network(SPECS / "lenet5.cnn")
    assert net.param_count == sum(p.numel() for p in ref.parameters())
    assert tuple(ref(torch.zeros(1, 1, 28, 28)).shape[1:]) == net.output_shape


def test_mnist_pair_shows_the_weight_sharing_saving():
    mlp, cnn = cnnc.networks_from_file(SPECS / "mnist_pair.cnn")
    assert mlp.layer("hidden").param_count == 784 * 100 + 100
    assert cnn.layer("conv1").param_count == 20 * 5 * 5 + 20
    assert cnn.layer("conv1").out_shape == (20, conv_out(28, 5), conv_out(28, 5)) == (20, 24, 24)
    assert cnn.layer("pool1").out_shape == (20, 12, 12)
    assert cnn.layer("hidden").param_count == 20 * 12 * 12 * 100 + 100


def test_worked_examples_have_the_classic_sizes():
    one = cnnc.read_network(SPECS / "worked_1d.cnn")
    two = cnnc.read_network(SPECS / "worked_2d.cnn")
    assert one.input_shape == (1, 4) and one.output_shape == (1, 3) and one.param_count == 3
    assert two.input_shape == (1, 4, 4) and two.output_shape == (1, 3, 3) and two.param_count == 5


def test_signal1d_and_vgg_shapes():
    sig = cnnc.read_network(SPECS / "signal1d.cnn")
    assert sig.layer("c1").out_shape == (16, 128)
    assert sig.layer("c1").pad_before == (3,) and sig.layer("c1").pad_after == (3,)
    assert sig.layer("c2").out_shape == (32, conv_out(64, 5, pad=2, stride=2)) == (32, 32)
    assert sig.layer("c3").pad_before == (2,) and sig.layer("c3").out_shape == (32, 32)
    assert sig.output_shape == (4,)
    vgg = cnnc.read_network(SPECS / "vgg_small.cnn")
    assert vgg.layer("pool2").out_shape == (64, 8, 8)
    assert vgg.param_count == (32 * 27 + 32) + (32 * 288 + 32) + (64 * 288 + 64) + (64 * 576 + 64) \
        + (4096 * 256 + 256) + (256 * 10 + 10)


@pytest.mark.parametrize("spec", sorted(SPECS.glob("*.cnn")), ids=lambda p: p.name)
def test_every_shipped_spec_checks_cleanly(spec, capsys):
    assert main(["check", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert "error" not in err
    assert "parameters:" in out


def test_check_json_has_the_documented_form(capsys):
    assert main(["check", "--json", str(SPECS / "lenet5.cnn")]) == 0
    report = json.loads(capsys.readouterr().out)
    (model,) = report["models"]
    assert model["name"] == "lenet5" and model["input"] == [1, 28, 28]
    assert model["params"] == 61706 and model["macs"] == 416520 and model["warnings"] == []
    assert model["layers"][0] == {"name": "c1", "kind": "conv2d", "inputs": ["image"], "output": [6, 28, 28], "params": 156,
                                  "macs": 117600, "activation": "relu", "receptive_field": [5, 5]}
    assert [layer["name"] for layer in model["layers"]] == ["c1", "s2", "c3", "relu_1", "s4", "flatten_1", "f5", "f6", "out"]


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "cnnc.cli", "check", str(SPECS / "lenet5.cnn")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "61,706" in result.stdout


def test_check_reports_a_bad_file_and_still_checks_the_others(tmp_path, capsys):
    bad = tmp_path / "bad.cnn"
    bad.write_text("model bad {\n    input image[1, 5, 5]\n    conv2d c1(filters=6, kernel=7)\n}\n")
    assert main(["check", str(bad), str(SPECS / "worked_1d.cnn")]) == 1
    out, err = capsys.readouterr()
    assert err.startswith(f"{bad}:3:33: error: conv2d 'c1': kernel 7 is larger than the padded input height 5")
    assert "model worked_1d" in out
