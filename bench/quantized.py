"""float32 vs int8 standalone C export: accuracy, flash, RAM and the exported program's time per image.

    python bench/quantized.py                           # LeNet-5 on MNIST-5k and on Fashion-MNIST, ResNet-8 on Fashion
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
                     the first 1,000 test images, REPEATS passes after one warm-up pass, the two programs
                     in turn ROUNDS times; the fastest pass counts, in CPU time of the process (time
                     spent descheduled by other processes does not count; sharing a core's caches or
                     an SMT sibling still does). int8's PREFIX_predict_q (int8 in and out) is timed too.
                     Single thread.
The machine is shared: the cores' worth of CPU other processes used during the timing is recorded beside it.

Writes bench/results/quantized-<date>[-<tasks>].json and .md and prints the Markdown table.
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
    # a graph: projection shortcuts (int8 add rescales both operands), batch norm folded before quantising
    "resnet8-fashion": {"spec": "specs/resnet8.cnn", "data": "fashion-mnist", "epochs": 5,
                        "label": "ResNet-8, Fashion-MNIST"},
}
TIMED_IMAGES = 1000

TIMING_MAIN = r"""
/* Timing main: ARGV: INPUTS.bin N REPEATS PREDICTIONS.bin. Predicts each of the N float32 inputs once
   (class = argmax, written as int32), then times REPEATS passes over them; prints ns per image of the
   fastest pass for PREFIX_predict and, for int8 exports, PREFIX_predict_q on the quantised inputs. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "%(prefix)s.h"

static double seconds(void) { /* this process's CPU time: the time it was descheduled does not count */
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The entry points to time, with one signature: (one input, one output). */
typedef void (*predict_one)(const void *input, void *output);

static void predict_float(const void *input, void *output) { %(prefix)s_predict(input, output); }
%(predict_q_adapter)s
/* ns per image of the fastest of `repeats` passes over the n inputs (input_bytes apart); the fastest pass is
   the one least disturbed by other processes. */
static double fastest_pass_ns(predict_one predict, const char *inputs, size_t input_bytes, void *output, long n,
                              long repeats) {
    volatile unsigned char sink = 0;
    double best = 1e300;
    for (long r = 0; r < repeats; r++) {
        double start = seconds();
        for (long i = 0; i < n; i++) {
            predict(inputs + (size_t)i * input_bytes, output);
            sink ^= *(const unsigned char *)output;
        }
        double pass = seconds() - start;
        best = pass < best ? pass : best;
    }
    (void)sink;
    return 1e9 * best / (double)n;
}

int main(int argc, char **argv) {
    static float out[%(P)s_OUTPUT_SIZE];
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
    printf("%%.1f\n", fastest_pass_ns(predict_float, (const char *)x, sizeof(float) * %(P)s_INPUT_SIZE, out, n, repeats));
%(quantized)s
    f = fopen(argv[4], "wb");
    if (f == NULL) return 5;
    fwrite(predictions, sizeof(int), (size_t)n, f);
    fclose(f);
    return 0;
}
"""

# int8 exports: PREFIX_predict_q timed on the inputs quantised as PREFIX_predict quantises them.
PREDICT_Q_ADAPTER = """static void predict_int8(const void *input, void *output) { %(prefix)s_predict_q(input, output); }
"""
TIMING_Q = r"""
    {
        static int8_t qout[%(P)s_OUTPUT_SIZE];
        int8_t *q = malloc((size_t)n * %(P)s_INPUT_SIZE);
        for (long i = 0; i < n * %(P)s_INPUT_SIZE; i++) {
            float v = x[i] / %(P)s_INPUT_SCALE + %(P)s_INPUT_ZERO_POINT;
            q[i] = (int8_t)(v < -128 ? -128 : v > 127 ? 127 : v);
        }
        printf("%%.1f\n", fastest_pass_ns(predict_int8, (const char *)q, %(P)s_INPUT_SIZE, qout, n, repeats));
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


def compile_timing(folder: Path, prefix: str, quantized: bool) -> Path:
    """The export in folder built with the timing main, `cc -std=c99 -O2`."""
    P = prefix.upper()
    names = {"prefix": prefix, "P": P}
    main = TIMING_MAIN % {**names, "predict_q_adapter": PREDICT_Q_ADAPTER % names if quantized else "",
                          "quantized": TIMING_Q % names if quantized else ""}
    (folder / "timing.c").write_text(main)
    program = folder / "timing"
    subprocess.run([os.environ.get("CC", "cc"), "-std=c99", "-O2", "-o", str(program), str(folder / "timing.c"),
                    str(folder / f"{prefix}.c"), "-lm"], check=True)
    return program


def time_programs(programs: dict[str, Path], x: np.ndarray, repeats: int, rounds: int) -> dict:
    """Run the programs in turn, `rounds` times each (so that a busy spell of other processes hits all of
    them alike); -> {name: {"ns": [fastest pass of predict, of predict_q if any], "predictions", "others"}}."""
    workdir = next(iter(programs.values())).parent.parent
    inputs = workdir / "inputs.bin"
    np.ascontiguousarray(x, np.float32).tofile(inputs)
    results = {name: {"ns": None, "others": []} for name in programs}
    for _ in range(rounds):
        for name, program in programs.items():
            predictions = program.parent / "predictions.bin"
            busy, started = busy_cpu_seconds(), time.perf_counter()
            done = subprocess.run([str(program), str(inputs), str(len(x)), str(repeats), str(predictions)],
                                  capture_output=True, text=True, check=True)
            wall = time.perf_counter() - started
            times = [float(v) for v in done.stdout.split()]
            r = results[name]
            r["ns"] = times if r["ns"] is None else [min(a, b) for a, b in zip(r["ns"], times)]
            r["predictions"] = np.fromfile(predictions, np.int32)
            if busy is not None:  # the program is one thread: the rest of the busy CPU is other processes'
                r["others"].append(round(max((busy_cpu_seconds() - busy) / wall - 1.0, 0.0), 2))
    return results


def run_task(name: str, task: dict, epochs: int | None, repeats: int, rounds: int, workdir: Path) -> dict:
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
    timed = time_programs({"float": compile_timing(workdir / f"{name}_float", "lenet5", False),
                           "int8": compile_timing(workdir / f"{name}_int8", "lenet5", True)}, x, repeats, rounds)
    float_c, int8_c = timed["float"], timed["int8"]
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
        "ns_float": float_c["ns"][0], "ns_int8": int8_c["ns"][0], "ns_int8_q": int8_c["ns"][1],
        "others_cores_during_timing": {"float": float_c["others"], "int8": int8_c["others"]},
        "calibration": q.calibration, "timed_images": len(x), "repeats": repeats, "rounds": rounds,
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
              f"the first {TIMED_IMAGES:,} test images). Time: the fastest of {results[0]['rounds'] * results[0]['repeats'] if results else 0} "
              "passes over 1,000 test images in process CPU time, single thread, `cc -std=c99 -O2`; other processes' CPU during the "
              "timed runs (cores, the largest seen): "
              + ", ".join(f"{r['task']} {max(r['others_cores_during_timing']['float'] + r['others_cores_during_timing']['int8'], default=None)}"
                          for r in results) + ".",
              f"Machine: {machine_line}.", f"Command: `{command}`."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--epochs", type=int, help="override every task's epochs")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the 1,000 images per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each program, in turn (default 3); the "
                        "time is the fastest pass of all")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    from machine import machine_record, machine_summary

    workdir = Path(tempfile.mkdtemp(prefix="cnnc-quantized-"))
    try:
        results = [run_task(name, TASKS[name], args.epochs, args.repeats, args.rounds, workdir) for name in args.tasks]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine = machine_record()
    command = "python bench/quantized.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(results, machine_summary(machine), command.strip())
    stem = args.out / f"quantized-{datetime.date.today().isoformat()}"
    if args.tasks != list(TASKS):  # a subset does not overwrite the day's full record
        stem = stem.with_name(stem.name + "-" + "-".join(args.tasks))
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"results": results, "machine": machine}, indent=2, default=str))
    stem.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0 if all(r["c_int8_matches_reference"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
