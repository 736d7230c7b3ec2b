"""What the standalone C export's tests share (tests/test_export_c.py, test_export_c_extra.py,
test_export_c_graphs.py): the compilers and their flags, exporting many models through `cnnc export` with a
driver that links them all into ONE program (the compile budget; also the proof that exports link together
without symbol clashes), building that program several ways in parallel, and running it.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from cnnc.cli import main

GCC = shutil.which("gcc")
CLANG = shutil.which("clang")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]


def rel_err(a, b) -> float:
    """max |a - b| relative to the largest entry of either."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-30))


DRIVER = r"""
/* Test driver: every exported model in one program. argv: MODEL SAMPLES; reads SAMPLES inputs of raw
   float32 from stdin and writes the outputs, raw float32, to stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
%(includes)s

typedef struct {
    const char *name;
    int (*predict)(const float *, float *);
    int input_size, output_size;
    size_t arena_bytes;
#ifdef EXTERNAL
    void (*set_arena)(void *);
#endif
} entry;

static const entry models[] = {
%(entries)s
};

int main(int argc, char **argv) {
    const entry *m = NULL;
    int samples;
    if (argc != 3) return 2;
    samples = atoi(argv[2]);
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        if (strcmp(models[i].name, argv[1]) == 0) m = &models[i];
    }
    if (m == NULL) return 2;
    float *input = malloc(sizeof(float) * (size_t)m->input_size);
    float *output = malloc(sizeof(float) * (size_t)m->output_size);
    if (m->predict(NULL, output) != -1) return 4; /* a NULL pointer is an error, not a crash */
#ifdef EXTERNAL
    /* exactly the planned size: AddressSanitizer reports any access beyond it */
    void *arena = malloc(m->arena_bytes ? m->arena_bytes : 1);
    if (m->arena_bytes && m->predict(input, output) != 1) return 5; /* no arena yet */
    m->set_arena(arena);
#endif
    for (int s = 0; s < samples; s++) {
        if (fread(input, sizeof(float), (size_t)m->input_size, stdin) != (size_t)m->input_size) return 3;
        if (m->predict(input, output) != 0) return 6;
        fwrite(output, sizeof(float), (size_t)m->output_size, stdout);
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
    includes = "\n".join(f'#include "{p}.h"' for p in prefixes)
    entries = []
    for p in prefixes:
        P = p.upper()
        entries.append(f'    {{"{p}", {p}_predict, {P}_INPUT_SIZE, {P}_OUTPUT_SIZE, {P}_ARENA_BYTES\n'
                       f'#ifdef EXTERNAL\n     , {p}_set_arena\n#endif\n    }},')
    return DRIVER % {"includes": includes, "entries": "\n".join(entries)}


def export_models(root: Path, jobs, randomized) -> dict[str, tuple[Path, object]]:
    """Export each job (spec path, model name, prefix) through `cnnc export` into root/PREFIX with the weights
    of randomized(path, name, seed), the seed being the job's position; then write root/driver.c over them all.
    Returns {prefix: (export directory, the NumPy model with the same weights)}."""
    exports = {}
    for seed, (path, name, prefix) in enumerate(jobs):
        m = randomized(path, name, seed)
        weights = root / f"{prefix}.npz"
        m.save(weights)
        out = root / prefix
        args = ["export", str(path), "--weights", str(weights), "--format", "c", "-o", str(out), "--model", name]
        assert main(args + (["--name", prefix] if prefix != name else [])) == 0
        exports[prefix] = (out, m)
    (root / "driver.c").write_text(driver_source(list(exports)))
    return exports


def start_builds(root: Path, exports: dict, builds) -> dict[str, subprocess.Popen]:
    """Start compiling root/driver.c with every export into the program root/BUILD for each build named:
    "strict" (gcc -O2, static arenas), "sanitized" (gcc -O1 with AddressSanitizer and UBSan, caller-owned
    arenas malloc'd to exactly PREFIX_ARENA_BYTES, so that any access past the planned arena is caught) and
    "clang" (clang -O2); all with the STRICT flags. finish_builds waits for them."""
    sources = [str(root / "driver.c")] + [str(out / f"{p}.c") for p, (out, _) in exports.items()]
    includes = [f"-I{out}" for out, _ in exports.values()]
    external = ["-DEXTERNAL"] + [f"-D{p.upper()}_EXTERNAL_ARENA" for p in exports]
    flags = {"strict": [GCC, *STRICT, "-O2"], "sanitized": [GCC, *STRICT, "-O1", *SANITIZE, *external],
             "clang": [CLANG, *STRICT, "-O2"]}
    return {build: subprocess.Popen([*flags[build], *includes, *sources, "-lm", "-o", str(root / build)],
                                    stderr=subprocess.PIPE, text=True) for build in builds}


def finish_builds(running: dict[str, subprocess.Popen], timeout: float = 600) -> list[str]:
    """Wait for start_builds' compilers; each must succeed. Returns the builds' names."""
    for build, proc in running.items():
        _, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"the {build} build failed:\n{err}"
    return list(running)


def run_driver(program: Path, prefix: str, x: np.ndarray, output_size: int) -> np.ndarray:
    result = subprocess.run([str(program), prefix, str(len(x))], input=np.ascontiguousarray(x, np.float32).tobytes(),
                            capture_output=True, timeout=60)
    assert result.returncode == 0, f"{program.name} {prefix} exited {result.returncode}: {result.stderr.decode()}"
    return np.frombuffer(result.stdout, np.float32).reshape(len(x), output_size)
