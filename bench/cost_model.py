"""The cost model of docs/distributed.md: how data-parallel training would scale on a network.

    python bench/cost_model.py --spec specs/lenet5.cnn --step-seconds 0.21 --batch 256

One step on N ranks takes  t(N) = t1 / N + allreduce(N),  with t1 the measured one-rank step time at the
global batch (compute splits evenly: each rank does 1/N of the samples), and the ring allreduce of G
gradient bytes  allreduce(N) = 2 (N - 1) / N x G / bandwidth + 2 (N - 1) x latency.  Speed-up S(N) =
t1 / t(N); efficiency S(N) / N. Printed: S and efficiency at N = 2, 4, 8, ..., the N where the
efficiency falls below 50% (the allreduce costs as much as the compute), and the N with the largest
speed-up (beyond it, more ranks make a step slower). It ignores that tiny per-rank batches run less
efficiently than large ones, so it flatters large N.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NETWORKS = {"10 Gbit/s Ethernet (TCP)": (10e9 / 8, 50e-6), "100 Gbit/s (RDMA)": (100e9 / 8, 5e-6)}


def allreduce_seconds(n: int, grad_bytes: int, bandwidth: float, latency: float) -> float:
    return 0.0 if n == 1 else 2 * (n - 1) / n * grad_bytes / bandwidth + 2 * (n - 1) * latency


def speedup(n: int, t1: float, grad_bytes: int, bandwidth: float, latency: float) -> float:
    return t1 / (t1 / n + allreduce_seconds(n, grad_bytes, bandwidth, latency))


def main() -> None:
    import cnnc

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True)
    p.add_argument("--step-seconds", type=float, required=True, help="measured one-rank step time at --batch")
    p.add_argument("--batch", type=int, required=True, help="the global batch the step time was measured at")
    args = p.parse_args()
    network = cnnc.read_network(args.spec)
    grad_bytes = 4 * sum(spec.size for spec in network.param_specs)
    print(f"{args.spec}: {grad_bytes / 1e6:.3f} MB of float32 gradients; one-rank step "
          f"{args.step_seconds * 1e3:.1f} ms "
          f"at global batch {args.batch}")
    for name, (bandwidth, latency) in NETWORKS.items():
        cells = []
        for n in (2, 4, 8, 16, 32, 64):
            if n > args.batch:
                break
            s = speedup(n, args.step_seconds, grad_bytes, bandwidth, latency)
            cells.append(f"N={n}: {s:.1f}x ({s / n:.0%})")
        half = next((n for n in range(2, 100_000) if speedup(n, args.step_seconds, grad_bytes, bandwidth, latency) / n
                     < 0.5), None)
        best = max(range(1, 100_000), key=lambda n: speedup(n, args.step_seconds, grad_bytes, bandwidth, latency))
        print(f"  {name}: allreduce at N=2 {allreduce_seconds(2, grad_bytes, bandwidth, latency) * 1e3:.2f} ms; "
              f"{'; '.join(cells)}; efficiency < 50% from N={half}; largest speed-up at N={best} "
              f"({speedup(best, args.step_seconds, grad_bytes, bandwidth, latency):.0f}x, "
              f"{args.batch / best:.1f} samples per rank)")


if __name__ == "__main__":
    main()
