"""CPU machinery for the NumPy backend: the scratch pool, cache blocking, and opt-in heap tuning.

Nothing here changes the process on import or on use unless asked:

    import minidl as mdl
    mdl.cpu.tune_heap()     # what `minidl train` does: keep freed heap for the next step

* :data:`scratch` -- reusable host buffers for large temporaries (im2col
  columns, Winograd tiles). Bounded (:attr:`ScratchPool.max_cached_bytes`) and
  emptied with :meth:`ScratchPool.clear` (the trainer does when training ends).
* :func:`host_blocks` -- image blocks small enough that several elementwise
  passes over one block find it in cache (LRN, max pooling).
* :func:`tune_heap` -- glibc malloc settings that stop a training step from
  page-faulting its big temporaries in afresh every step. Process-wide, so
  only on request.
"""
from __future__ import annotations

import threading

import numpy

__all__ = ["ScratchPool", "scratch", "host_blocks", "tune_heap"]


class ScratchPool:
    """Reusable host buffers for large temporaries (im2col columns and their gradients).

    glibc returns allocations above its mmap threshold to the OS on free, so a
    fresh one costs a page fault per 4 KB page on every step -- for AlexNet's
    im2col buffers that is as slow as the copy itself. Buffers handed back
    with :meth:`release` are reused for the next request of the same size, up
    to ``max_cached_bytes`` in all. CuPy has its own memory pool, so for CuPy
    this is plain ``cupy.empty``.
    """

    min_bytes = 8 << 20  # smaller arrays are cheap to allocate
    max_cached_bytes = 4 << 30

    def __init__(self):
        self._free = {}  # nbytes -> [1-D uint8 buffers]
        self._cached = 0
        self._lock = threading.Lock()

    @property
    def cached_bytes(self) -> int:
        """Bytes held by released buffers waiting for reuse."""
        return self._cached

    def empty(self, shape, dtype, xp=numpy):
        """An uninitialised array, from the pool when it is a large NumPy one."""
        dtype = numpy.dtype(dtype)
        nbytes = int(numpy.prod(shape, dtype=numpy.int64)) * dtype.itemsize
        if xp is not numpy or nbytes < self.min_bytes:
            return xp.empty(shape, dtype=dtype)
        with self._lock:
            stack = self._free.get(nbytes)
            buffer = stack.pop() if stack else None
            if buffer is not None:
                self._cached -= nbytes
        if buffer is None:
            buffer = numpy.empty(nbytes, dtype=numpy.uint8)
        return buffer.view(dtype).reshape(shape)

    def release(self, array) -> None:
        """Give back an array from :meth:`empty`; the caller must hold no other reference to it."""
        if array is None or not isinstance(array, numpy.ndarray):
            return
        root = array
        while isinstance(root.base, numpy.ndarray):
            root = root.base
        if root.dtype != numpy.uint8 or root.ndim != 1 or root.nbytes < self.min_bytes:
            return
        with self._lock:
            if self._cached + root.nbytes <= self.max_cached_bytes:
                self._free.setdefault(root.nbytes, []).append(root)
                self._cached += root.nbytes

    def clear(self) -> None:
        """Drop every cached buffer (their memory goes back to the allocator)."""
        with self._lock:
            self._free.clear()
            self._cached = 0


scratch = ScratchPool()


def host_blocks(xp, rows: int, elements: int, block_elements: int = 1 << 18) -> list:
    """(start, stop) blocks of rows covering [0, rows), each touching about ``block_elements``
    elements (at least one row) of the ``elements`` all rows touch.

    An op making several elementwise passes over a large NumPy array runs them
    block by block, so each pass finds its block still in cache (2-3x faster
    than whole-array passes for AlexNet's LRN and pooling). CuPy arrays: one
    block.
    """
    if xp is not numpy:
        return [(0, rows)]
    step = max(1, rows * block_elements // max(elements, 1))
    return [(first, min(first + step, rows)) for first in range(0, rows, step)]


_heap_tuned = False


def tune_heap() -> bool:
    """Let glibc's malloc keep what a training step frees, for the rest of the process.

    The big temporaries of a step (activations, gradients: tens of MB for
    AlexNet) are by default mapped afresh above glibc's (adaptive) mmap
    threshold and freed heap is trimmed back to the OS, so every step
    page-faults them in again -- about a quarter of AlexNet's pooling and LRN
    time on a 2-core VM. This serves every block from the heap (no mmap above
    the largest threshold, 32 MB, which AlexNet's 35 MB conv1 activations
    exceed) and trims only above 1 GB of free heap: faster steps for a higher
    peak RSS (1.97 -> 2.10 GB measured for the paper AlexNet step).

    Process-wide and not undone: ``minidl train`` calls it; a library user
    calls it only if they want it. Returns False where the C library is not
    glibc (nothing changes), True once the settings are in place.
    """
    global _heap_tuned
    if _heap_tuned:
        return True
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest allowed value
    mallopt(M_MMAP_MAX, 0)  # and none above it either
    mallopt(M_TRIM_THRESHOLD, 1 << 30)
    _heap_tuned = True
    return True
