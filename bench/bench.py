"""cnnc's benchmark: the C backend, the NumPy backend and PyTorch on the same models, inputs and weights.

    python bench/bench.py                                  # everything, 1 and 2 threads
    python bench/bench.py --models lenet5 --threads 1 --quick --json b.json

Measured per model, backend and thread count: inference latency at batch 1, inference images/s at batch
64, training-step images/s at batch 64 (forward, loss, backward, SGD step). Each backend x thread count
runs in its own subprocess (bench/worker.py) with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and
MKL_NUM_THREADS set (and torch.set_num_threads in PyTorch's), so thread pools and allocator state never
leak between measurements. PyTorch's subprocess runs with MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ raised (glibc then keeps freed buffers instead of returning them to the kernel, so
PyTorch's per-step allocations stop page-faulting), and with THP_MEM_ALLOC_ENABLE=1 (huge pages for its
large tensors, as cnnc's activation blocks have): PyTorch is compared at its best.
A float32 GEMM rate (NumPy sgemm, 2048^3) is measured in the same kind of subprocess for each thread
count, and achieved GFLOP/s are reported as a fraction of it. With the C backend present, it also times a
cold `cnnc compile` (empty CNNC_CACHE_DIR) and a cached `cnnc.load` in a fresh process.
See bench/README.md and docs/performance.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

import report  # noqa: E402
from machine import git_record, machine_record, machine_summary  # noqa: E402
from worker import THREAD_VARS, busy_cpu_seconds  # noqa: E402

MODELS = {  # key -> (spec relative to the repository, model name in the file)
    "lenet5": ("specs/lenet5.cnn", None),
    "mnist_cnn": ("specs/mnist_pair.cnn", "mnist_cnn"),
    "vgg_small": ("specs/vgg_small.cnn", None),
    "resnet8": ("specs/resnet8.cnn", None),
    "mobilenet_small": ("specs/mobilenet_small.cnn", None),
}
BACKENDS = ("c", "numpy", "torch")
# glibc: serve blocks up to 1 GiB from the heap instead of fresh mmaps, and never give freed heap memory
# back to the kernel, so a training step reuses already-faulted pages (checked: glibc 2.36 honours values
# this large when they come from the environment). See docs/performance.md.
# PyTorch's own switch for huge pages (c10's alloc_cpu advises MADV_HUGEPAGE on blocks of 2 MiB and more): cnnc's
# C backend advises them for its activation blocks, so PyTorch gets the same.
TORCH_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
                    "THP_MEM_ALLOC_ENABLE": "1"}
OPENBLAS_TUNING_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
TIMING = {  # see worker.time_calls
    "full": {"warmup_s": 0.5, "warmup_calls": 3, "repeats": 30, "min_sample_s": 0.005, "max_s": 8.0},
    "quick": {"warmup_s": 0.05, "warmup_calls": 1, "repeats": 5, "min_sample_s": 0.002, "max_s": 1.0},
}


class BenchError(Exception):
    """A bad command line or a worker that could not run at all; printed without a traceback."""


# ---- the command line ----------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated: {', '.join(MODELS)}, or PATH.cnn[:MODEL] (default: all)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of c,numpy,torch")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--repeats", type=int, help="timed samples per measurement (default 30, 5 with --quick)")
    p.add_argument("--quick", action="store_true", help="short warm-up, few repeats, 1 compile timing: a smoke run")
    p.add_argument("--batch", type=int, default=64, help="batch size of the throughput measurements (default 64)")
    p.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n x n sgemm rate (default 2048)")
    p.add_argument("--no-gemm", action="store_true", help="skip the GEMM rate (no %%GEMM column)")
    p.add_argument("--compile-repeats", type=int, help="cold compiles per model (default 3, 1 with --quick)")
    p.add_argument("--json", metavar="OUT", help="write the results here (default bench/results/<date>-<commit>.json)")
    p.add_argument("--no-json", action="store_true", help="print only")
    p.add_argument("--wait-quiet", type=float, metavar="SECONDS",
                   help="before each subprocess, wait up to this long for other processes to use under "
                        f"{report.BUSY_CORES} cores (default 120, 0 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="weights and inputs seed (default 0)")
    args = p.parse_args(argv)
    args.model_entries = model_entries(args.models)
    args.backend_list = csv_choices(args.backends, BACKENDS, "--backends")
    args.thread_list = positive_ints(args.threads, "--threads")
    timing = dict(TIMING["quick" if args.quick else "full"])
    if args.repeats is not None:
        if args.repeats < 1:
            raise BenchError(f"--repeats must be at least 1; got {args.repeats}")
        timing["repeats"] = args.repeats
    args.timing = timing
    args.compile_repeats = args.compile_repeats or (1 if args.quick else 3)
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 120.0
    if args.batch < 1 or args.gemm_size < 1:
        raise BenchError("--batch and --gemm-size must be positive")
    return args


def csv_choices(text: str, allowed, option: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise BenchError(f"{option} takes a comma-separated subset of {','.join(allowed)}; got {text!r}")
    return items


def positive_ints(text: str, option: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise BenchError(f"{option} takes comma-separated positive integers like 1,2; got {text!r}")
    return sorted(set(values))


def model_entries(text: str) -> list[dict]:
    """--models -> [{"key", "spec" (absolute path), "model"}]."""
    entries = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        if item in MODELS:
            spec, model = MODELS[item]
            entries.append({"key": item, "spec": str(REPO / spec), "model": model})
            continue
        path, _, model = item.partition(":")
        if not path.endswith(".cnn") or not Path(path).is_file():
            raise BenchError(f"--models: {item!r} is neither one of {', '.join(MODELS)} nor an existing PATH.cnn[:MODEL]")
        entries.append({"key": model or Path(path).stem, "spec": str(Path(path).resolve()), "model": model or None})
    if not entries:
        raise BenchError("--models is empty")
    return entries


# ---- subprocesses --------------------------------------------------------------------------------
def worker_env(threads: int, extra: dict | None = None, unset=()) -> dict:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    for var in unset:
        env.pop(var, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra or {})
    return env


def other_load(seconds: float = 1.0) -> float | None:
    """Cores' worth of CPU used by other processes over `seconds` (this driver sleeps meanwhile)."""
    busy0 = busy_cpu_seconds()
    time.sleep(seconds)
    busy1 = busy_cpu_seconds()
    return None if busy0 is None else (busy1 - busy0) / seconds


def wait_for_quiet(max_wait: float) -> dict | None:
    """On a shared machine, wait (up to max_wait seconds) until other processes leave the CPUs alone."""
    if max_wait <= 0:
        return None
    start = time.monotonic()
    while True:
        load = other_load()
        waited = time.monotonic() - start
        if load is None or load < report.BUSY_CORES:
            return {"waited_s": round(waited, 1), "load_cores": load, "quiet": True}
        if waited >= max_wait:
            print(f"    (the machine stayed busy, {load:.2f} cores used by others; measuring anyway)",
                  file=sys.stderr, flush=True)
            return {"waited_s": round(waited, 1), "load_cores": load, "quiet": False}
        time.sleep(2.0)


def run_worker(config: dict, env: dict, workdir: Path, wait_quiet: float = 0.0) -> dict:
    """Run bench/worker.py on `config` in a fresh interpreter; -> its result dict, or {"error": ...}."""
    quiet = wait_for_quiet(wait_quiet)
    tag = f"{config['task']}-{config.get('backend', '')}-{config.get('threads', '')}-{time.monotonic_ns()}"
    config_path, result_path = workdir / f"{tag}.config.json", workdir / f"{tag}.result.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    done = subprocess.run([sys.executable, str(HERE / "worker.py"), str(config_path), str(result_path)],
                          env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0 or not result_path.exists():
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"worker exited with status {done.returncode}: {tail}", "stderr": done.stderr[-4000:],
                "quiet_wait": quiet}
    return {**json.loads(result_path.read_text(encoding="utf-8")), "quiet_wait": quiet}


def c_backend_state() -> str | None:
    """None when the C backend can be imported; else why not ("not built yet" when its module is missing)."""
    if find_spec("cnnc.backends.c_backend") is None:
        return "not built yet"
    probe = subprocess.run([sys.executable, "-c", "from cnnc.backends.c_backend import load_c_model"],
                           env=worker_env(1), cwd=REPO, capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"not importable: {last}"
    return None


# ---- the GEMM rate ---------------------------------------------------------------------------------
def measure_gemm(args, workdir: Path) -> dict:
    """sgemm GFLOP/s per thread count, as the environment stands and, if OPENBLAS_CORETYPE or
    OPENBLAS_L2_SIZE is set, again with both unset (that subprocess only). The reference rate for %GEMM
    is the higher of the two."""
    tuned = [v for v in OPENBLAS_TUNING_VARS if v in os.environ]
    variants = {"as_set": ()} if not tuned else {"as_set": (), "openblas_vars_unset": OPENBLAS_TUNING_VARS}
    out = {"size": args.gemm_size, "openblas_vars": {v: os.environ.get(v) for v in OPENBLAS_TUNING_VARS}, "rates": {}}
    timing = {**args.timing, "min_sample_s": 0.0, "repeats": min(args.timing["repeats"], 10), "warmup_calls": 2}
    for threads in args.thread_list:
        per_variant = {}
        for name, unset in variants.items():
            config = {"task": "gemm", "threads": threads, "size": args.gemm_size, "timing": timing}
            per_variant[name] = run_worker(config, worker_env(threads, unset=unset), workdir, args.wait_quiet)
        ok = [r["gflops"] for r in per_variant.values() if "gflops" in r]
        out["rates"][str(threads)] = {"variants": per_variant, "reference_gflops": max(ok) if ok else None}
    return out


def gemm_line(gemm: dict) -> str:
    parts = []
    for threads, entry in gemm["rates"].items():
        for name, r in entry["variants"].items():
            if "gflops" not in r:
                parts.append(f"{threads} thr ({name}): failed")
                continue
            arch = next((p.get("architecture") for p in r["thread_report"].get("pools", [])
                         if isinstance(p, dict) and p.get("internal_api") == "openblas"), None)
            label = "" if name == "as_set" else ", OPENBLAS_CORETYPE/L2_SIZE unset"
            parts.append(f"{threads} thr{label}: {r['gflops']:.0f} GFLOP/s (IQR {r['gflops_p25']:.0f}-"
                         f"{r['gflops_p75']:.0f}, OpenBLAS kernel {arch})")
    unset_note = "" if any(gemm["openblas_vars"].values()) else " (OPENBLAS_CORETYPE/L2_SIZE not set here)"
    return f"sgemm {gemm['size']}^3 via NumPy{unset_note}: " + "; ".join(parts)


# ---- compile and load times ----------------------------------------------------------------------
def compile_command(entry: dict, out_dir: Path) -> list[str]:
    command = [sys.executable, "-m", "cnnc.cli", "compile", entry["spec"], "-o", str(out_dir)]
    return command + (["--model", entry["model"]] if entry["model"] else [])


LOAD_SAMPLES = 5  # cached loads timed per cold compile, each in a fresh process


def measure_compile(entry: dict, args, workdir: Path) -> dict:
    """Cold `cnnc compile` wall time (fresh interpreter, empty CNNC_CACHE_DIR); then, each in a fresh process,
    cnnc.load of the spec against that cache once to warm it and LOAD_SAMPLES more times ("the cached load"),
    and of the compiled directory once. Python writes and reads bytecode (.pyc) as it does for an installed
    package (pip compiles it at install time), in a private PYTHONPYCACHEPREFIX, even where the environment
    says PYTHONDONTWRITEBYTECODE: without it every process compiles cnnc's modules from source (~15 ms)."""
    colds, loads, errors = [], [], []
    for _ in range(args.compile_repeats):
        cache = Path(tempfile.mkdtemp(prefix=f"cache-{entry['key']}-", dir=workdir))
        env = worker_env(1, {"CNNC_CACHE_DIR": str(cache), "PYTHONPYCACHEPREFIX": str(workdir / "pycache")},
                         unset=("PYTHONDONTWRITEBYTECODE",))
        out_dir = cache / "compiled"
        wait_for_quiet(args.wait_quiet)
        t0 = time.perf_counter()
        done = subprocess.run(compile_command(entry, out_dir), env=env, cwd=workdir, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            errors.append(f"cnnc compile failed ({done.returncode}): {done.stderr.strip()[-500:]}")
            break
        colds.append(elapsed)
        spec_load = {"task": "load", "path": entry["spec"], "model": entry["model"]}
        timings = {"first": run_worker(spec_load, env, workdir),
                   "cached": [run_worker(spec_load, env, workdir) for _ in range(LOAD_SAMPLES)],
                   "directory": run_worker({"task": "load", "path": str(out_dir), "model": None}, env, workdir)}
        failed = [f"{k}: {v['error']}" for k, v in timings.items() if isinstance(v, dict) and "error" in v]
        failed += [f"cached: {v['error']}" for v in timings["cached"] if "error" in v]
        if failed:
            errors += failed
            break
        loads.append(timings)
    result = {"cold_compile_runs_s": colds, "loads": loads, "errors": errors}
    if colds:
        result["cold_compile_s"] = statistics.median(colds)
    if loads:
        cached = [sample for r in loads for sample in r["cached"]]
        result["cached_load_ms"] = 1000 * statistics.median(r["load_s"] for r in cached)
        result["cached_load_import_ms"] = 1000 * statistics.median(r["import_c_backend_s"] for r in cached)
        result["import_cnnc_ms"] = 1000 * statistics.median(r["import_cnnc_s"] for r in cached)
        result["fresh_process_load_ms"] = 1000 * statistics.median(r["import_cnnc_s"] + r["load_s"] for r in cached)
        result["directory_load_ms"] = 1000 * statistics.median(r["directory"]["load_s"] for r in loads)
    return result


# ---- the whole run ---------------------------------------------------------------------------------
def model_info(entries: list[dict]) -> dict:
    import cnnc

    info = {}
    for e in entries:
        n = cnnc.read_network(e["spec"], e["model"])
        info[e["key"]] = {"spec": os.path.relpath(e["spec"], REPO), "model": n.name, "macs": n.macs,
                          "params": n.param_count, "flops_per_image": report.flops_per_image(n.macs)}
    return info


def run_backends(args, workdir: Path, unavailable: dict) -> dict:
    """{backend: {threads: worker result}}, one subprocess each."""
    raw = {}
    for threads in args.thread_list:
        for backend in args.backend_list:
            if backend in unavailable:
                continue
            print(f"  {backend}, {threads} thread(s) ...", file=sys.stderr, flush=True)
            config = {"task": "models", "backend": backend, "threads": threads, "models": args.model_entries,
                      "batch": args.batch, "seed": args.seed, "lr": 0.01, "timing": args.timing}
            env = worker_env(threads, TORCH_MALLOC_ENV if backend == "torch" else None)
            if backend == "c":
                env["CNNC_CACHE_DIR"] = str(workdir / "c-cache")
            raw.setdefault(backend, {})[threads] = run_worker(config, env, workdir, args.wait_quiet)
    return raw


def rows_for(args, raw: dict, info: dict, gemm: dict | None, unavailable: dict) -> list[dict]:
    """One row per (model, backend, threads) with derived figures and comparisons."""
    rows = []
    for entry in args.model_entries:
        key = entry["key"]
        for threads in args.thread_list:
            for backend in args.backend_list:
                row = {"model": key, "backend": backend, "threads": threads, "status": "ok", "note": ""}
                if backend in unavailable:
                    row.update(status="unavailable", note=unavailable[backend])
                    rows.append(row)
                    continue
                result = raw[backend][threads]
                record = next((m for m in result.get("models", []) if m["key"] == key), None)
                if record is None or record["status"] != "ok":
                    why = result.get("error") or (record or {}).get("error", "no result")
                    row.update(status="error", note=f"failed: {why}", raw=record)
                    rows.append(row)
                    continue
                rate = ((gemm or {}).get("rates", {}).get(str(threads)) or {}).get("reference_gflops")
                row.update(raw=record, derived=report.derive(record, args.batch, info[key]["macs"], rate))
                rows.append(row)
    add_comparisons(rows)
    return rows


def add_comparisons(rows: list[dict]) -> None:
    """Ratios to PyTorch at the same thread count, output agreement, and 1 -> 2 thread scaling."""
    ok = {(r["model"], r["backend"], r["threads"]): r for r in rows if r["status"] == "ok"}
    for (key, backend, threads), row in ok.items():
        ref = ok.get((key, report.REFERENCE, threads))
        if ref is not None and backend != report.REFERENCE:
            row["versus"] = report.versus(row["derived"], ref["derived"])
            row["check_diff"] = report.output_difference(row["raw"], ref["raw"])
        one = ok.get((key, backend, 1))
        if one is not None and threads == 2:
            row["scaling"] = report.scaling(one["derived"], row["derived"])


def target_figures(rows: list[dict], compile_times: dict) -> dict:
    """figures[backend][model] = {metric: value} for report.evaluate_targets."""
    figures: dict = {}
    by = {(r["model"], r["backend"], r["threads"]): r for r in rows if r["status"] == "ok"}
    for (key, backend, threads), row in by.items():
        f = figures.setdefault(backend, {}).setdefault(key, {})
        if threads == 1 and "versus" in row:
            f.update(row["versus"])
        ref = by.get((key, report.REFERENCE, threads))
        if threads == 2 and "scaling" in row and ref is not None and "scaling" in ref and backend != report.REFERENCE:
            f["train_scaling_vs_torch"] = row["scaling"]["train_scaling"] / ref["scaling"]["train_scaling"]
            f["infer_scaling_vs_torch"] = row["scaling"]["infer_scaling"] / ref["scaling"]["infer_scaling"]
    for key, c in compile_times.items():
        f = figures.setdefault("c", {}).setdefault(key, {})
        for metric in report.COMPILE_METRICS:
            if metric in c:
                f[metric] = c[metric]
    return figures


def print_report(args, info, rows, gemm, compile_times, targets, machine, git, unavailable) -> None:
    print(f"cnnc benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, commit "
          f"{(git['commit'] or '?')[:12]}{' + uncommitted changes' if git['dirty_files'] else ''}")
    print(machine_summary(machine))
    if gemm:
        print(gemm_line(gemm))
    print(f"PyTorch runs with {' '.join(f'{k}={v}' for k, v in TORCH_MALLOC_ENV.items())}; batch {args.batch}; "
          f"medians of up to {args.timing['repeats']} samples, spread = half the interquartile range.")
    print("GFLOP/s: forward 2 x MACs per image, training step 3 x forward (see docs/performance.md).")
    for entry in args.model_entries:
        key = entry["key"]
        i = info[key]
        print(f"\n{key} ({i['spec']}{':' + entry['model'] if entry['model'] else ''}): {i['macs']:,} MACs/image, "
              f"{i['params']:,} parameters")
        print(report.model_table([r for r in rows if r["model"] == key]))
    if compile_times:
        print("\ncompile and load (C backend):")
        print(report.compile_table(compile_times))
    cnnc_backends = [b for b in args.backend_list if b != report.REFERENCE]
    if targets and cnnc_backends:
        print("\ntargets (ratios are cnnc / PyTorch measured in this run):")
        print(report.targets_table(targets, cnnc_backends))
    for backend, why in unavailable.items():
        print(f"\nnote: backend {backend!r}: {why}")


def default_json_path(git: dict) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return HERE / "results" / f"{stamp}-{(git['commit'] or 'nogit')[:10]}.json"


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # never a half-written results file


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except BenchError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` removes the work directory
    started = datetime.datetime.now().astimezone()
    machine, git = machine_record(), git_record(REPO)
    info = model_info(args.model_entries)
    unavailable = {}
    if "c" in args.backend_list:
        state = c_backend_state()
        if state:
            unavailable["c"] = state
    workdir = Path(tempfile.mkdtemp(prefix="cnnc-bench-"))
    try:
        print("measuring the GEMM rate ...", file=sys.stderr, flush=True)
        gemm = None if args.no_gemm else measure_gemm(args, workdir)
        raw = run_backends(args, workdir, unavailable)
        compile_times = {}
        if "c" in args.backend_list and "c" not in unavailable:
            for entry in args.model_entries:
                print(f"  cold compile and cached load of {entry['key']} ...", file=sys.stderr, flush=True)
                compile_times[entry["key"]] = measure_compile(entry, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = rows_for(args, raw, info, gemm, unavailable)
    targets = report.evaluate_targets([e["key"] for e in args.model_entries], target_figures(rows, compile_times),
                                      [b for b in args.backend_list if b != report.REFERENCE], unavailable)
    print_report(args, info, rows, gemm, compile_times, targets, machine, git, unavailable)
    record = {
        "schema": "cnnc-bench/1", "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": [os.path.relpath(sys.argv[0], REPO) if sys.argv[0] else "bench.py"] + (argv if argv is not None else sys.argv[1:]),
        "git": git, "machine": machine,
        "settings": {"batch": args.batch, "threads": args.thread_list, "backends": args.backend_list,
                     "timing": args.timing, "seed": args.seed, "quick": args.quick, "lr": 0.01,
                     "torch_env": TORCH_MALLOC_ENV, "flop_counting": report.__doc__.split("How FLOPs are counted")[1].strip()},
        "models": info, "unavailable": unavailable, "gemm": gemm,
        "raw": {b: {str(t): r for t, r in per.items()} for b, per in raw.items()},
        "rows": [{k: v for k, v in r.items() if k != "raw"} for r in rows],
        "compile": compile_times, "targets": targets,
    }
    if not args.no_json:
        path = Path(args.json) if args.json else default_json_path(git)
        write_json(path, record)
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
