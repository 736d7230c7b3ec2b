"""Turn raw timings into the figures a reader wants: rates, ratios to PyTorch, GFLOP/s against the GEMM
rate, PASS/MISS per target, and the printed tables. Pure functions of the result dicts (no timing here).

How FLOPs are counted (per image):
    forward        = 2 x MACs of the conv and dense layers (cnnc check's MACs column); pooling,
                     activations and the loss are not counted.
    training step  = 3 x forward: the forward pass, the input gradient and the weight gradient each cost
                     about the forward's MACs. The first layer's input gradient is counted although
                     PyTorch skips it (nothing needs it); the SGD update is not counted.
"""
from __future__ import annotations

from dataclasses import dataclass

TRAIN_FLOPS_PER_FORWARD = 3
REFERENCE = "torch"  # the backend every ratio is taken against
CHECK_TOLERANCE = 1e-3  # relative difference of outputs vs PyTorch above which a row is flagged
BUSY_CORES = 0.25  # other processes using more than this many cores during a measurement: flagged "*"


def flops_per_image(macs: int) -> dict[str, float]:
    return {"forward": 2.0 * macs, "train": 2.0 * macs * TRAIN_FLOPS_PER_FORWARD}


def rate_stats(time_stats: dict, batch: int) -> dict:
    """Per-call times of a batch -> images/s: median, and the interquartile range (fast quartile is p25)."""
    return {"median": batch / time_stats["median_s"], "p25": batch / time_stats["p75_s"],
            "p75": batch / time_stats["p25_s"], "samples": time_stats["samples"]}


def spread_pct(time_stats: dict) -> float:
    """Half the interquartile range as a percentage of the median: '181 us +-2%'."""
    return 50.0 * (time_stats["p75_s"] - time_stats["p25_s"]) / time_stats["median_s"]


def derive(record: dict, batch: int, macs: int, gemm_gflops: float | None) -> dict:
    """A worker's timings of one model -> latency, rates, GFLOP/s and fraction of the GEMM rate."""
    flops = flops_per_image(macs)
    infer, train = rate_stats(record["infer_batch"], batch), rate_stats(record["train_batch"], batch)
    derived = {
        "latency_b1_us": record["latency_b1"]["median_s"] * 1e6,
        "latency_b1_spread_pct": spread_pct(record["latency_b1"]),
        "latency_b1_gflops": flops["forward"] / record["latency_b1"]["median_s"] / 1e9,
        "infer_ips": infer, "infer_spread_pct": spread_pct(record["infer_batch"]),
        "infer_gflops": infer["median"] * flops["forward"] / 1e9,
        "train_ips": train, "train_spread_pct": spread_pct(record["train_batch"]),
        "train_gflops": train["median"] * flops["train"] / 1e9,
        "other_load_cores": max_other_load(record),
    }
    if gemm_gflops:
        for what in ("latency_b1", "infer", "train"):
            derived[f"{what}_gemm_fraction"] = derived[f"{what}_gflops"] / gemm_gflops
    return derived


def max_other_load(record: dict) -> float | None:
    """The most CPU (in cores) other processes used during any of a row's three measurements."""
    loads = [record[m].get("other_load_cores") for m in ("latency_b1", "infer_batch", "train_batch")]
    loads = [v for v in loads if v is not None]
    return max(loads) if loads else None


def output_difference(record: dict, reference: dict) -> float:
    """Largest relative difference between two backends' outputs on the same batch and weights."""
    a, b = record["check"]["row0"], reference["check"]["row0"]
    scale = max(max(abs(v) for v in b), 1e-30)
    row = max(abs(x - y) for x, y in zip(a, b)) / scale
    total = abs(record["check"]["abs_sum"] - reference["check"]["abs_sum"]) / max(reference["check"]["abs_sum"], 1e-30)
    return max(row, total)


def versus(derived: dict, reference: dict) -> dict:
    """cnnc / PyTorch: throughput ratios (higher is better) and the latency ratio (lower is better)."""
    return {"latency_ratio": derived["latency_b1_us"] / reference["latency_b1_us"],
            "infer_ratio": derived["infer_ips"]["median"] / reference["infer_ips"]["median"],
            "train_ratio": derived["train_ips"]["median"] / reference["train_ips"]["median"]}


def scaling(one: dict, two: dict) -> dict:
    """Speed-up from 1 to 2 threads of batch throughput."""
    return {"infer_scaling": two["infer_ips"]["median"] / one["infer_ips"]["median"],
            "train_scaling": two["train_ips"]["median"] / one["train_ips"]["median"]}


# ---- targets -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    metric: str  # a key of a row's figures, see target_value
    models: tuple[str, ...]  # model keys it applies to; () means every model
    op: str  # ">=" or "<="
    threshold: float
    text: str

    def applies_to(self, key: str) -> bool:
        return not self.models or key in self.models

    def holds(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


SMALL = ("lenet5", "mnist_cnn")
GRAPHS = ("resnet8", "mobilenet_small")  # issue 14's residual and depthwise-separable examples
TARGETS = (
    Target("train_ratio", SMALL, ">=", 2.0, "training img/s (batch 64, 1 thread) >= 2x PyTorch"),
    Target("latency_ratio", SMALL, "<=", 0.2, "inference latency (batch 1, 1 thread) <= 1/5 of PyTorch"),
    Target("train_ratio", ("vgg_small",), ">=", 0.8, "training img/s (batch 64, 1 thread) >= 0.8x PyTorch"),
    Target("train_ratio", GRAPHS, ">=", 1.5, "training img/s (batch 64, 1 thread) >= 1.5x PyTorch"),
    Target("latency_ratio", GRAPHS, "<=", 0.3, "inference latency (batch 1, 1 thread) <= 0.3x PyTorch"),
    Target("train_scaling_vs_torch", (), ">=", 1.0, "2-thread speed-up of training (batch 64) >= PyTorch's"),
    Target("infer_scaling_vs_torch", (), ">=", 1.0, "2-thread speed-up of inference (batch 64) >= PyTorch's"),
    Target("cold_compile_s", ("lenet5",), "<=", 3.0, "cold `cnnc compile` (empty cache) < 3 s"),
    Target("cached_load_ms", (), "<=", 50.0, "cached cnnc.load in a fresh process < 50 ms"),
)
COMPILE_METRICS = ("cold_compile_s", "cached_load_ms")


def target_value(metric: str, figures: dict) -> float | None:
    """figures: a row's one-thread comparison figures plus scaling and compile figures, by metric name."""
    return figures.get(metric)


def evaluate_targets(keys: list[str], figures: dict[str, dict[str, dict]], backends: list[str],
                     unavailable: dict[str, str]) -> list[dict]:
    """One dict per (target, model): the value and PASS / MISS / a note for each cnnc backend.

    figures[backend][model key] holds the metrics named by Target.metric (missing when not measured);
    unavailable[backend] says why a backend has no figures at all ("not built yet").
    """
    rows = []
    for target in TARGETS:
        for key in keys:
            if not target.applies_to(key):
                continue
            row = {"model": key, "metric": target.metric, "op": target.op, "threshold": target.threshold,
                   "text": target.text, "backends": {}}
            for backend in backends:
                if target.metric in COMPILE_METRICS and backend != "c":
                    row["backends"][backend] = {"status": "-", "value": None}  # only the C backend compiles
                    continue
                if backend in unavailable:
                    row["backends"][backend] = {"status": unavailable[backend], "value": None}
                    continue
                value = target_value(target.metric, figures.get(backend, {}).get(key, {}))
                status = "n/a" if value is None else ("PASS" if target.holds(value) else "MISS")
                row["backends"][backend] = {"status": status, "value": value}
            rows.append(row)
    return rows


# ---- printing ------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def fmt_rate(ips: float) -> str:
    return f"{ips / 1000:.2f}k" if ips >= 1000 else f"{ips:.1f}"


def fmt_latency(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} us"


def fmt_ratio(r: float | None) -> str:
    return "" if r is None else f"{r:.2f}x"


def fmt_pct(fraction: float | None) -> str:
    return "" if fraction is None else f"{100 * fraction:.0f}%"


def short_note(row: dict) -> str:
    return row["note"] if len(row["note"]) <= 24 else row["note"].split(":")[0] + " (below)"


def model_rows(rows: list[dict]) -> list[list[str]]:
    """rows: [{"backend", "threads", "status", "note", "derived", "versus", "check_diff"}] of one model."""
    out = []
    for r in rows:
        if r["status"] != "ok":
            out.append([r["backend"], str(r["threads"]), short_note(r)] + [""] * (len(MODEL_HEADER) - 3))
            continue
        d, v = r["derived"], r.get("versus") or {}
        flag = "" if r.get("check_diff") is None or r["check_diff"] <= CHECK_TOLERANCE else " DIFFERS"
        load = d.get("other_load_cores")
        out.append([
            r["backend"] + flag, str(r["threads"]),
            fmt_latency(d["latency_b1_us"]), f"+-{d['latency_b1_spread_pct']:.0f}%", fmt_ratio(v.get("latency_ratio")),
            fmt_rate(d["infer_ips"]["median"]), f"+-{d['infer_spread_pct']:.0f}%", fmt_ratio(v.get("infer_ratio")),
            f"{d['infer_gflops']:.1f}", fmt_pct(d.get("infer_gemm_fraction")),
            fmt_rate(d["train_ips"]["median"]), f"+-{d['train_spread_pct']:.0f}%", fmt_ratio(v.get("train_ratio")),
            f"{d['train_gflops']:.1f}", fmt_pct(d.get("train_gemm_fraction")),
            "" if load is None else f"{load:.2f}" + (" *" if load > BUSY_CORES else ""),
        ])
    return out


MODEL_HEADER = ["backend", "thr", "latency b1", "spread", "vs torch", "infer img/s", "spread", "vs torch",
                "GFLOP/s", "%GEMM", "train img/s", "spread", "vs torch", "GFLOP/s", "%GEMM", "other load"]


def model_table(rows: list[dict]) -> str:
    """The figures of one model, then the full text of any failure."""
    text = table(MODEL_HEADER, model_rows(rows), right=set(range(2, len(MODEL_HEADER))))
    notes = [f"  {r['backend']}, {r['threads']} thread(s): {r['note']}" for r in rows
             if r["status"] != "ok" and short_note(r) != r["note"]]
    return "\n".join([text] + notes)


def compile_table(compile_times: dict) -> str:
    def ms(c, key):
        return f"{c[key]:.1f} ms" if key in c else ""

    body = [[k, f"{c['cold_compile_s']:.2f} s" if "cold_compile_s" in c else "", ms(c, "cached_load_ms"),
             ms(c, "cached_load_import_ms"), ms(c, "import_cnnc_ms"), ms(c, "fresh_process_load_ms"),
             ms(c, "directory_load_ms"), "; ".join(c["errors"])]
            for k, c in compile_times.items()]
    return table(["model", "cold compile", "cached load (spec)", "of which C backend import", "import cnnc", "import + load", "load (compiled dir)", "errors"], body)


def fmt_target_value(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    if metric == "cold_compile_s":
        return f"{value:.2f} s"
    if metric == "cached_load_ms":
        return f"{value:.1f} ms"
    return f"{value:.2f}x"


def targets_table(rows: list[dict], backends: list[str]) -> str:
    header = ["model", "target"] + backends
    body = []
    for row in rows:
        cells = []
        for backend in backends:
            b = row["backends"][backend]
            value = fmt_target_value(row["metric"], b["value"])
            cells.append(f"{value} {b['status']}".strip())
        body.append([row["model"], row["text"]] + cells)
    return table(header, body)
