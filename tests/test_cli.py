"""The `cnnc` command as a program: misspelt commands, closed pipes, `python -m cnnc`, the first C build's
notice, gradcheck's progress and predict's polarity check."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from cnnc.cli import CLOSED_PIPE_STATUS

from cli_runner import run_cli

from conftest import SPECS
SAMPLES = SPECS / "samples"



# ---- misspelt commands ------------------------------------------------------------------------------
@pytest.mark.parametrize("typed, meant, usage", [
    (["chek", "x.cnn"], "check", "usage: cnnc "),
    (["complie", "x.cnn"], "compile", "usage: cnnc "),
    (["viz", "filtrs", "x.cnn"], "filters", "usage: cnnc viz "),
])
def test_a_misspelt_command_gets_did_you_mean(typed, meant, usage):
    status, _, stderr = run_cli(*typed)
    assert status == 2
    assert f"unknown command '{typed[-2]}'; did you mean '{meant}'?" in stderr
    assert stderr.startswith(usage)


def test_an_unknown_command_lists_the_commands():
    status, _, stderr = run_cli("frobnicate")
    assert status == 2 and "unknown command 'frobnicate' (commands: check, " in stderr


# ---- a reader that goes away ------------------------------------------------------------------------
def test_a_closed_pipe_on_stdout_ends_quietly_with_the_sigpipe_status():
    """`cnnc check --json specs/*.cnn | head -1`: no "Broken pipe" message, and the status a shell reports for
    a writer killed by SIGPIPE (141), which `set -o pipefail` scripts expect."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        done = subprocess.run([sys.executable, "-m", "cnnc", "check", "--json", *sorted(map(str, SPECS.glob("*.cnn")))],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == CLOSED_PIPE_STATUS == 141


def test_python_m_cnnc_is_the_cnnc_command():
    done = subprocess.run([sys.executable, "-m", "cnnc", "check", str(SPECS / "lenet5.cnn")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "parameters: 61,706" in done.stdout


# ---- the first C build says what it is doing ---------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


SMALL = """model notice_{k} {{
    input x[1, 6, 6]
    conv2d c(filters={k}, kernel=3)
    flatten
    dense out(units=2)
    loss cross_entropy
}}
"""


def test_a_cold_build_prints_one_line_on_a_terminal_and_nothing_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNC_CACHE_DIR", str(tmp_path / "cache"))
    terminal = Terminal()
    with contextlib.redirect_stderr(terminal):
        cnnc.load(_spec(tmp_path, 3), backend="c")
    assert terminal.getvalue().startswith("building the C module for notice_3 ... done in ")
    assert terminal.getvalue().endswith(" s\n") and terminal.getvalue().count("\n") == 1

    with contextlib.redirect_stderr(terminal := Terminal()):
        cnnc.load(_spec(tmp_path, 3), backend="c")  # cached: no build, no line
    assert terminal.getvalue() == ""

    with contextlib.redirect_stderr(piped := io.StringIO()):
        cnnc.load(_spec(tmp_path, 4), backend="c")  # a build, but stderr is not a terminal
    assert piped.getvalue() == ""


def _spec(folder: Path, filters: int) -> Path:
    path = folder / f"notice_{filters}.cnn"
    path.write_text(SMALL.format(k=filters))
    return path


# ---- gradcheck shows progress -----------------------------------------------------------------------
def test_gradcheck_estimates_its_time_and_prints_a_line_per_tensor_as_it_goes():
    status, stdout, stderr = run_cli("gradcheck", SPECS / "lenet5.cnn", "--samples", 2)
    assert status == 0
    assert "22 entries, 2 loss evaluations each: about " in stderr  # 2 of each of 10 parameter tensors and the input
    lines = [line for line in stdout.splitlines() if line.startswith("  ")]
    assert [line.split()[0] for line in lines] == [*cnnc.load(SPECS / "lenet5.cnn").params, "input"]
    assert all(line.endswith("PASS") for line in lines)


def test_gradcheck_of_a_big_model_suggests_the_faster_options():
    from cnnc.gradcheck import estimate_line

    model = cnnc.load(SPECS / "vgg_small.cnn", dtype="float64")
    shapes = {name: p.shape for name, p in model.params.items()} | {"input": (2, *model.input_shape)}
    line = estimate_line(model, shapes, 2, None, "numpy")  # the line a full check starts with
    assert line.startswith(f"{sum(np.prod(s) for s in shapes.values()):,} entries, 2 loss evaluations each: about ")
    assert "--samples 20 checks 20 random entries per tensor" in line
    assert "--backend c runs each evaluation in compiled C" in line


# ---- predict and dark-on-light pictures -------------------------------------------------------------
@pytest.fixture(scope="module")
def lenet_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("predict") / "w.npz"
    cnnc.load(SPECS / "lenet5.cnn", seed=0).save(path)
    return path


def test_predict_warns_about_a_dark_digit_on_light_paper(lenet_weights):
    status, stdout, stderr = run_cli("predict", SPECS / "lenet5.cnn", "--weights", lenet_weights, "--backend", "numpy",
                                     SAMPLES / "digit3-dark-on-light.png", SAMPLES / "digit7.png")
    assert status == 0 and len(stdout.splitlines()) == 2
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "digit3-dark-on-light.png: looks like dark ink on a light background" in warnings[0]
    assert "--invert" in warnings[0]


def test_predict_invert_flips_the_picture_and_silences_the_warning(lenet_weights):
    from cnnc.inference import read_inputs

    model = cnnc.load(SPECS / "lenet5.cnn", seed=0)
    model.load_weights(lenet_weights)
    picture = SAMPLES / "digit3-dark-on-light.png"
    x, _ = read_inputs([str(picture)], model.input_shape)
    expected = model.predict_proba(1.0 - x)[0]
    status, stdout, stderr = run_cli("predict", SPECS / "lenet5.cnn", "--weights", lenet_weights, "--backend", "numpy",
                                     "--invert", "--json", picture)
    assert status == 0 and "warning" not in stderr
    import json

    (record,) = json.loads(stdout)
    assert record["class"] == int(np.argmax(expected))
    assert record["top"][0][1] == pytest.approx(float(np.max(expected)), rel=1e-5)


def test_light_background_looks_at_the_border_only():
    from cnnc.inference import light_background

    dark = np.zeros((1, 1, 8, 8))
    dark[0, 0, 2:6, 2:6] = 1.0  # a bright stroke in the middle: MNIST's polarity
    assert light_background(np.concatenate([dark, 1.0 - dark])).tolist() == [False, True]
    assert light_background(np.ones((2, 10))).tolist() == [False, False]  # flat inputs: no border to judge


def test_argument_parsing_lives_in_cnnc_cli_only():
    """The pipeline modules take typed arguments: no module outside cnnc/cli imports argparse."""
    import ast

    package = Path(cnnc.__file__).parent
    importers = []
    for source in sorted(package.rglob("*.py")):
        if package / "cli" in source.parents:
            continue
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) else []
            if any(name and name.split(".")[0] == "argparse" for name in names):
                importers.append(str(source.relative_to(package)))
    assert importers == []
    assert "argparse" in (package / "cli" / "__init__.py").read_text(encoding="utf-8")  # the check looks at real code


def usage_error(*args) -> str:
    """stderr of an argparse error (which exits with status 2)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code == 2
    return err.getvalue()


# ---- usage errors name the subcommand -----------------------------------------------------------
def test_unknown_option_of_a_subcommand_shows_that_subcommands_usage():
    err = usage_error("train", "tiny.cnn", "--bogus")
    assert err.startswith("usage: cnnc train [-h]")
    assert err.rstrip().endswith("cnnc train: error: unrecognized arguments: --bogus")


def test_extra_positional_of_a_nested_subcommand_shows_its_usage():
    err = usage_error("viz", "maps", "tiny.cnn", "--weights", "w.npz", "--input", "x.npy", "-o", "m.png", "surplus")
    assert err.startswith("usage: cnnc viz maps [-h]")
    assert err.rstrip().endswith("cnnc viz maps: error: unrecognized arguments: surplus")


def test_unknown_top_level_option_keeps_the_top_level_usage():
    err = usage_error("--bogus")
    assert err.startswith("usage: cnnc [-h] [--version] COMMAND")
    assert err.rstrip().endswith("cnnc: error: unrecognized arguments: --bogus")


# ---- cnnc compile ----------------------------------------------------------------------------------
@pytest.mark.usefixtures("no_ir_cache")
def test_compile_with_an_empty_output_uses_the_default_directory_reading_the_spec_once(tmp_path, monkeypatch, capsys):
    import lark

    parsed, parse = [], lark.Lark.parse
    monkeypatch.setattr(lark.Lark, "parse", lambda self, text, *a, **k: parsed.append(text) or parse(self, text, *a, **k))
    monkeypatch.chdir(tmp_path)
    assert main(["compile", str(SPECS / "digits.cnn"), "-o", "", "--emit-c"]) == 0
    assert (tmp_path / "build" / "digits" / "manifest.json").is_file()
    assert parsed == [(SPECS / "digits.cnn").read_text()]  # the default directory is named without a second parse
