"""cnnc.fetch against a real HTTP server on 127.0.0.1 serving small gzipped IDX files made here."""
from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import re
import struct
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from cnnc import fetch as fetch_module
from cnnc.datasets import load_dataset
from cnnc.diagnostics import CnncError
from cnnc.cli.data import add_parsers as add_data_parser
from cnnc.cli.data import run_data_fetch
from cnnc.fetch import FILES, fetch
from cnnc.fileio import atomic_write_bytes

NAMES = list(FILES["mnist"])  # the four .gz file names


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


@pytest.fixture
def served(tmp_path):
    """A directory of four small .gz IDX files behind http://127.0.0.1:PORT/, and its request log."""
    root = tmp_path / "www"
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.arange(10, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.array([3, 1, 4, 1], dtype=np.uint8),
    }
    for name, array in arrays.items():
        atomic_write_bytes(root / name, gzip.compress(idx_bytes(array), mtime=0))
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_request(self, *args):  # once per request, whatever the status
            requests.append(self.path)

        def log_message(self, *args):  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield argparse.Namespace(url=f"http://127.0.0.1:{server.server_port}/", root=root, arrays=arrays,
                                 requests=requests, sha256={n: sha(root / n) for n in NAMES})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_downloads_verifies_and_the_result_loads(served, tmp_path):
    dest = tmp_path / "dest"
    assert fetch("mnist", base_url=served.url, dest=dest, progress=False, sha256=served.sha256) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES)  # no temporary files left
    for name in NAMES:
        assert (dest / name).read_bytes() == (served.root / name).read_bytes()
    ds = load_dataset(dest)
    assert ds.x_train.shape == (10, 1, 28, 28)
    np.testing.assert_array_equal(ds.y_test, [3, 1, 4, 1])
    assert sorted(served.requests) == sorted(f"/{n}" for n in NAMES)


def test_checksum_mismatch_leaves_no_file_and_names_both_hashes(served, tmp_path):
    dest = tmp_path / "dest"
    wrong = dict(served.sha256, **{"t10k-images-idx3-ubyte.gz": "0" * 64})
    with pytest.raises(CnncError) as e:
        fetch("mnist", base_url=served.url, dest=dest, progress=False, sha256=wrong)
    text = str(e.value)
    assert f"t10k-images-idx3-ubyte.gz: SHA-256 mismatch for {served.url}t10k-images-idx3-ubyte.gz" in text
    assert f"expected {'0' * 64}, got {served.sha256['t10k-images-idx3-ubyte.gz']}" in text
    # files before it in the table were kept; the mismatched one and everything temporary are gone
    assert sorted(p.name for p in dest.iterdir()) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_the_real_checksum_table_rejects_other_files(served, tmp_path):
    with pytest.raises(CnncError, match=FILES["mnist"]["train-images-idx3-ubyte.gz"].sha256):
        fetch("mnist", base_url=served.url, dest=tmp_path / "d", progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_verified_files_are_not_downloaded_again_and_bad_ones_are_replaced(served, tmp_path):
    dest = tmp_path / "dest"
    fetch("fashion-mnist", base_url=served.url, dest=dest, progress=False, sha256=served.sha256)
    served.requests.clear()
    atomic_write_bytes(dest / "t10k-labels-idx1-ubyte.gz", b"damaged")
    fetch("fashion-mnist", base_url=served.url, dest=dest, progress=False, sha256=served.sha256)
    assert served.requests == ["/t10k-labels-idx1-ubyte.gz"]
    assert sha(dest / "t10k-labels-idx1-ubyte.gz") == served.sha256["t10k-labels-idx1-ubyte.gz"]


def test_a_missing_file_on_the_server_is_an_http_error(served, tmp_path):
    (served.root / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(CnncError, match=re.escape(f"{served.url}train-labels-idx1-ubyte.gz: download failed: HTTP 404")):
        fetch("mnist", base_url=served.url, dest=tmp_path / "d", progress=False, sha256=served.sha256)


def test_mirrors_are_tried_in_order(served, tmp_path, monkeypatch):
    broken = served.url + "no-such-dir/"
    monkeypatch.setitem(fetch_module.MIRRORS, "mnist", (broken, served.url))
    fetch("mnist", dest=tmp_path / "d", progress=False, sha256=served.sha256)
    assert served.requests[:2] == ["/no-such-dir/train-images-idx3-ubyte.gz", "/train-images-idx3-ubyte.gz"]
    assert len(list((tmp_path / "d").iterdir())) == 4


def test_every_mirror_failing_lists_each_failure(tmp_path, monkeypatch):
    monkeypatch.setitem(fetch_module.MIRRORS, "mnist", ("file:///nonexistent/a/", "file:///nonexistent/b/"))
    with pytest.raises(CnncError) as e:
        fetch("mnist", dest=tmp_path / "d", progress=False)
    assert "file:///nonexistent/a/train-images-idx3-ubyte.gz: download failed" in str(e.value)
    assert "file:///nonexistent/b/train-images-idx3-ubyte.gz: download failed" in str(e.value)


def test_file_urls_work_for_an_offline_mirror(served, tmp_path):
    dest = fetch("mnist", base_url=served.root.as_uri(), dest=tmp_path / "d", progress=False, sha256=served.sha256)
    assert sha(dest / "train-images-idx3-ubyte.gz") == served.sha256["train-images-idx3-ubyte.gz"]


def test_default_destination_is_cnnc_data_dir_then_the_cache(served, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNC_DATA_DIR", str(tmp_path / "data"))
    assert fetch("mnist", base_url=served.url, progress=False, sha256=served.sha256) == tmp_path / "data" / "mnist"
    assert len(load_dataset("mnist").y_train) == 10  # found where it was put
    monkeypatch.delenv("CNNC_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dest = fetch("fashion-mnist", base_url=served.url, progress=False, sha256=served.sha256)
    assert dest == tmp_path / "cache" / "cnnc" / "data" / "fashion-mnist"


def test_unknown_data_set():
    with pytest.raises(CnncError, match="digits: cannot fetch this data set; `cnnc data fetch` knows mnist, fashion-mnist"):
        fetch("digits", progress=False)


def test_progress_goes_to_stderr(served, tmp_path, capsys):
    fetch("mnist", base_url=served.url, dest=tmp_path / "d", sha256=served.sha256)
    fetch("mnist", base_url=served.url, dest=tmp_path / "d", sha256=served.sha256)
    err = capsys.readouterr().err
    assert f"downloading {served.url}train-images-idx3-ubyte.gz (9.9 MB)" in err  # the real file's size
    assert "t10k-labels-idx1-ubyte.gz: already present, checksum ok" in err


def test_known_checksum_table_is_complete():
    for name in ("mnist", "fashion-mnist"):
        assert list(FILES[name]) == NAMES
        for remote in FILES[name].values():
            assert re.fullmatch("[0-9a-f]{64}", remote.sha256) and remote.size > 4000


# ---------------------------------------------------------------------------------------------
# The command line


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="cnnc")
    add_data_parser(top.add_subparsers(dest="command"))
    return top


def test_cli_fetch_succeeds_and_reports_where(served, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fetch_module, "FILES", {"mnist": {n: fetch_module.Remote(0, served.sha256[n]) for n in NAMES}})
    args = parser().parse_args(["data", "fetch", "mnist", "--url", served.url, "--dest", str(tmp_path / "d"), "-q"])
    assert args.func(args) == 0
    out = capsys.readouterr()
    assert f"MNIST: the four files are in {tmp_path / 'd'}" in out.out
    assert "cnnc does not look there by default" in out.out
    assert out.err == ""


def test_cli_fetch_failure_prints_the_error_and_returns_1(served, tmp_path, capsys):
    args = parser().parse_args(["data", "fetch", "fashion-mnist", "--url", served.url, "--dest", str(tmp_path / "d")])
    assert run_data_fetch(args) == 1
    err = capsys.readouterr().err
    assert "error: train-images-idx3-ubyte.gz: SHA-256 mismatch" in err
    assert "Traceback" not in err


def test_cli_rejects_an_unknown_data_set(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["data", "fetch", "cifar10"])
    assert "invalid choice: 'cifar10'" in capsys.readouterr().err
