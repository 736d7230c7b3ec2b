"""API misuse raises ValueError saying what was expected; the CLI turns unwritable outputs into errors."""
import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from cnnc.diagnostics import CnncError

from conftest import SPECS


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_assigning_a_parameter_copies_it_into_the_model(backend):
    m = cnnc.load(SPECS / "worked_2d.cnn", backend=backend, dtype="float64")
    x = np.ones((1, 1, 4, 4))
    m.params["conv.weight"] = np.full((1, 1, 2, 2), 0.5)
    m.params["conv.bias"] = np.array([1.0])
    np.testing.assert_array_equal(m.forward(x), np.full((1, 1, 3, 3), 3.0))  # 1 + 4 * 0.5
    with pytest.raises(ValueError, match=r"expects a real array of shape \(1, 1, 2, 2\); got shape \(2, 2\)"):
        m.params["conv.weight"] = np.zeros((2, 2))
    with pytest.raises(KeyError, match="no tensor 'conv.weights'"):
        m.params["conv.weights"] = np.zeros((1, 1, 2, 2))


@pytest.mark.parametrize("seed", [-1, 1.5, "a", True])
def test_a_bad_seed_is_named(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        cnnc.load(SPECS / "worked_1d.cnn", seed=seed)


def test_bad_path_and_train_flag_are_value_errors():
    with pytest.raises(ValueError, match="path must be a .cnn file"):
        cnnc.load(3)
    m = cnnc.load(SPECS / "worked_1d.cnn")
    with pytest.raises(ValueError, match="train must be True or False; got 'no'"):
        m.forward(np.zeros((1, 1, 4)), train="no")


def test_optimisers_are_reachable_from_the_package():
    m = cnnc.load(SPECS / "worked_1d.cnn", dtype="float64")
    before = m.params["conv.weight"].copy()
    m.forward(np.ones((2, 1, 4)))
    m.backward(np.ones((2, 1, 3)))
    cnnc.optim.SGD(m.params, m.grads, lr=0.1).step()
    np.testing.assert_allclose(m.params["conv.weight"], before - 0.1 * m.grads["conv.weight"])


@pytest.mark.parametrize("args", [
    ["check", "{spec}", "--html", "{dir}"],
    ["draw", "{spec}", "-o", "/proc/cnnc-test.png"],
    ["train", "{spec}", "--data", "digits", "--backend", "numpy", "-o", "{dir}"],
    ["compile", "{spec}", "--emit-c", "-o", "/proc/cnnc-test"],
])
def test_unwritable_outputs_are_errors_not_tracebacks(tmp_path, capsys, args):
    out_dir = tmp_path / "taken.npz"
    out_dir.mkdir()
    argv = [a.format(spec=SPECS / "digits.cnn", dir=out_dir) for a in args]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_finite_float64_input_beyond_float32_range_is_named_as_such():
    m = cnnc.load(SPECS / "worked_1d.cnn", dtype="float32")
    with pytest.raises(ValueError, match=r"beyond the float32 range \(largest magnitude 1e\+39\)"):
        m.forward(np.full((1, 1, 4), 1e39))
    with pytest.raises(ValueError, match="NaN or infinite"):
        m.forward(np.full((1, 1, 4), np.nan))


# ---- API misuse: ValueError saying what was expected ---------------------------------------------------
def test_api_misuse_is_a_value_error_saying_what_was_expected(tmp_path):
    m = cnnc.load(SPECS / "digits.cnn")
    for call, expected in ((lambda: cnnc.network_from_text(None), "spec text must be a str; got NoneType"),
                           (lambda: cnnc.network_from_text(b"model m {}"), "got bytes"),
                           (lambda: m.load_weights(None), "an .npz path or a mapping of name -> array; got NoneType"),
                           (lambda: m.load_weights(123), "got int"),
                           (lambda: m.save(None), "save takes a file path; got NoneType")):
        with pytest.raises(ValueError, match=expected):
            call()


@pytest.mark.parametrize("change", ["clear", "pop", "popitem", "setdefault", "ior_new_name"])
def test_params_keep_their_fixed_set_of_tensors(change):
    m = cnnc.load(SPECS / "digits.cnn")
    names = list(m.params)
    calls = {"clear": lambda: m.params.clear(), "pop": lambda: m.params.pop("c1.weight"),
             "popitem": lambda: m.params.popitem(), "setdefault": lambda: m.params.setdefault("zz", 1)}
    if change == "ior_new_name":
        with pytest.raises(KeyError, match="has no tensor 'zz'"):
            m.params |= {"zz": np.zeros(1)}
    else:
        with pytest.raises(TypeError, match="fixed set of tensors"):
            calls[change]()
    assert list(m.params) == names
    m.params |= {"c1.bias": np.ones(m.params["c1.bias"].shape)}  # an existing name: copied into place
    assert (m.params["c1.bias"] == 1).all() and type(m.params).__name__ == "TensorDict"


def test_a_compiled_directory_given_to_the_numpy_backend_points_at_the_c_backend(tmp_path):
    assert main(["compile", str(SPECS / "digits.cnn"), "-o", str(tmp_path / "out"), "--emit-c"]) == 0
    with pytest.raises(CnncError, match=r"written by `cnnc compile`.*backend='c'"):
        cnnc.load(tmp_path / "out")


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_a_load_checks_the_dtype_once_and_names_the_choices(backend, monkeypatch):
    from cnnc import model as model_module
    from cnnc.backends import c_backend
    from cnnc.fileio import cache_home

    with pytest.raises(ValueError, match=r"dtype must be one of float32, float64; got 'float16'"):
        cnnc.load(SPECS / "lenet5.cnn", backend=backend, dtype="float16")
    checks = []

    def counted(dtype):
        checks.append(dtype)
        return model_module.check_dtype.__wrapped__(dtype)

    counted.__wrapped__ = model_module.check_dtype
    monkeypatch.setattr(model_module, "check_dtype", counted)
    monkeypatch.setattr(c_backend, "check_dtype", counted)
    options = {"cache_dir": str(cache_home())} if backend == "c" else {}
    loaded = cnnc.load(SPECS / "lenet5.cnn", backend=backend, dtype="float64", **options)
    assert loaded.dtype == np.float64 and checks == ["float64"]
