"""Data-parallel training over MPI (mpi4py): `mpiexec -n N cnnc train ...` and `cnnc train --workers N`.

The trainer talks to a Communicator; one process gets `Local` (every call a no-op or the identity), a job
started by an MPI launcher gets `MPIComm`. The rules (docs/distributed.md):

- every rank builds the same model from the same seed and holds the whole data set; `check_same_run`
  compares a fingerprint of the spec, data, backend and settings at start-up;
- each global batch (the trainer's --batch slice of the shared, seeded shuffle) is split across the ranks
  with np.array_split: rank r takes the r-th contiguous part, so sizes differ by at most one;
- per step there are two allreduces: three numbers (the batch's loss sum, correct count and a flag word:
  non-finite outputs / stop requested) after the forward pass, so every rank takes the same decision, and
  the gradients after the backward pass: ONE in-place allreduce over the backend's contiguous gradient
  block, each rank's mean-loss gradient weighted by its share n_r / B first, so the sum is the gradient
  of the global mean loss;
- every rank then takes the same optimiser step, so the parameters stay identical (`--check-sync`
  compares a checksum of them after every step);
- batch norm, where a model has it (`model.buffers`), uses per-rank batch statistics and rank 0's running
  buffers are broadcast after every step, PyTorch DistributedDataParallel's default;
- evaluation: each rank evaluates a contiguous slice; loss sums and confusion matrices are summed;
- only rank 0 prints and writes files.

A rank that fails (an exception) prints its error prefixed with its rank and calls MPI Abort, which ends
every rank; mpiexec (MPICH's hydra) also ends the job when a rank is killed.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import time

import numpy as np

from .diagnostics import CnncError

INSTALL_HINT = "pip install 'cnnc[mpi]'"
# Set by MPI launchers in every process they start: MPICH/hydra (PMI_SIZE), Open MPI, PMIx, Slurm's srun.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")
NONFINITE, STOP = 1, 2  # bits of the flag word
# The longest a rank waits in MPI start-up or in one collective before it decides another rank is gone.
TIMEOUT_VARIABLE, DEFAULT_TIMEOUT = "CNNC_MPI_TIMEOUT", 60.0
START_TAG = 16


def collective_timeout() -> float:
    value = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise CnncError(f"{TIMEOUT_VARIABLE} must be a number of seconds; got {value!r}") from None
    if not 0 < seconds < 1e6:
        raise CnncError(f"{TIMEOUT_VARIABLE} must be a positive number of seconds; got {value!r}")
    return seconds


class Watchdog:
    """A daemon thread that ends this process when it waits too long: in MPI start-up (a rank that never
    joined) or in a collective (a rank that died where the launcher does not end the job). The main thread
    arms it with what it is waiting for; a wait longer than the timeout prints that, naming this rank,
    and ends the job (MPI Abort when MPI is up, else exit status 1)."""

    def __init__(self, rank: int, size: int, timeout: float):
        import threading

        self.rank, self.size, self.timeout = rank, size, timeout
        self.waiting: tuple[float, str] | None = None
        self.abort = None  # set to MPI Abort once MPI is initialised
        threading.Thread(target=self._watch, name="cnnc-mpi-watchdog", daemon=True).start()

    @contextlib.contextmanager
    def waiting_for(self, what: str):
        self.waiting = (time.monotonic() + self.timeout, what)
        try:
            yield
        finally:
            self.waiting = None

    def _watch(self):
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            waiting = self.waiting
            if waiting is not None and time.monotonic() > waiting[0]:
                print(f"cnnc: rank {self.rank} of {self.size}: no answer within {self.timeout:g} s while waiting "
                      f"for {waiting[1]}; another rank has failed or was killed (see its message above); "
                      f"stopping all ranks", file=sys.stderr, flush=True)
                if self.abort is not None:
                    abort_after_message(self.abort)
                os._exit(1)


def abort_after_message(abort) -> None:
    """MPI Abort (error code 1) after a message just printed to stderr. The launcher kills every rank at
    once on Abort and can do so before it has forwarded that line (about 1 run in 8 with MPICH's hydra),
    so give it half a second first."""
    time.sleep(0.5)
    abort(1)


def launched_size() -> int:
    """How many processes the launcher says the job has (1 when not under a launcher). srun sets
    SLURM_NTASKS for the job step; a plain batch script sets it too, so it counts only with SLURM_PROCID
    and SLURM_STEP_ID."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name)
        if name == "SLURM_NTASKS" and "SLURM_STEP_ID" not in os.environ:
            continue
        if value and value.isdigit() and int(value) > 1:
            return int(value)
    return 1


class Local:
    """One process: the whole batch, nothing to reduce."""

    rank, size, is_root = 0, 1, True

    def shard(self, indices: np.ndarray) -> np.ndarray:
        return indices

    def reduce_batch(self, loss: float, n: int, total: int, correct: int, flags: int) -> tuple[float, int, int]:
        """(mean loss over this rank's n samples, its correct count, its flags) -> the same over the
        global batch of `total` samples."""
        return loss, correct, flags

    def allreduce_gradients(self, model, share: float) -> None:
        pass

    def sync_buffers(self, model) -> None:
        pass

    def evaluate(self, model, x, y) -> dict:
        from .inference import evaluate
        return evaluate(model, x, y)

    def check_same_run(self, fingerprint: dict) -> None:
        pass

    def check_sync(self, model) -> None:
        pass

    def fail(self, message: str) -> None:
        pass


class MPIComm(Local):
    members: list[str] = []  # "rank:pid@host" of every rank, once check_same_run has run

    def __init__(self, MPI, watchdog: Watchdog):
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_root = self.rank == 0
        self.watchdog = watchdog
        watchdog.rank, watchdog.abort = self.rank, self.comm.Abort
        self.guard = watchdog.waiting_for
        self._flat: np.ndarray | None = None

    def shard(self, indices: np.ndarray) -> np.ndarray:
        return np.array_split(indices, self.size)[self.rank]

    def reduce_batch(self, loss, n, total, correct, flags):
        """(mean loss over the local n, local correct, local flags) -> (global mean loss, correct, flags).
        One allreduce of three doubles; the flags are counted in base size + 1 (ranks with non-finite
        outputs + (size + 1) x ranks asked to stop), so a sum tells whether any rank set each."""
        base = self.size + 1
        local = np.array([loss * n if n else 0.0, float(correct),
                          float(bool(flags & NONFINITE)) + base * float(bool(flags & STOP))], np.float64)
        with self.guard("the other ranks' forward pass"):
            self.comm.Allreduce(self.MPI.IN_PLACE, local, op=self.MPI.SUM)
        count = int(round(local[2]))
        return (float(local[0]) / total, int(round(local[1])),
                (NONFINITE if count % base else 0) | (STOP if count >= base else 0))

    def allreduce_gradients(self, model, share: float) -> None:
        """Weight this rank's mean-loss gradient by its share of the global batch and sum over the ranks:
        one in-place allreduce over one contiguous buffer."""
        block = getattr(model, "grad_block", None)
        if block is not None and block.flags.c_contiguous:
            if share == 0:
                block[...] = 0
            elif share != 1:
                block *= block.dtype.type(share)
            with self.guard("the other ranks' gradients"):
                self.comm.Allreduce(self.MPI.IN_PLACE, block, op=self.MPI.SUM)
            return
        grads = list(model.grads.values())  # a backend without a gradient block: pack, reduce, unpack
        sizes = [g.size for g in grads]
        if self._flat is None or self._flat.size != sum(sizes):
            self._flat = np.empty(sum(sizes), grads[0].dtype)
        offset = 0
        for g, size in zip(grads, sizes):
            self._flat[offset:offset + size] = g.reshape(-1) * share
            offset += size
        with self.guard("the other ranks' gradients"):
            self.comm.Allreduce(self.MPI.IN_PLACE, self._flat, op=self.MPI.SUM)
        offset = 0
        for g, size in zip(grads, sizes):
            g[...] = self._flat[offset:offset + size].reshape(g.shape)
            offset += size

    def sync_buffers(self, model) -> None:
        """Batch norm's running statistics: rank 0's are broadcast (DDP's default)."""
        buffers = getattr(model, "buffers", None)
        for name in sorted(buffers or {}):
            array = buffers[name]
            if isinstance(array, np.ndarray) and array.flags.c_contiguous and array.size:
                self.comm.Bcast(array, root=0)

    def evaluate(self, model, x, y) -> dict:
        """Each rank evaluates a contiguous slice; loss sums and confusion matrices are summed."""
        from .inference import NonFiniteOutputs, evaluate

        classes = model.output_shape[0]
        part = np.array_split(np.arange(len(y)), self.size)[self.rank]
        totals = np.zeros(classes * classes + 2, np.float64)  # confusion, loss sum, failed
        message = None
        if len(part):
            try:
                result = evaluate(model, x[part[0]:part[-1] + 1], y[part[0]:part[-1] + 1])
                totals[:-2] = result["confusion"].reshape(-1)
                totals[-2] = result["loss"] * len(part)
            except NonFiniteOutputs as e:
                totals[-1], message = 1, e
        with self.guard("the other ranks' evaluation"):
            self.comm.Allreduce(self.MPI.IN_PLACE, totals, op=self.MPI.SUM)
        if totals[-1]:
            raise message or NonFiniteOutputs("the network's outputs are not finite (inf or NaN) on another rank's "
                                              "share of the evaluation data")
        confusion = np.rint(totals[:-2]).astype(np.int64).reshape(classes, classes)
        correct = int(np.trace(confusion))
        return {"accuracy": correct / len(y), "loss": float(totals[-2]) / len(y), "n": int(len(y)),
                "confusion": confusion}

    def check_batch(self, batch: int) -> None:
        if batch < self.size:
            raise collective(CnncError(f"--batch {batch} is smaller than the {self.size} ranks: every rank needs at "
                                       f"least one sample of each global batch; use --batch {self.size} or more, or "
                                       f"fewer ranks"))

    def check_same_run(self, fingerprint: dict) -> None:
        """Every rank must run the same spec on the same data with the same settings."""
        mine = {key: hashlib.sha256(repr(value).encode()).hexdigest() for key, value in fingerprint.items()}
        import socket

        gathered = self.gather_at_start((mine, os.getpid(), socket.gethostname()))
        everyone = [fingerprints for fingerprints, _, _ in gathered]
        self.members = [f"{rank}:{pid}@{host}" for rank, (_, pid, host) in enumerate(gathered)]
        for rank, theirs in enumerate(everyone):
            differ = [key for key in mine if theirs.get(key) != everyone[0].get(key)]
            if differ:
                what = " and another ".join(differ)
                raise collective(CnncError(f"rank {rank} was started with another {what} than rank 0; "
                                f"every rank of `mpiexec -n {self.size} cnnc train` must get the same spec, data "
                                f"and options (and see the same files)"))

    def gather_at_start(self, mine):
        """Everyone's `mine`, on every rank. Rank 0 collects them one by one, so that it can name the ranks
        that never arrive (failed before they joined) rather than wait for them forever."""
        if not self.is_root:
            self.comm.send(mine, dest=0, tag=START_TAG)
            with self.guard("rank 0 at start-up"):
                return self.comm.bcast(None, root=0)
        gathered = [mine] + [None] * (self.size - 1)
        pending = {rank: self.comm.irecv(source=rank, tag=START_TAG) for rank in range(1, self.size)}
        deadline = time.monotonic() + self.watchdog.timeout
        while pending:
            for rank, request in list(pending.items()):
                done, value = request.test()
                if done:
                    gathered[rank] = value
                    del pending[rank]
            if pending and time.monotonic() > deadline:
                self.fail(f"rank(s) {', '.join(map(str, sorted(pending)))} did not start training within "
                          f"{self.watchdog.timeout:g} s (see their messages above)")
            time.sleep(0.002)
        return self.comm.bcast(gathered, root=0)

    def check_sync(self, model) -> None:
        """--check-sync: the parameters, and batch norm's running statistics, must be bit-identical on every rank."""
        for what, digest in (("parameters", _params_digest(model)), ("batch norm buffers", _buffers_digest(model))):
            with self.guard("the other ranks' checksums"):
                everyone = self.comm.allgather(digest)
            bad = [r for r, d in enumerate(everyone) if d != everyone[0]]
            if bad:
                raise CnncError(f"--check-sync: the {what} of rank(s) {', '.join(map(str, bad))} differ from rank 0's")

    def fail(self, message: str) -> None:
        """This rank cannot go on: say so, naming the rank, and end every rank of the job."""
        print(f"cnnc: rank {self.rank} of {self.size} failed: {message}; stopping all ranks", file=sys.stderr,
              flush=True)
        abort_after_message(self.comm.Abort)


def _params_digest(model) -> str:
    block = getattr(model, "param_block", None)
    data = block if block is not None else np.concatenate([p.reshape(-1) for p in model.params.values()])
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def _buffers_digest(model) -> str:
    digest = hashlib.sha256()
    buffers = getattr(model, "buffers", None) or {}
    for name in sorted(buffers):
        digest.update(name.encode() + np.ascontiguousarray(buffers[name]).tobytes())
    return digest.hexdigest()


def collective(error: CnncError) -> CnncError:
    """Mark an error every rank raises alike: rank 0 reports it, the others end quietly."""
    error.collective = True
    return error


def run_rank(comm: MPIComm, body) -> int:
    """Run one rank's training. An error every rank shares is reported by rank 0; an error of this rank
    alone (a file it cannot read, a bug) is printed with the rank's number and ends the whole job
    (MPI Abort), so that no rank waits forever in a collective."""
    from .diagnostics import CnncError

    try:
        return body()
    except CnncError as e:
        if getattr(e, "collective", False):
            if comm.is_root:
                raise
            return 1
        comm.fail(e.render())
    except KeyboardInterrupt:
        comm.fail("interrupted")
    except Exception as e:  # noqa: BLE001 - any failure of one rank must end all of them
        comm.fail(f"{type(e).__name__}: {e}")
    return 1


def launch_workers(workers: int, argv: list[str]) -> int:
    """cnnc train --workers N: run this same command under mpiexec -n N and return its exit status."""
    import subprocess

    if workers < 1:
        raise CnncError(f"--workers must be at least 1; got {workers}")
    if launched_size() > 1:
        raise CnncError("--workers starts its own MPI job: do not combine it with mpiexec (drop --workers, or "
                        "run without mpiexec)")
    if not any(word == "--workers" or word.startswith("--workers=") for word in argv):
        raise CnncError("--workers re-runs the command line under mpiexec, but cnnc was called from Python with "
                        "other arguments; run `mpiexec -n N cnnc train ...` instead")
    rest, skip = [], False
    for word in argv[argv.index("train") + 1:] if "train" in argv else argv[1:]:
        if skip:
            skip = False
        elif word == "--workers":
            skip = True
        elif not word.startswith("--workers="):
            rest.append(word)
    command = workers_command(workers, rest)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:  # mpiexec forwards Ctrl-C to the ranks, which save a checkpoint
        return 130


@contextlib.contextmanager
def start_watch(watchdog: Watchdog):
    """Guard MPI_Init, which waits for every rank to join and holds Python's lock while it does: a forked
    watcher process ends this one if MPI has not started within the timeout (a rank failed before it
    joined, as with a bad option on one rank only)."""
    if not hasattr(os, "fork"):
        yield
        return
    read, write = os.pipe()
    watcher = os.fork()
    if watcher == 0:  # the watcher: no MPI, no Python clean-up, only a wait on the pipe
        import select
        import signal

        os.close(write)
        try:
            ready, _, _ = select.select([read], [], [], watchdog.timeout)
            if not ready:
                os.write(2, (f"cnnc: rank {watchdog.rank} of {watchdog.size}: MPI did not start within "
                             f"{watchdog.timeout:g} s: another rank failed before it joined (see its message "
                             f"above); stopping\n").encode())
                os.kill(os.getppid(), signal.SIGKILL)
        finally:
            os._exit(0)
    os.close(read)
    try:
        yield
    finally:
        os.close(write)  # the watcher sees end of file and leaves
        os.waitpid(watcher, 0)


def import_mpi():
    """mpi4py's MPI module, or a CnncError saying what to install or fix."""
    try:
        from mpi4py import MPI
    except ModuleNotFoundError:
        raise CnncError(f"data-parallel training needs mpi4py and an MPI library: {INSTALL_HINT}") from None
    except (ImportError, RuntimeError, OSError) as e:
        raise CnncError(f"mpi4py is installed but its MPI library cannot be loaded ({e}); mpi4py must be built "
                        f"against the MPI that runs it: reinstall it (`pip install --force-reinstall --no-binary "
                        f"mpi4py mpi4py` against a site MPI, or {INSTALL_HINT})") from None
    return MPI


def communicator():
    """Local() outside an MPI launcher; an MPIComm inside one (checked against what the launcher says)."""
    expected = launched_size()
    if expected == 1:
        return Local()
    rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("SLURM_PROCID")
    watchdog = Watchdog(int(rank) if rank and rank.isdigit() else -1, expected, collective_timeout())
    with start_watch(watchdog):  # MPI_Init holds the GIL: the watchdog thread cannot run during it
        MPI = import_mpi()
    comm = MPIComm(MPI, watchdog)
    if comm.size != expected:
        raise CnncError(f"the launcher started {expected} processes but mpi4py's MPI sees a job of {comm.size}: "
                        f"the mpiexec in use belongs to another MPI than the one mpi4py was built against "
                        f"({MPI.Get_library_version().splitlines()[0].strip()}); launch with that MPI's mpiexec "
                        f"(the one next to this Python with {INSTALL_HINT}) or rebuild mpi4py against yours")
    if comm.size == 1:
        return Local()
    share_cores()
    return comm


def share_cores() -> None:
    """Unless OMP_NUM_THREADS says otherwise, each rank's OpenMP threads (C backend) get an equal share of
    this machine's cores rather than all of them each. Set before the C library is loaded, which is when
    OpenMP reads it."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or ""
    ranks_here = int(local) if local.isdigit() and int(local) > 0 else 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // ranks_here))


def find_mpiexec() -> str | None:
    """The mpiexec installed with this Python (pip's mpich puts it beside python), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    return shutil.which("mpiexec")


def workers_command(workers: int, argv: list[str]) -> list[str]:
    """The command that runs `cnnc train` argv (without --workers) on `workers` ranks of this machine."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise CnncError(f"--workers needs mpi4py and an MPI library: {INSTALL_HINT}") from None
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise CnncError(f"--workers needs mpiexec, which was not found beside {sys.executable} or on PATH: "
                        f"{INSTALL_HINT} installs MPICH's")
    return [mpiexec, "-n", str(workers), sys.executable, "-m", "cnnc", "train", *argv]
