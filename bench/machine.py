"""What a benchmark ran on and against which code: CPU, compilers, library versions, git commit."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
import sys
from pathlib import Path

# The instruction-set extensions that matter for float32 convolutions, in the order printed.
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16")
ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
            "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "CNNC_CACHE_DIR", "CC", "CFLAGS")


def command_output(args: list[str], cwd=None, strip: bool = True) -> str | None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() if strip else done.stdout


def lscpu() -> dict[str, str]:
    """lscpu's "Key: value" lines as a dict ({} where lscpu is missing)."""
    text = command_output(["lscpu"]) or ""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def cpu_record() -> dict:
    info = lscpu()
    flags = set(info.get("Flags", "").split())
    return {
        "model_name": info.get("Model name") or platform.processor() or "unknown",
        "vendor": info.get("Vendor ID"),
        "family_model_stepping": "/".join(info.get(k, "?") for k in ("CPU family", "Model", "Stepping")),
        "cpus": int(info["CPU(s)"]) if info.get("CPU(s)", "").isdigit() else os.cpu_count(),
        "threads_per_core": info.get("Thread(s) per core"),
        "hypervisor": info.get("Hypervisor vendor"),
        "caches": {k: info[k] for k in ("L1d cache", "L2 cache", "L3 cache") if k in info},
        "flags": [f for f in INTERESTING_FLAGS if f in flags],
    }


def software_record() -> dict:
    import numpy

    record = {"python": platform.python_version(), "numpy": numpy.__version__, "platform": platform.platform()}
    try:  # the version without importing torch (seconds) into the driver
        record["torch"] = metadata.version("torch")
    except metadata.PackageNotFoundError:
        record["torch"] = None
    gcc = command_output([os.environ.get("CC", "gcc"), "--version"])
    record["gcc"] = gcc.splitlines()[0] if gcc else None
    libc = platform.libc_ver()
    record["libc"] = " ".join(libc) if libc[0] else None
    return record


def git_record(repo: Path) -> dict:
    """The commit measured, and which tracked or untracked source files differ from it."""
    commit = command_output(["git", "rev-parse", "HEAD"], cwd=repo)
    status = command_output(["git", "status", "--porcelain", "--", "cnnc", "templates", "grammar", "bench"], cwd=repo,
                            strip=False)
    dirty = [line[3:] for line in (status or "").splitlines() if line.strip()]  # "XY path"
    return {"commit": commit, "dirty_files": dirty}


def machine_record() -> dict:
    return {"cpu": cpu_record(), "software": software_record(),
            "environment": {var: os.environ.get(var) for var in ENV_VARS if os.environ.get(var) is not None},
            "executable": os.path.basename(sys.executable)}


def machine_summary(machine: dict) -> str:
    """One line: 'AMD EPYC (25/17/1), 2 CPUs, avx2 fma avx512f ...; Python 3.11.7, NumPy 2.4.6, torch ..., gcc ...'"""
    cpu, sw = machine["cpu"], machine["software"]
    return (f"{cpu['model_name']} (family/model/stepping {cpu['family_model_stepping']}), {cpu['cpus']} CPUs, "
            f"{' '.join(cpu['flags']) or 'no AVX flags'}; Python {sw['python']}, NumPy {sw['numpy']}, "
            f"torch {sw.get('torch')}, {sw.get('gcc') or 'gcc not found'}")
