"""cnnc installed like any package: a built wheel (and an sdist) works from a directory outside the checkout.

The rest of the suite runs on the editable install of the checkout, which cannot catch package data that
a wheel leaves out or finds differently. These tests build the wheel and the sdist, install each (not
editable, without dependencies) into a fresh virtual environment that sees this interpreter's packages,
and run the tour from a temporary directory.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import ROOT, SPECS
SAMPLE_DIGIT = SPECS / "samples" / "digit7.png"  # a shipped picture: README's predict line uses it


def run(command: list[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


def build(kind: str, out: Path) -> Path:
    """kind: "wheel" or "sdist" -> the built file, made by the `build` front end from a copy of the checkout."""
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                                 ".pytest_cache", ".hypothesis", "*.so"))
    run([sys.executable, "-m", "build", f"--{kind}", "--outdir", str(out / "dist"), str(source)], cwd=out)
    (built,) = (out / "dist").iterdir()
    return built


def fresh_environment(where: Path, package: Path) -> tuple[Path, dict]:
    """A virtual environment with `package` installed (not editable) -> (its python, the environment to run in)."""
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(where)
    python = where / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(package)], cwd=where)
    env = {**os.environ, "CNNC_CACHE_DIR": str(where / "cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    origin = run([str(python), "-c", "import cnnc; print(cnnc.__file__)"], cwd=where, env=env).stdout.strip()
    assert Path(origin).is_relative_to(where), f"cnnc came from {origin}, not the fresh environment"
    return python, env


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """(python, cnnc command, environment) of a fresh environment holding the built wheel."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = build("wheel", work)
    assert wheel.name.startswith("cnnc-") and wheel.suffix == ".whl"
    python, env = fresh_environment(work / "venv", wheel)
    return python, python.parent / "cnnc", env


@pytest.fixture
def outside(tmp_path) -> Path:
    """A working directory outside the checkout, holding copies of two shipped specs."""
    for name in ("lenet5.cnn", "digits.cnn"):
        shutil.copy(SPECS / name, tmp_path / name)
    return tmp_path


def test_the_wheel_checks_compiles_and_trains_from_outside_the_checkout(installed_wheel, outside):
    python, cnnc, env = installed_wheel
    checked = run([str(cnnc), "check", "lenet5.cnn"], cwd=outside, env=env)
    assert "parameters: 61,706" in checked.stdout  # LeNet-5's parameter count: the grammar was found and the spec checked

    run([str(cnnc), "compile", "lenet5.cnn", "-o", "lenet5_build"], cwd=outside, env=env)
    assert (outside / "lenet5_build" / "manifest.json").is_file()  # the C build read the installed templates

    trained = run([str(cnnc), "train", "digits.cnn", "--data", "digits", "--epochs", "1", "-o", "digits.npz", "-q"],
                  cwd=outside, env=env)
    assert (outside / "digits.npz").is_file(), trained.stderr
    evaluated = run([str(cnnc), "eval", "digits.cnn", "--weights", "digits.npz", "--data", "digits"], cwd=outside, env=env)
    assert "accuracy" in evaluated.stdout

    as_module = run([str(python), "-m", "cnnc", "--version"], cwd=outside, env=env)
    from cnnc import __version__

    assert as_module.stdout.strip() == f"cnnc {__version__}"


def test_the_wheel_exports_imports_predicts_and_draws(installed_wheel, outside):
    pytest.importorskip("onnx")
    pytest.importorskip("matplotlib")
    python, cnnc, env = installed_wheel
    run([str(python), "-c", "import cnnc; cnnc.load('lenet5.cnn', seed=1).save('w.npz')"], cwd=outside, env=env)
    weights = ["--weights", "w.npz"]
    run([str(cnnc), "export", "lenet5.cnn", *weights, "--format", "c", "-o", "deploy"], cwd=outside, env=env)
    assert (outside / "deploy" / "lenet5.c").is_file()
    run([str(cnnc), "export", "lenet5.cnn", *weights, "--format", "onnx", "-o", "lenet5.onnx"], cwd=outside, env=env)
    run([str(cnnc), "import", "lenet5.onnx", "-o", "imported.cnn"], cwd=outside, env=env)
    assert "conv2d" in (outside / "imported.cnn").read_text()

    shutil.copy(SAMPLE_DIGIT, outside / "digit.png")
    predicted = run([str(cnnc), "predict", "lenet5.cnn", *weights, "digit.png"], cwd=outside, env=env)
    assert "class" in predicted.stdout
    run([str(cnnc), "draw", "lenet5.cnn", "-o", "lenet5.png"], cwd=outside, env=env)
    run([str(cnnc), "viz", "filters", "lenet5.cnn", *weights, "-o", "filters.png"], cwd=outside, env=env)
    run([str(cnnc), "viz", "maps", "lenet5.cnn", *weights, "--input", "digit.png", "-o", "maps.png"], cwd=outside, env=env)
    for picture in ("lenet5.png", "filters.png", "maps.png"):
        assert (outside / picture).read_bytes().startswith(b"\x89PNG"), picture


def test_the_sdist_installs_and_checks_from_outside_the_checkout(tmp_path, outside):
    sdist = build("sdist", tmp_path)
    assert sdist.name.endswith(".tar.gz")
    _, env = fresh_environment(tmp_path / "venv", sdist)
    checked = run([str(tmp_path / "venv" / "bin" / "cnnc"), "check", "lenet5.cnn", "--json"], cwd=outside, env=env)
    assert '"name": "lenet5"' in checked.stdout
