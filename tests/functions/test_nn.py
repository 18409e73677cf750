"""Activations (minidl/functions/nn.py): relu, softmax and log_softmax, including large logits."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidl as mdl
import minidl.functions as F
from minidl.testing import strategies as mst

from ._opcheck import (  # noqa: F401 - reference is a fixture
    check_dtype, check_gradgrad, check_op, domain_arrays, fixed_array, op_settings, reference,
)


def np_softmax(a, axis):
    # the textbook formula: fine for the [-5, 5] inputs it is used on
    e = np.exp(a)
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(a, axis):
    return np.log(np_softmax(a, axis))


def np_log_softmax_stable(a, axis):
    shifted = a - a.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


@st.composite
def array_and_int_axis(draw, scale=1.0):
    a = draw(mst.arrays(shape=mst.shapes(min_dims=1, max_dims=3, max_side=4)))
    return a * scale, draw(st.integers(-a.ndim, a.ndim - 1))


@op_settings()
@given(a=domain_arrays("nonzero"))
def test_relu(device, reference, a):
    check_op(F.relu, [a], device, reference, lambda x: np.maximum(x, 0.0), lambda t: t.relu())


@op_settings()
@given(case=array_and_int_axis())
def test_softmax(device, reference, case):
    a, axis = case
    check_op(lambda x: F.softmax(x, axis=axis), [a], device, reference,
             lambda x: np_softmax(x, axis), lambda t: t.softmax(dim=axis))


@op_settings()
@given(case=array_and_int_axis())
def test_log_softmax(device, reference, case):
    a, axis = case
    check_op(lambda x: F.log_softmax(x, axis=axis), [a], device, reference,
             lambda x: np_log_softmax(x, axis), lambda t: t.log_softmax(dim=axis))


@op_settings(fraction=0.6)
@given(case=array_and_int_axis(scale=1e4))
def test_softmax_and_log_softmax_are_stable_for_large_logits(device, reference, case):
    a, axis = case
    # No numerical gradient here: at this scale float64 rounding of the outputs swamps a 1e-6 step.
    (p,), _ = check_op(lambda x: F.softmax(x, axis=axis), [a], device, reference,
                       lambda x: np.exp(np_log_softmax_stable(x, axis)), lambda t: t.softmax(dim=axis),
                       numerical=False)
    (logp,), _ = check_op(lambda x: F.log_softmax(x, axis=axis), [a], device, reference,
                          lambda x: np_log_softmax_stable(x, axis), lambda t: t.log_softmax(dim=axis),
                          numerical=False)
    np.testing.assert_allclose(p.numpy().sum(axis=axis), 1.0, rtol=1e-12)
    assert (logp.numpy() <= 0).all()
    # shift invariance: subtracting each slice's max changes nothing
    shifted = mdl.tensor(a - a.max(axis=axis, keepdims=True), device=device)
    np.testing.assert_allclose(F.log_softmax(shifted, axis=axis).numpy(), logp.numpy(), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("name, fn", [
    ("relu", F.relu),
    ("softmax_last", lambda x: F.softmax(x, axis=-1)),
    ("softmax_first", lambda x: F.softmax(x, axis=0)),
    ("log_softmax_last", lambda x: F.log_softmax(x, axis=-1)),
    ("log_softmax_middle", lambda x: F.log_softmax(x, axis=1)),
])
def test_gradgradcheck(name, fn, device, rng):
    a = fixed_array(rng, (2, 3, 4), "nonzero")
    # relu is piecewise linear: multiply by x so its second derivative is not identically 0
    check_gradgrad((lambda x: fn(x) * x) if name == "relu" else fn, [a], device)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name, fn", [
    ("relu", F.relu), ("softmax", F.softmax), ("log_softmax", F.log_softmax),
])
def test_dtype_kept(name, fn, dtype, device, rng):
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    check_dtype(fn, [fixed_array(rng, (3, 4), "nonzero")], dtype, device)
