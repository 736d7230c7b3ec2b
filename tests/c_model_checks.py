"""What the C backend's layer and graph tests share (tests/test_c_layers_extra.py, tests/test_c_graphs.py):
a C model and a NumPy model with the same random weights, one forward and backward pass as a dict of named
tensors, the relative error that compares them, the finite-difference gradient check through the C backend,
and the check that generated C compiles without a warning (tests/test_c_backend.py uses that one too).
"""
from __future__ import annotations

import subprocess

import numpy as np

from cnnc.backends.numpy_backend import NumpyModel
from cnnc.gradcheck import gradcheck


def rel_err(a, b) -> float:
    """max |a - b| relative to the reference b's largest entry, or to 1e-3 when every entry is smaller: a
    convolution's bias before training-mode batch norm has a gradient of exactly 0 (the batch mean removes it),
    which both backends compute as rounding noise."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.abs(a - b).max(initial=0.0) / max(np.abs(b).max(initial=0.0), 1e-3))


def assert_close(got: dict, expected: dict, tol: float, against: str) -> None:
    """The same tensor names, and each within tol (rel_err) of the expected one."""
    assert set(got) == set(expected)
    bad = {name: f"{rel_err(got[name], expected[name]):.1e}" for name in expected
           if not rel_err(got[name], expected[name]) <= tol}
    assert not bad, f"differs from {against}: {bad}"


def twin_models(module, network, scale: float, seed: int = 3):
    """The C model of `network` from the compiled `module` and a float64 NumPy model with the same random
    parameters (biases included: normal with standard deviation `scale`) and running statistics (random, so
    that inference mode is not the identity)."""
    c = module.model(network.name, seed=0)
    rng = np.random.default_rng(seed)
    for p in c.params.values():
        p[...] = rng.normal(0, scale, p.shape)
    for name, b in c.buffers.items():
        b[...] = rng.uniform(0.5, 1.5, b.shape) if name.endswith("running_var") else rng.normal(0, 0.3, b.shape)
    ref = NumpyModel(network, "float64", 0)
    ref.load_weights(c.state_dict())
    return c, ref


def run(m, x, dy, train: bool) -> dict[str, np.ndarray]:
    """Forward, backward of dy: every output, gradient and (after forward) running statistic."""
    y = m.forward(x, train=train)
    dx = m.backward(dy)
    return {"y": y, "dx": dx, **{f"grad {k}": v.copy() for k, v in m.grads.items()},
            **{f"buffer {k}": v.copy() for k, v in m.buffers.items()}}


def assert_gradients_match_finite_differences(m, case: str, threshold: float, **options) -> None:
    """cnnc.gradcheck on the model m (options: batch, seed, train): every parameter and the input checked,
    the worst relative error below threshold."""
    errors = gradcheck(m, **options)
    assert set(errors) == {p.name for p in m.network.param_specs} | {"input"}
    worst = max(errors, key=errors.get)
    assert errors[worst] < threshold, f"{case}: {worst} has relative error {errors[worst]:.2e}"


def assert_compiles_without_warnings(source, directory) -> None:
    """The glue of a CSource and its kernel headers, written to directory, pass gcc -fsyntax-only under -Wall
    -Wextra -Werror, with OpenMP and as plain C99 (-Wpedantic)."""
    path = directory / "bundle.c"
    path.write_text(source.text)
    for name, text in source.headers:
        (directory / name).parent.mkdir(exist_ok=True)
        (directory / name).write_text(text)
    for flags in (["-fopenmp"], ["-std=c99", "-Wpedantic", "-Wno-unknown-pragmas"]):
        result = subprocess.run(["gcc", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *flags, str(path)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[:3000]
