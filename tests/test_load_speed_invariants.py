"""What the fast cached load must keep: a spec file's IR read from the IR cache is exactly the IR the
parser and shape checker produce (and is never read or written for other text, another file name or
another front end); initial parameters are exactly those of the original formula; the C module
cache key still follows every file of the code generator. Timings live in bench/, not here."""
from __future__ import annotations

import json
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

SPECS = Path(__file__).resolve().parent.parent / "specs"
SPEC = "model small {\n  input image[1, 9, 9]\n  conv2d c1(filters=FILTERS, kernel=3, activation=relu)\n  maxpool2d p(size=3)\n  flatten\n  dense out(units=3)\n}\n"


def write_spec(path: Path, filters: int = 4) -> Path:
    path.write_text(SPEC.replace("FILTERS", str(filters)))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private cnnc cache directory, so every test starts with no IR entries."""
    monkeypatch.setenv("CNNC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    """The file names the front end actually parsed (not read from the IR cache), in order."""
    calls, parse = [], frontend.network_list_from_text

    def counting(text, file="<string>"):
        calls.append(file)
        return parse(text, file)

    monkeypatch.setattr(frontend, "network_list_from_text", counting)
    return calls


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "ir").glob("*.pickle")) if (cache / "ir").is_dir() else []


# ---- the IR cache --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(SPECS.glob("*.cnn")), ids=lambda p: p.name)
def test_every_shipped_spec_reads_back_from_the_ir_cache_exactly_as_parsed(path, cache, parses):
    parsed = frontend.network_list_from_text(path.read_text(), str(path))
    first = cnnc.networks_from_file(path)
    second = cnnc.networks_from_file(path)
    assert parses == [str(path), str(path)]  # the explicit parse above, then the miss; the second call hit
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
    assert parses == [str(spec)] * 2 and len(entries(cache)) == 2  # the third read hit the first entry


def test_the_same_text_in_another_file_gets_its_own_locations(tmp_path, cache, parses):
    a, b = write_spec(tmp_path / "a.cnn"), write_spec(tmp_path / "b.cnn")
    net_a, net_b = cnnc.read_network(a), cnnc.read_network(b)
    assert parses == [str(a), str(b)]
    assert net_a.file == str(a) and net_b.file == str(b)
    assert net_b.layers[0].loc.file == str(b) and net_b.warnings[0].loc.file == str(b)  # maxpool drops a row
    assert net_b == frontend.network_list_from_text(b.read_text(), str(b))[0]


def test_a_spec_with_errors_is_not_remembered(tmp_path, cache, parses):
    spec = tmp_path / "bad.cnn"
    spec.write_text("model m {\n  input x[1, 4, 4]\n  conv2d c(filters=2, kernel=7)\n}\n")
    for _ in range(2):
        with pytest.raises(SpecError, match="kernel 7 is larger"):
            cnnc.read_network(spec)
    assert parses == [str(spec)] * 2 and entries(cache) == []


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
    assert parses == [str(spec)] * 2
    assert pickle.loads(entry.read_bytes())["networks"] == [expected]  # written again


def test_an_unwritable_cache_only_costs_a_parse(tmp_path, monkeypatch, parses):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CNNC_CACHE_DIR", str(blocker))  # its ir/ directory cannot be made
    spec = write_spec(tmp_path / "a.cnn")
    assert cnnc.read_network(spec) == cnnc.read_network(spec)
    assert parses == [str(spec)] * 2


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
def test_editing_any_front_end_file_changes_the_fingerprint(tmp_path, edited):
    copies = copy_front_end(tmp_path)
    before = frontend._hash_front_end(frontend._stamps(copies))
    copies[edited].write_bytes(copies[edited].read_bytes() + b"\n")
    assert frontend._hash_front_end(frontend._stamps(copies)) != before


def test_a_front_end_edited_after_import_neither_reads_nor_writes_the_cache(tmp_path, cache, parses, monkeypatch):
    """The process runs the code it imported; once a file differs from that, entries keyed by the files
    on disk are not this process's to read or write."""
    copies = copy_front_end(tmp_path)
    monkeypatch.setattr(frontend, "front_end_files", lambda: copies)
    monkeypatch.setattr(frontend, "_STAMPS_AT_IMPORT", frontend._stamps(copies))
    spec = write_spec(tmp_path / "a.cnn")
    cnnc.read_network(spec)
    cnnc.read_network(spec)
    assert parses == [str(spec)] and len(entries(cache)) == 1
    copies[2].write_bytes(copies[2].read_bytes() + b"# edited\n")  # shapes.py, say
    assert frontend.front_end_fingerprint() is None
    cnnc.read_network(spec)
    write_spec(spec, filters=6)
    cnnc.read_network(spec)
    assert parses == [str(spec)] * 3 and len(entries(cache)) == 1


def test_a_new_process_reads_a_cached_spec_without_lark_the_parser_or_the_shape_checker(tmp_path, cache):
    """The point of the cache: the second process imports none of the front end's parsing code."""
    spec = SPECS / "mnist_pair.cnn"
    script = textwrap.dedent(f"""
        import json, sys
        import cnnc
        nets = cnnc.networks_from_file({str(spec)!r})
        print(json.dumps({{"nets": repr(nets), "imported": sorted(set(sys.modules) & {{"lark", "cnnc.syntax", "cnnc.shapes"}})}}))
    """)
    env = {**__import__("os").environ, "CNNC_CACHE_DIR": str(cache)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                                      check=True).stdout) for _ in range(2)]
    assert runs[0]["imported"] == ["cnnc.shapes", "cnnc.syntax", "lark"]  # the miss parsed
    assert runs[1]["imported"] == []
    assert runs[0]["nets"] == runs[1]["nets"] == repr(frontend.network_list_from_text(spec.read_text(), str(spec)))


def test_a_front_end_edited_during_the_parse_writes_no_entry(tmp_path, cache, monkeypatch):
    """The key is taken before the parse imports cnnc.syntax and cnnc.shapes; if a file changes in
    between, the IR may come from code the key does not name, so it is not remembered."""
    copies = copy_front_end(tmp_path)
    monkeypatch.setattr(frontend, "front_end_files", lambda: copies)
    monkeypatch.setattr(frontend, "_STAMPS_AT_IMPORT", frontend._stamps(copies))
    parse = frontend.network_list_from_text

    def parse_while_syntax_py_is_edited(text, file="<string>"):
        copies[1].write_bytes(copies[1].read_bytes() + b"# edited\n")
        return parse(text, file)

    monkeypatch.setattr(frontend, "network_list_from_text", parse_while_syntax_py_is_edited)
    spec = write_spec(tmp_path / "a.cnn")
    assert cnnc.read_network(spec) == parse(spec.read_text(), str(spec))[0]
    assert entries(cache) == []
