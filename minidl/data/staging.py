"""The loader's GPU plumbing: pinned host buffers, one copy stream per busy worker, and events.

On a GPU each loader worker makes its batch on a non-blocking CUDA stream of
its own: the uint8 host batch, in pinned (page-locked) memory, is copied
asynchronously, the array transforms run after the copy on the same stream,
and the event recorded at the end is what the consuming thread's stream
waits on. No thread waits for the GPU except a worker about to refill a
pinned buffer whose previous copy may still be running.

Two hazards, and how they are met:

(a) A pinned buffer is read by its asynchronous copy after the worker has
    moved on: it must not be refilled before that copy is done. The worker
    records an event after the copy and gives the buffer back with it; the
    worker that takes the buffer next waits on that event first (a host wait
    in a worker thread, never in the consumer's; the copy has long finished
    by then in practice).
(b) CuPy's memory pool keeps freed memory per stream and hands it out again
    to later work on the stream it was allocated on, without waiting for
    other streams. A batch made on a copy stream and then read by the
    consumer's stream could be freed (when the consumer drops it) and reused
    by the copy stream while the consumer's kernels still read it. So the
    batch the consumer receives is never allocated on a copy stream:
    :func:`for_consumer` takes its memory from the consumer stream's pool,
    makes the copy stream wait on an event recorded on the consumer's stream
    after that allocation (whatever last used that memory there is queued
    before the event), and copies the finished batch into it on the copy
    stream (one device copy). Freed later, it goes back to the consumer
    stream's pool, whose reuse is ordered by that stream as usual. Everything
    else a worker allocates (the uint8 batch, the transforms' temporaries)
    lives and dies on its copy stream. Arrays shared by all workers (a
    resident dataset, a transform's statistics on the device) are made once,
    with an event every other stream waits on before reading them.

Only :mod:`minidl.backend` imports CuPy; this module reaches it through
``device.xp``. None of it runs on the CPU.
"""
from __future__ import annotations

import threading

import numpy

from ..backend import DeviceError

__all__ = ["pinned_empty", "consumer_stream", "record", "wait", "CopyStreams", "for_consumer"]


def pinned_empty(device, shape, dtype):
    """An uninitialised NumPy array in page-locked host memory (CuPy's pinned pool): ``device`` copies from it
    asynchronously."""
    dtype = numpy.dtype(dtype)
    memory = device.xp.cuda.alloc_pinned_memory(max(int(numpy.prod(shape)) * dtype.itemsize, 1))
    return numpy.ndarray(shape, dtype, buffer=memory)


def consumer_stream(device):
    """The calling thread's current stream on ``device``: the one that will read the loader's batches."""
    with device.context():
        stream = device.xp.cuda.get_current_stream()
    if stream.ptr == device.xp.cuda.runtime.streamPerThread:
        raise DeviceError(
            f"DataLoader on {device}: the iterating thread's current stream is CUDA's per-thread default stream "
            "(CUPY_CUDA_PER_THREAD_DEFAULT_STREAM=1), which the loader's worker threads cannot name; iterate "
            "under a stream of your own (with cupy.cuda.Stream(): ...)")
    return stream


def record(device, stream=None):
    """An event recorded on ``stream`` (default: the current stream) of ``device``."""
    cuda = device.xp.cuda
    with device.context():
        return (stream or cuda.get_current_stream()).record(cuda.Event(disable_timing=True))


def wait(device, event) -> None:
    """Make the current stream of ``device`` wait for ``event`` (the host does not wait)."""
    with device.context():
        device.xp.cuda.get_current_stream().wait_event(event)


class CopyStreams:
    """Non-blocking streams of one device, reused for the loader's life: a worker takes one per batch."""

    def __init__(self, device):
        self.device = device
        self._free = []
        self._lock = threading.Lock()

    def take(self):
        with self._lock:
            if self._free:
                return self._free.pop()
        with self.device.context():
            return self.device.xp.cuda.Stream(non_blocking=True)

    def give(self, stream) -> None:
        with self._lock:
            self._free.append(stream)


def for_consumer(device, images, consumer, stream):
    """``images`` (made on ``stream``, the current one) copied into memory of ``consumer``'s pool: hazard (b)."""
    xp = device.xp
    with consumer:
        out = xp.empty(images.shape, images.dtype)
    stream.wait_event(consumer.record(xp.cuda.Event(disable_timing=True)))
    out[...] = images
    return out
