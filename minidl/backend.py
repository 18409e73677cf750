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
    "device_reads",
    "enable_peer_access",
    "nccl",
    "bfloat16",
    "array_matmul",
    "elementwise_kernel",
    "matmul_into",
    "allow_tf32",
    "tf32_allowed",
    "tf32_enabled",
    "as_dtype",
    "scatter_add",
    "synchronize",
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


def array_matmul(a, b, out=None):
    """``xp.matmul(a, b, out=out)`` for any floating dtype, bfloat16 included.

    On CuPy, 2-D and 3-D float operands go to cuBLAS (:func:`matmul_into`):
    float32 accumulation for float16 and bfloat16, TF32 when allowed, no
    copies of transposed operands. Otherwise float16 and bfloat16 operands
    are multiplied in float32 and the product rounded back, so every op that
    calls this keeps its inputs' dtype and accumulates in float32.
    """
    xp = get_array_module(a, b)
    if xp is not numpy and a.ndim in (2, 3) and b.ndim in (2, 3) and _blas_dtype(a.dtype) is not None \
            and a.dtype == b.dtype:
        if out is None:
            batch = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
            shape = (a.shape[-2], b.shape[-1]) if a.ndim == b.ndim == 2 else (batch, a.shape[-2], b.shape[-1])
            out = xp.empty(shape, dtype=a.dtype)
        return matmul_into(a, b, out)
    if a.dtype.itemsize == 2 and a.dtype.kind in "fV" or b.dtype.itemsize == 2 and b.dtype.kind in "fV":
        # float16 and bfloat16 (a void-kind dtype to NumPy): NumPy has no GEMM for them (ml_dtypes' loop
        # returns float32, float16's accumulates in float16), so multiply in float32 and round once
        dtype = numpy.result_type(a.dtype, b.dtype)
        product = xp.matmul(a.astype(numpy.float32), b.astype(numpy.float32)).astype(dtype)
        if out is None:
            return product
        out[...] = product
        return out
    return xp.matmul(a, b, out=out)


_tf32 = {"allowed": False}


def allow_tf32(allowed: bool = True) -> None:
    """Let float32 GEMMs on GPUs round their inputs to TF32 on tensor cores (as PyTorch's
    ``torch.backends.cuda.matmul.allow_tf32``); off by default. No effect on the CPU."""
    _tf32["allowed"] = bool(allowed)


def tf32_allowed() -> bool:
    return _tf32["allowed"]


@contextlib.contextmanager
def tf32_enabled(allowed: bool = True):
    """:func:`allow_tf32` for the length of a block, then back to what it was."""
    previous = _tf32["allowed"]
    allow_tf32(allowed)
    try:
        yield
    finally:
        _tf32["allowed"] = previous


def _blas_dtype(dtype):
    """cuBLAS's (data type, compute type) for a dtype, or None."""
    name = numpy.dtype(dtype).name
    if name == "float64":
        return 1, 70  # CUDA_R_64F, CUBLAS_COMPUTE_64F
    if name == "float32":
        return 0, 77 if _tf32["allowed"] else 68  # CUDA_R_32F, CUBLAS_COMPUTE_32F(_FAST_TF32)
    if name == "float16":
        return 2, 68  # CUDA_R_16F, accumulated in float32
    if name == "bfloat16":
        return 14, 68  # CUDA_R_16BF, accumulated in float32
    return None


def _blas_layout(a):
    """(transposed, leading dimension, batch stride) of a (batch, rows, cols) array's matrices for cuBLAS,
    in elements, or None when neither matrix axis is unit-stride (the array must be copied)."""
    item = a.itemsize
    batch, rows, cols = a.shape
    sb, s0, s1 = a.strides
    if sb % item or s0 % item or s1 % item:
        return None
    step = 0 if batch == 1 else sb // item
    if (s1 == item or cols == 1) and (rows == 1 or s0 // item >= cols):
        return False, max(s0 // item if rows > 1 else cols, 1), step
    if (s0 == item or rows == 1) and (cols == 1 or s1 // item >= rows):
        return True, max(s1 // item if cols > 1 else rows, 1), step
    return None


def matmul_into(a, b, out):
    """``out[...] = a @ b`` for (m, k) @ (k, n) or batched (B, m, k) @ (B, k, n) -> (B, m, n) (a batch of 1
    broadcasts), and return ``out``.

    On CuPy this is one cuBLAS ``gemmStridedBatchedEx`` call: any operand whose
    matrices have one unit-stride axis (transposed views, group slices) is
    read where it lies; float16 and bfloat16 accumulate in float32; float32
    uses TF32 tensor cores when :func:`allow_tf32` allowed it. On NumPy, one
    ``matmul`` per batch entry into ``out``.
    """
    xp = get_array_module(a, b, out)
    if xp is numpy or _blas_dtype(out.dtype) is None or not (a.dtype == b.dtype == out.dtype):
        if out.ndim == 2:
            return array_matmul(a, b, out=out) if xp is numpy else xp.matmul(a, b, out=out)
        for g in range(out.shape[0]):
            a_g, b_g = a[g if a.shape[0] > 1 else 0], b[g if b.shape[0] > 1 else 0]
            if xp is numpy:
                array_matmul(a_g, b_g, out=out[g])
            else:
                xp.matmul(a_g, b_g, out=out[g])
        return out
    a3, b3, o3 = (x[None] if x.ndim == 2 else x for x in (a, b, out))
    batch, m, n = o3.shape
    if a3.shape[1:] != (m, b3.shape[1]) or b3.shape[2] != n or {a3.shape[0], b3.shape[0]} - {1, batch}:
        raise ValueError(f"matmul_into: {a.shape} @ {b.shape} does not make {out.shape}")
    _cublas_matmul(xp, a3, b3, o3)
    return out


def _cublas_matmul(cupy, a, b, out):
    batch, m, n = out.shape
    k = a.shape[2]
    if 0 in (batch, m, n):
        return
    if k == 0:
        out[...] = 0
        return
    layout = _blas_layout(out)
    if layout is None:  # write a contiguous product, then copy it into place
        product = cupy.empty(out.shape, dtype=out.dtype)
        _cublas_matmul(cupy, a, b, product)
        out[...] = product
        return
    if layout[0]:  # a column-major result is the row-major result of (b^T a^T)
        _cublas_matmul(cupy, b.swapaxes(1, 2), a.swapaxes(1, 2), out.swapaxes(1, 2))
        return
    if _blas_layout(a) is None:
        a = cupy.ascontiguousarray(a)
    if _blas_layout(b) is None:
        b = cupy.ascontiguousarray(b)
    la, lb = _blas_layout(a), _blas_layout(b)
    data_type, compute_type = _blas_dtype(out.dtype)
    scalar = numpy.float64 if compute_type == 70 else numpy.float32
    alpha, beta = numpy.ones((), scalar), numpy.zeros((), scalar)
    from cupy_backends.cuda.libs import cublas

    # cuBLAS is column-major: the row-major C (m, n) = A B is the column-major C^T = B^T A^T
    cublas.gemmStridedBatchedEx(
        cupy.cuda.device.get_cublas_handle(), int(lb[0]), int(la[0]), n, m, k, alpha.ctypes.data,
        b.data.ptr, data_type, lb[1], lb[2], a.data.ptr, data_type, la[1], la[2], beta.ctypes.data,
        out.data.ptr, data_type, layout[1], layout[2], batch, compute_type, -1)  # -1: CUBLAS_GEMM_DEFAULT


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
