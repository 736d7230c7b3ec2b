"""Every model shipped in specs/ loads, runs forward and backward, and passes gradcheck.
(tests/test_c_backend.py checks the same models on the C backend against NumPy and PyTorch.)"""
from pathlib import Path

import pytest

import cnnc
from cnnc.gradcheck import THRESHOLD, gradcheck

SPECS = Path(__file__).resolve().parent.parent / "specs"
MODELS = [(path, net.name) for path in sorted(SPECS.glob("*.cnn")) for net in cnnc.networks_from_file(path)]


@pytest.mark.parametrize("path,name", MODELS, ids=[name for _, name in MODELS])
def test_spec_passes_gradcheck_on_the_numpy_backend(path, name):
    model = cnnc.load(path, backend="numpy", model=name, dtype="float64", seed=0)
    # Every input entry and up to 12 random entries of each parameter tensor: the large dense
    # layers would otherwise take minutes; the per-layer suites check every entry of small layers.
    errors = gradcheck(model, batch=2, seed=3, samples=12)
    assert set(errors) == {spec.name for spec in model.network.param_specs} | {"input"}
    worst = max(errors, key=errors.get)
    assert errors[worst] < THRESHOLD, f"{name}: {worst} has relative error {errors[worst]:.2e}"

