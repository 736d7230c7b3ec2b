"""The C backend's compile cache: a hit runs no compiler, concurrent builds both succeed, a corrupted
entry is rebuilt, and the key changes with everything that changes the module."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.backends import c_build
from cnnc.backends.c_codegen import generate

# Small enough that a build takes about a second; each test gets its own spec text, so its own key.
SPEC = "model tiny {{\n  input x[2, 9]\n  conv1d c(filters={filters}, kernel=3, padding=1, activation=tanh)\n  loss mse\n}}\n"


def write_spec(tmp_path: Path, filters: int) -> Path:
    path = tmp_path / "tiny.cnn"
    path.write_text(SPEC.format(filters=filters))
    return path


def forget_loaded_modules() -> None:
    """What a new process would know: nothing (the imported extension itself stays importable)."""
    c_build._LOADED.clear()
    c_build._compiler_version.cache_clear()


def no_compiling(*args, **kwargs):
    raise AssertionError("the compiler ran")


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "c").iterdir())


def output(model) -> np.ndarray:
    return model.forward(np.linspace(-1, 1, 2 * 2 * 9).reshape(2, 2, 9))


def test_second_load_is_a_cache_hit_that_runs_no_compiler(tmp_path, monkeypatch):
    spec, cache = write_spec(tmp_path, 2), tmp_path / "cache"
    first = cnnc.load(spec, backend="c", cache_dir=cache)
    assert first.module.built.compiled
    [key] = entries(cache)
    assert sorted(p.name for p in (cache / "c" / key).iterdir()) == sorted(
        ["manifest.json", "model.c", f"{c_build.module_name(key)}{c_build.sysconfig.get_config_var('EXT_SUFFIX')}"])

    forget_loaded_modules()
    monkeypatch.setattr(c_build, "compile_module", no_compiling)
    start = time.perf_counter()
    second = cnnc.load(spec, backend="c", cache_dir=cache)
    elapsed = time.perf_counter() - start
    assert not second.module.built.compiled and second.module.built.key == key
    assert elapsed < 1.0, f"a cache hit took {elapsed:.3f} s"
    assert np.array_equal(output(first), output(second))


def test_a_new_process_loads_the_cached_module_in_milliseconds(tmp_path):
    spec, cache = write_spec(tmp_path, 3), tmp_path / "cache"
    cnnc.load(spec, backend="c", cache_dir=cache)
    script = textwrap.dedent(f"""
        import json, time
        import cnnc
        from cnnc.backends import c_build
        def no_compiling(*args, **kwargs):
            raise AssertionError("the compiler ran")
        c_build.compile_module = no_compiling
        cnnc.read_network({str(spec)!r})  # the front end's own import cost is not the cache's
        start = time.perf_counter()
        m = cnnc.load({str(spec)!r}, backend="c", cache_dir={str(cache)!r})
        print(json.dumps({{"seconds": time.perf_counter() - start, "compiled": m.module.built.compiled}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["compiled"] is False
    assert report["seconds"] < 1.5, report  # typically 0.05-0.2 s: Jinja's first render, the hash, the import


def test_two_processes_compiling_the_same_spec_at_once_both_succeed(tmp_path):
    """Both children are held until both have started compiling, so both builds really overlap and one
    of them loses the rename into the cache."""
    spec, cache, gate = write_spec(tmp_path, 4), tmp_path / "cache", tmp_path / "gate"
    gate.mkdir()
    script = textwrap.dedent(f"""
        import json, os, pathlib, time
        import numpy as np
        import cnnc
        from cnnc.backends import c_build
        original = c_build.compile_module
        def compile_when_both_are_here(*args, **kwargs):
            gate = pathlib.Path({str(gate)!r})
            (gate / str(os.getpid())).touch()
            deadline = time.time() + 120
            while len(list(gate.iterdir())) < 2 and time.time() < deadline:
                time.sleep(0.01)
            return original(*args, **kwargs)
        c_build.compile_module = compile_when_both_are_here
        m = cnnc.load({str(spec)!r}, backend="c", cache_dir={str(cache)!r})
        y = m.forward(np.linspace(-1, 1, 36).reshape(2, 2, 9))
        print(json.dumps({{"compiled": m.module.built.compiled, "key": m.module.built.key, "y": y.tolist()}}))
    """)
    children = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    results = [child.communicate(timeout=300) for child in children]
    for child, (out, err) in zip(children, results):
        assert child.returncode == 0, err
    reports = [json.loads(out) for out, _ in results]
    assert len(list(gate.iterdir())) == 2  # both reached the compiler
    assert reports[0]["compiled"] and reports[1]["compiled"]
    assert reports[0]["key"] == reports[1]["key"] and reports[0]["y"] == reports[1]["y"]
    assert entries(cache) == [reports[0]["key"]]  # one entry, no staging or trash directories left
    forget_loaded_modules()
    assert not cnnc.load(spec, backend="c", cache_dir=cache).module.built.compiled


def replace_file(path: Path, data: bytes) -> None:
    """Swap in new bytes under the same name. Never rewrite the module in place: this process has the
    old file mapped, and shrinking a mapped file is a SIGBUS for whoever touches the lost pages."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def corrupt_truncated_module(entry: Path) -> None:
    so = next(entry.glob("_cnnc_*"))
    replace_file(so, so.read_bytes()[: so.stat().st_size // 2])


def corrupt_manifest_text(entry: Path) -> None:
    (entry / "manifest.json").write_text('{"format": 1, "key": ')


def corrupt_recorded_checksum(entry: Path) -> None:
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["module_sha256"] = "0" * 64
    (entry / "manifest.json").write_text(json.dumps(manifest))


def corrupt_missing_module(entry: Path) -> None:
    next(entry.glob("_cnnc_*")).unlink()


@pytest.mark.parametrize("corrupt", [corrupt_truncated_module, corrupt_manifest_text, corrupt_recorded_checksum,
                                     corrupt_missing_module])
def test_a_corrupted_entry_is_detected_and_rebuilt(tmp_path, corrupt):
    spec, cache = write_spec(tmp_path, 5), tmp_path / "cache"
    first = cnnc.load(spec, backend="c", cache_dir=cache)
    [key] = entries(cache)
    entry = cache / "c" / key
    corrupt(entry)
    forget_loaded_modules()
    again = cnnc.load(spec, backend="c", cache_dir=cache)
    assert again.module.built.compiled and again.module.built.key == key
    assert entries(cache) == [key]
    manifest = c_build.read_manifest(entry)
    assert c_build.module_intact(entry / manifest["module_file"], manifest)
    assert np.array_equal(output(first), output(again))


def test_the_key_follows_the_source_the_flags_the_compiler_and_the_versions(monkeypatch):
    network = cnnc.network_from_text(SPEC.format(filters=2))
    source32, source64 = generate(network, "float32"), generate(network, "float64")
    compiler = c_build.find_compiler()
    default = c_build.BuildOptions()
    key = c_build.cache_key(source32, compiler, default)
    assert key == c_build.cache_key(generate(network, "float32"), compiler, default)  # deterministic
    other_compiler = c_build.Compiler(compiler.command, compiler.path, compiler.version + " (patched)")
    variants = [
        c_build.cache_key(source64, compiler, default),
        c_build.cache_key(generate(cnnc.network_from_text(SPEC.format(filters=3)), "float32"), compiler, default),
        c_build.cache_key(source32, compiler, c_build.BuildOptions(native=False)),
        c_build.cache_key(source32, compiler, c_build.BuildOptions(openmp=False)),
        c_build.cache_key(source32, compiler, c_build.BuildOptions(opt="-O2")),
        c_build.cache_key(source32, other_compiler, default),
    ]
    monkeypatch.setattr(c_build, "__version__", "999")
    variants.append(c_build.cache_key(source32, compiler, default))
    assert len({key, *variants}) == 1 + len(variants)


def test_cache_location_and_portable_builds_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CNNC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert c_build.cache_root() == tmp_path / "xdg" / "cnnc" / "c"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert c_build.cache_root() == tmp_path / "home" / ".cache" / "cnnc" / "c"
    monkeypatch.setenv("CNNC_CACHE_DIR", str(tmp_path / "mine"))
    assert c_build.cache_root() == tmp_path / "mine" / "c"
    assert c_build.cache_root(tmp_path / "given") == tmp_path / "given" / "c"

    assert "-march=native" in c_build.requested_flags(c_build.BuildOptions.from_options())
    monkeypatch.setenv("CNNC_PORTABLE", "1")
    assert "-march=native" not in c_build.requested_flags(c_build.BuildOptions.from_options())
    assert "-fopenmp" not in c_build.requested_flags(c_build.BuildOptions.from_options(openmp=False))
    with pytest.raises(ValueError, match="opt must be one of"):
        c_build.BuildOptions.from_options(opt="-O9; rm -rf /")


def test_a_compiler_without_openmp_builds_without_it(tmp_path, monkeypatch):
    """The probe decides: a compiler that cannot link -fopenmp gets -fopenmp-simd (or nothing) instead."""
    compiler = c_build.find_compiler()
    real = c_build._accepts

    def no_openmp(compiler, flags):
        return False if "-fopenmp" in flags else real(compiler, flags)

    monkeypatch.setattr(c_build, "_accepts", no_openmp)
    flags, link = c_build.usable_flags(compiler, c_build.BuildOptions())
    assert "-fopenmp" not in flags and link == [] and "-Wno-unknown-pragmas" in flags
    spec = write_spec(tmp_path, 6)
    m = cnnc.load(spec, backend="c", cache_dir=tmp_path / "cache", dtype="float64")
    assert "-fopenmp" not in c_build.read_manifest(m.module.built.directory)["cflags"]
    ref = cnnc.load(spec, backend="numpy", dtype="float64")
    assert np.allclose(output(m), output(ref), rtol=1e-12, atol=1e-12)
