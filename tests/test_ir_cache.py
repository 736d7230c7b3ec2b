"""The IR cache (cnnc/frontend.py): a spec file's shape-checked IR, remembered in the cache directory and
keyed by content alone (the file's name and text, the contents of the front end's files, the versions).
A hit is exactly the IR the parser and shape checker produce; any other text, file name or front end
misses; a damaged, foreign or unwritable cache only costs a parse; a cached load in a new process imports
neither Lark nor the parser nor the shape checker. Timings are in docs/performance.md, not here."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cnnc
from cnnc import frontend
from cnnc.diagnostics import SpecError
from cnnc.fileio import cache_home

from conftest import SPECS

SPEC = "model small {\n  input image[1, 9, 9]\n  conv2d c1(filters=FILTERS, kernel=3, activation=relu)\n  maxpool2d p(size=3)\n  flatten\n  dense out(units=3)\n}\n"


def write_spec(path: Path, filters: int = 4) -> Path:
    path.write_text(SPEC.replace("FILTERS", str(filters)))
    return path


@pytest.fixture
def shared_c_cache() -> str:
    """The usual C module cache (taken before `cache` moves cache_home()), so C tests compile nothing new."""
    return str(cache_home())


@pytest.fixture
def cache(private_cache) -> Path:
    """A private cnnc cache directory, so every test starts with no IR entries."""
    return private_cache


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    """The texts Lark actually parsed (not read from the IR cache), in order. Lark is patched, not the
    front end: replacing a front-end function stops the cache from remembering, as it must."""
    import lark

    calls, parse = [], lark.Lark.parse

    def counting(self, text, *args, **kwargs):
        calls.append(text)
        return parse(self, text, *args, **kwargs)

    monkeypatch.setattr(lark.Lark, "parse", counting)
    return calls


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "ir").glob("*.pickle")) if (cache / "ir").is_dir() else []


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.cnn")), ids=lambda p: p.name)
def test_every_shipped_spec_reads_back_from_the_ir_cache_exactly_as_parsed(path, cache, parses):
    parsed = frontend.network_list_from_text(path.read_text(), str(path))
    first = cnnc.networks_from_file(path)
    second = cnnc.networks_from_file(path)
    assert len(parses) == 2  # the explicit parse above, then the miss; the second call hit
    assert len(entries(cache)) == 1
    assert first == parsed and second == parsed  # every field: layers, shapes, params, locations, warnings
    assert repr(second) == repr(parsed)
    assert second[0].warnings == parsed[0].warnings and second[0].file == str(path)


def test_a_changed_text_is_parsed_again(tmp_path, cache, parses):
    spec = write_spec(tmp_path / "a.cnn", filters=4)
    assert cnnc.read_network(spec).layers[0].out_shape == (4, 7, 7)
    write_spec(spec, filters=5)
    assert cnnc.read_network(spec).layers[0].out_shape == (5, 7, 7)
    write_spec(spec, filters=4)
    assert cnnc.read_network(spec).layers[0].out_shape == (4, 7, 7)
    assert len(parses) == 2 and len(entries(cache)) == 2  # the third read hit the first entry


def test_the_same_text_in_another_file_gets_its_own_locations(tmp_path, cache, parses):
    a, b = write_spec(tmp_path / "a.cnn"), write_spec(tmp_path / "b.cnn")
    net_a, net_b = cnnc.read_network(a), cnnc.read_network(b)
    assert len(parses) == 2
    assert net_a.file == str(a) and net_b.file == str(b)
    assert net_b.layers[0].loc.file == str(b) and net_b.warnings[0].loc.file == str(b)  # maxpool drops a row
    assert net_b == frontend.network_list_from_text(b.read_text(), str(b))[0]


def test_a_spec_with_errors_is_not_remembered(tmp_path, cache, parses):
    spec = tmp_path / "bad.cnn"
    spec.write_text("model m {\n  input x[1, 4, 4]\n  conv2d c(filters=2, kernel=7)\n}\n")
    for _ in range(2):
        with pytest.raises(SpecError, match="kernel 7 is larger"):
            cnnc.read_network(spec)
    assert len(parses) == 2 and entries(cache) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "other_text", "not_networks", "old_format"])
def test_a_damaged_or_foreign_entry_is_parsed_again_and_replaced(tmp_path, cache, parses, damage):
    spec = write_spec(tmp_path / "a.cnn")
    expected = cnnc.read_network(spec)
    (entry,) = entries(cache)
    good = pickle.loads(entry.read_bytes())
    damaged = {
        "garbage": b"not a pickle",
        "truncated": entry.read_bytes()[:50],
        "foreign": pickle.dumps([1, 2, 3]),
        "other_text": pickle.dumps({**good, "text": good["text"] + "\n"}),
        "not_networks": pickle.dumps({**good, "networks": ["small"]}),
        "old_format": pickle.dumps({**good, "format": frontend.IR_FORMAT - 1}),
    }[damage]
    entry.write_bytes(damaged)
    assert cnnc.read_network(spec) == expected
    assert len(parses) == 2
    assert pickle.loads(entry.read_bytes())["networks"] == [expected]  # written again


def test_an_unwritable_cache_only_costs_a_parse(tmp_path, monkeypatch, parses):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CNNC_CACHE_DIR", str(blocker))  # its ir/ directory cannot be made
    spec = write_spec(tmp_path / "a.cnn")
    assert cnnc.read_network(spec) == cnnc.read_network(spec)
    assert len(parses) == 2


def copy_front_end(tmp_path: Path) -> list[Path]:
    copies = []
    for k, path in enumerate(frontend.front_end_files()):
        copy = tmp_path / "front" / f"{k}-{path.name}"
        copy.parent.mkdir(exist_ok=True)
        shutil.copy2(path, copy)
        copies.append(copy)
    return copies


def test_every_front_end_file_is_part_of_the_key():
    names = [p.name for p in frontend.front_end_files()]
    for module in ("frontend.py", "syntax.py", "shapes.py", "ir.py", "diagnostics.py", "cnn.lark"):
        assert module in names
    import lark

    assert Path(lark.__file__) in frontend.front_end_files()  # holds Lark's version


@pytest.mark.parametrize("edited", range(len(frontend.front_end_files())))
def test_editing_any_front_end_file_changes_the_key(tmp_path, edited, monkeypatch):
    """The key is the files' contents: an edited copy of any of them is another front end."""
    copies = copy_front_end(tmp_path)
    monkeypatch.setattr(frontend, "front_end_files", lambda: copies)
    fingerprints = []
    for edit in (b"", b"\n"):
        copies[edited].write_bytes(copies[edited].read_bytes() + edit)
        frontend.front_end_fingerprint.cache_clear()
        fingerprints.append(frontend.front_end_fingerprint())
    frontend.front_end_fingerprint.cache_clear()
    assert None not in fingerprints and fingerprints[0] != fingerprints[1]
    spec = "model m {\n  input x[4]\n  relu\n}\n"
    paths = {frontend.ir_cache_path(spec, "m.cnn", fingerprint) for fingerprint in fingerprints}
    assert len(paths) == 2


def test_a_front_end_that_cannot_be_read_caches_nothing(tmp_path, cache, parses, monkeypatch):
    monkeypatch.setattr(frontend, "front_end_files", lambda: [tmp_path / "missing.py"])
    frontend.front_end_fingerprint.cache_clear()
    try:
        spec = write_spec(tmp_path / "a.cnn")
        assert cnnc.read_network(spec) == cnnc.read_network(spec)
        assert len(parses) == 2 and entries(cache) == []
    finally:
        monkeypatch.undo()
        frontend.front_end_fingerprint.cache_clear()


@pytest.mark.usefixtures("no_ir_cache")
def test_with_the_cache_off_a_front_end_patched_at_run_time_makes_the_ir(tmp_path, cache, monkeypatch):
    """Tests that replace front-end code turn the cache off (the no_ir_cache fixture): the IR is then the
    patched code's, and nothing is read from or written to the cache."""
    from cnnc import shapes

    spec = write_spec(tmp_path / "a.cnn")
    genuine = frontend.network_list_from_text(spec.read_text(), str(spec))[0]
    monkeypatch.setattr(shapes, "_feeds_relu", lambda layers, i: False)  # c1 feeds a ReLU: He, unless told otherwise
    patched = cnnc.read_network(spec)
    assert patched.layers[0].params[0].init == "glorot" != genuine.layers[0].params[0].init
    assert entries(cache) == []


def test_a_new_process_reads_a_cached_spec_without_lark_the_parser_or_the_shape_checker(tmp_path, cache):
    """The point of the cache: the second process imports none of the front end's parsing code."""
    spec = SPECS / "mnist_pair.cnn"
    script = textwrap.dedent(f"""
        import json, sys
        import cnnc
        nets = cnnc.networks_from_file({str(spec)!r})
        print(json.dumps({{"nets": repr(nets), "imported": sorted(set(sys.modules) & {{"lark", "cnnc.syntax", "cnnc.shapes"}})}}))
    """)
    env = {**os.environ, "CNNC_CACHE_DIR": str(cache)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                                      check=True).stdout) for _ in range(2)]
    assert runs[0]["imported"] == ["cnnc.shapes", "cnnc.syntax", "lark"]  # the miss parsed
    assert runs[1]["imported"] == []
    assert runs[0]["nets"] == runs[1]["nets"] == repr(frontend.network_list_from_text(spec.read_text(), str(spec)))


def test_the_ir_cache_keeps_the_most_recently_used_entries(tmp_path, cache, parses, monkeypatch):
    monkeypatch.setattr(frontend, "IR_CACHE_ENTRIES", 2)
    a, b, c = (write_spec(tmp_path / f"{name}.cnn", filters) for name, filters in (("a", 1), ("b", 2), ("c", 3)))
    cnnc.read_network(a)
    cnnc.read_network(b)
    cnnc.read_network(a)  # a hit, so b is now the least recently used
    cnnc.read_network(c)  # makes room: b goes
    assert len(entries(cache)) == 2
    cnnc.read_network(a)
    cnnc.read_network(b)
    assert parses == [a.read_text(), b.read_text(), c.read_text(), b.read_text()]


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_a_cached_load_in_a_new_process_imports_nothing_it_does_not_need(backend, tmp_path, shared_c_cache):
    """A second process loading the same spec reads the IR from the cache: it imports neither Lark nor
    the parser nor the optimisers nor the checkpoint format, and (C) renders no C: jinja2 stays out."""
    script = textwrap.dedent(f"""
        import json, sys
        import cnnc
        options = {{"cache_dir": {shared_c_cache!r}}} if {backend!r} == "c" else {{}}
        m = cnnc.load({str(SPECS / "vgg_small.cnn")!r}, backend={backend!r}, seed=4, **options)
        imported = sorted(set(sys.modules) & {{"lark", "cnnc.syntax", "cnnc.shapes", "jinja2", "cnnc.optim",
                                               "cnnc.checkpoint"}})
        assert cnnc.optim.Adam.__module__ == "cnnc.optim"  # still there when asked for
        print(json.dumps({{"first": float(m.params["fc1.weight"][0, 0]), "imported": imported}}))
    """)
    env = {**os.environ, "CNNC_CACHE_DIR": str(tmp_path / "cache")}
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                                      check=True).stdout) for _ in range(2)]
    assert {"cnnc.shapes", "cnnc.syntax", "lark"} <= set(runs[0]["imported"])  # (jinja2 on a C miss)
    assert runs[1]["imported"] == []
    expected = cnnc.load(SPECS / "vgg_small.cnn", seed=4).params["fc1.weight"][0, 0]
    assert runs[1]["first"] == runs[0]["first"] == float(expected)


def test_a_read_only_cache_is_still_read(tmp_path, cache, parses, monkeypatch):
    """Marking an entry as recently used may fail (a read-only cache directory); the entry is used anyway."""
    spec = write_spec(tmp_path / "a.cnn")
    expected = cnnc.read_network(spec)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr("os.utime", refuse)
    assert cnnc.read_network(spec) == expected
    assert len(parses) == 1
