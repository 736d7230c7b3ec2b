"""Render a bench.py JSON record as the Markdown quoted in docs/performance.md.

    python bench/to_markdown.py bench/results/<run>.json > section.md

The figures in the docs come from the record by this script, never typed by hand.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_summary  # noqa: E402
from report import BUSY_CORES, CHECK_TOLERANCE, fmt_latency, fmt_pct, fmt_rate, fmt_ratio, fmt_target_value  # noqa: E402


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def model_rows(record: dict, key: str) -> list[list[str]]:
    out = []
    for r in (r for r in record["rows"] if r["model"] == key):
        if r["status"] != "ok":
            out.append([r["backend"], str(r["threads"]), r["note"]] + [""] * 8)
            continue
        d, v = r["derived"], r.get("versus") or {}
        load = d.get("other_load_cores")
        differs = r.get("check_diff") is not None and r["check_diff"] > CHECK_TOLERANCE
        out.append([
            r["backend"] + (" (outputs DIFFER)" if differs else ""), str(r["threads"]),
            f"{fmt_latency(d['latency_b1_us'])} +-{d['latency_b1_spread_pct']:.0f}%", fmt_ratio(v.get("latency_ratio")),
            f"{fmt_rate(d['infer_ips']['median'])} +-{d['infer_spread_pct']:.0f}%", fmt_ratio(v.get("infer_ratio")),
            f"{fmt_rate(d['train_ips']['median'])} +-{d['train_spread_pct']:.0f}%", fmt_ratio(v.get("train_ratio")),
            f"{d['infer_gflops']:.1f} ({fmt_pct(d.get('infer_gemm_fraction'))})",
            f"{d['train_gflops']:.1f} ({fmt_pct(d.get('train_gemm_fraction'))})",
            "" if load is None else f"{load:.2f}" + (" *" if load > BUSY_CORES else ""),
        ])
    return out


HEADER = ["backend", "threads", "latency b1", "vs torch", "infer img/s b64", "vs torch", "train img/s b64", "vs torch",
          "infer GFLOP/s (%GEMM)", "train GFLOP/s (%GEMM)", "other load"]


def gemm_rows(gemm: dict) -> list[list[str]]:
    rows = []
    for threads, entry in gemm["rates"].items():
        for name, r in entry["variants"].items():
            if "gflops" not in r:
                rows.append([threads, name, "failed", ""])
                continue
            arch = next((p.get("architecture") for p in r["thread_report"].get("pools", [])
                         if isinstance(p, dict) and p.get("internal_api") == "openblas"), "?")
            rows.append([threads, name, f"{r['gflops']:.0f} (IQR {r['gflops_p25']:.0f}-{r['gflops_p75']:.0f})", arch])
    return rows


def render(record: dict) -> str:
    git = record["git"]
    dirty = f" plus uncommitted: {', '.join(git['dirty_files'])}" if git["dirty_files"] else ""
    parts = [
        f"Run {record['started']} to {record['finished']}, commit `{(git['commit'] or '?')[:12]}`{dirty}.",
        f"Machine: {machine_summary(record['machine'])}.",
        f"Command: `python {' '.join(record['command'])}`; record: `{record.get('path', '?')}`.",
    ]
    if record.get("gemm"):
        parts.append("\nsgemm " + f"{record['gemm']['size']}^3 through NumPy (GFLOP/s):\n\n"
                     + md_table(["threads", "environment", "GFLOP/s", "OpenBLAS kernel"], gemm_rows(record["gemm"])))
    for key, info in record["models"].items():
        parts.append(f"\n**{key}** (`{info['spec']}`, {info['macs']:,} MACs/image, {info['params']:,} parameters)\n\n"
                     + md_table(HEADER, model_rows(record, key)))
    if record.get("compile"):
        rows = [[k, f"{c['cold_compile_s']:.2f} s" if "cold_compile_s" in c else "",
                 f"{c['cached_load_ms']:.1f} ms" if "cached_load_ms" in c else "",
                 f"{c['cached_load_import_ms']:.1f} ms" if "cached_load_import_ms" in c else "",
                 f"{c['import_cnnc_ms']:.1f} ms" if "import_cnnc_ms" in c else "",
                 f"{c['fresh_process_load_ms']:.1f} ms" if "fresh_process_load_ms" in c else "",
                 f"{c['directory_load_ms']:.1f} ms" if "directory_load_ms" in c else "", "; ".join(c["errors"])]
                for k, c in record["compile"].items()]
        parts.append("\nCompile and load (C backend):\n\n"
                     + md_table(["model", "cold compile", "cached load (spec)", "of which C backend import", "import cnnc", "import + load", "load (compiled dir)", "errors"],
                              rows))
    backends = [b for b in record["settings"]["backends"] if b != "torch"]
    if record.get("targets") and backends:
        rows = [[t["model"], t["text"]] + [f"{fmt_target_value(t['metric'], t['backends'][b]['value'])} "
                                           f"{t['backends'][b]['status']}".strip() for b in backends]
                for t in record["targets"]]
        parts.append("\nTargets:\n\n" + md_table(["model", "target"] + backends, rows))
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python bench/to_markdown.py RESULT.json", file=sys.stderr)
        return 2
    record = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    record.setdefault("path", argv[0])
    print(render(record), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
