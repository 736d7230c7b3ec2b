"""Damaged JSON that the C backend reads (issue 18, items 14 and 15): a cache entry's manifest.json and a
compiler record nested too deeply for Python's parser, or holding the wrong types, are damaged cache
files (rebuilt or asked again, never a RecursionError); a `cnnc compile` directory whose manifest is
damaged is a CnncError naming the manifest and what is wrong with it (never KeyError, TypeError or
RecursionError)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.backends import c_backend, c_build
from cnnc.diagnostics import CnncError

SPEC = "model tiny {{\n  input x[2, 9]\n  conv1d c(filters={filters}, kernel=3, padding=1, activation=tanh)\n  loss mse\n}}\n"
DEEP = "[" * 200_000 + "]" * 200_000  # json.loads raises RecursionError on this


def write_spec(folder: Path, filters: int) -> Path:
    path = folder / "tiny.cnn"
    path.write_text(SPEC.format(filters=filters))
    return path


def forget_loaded_modules() -> None:
    c_build._LOADED.clear()
    c_build._compiler_version.cache_clear()


def output(model) -> np.ndarray:
    return model.forward(np.linspace(-1, 1, 36).reshape(2, 2, 9))


def test_the_deep_json_really_is_too_deep_for_python():
    with pytest.raises(RecursionError):
        json.loads(DEEP)


# ---- the cache (item 14) -------------------------------------------------------------------------------------
def test_a_manifest_nested_too_deeply_is_a_damaged_entry_and_is_rebuilt(tmp_path):
    spec, cache = write_spec(tmp_path, 11), tmp_path / "cache"
    expected = output(cnnc.load(spec, backend="c", cache_dir=cache))
    [entry] = (cache / "c").iterdir()
    (entry / "manifest.json").write_text(DEEP)
    forget_loaded_modules()
    again = cnnc.load(spec, backend="c", cache_dir=cache)
    assert again.module.built.compiled and again.module.built.directory == entry
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["key"] == entry.name and c_build.module_intact(entry / manifest["module_file"], manifest)
    assert np.array_equal(output(again), expected)
    assert sorted(p.name for p in (cache / "c").iterdir()) == [entry.name]  # no trash or staging left


@pytest.mark.parametrize("field, value", [("module_size", "352"), ("module_file", ["x.so"]), ("key", 7),
                                          ("module_sha256", None)])
def test_a_manifest_with_a_field_of_the_wrong_type_is_a_damaged_entry(tmp_path, field, value):
    spec, cache = write_spec(tmp_path, 11), tmp_path / "cache"
    cnnc.load(spec, backend="c", cache_dir=cache)
    [entry] = (cache / "c").iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert c_build.read_manifest(entry) == manifest
    (entry / "manifest.json").write_text(json.dumps({**manifest, field: value}))
    assert c_build.read_manifest(entry) is None


def test_a_compiler_record_nested_too_deeply_is_asked_again_and_rewritten(tmp_path):
    spec, cache = write_spec(tmp_path, 11), tmp_path / "cache"
    expected = output(cnnc.load(spec, backend="c", cache_dir=cache))
    records = list((cache / "compilers").iterdir())
    assert records
    for record in records:
        record.write_text(DEEP)
    forget_loaded_modules()
    again = cnnc.load(spec, backend="c", cache_dir=cache)  # the version is asked again: the same key, a hit
    assert not again.module.built.compiled
    assert np.array_equal(output(again), expected)
    for record in records:
        saved = json.loads(record.read_text())
        assert isinstance(saved["version"], str) and saved["version"]
    compiler = c_build.find_compiler(cache)
    compiler.record.write_text(DEEP)
    assert c_build.remembered_flags(compiler) == []
    c_build.remember_flags(compiler, ("-fopenmp",))  # a damaged record is left for compiler_version to rewrite
    assert compiler.record.read_text() == DEEP


def test_a_real_process_with_a_deeply_nested_cache_manifest_builds_again_without_a_traceback(tmp_path):
    spec, cache = write_spec(tmp_path, 12), tmp_path / "cache"
    cnnc.load(spec, backend="c", cache_dir=cache)
    [entry] = (cache / "c").iterdir()
    (entry / "manifest.json").write_text(DEEP)
    env = {**os.environ, "CNNC_CACHE_DIR": str(cache)}
    result = subprocess.run([sys.executable, "-m", "cnnc.cli", "compile", str(spec), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads((entry / "manifest.json").read_text())["key"] == entry.name


# ---- a `cnnc compile` directory (item 15) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """(a `cnnc compile` directory, the cache it was built in, its model's output)."""
    base = tmp_path_factory.mktemp("compiled")
    spec, cache = write_spec(base, 13), base / "cache"
    c_backend.compile_to_directory(spec, base / "out", cache_dir=cache)
    return base / "out", cache, output(cnnc.load(base / "out", backend="c", cache_dir=cache))


def damaged_copy(compiled, tmp_path: Path, change) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(compiled[0], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    text = change(manifest)
    (folder / "manifest.json").write_text(text if isinstance(text, str) else json.dumps(manifest))
    return folder


def without(name):
    return lambda m: m.pop(name) and None


def setting(name, value):
    return lambda m: m.__setitem__(name, value)


DAMAGE = {
    "nested too deeply": (lambda m: DEEP, "not readable JSON"),
    "not JSON": (lambda m: '{"format": "cnnc-compile-2", "model": ', "not readable JSON"),
    "not UTF-8": (lambda m: None, "not readable JSON"),
    "a list": (lambda m: "[1, 2]", "it holds list, not a JSON object"),
    "no model": (without("model"), "'model' must be a non-empty string; got nothing"),
    "model a number": (setting("model", 3), "'model' must be a non-empty string; got 3"),
    "dtype a list": (setting("dtype", ["float32"]), "'dtype' must be one of float32, float64; got [\"float32\"]"),
    "spec_file a number": (setting("spec_file", 12), "'spec_file' must be a non-empty string; got 12"),
    "spec_file a path": (setting("spec_file", "../../tiny.cnn"), "'spec_file' must name a file in the directory"),
    "options a list": (setting("options", ["-O3"]), "'options' must be a JSON object; got [\"-O3\"]"),
    "an unknown option": (setting("options", {"cflags": "-O0"}), "'options' holds 'cflags'"),
    "opt not an optimisation level": (setting("options", {"opt": "-O9"}), "'options' are not valid build options "
                                                                          "(opt must be one of"),
    "openmp a string": (setting("options", {"openmp": "yes"}), "openmp and native must be true or false"),
    "module_file a number": (setting("module_file", 5), "'module_file' must be a non-empty string"),
    "key missing": (without("key"), "'key' must be a non-empty string (the manifest names a module); got nothing"),
    "source_key a dict": (setting("source_key", {"a": 1}), "'source_key' must be a string"),
    "an unknown format": (setting("format", "cnnc-compile-99"), "its format 'cnnc-compile-99' is not cnnc-compile-2"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_loading_a_compile_directory_with_a_damaged_manifest_is_an_error_naming_it(compiled, tmp_path, damage):
    change, phrase = DAMAGE[damage]
    folder = damaged_copy(compiled, tmp_path, change)
    if damage == "not UTF-8":
        (folder / "manifest.json").write_bytes(b'{"model": "\xff\xfe"}')
    before = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(CnncError) as info:
        cnnc.load(folder, backend="c", cache_dir=compiled[1])
    message = str(info.value)
    assert message.startswith(f"error: {folder / 'manifest.json'}: damaged"), message
    assert phrase in message, message
    assert len(message) < 400
    assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # nothing changed or deleted


def test_compiling_again_into_a_directory_whose_manifest_is_damaged_rewrites_it(compiled, tmp_path):
    """`cnnc compile -o DIR` reads DIR's old manifest only to remove a module it no longer needs; a damaged
    manifest names none, so nothing of DIR is removed and the new manifest replaces it."""
    folder = damaged_copy(compiled, tmp_path, setting("module_file", 5))
    (folder / "keep.txt").write_text("mine")
    spec = write_spec(tmp_path, 13)
    env = {**os.environ, "CNNC_CACHE_DIR": str(compiled[1])}
    result = subprocess.run([sys.executable, "-m", "cnnc.cli", "compile", str(spec), "-o", str(folder)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (folder / "keep.txt").read_text() == "mine"
    assert isinstance(json.loads((folder / "manifest.json").read_text())["module_file"], str)
    forget_loaded_modules()
    assert np.array_equal(output(cnnc.load(folder, backend="c", cache_dir=compiled[1])), compiled[2])


def test_an_intact_compile_directory_still_loads_with_the_checks(compiled):
    folder, cache, expected = compiled
    forget_loaded_modules()
    model = cnnc.load(folder, backend="c", cache_dir=cache)
    assert model.module.built.directory == folder  # the module in the directory itself, not a rebuild
    assert np.array_equal(output(model), expected)
