"""Collectives: the MPI side of data parallelism (mpi4py over the MPI library it finds, the
`mpich` wheel with `pip install 'dlc[mpi]'`). Nothing here is a transport of its own: every
exchange is one MPI call.

    comm = world()                # a Communicator over MPI_COMM_WORLD (mpi4py imported here only)
    comm.rank, comm.size
    comm.share = n_r / N          # this rank's fraction of the step's global batch (batch_share)
    comm.allreduce(array)         # the sum over ranks (MPI_Allreduce): allreduce's reference
    comm.start(i, array)          # bucket i's sum started, not waited for (MPI_Iallreduce)
    comm.wait(i)                  # bucket i's sum, once it has arrived (MPI_Wait)
    comm.bounds(B)                # this rank's contiguous share [lo, hi) of a batch of B examples

On the cuda backend the gradients are summed by NCCL instead (`comm.nccl(cupy)`: one NCCL
communicator over the same ranks, its unique id made by rank 0 and broadcast over MPI), one
process per GPU (`comm.local_rank`: this rank's place among the ranks of its machine).

`launched_ranks()` reads the rank count an MPI launcher announces to the processes it starts
(without importing MPI), so that `mpiexec -n K dlc run ...` turns data parallelism on by itself.
`mpiexec()` is the launcher that `dlc run --ranks K` starts: the one beside this Python (the
`mpich` wheel puts it there), else the one on PATH.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..ir.errors import DlcError

INSTALL = "pip install 'dlc[mpi]'"
# the world size MPI launchers tell the processes they start: MPICH's Hydra (and Slurm's PMI),
# Open MPI, MVAPICH
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def launched_ranks() -> int:
    """The number of ranks the MPI launcher that started this process announced, or 1."""
    for v in SIZE_VARS:
        try:
            return max(1, int(os.environ[v]))
        except (KeyError, ValueError):
            continue
    return 1


def launched_rank() -> int:
    """This process's rank as its launcher announced it (0 when not started by one)."""
    for v in RANK_VARS:
        try:
            return int(os.environ[v])
        except (KeyError, ValueError):
            continue
    return 0


def require_mpi():
    """mpi4py's MPI module, or a DlcError with the line that installs it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DlcError(f"data parallelism needs mpi4py and an MPI library ({e}): {INSTALL}")
    return MPI


def mpiexec() -> str:
    """The MPI launcher for `--ranks`: beside this Python (where the mpich wheel installs it), else on PATH."""
    require_mpi()
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        raise DlcError(f"--ranks: no mpiexec beside {sys.executable} or on PATH: {INSTALL}")
    return found


class Communicator:
    """This process's view of the run: its rank among `size`, its share of the current step's
    batch, and the collectives the runtime needs, each one MPI call. `seconds` and `bytes` count
    the time spent in, and the bytes sent by, the gradient all-reduces (`allreduce`, and `start`
    with `wait` for buckets: the time a step is held up by them, for benchmarks)."""

    def __init__(self, mpi, comm):
        self._mpi, self._comm = mpi, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.share = 1.0 / self.size
        self.seconds, self.bytes = 0.0, 0
        self._started: dict = {}  # bucket -> (request, send buffer, receive buffer), until waited for

    def allreduce(self, x: np.ndarray) -> np.ndarray:
        """The elementwise sum of `x` over all ranks (MPI_Allreduce with MPI_SUM), in x's dtype."""
        x = np.ascontiguousarray(x)
        out = np.empty_like(x)
        t0 = time.perf_counter()
        self._call("an all-reduce", self._comm.Allreduce, x, out, op=self._mpi.SUM)
        self.seconds += time.perf_counter() - t0
        self.bytes += x.nbytes
        return out

    def start(self, bucket: int, x: np.ndarray) -> None:
        """Start the sum over the ranks of bucket `bucket` (MPI_Iallreduce on a copy of `x`, so the
        caller may reuse its buffer) and return without waiting; `wait(bucket)` hands back the sum.
        Every rank starts the buckets in the same order (the plan's), as MPI requires of collectives.
        The requests started before are tested, which lets MPI move them on (MPICH progresses a
        non-blocking collective only inside MPI calls)."""
        t0 = time.perf_counter()
        if bucket in self._started:  # a step that failed between start and wait: finish that one first
            self.wait(bucket)
        send = np.array(x, order="C", copy=True)
        recv = np.empty_like(send)
        req = self._call("an all-reduce", self._comm.Iallreduce, send, recv, op=self._mpi.SUM)
        for other, _, _ in self._started.values():
            self._call("an all-reduce", other.Test)
        self._started[bucket] = (req, send, recv)
        self.seconds += time.perf_counter() - t0
        self.bytes += send.nbytes

    def wait(self, bucket: int) -> np.ndarray:
        """The sum over the ranks that `start(bucket)` began, once it has arrived (MPI_Wait)."""
        if bucket not in self._started:
            raise DlcError(f"data parallel: bucket {bucket}'s all-reduce was never started")
        req, _, recv = self._started.pop(bucket)
        t0 = time.perf_counter()
        self._call("an all-reduce", req.Wait)
        self.seconds += time.perf_counter() - t0
        return recv

    @property
    def local_ranks(self) -> tuple[int, int]:
        """(this rank's place among the ranks on its own machine, how many ranks that machine
        runs): which GPU a rank takes, and whether there are enough."""
        if not hasattr(self, "_local"):
            node = self._call("a split", self._comm.Split_type, self._mpi.COMM_TYPE_SHARED)
            self._local = (node.Get_rank(), node.Get_size())
            node.Free()
        return self._local

    def nccl(self, cp):
        """A NCCL communicator over the ranks of this run, on the current GPU (`cp` is CuPy):
        rank 0 makes the unique id, MPI broadcasts it, every rank joins (ncclCommInitRank)."""
        uid = cp.cuda.nccl.get_unique_id() if self.rank == 0 else None
        uid = self._call("a broadcast", self._comm.bcast, uid, root=0)
        return cp.cuda.nccl.NcclCommunicator(self.size, uid, self.rank)

    def sum(self, values) -> list[float]:
        """Numbers summed over the ranks, in float64 (the loop's loss and accuracy counts)."""
        return [float(v) for v in self.allreduce(np.asarray(values, np.float64))]

    def broadcast(self, arrays: dict) -> dict:
        """Rank 0's arrays, on every rank (the model buffers before an evaluation)."""
        out = {}
        for k in sorted(arrays):
            a = np.ascontiguousarray(arrays[k])
            self._call("a broadcast", self._comm.Bcast, a, root=0)
            out[k] = a
        return out

    def allgather(self, value) -> list:
        """Every rank's `value` (a small picklable object), in rank order."""
        return self._call("an allgather", self._comm.allgather, value)

    def _call(self, what: str, fn, *args, **kw):
        """An MPI call; its failure (MPI_COMM_WORLD returns errors: `world`) a DlcError naming the
        rank MPI says it lost contact with, where it says."""
        try:
            return fn(*args, **kw)
        except self._mpi.Exception as e:
            text = str(e)
            lost = re.search(r"(?:with|from|to) rank (\d+)", text)
            who = f"rank {lost.group(1)} was lost" if lost else "another rank was lost or failed"
            raise DlcError(f"data parallel: {what} failed: {who} (MPI: {text.splitlines()[0] if text else e})")

    def bounds(self, batch: int) -> tuple[int, int]:
        """This rank's contiguous share [lo, hi) of a batch of `batch` examples: the first
        batch % size ranks take one example more than the others; [lo, lo) when batch < size
        leaves this rank none."""
        q, r = divmod(batch, self.size)
        lo = self.rank * q + min(self.rank, r)
        return lo, lo + q + (self.rank < r)

    def abort(self, code: int, message: str = "") -> None:
        """Say `message` on stderr and end every rank of the run now (MPI_Abort): after an error on
        one rank, so that none waits for it."""
        sys.stdout.flush()
        sys.stderr.flush()
        if message:
            os.write(2, (message.rstrip("\n") + "\n").encode())  # one write: whole, before the end
            time.sleep(0.3)  # the launcher relays it before MPI_Abort has it end the processes (seen lost once)
        self._comm.Abort(code)
        os._exit(code)  # MPICH's MPI_Abort may return to the caller while the launcher ends the job


_WORLD: Communicator | None = None
PIDS_VAR = "DLC_RANK_PIDS"  # set by `run_ranks`: a folder where each rank leaves its process id


def world() -> Communicator:
    """The Communicator over MPI_COMM_WORLD (MPI initialised on first use, once per process)."""
    global _WORLD
    if _WORLD is None:
        mpi = require_mpi()
        mpi.COMM_WORLD.Set_errhandler(mpi.ERRORS_RETURN)  # a lost rank: an error here, said by dlc
        _WORLD = Communicator(mpi, mpi.COMM_WORLD)
        if os.environ.get(PIDS_VAR):  # so that `run_ranks` can name a rank that is lost
            try:
                Path(os.environ[PIDS_VAR], str(os.getpid())).write_text(str(_WORLD.rank))
            except OSError:
                pass
    return _WORLD


def started() -> Communicator | None:
    """The world communicator if this process has started MPI, else None."""
    return _WORLD


def run_ranks(ranks: int, argv: list[str]) -> int:
    """`dlc run --ranks K`: start K processes of `dlc` with `argv` under mpiexec on this machine and
    wait for them; returns the launcher's exit status. The launcher's own lines pass through; when
    it reports a process that ended badly, the line after them names that process's rank."""
    import subprocess
    import tempfile
    import threading
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "dlc.cli", *argv]
    with tempfile.TemporaryDirectory(prefix="dlc-ranks-") as pids:
        sys.stdout.flush()
        proc = subprocess.Popen(cmd, env=dict(os.environ, **{PIDS_VAR: pids}), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, bufsize=1)
        lost: list[str] = []

        def relay(src, dst):  # line by line, as it comes; the launcher's report of a lost process noted
            for line in src:
                dst.write(line)
                dst.flush()
                found = re.search(r"\bPID (\d+) RUNNING AT", line)
                if found:
                    lost.append(found.group(1))
        threads = [threading.Thread(target=relay, args=(proc.stdout, sys.stdout), daemon=True),
                   threading.Thread(target=relay, args=(proc.stderr, sys.stderr), daemon=True)]
        for t in threads:
            t.start()
        rc = proc.wait()
        for t in threads:
            t.join(timeout=5)
        for pid in lost:
            f = Path(pids, pid)
            rank = f.read_text() if f.exists() else "?"
            print(f"dlc: rank {rank} of {ranks} (process {pid}) was lost, exit status {rc}; mpiexec ended the "
                  f"other ranks", file=sys.stderr, flush=True)
    return rc
