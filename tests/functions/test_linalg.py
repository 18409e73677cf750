"""Matrix products (minidl/functions/linalg.py): 1-D, 2-D, batched and broadcasting batch axes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minidl as mdl
import minidl.functions as F
from minidl.testing import strategies as mst

from ._opcheck import (  # noqa: F401 - reference is a fixture
    check_dtype, check_gradgrad, check_op, fixed_array, op_settings, reference,
)

KINDS = ["vector@vector", "vector@matrix", "matrix@vector", "matrix@matrix", "batched",
         "broadcast_batch", "vector@batched", "batched@vector"]
SIDES = st.integers(1, 4)


@st.composite
def matmul_operands(draw, kind):
    """Two float64 arrays whose product is of the given kind."""
    m, k, n = draw(SIDES), draw(SIDES), draw(SIDES)
    batch = draw(mst.shapes(min_dims=1, max_dims=2, max_side=3))
    left, right = kind.split("@") if "@" in kind else (kind, kind)
    if kind == "broadcast_batch":
        batch_a, batch_b = draw(mst.broadcastable_shapes(2, min_dims=1, max_dims=3, max_side=3))
        assume(batch_a != batch_b)
    else:
        batch_a = batch_b = batch
    shape_a = {"vector": (k,), "matrix": (m, k)}.get(left, batch_a + (m, k))
    shape_b = {"vector": (k,), "matrix": (k, n)}.get(right, batch_b + (k, n))
    return draw(mst.arrays(shape=shape_a)), draw(mst.arrays(shape=shape_b))


@pytest.mark.parametrize("kind", KINDS)
@op_settings()
@given(data=st.data())
def test_matmul(kind, device, reference, data):
    a, b = data.draw(matmul_operands(kind), label="a, b")
    check_op(F.matmul, [a, b], device, reference, np.matmul, lambda x, y: x @ y)


@op_settings(fraction=0.4)
@given(operands=matmul_operands("broadcast_batch"))
def test_matmul_operator(device, reference, operands):
    check_op(lambda x, y: x @ y, list(operands), device, reference, np.matmul, lambda x, y: x @ y)


# ------------------------------------------------------- second derivatives
GRADGRAD = {
    "vector@vector": [(4,), (4,)],
    "vector@matrix": [(3,), (3, 2)],
    "matrix@vector": [(2, 3), (3,)],
    "matrix@matrix": [(2, 3), (3, 4)],
    "broadcast_batch": [(2, 1, 2, 3), (3, 3, 2)],
    "batched@vector": [(2, 2, 3), (3,)],
}


@pytest.mark.parametrize("kind", GRADGRAD)
def test_gradgradcheck(kind, device, rng):
    arrays = [fixed_array(rng, shape) for shape in GRADGRAD[kind]]
    # (a @ b) * (a @ b): the product alone is bilinear, its second derivative in (a, b) jointly is not 0
    check_gradgrad(lambda a, b: F.matmul(a, b) * F.matmul(a, b), arrays, device)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_dtype_kept(dtype, device, rng):
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    check_dtype(F.matmul, [fixed_array(rng, (2, 3, 4)), fixed_array(rng, (4, 2))], dtype, device)


def test_linear_raises_shape_and_type_errors_like_the_other_ops(device):
    x = mdl.tensor(np.zeros((2, 6), np.float32), device=device)
    W = mdl.tensor(np.zeros((4, 5), np.float32), device=device)
    with pytest.raises(mdl.ShapeError, match=r"linear: expected x \(N, 5\) and W \(out, in\), got \(2, 6\)") as info:
        F.linear(x, W)
    assert info.value.op == "linear"
    with pytest.raises(mdl.ShapeError, match="bias of shape"):
        F.linear(x[:, :5], W, mdl.tensor(np.zeros(3, np.float32), device=device))
    with pytest.raises(mdl.OpTypeError, match="linear: operands must have one dtype, got x float64, W float32"):
        F.linear(x[:, :5].to("float64"), W)
    with pytest.raises(mdl.OpTypeError, match="b float64"):
        F.linear(x[:, :5], W, mdl.tensor(np.zeros(4), device=device))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_relu_is_relu_of_linear(bias, device, rng):
    x, W, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    arrays = [x, W, b] if bias else [x, W]
    check_op(lambda x, W, b=None: F.linear(x, W, b, activation="relu"), arrays, device, None,
             lambda x, W, b=None: np.maximum(x @ W.T + (0.0 if b is None else b), 0.0))
    y = F.linear(*[mdl.tensor(a, requires_grad=True, device=device) for a in arrays], activation="relu")
    assert type(y.creator).__name__ == "BiasReLU" and y.data is y.creator.inputs[0].data  # in the product's memory
    check_gradgrad(lambda *a: F.linear(*a, activation="relu") ** 2, arrays, device)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_linear_relu_dtype_kept(dtype, device, rng):
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    check_dtype(lambda x, W, b: F.linear(x, W, b, activation="relu"),
                [fixed_array(rng, (3, 4)), fixed_array(rng, (2, 4)), fixed_array(rng, (2,))], dtype, device)


def test_linear_unknown_activation_is_an_error(device):
    x, W = mdl.tensor(np.zeros((2, 3)), device=device), mdl.tensor(np.zeros((4, 3)), device=device)
    with pytest.raises(ValueError, match="linear: activation must be None or one of 'relu', got 'sigmoid'"):
        F.linear(x, W, activation="sigmoid")
