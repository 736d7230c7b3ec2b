"""What the tests share: the repository's paths and the fixtures more than one feature's tests use.

Test files import the constants (`from conftest import ROOT, SPECS`); pytest finds the fixtures itself.
"""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the repository
SPECS = ROOT / "specs"                         # the shipped example specs
INVALID = ROOT / "tests" / "invalid"           # specs with one located error each, and the expected message
DOCS = ROOT / "docs"

# A classifier of 8x8 digits small enough that a 1-epoch run on the NumPy backend takes well under a second.
TINY = """
model tiny {
    input image[1, 8, 8]
    conv2d c1(filters=4, kernel=3, activation=relu)   # -> [4, 6, 6]
    maxpool2d p1(size=2)                               # -> [4, 3, 3]
    flatten
    dense out(units=10)
    loss cross_entropy
}
"""


# The layer kinds of the classic chain models (the first specs/ files): some tests keep those models apart from
# the graphs and the later kinds (tests/test_export_c.py exports the chains, test_export_c_graphs.py the rest).
CLASSIC_KINDS = ("conv1d", "conv2d", "maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d", "global_avgpool", "flatten",
                 "dense", "dropout", "relu", "sigmoid", "tanh", "leaky_relu", "softmax")


def is_classic_chain(network) -> bool:
    """A plain chain (every layer reads the one before it) of CLASSIC_KINDS, as layers and as activation=:
    ungrouped convolutions, pooling without ceil=true or count_pad=false, and no loss but cross_entropy or mse."""
    return (network.is_chain and network.loss in (None, "cross_entropy", "mse")
            and all(layer.kind in CLASSIC_KINDS and layer.activation in (None, *CLASSIC_KINDS) and layer.groups == 1
                    and not layer.ceil and layer.count_pad for layer in network.layers))


@pytest.fixture
def torch():
    """PyTorch, the independent reference; a test that takes this fixture is skipped without it (and only
    such a test is)."""
    return pytest.importorskip("torch")


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Path:
    """tmp/tiny.cnn (TINY) and its freshly initialised weights tmp/tiny.npz; the current directory is tmp."""
    import cnnc

    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    cnnc.load(spec).save(tmp_path / "tiny.npz")
    return spec


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """A private, empty cnnc cache directory (IR entries, parser tables, C modules) for this test."""
    monkeypatch.setenv("CNNC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_ir_cache(monkeypatch) -> None:
    """Every spec parsed and checked afresh: for tests that replace front-end code (cnnc.syntax,
    cnnc.shapes, ...) at run time, whose IR the cache, keyed by the code's contents, must not remember."""
    from cnnc import frontend

    monkeypatch.setattr(frontend, "IR_CACHE", False)


# ---- the C backend's compiled bundles ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The session's C module cache, shared by the compiled bundles of tests/test_c_*.py and the tests that
    compile (or load through the cache) models of their own."""
    return tmp_path_factory.mktemp("cnnc-cache")


def compile_bundles(networks, dtypes, cache_dir: Path, **options) -> dict:
    """{dtype: CModule}: every network in ONE C module per dtype (compile time is what CI pays), the dtypes
    compiled in parallel (each compiler runs in its own process). For session-scoped fixtures. `options` are
    the C backend's build options (e.g. opt="-O1" where compile time matters more than speed)."""
    from concurrent.futures import ThreadPoolExecutor

    from cnnc.backends.c_backend import compile_networks

    networks = list(networks)
    with ThreadPoolExecutor(len(dtypes)) as pool:
        futures = {dtype: pool.submit(compile_networks, networks, dtype, cache_dir=cache_dir, **options)
                   for dtype in dtypes}
        return {dtype: future.result() for dtype, future in futures.items()}
