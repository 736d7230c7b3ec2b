"""float32 vs int8 standalone C export: accuracy, flash, RAM and the exported program's time per image.

    python bench/quantized.py                           # LeNet-5 on MNIST-5k and on Fashion-MNIST
    python bench/quantized.py --tasks mnist-5k --epochs 3

For each task: `cnnc train` (C backend, default settings but the epochs), then in this process
  float32 accuracy   the NumPy backend on the test split;
  int8 accuracy      the NumPy int8 reference (cnnc.quantize; bit for bit the exported C), calibrated on
                     300 training samples, min/max;
  C int8 accuracy    the exported int8 program's own predictions (a check: must equal the reference's);
  flash              weights and biases (int8: plus multipliers, shifts and tables, shown separately);
  RAM                the scratch arena (PREFIX_ARENA_BYTES);
  time per image     both exports compiled with `cc -std=c99 -O2` and a small timing main that runs
                     PREFIX_predict (float in, float out, so int8 includes quantising the input) over
                     the first 1,000 test images, REPEATS times, after one warm-up pass; int8's
                     PREFIX_predict_q (int8 in and out) is timed too. Single thread.
The machine is shared: the cores' worth of CPU other processes used during the timing is recorded beside it.

Writes bench/results/quantized-<date>.json and .md and prints the Markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

TASKS = {
    "mnist-5k": {"spec": "specs/lenet5.cnn", "data": "mnist-5k", "epochs": 20, "label": "LeNet-5, MNIST-5k"},
    "fashion": {"spec": "specs/lenet5.cnn", "data": "fashion-mnist", "epochs": 5, "label": "LeNet-5, Fashion-MNIST"},
}
TIMED_IMAGES = 1000

TIMING_MAIN = r"""
/* Timing main: ARGV: INPUTS.bin N REPEATS PREDICTIONS.bin. Predicts each of the N float32 inputs once
   (class = argmax, written as int32), then times REPEATS passes over them; prints ns per image for
   PREFIX_predict and, for int8 exports, PREFIX_predict_q on the quantised inputs. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "%(prefix)s.h"

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    static float out[%(P)s_OUTPUT_SIZE];
    volatile float sink = 0;
    if (argc != 5) return 2;
    long n = atol(argv[2]), repeats = atol(argv[3]);
    float *x = malloc(sizeof(float) * (size_t)n * %(P)s_INPUT_SIZE);
    int *predictions = malloc(sizeof(int) * (size_t)n);
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL || fread(x, sizeof(float), (size_t)n * %(P)s_INPUT_SIZE, f) != (size_t)n * %(P)s_INPUT_SIZE) return 3;
    fclose(f);
    for (long i = 0; i < n; i++) {
        if (%(prefix)s_predict(x + i * %(P)s_INPUT_SIZE, out) != 0) return 4;
        int best = 0;
        for (int k = 1; k < %(P)s_OUTPUT_SIZE; k++) best = out[k] > out[best] ? k : best;
        predictions[i] = best;
    }
    double start = seconds();
    for (long r = 0; r < repeats; r++) {
        for (long i = 0; i < n; i++) {
            %(prefix)s_predict(x + i * %(P)s_INPUT_SIZE, out);
            sink += out[0];
        }
    }
    printf("%%.1f\n", 1e9 * (seconds() - start) / (double)(n * repeats));
%(quantized)s
    f = fopen(argv[4], "wb");
    if (f == NULL) return 5;
    fwrite(predictions, sizeof(int), (size_t)n, f);
    fclose(f);
    return 0;
}
"""

TIMING_Q = r"""
    {
        static int8_t qout[%(P)s_OUTPUT_SIZE];
        int8_t *q = malloc((size_t)n * %(P)s_INPUT_SIZE);
        for (long i = 0; i < n * %(P)s_INPUT_SIZE; i++) {
            float v = x[i] / %(P)s_INPUT_SCALE + %(P)s_INPUT_ZERO_POINT;
            q[i] = (int8_t)(v < -128 ? -128 : v > 127 ? 127 : v);
        }
        start = seconds();
        for (long r = 0; r < repeats; r++) {
            for (long i = 0; i < n; i++) {
                %(prefix)s_predict_q(q + i * %(P)s_INPUT_SIZE, qout);
                sink += qout[0];
            }
        }
        printf("%%.1f\n", 1e9 * (seconds() - start) / (double)(n * repeats));
        free(q);
    }
"""


def busy_cpu_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def timed_program(folder: Path, prefix: str, quantized: bool, x: np.ndarray, repeats: int) -> dict:
    """Compile the export in folder with the timing main; -> ns per image (and predict_q's), predictions."""
    P = prefix.upper()
    main = TIMING_MAIN % {"prefix": prefix, "P": P,
                          "quantized": TIMING_Q % {"prefix": prefix, "P": P} if quantized else ""}
    (folder / "timing.c").write_text(main)
    cc = os.environ.get("CC", "cc")
    program = folder / "timing"
    subprocess.run([cc, "-std=c99", "-O2", "-o", str(program), str(folder / "timing.c"), str(folder / f"{prefix}.c"),
                    "-lm"], check=True)
    inputs, predictions = folder / "inputs.bin", folder / "predictions.bin"
    np.ascontiguousarray(x, np.float32).tofile(inputs)
    busy, started = busy_cpu_seconds(), time.perf_counter()
    done = subprocess.run([str(program), str(inputs), str(len(x)), str(repeats), str(predictions)],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    times = [float(v) for v in done.stdout.split()]
    record = {"ns_per_image": times[0], "predictions": np.fromfile(predictions, np.int32)}
    if quantized:
        record["ns_per_image_q"] = times[1]
    if busy is not None:  # the timing program is one thread: the rest of the busy CPU is other processes'
        record["others_cores_during"] = round(max((busy_cpu_seconds() - busy) / wall - 1.0, 0.0), 2)
    return record


def run_task(name: str, task: dict, epochs: int | None, repeats: int, workdir: Path) -> dict:
    import cnnc
    from cnnc.datasets import load_dataset
    from cnnc.export_c import export_c, memory_plan
    from cnnc.export_int8 import export_int8_c, int8_arena_bytes
    from cnnc.inference import evaluate
    from cnnc.quantize import calibrate, calibration_samples, evaluate_quantized, int8_flash_bytes

    spec, data = str(REPO / task["spec"]), task["data"]
    epochs = epochs or task["epochs"]
    weights = workdir / f"{name}.npz"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnc", "train", spec, "--data", data, "--epochs", str(epochs), "-q",
                    "-o", str(weights)], check=True)
    train_seconds = time.perf_counter() - started
    model = cnnc.load(spec, backend="numpy")
    model.load_weights(weights)
    ds = load_dataset(data)
    float_result = evaluate(model, ds.x_test, ds.y_test)
    q = calibrate(model, calibration_samples(data, model.network))
    int8_result = evaluate_quantized(q, model, ds.x_test, ds.y_test)
    network = model.network
    plan = memory_plan(network)
    flash = int8_flash_bytes(network)
    export_c(model, workdir / f"{name}_float", prefix="lenet5")
    export_int8_c(q, workdir / f"{name}_int8", prefix="lenet5")
    x = ds.x_test[:TIMED_IMAGES]
    float_c = timed_program(workdir / f"{name}_float", "lenet5", False, x, repeats)
    int8_c = timed_program(workdir / f"{name}_int8", "lenet5", True, x, repeats)
    reference = q.forward(x).argmax(axis=1)
    return {
        "task": name, "label": task["label"], "data": data, "epochs": epochs, "train_seconds": round(train_seconds, 1),
        "test_samples": int(float_result["n"]),
        "float_accuracy": float_result["accuracy"], "int8_accuracy": int8_result["accuracy"],
        "c_int8_matches_reference": bool(np.array_equal(int8_c["predictions"], reference)),
        "c_float_accuracy_first_1000": float(np.mean(float_c["predictions"] == ds.y_test[:TIMED_IMAGES])),
        "c_int8_accuracy_first_1000": float(np.mean(int8_c["predictions"] == ds.y_test[:TIMED_IMAGES])),
        "flash_float": plan.weight_bytes, "flash_int8_weights": flash["weights"], "flash_int8_constants": flash["constants"],
        "ram_float": plan.arena_bytes, "ram_int8": int8_arena_bytes(network)[1], "ram_int8_q": int8_arena_bytes(network)[0],
        "ns_float": float_c["ns_per_image"], "ns_int8": int8_c["ns_per_image"], "ns_int8_q": int8_c["ns_per_image_q"],
        "others_cores_during_timing": [float_c.get("others_cores_during"), int8_c.get("others_cores_during")],
        "calibration": q.calibration, "timed_images": len(x), "repeats": repeats,
    }


def markdown(results: list[dict], machine_line: str, command: str) -> str:
    lines = ["| model, data | accuracy float32 | accuracy int8 | flash float32 | flash int8 (weights + biases; "
             "+ multipliers, shifts) | RAM float32 | RAM int8 | µs/image float32 | µs/image int8 (predict; predict_q) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(
            f"| {r['label']} ({r['epochs']} epochs) | {r['float_accuracy']:.2%} | {r['int8_accuracy']:.2%} "
            f"({(r['int8_accuracy'] - r['float_accuracy']) * 100:+.2f}) | {r['flash_float']:,} | "
            f"{r['flash_int8_weights']:,} ({r['flash_int8_weights'] / r['flash_float']:.2f}x); +{r['flash_int8_constants']:,} | "
            f"{r['ram_float']:,} | {r['ram_int8']:,} | {r['ns_float'] / 1e3:.0f} | "
            f"{r['ns_int8'] / 1e3:.0f}; {r['ns_int8_q'] / 1e3:.0f} |")
    lines += ["", "Accuracy on the test split (" + ", ".join(f"{r['data']}: {r['test_samples']:,} images" for r in results)
              + "); int8 through the NumPy reference, which the exported C matches bit for bit "
              f"({', '.join(r['task'] + ': ' + ('yes' if r['c_int8_matches_reference'] else 'NO') for r in results)} on "
              f"the first {TIMED_IMAGES:,} test images). Other processes' CPU during the timings (cores): "
              + ", ".join(f"{r['task']} {r['others_cores_during_timing']}" for r in results) + ".",
              f"Machine: {machine_line}.", f"Command: `{command}`."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--epochs", type=int, help="override every task's epochs")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the 1,000 images (default 5)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    from machine import machine_record, machine_summary

    workdir = Path(tempfile.mkdtemp(prefix="cnnc-quantized-"))
    try:
        results = [run_task(name, TASKS[name], args.epochs, args.repeats, workdir) for name in args.tasks]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine = machine_record()
    command = "python bench/quantized.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(results, machine_summary(machine), command.strip())
    stem = args.out / f"quantized-{datetime.date.today().isoformat()}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"results": results, "machine": machine}, indent=2, default=str))
    stem.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0 if all(r["c_int8_matches_reference"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
