"""Reductions (minidl/functions/reduction.py): sum, mean, max, min over axis None, an int,
a negative int or a tuple, with and without keepdims."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidl as mdl
import minidl.functions as F
from minidl.testing import strategies as mst

from ._opcheck import (  # noqa: F401 - reference is a fixture
    check_dtype, check_gradgrad, check_op, fixed_array, op_settings, reference, spread_apart,
)

# name: (minidl op, NumPy reference, PyTorch method)
REDUCTIONS = {
    "sum": (F.sum, np.sum, "sum"),
    "mean": (F.mean, np.mean, "mean"),
    "max": (F.max, np.max, "amax"),  # amax: ties share the gradient, as in minidl
    "min": (F.min, np.min, "amin"),
}


@st.composite
def reduction_case(draw, unique=False):
    """(array, axis, keepdims); tuple axes are sometimes counted from the end."""
    a, axis = draw(mst.arrays_and_axis(max_dims=3, unique=unique))
    if isinstance(axis, tuple) and draw(st.booleans()):
        axis = tuple(ax - a.ndim for ax in axis)
    return a, axis, draw(st.booleans())


def _torch_dims(axis, ndim):
    return tuple(range(ndim)) if axis is None else axis


def _check_reduction(name, device, reference, a, axis, keepdims):
    fn, numpy_fn, torch_name = REDUCTIONS[name]
    dims = _torch_dims(axis, a.ndim)
    check_op(
        lambda x: fn(x, axis=axis, keepdims=keepdims), [a], device, reference,
        lambda x: numpy_fn(x, axis=axis, keepdims=keepdims),
        lambda t: getattr(t, torch_name)(dim=dims, keepdim=keepdims),
    )


@pytest.mark.parametrize("name", ["sum", "mean"])
@op_settings()
@given(case=reduction_case())
def test_sum_mean(name, device, reference, case):
    _check_reduction(name, device, reference, *case)


@pytest.mark.parametrize("name", ["max", "min"])
@op_settings()
@given(case=reduction_case(unique=True))
def test_max_min(name, device, reference, case):
    a, axis, keepdims = case
    _check_reduction(name, device, reference, spread_apart(a), axis, keepdims)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [None, 1, (0, 1)])
@pytest.mark.parametrize("name", ["max", "min"])
def test_max_min_ties_share_the_gradient_like_torch(name, axis, keepdims, device, torch):
    a = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [-1.0, 3.0, -1.0]])
    _check_reduction(name, device, torch, a, axis, keepdims)


def test_methods_are_the_ops(rng):
    a = rng.standard_normal((3, 4))
    x = mdl.tensor(a)
    for name, (fn, numpy_fn, _) in REDUCTIONS.items():
        np.testing.assert_array_equal(getattr(x, name)(axis=-1).numpy(), numpy_fn(a, axis=-1), err_msg=name)
        np.testing.assert_array_equal(getattr(x, name)().numpy(), fn(x).numpy(), err_msg=name)


# ------------------------------------------------------- second derivatives
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [None, -1, (0, 2)])
@pytest.mark.parametrize("name", REDUCTIONS)
def test_gradgradcheck(name, axis, keepdims, device, rng):
    fn = REDUCTIONS[name][0]
    a = spread_apart(fixed_array(rng, (2, 3, 2)), gap=1e-2)
    # times x: the second derivative of a linear (or piecewise linear) reduction alone is 0
    check_gradgrad(lambda x: fn(x, axis=axis, keepdims=keepdims) * fn(x * x, axis=axis, keepdims=keepdims),
                   [a], device)


# ------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", REDUCTIONS)
def test_dtype_kept(name, dtype, device, rng):
    fn = REDUCTIONS[name][0]
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    check_dtype(lambda x: fn(x, axis=1), [fixed_array(rng, (3, 4))], dtype, device)
