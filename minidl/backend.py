"""Devices and array modules.

This is the only module in minidl that imports CuPy (:mod:`minidl.gemm` adds
the cuBLAS bindings). Everything else asks it for the array module (``xp``)
that matches an array, or for the :class:`Device` an array or tensor lives on.

Devices are written as strings: ``"cpu"`` (the same as ``"cpu:0"``), ``"cpu:1"``
(a second logical CPU device, used by device-split strategies) and
``"cuda:N"`` (GPU ``N`` through CuPy).
"""
from __future__ import annotations

import contextlib
import functools
import threading

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
    "device_reads",
    "enable_peer_access",
    "nccl",
    "bfloat16",
    "elementwise_kernel",
    "as_dtype",
    "scatter_add",
    "synchronize",
    "StreamBoundHandles",
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


_reads = {"host_reads": 0, "synchronizations": 0}


def device_reads() -> dict:
    """How many times minidl has copied GPU data to the host and waited for a GPU, so far: the points a
    training step must not reach between metric reads (tests count them)."""
    return dict(_reads)


def transfer(array, device: Device):
    """Copy ``array`` to ``device`` (no copy when it is already there).

    CPU -> GPU and GPU -> GPU use CuPy (peer copies where the driver allows);
    GPU -> CPU returns a NumPy array. Moving between logical CPU devices does
    not copy: they share host memory.
    """
    if device.type == "cpu":
        if _cupy is not None and isinstance(array, _cupy.ndarray):
            _reads["host_reads"] += 1
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


def as_dtype(dtype) -> numpy.dtype:
    """A NumPy dtype from a dtype or its name; ``"bfloat16"`` (or ``"bf16"``) is ml_dtypes' bfloat16."""
    if isinstance(dtype, str) and dtype in ("bfloat16", "bf16"):
        return bfloat16()
    return numpy.dtype(dtype)


@functools.lru_cache(maxsize=None)
def elementwise_kernel(in_params: str, out_params: str, operation: str, name: str, preamble: str = ""):
    """A CuPy ``ElementwiseKernel``, made once per source. CuPy compiles it on first use for each device
    and dtype combination and caches the binary (in memory and under ~/.cupy/kernel_cache).

    Kernels live in the op's own module beside the NumPy code they must match; this is the one place
    they are made.
    """
    cupy = _import_cupy("cuda:0")
    return cupy.ElementwiseKernel(in_params, out_params, operation, name, preamble=preamble)


def scatter_add(shape, index, values, dtype=None):
    """Zeros of ``shape`` with ``values`` added at ``index`` (``xp.add.at``: repeated indices add up).

    The sums are taken in float32 at least -- CuPy has no float16 or bfloat16
    ``add.at`` -- and rounded to ``dtype`` (default: the values' dtype).
    """
    xp = get_array_module(values)
    dtype = numpy.dtype(dtype or values.dtype)
    wide = numpy.promote_types(dtype, numpy.float32)
    out = xp.zeros(shape, dtype=wide)
    xp.add.at(out, index, values.astype(wide, copy=False))
    return out.astype(dtype, copy=False)


def synchronize(device) -> None:
    """Wait until every queued operation on ``device`` has finished (a no-op on the CPU).

    The one place minidl waits for a GPU: timing (conv-algorithm autotuning)
    and metric reads go through it.
    """
    device = as_device(device)
    if device.type == "cuda":
        _reads["synchronizations"] += 1
        with device.context():
            device.xp.cuda.get_current_stream().synchronize()


class StreamBoundHandles:
    """A GPU library's handles (cuBLAS, cuDNN): one per thread and device, made on first use and bound to a
    stream only when it differs from the one the handle was last bound to.

    ``create()`` makes a handle (called with its device current); ``bind(handle, stream_ptr)`` binds it.
    """

    def __init__(self, create, bind):
        self._create, self._bind = create, bind
        self._local = threading.local()

    def get(self, device_id: int, stream_ptr: int | None = None):
        """This thread's handle for CUDA device ``device_id``, bound to ``stream_ptr`` when one is given."""
        by_device = self._local.__dict__.setdefault("by_device", {})  # device id -> [handle, bound stream]
        entry = by_device.get(device_id)
        if entry is None:
            entry = by_device[device_id] = [self._create(), None]
        if stream_ptr is not None and entry[1] != stream_ptr:
            self._bind(entry[0], stream_ptr)
            entry[1] = stream_ptr
        return entry[0]
