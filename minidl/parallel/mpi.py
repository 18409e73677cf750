"""Data parallelism over processes: MPI through mpi4py, and NCCL for GPU gradients.

Launch any ``minidl train`` under an MPI launcher::

    pip install 'minidl[mpi]'                     # mpi4py and MPICH's wheel (mpiexec)
    mpiexec -n 2 minidl train models/alexnet-mini.yaml --out runs/mpi

Every process builds the same model and reads the same global batches (same
seed, same shuffle); each one trains on its own contiguous share of every
batch, and the gradients are summed with one ``Allreduce`` per step after
each process weighted its own by its share of the batch. The update is
therefore the one a single process makes with the same global batch, and the
learning rate is not scaled. Dropout masks are drawn for the whole global
batch on every process (each keeps its rows), so the processes also agree
with a single one there. Rank 0 alone writes checkpoints, metrics and plots;
every rank resumes from the checkpoint rank 0 picks.

The same Allreduce carries the step's loss and a stop flag, so a non-finite
loss or a Ctrl-C stops every rank at the same step. An error on one rank
aborts the whole job (``MPI_Abort``) instead of leaving the others waiting,
and a rank that dies is noticed by the launcher, which ends the others.
On GPUs the gradients are summed with NCCL (``cupy.cuda.nccl``), whose
communicator is set up over MPI.
"""
from __future__ import annotations

import json
import os

import numpy

from .. import backend
from ..backend import CPU, transfer
from ..tensor import _wrap

__all__ = ["World", "world", "launched_ranks"]

_RANK_VARIABLES = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                   ("PMIX_RANK", "PMIX_SIZE"))
_world = None


def launched_ranks() -> int:
    """How many processes the MPI launcher started (1 when not under ``mpiexec``)."""
    for _, size in _RANK_VARIABLES:
        if os.environ.get(size, "").isdigit():
            return int(os.environ[size])
    return 1


def world():
    """The MPI world of this process, or None when it runs alone (not under ``mpiexec -n N`` with N > 1)."""
    global _world
    if _world is None and launched_ranks() > 1:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise RuntimeError(f"started by an MPI launcher with {launched_ranks()} processes but mpi4py does not "
                               f"import ({e}); install it with: pip install 'minidl[mpi]'") from None
        _world = World(MPI.COMM_WORLD)
    return _world


class World:
    """The processes of one data-parallel job, and the collectives training needs."""

    def __init__(self, comm):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self._buffer = None
        self._nccl = None

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def local_rank(self) -> int:
        for name in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_LOCAL_RANK"):
            if os.environ.get(name, "").isdigit():
                return int(os.environ[name])
        return self.rank

    def share(self, n: int) -> tuple:
        """This rank's rows ``(lo, hi)`` of a global batch of ``n``."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    # ---------------------------------------------------------- collectives
    def broadcast_parameters(self, model) -> None:
        """Give every rank rank 0's parameters (buffer Bcast, no pickling)."""
        for _, p in model.named_parameters():
            host = numpy.ascontiguousarray(transfer(p.data, CPU))
            self.comm.Bcast(host, root=0)
            if not self.is_root:
                p.data = transfer(host, p.device)

    def allreduce_step(self, params, weight: float, loss: float, stop: bool) -> tuple:
        """Sum ``weight * grad`` over ranks into every ``p.grad``; returns (global loss, stop on any rank).

        ``weight`` is this rank's share of the global batch, so the summed
        gradient is the global batch's mean gradient. The weighted loss and
        the stop flag travel in the same message.
        """
        params = list(params)
        device = params[0].device
        xp = device.xp
        total = sum(p.size for p in params) + 2
        with device.context():
            buffer = self._buffer  # reused on the CPU (no page faults); CuPy has its own memory pool
            if buffer is None or buffer.size != total or buffer.dtype != params[0].dtype or xp is not numpy:
                buffer = self._buffer = xp.empty(total, dtype=params[0].dtype)
            offset = 0
            for p in params:
                part = buffer[offset:offset + p.size]
                if p.grad is None:
                    part[...] = 0
                else:
                    xp.multiply(p.grad.data.reshape(-1), weight, out=part)
                offset += p.size
            buffer[-2] = loss * weight
            buffer[-1] = 1.0 if stop else 0.0
            if xp is numpy:
                self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
            else:
                self._nccl_allreduce(buffer)
            offset = 0
            for p in params:
                grad = buffer[offset:offset + p.size].reshape(p.shape)
                p.grad = _wrap(grad.copy() if xp is numpy else grad, device)  # the CPU buffer is reused
                offset += p.size
            tail = transfer(buffer[-2:], CPU)
        return float(tail[0]), bool(tail[1] > 0)

    def _nccl_allreduce(self, buffer) -> None:
        """Sum a CuPy buffer over ranks in place with NCCL (the communicator is set up over MPI once)."""
        nccl = backend.nccl()
        if self._nccl is None:
            uid = nccl.get_unique_id() if self.is_root else None
            uid = tuple(self.broadcast_json(list(uid) if uid is not None else None))
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        kind = {numpy.dtype("float32"): nccl.NCCL_FLOAT32, numpy.dtype("float64"): nccl.NCCL_FLOAT64,
                numpy.dtype("float16"): nccl.NCCL_FLOAT16}[numpy.dtype(buffer.dtype)]
        stream = backend.get_array_module(buffer).cuda.get_current_stream()
        self._nccl.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, kind, nccl.NCCL_SUM, stream.ptr)

    def sum(self, values) -> numpy.ndarray:
        """Elementwise sum over ranks of a short list of numbers (float64)."""
        buffer = numpy.asarray(values, dtype=numpy.float64).copy()
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        return buffer

    def broadcast_json(self, value):
        """Rank 0's JSON-able ``value`` on every rank (sent as JSON bytes: nothing is unpickled)."""
        data = json.dumps(value).encode() if self.is_root else b""
        length = numpy.array([len(data)], dtype=numpy.int64)
        self.comm.Bcast(length, root=0)
        buffer = numpy.frombuffer(data, dtype=numpy.uint8).copy() if self.is_root else \
            numpy.empty(int(length[0]), dtype=numpy.uint8)
        self.comm.Bcast(buffer, root=0)
        return json.loads(buffer.tobytes().decode())

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (after an error on this one)."""
        self.comm.Abort(code)
