"""Losses (minidl/functions/loss.py): cross_entropy with integer labels, every reduction,
and stable for large logits."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minidl as mdl
import minidl.functions as F
from minidl.testing import strategies as mst

from ._opcheck import (  # noqa: F401 - reference is a fixture
    check_dtype, check_gradgrad, check_op, fixed_array, op_settings, reference,
)

REDUCTIONS = ["mean", "sum", "none"]


def np_cross_entropy(logits, labels, reduction, stable=False):
    if stable:
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    else:  # the textbook formula, for moderate logits
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        log_p = np.log(p)
    losses = -log_p[np.arange(len(labels)), labels]
    return {"mean": losses.mean, "sum": losses.sum, "none": lambda: losses}[reduction]()


@st.composite
def logits_and_labels(draw, scale=1.0):
    """(logits (N, C), labels (N,) int64 in [0, C), how labels are passed)."""
    n, c = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    logits = draw(mst.arrays(shape=(n, c))) * scale
    labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
    return logits, labels, draw(st.sampled_from(["array", "int32", "tensor"]))


def _labels_as(labels, form, device):
    if form == "tensor":
        return mdl.tensor(labels, device=device)
    return labels.astype(np.int32) if form == "int32" else labels


def _torch_cross_entropy(torch, labels, reduction):
    return lambda t: torch.nn.functional.cross_entropy(t, torch.from_numpy(labels), reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@op_settings()
@given(case=logits_and_labels())
def test_cross_entropy(reduction, device, reference, case):
    logits, labels, form = case
    given_labels = _labels_as(labels, form, device)
    check_op(lambda x: F.cross_entropy(x, given_labels, reduction=reduction), [logits], device, reference,
             lambda x: np_cross_entropy(x, labels, reduction),
             reference and _torch_cross_entropy(reference, labels, reduction))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@op_settings(fraction=0.6)
@given(case=logits_and_labels(scale=1e4))
def test_cross_entropy_is_stable_for_large_logits(reduction, device, reference, case):
    logits, labels, form = case
    given_labels = _labels_as(labels, form, device)

    def fn(x):
        return F.cross_entropy(x, given_labels, reduction=reduction)

    # check_op asserts the loss and its gradient are finite. No numerical gradient at this
    # scale: float64 rounding of a loss of about 1e4 swamps a 1e-6 step.
    (loss,), _ = check_op(fn, [logits], device, reference,
                          lambda x: np_cross_entropy(x, labels, reduction, stable=True),
                          reference and _torch_cross_entropy(reference, labels, reduction), numerical=False)
    assert (loss.numpy() >= 0).all()
    # shift invariance: subtracting each row's max changes nothing
    shifted = fn(mdl.tensor(logits - logits.max(axis=1, keepdims=True), device=device))
    np.testing.assert_allclose(shifted.numpy(), loss.numpy(), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradgradcheck(reduction, device, rng):
    labels = np.array([2, 0, 2, 1])
    check_gradgrad(lambda x: F.cross_entropy(x, labels, reduction=reduction), [fixed_array(rng, (4, 3))], device)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dtype_kept(reduction, dtype, device, rng):
    labels = np.array([2, 0, 2, 1])
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    check_dtype(lambda x: F.cross_entropy(x, labels, reduction=reduction), [fixed_array(rng, (4, 3))], dtype,
                device)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_label_smoothing_like_torch(smoothing, reduction, device, torch, rng):
    logits, labels = rng.standard_normal((6, 5)) * 3, rng.integers(0, 5, 6)
    check_op(lambda x: F.cross_entropy(x, labels, reduction, label_smoothing=smoothing), [logits], device, torch, None,
             lambda t: torch.nn.functional.cross_entropy(t, torch.from_numpy(labels), reduction=reduction,
                                                         label_smoothing=smoothing))


def test_cross_entropy_label_smoothing_range():
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        F.cross_entropy(mdl.tensor(np.zeros((2, 3))), np.array([0, 1]), label_smoothing=1.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_cross_entropy_cuda_kernels_match_the_numpy_path(reduction, smoothing, dtype, cuda, rng):
    # the loss kernel and the gradient kernel against the NumPy code, on non-contiguous logits too
    logits = (rng.standard_normal((9, 23)) * 4).astype(dtype)
    labels = rng.integers(0, 11, 9)
    gy = rng.standard_normal(9 if reduction == "none" else ()).astype(dtype)
    results = []
    for device in ("cpu", cuda):
        x = mdl.tensor(logits, device=device, requires_grad=True)
        loss = F.cross_entropy(x[:, ::2], mdl.tensor(labels, device=device), reduction=reduction,
                               label_smoothing=smoothing)
        loss.backward(mdl.tensor(gy, device=device))
        results.append((loss.numpy(), x.grad.numpy()))
    (l0, g0), (l1, g1) = results
    assert l1.dtype == l0.dtype and g1.dtype == g0.dtype
    tol = {"float16": 2e-3, "float32": 1e-5, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(l1.astype(np.float64), l0.astype(np.float64), rtol=tol, atol=tol)
    np.testing.assert_allclose(g1.astype(np.float64), g0.astype(np.float64), rtol=tol, atol=tol)


def test_cross_entropy_out_of_range_label_is_nan_on_a_gpu(cuda, rng):
    # on a GPU a label outside [0, C) cannot be checked without waiting for the device: the loss (and that
    # sample's gradient) is NaN instead, and no read or wait happens
    from minidl import backend

    x = mdl.tensor(rng.standard_normal((4, 5)).astype(np.float32), device=cuda, requires_grad=True)
    labels = mdl.tensor(np.array([0, 5, 2, -1]), device=cuda)
    before = backend.device_reads()
    loss = F.cross_entropy(x, labels, reduction="none")
    loss.sum().backward()
    assert backend.device_reads() == before
    values, grad = loss.numpy(), x.grad.numpy()
    assert np.isfinite(values[[0, 2]]).all() and np.isnan(values[[1, 3]]).all()
    assert np.isfinite(grad[[0, 2]]).all() and np.isnan(grad[[1, 3]]).all()
    assert np.isnan(F.cross_entropy(x, labels).item())
