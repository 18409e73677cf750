"""Elementwise math (minidl/functions/math.py): forward against NumPy and PyTorch, gradients
against central differences and PyTorch, second derivatives, and dtypes kept."""
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
    away_from, check_dtype, check_gradgrad, check_op, domain_arrays, fixed_array, op_settings, reference,
    spread_apart,
)

PAIRS = mst.broadcastable_shapes(2, max_dims=3, max_side=4)


def np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


# name: (minidl op, NumPy reference, PyTorch op on tensors, input domain)
UNARY = {
    "neg": (F.neg, np.negative, lambda t: t.neg(), "any"),
    "neg_operator": (lambda x: -x, np.negative, lambda t: -t, "any"),
    "exp": (F.exp, np.exp, lambda t: t.exp(), "any"),
    "log": (F.log, np.log, lambda t: t.log(), "positive"),
    "sqrt": (F.sqrt, np.sqrt, lambda t: t.sqrt(), "positive"),
    "abs": (F.abs, np.abs, lambda t: t.abs(), "nonzero"),
    "sign": (F.sign, np.sign, lambda t: t.sign(), "nonzero"),
    "tanh": (F.tanh, np.tanh, lambda t: t.tanh(), "any"),
    "sigmoid": (F.sigmoid, np_sigmoid, lambda t: t.sigmoid(), "any"),
    # a Python number on the left: the reflected operators
    "rsub": (lambda x: 2.0 - x, lambda a: 2.0 - a, lambda t: 2.0 - t, "any"),
    "rdiv": (lambda x: 3.0 / x, lambda a: 3.0 / a, lambda t: 3.0 / t, "nonzero"),
    "rpow": (lambda x: 2.0 ** x, lambda a: 2.0 ** a, lambda t: 2.0 ** t, "any"),
}

# name: (minidl op, NumPy reference, PyTorch op, domain of a, domain of b)
BINARY = {
    "add": (F.add, np.add, lambda a, b: a + b, "any", "any"),
    "sub": (F.sub, np.subtract, lambda a, b: a - b, "any", "any"),
    "mul": (F.mul, np.multiply, lambda a, b: a * b, "any", "any"),
    "div": (F.div, np.divide, lambda a, b: a / b, "any", "nonzero"),
    "pow": (F.pow, np.power, lambda a, b: a ** b, "positive", "exponent"),  # tensor exponent
}

SELECTS = {
    "maximum": (F.maximum, np.maximum, lambda a, b: a.maximum(b)),
    "minimum": (F.minimum, np.minimum, lambda a, b: a.minimum(b)),
}


@pytest.mark.parametrize("name", UNARY)
@op_settings()
@given(data=st.data())
def test_unary(name, device, reference, data):
    fn, numpy_fn, torch_fn, domain = UNARY[name]
    a = data.draw(domain_arrays(domain), label="x")
    check_op(fn, [a], device, reference, numpy_fn, torch_fn)


@pytest.mark.parametrize("name", BINARY)
@op_settings()
@given(data=st.data())
def test_binary_broadcasting(name, device, reference, data):
    fn, numpy_fn, torch_fn, domain_a, domain_b = BINARY[name]
    shape_a, shape_b = data.draw(PAIRS, label="shapes")
    a = data.draw(domain_arrays(domain_a, shape_a), label="a")
    b = data.draw(domain_arrays(domain_b, shape_b), label="b")
    check_op(fn, [a, b], device, reference, numpy_fn, torch_fn)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_pow_tensor_exponent_at_base_zero_like_torch(device, torch):
    # 0 ** b with b >= 0: d/da is 0 where b == 0, d/db is 0 (PyTorch's convention), not NaN
    a = np.array([0.0, 0.0, 0.0, 2.0, 1.5])
    b = np.array([0.0, 1.0, 2.5, 0.0, -1.0])
    check_op(F.pow, [a, b], device, torch, None, lambda x, y: x ** y)


@op_settings()
@given(a=domain_arrays("any"), c=st.sampled_from([0, 1, 2, 3, -1, 2.0, 0.5, 1.5, -0.5, -2.5]))
def test_pow_scalar_exponent(device, reference, a, c):
    if c < 0 or c != int(c):  # fractional or negative powers: stay off 0 and negative bases
        a = np.abs(a) + 0.25
    check_op(lambda x: F.pow(x, c), [a], device, reference, lambda x: np.power(x, c), lambda t: t ** c)


@pytest.mark.parametrize("name", SELECTS)
@op_settings()
@given(data=st.data())
def test_maximum_minimum(name, device, reference, data):
    fn, numpy_fn, torch_fn = SELECTS[name]
    shape_a, shape_b = data.draw(PAIRS, label="shapes")
    a = data.draw(mst.arrays(shape=shape_a, unique=True), label="a")
    b = data.draw(mst.arrays(shape=shape_b, unique=True), label="b")
    a, b = spread_apart(a, b)  # no ties, even across a and b, nor near-ties a step could cross
    check_op(fn, [a, b], device, reference, numpy_fn, torch_fn)


@pytest.mark.parametrize("name", SELECTS)
def test_maximum_minimum_ties_share_the_gradient_like_torch(name, device, torch):
    fn, _, torch_fn = SELECTS[name]
    a = np.array([[1.0, 2.0, -3.0], [0.5, 0.5, 4.0]])
    b = np.array([1.0, 0.0, -3.0])  # ties in columns 0 and 2 of row 0
    check_op(fn, [a, b], device, torch, None, torch_fn)


@st.composite
def where_operands(draw):
    shape_c, shape_a, shape_b = draw(mst.broadcastable_shapes(3, max_dims=3, max_side=4))
    condition = draw(hnp.arrays(np.bool_, shape_c))
    return condition, draw(mst.arrays(shape=shape_a)), draw(mst.arrays(shape=shape_b))


@op_settings()
@given(operands=where_operands(), condition_as_tensor=st.booleans())
def test_where(device, reference, operands, condition_as_tensor):
    condition, a, b = operands
    cond = mdl.tensor(condition, device=device) if condition_as_tensor else condition
    check_op(
        lambda x, y: F.where(cond, x, y), [a, b], device, reference,
        lambda x, y: np.where(condition, x, y),
        lambda x, y: reference.where(reference.from_numpy(condition), x, y),
    )


@op_settings()
@given(a=domain_arrays("any"), low=st.floats(-3.0, 0.5), width=st.floats(1.0, 4.0),
       sides=st.sampled_from(["both", "low", "high"]))
def test_clip(device, reference, a, low, width, sides):
    high = low + width
    low = None if sides == "high" else low
    high = None if sides == "low" else high
    a = away_from(a, [p for p in (low, high) if p is not None])  # the gradient jumps at the bounds
    check_op(lambda x: F.clip(x, low, high), [a], device, reference,
             lambda x: np.clip(x, low, high), lambda t: t.clamp(min=low, max=high))


# ------------------------------------------------------- second derivatives
# name: (function of the inputs, [(shape, domain) per input])
GRADGRAD = {
    "add": (F.add, [((3, 4), "any"), ((4,), "any")]),
    "sub": (F.sub, [((3, 1), "any"), ((3, 4), "any")]),
    "mul": (F.mul, [((3, 4), "any"), ((4,), "any")]),
    "div": (F.div, [((3, 4), "any"), ((3, 1), "nonzero")]),
    "neg": (F.neg, [((3, 4), "any")]),
    "pow_tensor": (F.pow, [((3, 4), "positive"), ((4,), "exponent")]),
    "pow_2": (lambda x: F.pow(x, 2), [((3, 4), "any")]),
    "pow_3": (lambda x: F.pow(x, 3), [((3, 4), "any")]),
    "pow_-1.5": (lambda x: F.pow(x, -1.5), [((3, 4), "positive")]),
    "rpow": (lambda x: 2.0 ** x, [((3, 4), "any")]),
    "rdiv": (lambda x: 3.0 / x, [((3, 4), "nonzero")]),
    "exp": (F.exp, [((3, 4), "any")]),
    "log": (F.log, [((3, 4), "positive")]),
    "sqrt": (F.sqrt, [((3, 4), "positive")]),
    "abs": (F.abs, [((3, 4), "nonzero")]),
    "tanh": (F.tanh, [((3, 4), "any")]),
    "sigmoid": (F.sigmoid, [((3, 4), "any")]),
    "maximum": (lambda a, b: F.maximum(a, b) * a, [((3, 4), "any"), ((4,), "any")]),
    "minimum": (lambda a, b: F.minimum(a, b) * b, [((3, 4), "any"), ((4,), "any")]),
    "where": (lambda a, b: F.where(np.array([True, False, True, False]), a * a, b * a),
              [((3, 4), "any"), ((3, 4), "any")]),
    "clip": (lambda x: F.clip(x, -0.5, 0.7) * x, [((3, 4), "any")]),
}


@pytest.mark.parametrize("name", GRADGRAD)
def test_gradgradcheck(name, device, rng):
    fn, specs = GRADGRAD[name]
    arrays = [fixed_array(rng, shape, domain) for shape, domain in specs]
    if name in ("maximum", "minimum"):
        arrays = spread_apart(*arrays, gap=1e-2)
    if name == "clip":
        arrays = [away_from(arrays[0], [-0.5, 0.7])]
    check_gradgrad(fn, arrays, device)


# ------------------------------------------------------------------ dtypes
DTYPE_CASES = {
    **{name: (spec[0], [spec[3]]) for name, spec in UNARY.items()},
    **{name: (spec[0], [spec[3], spec[4]]) for name, spec in BINARY.items()},
    "times_2": (lambda x: x * 2, ["any"]),
    "plus_half": (lambda x: x + 0.5, ["any"]),
    "pow_2": (lambda x: x ** 2, ["any"]),
    "pow_0.5": (lambda x: x ** 0.5, ["positive"]),
    "maximum": (F.maximum, ["any", "any"]),
    "minimum": (F.minimum, ["any", "any"]),
    "where": (lambda a, b: F.where(np.array([True, False, True, False]), a, b), ["any", "any"]),
    "clip": (lambda x: F.clip(x, -0.5, 0.5), ["any"]),
}
BFLOAT16_CASES = ["add", "mul", "div", "times_2", "exp", "log", "tanh", "sigmoid", "pow_2", "pow_0.5",
                  "maximum", "where", "clip"]


def _dtype_inputs(rng, domains):
    return [fixed_array(rng, (3, 4) if i == 0 else (4,), d) for i, d in enumerate(domains)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", DTYPE_CASES)
def test_dtype_kept(name, dtype, device, rng):
    fn, domains = DTYPE_CASES[name]
    check_dtype(fn, _dtype_inputs(rng, domains), dtype, device)


@pytest.mark.parametrize("name", BFLOAT16_CASES)
def test_bfloat16_kept(name, device, rng):
    fn, domains = DTYPE_CASES[name]
    check_dtype(fn, _dtype_inputs(rng, domains), mdl.bfloat16, device)
