"""Devices and array modules.

This is the only module in minidl that imports CuPy. Everything else asks it
for the array module (``xp``) that matches an array, or for the :class:`Device`
an array or tensor lives on.

Devices are written as strings: ``"cpu"`` (the same as ``"cpu:0"``), ``"cpu:1"``
(a second logical CPU device, used by device-split strategies) and
``"cuda:N"`` (GPU ``N`` through CuPy).
"""
from __future__ import annotations

import contextlib
import functools

import numpy

__all__ = [
    "Device",
    "DeviceError",
    "as_device",
    "cuda_available",
    "cuda_device_count",
    "get_array_module",
    "device_of_array",
    "transfer",
    "enable_peer_access",
    "nccl",
    "bfloat16",
    "array_matmul",
    "host_blocks",
]

_cupy = None  # the cupy module, once a CUDA device has been asked for


class DeviceError(RuntimeError):
    """A device was asked for that does not exist or cannot be used here."""


def _import_cupy(for_device: str):
    """Import CuPy and check a GPU is visible; raise DeviceError saying what is missing."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy
    except ImportError as e:
        raise DeviceError(
            f"device {for_device!r} needs CuPy, which is not installed ({e}). "
            "Install the GPU extra: pip install 'minidl[gpu]' (CuPy for CUDA 13), "
            "or pip install cupy-cuda12x for CUDA 12."
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing or broken
        raise DeviceError(
            f"device {for_device!r}: CuPy is installed but CUDA is not usable here ({e}). "
            "Check the NVIDIA driver (nvidia-smi) and that the CuPy wheel matches its CUDA version."
        ) from None
    if count == 0:
        raise DeviceError(f"device {for_device!r}: CuPy found no CUDA GPU on this machine")
    _cupy = cupy
    return cupy


def cuda_available() -> bool:
    """True when CuPy imports and at least one CUDA GPU is visible."""
    try:
        _import_cupy("cuda:0")
    except DeviceError:
        return False
    return True


def cuda_device_count() -> int:
    """Number of visible CUDA GPUs (0 without CuPy or a GPU)."""
    if not cuda_available():
        return 0
    return _cupy.cuda.runtime.getDeviceCount()


class Device:
    """A place where arrays live: ``Device("cpu")``, ``Device("cpu:1")``, ``Device("cuda:0")``.

    Devices compare equal by type and index, so ``Device("cpu") == Device("cpu:0")``.
    ``device.xp`` is the array module (``numpy`` or ``cupy``) for the device.
    """

    __slots__ = ("type", "index", "xp", "_key")

    def __init__(self, spec: str = "cpu"):
        text = str(spec).strip().lower()
        kind, _, idx = text.partition(":")
        if kind not in ("cpu", "cuda") or (idx and not idx.isdigit()):
            raise DeviceError(
                f"unknown device {spec!r}: expected 'cpu', 'cpu:N' or 'cuda:N' (e.g. 'cuda:0')"
            )
        index = int(idx) if idx else 0
        if kind == "cuda":
            cupy = _import_cupy(text)
            count = cupy.cuda.runtime.getDeviceCount()
            if index >= count:
                raise DeviceError(
                    f"device {spec!r} is not present: this machine has {count} CUDA GPU(s) "
                    f"(cuda:0..cuda:{count - 1})"
                )
            self.xp = cupy
        else:
            self.xp = numpy
        self.type = kind
        self.index = index
        self._key = (kind, index)

    @property
    def is_cuda(self) -> bool:
        return self.type == "cuda"

    def context(self):
        """A context manager that makes this device current (a no-op on the CPU)."""
        if self.type == "cuda":
            return self.xp.cuda.Device(self.index)
        return contextlib.nullcontext()

    def __eq__(self, other):
        if isinstance(other, str):
            try:
                other = as_device(other)
            except DeviceError:
                return False
        return isinstance(other, Device) and other._key == self._key

    def __hash__(self):
        return hash(self._key)

    def __str__(self):
        return f"{self.type}:{self.index}"

    def __repr__(self):
        return f"Device({str(self)!r})"


@functools.lru_cache(maxsize=None)
def _device_from_string(spec: str) -> Device:
    return Device(spec)


def as_device(device) -> Device:
    """Turn ``None`` (the CPU), a string or a :class:`Device` into a Device."""
    if isinstance(device, Device):
        return device
    if device is None:
        return CPU
    return _device_from_string(str(device))


CPU = Device("cpu")


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    Ops call this once (``xp = get_array_module(x)``) and then write
    ``xp.exp(x)`` so the same code runs on the CPU and the GPU.
    """
    if _cupy is None:
        return numpy
    return _cupy.get_array_module(*arrays)


def device_of_array(array) -> Device:
    """The device an array lives on (a NumPy array is on ``cpu:0``)."""
    if _cupy is None and type(array).__module__.startswith("cupy"):
        _import_cupy("cuda:0")  # a CuPy array made before minidl was asked for a GPU
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return as_device(f"cuda:{array.device.id}")
    return CPU


def transfer(array, device: Device):
    """Copy ``array`` to ``device`` (no copy when it is already there).

    CPU -> GPU and GPU -> GPU use CuPy (peer copies where the driver allows);
    GPU -> CPU returns a NumPy array. Moving between logical CPU devices does
    not copy: they share host memory.
    """
    if device.type == "cpu":
        if _cupy is not None and isinstance(array, _cupy.ndarray):
            return _cupy.asnumpy(array)
        return array
    with device.xp.cuda.Device(device.index):
        return device.xp.asarray(array)


def enable_peer_access(devices) -> list:
    """Let every pair of the given CUDA devices copy directly (NVLink/PCIe peer access) where the driver allows.

    Returns the (a, b) index pairs that now have peer access. Copies between
    devices work without it too, staged through the host.
    """
    indices = sorted({d.index for d in devices if d.type == "cuda"})
    if len(indices) < 2:
        return []
    runtime = _cupy.cuda.runtime
    enabled = []
    for a in indices:
        for b in indices:
            if a == b or not runtime.deviceCanAccessPeer(a, b):
                continue
            with _cupy.cuda.Device(a):
                try:
                    runtime.deviceEnablePeerAccess(b)
                except _cupy.cuda.runtime.CUDARuntimeError as e:  # already enabled: fine
                    if "PeerAccessAlreadyEnabled" not in str(e):
                        raise
            enabled.append((a, b))
    return enabled


def nccl():
    """CuPy's NCCL bindings (``cupy.cuda.nccl``), for gradient all-reduce between GPU processes."""
    _import_cupy("cuda:0")
    try:
        from cupy.cuda import nccl as bindings
    except ImportError as e:
        raise DeviceError(f"NCCL is not available to CuPy here ({e}): install NCCL for CuPy's CUDA version") from None
    return bindings


def bfloat16():
    """The bfloat16 dtype (from ml_dtypes), or raise if ml_dtypes is missing."""
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError(
            "bfloat16 needs the ml_dtypes package: pip install 'minidl[bf16]'"
        ) from None
    return numpy.dtype(ml_dtypes.bfloat16)


def array_matmul(a, b, out=None):
    """``xp.matmul(a, b, out=out)`` for any floating dtype, bfloat16 included.

    Neither backend has a bfloat16 GEMM: CuPy refuses the dtype and ml_dtypes'
    NumPy loop returns float32. bfloat16 operands are multiplied in float32
    and the product rounded back, on both, so every op that calls this keeps
    its inputs' dtype.
    """
    xp = get_array_module(a, b)
    if a.dtype.kind == "V" or b.dtype.kind == "V":  # ml_dtypes' bfloat16 is a void-kind dtype to NumPy
        dtype = numpy.result_type(a.dtype, b.dtype)
        product = xp.matmul(a.astype(numpy.float32), b.astype(numpy.float32)).astype(dtype)
        if out is None:
            return product
        out[...] = product
        return out
    return xp.matmul(a, b, out=out)


class ScratchPool:
    """Reusable host buffers for large temporaries (im2col columns and their gradients).

    glibc returns allocations above 32 MB to the OS on free, so a fresh one
    costs a page fault per 4 KB page on every step -- for AlexNet's im2col
    buffers that is as slow as the copy itself. Buffers handed back with
    :meth:`release` are reused for the next request of the same size. CuPy
    has its own memory pool, so on a GPU this is plain ``cupy.empty``.
    """

    min_bytes = 8 << 20  # smaller arrays are cheap to allocate
    max_cached_bytes = 4 << 30

    def __init__(self):
        import threading

        self._free = {}  # nbytes -> [1-D uint8 buffers]
        self._cached = 0
        self._lock = threading.Lock()
        self._heap_tuned = False

    def _keep_freed_heap(self) -> None:
        """Once, on first CPU use: let glibc's malloc keep what a training step frees.

        The other big temporaries of a step (activations, gradients: up to
        tens of MB for AlexNet) are not pooled here; by default glibc maps
        those above its (adaptive) mmap threshold afresh each time and trims
        freed heap back to the OS, so every step page-faults them in again
        (about a quarter of AlexNet's pooling + LRN time on a 2-core VM).
        Serving every block from the heap (glibc maps blocks above its
        largest mmap threshold, 32 MB, afresh however it is tuned: AlexNet's
        conv1 activations are 35 MB) and trimming only above 1 GB of free
        heap keeps them. A no-op where the C library is not glibc.
        """
        self._heap_tuned = True
        try:
            import ctypes

            mallopt = ctypes.CDLL("libc.so.6").mallopt
        except (OSError, AttributeError):
            return
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
        mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest allowed value
        mallopt(M_MMAP_MAX, 0)  # and none above it either
        mallopt(M_TRIM_THRESHOLD, 1 << 30)

    def empty(self, shape, dtype, xp=numpy):
        dtype = numpy.dtype(dtype)
        nbytes = int(numpy.prod(shape, dtype=numpy.int64)) * dtype.itemsize
        if xp is numpy and not self._heap_tuned:
            self._keep_freed_heap()
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
