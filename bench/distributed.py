"""Data-parallel scaling (issue 16): images/s of training steps on 1 and 2 ranks, cnnc over MPI against
PyTorch DistributedDataParallel (gloo), the same model and global batch, in the same run.

    python bench/distributed.py                       # LeNet-5, global batch 64 and 256, 1 and 2 ranks
    python bench/distributed.py --spec specs/resnet8.cnn --steps 5 -o out.json   # a graph with batch norm

Every rank runs one thread (OMP_NUM_THREADS=1 and torch.set_num_threads(1)). Both sides are launched by
the same mpiexec (the one installed with mpi4py); PyTorch takes its rank and size from MPI and meets
through a TCP store on localhost. A measurement is `--steps` timed training steps (forward, loss,
backward, gradient allreduce, optimiser step) after `--warmup` untimed ones, on random MNIST-shaped
data; images/s = steps x global batch / seconds on rank 0 (between two barriers).

The machine's load (os.getloadavg) before and after the run is recorded: other jobs share it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


# ---- one rank --------------------------------------------------------------------------------------
def worker(args) -> None:
    import numpy as np

    from cnnc import distributed
    from cnnc.train import Splits, TrainConfig, Trainer, load_classifier

    comm = distributed.communicator()
    model = load_classifier(args.spec, None, "c" if args.side == "cnnc" else "numpy", seed=0)
    rng = np.random.default_rng(0)
    n = args.batch * (args.steps + args.warmup)
    x = rng.random((n, *model.input_shape), dtype=np.float32)
    y = rng.integers(0, model.output_shape[0], n)
    if args.side == "cnnc":
        config = TrainConfig(epochs=1, batch=args.batch, optimizer="sgd", lr=0.01, schedule="constant").checked()
        trainer = Trainer(model, Splits(x, y, None, None, x[:1], y[:1]), config, os.devnull, {}, comm=comm)

        def step(i):
            batch = np.arange(i * args.batch, (i + 1) * args.batch)
            mine = comm.shard(batch)
            trainer.train_batch(x[mine], y[mine], total=len(batch))

        barrier = comm.comm.Barrier if comm.size > 1 else (lambda: None)
        rank, size = comm.rank, comm.size
    else:
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        from torch_net import cross_entropy_or_mse, load_params, torch_model

        torch.set_num_threads(1)
        rank = int(os.environ.get("PMI_RANK", "0"))
        size = int(os.environ.get("PMI_SIZE", "1"))
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=size)
        net, owners = torch_model(model.network)
        load_params(owners, {k: np.array(v) for k, v in {**model.params, **model.buffers}.items()})
        ddp = DistributedDataParallel(net)
        loss_fn = cross_entropy_or_mse(model.network)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def step(i):
            batch = np.arange(i * args.batch, (i + 1) * args.batch)
            mine = torch.from_numpy(np.array_split(batch, size)[rank])
            opt.zero_grad(set_to_none=False)
            loss_fn(ddp(tx[mine]), ty[mine]).backward()  # DDP's allreduce averages: equal shares assumed
            opt.step()

        barrier = dist.barrier
    for i in range(args.warmup):
        step(i)
    barrier()
    started = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    barrier()
    seconds = time.perf_counter() - started
    if rank == 0:
        print(json.dumps({"side": args.side, "ranks": size, "batch": args.batch, "steps": args.steps,
                          "seconds": seconds, "images_per_second": args.steps * args.batch / seconds}), flush=True)
    if args.side == "torch":
        dist.destroy_process_group()


# ---- the driver ----------------------------------------------------------------------------------------
def measure(side: str, ranks: int, batch: int, args, port: int) -> dict:
    from cnnc.distributed import find_mpiexec

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    command = [find_mpiexec(), "-n", str(ranks), sys.executable, __file__, "--worker", "--side", side,
               "--spec", args.spec, "--batch", str(batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--port", str(port)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{side} on {ranks} rank(s), batch {batch} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="specs/lenet5.cnn")
    p.add_argument("--batches", default="64,256", help="global batches, comma-separated")
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("-o", "--output", help="write the results as JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", choices=("cnnc", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=29517, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    from machine import machine_record, machine_summary

    from cnnc.fileio import atomic_write_text

    load_before = os.getloadavg()
    rows, port = [], 29517
    for batch in map(int, args.batches.split(",")):
        for side in ("cnnc", "torch"):
            for ranks in map(int, args.ranks.split(",")):
                port += 1
                rows.append(measure(side, ranks, batch, args, port))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    machine = machine_record()
    print(f"{args.spec}, one thread per rank; {machine_summary(machine)}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    print("| side | global batch | ranks | images/s | speed-up over 1 rank |")
    print("|---|---|---|---|---|")
    for row in rows:
        one = next(r for r in rows if r["side"] == row["side"] and r["batch"] == row["batch"] and r["ranks"] == 1)
        print(f"| {row['side']} | {row['batch']} | {row['ranks']} | {row['images_per_second']:,.0f} | "
              f"{row['images_per_second'] / one['images_per_second']:.2f}x |")
    if args.output:
        atomic_write_text(args.output, json.dumps({"spec": args.spec, "machine": machine, "rows": rows,
                                                   "load_before": load_before, "load_after": load_after},
                                                  indent=1) + "\n")


if __name__ == "__main__":
    main()
