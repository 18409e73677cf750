"""Random numbers for minidl (dropout masks, initializers, data shuffling), seedable in one place.

``mdl.random.manual_seed(0)`` makes a run reproducible. The CPU generator is
a NumPy ``Generator`` (PCG64), whose state can be saved in a checkpoint and
restored bit for bit with :func:`get_state` / :func:`set_state`. On a GPU the
CuPy generator of that device is used, and dropout draws from a counter-based
generator (Philox-4x32-10: the n-th number is a pure function of the seed
and n, so a mask can be made again in backward instead of stored;
:func:`counter_stream`, :func:`philox_uniform`).
"""
from __future__ import annotations

import contextlib
import threading

import numpy

from .backend import as_device

__all__ = ["manual_seed", "generator", "uniform", "normal", "get_state", "set_state", "batch_shard", "fork_rng",
           "counter_stream", "counter_shift", "counter_position", "skip_counters", "shifted_counters", "philox4x32",
           "philox_uniform", "PHILOX_CUDA"]


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
_counters = {}  # device index -> the next unused Philox counter of that device's stream
_zero_shifts = {}  # device index -> a device uint64 zero: what eager kernels add to their counters
_shift_overrides = {}  # device index -> a captured graph's shift array, while that graph is being captured


def manual_seed(seed: int) -> None:
    """Seed the CPU generator and (lazily) every CUDA generator."""
    global _cpu, _seed
    _seed = int(seed)
    _cpu = numpy.random.default_rng(_seed)
    _cuda.clear()
    _counters.clear()


@contextlib.contextmanager
def fork_rng():
    """Run a block whose seeding and draws leave the global generators as they were (``torch.random.fork_rng``).

    >>> with mdl.random.fork_rng():
    ...     mdl.random.manual_seed(0)      # only inside the block
    """
    global _cpu, _seed
    saved_cpu, saved_state, saved_seed = _cpu, _cpu.bit_generator.state, _seed
    saved_cuda, saved_counters = dict(_cuda), dict(_counters)
    try:
        yield
    finally:
        _cpu, _seed = saved_cpu, saved_seed
        _cpu.bit_generator.state = saved_state
        _cuda.clear()
        _cuda.update(saved_cuda)
        _counters.clear()
        _counters.update(saved_counters)


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


# ----------------------------------------------------------------- counter-based (Philox-4x32-10)
# Number n of the stream with key k is word 0 of Philox-4x32-10 (Salmon et al., SC'11) applied to the
# counter (n mod 2**32, n div 2**32, 0, 0) with key (k mod 2**32, k div 2**32); a uniform float in [0, 1)
# is its top 24 bits times 2**-24. PHILOX_CUDA is the device function a kernel calls; philox_uniform is
# the NumPy code it must match bit for bit (tests/test_random.py compares them on a GPU).
_PHILOX_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
_PHILOX_ROUNDS = 10

PHILOX_CUDA = """
__device__ float minidl_philox_uniform(unsigned long long n, unsigned long long key) {
    unsigned int c0 = (unsigned int)n, c1 = (unsigned int)(n >> 32), c2 = 0u, c3 = 0u;
    unsigned int k0 = (unsigned int)key, k1 = (unsigned int)(key >> 32);
    for (int round = 0; round < %(rounds)d; ++round) {
        unsigned int lo0 = %(m0)du * c0, hi0 = __umulhi(%(m0)du, c0);
        unsigned int lo1 = %(m1)du * c2, hi1 = __umulhi(%(m1)du, c2);
        c0 = hi1 ^ c1 ^ k0; c1 = lo1; c2 = hi0 ^ c3 ^ k1; c3 = lo0;
        k0 += %(w0)du; k1 += %(w1)du;
    }
    return (float)(c0 >> 8) * (1.0f / 16777216.0f);
}
""" % dict(rounds=_PHILOX_ROUNDS, m0=_PHILOX_MULTIPLIERS[0], m1=_PHILOX_MULTIPLIERS[1], w0=_PHILOX_WEYL[0],
           w1=_PHILOX_WEYL[1])


def philox4x32(counter, key):
    """Philox-4x32-10 of four uint32 counter words (arrays) under two uint32 key words: the four output words
    (uint64 arrays holding 32-bit values)."""
    mask = numpy.uint64(0xFFFFFFFF)
    c0, c1, c2, c3 = (numpy.asarray(c, dtype=numpy.uint64) & mask for c in counter)
    k0, k1 = (numpy.uint64(k & 0xFFFFFFFF) for k in key)
    m0, m1 = (numpy.uint64(m) for m in _PHILOX_MULTIPLIERS)
    for _ in range(_PHILOX_ROUNDS):
        p0, p1 = m0 * c0, m1 * c2  # exact: both factors are below 2**32
        c0, c1, c2, c3 = (p1 >> numpy.uint64(32)) ^ c1 ^ k0, p1 & mask, (p0 >> numpy.uint64(32)) ^ c3 ^ k1, p0 & mask
        k0 = (k0 + numpy.uint64(_PHILOX_WEYL[0])) & mask
        k1 = (k1 + numpy.uint64(_PHILOX_WEYL[1])) & mask
    return c0, c1, c2, c3


def philox_uniform(key: int, first: int, count: int) -> numpy.ndarray:
    """Numbers ``first .. first + count - 1`` of the stream ``key`` as float32 in [0, 1) (NumPy)."""
    n = numpy.arange(first, first + count, dtype=numpy.uint64)
    zeros = numpy.zeros_like(n)
    word = philox4x32((n, n >> numpy.uint64(32), zeros, zeros), (key, key >> 32))[0]
    return (word >> numpy.uint64(8)).astype(numpy.float32) * numpy.float32(2.0 ** -24)


def counter_stream(shape, device) -> tuple:
    """(key, first): reserve ``prod(shape)`` numbers of ``device``'s counter-based stream for one draw.

    Element i (C order) of the draw is number ``first + i``; the stream's key is the device's seed. No
    state lives on the device and nothing is read back: a kernel regenerates any element from (key,
    first + i). Inside :func:`batch_shard` a draw for the shard's rows takes the numbers the whole
    batch's draw would give those rows.
    """
    device = as_device(device)
    size = int(numpy.prod(shape, dtype=numpy.int64))
    key = _seed + (device.index or 0)
    rows = _shard.rows
    start = _counters.get(device.index, 0)
    if rows is not None and len(shape) and shape[0] == rows[1] - rows[0] != rows[2]:
        per_row = size // max(shape[0], 1)
        _counters[device.index] = start + rows[2] * per_row
        return key, start + rows[0] * per_row
    _counters[device.index] = start + size
    return key, start


def counter_shift(device):
    """The one-element uint64 device array that a counter-based kernel adds to its counters.

    Running eagerly it is a zero that never changes. While a CUDA graph is
    captured (:func:`shifted_counters`) it is the graph's own: the captured
    kernels keep the counters of the capture, and before each replay the
    runner writes how far the stream has moved since, so every replay draws
    the numbers an eager step would have drawn at that point.
    """
    device = as_device(device)
    override = _shift_overrides.get(device.index)
    if override is not None:
        return override
    if device.index not in _zero_shifts:
        with device.context():
            _zero_shifts[device.index] = device.xp.zeros(1, dtype=numpy.uint64)
    return _zero_shifts[device.index]


@contextlib.contextmanager
def shifted_counters(device, shift):
    """Make :func:`counter_shift` give ``shift`` (a one-element uint64 device array) for ``device`` in a block."""
    device = as_device(device)
    previous = _shift_overrides.get(device.index)
    _shift_overrides[device.index] = shift
    try:
        yield
    finally:
        if previous is None:
            _shift_overrides.pop(device.index, None)
        else:
            _shift_overrides[device.index] = previous


def counter_position(device) -> int:
    """The next unused number of ``device``'s counter-based stream."""
    return _counters.get(as_device(device).index, 0)


def skip_counters(device, count: int) -> None:
    """Move ``device``'s counter-based stream past ``count`` numbers (what a replayed graph drew)."""
    index = as_device(device).index
    _counters[index] = _counters.get(index, 0) + int(count)
