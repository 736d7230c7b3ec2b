"""The C backend's compile cache: a hit runs no compiler and renders no C, concurrent builds both
succeed, a corrupted entry is rebuilt, and the key changes with everything that changes the module
(and with nothing else: where a spec was written does not matter)."""
from __future__ import annotations

import dataclasses
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
from cnnc.backends import c_backend, c_build, c_codegen
from cnnc.backends.c_codegen import generate
from cnnc.diagnostics import CnncError

from conftest import SPECS

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
        ["kernels", "manifest.json", "model.c", f"{c_build.module_name(key)}{c_build.sysconfig.get_config_var('EXT_SUFFIX')}"])

    forget_loaded_modules()
    monkeypatch.setattr(c_build, "compile_module", no_compiling)
    start = time.perf_counter()
    second = cnnc.load(spec, backend="c", cache_dir=cache)
    elapsed = time.perf_counter() - start
    assert not second.module.built.compiled and second.module.built.key == key
    assert elapsed < 1.0, f"a cache hit took {elapsed:.3f} s"
    assert np.array_equal(output(first), output(second))


def test_a_new_process_loads_the_cached_module_without_jinja_a_compiler_or_any_child_process(tmp_path):
    """A hit imports the module and nothing else: no template is rendered (jinja2 is never imported),
    no compiler runs and no process is spawned, not even `cc --version` (remembered in the cache).
    The same holds for a directory written by `cnnc compile`."""
    spec, cache, out = write_spec(tmp_path, 3), tmp_path / "cache", tmp_path / "compiled"
    expected = output(cnnc.load(spec, backend="c", cache_dir=cache))
    c_backend.compile_to_directory(spec, out, cache_dir=cache)
    script = textwrap.dedent(f"""
        import json, subprocess, sys, time
        import numpy as np
        import cnnc
        from cnnc.backends import c_backend, c_build, c_codegen
        def refuse(*args, **kwargs):
            raise AssertionError("a cache hit spawned a process, compiled or rendered C")
        subprocess.Popen = c_build.compile_module = c_backend.generate = refuse
        cnnc.read_network({str(spec)!r})  # the front end's own import cost is not the cache's
        start = time.perf_counter()
        m = cnnc.load({str(spec)!r}, backend="c", cache_dir={str(cache)!r})
        seconds = time.perf_counter() - start
        d = cnnc.load({str(out)!r}, backend="c", cache_dir={str(tmp_path / "unused")!r})
        x = np.linspace(-1, 1, 36).reshape(2, 2, 9)
        print(json.dumps({{"seconds": seconds, "compiled": m.module.built.compiled, "y": m.forward(x).tolist(),
                          "dir": str(d.module.built.directory), "dir_y": d.forward(x).tolist(),
                          "imported": sorted(set(sys.modules) & {{"jinja2", "setuptools", "distutils",
                                                                  "cffi.recompiler"}})}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["compiled"] is False and report["imported"] == []
    assert np.array_equal(np.array(report["y"]), expected) and np.array_equal(np.array(report["dir_y"]), expected)
    assert report["dir"] == str(out)
    assert report["seconds"] < 1.0, report  # typically 5-15 ms: plan, hash, import the module


def test_a_hit_renders_the_c_only_when_asked_and_it_is_the_c_the_module_was_built_from(tmp_path):
    spec, cache = write_spec(tmp_path, 7), tmp_path / "cache"
    cnnc.load(spec, backend="c", cache_dir=cache)
    forget_loaded_modules()
    module = cnnc.load(spec, backend="c", cache_dir=cache).module
    assert not module.built.compiled and module.built.source is None
    assert module.source.text == (module.built.directory / "model.c").read_text()
    for name, text in module.source.headers:  # and the kernel headers it was built with, beside it
        assert (module.built.directory / name).read_text() == text


def test_a_directory_of_an_older_format_is_refused_with_the_way_out(tmp_path):
    """No migration: a manifest of another format says to compile the directory again."""
    spec, cache, out = write_spec(tmp_path, 9), tmp_path / "cache", tmp_path / "old"
    c_backend.compile_to_directory(spec, out, cache_dir=cache, emit_c=True)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format": "cnnc-compile-1"}))
    with pytest.raises(CnncError, match="format 'cnnc-compile-1' is not cnnc-compile-2.*cnnc compile"):
        cnnc.load(out, backend="c", cache_dir=cache)


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


def test_the_key_follows_the_network_the_flags_the_compiler_and_the_versions(monkeypatch):
    network = cnnc.network_from_text(SPEC.format(filters=2))
    other = cnnc.network_from_text(SPEC.format(filters=3).replace("tiny", "other"))
    compiler = c_build.find_compiler()
    default = c_build.BuildOptions()

    def key(networks=(network,), dtype="float32", compiler=compiler, options=default):
        return c_build.cache_key(c_build.source_key(list(networks), dtype), compiler, options)

    base = key()
    assert base == key([cnnc.network_from_text(SPEC.format(filters=2))])  # deterministic
    renamed = dataclasses.replace(network, layers=(dataclasses.replace(network.layers[0], name="d"),))
    variants = [
        key(dtype="float64"),
        key([other]),
        key([renamed]),  # names are written into the C's comments
        key([network, other]),
        key([other, network]),  # a bundle's symbols follow its order
        key(options=c_build.BuildOptions(native=False)),
        key(options=c_build.BuildOptions(openmp=False)),
        key(options=c_build.BuildOptions(opt="-O2")),
        key(compiler=c_build.Compiler(compiler.command, compiler.path, compiler.version + " (patched)")),
    ]
    monkeypatch.setattr(c_build, "__version__", "999")
    variants.append(key())
    assert len({base, *variants}) == 1 + len(variants)


def test_editing_a_template_a_kernel_header_or_the_code_generator_changes_the_key(monkeypatch):
    network = cnnc.network_from_text(SPEC.format(filters=2))
    before = c_build.source_key([network], "float32")
    genuine_texts = c_build.codegen_texts()

    def key_with(texts) -> str:
        monkeypatch.setattr(c_build, "codegen_texts", lambda: texts)
        c_build.codegen_fingerprint.cache_clear()
        return c_build.source_key([network], "float32")

    assert key_with(list(genuine_texts)) == before  # the same contents: the same key
    edited = key_with([(n, d + b"// edited\n" if n == "module.c.j2" else d) for n, d in genuine_texts])
    kernel = key_with([(n, d + b"// edited\n" if n == "kernels/conv.h" else d) for n, d in genuine_texts])
    added = key_with(genuine_texts + [("export/new.c.j2", b"")])
    changed_codegen = key_with([(n, d + b"# edited\n" if n.endswith("c_codegen.py") else d) for n, d in genuine_texts])
    c_build.codegen_fingerprint.cache_clear()
    assert len({before, edited, kernel, added, changed_codegen}) == 5
    names = {n for n, _ in genuine_texts}
    assert {"module.c.j2", "kernels/conv.h", "kernels/conv_blocked.h", "kernels/pool.h"} <= names


def test_specs_with_the_same_layers_share_an_entry_wherever_and_however_they_are_written(tmp_path):
    """Source locations and file names are not part of the key: they never reach the C."""
    cache = tmp_path / "cache"
    first = write_spec(tmp_path, 8)
    second = tmp_path / "elsewhere" / "renamed.cnn"
    second.parent.mkdir()
    second.write_text("# the same network, written elsewhere and laid out differently\n\n"
                      + SPEC.format(filters=8).replace("  conv1d", "\n      conv1d"))
    a = cnnc.load(first, backend="c", cache_dir=cache)
    forget_loaded_modules()
    b = cnnc.load(second, backend="c", cache_dir=cache)
    assert a.network.layers[0].loc != b.network.layers[0].loc and a.network.file != b.network.file
    assert a.module.built.compiled and not b.module.built.compiled
    assert entries(cache) == [a.module.built.key] == [b.module.built.key]
    assert np.array_equal(output(a), output(b))


def test_a_hit_plans_the_networks_exactly_as_the_code_generator_does():
    tiny = cnnc.network_from_text(SPEC.format(filters=2))
    lenet = cnnc.read_network(SPECS / "lenet5.cnn")
    # graphs: batch norms folded into convolutions (plans that name each other), merges, grouped convolutions
    graphs = [cnnc.read_network(SPECS / name) for name in ("mobilenet_small.cnn", "inception_small.cnn")]
    for networks in ([tiny], [tiny, lenet], [lenet, tiny], graphs):
        assert c_backend.plan_networks(networks, "float64") == generate(networks, "float64").plans
    with pytest.raises(ValueError, match="at least one network"):
        c_backend.compile_networks([])


def test_plans_compare_and_print_every_field_and_each_plan_kind_with_fields_is_a_dataclass():
    """LayerPlan's __eq__ and __repr__ serve every plan kind (c_codegen.LayerPlan says why). They go by the
    dataclass fields, so a kind that declares fields of its own must be a dataclass itself."""
    lenet = cnnc.read_network(SPECS / "lenet5.cnn")
    [plan], [other] = c_backend.plan_networks([lenet], "float32"), c_backend.plan_networks([lenet], "float32")
    pool = next(i for i, lp in enumerate(plan.layers) if isinstance(lp, c_codegen.MaxPoolPlan))
    assert plan.layers[pool].variant == "2x2" and repr(plan.layers[pool]).startswith("MaxPoolPlan(index=")
    assert "variant='2x2'" in repr(plan.layers[pool]) and plan == other
    other.layers[pool].variant = "direct"
    assert plan.layers[pool] != other.layers[pool] and plan != other
    assert plan.layers[pool] != c_codegen.PoolPlan(**{f.name: getattr(plan.layers[pool], f.name)
                                                     for f in dataclasses.fields(c_codegen.PoolPlan)})
    kinds = [k for k in vars(c_codegen).values() if isinstance(k, type) and issubclass(k, c_codegen.LayerPlan)]
    assert len(kinds) >= 20
    for kind in kinds:
        declared = {name for name, annotation in vars(kind).get("__annotations__", {}).items()
                    if not str(annotation).startswith("ClassVar")}
        assert declared <= {f.name for f in dataclasses.fields(kind)}, f"{kind.__name__}: add @dataclass(eq=False, repr=False)"


def test_the_compiler_version_is_remembered_on_disk_until_the_executable_changes(tmp_path, monkeypatch):
    def write_compiler(path: Path, version: str) -> None:
        new = path.with_name("new")
        new.write_text(f'#!/bin/sh\necho "{version}"\n')
        new.chmod(0o755)
        os.replace(new, path)  # as an upgrade does: a new file under the old name

    fake, records = tmp_path / "fakecc", tmp_path / "records"
    write_compiler(fake, "fakecc 1.0")
    assert c_build.compiler_version((str(fake),), str(fake), records) == "fakecc 1.0"
    [record] = records.iterdir()

    c_build._compiler_version.cache_clear()  # a new process: only the record remembers
    with monkeypatch.context() as m:
        m.setattr(subprocess, "run", no_compiling)
        assert c_build.compiler_version((str(fake),), str(fake), records) == "fakecc 1.0"

    write_compiler(fake, "fakecc 2.0 (a longer version line)")
    assert c_build.compiler_version((str(fake),), str(fake), records) == "fakecc 2.0 (a longer version line)"
    assert len(list(records.iterdir())) == 2

    record.write_text("{ not json")
    write_compiler(fake, "fakecc 1.0")  # same size as the first, a new inode: asked again, record rewritten
    c_build._compiler_version.cache_clear()
    assert c_build.compiler_version((str(fake),), str(fake), records) == "fakecc 1.0"


def test_accepted_flags_are_remembered_with_the_compiler_and_forgotten_when_it_changes(tmp_path, monkeypatch):
    """A yes from a probe is kept in the compiler's record, so a new process probes nothing; a no is asked
    again (an OpenMP runtime may be installed since); a replaced compiler starts a new record."""
    log, fake, records = tmp_path / "calls", tmp_path / "fakecc", tmp_path / "records"

    def write_compiler(openmp: bool) -> c_build.Compiler:
        new = fake.with_name("new")
        refuse = 'case "$*" in *-fopenmp\\ *) exit 1;; esac\n' if not openmp else ""
        new.write_text(f'#!/bin/sh\necho "$1" >> {log}\n[ "$1" = --version ] && echo "fakecc {openmp}"\n{refuse}exit 0\n')
        new.chmod(0o755)
        os.replace(new, fake)  # as an upgrade does: a new file under the old name
        command = (str(fake),)
        return c_build.Compiler(command, str(fake), c_build.compiler_version(command, str(fake), records),
                                c_build.record_file(command, str(fake), records))

    def probes() -> list[str]:
        return [line for line in log.read_text().splitlines() if line != "--version"] if log.exists() else []

    def new_process() -> None:
        c_build._accepts.cache_clear()
        c_build._compiler_version.cache_clear()

    compiler = write_compiler(openmp=True)
    with_openmp = (["-O3", "-g0", "-fno-math-errno", "-march=native", "-fopenmp"], ["-fopenmp"])
    assert c_build.usable_flags(compiler, c_build.BuildOptions()) == with_openmp
    assert probes() == ["-march=native", "-fopenmp"]
    assert json.loads(compiler.record.read_text())["accepts"] == ["-fopenmp", "-march=native"]
    new_process()
    with monkeypatch.context() as m:
        m.setattr(subprocess, "run", no_compiling)
        assert c_build.usable_flags(compiler, c_build.BuildOptions()) == with_openmp

    log.unlink()
    new_process()
    compiler = write_compiler(openmp=False)  # replaced: its own record, probed afresh
    without = (["-O3", "-g0", "-fno-math-errno", "-march=native", "-fopenmp-simd", "-Wno-unknown-pragmas"], [])
    assert c_build.usable_flags(compiler, c_build.BuildOptions()) == without
    assert probes() == ["-march=native", "-fopenmp", "-fopenmp-simd"]
    new_process()
    assert c_build.usable_flags(compiler, c_build.BuildOptions()) == without
    assert probes() == ["-march=native", "-fopenmp", "-fopenmp-simd", "-fopenmp"]  # only the no is asked again
    assert json.loads(compiler.record.read_text())["accepts"] == ["-fopenmp-simd", "-march=native"]
    assert len(list(records.iterdir())) == 2

    compiler.record.write_text("{ not json")  # a damaged record: probe, and remember nothing
    new_process()
    assert c_build.usable_flags(compiler, c_build.BuildOptions()) == without
    assert compiler.record.read_text() == "{ not json"  # left for compiler_version to rewrite
    assert c_build.usable_flags(dataclasses.replace(compiler, record=None), c_build.BuildOptions()) == without


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
    compiler = c_build.find_compiler(tmp_path / "cache")  # a fresh record: no remembered -fopenmp
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


# ---- the two-part build ------------------------------------------------------------------------------
def test_the_link_runs_pythons_ldshared_with_our_compiler_in_place_of_pythons(monkeypatch):
    compiler = c_build.Compiler(("ccache", "gcc-12"), "/usr/bin/gcc-12", "gcc-12 (Debian) 12.2.0")
    values = {"CC": "gcc -pthread", "LDSHARED": "gcc -pthread -shared -L/opt/py/lib"}
    monkeypatch.setattr(c_build.sysconfig, "get_config_var", values.get)
    assert c_build.link_command(compiler) == ["ccache", "gcc-12", "-shared", "-L/opt/py/lib"]
    values["LDSHARED"] = "clang -bundle -undefined dynamic_lookup"  # built by another driver: kept as it is
    assert c_build.link_command(compiler) == ["clang", "-bundle", "-undefined", "dynamic_lookup"]


def test_the_module_is_two_translation_units_that_split_the_entry_points(tmp_path):
    """Part 1 (cffi's wrapper) holds forward, the loss and the optimisers; part 2 only backward; each compiles
    cleanly on its own and together they define every entry point exactly once."""
    networks = [cnnc.read_network(SPECS / "lenet5.cnn")]
    source = generate(networks, "float32")
    c_build.write_parts(tmp_path, "_cnnc_parts_test", source)
    compiler = c_build.find_compiler(tmp_path)
    include = c_build.sysconfig.get_paths()["include"]
    defined = {}
    for part, extra in ((c_build.PART_ONE, [f"-I{include}"]), (c_build.PART_TWO, [])):
        obj = tmp_path / (part + ".o")
        done = subprocess.run([*compiler.command, "-O0", "-fPIC", "-fopenmp", "-Wall", "-Wextra", "-Werror", *extra, "-c", part,
                               "-o", str(obj)], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        symbols = subprocess.run(["nm", "--defined-only", str(obj)], capture_output=True, text=True, check=True).stdout
        defined[part] = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    entry_points = {"model_forward", "cross_entropy_loss", "mse_loss", "all_finite", "sgd_step", "adam_step"}
    assert entry_points <= defined[c_build.PART_ONE] and "model_backward" not in defined[c_build.PART_ONE]
    assert defined[c_build.PART_TWO] == {"model_backward"}


def test_openmp_threads_spin_briefly_then_sleep_unless_the_user_chose():
    environ = {}
    c_build.set_wait_policy(environ)
    assert environ == {"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": c_build.SPIN_COUNT}
    for chosen in ({"OMP_WAIT_POLICY": "active"}, {"GOMP_SPINCOUNT": "0"}):
        environ = dict(chosen)
        c_build.set_wait_policy(environ)
        assert environ == chosen


def test_a_build_keeps_only_the_most_recently_used_entries(tmp_path, monkeypatch):
    """Entries are used (their manifest touched) on every load; a build that adds one discards the least
    recently used beyond MAX_ENTRIES. Staging directories and stray files are not entries."""
    root = tmp_path / "c"
    root.mkdir()
    for age, name in enumerate(["newest", "newer", "older", "oldest"]):
        (root / name).mkdir()
        (root / name / c_build.MANIFEST).write_text("{}")
        stamp = time.time() - 1000 * (age + 1)
        os.utime(root / name / c_build.MANIFEST, (stamp, stamp))
    (root / ".build-abc").mkdir()
    (root / "no-manifest").mkdir()
    c_build.prune_entries(root, keep=2)
    assert sorted(p.name for p in root.iterdir()) == [".build-abc", "newer", "newest", "no-manifest"]

    spec = write_spec(tmp_path, filters=3)
    cache = tmp_path / "cache"
    model = cnnc.load(spec, backend="c", cache_dir=cache)
    (entry,) = [p for p in (cache / "c").iterdir() if not p.name.startswith(".")]
    old = time.time() - 5000
    os.utime(entry / c_build.MANIFEST, (old, old))
    c_build._LOADED.clear()  # as in a new process
    cnnc.load(spec, backend="c", cache_dir=cache)
    assert (entry / c_build.MANIFEST).stat().st_mtime > old + 4000  # the load marked it used
    monkeypatch.setattr(c_build, "MAX_ENTRIES", 1)
    cnnc.load(write_spec(tmp_path, filters=4), backend="c", cache_dir=cache)  # a build: room for one
    remaining = [p for p in (cache / "c").iterdir() if not p.name.startswith(".")]
    assert len(remaining) == 1 and remaining[0] != entry
    assert np.isfinite(model.forward(np.zeros((1, *model.input_shape), np.float32))).all()  # loaded modules keep working


def test_a_module_whose_entry_was_pruned_by_another_process_is_built_again_when_its_file_is_needed(tmp_path):
    """This process loaded the module; another pruned its entry. Loading goes on working, and `cnnc compile`,
    which copies the module file, rebuilds the entry instead of failing on the missing manifest."""
    spec = write_spec(tmp_path, filters=5)
    cache = tmp_path / "cache"
    cnnc.load(spec, backend="c", cache_dir=cache)
    c_build.prune_entries(cache / "c", keep=0)
    assert not [p for p in (cache / "c").iterdir() if not p.name.startswith(".")]
    written = c_backend.compile_to_directory(spec, tmp_path / "out", cache_dir=cache)
    assert any(p.suffix == ".so" for p in written)
    assert [p for p in (cache / "c").iterdir() if not p.name.startswith(".")]  # the entry is back


def test_pruning_skips_an_entry_it_cannot_move(tmp_path, monkeypatch):
    root = tmp_path / "c"
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        (root / name / c_build.MANIFEST).write_text("{}")

    def refuse(entry):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(c_build, "discard", refuse)
    c_build.prune_entries(root, keep=0)  # no exception: a build that made room still succeeds
    assert sorted(p.name for p in root.iterdir()) == ["a", "b", "c"]


def test_a_failing_link_is_a_clear_error_naming_the_link_command(tmp_path, monkeypatch):
    monkeypatch.setattr(c_build, "link_command", lambda compiler: ["sh", "-c", "echo 'ld: cannot find -lcheese' >&2; exit 1", "link"])
    with pytest.raises(cnnc.CnncError) as info:
        cnnc.load(write_spec(tmp_path, filters=6), backend="c", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "linking the generated module failed" in message and "cannot find -lcheese" in message
    assert 'backend="numpy"' in message


def test_a_compiler_that_hangs_is_stopped_at_the_deadline(tmp_path, monkeypatch):
    fake = tmp_path / "slowcc"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "slowcc 1.0"; exit 0; fi\n'
                    'case "$*" in *module.c*|*backward.c*) sleep 60 ;; esac\n')  # flag probes pass at once
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setattr(c_build, "COMPILE_TIMEOUT_S", 1)
    started = time.monotonic()
    with pytest.raises(cnnc.CnncError, match="did not finish within"):
        cnnc.load(write_spec(tmp_path, filters=7), backend="c", cache_dir=tmp_path / "cache", openmp=False, native=False)
    assert time.monotonic() - started < 20
