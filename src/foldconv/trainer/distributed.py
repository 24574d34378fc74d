"""Synchronous data-parallel training over MPI (mpi4py), NCCL through CuPy on GPUs.

``mpiexec -n N foldconv train --distributed ...`` (or ``train(..., distributed=True)`` in
every process of an MPI job) trains one model with N processes:

- at the start every parameter and buffer is broadcast from rank 0;
- ``batch_size`` is the *global* batch: each step, every rank takes the rows
  ``rank, rank + N, ...`` of the batch one process would take (the epoch's order fixed by
  the seed, as :class:`foldconv.data.DataLoader` makes it), so the shards are disjoint
  and together are that batch. ``batch_size`` must be a multiple of N. The last batch of
  an epoch, when the dataset does not divide, is split the same way (ranks differ by at
  most one image; a rank may get none): nothing is padded or dropped;
- each rank's loss gradient is scaled by (its images / the batch's images), so the
  gradients, summed by allreduce over flat buckets of at most 25 MiB (not one call per
  parameter), are those of the mean loss over the whole batch: N processes follow the
  trajectory of one process with the same ``batch_size``, up to rounding;
- BatchNorm normalises each rank's shard with the shard's statistics, as PyTorch's
  DistributedDataParallel; the running statistics are rank 0's (broadcast to every rank
  before each evaluation, as DDP's ``broadcast_buffers``). With ``sync_batchnorm`` the
  batch mean and variance are those of the whole batch (allreduced in the forward), and
  the backward allreduces the two per-channel sums its input gradient needs, as
  ``torch.nn.SyncBatchNorm``: the gradients are exactly those of one process;
- every rank loads the dataset and (to resume) the checkpoint itself, so on several
  machines they must see the same files; each rank builds and augments the whole global
  batch before taking its rows (the random crops/flips of one process, exactly; cheap next
  to the network), and reads its rows only of the test set;
- dropout draws its masks from per-rank streams: rank r's generators are rank 0's jumped
  r times (2^127 draws apart for PCG64), so the ranks' masks are independent, and the
  streams follow from the seed (and a checkpoint's states, which are rank 0's) alone;
- only rank 0 writes files and prints; the evaluation is split over the ranks;
- Ctrl-C (mpiexec forwards it to every rank) is agreed on at the next step: every rank
  stops at the same step boundary and rank 0 saves once;
- an exception on a rank prints ``foldconv: rank R of N failed: ...`` with its traceback
  and aborts the job (MPI_Abort), so no rank waits forever in a collective; a rank that
  ends abruptly (killed, ``os._exit``, a crash in native code) is reported by a small
  watcher process it started, and mpiexec stops the others.

Gradients are allreduced after the backward pass, not overlapped with it: see
BENCHMARKS.md ("Distributed training") for the measurement behind that choice.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from foldconv.backend import get_array_module, to_device
from foldconv.nn.module import Module, Parameter

__all__ = [
    "BUCKET_BYTES",
    "Communicator",
    "DistributedError",
    "GradientBuckets",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "init_distributed",
]

MPI_HINT = 'pip install "foldconv[mpi]"'
BUCKET_BYTES = 25 * 2**20  # as DistributedDataParallel's default bucket_cap_mb

# Variables the MPI launchers (MPICH's Hydra, Open MPI, PMIx, Slurm's srun) set in the
# processes they start.
_LAUNCHER_VARS = (
    "PMI_RANK",
    "PMI_SIZE",
    "PMIX_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "MPI_LOCALNRANKS",
    "SLURM_PROCID",
)


class DistributedError(RuntimeError):
    """A distributed run cannot start (no MPI, not under mpiexec) or a rank failed."""


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (mpiexec, mpirun, srun)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def launched_world_size() -> int:
    """How many processes the MPI launcher started, from its environment (1 if none)."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def current_rank() -> int:
    """This process's MPI rank when MPI is running in it, else 0."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return 0
    return int(mpi.COMM_WORLD.Get_rank())


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI  # noqa: PLC0415
    except ImportError as e:
        raise DistributedError(
            f"distributed: training over processes needs mpi4py and an MPI library ({MPI_HINT}"
            f", which brings both); importing mpi4py failed: {e}"
        ) from None
    return MPI


# --------------------------------------------------------------------------------------------
# the communicator
# --------------------------------------------------------------------------------------------
class Communicator:
    """The processes of an MPI job and the collectives a distributed run uses.

    Host (NumPy) arrays go through MPI; device (CuPy) arrays through NCCL when
    :meth:`init_distributed` set it up (``cupy.cuda.nccl``), else through host copies.

    Attributes
    ----------
    rank, size : int
        This process's rank and the number of processes.
    allreduce_seconds, allreduce_bytes, allreduce_calls : float, int, int
        Totals over :meth:`allreduce_` calls (the gradient buckets), for benchmarks.
    """

    def __init__(self, comm: Any, mpi: Any) -> None:
        self.comm = comm
        self.MPI = mpi
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())
        self.nccl: Any = None
        self.allreduce_seconds = 0.0
        self.allreduce_bytes = 0
        self.allreduce_calls = 0

    # -- objects ------------------------------------------------------------------------------
    def bcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled)."""
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (pickled)."""
        return self.comm.allgather(obj)

    # -- arrays -------------------------------------------------------------------------------
    def bcast_arrays(self, arrays: Sequence[Any]) -> None:
        """Overwrite each array, in place, with rank 0's (packed in one flat buffer per
        dtype: one call per dtype, not per array)."""
        by_dtype: dict[Any, list[Any]] = {}
        for a in arrays:
            by_dtype.setdefault(np.dtype(a.dtype), []).append(a)
        for dtype, group in by_dtype.items():
            flat = np.concatenate([np.asarray(to_device(a, "cpu")).ravel() for a in group]).astype(
                dtype, copy=False
            )
            self.comm.Bcast(flat, root=0)
            off = 0
            for a in group:
                n = int(a.size)
                xp = get_array_module(a)
                a[...] = xp.asarray(flat[off : off + n].reshape(a.shape))
                off += n

    def allreduce_(self, buf: Any) -> None:
        """Sum ``buf`` (a contiguous 1-d array) over the ranks, in place."""
        t = time.perf_counter()
        if self.nccl is not None and not isinstance(buf, np.ndarray):
            self.nccl.allreduce_(buf)
        elif isinstance(buf, np.ndarray):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        else:  # device array without NCCL: through the host
            host = np.asarray(to_device(buf, "cpu"))
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            buf[...] = get_array_module(buf).asarray(host)
        self.allreduce_seconds += time.perf_counter() - t
        self.allreduce_bytes += int(buf.nbytes)
        self.allreduce_calls += 1

    def allreduce_values(self, values: Sequence[float]) -> np.ndarray:
        """The sums over the ranks of a few numbers (float64)."""
        buf = np.asarray(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def abort(self, code: int = 1) -> None:
        """End every process of the job (MPI_Abort)."""
        self.comm.Abort(code)


class _Nccl:
    """Sums of CuPy arrays over the ranks with NCCL (``cupy.cuda.nccl``), one GPU a rank.

    Not tested here (no GPU): written against CuPy's documented NcclCommunicator.
    """

    def __init__(self, comm: Communicator) -> None:
        import cupy  # noqa: PLC0415
        from cupy.cuda import nccl  # noqa: PLC0415

        self.cupy, self.nccl = cupy, nccl
        # One GPU a rank: the processes of a machine take its GPUs in turn.
        local = int(
            os.environ.get("MPI_LOCALRANKID", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
        )
        cupy.cuda.Device(local % cupy.cuda.runtime.getDeviceCount()).use()
        uid = comm.bcast(nccl.get_unique_id() if comm.rank == 0 else None)
        self.comm = nccl.NcclCommunicator(comm.size, uid, comm.rank)
        self.types = {
            np.dtype(np.float32): nccl.NCCL_FLOAT32,
            np.dtype(np.float64): nccl.NCCL_FLOAT64,
            np.dtype(np.float16): nccl.NCCL_FLOAT16,
        }

    def allreduce_(self, buf: Any) -> None:
        stream = self.cupy.cuda.get_current_stream()
        self.comm.allReduce(
            buf.data.ptr,
            buf.data.ptr,
            buf.size,
            self.types[np.dtype(buf.dtype)],
            self.nccl.NCCL_SUM,
            stream.ptr,
        )
        stream.synchronize()


def init_distributed(device: str = "cpu") -> Communicator:
    """The MPI world of this process, for a distributed run.

    Raises
    ------
    DistributedError
        When mpi4py is missing, or the process was not started by mpiexec/mpirun/srun.
    """
    if not launched_by_mpi():
        raise DistributedError(
            "distributed: this process was not started by an MPI launcher; run it as "
            "`mpiexec -n N foldconv train --distributed ...` (or start the Python script "
            "calling train(distributed=True) with mpiexec -n N)"
        )
    mpi = _import_mpi()
    comm = Communicator(mpi.COMM_WORLD, mpi)
    if device != "cpu":
        try:
            comm.nccl = _Nccl(comm)
        except (ImportError, AttributeError):  # CuPy without NCCL: MPI through the host
            comm.nccl = None
    return comm


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------
class GradientBuckets:
    """The parameters' gradients packed into flat buffers of at most ``bucket_bytes`` and
    summed over the ranks, one allreduce per buffer.

    Parameters are bucketed in reverse order (the backward pass produces the last layers'
    gradients first, as DistributedDataParallel orders them) and by dtype; a parameter
    larger than ``bucket_bytes`` gets a bucket of its own.
    """

    def __init__(
        self, params: Sequence[Parameter], comm: Communicator, bucket_bytes: int = BUCKET_BYTES
    ) -> None:
        self.comm = comm
        self.buckets: list[tuple[Any, list[tuple[Parameter, int, int]]]] = []
        open_: dict[Any, list[Parameter]] = {}
        sizes: dict[Any, int] = {}
        plan: list[list[Parameter]] = []
        for p in reversed(list(params)):
            dt = np.dtype(p.dtype)
            nbytes = p.size * dt.itemsize
            if dt in open_ and sizes[dt] + nbytes > bucket_bytes:
                plan.append(open_.pop(dt))
            if dt not in open_:
                open_[dt], sizes[dt] = [], 0
            open_[dt].append(p)
            sizes[dt] += nbytes
        plan.extend(open_.values())
        for group in plan:
            xp = get_array_module(group[0].data)
            total = sum(p.size for p in group)
            flat = xp.empty(total, dtype=group[0].dtype)
            entries, off = [], 0
            for p in group:
                entries.append((p, off, p.size))
                off += p.size
            self.buckets.append((flat, entries))

    @property
    def nbytes(self) -> int:
        """Bytes allreduced per step."""
        return int(sum(flat.nbytes for flat, _ in self.buckets))

    def allreduce(self) -> None:
        """Replace every gradient by its sum over the ranks (a missing one counts as 0)."""
        for flat, entries in self.buckets:
            for p, off, n in entries:
                if p.grad is None:
                    flat[off : off + n] = 0
                else:
                    flat[off : off + n] = p.grad.reshape(-1)
            self.comm.allreduce_(flat)
            for p, off, n in entries:
                # A view: the next zero_grad drops it before the buffer is packed again.
                p.grad = flat[off : off + n].reshape(p.shape)


def shard(n: int, rank: int, size: int) -> slice:
    """The rows of a batch of ``n`` that ``rank`` of ``size`` takes: rank, rank + size, ..."""
    return slice(rank, n, size)


class ShardDataset:
    """The items ``rank, rank + size, ...`` of a dataset (for splitting the evaluation)."""

    def __init__(self, dataset: Any, rank: int, size: int) -> None:
        self.dataset = dataset
        self.indices = np.arange(rank, len(dataset), size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx: Any) -> Any:
        return self.dataset[self.indices[idx]]


# --------------------------------------------------------------------------------------------
# synchronised batch normalisation
# --------------------------------------------------------------------------------------------
class SyncBatchNorm(Module):
    """A BatchNorm layer whose training statistics are those of the global batch.

    Made by :func:`convert_sync_batchnorm` from a BatchNorm1d/2d, sharing its parameters
    and buffers (so names and checkpoints are unchanged). In training, with the n_r values
    per channel of each rank and n = sum n_r:

    forward: mean = (sum over ranks of sum x) / n, then var = (sum over ranks of
    sum (x - mean)^2) / n (two allreduces of C numbers; the same two passes as one
    process), y = (x - mean) * invstd * weight + bias; the running statistics are updated
    with the unbiased var * n / (n - 1), as one process over the whole batch does.

    backward: with g = dL/dy and x_hat = (x - mean) * invstd,
    dx = weight * invstd * (g - S1 / n - x_hat * S2 / n), S1 = sum g and S2 = sum g x_hat
    over the whole batch (one allreduce of 2C numbers); dweight = sum g x_hat and
    dbias = sum g over the rank's own values (the gradient allreduce sums them).
    In eval mode it is the plain layer (running statistics, no communication).
    """

    def __init__(self, bn: Module, comm: Communicator) -> None:
        super().__init__()
        # The same tables: parameters and buffers are the layer's own objects.
        for table in ("_parameters", "_buffers", "_modules"):
            object.__setattr__(self, table, getattr(bn, table))
        for key in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            object.__setattr__(self, key, getattr(bn, key))
        object.__setattr__(self, "training", bn.training)
        # Not a submodule (its names would change): the wrapped layer, for eval mode.
        object.__setattr__(self, "_source", bn)
        self.comm = comm
        self._cache: Any = None

    def _check_input(self, x: Any) -> None:
        self._source._check_input(x)

    def forward(self, x: Any) -> Any:
        """Normalise per channel with the global batch's statistics (training)."""
        self._check_input(x)
        if not self.training:
            self._source.training = False
            self._cache = None
            return self._source.forward(x)
        from foldconv.functional.activation import _compute_dtype  # noqa: PLC0415
        from foldconv.functional.normalization import _channel_shape, _reduce_axes  # noqa: PLC0415

        xp = get_array_module(x)
        ct = _compute_dtype(x.dtype)
        xc = x.astype(ct, copy=False)
        c = self.num_features
        cs, axes = _channel_shape(x), _reduce_axes(x)
        n_local = x.size // c if c else 0
        sums = self.comm.allreduce_values(
            list(np.asarray(to_device(xp.sum(xc, axis=axes), "cpu"), np.float64)) + [n_local]
        )
        n = int(sums[-1])
        if n <= 1:
            raise ValueError(
                f"x: expected more than 1 value per channel in the global batch when "
                f"training, got {n}"
            )
        mean = xp.asarray((sums[:-1] / n).astype(ct))
        centered = xc - mean.reshape(cs)
        sq = self.comm.allreduce_values(
            np.asarray(to_device(xp.sum(centered * centered, axis=axes), "cpu"), np.float64)
        )
        var = xp.asarray((sq / n).astype(ct))
        if self.track_running_stats:
            nbt = self.num_batches_tracked
            nbt += 1  # in place: the buffer object stays registered
            m = 1.0 / float(nbt) if self.momentum is None else float(self.momentum)
            rm, rv = self.running_mean, self.running_var
            rm *= 1 - m
            rm += (m * mean).astype(rm.dtype, copy=False)
            rv *= 1 - m
            rv += (m * var * (n / (n - 1))).astype(rv.dtype, copy=False)
        invstd = 1 / xp.sqrt(var + ct.type(self.eps))
        xhat = centered * invstd.reshape(cs)
        y = xhat
        if self.affine:
            y = xhat * self.weight.data.astype(ct, copy=False).reshape(cs) + self.bias.data.astype(
                ct, copy=False
            ).reshape(cs)
        self._cache = (xhat, invstd, n, x.dtype)
        return y.astype(x.dtype, copy=True)

    def backward(self, grad_output: Any) -> Any:
        """dx = weight * invstd * (g - S1 / n - x_hat * S2 / n) with the global sums S1 =
        sum g, S2 = sum g x_hat; dweight = sum g x_hat, dbias = sum g (this rank's)."""
        if self._cache is None:
            return self._source.backward(grad_output)
        from foldconv.functional.normalization import _channel_shape, _reduce_axes  # noqa: PLC0415

        xhat, invstd, n, x_dtype = self._cache
        if tuple(grad_output.shape) != tuple(xhat.shape):
            raise ValueError(
                f"grad_output: expected shape {tuple(xhat.shape)}, got {tuple(grad_output.shape)}"
            )
        xp = get_array_module(xhat)
        cs, axes = _channel_shape(xhat), _reduce_axes(xhat)
        g = grad_output.astype(xhat.dtype, copy=False)
        dbias = xp.sum(g, axis=axes)
        dweight = xp.sum(g * xhat, axis=axes)
        c = self.num_features
        both = self.comm.allreduce_values(
            np.concatenate(
                [
                    np.asarray(to_device(dbias, "cpu"), np.float64),
                    np.asarray(to_device(dweight, "cpu"), np.float64),
                ]
            )
        )
        s1 = xp.asarray(both[:c].astype(xhat.dtype))
        s2 = xp.asarray(both[c:].astype(xhat.dtype))
        scale = invstd if not self.affine else invstd * self.weight.data.astype(xhat.dtype)
        dx = (scale / n).reshape(cs) * (n * g - s1.reshape(cs) - xhat * s2.reshape(cs))
        if self.affine:
            self.weight.accumulate(dweight.astype(self.weight.dtype, copy=False))
            self.bias.accumulate(dbias.astype(self.bias.dtype, copy=False))
        return dx.astype(x_dtype, copy=False)

    def train(self, mode: bool = True) -> Module:
        object.__setattr__(self, "training", bool(mode))
        self._source.training = bool(mode)
        return self


def convert_sync_batchnorm(model: Module, comm: Communicator) -> Callable[[], None]:
    """Swap every BatchNorm layer of ``model`` for a :class:`SyncBatchNorm` sharing its
    parameters and buffers; returns the function that puts the original layers back."""
    from foldconv.nn.normalization import _BatchNorm  # noqa: PLC0415

    swapped: list[tuple[Module, str, Module]] = []
    for _, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, _BatchNorm):
                parent._modules[name] = SyncBatchNorm(child, comm)
                swapped.append((parent, name, child))

    def restore() -> None:
        for parent, name, child in swapped:
            child.training = parent._modules[name].training
            parent._modules[name] = child

    return restore


# --------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------
_WATCHER = r"""
import sys
data = sys.stdin.buffer.read()
if not data.endswith(b"released"):
    sys.stderr.write(
        "foldconv: rank %s of %s (pid %s on %s) ended abruptly, without an error of its "
        "own: killed by a signal, os._exit, a crash in native code, or stopped by mpiexec "
        "after another rank ended; the job stops\n" % tuple(sys.argv[1:5])
    )
    sys.stderr.flush()
"""


class Watcher:
    """A small process that reports this rank ending without a word (killed, ``os._exit``,
    a crash in native code): it reads a pipe from the rank until the pipe closes, and
    prints the rank's name unless the rank released it first."""

    def __init__(self, rank: int, size: int) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WATCHER,
                    str(rank),
                    str(size),
                    str(os.getpid()),
                    socket.gethostname(),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # not killed with the rank's process group
            )
        except OSError:  # pragma: no cover - no way to start a process: no watcher
            self.proc = None

    def release(self) -> None:
        """This rank ends in an orderly way (returned, or reported its own error)."""
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write(b"released")
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):  # pragma: no cover
                pass
            self.proc = None


def fail(comm: Communicator, watcher: Watcher, error: BaseException) -> None:
    """Report ``error`` on this rank (stderr: the rank, the cause, the traceback) and abort
    the whole job, so that no rank waits for this one in a collective."""
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    cause = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    sys.stderr.write(
        f"foldconv: rank {comm.rank} of {comm.size} failed: {cause}\n{tb}"
        f"foldconv: rank {comm.rank} aborts the job (MPI_Abort)\n"
    )
    sys.stderr.flush()
    watcher.release()
    comm.abort(1)


def decorrelate_generators(generators: Sequence[np.random.Generator], rank: int) -> None:
    """Move each generator to rank ``rank``'s stream: its state jumped ``rank`` times.

    Every rank starts from rank 0's states (same seed, or the same checkpoint); without
    this, dropout would drop the same units of every rank's shard, a correlation a
    single process training on the whole batch never has.
    """
    if rank == 0:
        return
    for g in generators:
        bits = g.bit_generator
        if not hasattr(bits, "jumped"):
            raise TypeError(
                f"distributed: dropout's generator {type(bits).__name__} cannot jump to "
                "independent per-rank streams; use numpy.random.default_rng (PCG64)"
            )
        bits.state = bits.jumped(rank).state


# Settings that may differ between ranks: each machine has its own paths, and rank 0's
# output directory is broadcast to the others.
_PER_RANK_SETTINGS = frozenset({"out", "data_dir", "device"})


def check_same_run(comm: Communicator, cfg: Mapping[str, Any], shapes: Sequence[Any]) -> None:
    """Every rank must train the same run: the same settings (paths aside) and the same
    parameter shapes. Ranks launched with different ``--epochs`` would otherwise wait
    forever for each other at the end, and different ``--lr`` would average gradients
    of different steps silently. Raises on every rank, naming the settings that differ."""
    mine = {k: v for k, v in sorted(cfg.items()) if k not in _PER_RANK_SETTINGS}
    mine["parameter shapes"] = [list(map(int, s)) for s in shapes]
    everyone = comm.allgather(repr(mine))
    if all(e == everyone[0] for e in everyone):
        return
    import ast  # noqa: PLC0415

    runs = [ast.literal_eval(e) for e in everyone]
    keys = sorted({k for r in runs for k in r if any(q.get(k) != r.get(k) for q in runs)})
    text = "; ".join(
        f"{k}: " + ", ".join(f"rank {i} {r.get(k)!r}" for i, r in enumerate(runs)) for k in keys
    )
    raise DistributedError(f"distributed: the ranks were started with different settings ({text})")


def agree(comm: Communicator, build: Callable[[], Any]) -> Any:
    """``build()`` on every rank, then agree on the outcome before any collective: if a
    rank failed, every rank raises (its own error, or one naming the ranks that failed)."""
    try:
        result, error = build(), None
    except Exception as e:  # noqa: BLE001 - every failure must be shared
        result, error = None, e
    outcomes = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, o) for r, o in enumerate(outcomes) if o is not None]
    if failed:
        text = "; ".join(f"rank {r}: {o}" for r, o in failed)
        raise DistributedError(f"distributed: set-up failed on another rank ({text})")
    return result


def batches_of_rank(
    batches: Iterator[tuple[Any, Any]], rank: int, size: int
) -> Iterator[tuple[Any, Any, int]]:
    """(x, y, global batch size) of this rank's shard of each global batch."""
    for x, y in batches:
        rows = shard(len(y), rank, size)
        yield x[rows], y[rows], len(y)
