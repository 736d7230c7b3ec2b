"""The benchmark harness (bench/): a tiny real run checked for structure, plus its pure parts.

Not a timed test: nothing here asserts a speed. The smoke run measures LeNet-5 with the NumPy backend
and PyTorch, 1 thread, 2 repeats, a 256^3 GEMM, in a few seconds.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT as REPO
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "bench.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("bench") / "lenet5.json"
    done = run_bench("--models", "lenet5", "--backends", "numpy,torch", "--threads", "1", "--repeats", "2",
                     "--quick", "--gemm-size", "256", "--json", str(out))
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(out.read_text())


def test_smoke_run_records_every_measurement(smoke):
    _, record = smoke
    assert record["schema"] == "cnnc-bench/1"
    assert record["settings"]["threads"] == [1] and record["settings"]["batch"] == 64
    assert record["models"]["lenet5"]["macs"] == 416_520
    assert record["models"]["lenet5"]["flops_per_image"] == {"forward": 833_040.0, "train": 2_499_120.0}
    rows = {(r["backend"], r["threads"]): r for r in record["rows"]}
    assert set(rows) == {("numpy", 1), ("torch", 1)}
    for row in rows.values():
        assert row["status"] == "ok", row["note"]
        d = row["derived"]
        assert d["latency_b1_us"] > 0 and d["infer_ips"]["median"] > 0 and d["train_ips"]["median"] > 0
        assert d["infer_ips"]["p25"] <= d["infer_ips"]["median"] <= d["infer_ips"]["p75"]
        assert d["train_gflops"] == pytest.approx(d["train_ips"]["median"] * 2_499_120 / 1e9)
        assert 0 < d["train_gemm_fraction"] == pytest.approx(
            d["train_gflops"] / record["gemm"]["rates"]["1"]["reference_gflops"])
    for backend in ("numpy", "torch"):
        raw = record["raw"][backend]["1"]["models"][0]
        assert raw["latency_b1"]["samples"] == 2 and raw["train_batch"]["samples"] == 2
        assert record["raw"][backend]["1"]["thread_report"]["OMP_NUM_THREADS"] == "1"
    assert record["raw"]["torch"]["1"]["models"][0]["torch_threads"] == 1


def test_smoke_run_compares_the_same_function(smoke):
    """Same weights and inputs: the NumPy backend and the nn.Sequential agree, so the ratios compare like with like."""
    _, record = smoke
    numpy_row = next(r for r in record["rows"] if r["backend"] == "numpy")
    assert numpy_row["check_diff"] < 1e-4
    numpy_raw = record["raw"]["numpy"]["1"]["models"][0]
    torch_raw = record["raw"]["torch"]["1"]["models"][0]
    assert numpy_raw["loss0"] == pytest.approx(torch_raw["loss0"], rel=1e-4)
    v = numpy_row["versus"]
    assert v["train_ratio"] == pytest.approx(numpy_row["derived"]["train_ips"]["median"] /
                                             next(r for r in record["rows"] if r["backend"] == "torch")["derived"]["train_ips"]["median"])


def test_smoke_run_prints_tables_and_targets(smoke):
    stdout, record = smoke
    assert "lenet5" in stdout and "vs torch" in stdout and "targets" in stdout
    targets = {(t["model"], t["metric"]): t for t in record["targets"]}
    train = targets[("lenet5", "train_ratio")]
    assert train["threshold"] == 2.0 and train["backends"]["numpy"]["status"] in ("PASS", "MISS")
    assert train["backends"]["numpy"]["value"] == pytest.approx(
        next(r for r in record["rows"] if r["backend"] == "numpy")["versus"]["train_ratio"])
    # One thread only: no scaling figure, and no C backend requested, so no compile timing.
    assert targets[("lenet5", "train_scaling_vs_torch")]["backends"]["numpy"]["status"] == "n/a"
    assert record["compile"] == {}


def test_bad_options_are_reported_without_traceback():
    done = run_bench("--threads", "0", "--no-json")
    assert done.returncode == 2
    assert "--threads takes comma-separated positive integers" in done.stderr and "Traceback" not in done.stderr
    done = run_bench("--models", "nosuch", "--no-json")
    assert done.returncode == 2 and "'nosuch' is neither one of lenet5" in done.stderr


def test_targets_pass_and_miss_by_threshold():
    figures = {"c": {"lenet5": {"train_ratio": 2.5, "latency_ratio": 0.3, "cold_compile_s": 1.2, "cached_load_ms": 80.0}}}
    rows = report.evaluate_targets(["lenet5"], figures, ["c", "numpy"], {"numpy": "not built yet"})
    status = {r["metric"]: r["backends"]["c"]["status"] for r in rows}
    assert status == {"train_ratio": "PASS", "latency_ratio": "MISS", "train_scaling_vs_torch": "n/a",
                      "infer_scaling_vs_torch": "n/a", "cold_compile_s": "PASS", "cached_load_ms": "MISS"}
    numpy_status = {r["metric"]: r["backends"]["numpy"]["status"] for r in rows}
    assert numpy_status["train_ratio"] == "not built yet" and numpy_status["cold_compile_s"] == "-"  # C only
    vgg = report.evaluate_targets(["vgg_small"], {"c": {"vgg_small": {"train_ratio": 0.79}}}, ["c"], {})
    assert [(r["metric"], r["threshold"], r["backends"]["c"]["status"]) for r in vgg][0] == ("train_ratio", 0.8, "MISS")


def test_rates_come_from_per_batch_times():
    times = {"median_s": 0.01, "p25_s": 0.008, "p75_s": 0.016, "min_s": 0.007, "max_s": 0.02, "samples": 5}
    assert report.rate_stats(times, 64) == {"median": 6400.0, "p25": 4000.0, "p75": 8000.0, "samples": 5}
    assert report.spread_pct(times) == pytest.approx(40.0)


TORCH_NET_SPEC = """
model mixed {
    input x[3, 11, 10]
    conv2d a(filters=4, kernel=4, padding=same, activation=leaky_relu)
    avgpool2d p(size=3, stride=2, padding=1)
    conv2d b(filters=5, kernel=(3, 2), stride=(1, 2), dilation=(2, 1), bias=false, activation=tanh)
    maxpool2d m(size=2, padding=1)
    sigmoid
    global_avgpool
    dense out(units=3)
}
"""


GRAPH_SPECS = ["resnet8.cnn", "mobilenet_small.cnn", "inception_small.cnn"]


TORCH_MODEL_CASES = {"asymmetric": TORCH_NET_SPEC, **{name: (REPO / "specs" / name).read_text()
                                                       for name in ["signal1d.cnn", *GRAPH_SPECS]}}


@pytest.mark.parametrize("text, train", [
    pytest.param(text, train, id=f"{name}-{'train' if train else 'eval'}")
    for name, text in TORCH_MODEL_CASES.items()
    for train in (False, True) if not (train and "dropout" in text)])  # dropout: the two draw other masks
def test_torch_model_matches_the_numpy_backend(text, train):
    """bench/torch_net.py builds the same function as cnnc: asymmetric `same` padding, pooling padding, 1-D,
    and graphs (skip connections, concatenation, batch norm in both modes, depthwise convolutions)."""
    torch = pytest.importorskip("torch")
    import cnnc
    from cnnc.backends.numpy_backend import NumpyModel
    from torch_net import load_params, torch_model

    network = cnnc.network_from_text(text)
    model = NumpyModel(network, dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    for name, buffer in model.buffers.items():  # running statistics away from their initial 0 and 1
        buffer[...] = rng.uniform(0.5, 1.5, buffer.shape) if name.endswith("var") else rng.normal(0, 0.3, buffer.shape)
    net, owners = torch_model(network)
    net = net.double().train(train)
    load_params(owners, {**model.params, **model.buffers})
    x = rng.standard_normal((3, *network.input_shape))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x, train=train), expected, rtol=1e-10, atol=1e-12)
    for name, buffer in model.buffers.items():  # train: both updated the running statistics alike
        layer, what = name.rsplit(".", 1)
        np.testing.assert_allclose(buffer, getattr(owners[layer], what).numpy(), rtol=1e-12, atol=1e-14)


def test_markdown_rendering_quotes_the_record(smoke, tmp_path):
    """bench/to_markdown.py renders the docs' tables from a record: the figures in the text are the JSON's."""
    _, record = smoke
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    done = subprocess.run([sys.executable, str(BENCH / "to_markdown.py"), str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    torch_row = next(r for r in record["rows"] if r["backend"] == "torch")
    assert "**lenet5**" in done.stdout and "| torch | 1 |" in done.stdout
    assert report.fmt_rate(torch_row["derived"]["train_ips"]["median"]) in done.stdout
    assert "training img/s (batch 64, 1 thread) >= 2x PyTorch" in done.stdout


def test_c_backend_smoke_run_records_rows_compile_and_load(tmp_path):
    """The C backend through the harness, as the documented command runs it: its row (outputs compared with
    the NumPy backend's), one cold compile and the cached loads, with `import cnnc` timed beside them."""
    out = tmp_path / "c.json"
    done = run_bench("--models", "lenet5", "--backends", "c,numpy", "--threads", "1", "--repeats", "2", "--quick",
                     "--no-gemm", "--compile-repeats", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    (row,) = [r for r in record["rows"] if r["backend"] == "c"]
    assert row["status"] == "ok", row["note"]
    assert row["derived"]["latency_b1_us"] > 0 and row["derived"]["train_ips"]["median"] > 0
    timing = record["compile"]["lenet5"]
    assert timing["errors"] == [] and 0 < timing["cold_compile_s"]
    (load,) = timing["loads"]
    assert len(load["cached"]) == 5 and all("error" not in sample for sample in load["cached"])
    assert 0 < timing["cached_load_ms"] < timing["fresh_process_load_ms"]
    assert timing["fresh_process_load_ms"] == pytest.approx(
        sorted(1000 * (s["import_cnnc_s"] + s["load_s"]) for s in load["cached"])[2])
    assert "import + load" in done.stdout and "cold `cnnc compile`" in done.stdout
