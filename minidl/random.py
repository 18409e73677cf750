"""Random numbers for minidl (dropout masks, initializers, data shuffling), seedable in one place.

``mdl.random.manual_seed(0)`` makes a run reproducible. The CPU generator is
a NumPy ``Generator`` (PCG64), whose state can be saved in a checkpoint and
restored bit for bit with :func:`get_state` / :func:`set_state`. On a GPU the
CuPy generator of that device is used.
"""
from __future__ import annotations

import contextlib
import threading

import numpy

from .backend import as_device

__all__ = ["manual_seed", "generator", "uniform", "normal", "get_state", "set_state", "batch_shard", "fork_rng"]


class _Shard(threading.local):
    rows = None  # (lo, hi, total) inside batch_shard()


_shard = _Shard()


@contextlib.contextmanager
def batch_shard(lo: int, hi: int, total: int):
    """Draw per-sample random numbers as if for the whole batch of ``total`` rows, keeping rows ``lo:hi``.

    Data-parallel processes each run rows ``lo:hi`` of a global batch; inside
    this block a draw whose first axis is ``hi - lo`` long (a dropout mask)
    is made for all ``total`` rows and sliced, so every process uses exactly
    the mask a single process would, and all generators stay in step.
    """
    previous = _shard.rows
    _shard.rows = (int(lo), int(hi), int(total))
    try:
        yield
    finally:
        _shard.rows = previous

_seed = 0
_cpu = numpy.random.default_rng(_seed)
_cuda = {}  # device index -> CuPy generator, made on first use from the seed


def manual_seed(seed: int) -> None:
    """Seed the CPU generator and (lazily) every CUDA generator."""
    global _cpu, _seed
    _seed = int(seed)
    _cpu = numpy.random.default_rng(_seed)
    _cuda.clear()


@contextlib.contextmanager
def fork_rng():
    """Run a block whose seeding and draws leave the global generators as they were (``torch.random.fork_rng``).

    >>> with mdl.random.fork_rng():
    ...     mdl.random.manual_seed(0)      # only inside the block
    """
    global _cpu, _seed
    saved_cpu, saved_state, saved_seed, saved_cuda = _cpu, _cpu.bit_generator.state, _seed, dict(_cuda)
    try:
        yield
    finally:
        _cpu, _seed = saved_cpu, saved_seed
        _cpu.bit_generator.state = saved_state
        _cuda.clear()
        _cuda.update(saved_cuda)


def _new_cuda_generator(index, seed):
    device = as_device(f"cuda:{index}")
    with device.context():
        return device.xp.random.default_rng(seed)


def generator(device=None):
    """The generator for ``device`` (NumPy's on the CPU, CuPy's on a GPU)."""
    device = as_device(device)
    if device.type == "cpu":
        return _cpu
    if device.index not in _cuda:
        _cuda[device.index] = _new_cuda_generator(device.index, _seed + device.index)
    return _cuda[device.index]


def uniform(shape, dtype, device=None):
    """Uniform samples in [0, 1) as an array on ``device``."""
    device = as_device(device)
    rows = _shard.rows
    if rows is not None and len(shape) and shape[0] == rows[1] - rows[0] != rows[2]:
        return uniform((rows[2],) + tuple(shape[1:]), dtype, device)[rows[0]:rows[1]]
    gen = generator(device)
    dtype = numpy.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize >= 4:
        with device.context():
            return gen.random(shape, dtype=dtype)
    with device.context():
        return gen.random(shape, dtype=numpy.float32).astype(dtype)


def normal(shape, std, dtype, device=None, mean=0.0):
    """Normal samples N(mean, std^2) as an array on ``device``."""
    device = as_device(device)
    with device.context():
        sample_dtype = numpy.float64 if numpy.dtype(dtype) == numpy.float64 else numpy.float32
        values = generator(device).standard_normal(shape, dtype=sample_dtype)
        return (values * std + mean).astype(dtype, copy=False)


def get_state() -> dict:
    """The CPU generator's state as a JSON-serialisable dict."""
    return _cpu.bit_generator.state


def set_state(state: dict) -> None:
    """Restore a state from :func:`get_state`."""
    _cpu.bit_generator.state = state
