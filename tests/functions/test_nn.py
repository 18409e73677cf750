"""Activations (minidl/functions/nn.py): relu, bias_relu, softmax and log_softmax, including large logits."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidl as mdl
import minidl.functions as F
from minidl.functions.window import is_channels_last
from minidl.testing import strategies as mst

from ._opcheck import (  # noqa: F401 - reference is a fixture
    away_from, check_dtype, check_gradgrad, check_op, domain_arrays, fixed_array, op_settings, reference,
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


# ------------------------------------------------------------------------------------ bias_relu
def bias_shape(ndim, axis, channels):
    return tuple(channels if k == axis % ndim else 1 for k in range(ndim))


def np_bias_relu(x, b, axis):
    return np.maximum(x + b.reshape(bias_shape(x.ndim, axis, b.size)), 0.0)


def off_the_kink(x, b, axis, margin=0.25):
    """x moved so that no x + b lies within ``margin`` of 0, where relu has its kink."""
    b = b.reshape(bias_shape(x.ndim, axis, b.size))
    return away_from(x + b, [0.0], margin) - b


def channels_last_copy(a):
    """The same (N, C, ...) values stored with C last."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)


@st.composite
def bias_relu_cases(draw):
    shape = draw(mst.shapes(min_dims=1, max_dims=4, max_side=4))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    x = draw(mst.arrays(shape=st.just(shape)))
    b = draw(mst.arrays(shape=st.just((shape[axis],))))
    return off_the_kink(x, b, axis), b, axis


@op_settings()
@given(case=bias_relu_cases())
def test_bias_relu(device, reference, case):
    x, b, axis = case
    check_op(lambda x, b: F.bias_relu(x, b, axis=axis), [x, b], device, reference,
             lambda x, b: np_bias_relu(x, b, axis),
             lambda x, b: (x + b.reshape(bias_shape(x.ndim, axis, b.numel()))).relu())


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4, 5), (4, 6)])
def test_bias_relu_matches_the_two_ops_in_either_storage_order(shape, channels_last, device, rng):
    x, b = rng.standard_normal(shape), rng.standard_normal(shape[1])
    x = off_the_kink(x, b, 1)
    if channels_last:
        x = channels_last_copy(x)
    gy = rng.standard_normal(shape)
    results = []
    for fused in (True, False):
        xt, bt = (mdl.tensor(a, device=device, requires_grad=True) for a in (x, b))  # (x keeps its storage order)
        assert is_channels_last(xt.data) == (channels_last and len(shape) > 2)
        y = F.bias_relu(xt, bt) if fused else F.relu(xt + bt.reshape(bias_shape(len(shape), 1, shape[1])))
        y.backward(mdl.tensor(gy, device=device))
        results.append((y, xt.grad.numpy(), bt.grad.numpy()))
        if fused:
            assert y.data.strides == xt.data.strides, "the output keeps the input's storage order"
            np.testing.assert_array_equal(xt.numpy(), x, err_msg="bias_relu modified its input")
    for a, e in zip(results[0], results[1]):
        np.testing.assert_allclose(a.numpy() if isinstance(a, mdl.Tensor) else a,
                                   e.numpy() if isinstance(e, mdl.Tensor) else e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["C", "channels_last", "F", "sliced", "channels_first"])
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_bias_relu_in_any_storage_order(layout, axis, device, rng):
    # NumPy adds the bias and sums its gradient a row of storage at a time where the layout allows, else
    # broadcasts (a GPU reads in storage order): every layout gives the two ops' values and gradients
    shape = (3, 4, 5, 2)
    x, b, gy = rng.standard_normal(shape), rng.standard_normal(shape[axis]), rng.standard_normal(shape)
    x = off_the_kink(x, b, axis)
    store = {"C": lambda a: a, "channels_last": channels_last_copy, "F": np.asfortranarray,
             "sliced": lambda a: np.pad(a, ((0, 0), (0, 0), (0, 1), (0, 0)))[:, :, :5],
             "channels_first": lambda a: np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, 0)), 0, 1)}[layout]
    for dtype, tol in (("float64", 1e-12), ("float16", 2e-3)):
        results = []
        for fused in (True, False):
            xt = mdl.tensor(store(x.astype(dtype)), requires_grad=True, device=device)
            bt = mdl.tensor(b.astype(dtype), requires_grad=True, device=device)
            y = (F.bias_relu(xt, bt, axis=axis) if fused
                 else F.relu(xt + bt.reshape(bias_shape(len(shape), axis, b.size))))
            y.backward(mdl.tensor(gy.astype(dtype), device=device))
            results.append([t.numpy().astype(np.float64) for t in (y, xt.grad, bt.grad)])
        for name, a, e in zip(("y", "gx", "gb"), *results):
            np.testing.assert_allclose(a, e, rtol=tol, atol=tol, err_msg=f"{name}, {dtype}")


@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_relu_gradgrad(with_bias, device, rng):
    x, b = rng.standard_normal((2, 3, 4)), rng.standard_normal(3)
    x = off_the_kink(x, b, 1)
    if with_bias:  # piecewise linear: square it so the second derivative is not identically 0
        check_gradgrad(lambda x, b: F.bias_relu(x, b) * F.bias_relu(x, b), [x, b], device)
    else:
        check_gradgrad(lambda x: F.bias_relu(x) * x, [x + b.reshape(1, 3, 1)], device)


def test_bias_relu_keeps_only_its_output(rng):
    x = mdl.tensor(off_the_kink(rng.standard_normal((2, 3)), np.zeros(3), 1), requires_grad=True)
    b = mdl.tensor(rng.standard_normal(3), requires_grad=True)
    y = F.bias_relu(x, b)
    fn = y.creator
    assert type(fn).__name__ == "BiasReLU" and fn.saves_output and not fn.saves_inputs
    with mdl.no_grad():
        y += 1.0  # what backward reads changes
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward(mdl.ones_like(y))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_bias_relu_dtype_kept(dtype, device, rng):
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    x, b = rng.standard_normal((3, 4, 2)), rng.standard_normal(4)
    check_dtype(F.bias_relu, [off_the_kink(x, b, 1, margin=0.1), b], dtype, device)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_bias_relu_sums_the_bias_gradient_in_float32(dtype, device):
    # 3,072 ones per channel: a float16 running sum stalls at 2,048, a bfloat16 one at 256
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    x = mdl.tensor(np.ones((3, 2, 32, 32)), dtype=dtype, device=device, requires_grad=True)
    b = mdl.tensor(np.ones(2), dtype=dtype, device=device, requires_grad=True)
    F.bias_relu(x, b).backward(mdl.ones_like(x))
    assert b.grad.dtype == b.dtype
    np.testing.assert_array_equal(b.grad.numpy().astype(np.float64), [3072.0, 3072.0])


def test_bias_relu_errors_name_the_shapes_and_dtypes():
    x = mdl.tensor(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(mdl.ShapeError, match=r"bias of shape \(4,\) does not match the 3 channels along axis 1 "
                                             r"of x of shape \(2, 3, 4\)"):
        F.bias_relu(x, mdl.tensor(np.zeros(4, np.float32)))
    with pytest.raises(mdl.ShapeError, match=r"axis 3 is out of range for x of shape \(2, 3, 4\)"):
        F.bias_relu(x, mdl.tensor(np.zeros(3, np.float32)), axis=3)
    with pytest.raises(mdl.OpTypeError, match="x is float32 but the bias is float64"):
        F.bias_relu(x, mdl.tensor(np.zeros(3)))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_bias_relu_cuda_kernels_match_the_numpy_path(dtype, channels_last, cuda, rng):
    dtype = mdl.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    x = rng.standard_normal((3, 5, 4, 6)).astype(dtype)
    x[0, 0, 0, :3] = [np.nan, -0.0, 0.0]  # NaN passes through; zeros (of either sign) stay zeros
    b = rng.standard_normal(5).astype(dtype)
    b[0] = -0.0
    gy = rng.standard_normal(x.shape).astype(dtype)
    gy[0, 1, 0, 0] = np.nan
    if channels_last:
        x = channels_last_copy(x)
    results = []
    for device in ("cpu", cuda):
        xt = mdl.tensor(x, device=device, requires_grad=True)
        bt = mdl.tensor(b, device=device, requires_grad=True)
        y = F.bias_relu(xt, bt)
        assert is_channels_last(y.data) == channels_last
        with np.errstate(invalid="ignore"):  # (NumPy warns of the NaN in y > 0)
            (gx, gb) = mdl.grad(y, [xt, bt], mdl.tensor(gy, device=device))
        relu_only = F.bias_relu(xt)
        results.append((y.numpy(), gx.numpy(), gb.numpy(), relu_only.numpy()))
    (y0, gx0, gb0, r0), (y1, gx1, gb1, r1) = results
    for a, e in ((y1, y0), (gx1, gx0), (r1, r0)):  # the same values (NaN where NumPy has NaN)
        np.testing.assert_array_equal(a.astype(np.float64), e.astype(np.float64))
    # the bias gradient is a sum: the order differs, and NaN stays NaN
    np.testing.assert_allclose(gb1.astype(np.float64), gb0.astype(np.float64), rtol=1e-2, atol=1e-2)


def test_bias_relu_cuda_double_backward_and_overwrite(cuda, rng):
    # conv2d/linear's in-place form on a GPU: the same values as the NumPy path, and the second derivative
    x, b = rng.standard_normal((4, 6)), rng.standard_normal(6)
    x, W = off_the_kink(x, b, 1), rng.standard_normal((6, 6))
    results = []
    for device in ("cpu", cuda):
        xt, Wt, bt = (mdl.tensor(a, device=device, requires_grad=True) for a in (x, W, b))
        y = F.linear(xt, Wt, bt, activation="relu")
        gx, gW, gb = mdl.grad((y * y).sum(), [xt, Wt, bt], create_graph=True)
        ggx, = mdl.grad((gx * gx).sum() + (gb * gb).sum(), [xt])
        results.append([t.numpy() for t in (y, gx, gW, gb, ggx)])
    for a, e in zip(*results):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)
