"""One benchmark subprocess: `python bench/worker.py CONFIG.json RESULT.json`.

bench.py starts one of these per backend x thread count (and per GEMM measurement, per cached-load
measurement), with the thread variables (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS) already
set in its environment, so that thread pools and allocator state never leak from one measurement into
another. CONFIG.json says what to run:

    {"task": "models", "backend": "c"|"numpy"|"torch", "threads": 1, "models": [{"key", "spec", "model"}],
     "batch": 64, "seed": 0, "lr": 0.01, "timing": {...}}
    {"task": "gemm", "threads": 1, "size": 2048, "timing": {...}}
    {"task": "load", "path": ..., "model": ...}            # one cnnc.load(backend="c"), timed

RESULT.json receives a dict (see each task's function). A model that fails records its error and the
next model still runs.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
import traceback

np = None  # NumPy, imported by main() for every task but `load`, which times `import cnnc` (NumPy included)

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ---- timing --------------------------------------------------------------------------------------
def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes on the machine have used since boot (/proc/stat), None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:8]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def summarize(seconds: list[float]) -> dict:
    """Median, quartiles and extremes of per-call times (seconds)."""
    s = np.asarray(seconds, dtype=np.float64)
    p25, median, p75 = np.percentile(s, [25, 50, 75])
    return {"median_s": float(median), "p25_s": float(p25), "p75_s": float(p75),
            "min_s": float(s.min()), "max_s": float(s.max()), "samples": len(seconds)}


def time_calls(fn, timing: dict) -> dict:
    """Warm up, then time `repeats` samples of fn(); a sample is the mean of `inner` back-to-back calls.

    timing: warmup_s / warmup_calls (both must be met), repeats, min_sample_s (inner is chosen so that a
    sample lasts about this long, for calls too short to time one by one) and max_s (stop early, after at
    least 3 samples, once the samples have taken this long in total).
    """
    start = time.perf_counter()
    calls = 0
    while calls < timing["warmup_calls"] or time.perf_counter() - start < timing["warmup_s"]:
        fn()
        calls += 1
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    inner = max(1, min(10_000, math.ceil(timing["min_sample_s"] / max(one, 1e-9))))
    samples: list[float] = []
    faults0, busy0, own0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, busy_cpu_seconds(), own_cpu_seconds()
    begin = time.perf_counter()
    while len(samples) < timing["repeats"]:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
        if len(samples) >= min(3, timing["repeats"]) and time.perf_counter() - begin > timing["max_s"]:
            break
    wall = time.perf_counter() - begin
    faults, busy1, own1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0, busy_cpu_seconds(), own_cpu_seconds()
    # Cores' worth of CPU that other processes used while we measured: a shared machine's noise, made visible.
    other = None if busy0 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    return {**summarize(samples), "inner": inner, "warmup_calls": calls,
            "minor_faults_per_call": faults / (len(samples) * inner), "other_load_cores": other,
            "own_cpu_cores": (own1 - own0) / wall}


# ---- what runs in the process ----------------------------------------------------------------------
def thread_report() -> dict:
    """Thread counts the libraries actually use (threadpoolctl), to show the settings took effect."""
    report = {var: os.environ.get(var) for var in THREAD_VARS}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {**report, "pools": "threadpoolctl not installed"}
    pools = [{key: info.get(key) for key in ("internal_api", "prefix", "num_threads", "version", "architecture")}
             for info in threadpool_info()]
    return {**report, "pools": pools}


def initial_params(network, seed: int) -> dict[str, np.ndarray]:
    """The parameters cnnc.load(seed=seed) starts from, computed without any backend (so PyTorch gets them too),
    and the running statistics of batch norm layers at their initial values (mean 0, variance 1)."""
    from cnnc.model import initial_value

    rng = np.random.default_rng(seed)
    params = {spec.name: initial_value(spec, rng).astype(np.float32) for spec in network.param_specs}
    buffers = {spec.name: np.full(spec.shape, spec.fill, np.float32) for spec in network.buffer_specs}
    return {**params, **buffers}


def inputs(network, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same inputs for every backend: x (batch, *input_shape) float32 and targets for the model's loss."""
    rng = np.random.default_rng([seed, 7])
    x = rng.standard_normal((batch, *network.input_shape)).astype(np.float32)
    loss = network.loss or ("cross_entropy" if len(network.output_shape) == 1 else "mse")
    if loss == "cross_entropy":
        return x, rng.integers(0, network.output_shape[0], size=batch).astype(np.int64)
    return x, rng.standard_normal((batch, *network.output_shape)).astype(np.float32)


class CnncRunner:
    """cnnc's Model API: forward, loss, backward, then cnnc.optim.SGD's step."""

    def __init__(self, backend: str, entry: dict, network, params: dict, lr: float, seed: int):
        import cnnc

        t0 = time.perf_counter()
        self.model = cnnc.load(entry["spec"], backend=backend, model=entry["model"], dtype="float32", seed=seed)
        self.load_s = time.perf_counter() - t0
        self.model.load_weights(params)
        try:
            from cnnc.optim import SGD
        except ModuleNotFoundError as e:
            if e.name != "cnnc.optim":
                raise
            self.optimizer, self.sgd = None, "in-place p -= lr * g (cnnc.optim is not available yet)"
        else:
            self.optimizer, self.sgd = SGD(self.model.params, self.model.grads, lr=lr), "cnnc.optim.SGD(momentum=0)"
        self.lr = lr

    def infer(self, x):
        return self.model.forward(x, train=False)

    def train_step(self, x, target):
        y = self.model.forward(x, train=True)
        loss, dy = self.model.loss(y, target)
        if self.model.backend_name == "c":
            self.model.backward(dy, input_grad=False)  # like PyTorch here: no gradient for the input
        else:
            self.model.backward(dy)
        self._sgd_step()
        return loss

    def _sgd_step(self):
        if self.optimizer is not None:
            self.optimizer.step()
            return
        for name, p in self.model.params.items():
            p -= self.lr * self.model.grads[name]

    def extra(self) -> dict:
        return {"sgd": self.sgd, "load_s": self.load_s}


class TorchRunner:
    """The IR as nn.Sequential (a graph: torch_net.TorchGraph); inference under torch.inference_mode() in eval mode; torch.optim.SGD."""

    def __init__(self, network, params: dict, lr: float, threads: int):
        import torch

        from torch_net import cross_entropy_or_mse, load_params, torch_model

        torch.set_num_threads(threads)
        self.torch = torch
        self.net, owners = torch_model(network)
        load_params(owners, params)
        self.loss_fn = cross_entropy_or_mse(network)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=0.0)
        self._cache: dict[int, tuple] = {}  # id(array) -> (array, tensor)

    def _tensor(self, a):
        """Each input array becomes a tensor once (sharing its memory): the timed loop sees ready tensors,
        as cnnc's sees ready arrays. The array is kept alongside so that its id stays unique."""
        if a is None:
            return None
        if id(a) not in self._cache:
            self._cache[id(a)] = (a, self.torch.from_numpy(a))
        return self._cache[id(a)][1]

    def infer(self, x):
        tx = self._tensor(x)
        if self.net.training:
            self.net.eval()
        with self.torch.inference_mode():
            return self.net(tx).numpy()

    def train_step(self, x, target):
        tx, tt = self._tensor(x), self._tensor(target)
        if not self.net.training:
            self.net.train()
        self.optimizer.zero_grad()  # set_to_none=True, PyTorch's default
        loss = self.loss_fn(self.net(tx), tt)
        loss.backward()
        self.optimizer.step()
        return float(loss)

    def extra(self) -> dict:
        return {"sgd": "torch.optim.SGD(momentum=0)", "torch_threads": self.torch.get_num_threads(),
                "torch_interop_threads": self.torch.get_num_interop_threads()}


def make_runner(config: dict, entry: dict, network, params: dict):
    if config["backend"] == "torch":
        return TorchRunner(network, params, config["lr"], config["threads"])
    return CnncRunner(config["backend"], entry, network, params, config["lr"], config["seed"])


def fingerprint(y: np.ndarray) -> dict:
    """Enough of a batch's output to check that every backend computes the same function."""
    y = np.asarray(y, dtype=np.float64)
    return {"abs_sum": float(np.abs(y).sum()), "row0": [float(v) for v in y.reshape(y.shape[0], -1)[0]]}


def measure_model(config: dict, entry: dict) -> dict:
    """Batch-1 latency, batch-N inference and batch-N training step of one model on this process's backend."""
    import cnnc

    network = cnnc.read_network(entry["spec"], entry["model"])
    params = initial_params(network, config["seed"])
    x, target = inputs(network, config["batch"], config["seed"])
    x1 = np.ascontiguousarray(x[:1])
    runner = make_runner(config, entry, network, params)
    check = fingerprint(runner.infer(x))  # before any training step changes the weights
    loss0 = runner.train_step(x, target)
    timing = config["timing"]
    return {
        "key": entry["key"], "status": "ok", "check": check, "loss0": loss0,
        "latency_b1": time_calls(lambda: runner.infer(x1), timing),
        "infer_batch": time_calls(lambda: runner.infer(x), timing),
        "train_batch": time_calls(lambda: runner.train_step(x, target), timing),
        **runner.extra(),
    }


def run_models(config: dict) -> dict:
    results = []
    for entry in config["models"]:
        try:
            results.append(measure_model(config, entry))
        except Exception as e:  # noqa: BLE001 - one failing model must not hide the others' figures
            results.append({"key": entry["key"], "status": "error", "error": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc(limit=6)})
    import cnnc

    return {"task": "models", "backend": config["backend"], "threads": config["threads"], "models": results,
            "thread_report": thread_report(), "cnnc_file": os.path.relpath(cnnc.__file__)}  # which checkout was measured (no machine path)


def run_gemm(config: dict) -> dict:
    """float32 C = A @ B with n x n matrices through NumPy (OpenBLAS sgemm): GFLOP/s = 2 n^3 / time."""
    n = config["size"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    stats = time_calls(lambda: np.matmul(a, b, out=c), config["timing"])
    flops = 2.0 * n ** 3
    return {"task": "gemm", "threads": config["threads"], "size": n, "time": stats,
            "gflops": flops / stats["median_s"] / 1e9, "gflops_p25": flops / stats["p75_s"] / 1e9,
            "gflops_p75": flops / stats["p25_s"] / 1e9,
            "openblas_env": {v: os.environ.get(v) for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
            "thread_report": thread_report()}


def run_load(config: dict) -> dict:
    """The time of one cnnc.load(path, backend="c") in a fresh process (path: a .cnn file or a directory
    written by `cnnc compile`): `import cnnc` (which imports NumPy: nothing here has), importing the C
    backend, then loading."""
    t0 = time.perf_counter()
    import cnnc

    t1 = time.perf_counter()
    import cnnc.backends.c_backend  # noqa: F401 - cnnc.load imports it lazily; timed separately here

    t2 = time.perf_counter()
    cnnc.load(config["path"], backend="c", model=config["model"], dtype="float32", seed=0)
    t3 = time.perf_counter()
    return {"task": "load", "import_cnnc_s": t1 - t0, "import_c_backend_s": t2 - t1, "load_call_s": t3 - t2,
            "load_s": t3 - t1}


TASKS = {"models": run_models, "gemm": run_gemm, "load": run_load}


def main(argv: list[str]) -> int:
    global np
    config_path, result_path = argv
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if config["task"] != "load":
        import numpy

        np = numpy
    result = TASKS[config["task"]](config)
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
