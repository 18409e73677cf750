"""GEMMs: every matrix product minidl makes on a GPU goes through :func:`matmul_into`, in this one place.

On CuPy a product is one cuBLAS ``gemmStridedBatchedEx`` call (groups, Winograd
points and batches as the batch; transposed or strided operands read where
they lie; float16/bfloat16 accumulated in float32; TF32 when
:func:`allow_tf32` allowed it). The cuBLAS handle is minidl's own when
nvmath-python is installed (the ``gpu`` extra brings it): one per thread and
device, with a fixed workspace, so its calls can be captured into a CUDA
graph (:mod:`minidl.training.cuda_graph`). Without nvmath-python the calls go
through CuPy's handle, which works everywhere except under stream capture
(CuPy refuses it; :func:`capture_refusal` says so).

On NumPy, :func:`array_matmul` is ``numpy.matmul`` with float16/bfloat16
multiplied in float32 and rounded once.
"""
from __future__ import annotations

import contextlib
import functools

import numpy

from .backend import StreamBoundHandles, as_device, get_array_module

__all__ = ["array_matmul", "matmul_into", "allow_tf32", "tf32_allowed", "tf32_enabled", "capture_refusal",
           "WORKSPACE_BYTES"]

WORKSPACE_BYTES = 32 * 1024 * 1024  # per handle: what cuBLAS's documentation advises for Hopper GPUs


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
    # cuBLAS is column-major: the row-major C (m, n) = A B is the column-major C^T = B^T A^T
    _gemm_strided_batched(
        cupy, int(lb[0]), int(la[0]), n, m, k, alpha.ctypes.data, b.data.ptr, data_type, lb[1], lb[2],
        a.data.ptr, la[1], la[2], beta.ctypes.data, out.data.ptr, layout[1], layout[2], batch, compute_type)


@functools.lru_cache(maxsize=None)
def _nvmath_cublas():
    """nvmath-python's cuBLAS bindings, or None when nvmath-python is not installed."""
    try:
        from nvmath.bindings import cublas
    except ImportError:
        return None
    return cublas


def capture_refusal():
    """Why GEMMs cannot be captured into a CUDA graph here, or None when they can."""
    if _nvmath_cublas() is None:
        return ("nvmath-python is not installed, and CuPy's own cuBLAS calls refuse stream capture "
                "(pip install nvmath-python, or minidl's gpu extra)")
    return None


def _new_handle():
    """A cuBLAS handle minidl owns for the current device, with a fixed workspace: cuBLAS then allocates
    nothing per call, which stream capture requires. The workspace is shared by one thread's calls, which are
    ordered on the streams minidl switches between; it lives as long as the handle's entry."""
    cublas, cupy = _nvmath_cublas(), as_device("cuda:0").xp
    handle = cublas.create()
    workspace = cupy.empty(WORKSPACE_BYTES, dtype=numpy.uint8)
    cublas.set_workspace(handle, workspace.data.ptr, WORKSPACE_BYTES)
    return handle, workspace


_handles = StreamBoundHandles(_new_handle, lambda entry, stream: _nvmath_cublas().set_stream(entry[0], stream))


def _own_handle(cupy):
    """This thread's cuBLAS handle for the current device, bound to the current stream."""
    return _handles.get(cupy.cuda.Device().id, cupy.cuda.get_current_stream().ptr)[0]


def _gemm_strided_batched(cupy, trans_b, trans_a, n, m, k, alpha, b, data_type, ldb, stride_b, a, lda, stride_a,
                          beta, out, ldc, stride_c, batch, compute_type):
    """One ``cublasGemmStridedBatchedEx`` (column-major arguments, pointers and host scalars)."""
    cublas = _nvmath_cublas()
    if cublas is not None:
        cublas.gemm_strided_batched_ex(
            _own_handle(cupy), trans_b, trans_a, n, m, k, alpha, b, data_type, ldb, stride_b, a, data_type,
            lda, stride_a, beta, out, data_type, ldc, stride_c, batch, compute_type, -1)  # -1: CUBLAS_GEMM_DEFAULT
        return
    from cupy_backends.cuda.libs import cublas

    cublas.gemmStridedBatchedEx(
        cupy.cuda.device.get_cublas_handle(), trans_b, trans_a, n, m, k, alpha, b, data_type, ldb, stride_b, a,
        data_type, lda, stride_a, beta, out, data_type, ldc, stride_c, batch, compute_type, -1)
