"""gradcheck: it passes correct gradients, catches wrong ones (any backend), leaves the model as it was,
and `cnnc gradcheck` reports per tensor with the right exit status."""
from __future__ import annotations


import numpy as np
import pytest

import cnnc
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.cli import main
from cnnc.gradcheck import THRESHOLD, gradcheck, relative_error

from conftest import SPECS
SMALL = """model small {
    input x[2, 6, 6]
    conv2d c(filters=3, kernel=3, padding=1, activation=relu)
    maxpool2d p(size=2)
    flatten
    dense d(units=4, activation=tanh)
    dense o(units=3)
    loss cross_entropy
}"""


def small_model(cls=NumpyModel, dtype="float64") -> NumpyModel:
    return cls(cnnc.network_from_text(SMALL), dtype=dtype, seed=0)


class WrongBiasGradient(NumpyModel):
    """A backend with one wrong gradient: d.bias off by 0.1%."""

    def _backward(self, dy):
        dx = super()._backward(dy)
        self.grads["d.bias"] *= 1.001
        return dx


class WrongInputGradient(NumpyModel):
    """A backend whose dx misses a factor on one input channel."""

    def _backward(self, dy):
        dx = super()._backward(dy)
        dx[:, 1] *= 0.5
        return dx


def test_correct_gradients_pass_for_every_parameter_and_the_input():
    errors = gradcheck(small_model())
    assert list(errors) == ["c.weight", "c.bias", "d.weight", "d.bias", "o.weight", "o.bias", "input"]
    assert all(0 <= e < THRESHOLD for e in errors.values()), errors


def test_a_wrong_parameter_gradient_is_caught_and_named():
    errors = gradcheck(small_model(WrongBiasGradient))
    assert 0.5e-3 < errors["d.bias"] < 2e-3  # about the 0.1% planted
    assert all(e < THRESHOLD for name, e in errors.items() if name != "d.bias")


def test_a_wrong_input_gradient_is_caught():
    errors = gradcheck(small_model(WrongInputGradient))
    assert errors["input"] > 0.1
    assert all(e < THRESHOLD for name, e in errors.items() if name != "input")


def test_mse_models_are_checked_through_their_own_loss():
    m = NumpyModel(cnnc.network_from_text("model r {\n input x[1, 7]\n conv1d c(filters=2, kernel=3, stride=2, activation=sigmoid)\n loss mse\n}"),
                   dtype="float64")
    errors = gradcheck(m, batch=3)
    assert set(errors) == {"c.weight", "c.bias", "input"} and max(errors.values()) < THRESHOLD


def test_parameters_are_restored_and_the_result_depends_only_on_the_seed():
    m = small_model()
    before = {name: p.copy() for name, p in m.params.items()}
    first = gradcheck(m, seed=3)
    for name, p in m.params.items():
        assert np.array_equal(p, before[name]), f"{name} was not restored"
    m.params["c.weight"][...] = 7.0  # the check runs at its own random parameters
    assert gradcheck(m, seed=3) == first
    assert gradcheck(m, seed=4) != first


def test_parameters_are_restored_when_the_model_raises():
    class Broken(NumpyModel):
        def _backward(self, dy):
            raise RuntimeError("backend crashed")

    m = small_model(Broken)
    before = {name: p.copy() for name, p in m.params.items()}
    with pytest.raises(RuntimeError, match="backend crashed"):
        gradcheck(m)
    assert all(np.array_equal(p, before[name]) for name, p in m.params.items())


def test_samples_limits_the_entries_checked_per_tensor():
    class Counting(NumpyModel):
        forwards = 0

        def _forward(self, x, train, masks):
            Counting.forwards += 1
            return super()._forward(x, train, masks)

    m = small_model(Counting)
    errors = gradcheck(m, batch=2, samples=5)
    sizes = [min(5, p.size) for p in m.params.values()] + [5]
    assert Counting.forwards == 1 + 2 * sum(sizes)  # one analytic pass, two per perturbed entry
    assert max(errors.values()) < THRESHOLD


def test_refuses_float32_models_and_bad_settings():
    with pytest.raises(ValueError, match="needs a float64 model.*got float32.*dtype='float64'"):
        gradcheck(small_model(dtype="float32"))
    with pytest.raises(ValueError, match="batch must be at least 1; got 0"):
        gradcheck(small_model(), batch=0)
    with pytest.raises(ValueError, match="eps must be a positive number; got -1e-06"):
        gradcheck(small_model(), eps=-1e-6)
    with pytest.raises(ValueError, match="samples must be at least 1"):
        gradcheck(small_model(), samples=0)


def test_relative_error_is_relative_to_the_largest_gradient_of_the_tensor():
    assert relative_error(np.array([1.0, 1e-9]), np.array([1.0, 2e-9])) == pytest.approx(1e-9)
    assert relative_error(np.array([2.0, -4.0]), np.array([2.0, -3.0])) == pytest.approx(0.25)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.zeros(2), np.array([0.0, 1e-12])) == pytest.approx(1e-4)  # the 1e-8 floor
    assert np.isnan(relative_error(np.array([np.nan]), np.array([1.0])))


# ---- the command ------------------------------------------------------------------------------------
def test_cli_passes_and_prints_one_line_per_tensor(capsys):
    assert main(["gradcheck", str(SPECS / "worked_2d.cnn"), "--batch", "3", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "gradcheck worked_2d: numpy backend, float64, batch 3, seed 5" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(lines) == {"conv.weight", "conv.bias", "input"}
    assert "(1, 1, 2, 2)" in lines["conv.weight"] and "(3, 1, 4, 4)" in lines["input"]
    assert all(line.rstrip().endswith("PASS") for line in lines.values())
    assert "all 3 tensors within 1e-06" in out


def test_cli_fails_with_exit_status_1_and_names_the_wrong_tensor(monkeypatch, capsys):
    original = NumpyModel._backward

    def planted(self, dy):
        dx = original(self, dy)
        self.grads["conv1.bias"] *= 1.01
        return dx

    monkeypatch.setattr(NumpyModel, "_backward", planted)
    status = main(["gradcheck", str(SPECS / "mnist_pair.cnn"), "--model", "mnist_cnn", "--samples", "4"])
    captured = capsys.readouterr()
    assert status == 1
    failing = [line for line in captured.out.splitlines() if line.rstrip().endswith("FAIL")]
    assert len(failing) == 1 and failing[0].split()[0] == "conv1.bias"
    assert "1 of 7 tensors exceed 1e-06: conv1.bias" in captured.err


def test_cli_reports_bad_files_and_arguments(capsys):
    assert main(["gradcheck", str(SPECS / "no_such.cnn")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["gradcheck", str(SPECS / "mnist_pair.cnn")]) == 1
    assert "choose one with model=NAME (--model NAME)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["gradcheck", str(SPECS / "worked_1d.cnn"), "--batch", "0"])
    assert exit_info.value.code == 2
    assert "invalid positive int value: '0'" in capsys.readouterr().err
