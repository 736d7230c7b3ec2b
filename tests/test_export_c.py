"""Standalone C export: every spec (plus two that use every layer kind) exported through the CLI with
random weights, built with the strict flags and with sanitizers, run, and compared with the NumPy
backend (and with the C backend when it is installed).

Compile budget: the exports are linked into ONE test program (which is also the proof that several
exported models link together without symbol clashes), built twice in parallel: strict -O2 with static
arenas, and -fsanitize=address,undefined with caller-owned arenas malloc'd to exactly
PREFIX_ARENA_BYTES, so that AddressSanitizer catches any access past the planned arena. One more
small build checks the generated main.c and Makefile.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from cnnc.diagnostics import CnncError
from cnnc.export_c import c_float, checked_prefix, memory_plan
from cnnc.frontend import networks_from_file

# the int8 export's tests import GCC, STRICT and SANITIZE from here
from c_export_builds import (CLANG, GCC, SANITIZE, STRICT, export_models, finish_builds, rel_err,  # noqa: F401
                             run_driver, start_builds)
from conftest import SPECS, is_classic_chain
BATCH = 3

pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is needed to build the exported C")

# Every layer kind and option the specs/ files do not use: average pooling with padding, asymmetric
# `same` padding (an even kernel), pairs, stride pairs, bias=false, leaky_relu with a slope, tanh,
# sigmoid, softmax (fused and standalone), dropout, 1-D average pooling and global pooling.
EXTRA_SPECS = """
model kitchen {
    input x[2, 9, 10]
    conv2d a(filters=3, kernel=(2, 3), padding=same, activation=leaky_relu, slope=0.2)
    avgpool2d ap(size=3, stride=2, padding=1)
    conv2d b(filters=4, kernel=2, stride=(1, 2), bias=false, activation=tanh)
    maxpool2d(size=(2, 1), padding=(1, 0))
    leaky_relu(slope=0.05)
    flatten
    dense d(units=7, bias=false, activation=sigmoid)
    dropout(rate=0.5)
    dense e(units=5, activation=softmax)
}
model kitchen1d {
    input s[2, 17]
    conv1d c(filters=3, kernel=4, padding=same, dilation=2)
    avgpool1d(size=2, padding=1)
    sigmoid
    global_avgpool
    tanh
    softmax
}
model flat_only {
    input v[6]
    relu
    flatten
}
model activation_first {
    input v[2, 5]
    tanh
    flatten
    dense o(units=3)
}
"""


def spec_models(extra_file: Path) -> list[tuple[Path, str]]:
    files = sorted(SPECS.glob("*.cnn")) + [extra_file]
    return [(path, net.name) for path in files for net in networks_from_file(path)
            if is_classic_chain(net)]  # the graphs: tests/test_export_c_graphs.py


def randomized(path: Path, name: str, seed: int):
    """cnnc.load with the seed, then non-zero biases so that every bias path runs."""
    m = cnnc.load(path, model=name, seed=seed)
    rng = np.random.default_rng(seed)
    for key, p in m.params.items():
        if key.endswith(".bias"):
            p[...] = rng.normal(0.0, 0.5, p.shape)
    return m


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export every model through `cnnc export`, then build the strict and the sanitizer programs."""
    root = tmp_path_factory.mktemp("export_c")
    extra = root / "extra.cnn"
    extra.write_text(EXTRA_SPECS)
    jobs = [(path, name, name) for path, name in spec_models(extra)]
    jobs.append((SPECS / "lenet5.cnn", "lenet5", "second_lenet"))  # the same spec again, other weights and prefix
    exports = export_models(root, jobs, randomized)  # prefix -> (export dir, the NumPy model with the same weights)
    running = start_builds(root, exports, ["strict", "sanitized", *(["clang"] if CLANG else [])])
    c_models = c_backend_models([m for p, (_, m) in exports.items() if p == m.name])  # meanwhile, in this process
    return root, exports, finish_builds(running, timeout=300), c_models


def c_backend_models(numpy_models) -> dict:
    """The C backend's models with the same weights, all from one compiler run; {} until that backend exists."""
    if importlib.util.find_spec("cnnc.backends.c_backend") is None:
        return {}
    from cnnc.backends.c_backend import compile_networks

    module = compile_networks([m.network for m in numpy_models], "float32")
    models = {}
    for m in numpy_models:
        models[m.name] = module.model(m.name)
        models[m.name].load_weights(m.params)
    return models


def test_every_export_matches_the_backends_in_every_build(exported):
    """Each spec's export, in each build, gives the NumPy backend's outputs to 1e-5 (relative to the largest
    output); the static-arena and the sanitized external-arena builds agree bit for bit."""
    root, exports, builds, c_models = exported
    failures = []
    for seed, (prefix, (out, m)) in enumerate(exports.items()):
        x = np.random.default_rng(100 + seed).standard_normal((BATCH, *m.input_shape)).astype(np.float32)
        want = m.forward(x).reshape(BATCH, -1)
        outputs = {b: run_driver(root / b, prefix, x, want.shape[1]) for b in builds}
        for build, got in outputs.items():
            if rel_err(got, want) > 1e-5:
                failures.append(f"{prefix} ({build} build): relative error {rel_err(got, want):.2e} against numpy")
        if not np.array_equal(outputs["strict"], outputs["sanitized"]):
            failures.append(f"{prefix}: static and external arena builds differ")
        if prefix in c_models:
            y_c = c_models[prefix].forward(x).reshape(BATCH, -1)
            if rel_err(outputs["strict"], y_c) > 1e-5:
                failures.append(f"{prefix}: relative error {rel_err(outputs['strict'], y_c):.2e} against the C backend")
    assert not failures, "\n".join(failures)
    assert len(exports) == 13  # 8 models in specs/, 4 extra, lenet5 a second time
    assert not c_models or len(c_models) == 12


def test_two_exports_of_one_spec_link_into_one_program_and_keep_their_own_weights(exported):
    root, exports, _, _ = exported
    x = np.random.default_rng(7).standard_normal((1, 1, 28, 28)).astype(np.float32)
    first = run_driver(root / "strict", "lenet5", x, 10)
    second = run_driver(root / "strict", "second_lenet", x, 10)
    assert rel_err(first, exports["lenet5"][1].forward(x)) < 1e-5
    assert rel_err(second, exports["second_lenet"][1].forward(x)) < 1e-5
    assert np.abs(first - second).max() > 1e-3  # different weights really were exported


def test_only_the_api_is_visible_to_the_linker(exported):
    """Everything but PREFIX_predict (and PREFIX_set_arena) is static: no symbol can clash."""
    root, exports, _, _ = exported
    out = exports["lenet5"][0]
    obj = root / "lenet5_external.o"
    subprocess.run([GCC, *STRICT, "-DLENET5_EXTERNAL_ARENA", "-c", str(out / "lenet5.c"), "-o", str(obj)], check=True)
    nm = subprocess.run(["nm", "-g", "--defined-only", str(obj)], capture_output=True, text=True, check=True)
    assert sorted(line.split()[-1] for line in nm.stdout.splitlines()) == ["lenet5_predict", "lenet5_set_arena"]


def test_example_main_and_makefile_build_and_read_a_file_or_stdin(exported, tmp_path):
    root, exports, _, _ = exported
    out, m = exports["lenet5"]
    build = tmp_path / "lenet5"
    shutil.copytree(out, build)
    flags = " ".join(STRICT + ["-O2"])
    for target in ("lenet5", "external"):
        result = subprocess.run(["make", "-C", str(build), target, f"CFLAGS={flags}"], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    x = np.random.default_rng(3).standard_normal((1, 1, 28, 28)).astype(np.float32)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    want = m.forward(x)[0]
    for program in ("lenet5", "lenet5_external"):
        from_file = subprocess.run([str(build / program), str(tmp_path / "x.bin")], capture_output=True, text=True)
        from_stdin = subprocess.run([str(build / program)], input=x.tobytes(), capture_output=True)
        assert from_file.returncode == 0 and from_stdin.returncode == 0, from_file.stderr
        scores = np.array([float(v) for v in from_file.stdout.split()], np.float32)
        assert from_stdin.stdout.decode() == from_file.stdout
        assert scores.shape == (10,) and rel_err(scores, want) < 1e-5
    short = subprocess.run([str(build / "lenet5")], input=x.tobytes()[:100], capture_output=True)
    assert short.returncode == 1 and b"expected 784 float32 values, read 25" in short.stderr


def test_arena_is_the_largest_pair_of_live_tensors_and_never_overlaps(tmp_path):
    """The plan's arena equals the lower bound of any out-of-place plan (the input and output of some layer
    alive at once), and no layer reads memory it is writing."""
    extra = tmp_path / "extra.cnn"
    extra.write_text(EXTRA_SPECS)
    for path, name in spec_models(extra):
        network = cnnc.read_network(path, name)
        plan = memory_plan(network)
        lower_bound = 0
        for step in plan.steps:
            if step.op not in ("compute", "copy"):
                assert step.src == step.dst, f"{name}: an in-place step moves data"
                continue
            src_size = step.layer.in_size if step.layer else plan.input_floats
            spans = [(b.offset, b.offset + n) for b, n in ((step.src, src_size), (step.dst, step.size)) if b.where == "arena"]
            for lo, hi in spans:
                assert 0 <= lo < hi <= plan.arena_floats, f"{name}: layer {step.index} leaves the arena"
            if len(spans) == 2:
                (a0, a1), (b0, b1) = spans
                assert a1 <= b0 or b1 <= a0, f"{name}: layer {step.index} overwrites its own input"
            lower_bound = max(lower_bound, sum(hi - lo for lo, hi in spans))
        assert plan.arena_floats == lower_bound, name
    # LeNet-5 by hand: conv c1 writes 6*28*28 = 4704 floats while pool s2 writes 6*14*14 = 1176 from them
    lenet = memory_plan(cnnc.read_network(SPECS / "lenet5.cnn"))
    assert lenet.arena_floats == 4704 + 1176 and lenet.arena_bytes == 23520
    assert lenet.weight_bytes == 61706 * 4
    # no compute layer between input and output: no arena at all
    assert memory_plan(cnnc.read_network(SPECS / "worked_2d.cnn")).arena_floats == 0
    # an in-place layer first: the const input is copied into the arena, then dense reads it from there
    first = memory_plan(cnnc.read_network(extra, "activation_first"))
    assert [s.op for s in first.steps] == ["copy", "tanh", "compute"] and first.arena_floats == 10


def test_dry_run_prints_flash_and_ram_and_writes_nothing(tmp_path, capsys):
    assert main(["export", str(SPECS / "lenet5.cnn"), "--format", "c", "--dry-run", "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "246,824 bytes" in printed and "23,520 bytes" in printed and "LENET5_ARENA_BYTES" in printed
    assert not (tmp_path / "out").exists()


def test_the_export_command_takes_typed_arguments(tmp_path, capsys):
    """cnnc/export.py's run_export is called with the options as values (cnnc/cli/export.py unpacks them); a
    format it does not know is API misuse, a ValueError naming the choices."""
    from cnnc.export import run_export

    assert run_export(str(SPECS / "lenet5.cnn"), "c", str(tmp_path / "out"), prefix="typed", dry_run=True) == 0
    assert "TYPED_ARENA_BYTES" in capsys.readouterr().out and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="export_format must be one of c, onnx; got 'tflite'"):
        run_export(str(SPECS / "lenet5.cnn"), "tflite", str(tmp_path / "out"))


SIZES_PROGRAM = r"""
#include <stdio.h>
#include "second_lenet.h"
int main(void) {
    int (*predict)(const float *, float *) = second_lenet_predict;  /* the prototype the header promises */
    printf("%d %d %lu\n", (int)SECOND_LENET_INPUT_SIZE, (int)SECOND_LENET_OUTPUT_SIZE,
           (unsigned long)SECOND_LENET_ARENA_BYTES);
    return predict(NULL, NULL) == -1 ? 0 : 1;
}
"""


def test_header_macros_state_the_sizes_of_the_memory_plan(exported, tmp_path):
    """A program that includes the header (strict flags) reads the sizes cnnc planned: LeNet-5's 784 inputs,
    10 outputs and 23,520 bytes of arena; and the export is written with the user's umask."""
    _, exports, _, _ = exported
    out, m = exports["second_lenet"]
    (tmp_path / "sizes.c").write_text(SIZES_PROGRAM)
    build = subprocess.run([GCC, *STRICT, f"-I{out}", str(tmp_path / "sizes.c"), str(out / "second_lenet.c"), "-lm",
                            "-o", str(tmp_path / "sizes")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(tmp_path / "sizes")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    plan = memory_plan(m.network)
    assert (plan.input_floats, plan.output_floats, plan.arena_bytes) == (784, 10, 23520)
    assert run.stdout.split() == [str(plan.input_floats), str(plan.output_floats), str(plan.arena_bytes)]
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "second_lenet.c").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("prefix", ["int", "9lives", "my-model", "__x", "_Model", "", "a b", "static", "main"])
def test_unusable_prefixes_are_refused(prefix, tmp_path, capsys):
    with pytest.raises(CnncError, match="not usable"):
        checked_prefix(prefix)
    code = main(["export", str(SPECS / "worked_1d.cnn"), "--format", "c", "--dry-run", "--name", prefix])
    assert code == 1 and "not usable" in capsys.readouterr().err


def test_spec_text_reaches_the_c_only_as_checked_names_in_comments(tmp_path):
    """A comment in the spec that tries to close a C comment, and layer names, never reach the C as code:
    the export builds under the strict flags, and the names appear in comments only."""
    spec = tmp_path / "names.cnn"
    spec.write_text("# */ int evil(void) { return 1; } /*\n"
                    "model names {\n    input zzqinput[4]\n    dense zzqdense(units=3)  # */ evil\n    relu zzqrelu\n}\n")
    m = cnnc.load(spec)
    m.save(tmp_path / "w.npz")
    assert main(["export", str(spec), "--weights", str(tmp_path / "w.npz"), "--format", "c", "-o", str(tmp_path / "c")]) == 0
    for file in ("names.c", "names.h", "main.c"):
        text = (tmp_path / "c" / file).read_text()
        assert "evil" not in text
        code = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        assert "zzq" not in code, f"{file}: a layer name is used outside a comment"
    build = subprocess.run([GCC, *STRICT, "-c", "names.c", "-o", str(tmp_path / "names.o")], cwd=tmp_path / "c",
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr


def test_floats_are_written_to_round_trip_exactly():
    values = np.array([1 / 3, 3.0, -0.0, 1e-45, 1.17549435e-38, 3.4028235e38, -2.5e-7, 0.1, 123456789.0], np.float32)
    for v in values:
        text = c_float(v)
        assert text.endswith("f") and re.fullmatch(r"-?[0-9]+(\.[0-9]*)?(e[-+][0-9]+)?f", text), text
        assert np.float32(float(text[:-1])) == v and np.signbit(np.float32(float(text[:-1]))) == np.signbit(v)
    with pytest.raises(ValueError, match="non-finite"):
        c_float(np.inf)


def test_wrong_dtype_missing_weights_and_bad_output_are_cli_errors(tmp_path, capsys):
    spec = str(SPECS / "worked_1d.cnn")
    assert main(["export", spec, "--format", "c", "-o", str(tmp_path), "--dtype", "float64"]) == 1
    assert "float32 only" in capsys.readouterr().err
    assert main(["export", spec, "--format", "c", "-o", str(tmp_path)]) == 1
    assert "--weights" in capsys.readouterr().err
    cnnc.load(SPECS / "lenet5.cnn").save(tmp_path / "lenet.npz")
    assert main(["export", spec, "--weights", str(tmp_path / "lenet.npz"), "--format", "c", "-o", str(tmp_path)]) == 1
    assert "does not fit model 'worked_1d'" in capsys.readouterr().err
    cnnc.load(spec).save(tmp_path / "w.npz")
    (tmp_path / "file").write_text("")
    assert main(["export", spec, "--weights", str(tmp_path / "w.npz"), "--format", "c", "-o", str(tmp_path / "file")]) == 1
    assert "not a directory" in capsys.readouterr().err
