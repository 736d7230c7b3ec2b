"""What the int8 export tests share (tests/test_quantize*.py): the test driver that links every export into
ONE program, its two builds (strict -O2 with static arenas; ASan/UBSan with caller-owned arenas of exactly
PREFIX_ARENA_BYTES), and the bit-for-bit comparison of both entry points with the NumPy int8 reference.

    exports = {prefix: (export dir, float model, QuantizedModel or None)}
    builds = build_int8_programs(root, exports)        # -> ["strict", "sanitized"], programs in root
    failures = mismatches(root, exports, builds, batch=6)
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from test_export_c import GCC, SANITIZE, STRICT

CALIBRATION = 40  # random calibration samples per model

DRIVER = r"""
/* Test driver: every int8 export in one program.
   MODEL N q: N int8 inputs on stdin -> PREFIX_predict_q's int8 outputs;  MODEL N f: float32 -> PREFIX_predict.
   requant N: N (x, multiplier, shift) int32 triples -> int8_requantize's int32 results. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef float real; /* as before any kernel header: int8.h takes its size structs from the float kernels' */
#include "kernels/int8.h"
%(includes)s

typedef struct {
    const char *name;
    int (*predict)(const float *, float *);
    int (*predict_q)(const int8_t *, int8_t *);
    int input_size, output_size;
    size_t arena_bytes;
#ifdef EXTERNAL
    void (*set_arena)(void *);
#endif
} entry;

static const entry models[] = {
%(entries)s
};

static int requant(int n) {
    for (int i = 0; i < n; i++) {
        int32_t v[3], r;
        if (fread(v, sizeof(int32_t), 3, stdin) != 3) return 3;
        r = int8_requantize(v[0], v[1], v[2]);
        fwrite(&r, sizeof r, 1, stdout);
    }
    return 0;
}

int main(int argc, char **argv) {
    const entry *m = NULL;
    int samples, quantized;
    if (argc == 3 && strcmp(argv[1], "requant") == 0) return requant(atoi(argv[2]));
    if (argc != 4) return 2;
    samples = atoi(argv[2]);
    quantized = strcmp(argv[3], "q") == 0;
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        if (strcmp(models[i].name, argv[1]) == 0) m = &models[i];
    }
    if (m == NULL) return 2;
    size_t element = quantized ? 1 : sizeof(float);
    void *input = malloc(element * (size_t)m->input_size);
    void *output = malloc(element * (size_t)m->output_size);
    if (m->predict(NULL, output) != -1 || m->predict_q(input, NULL) != -1) return 4;
#ifdef EXTERNAL
    void *arena = malloc(m->arena_bytes); /* exactly the planned size: ASan reports any access beyond it */
    if (m->predict_q(input, output) != 1) return 5; /* no arena yet */
    m->set_arena(arena);
#endif
    for (int s = 0; s < samples; s++) {
        if (fread(input, element, (size_t)m->input_size, stdin) != (size_t)m->input_size) return 3;
        if ((quantized ? m->predict_q(input, output) : m->predict(input, output)) != 0) return 6;
        fwrite(output, element, (size_t)m->output_size, stdout);
    }
#ifdef EXTERNAL
    free(arena);
#endif
    free(input);
    free(output);
    return 0;
}
"""


def driver_source(prefixes: list[str]) -> str:
    entries = []
    for p in prefixes:
        P = p.upper()
        entries.append(f'    {{"{p}", {p}_predict, {p}_predict_q, {P}_INPUT_SIZE, {P}_OUTPUT_SIZE, {P}_ARENA_BYTES\n'
                       f'#ifdef EXTERNAL\n     , {p}_set_arena\n#endif\n    }},')
    return DRIVER % {"includes": "\n".join(f'#include "{p}.h"' for p in prefixes), "entries": "\n".join(entries)}


def calibration_inputs(shape, seed: int) -> np.ndarray:
    """CALIBRATION standard normal samples (N, *shape), float32, seeded."""
    return np.random.default_rng(1000 + seed).standard_normal((CALIBRATION, *shape)).astype(np.float32)


def build_int8_programs(root: Path, exports: dict) -> list[str]:
    """Link every export with the driver into root/strict (-O2) and root/sanitized (-O1, ASan/UBSan,
    caller-owned arenas), the two gcc runs in parallel. -> the program names."""
    (root / "driver.c").write_text(driver_source(list(exports)))
    sources = [str(root / "driver.c")] + [str(out / f"{p}.c") for p, (out, _, _) in exports.items()]
    includes = [f"-I{out}" for out, _, _ in exports.values()]
    external = ["-DEXTERNAL"] + [f"-D{p.upper()}_EXTERNAL_ARENA" for p in exports]
    builds = {
        "strict": [GCC, *STRICT, "-O2", *includes, *sources, "-lm", "-o", str(root / "strict")],
        "sanitized": [GCC, *STRICT, "-O1", *SANITIZE, *external, *includes, *sources, "-lm", "-o",
                      str(root / "sanitized")],
    }
    running = {name: subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for name, cmd in builds.items()}
    for name, proc in running.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"the {name} build failed:\n{err}"
    return list(builds)


def run(program: Path, args: list[str], data: bytes) -> bytes:
    result = subprocess.run([str(program), *args], input=data, capture_output=True, timeout=120)
    assert result.returncode == 0, f"{program.name} {' '.join(args)} exited {result.returncode}: {result.stderr.decode()}"
    return result.stdout


def mismatches(root: Path, exports: dict, builds: list[str], batch: int, float_extremes: bool = False) -> list[str]:
    """Where the C differs from the NumPy int8 reference: predict_q on int8 inputs over the whole range (a
    sample of -128s and one of 127s first), predict on standard normal float inputs (float_extremes: doubled,
    with NaN, infinity and -1e30 in the first sample), in every build. Exports without a QuantizedModel are
    skipped."""
    failures = []
    for seed, (prefix, (_, m, q)) in enumerate(exports.items()):
        if q is None:
            continue
        rng = np.random.default_rng(seed)
        xq = rng.integers(-128, 128, (batch, *m.input_shape)).astype(np.int8)
        xq[0], xq[1] = -128, 127
        xf = rng.standard_normal((batch, *m.input_shape)).astype(np.float32)
        if float_extremes:
            xf *= 2
            xf.reshape(batch, -1)[0, :3] = [np.nan, np.inf, -1e30]
        want_q = q.forward_q(xq).reshape(batch, -1)
        want_f = q.forward(xf).reshape(batch, -1)
        for build in builds:
            got_q = np.frombuffer(run(root / build, [prefix, str(batch), "q"], xq.tobytes()), np.int8)
            got_f = np.frombuffer(run(root / build, [prefix, str(batch), "f"], xf.tobytes()), np.float32)
            if not np.array_equal(got_q.reshape(batch, -1), want_q):
                failures.append(f"{prefix} ({build}): predict_q differs in {(got_q.reshape(batch, -1) != want_q).sum()} "
                                f"of {want_q.size} outputs")
            if not np.array_equal(got_f.reshape(batch, -1).view(np.int32), want_f.view(np.int32)):
                failures.append(f"{prefix} ({build}): predict differs from the reference")
    return failures
