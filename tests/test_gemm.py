"""GEMMs (minidl.gemm): transposed and strided operands in place, float32 accumulation, TF32, the own cuBLAS handle."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
from minidl import backend, gemm


def _operand(rng, shape, transposed, dtype):
    """A (B, r, c) operand stored as given or as the transpose of a (B, c, r) array (a view, not a copy)."""
    if transposed:
        return rng.standard_normal((shape[0], shape[2], shape[1])).astype(dtype).swapaxes(1, 2)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5), ("float16", 2e-2)])
@pytest.mark.parametrize("ta, tb, tout", [(False, False, False), (True, False, False), (False, True, True),
                                          (True, True, False)])
def test_matmul_into_reads_transposed_operands_in_place(dtype, tol, ta, tb, tout, device, rng):
    # (3, 5, 4) @ (3, 4, 6) into a result that may itself be a transposed view; a batch of 1 broadcasts
    xp = mdl.Device(device).xp
    a, b = _operand(rng, (3, 5, 4), ta, dtype), _operand(rng, (1, 4, 6), tb, dtype)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    A, B = xp.asarray(a), xp.asarray(b)
    if ta:  # keep the transposed layout on the device too
        A = xp.ascontiguousarray(xp.asarray(a.swapaxes(1, 2))).swapaxes(1, 2)
    if tb:
        B = xp.ascontiguousarray(xp.asarray(b.swapaxes(1, 2))).swapaxes(1, 2)
    out = xp.empty((3, 6, 5), dtype=dtype).swapaxes(1, 2) if tout else xp.empty((3, 5, 6), dtype=dtype)
    result = gemm.matmul_into(A, B, out)
    assert result is out
    got = mdl.tensor(out).numpy().astype(np.float64)
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())


def test_matmul_into_group_slices_and_shape_errors(device, rng):
    # per-group column blocks of a (rows, G, O/G) buffer, as the convolution writes them
    xp = mdl.Device(device).xp
    a, b = rng.standard_normal((2, 7, 3)), rng.standard_normal((2, 3, 4))
    y = xp.zeros((7, 2, 4))
    gemm.matmul_into(xp.asarray(a), xp.asarray(b), y.transpose(1, 0, 2))
    np.testing.assert_allclose(mdl.tensor(y).numpy().transpose(1, 0, 2), a @ b, rtol=1e-12)
    if device != "cpu":
        with pytest.raises(ValueError, match="does not make"):
            gemm.matmul_into(xp.asarray(a), xp.asarray(b), xp.zeros((2, 7, 5)))


def test_bfloat16_matmul_accumulates_in_float32(device):
    pytest.importorskip("ml_dtypes", reason="bfloat16 comes from ml_dtypes")
    bf16 = backend.bfloat16()
    xp = mdl.Device(device).xp
    ones = xp.asarray(np.ones((1, 4096), dtype=bf16))
    product = gemm.array_matmul(ones, xp.asarray(np.ones((4096, 1), dtype=bf16)))
    assert product.dtype == bf16 and float(mdl.tensor(product).numpy().astype(np.float32)[0, 0]) == 4096.0


def test_tf32_is_off_unless_allowed():
    assert not gemm.tf32_allowed()
    gemm.allow_tf32(True)
    try:
        assert gemm.tf32_allowed() and gemm._blas_dtype("float32") == (0, 77)
    finally:
        gemm.allow_tf32(False)
    assert gemm._blas_dtype("float32") == (0, 68) and gemm._blas_dtype("int32") is None


def test_capture_refusal_names_the_missing_bindings():
    import importlib.util

    reason = gemm.capture_refusal()
    if importlib.util.find_spec("nvmath") is None:
        assert "nvmath-python" in reason
    else:
        assert reason is None


def test_own_cublas_handle_gemms_are_captured_into_a_cuda_graph(cuda, rng):
    # minidl's own handle (nvmath-python) with its fixed workspace: a captured product replays with new operands
    pytest.importorskip("nvmath", reason="the own cuBLAS handle comes from nvmath-python")
    cupy = mdl.Device(cuda).xp
    a, b = cupy.asarray(rng.standard_normal((3, 40, 30))), cupy.asarray(rng.standard_normal((3, 30, 20)))
    out = cupy.empty((3, 40, 20))
    b_transposed = b.swapaxes(1, 2).copy().swapaxes(1, 2)  # read in place, as a transposed operand
    gemm.matmul_into(a, b_transposed, out)  # eager first: the handle and its workspace exist before capture
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        gemm.matmul_into(a, b_transposed, out)  # nothing is allocated while capturing
        graph = stream.end_capture()
    new_a = rng.standard_normal((3, 40, 30))
    a[...] = cupy.asarray(new_a)
    with stream:
        graph.launch()
    stream.synchronize()
    np.testing.assert_allclose(cupy.asnumpy(out), new_a @ cupy.asnumpy(b), rtol=1e-12)
