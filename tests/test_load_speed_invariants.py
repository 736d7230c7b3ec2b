"""What the fast cached load must keep: a spec file's IR read from the IR cache is exactly the IR the
parser and shape checker produce (and is never read or written for other text, another file name or
other front-end code); initial parameters are exactly those of the original formula; a cached load
imports nothing it does not need. (The C module cache's key is
unchanged and tested in test_c_cache.py.) Timings live in bench/, not here."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc import frontend
from cnnc.backends.numpy_backend import NumpyModel
from cnnc.diagnostics import SpecError
from cnnc.fileio import cache_home

SPECS = Path(__file__).resolve().parent.parent / "specs"
SPEC = "model small {\n  input image[1, 9, 9]\n  conv2d c1(filters=FILTERS, kernel=3, activation=relu)\n  maxpool2d p(size=3)\n  flatten\n  dense out(units=3)\n}\n"


def write_spec(path: Path, filters: int = 4) -> Path:
    path.write_text(SPEC.replace("FILTERS", str(filters)))
    return path


@pytest.fixture
def shared_c_cache() -> str:
    """The usual C module cache (taken before `cache` moves cache_home()), so C tests compile nothing new."""
    return str(cache_home())


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private cnnc cache directory, so every test starts with no IR entries."""
    monkeypatch.setenv("CNNC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


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


# ---- the IR cache --------------------------------------------------------------------------------------
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


def use_front_end_copies(tmp_path: Path, monkeypatch) -> list[Path]:
    """Make copies of the front end's files the ones this process was loaded from (as far as the IR cache
    can tell), so that a test can edit them."""
    copies = copy_front_end(tmp_path)
    monkeypatch.setattr(frontend, "front_end_files", lambda: copies)
    monkeypatch.setattr(frontend, "_STAMPS_AT_IMPORT", frontend._stamps(copies))
    monkeypatch.setattr(frontend._front_end_objects, "at_first_parse", None)  # the patches above are the code now
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
    copies = use_front_end_copies(tmp_path, monkeypatch)
    spec = write_spec(tmp_path / "a.cnn")
    cnnc.read_network(spec)
    cnnc.read_network(spec)
    assert len(parses) == 1 and len(entries(cache)) == 1
    copies[2].write_bytes(copies[2].read_bytes() + b"# edited\n")  # shapes.py, say
    assert frontend.front_end_fingerprint() is None
    cnnc.read_network(spec)
    write_spec(spec, filters=6)
    cnnc.read_network(spec)
    assert len(parses) == 3 and len(entries(cache)) == 1


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


def test_a_front_end_edited_during_the_parse_writes_no_entry(tmp_path, cache, monkeypatch):
    """The key is taken before the parse imports cnnc.syntax and cnnc.shapes; if a file changes in
    between, the IR may come from code the key does not name, so it is not remembered."""
    copies = use_front_end_copies(tmp_path, monkeypatch)
    import lark

    parse = lark.Lark.parse

    def parse_while_syntax_py_is_edited(self, text, *args, **kwargs):
        copies[1].write_bytes(copies[1].read_bytes() + b"# edited\n")
        return parse(self, text, *args, **kwargs)

    monkeypatch.setattr(lark.Lark, "parse", parse_while_syntax_py_is_edited)
    spec = write_spec(tmp_path / "a.cnn")
    network = cnnc.read_network(spec)
    monkeypatch.undo()
    assert network == frontend.network_list_from_text(spec.read_text(), str(spec))[0]
    assert entries(cache) == []


@pytest.mark.parametrize("patch", ["function", "constant", "table"])
def test_a_front_end_patched_at_run_time_writes_no_entry(tmp_path, cache, monkeypatch, patch):
    """A test (say) that replaces a function, constant or table entry of the shape checker gets the IR
    that code makes, and the cache does not remember it under the genuine code's key."""
    from cnnc import shapes

    spec = write_spec(tmp_path / "a.cnn")
    genuine = frontend.network_list_from_text(spec.read_text(), str(spec))[0]
    with monkeypatch.context() as patching:
        if patch == "function":  # c1 feeds a ReLU: He-initialised, unless the checker is told otherwise
            patching.setattr(shapes, "_feeds_relu", lambda layers, i: False)
        elif patch == "constant":
            patching.setattr(shapes, "RELU_LIKE", tuple(list(shapes.RELU_LIKE)))  # equal, not the same object
        else:
            infer_pool = shapes._INFER["maxpool2d"]
            patching.setitem(shapes._INFER, "maxpool2d", lambda *args: infer_pool(*args))
        patched = cnnc.read_network(spec)
        assert entries(cache) == []
    if patch == "function":
        assert patched.layers[0].params[0].init == "glorot" != genuine.layers[0].params[0].init
    assert cnnc.read_network(spec) == genuine
    assert len(entries(cache)) == 1


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


# ---- initial parameters ------------------------------------------------------------------------------------
def original_initial_params(network, seed: int, dtype: str) -> dict[str, np.ndarray]:
    """The formula as first written: one Generator seeded `seed`, the tensors in order, each drawn in
    float64 (He-normal, Glorot-uniform or zeros) and cast to the model's dtype."""
    rng = np.random.default_rng(seed)
    params = {}
    for spec in network.param_specs:
        if spec.init == "zeros":
            value = np.zeros(spec.shape)
        elif spec.init == "ones":  # batch norm's weight
            value = np.ones(spec.shape)
        elif spec.init == "he":
            value = rng.normal(0.0, np.sqrt(2.0 / spec.fan_in), size=spec.shape)
        else:
            limit = np.sqrt(6.0 / (spec.fan_in + spec.fan_out))
            value = rng.uniform(-limit, limit, size=spec.shape)
        params[spec.name] = value.astype(dtype)
    return params


def assert_bitwise_equal(params: dict, expected: dict, what: str) -> None:
    assert list(params) == list(expected), what
    for name, value in expected.items():
        got = params[name]
        assert got.dtype == value.dtype and got.shape == value.shape, f"{what}: {name}"
        assert got.tobytes() == value.tobytes(), f"{what}: {name} differs from the original formula"


NETWORKS = [(path, net.name) for path in sorted(SPECS.glob("*.cnn")) for net in cnnc.networks_from_file(path)]


@pytest.mark.parametrize("path,name", NETWORKS, ids=[name for _, name in NETWORKS])
def test_initial_parameters_are_the_original_formulas(path, name, cache):
    network = cnnc.read_network(path, name)
    for dtype in ("float32", "float64"):
        for seed in (0, 7):
            expected = original_initial_params(network, seed, dtype)
            assert_bitwise_equal(NumpyModel(network, dtype, seed).params, expected, f"{name} {dtype} seed {seed}")


@pytest.mark.parametrize("spec", ["lenet5.cnn", "vgg_small.cnn"])
def test_the_c_backend_draws_the_same_initial_values(spec, cache, shared_c_cache):
    network = cnnc.read_network(SPECS / spec)
    model = cnnc.load(SPECS / spec, backend="c", seed=3, cache_dir=shared_c_cache)
    assert_bitwise_equal(model.params, original_initial_params(network, 3, "float32"), f"{spec} on C")


def test_the_dropout_stream_is_seeded_from_the_model_seed():
    network = cnnc.read_network(SPECS / "digits.cnn")
    m = NumpyModel(network, "float32", 11)
    m.seed = 99  # the stream belongs to the seed the model was made with
    assert np.array_equal(m.dropout_rng.random(5), np.random.default_rng([11, 1]).random(5))
    assert m.dropout_rng is m.dropout_rng
    replacement = np.random.default_rng(0)
    m.dropout_rng = replacement
    assert m.dropout_rng is replacement


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_a_cached_load_in_a_new_process_imports_nothing_it_does_not_need(backend, tmp_path, shared_c_cache):
    """A second process loading the same spec reads the IR from the cache: it imports neither Lark nor
    the parser nor the optimisers, and (C) renders no C: jinja2 stays out."""
    script = textwrap.dedent(f"""
        import json, sys
        import cnnc
        options = {{"cache_dir": {shared_c_cache!r}}} if {backend!r} == "c" else {{}}
        m = cnnc.load({str(SPECS / "vgg_small.cnn")!r}, backend={backend!r}, seed=4, **options)
        imported = sorted(set(sys.modules) & {{"lark", "cnnc.syntax", "cnnc.shapes", "jinja2", "cnnc.optim"}})
        assert cnnc.optim.Adam.__module__ == "cnnc.optim"  # still there when asked for
        print(json.dumps({{"first": float(m.params["fc1.weight"][0, 0]), "imported": imported}}))
    """)
    env = {**os.environ, "CNNC_CACHE_DIR": str(tmp_path / "cache")}
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                                      check=True).stdout) for _ in range(2)]
    assert {"cnnc.shapes", "cnnc.syntax", "lark"} <= set(runs[0]["imported"])  # (jinja2 on a C miss)
    assert runs[1]["imported"] == []
    network = cnnc.read_network(SPECS / "vgg_small.cnn")
    assert runs[1]["first"] == runs[0]["first"] == float(original_initial_params(network, 4, "float32")["fc1.weight"][0, 0])


def test_a_read_only_cache_is_still_read(tmp_path, cache, parses, monkeypatch):
    """Marking an entry as recently used may fail (a read-only cache directory); the entry is used anyway."""
    spec = write_spec(tmp_path / "a.cnn")
    expected = cnnc.read_network(spec)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr("os.utime", refuse)
    assert cnnc.read_network(spec) == expected
    assert len(parses) == 1
