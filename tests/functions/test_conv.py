"""conv2d (minidl/functions/conv.py) with stride, padding, dilation, groups and bias: forward against a
loop-and-einsum NumPy reference and PyTorch, gradients against central differences and PyTorch, second
derivatives, error messages. Every registered algorithm is checked against the reference in
tests/plugins/test_conv_algorithms.py."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

import minidl as mdl
import minidl.functions as F

from ._conv_reference import conv_cases, np_conv2d
from ._opcheck import (  # noqa: F401 - reference is a fixture
    check_dtype, check_gradgrad, check_op, fixed_array, op_settings, reference, spread_apart,
)


# ------------------------------------------------------------------ conv2d
def _conv_check(device, reference, case, **kwargs):
    x, W, b, stride, padding, dilation, groups = case
    arrays = [x, W] if b is None else [x, W, b]
    return check_op(
        lambda x, W, b=None: F.conv2d(x, W, b, stride=stride, padding=padding, dilation=dilation, groups=groups),
        arrays, device, reference,
        lambda x, W, b=None: np_conv2d(x, W, b, stride, padding, dilation, groups),
        lambda x, W, b=None: reference.nn.functional.conv2d(x, W, b, stride, padding, dilation, groups),
        **kwargs,
    )


@op_settings()
@given(case=conv_cases())
def test_conv2d(device, reference, case):
    _conv_check(device, reference, case)


def test_conv2d_numpy_reference_agrees_with_torch(torch, rng):
    # the reference itself on one case with every option switched on
    x, W, b = rng.standard_normal((2, 6, 7, 8)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    args = ((2, 1), (1, 2), (2, 1), 2)
    expected = torch.nn.functional.conv2d(*map(torch.from_numpy, (x, W, b)), *args).numpy()
    np.testing.assert_allclose(np_conv2d(x, W, b, *args), expected, rtol=1e-12, atol=1e-12)


def test_conv2d_alexnet_geometry_like_torch(device, torch, rng):
    # conv1's 11x11 kernel at stride 4 with padding 2, scaled down in channels and input size
    x, W, b = rng.standard_normal((1, 3, 31, 31)), rng.standard_normal((4, 3, 11, 11)), rng.standard_normal(4)
    (y,), _ = check_op(lambda x, W, b: F.conv2d(x, W, b, stride=4, padding=2), [x, W, b], device, torch,
                       None, lambda x, W, b: torch.nn.functional.conv2d(x, W, b, 4, 2))
    assert y.shape == (1, 4, 7, 7)


@pytest.mark.parametrize("channels, out_channels, groups, stride", [
    (3, 4, 1, 2), (32, 4, 1, 2), (32, 4, 2, 2), (64, 8, 2, 2),  # strided
    (4, 8, 1, 1), (4, 12, 1, 1), (16, 48, 2, 1),  # stride 1, O <= 2 C or O > 2 C per group
])
@pytest.mark.parametrize("algorithm", ["im2col_gemm", "im2col_tapfold", "im2col_flip", "winograd", "fft"])
def test_conv2d_algorithms_like_torch(channels, out_channels, groups, stride, algorithm, device, torch, rng):
    # each algorithm computes the input gradient its own way: every one that takes the geometry agrees with torch
    x = rng.standard_normal((2, channels, 9, 9))
    W = rng.standard_normal((out_channels, channels // groups, 3, 3))
    if stride > 1 and algorithm in ("im2col_flip", "winograd", "fft"):
        with pytest.raises(ValueError, match=f"{algorithm}.*stride 2x2: needs 1"):
            F.conv2d(mdl.tensor(x, device=device), mdl.tensor(W, device=device), stride=stride, padding=1,
                     groups=groups, algorithm=algorithm)
        return
    check_op(lambda x, W: F.conv2d(x, W, stride=stride, padding=1, groups=groups, algorithm=algorithm), [x, W],
             device, torch, None, lambda x, W: torch.nn.functional.conv2d(x, W, stride=stride, padding=1, groups=groups))


def test_conv2d_large_enough_for_the_scratch_pool(device, torch, rng):
    # im2col columns above ScratchPool.min_bytes (8 MB) come from the pool and are handed back
    # after backward: two rounds in a row must not see each other's buffers.
    x = rng.standard_normal((8, 16, 32, 32))
    W = rng.standard_normal((8, 16, 3, 3))
    for _ in range(2):
        check_op(lambda x, W: F.conv2d(x, W, padding=1), [x, W], device, torch, None,
                 lambda x, W: torch.nn.functional.conv2d(x, W, padding=1))
        x = x[:, ::-1].copy()


@pytest.mark.parametrize("stride, padding, dilation, groups, bias", [
    (1, 0, 1, 1, False),
    (2, 1, 1, 2, True),
    ((1, 2), (2, 0), (2, 1), 1, True),  # stride leaves a remainder, dilation on one axis
])
def test_conv2d_gradgradcheck(stride, padding, dilation, groups, bias, device, rng):
    # Conv2dGradInput and Conv2dGradWeight must be differentiable. Squaring the output makes
    # the upstream gradient depend on x and W, so the gy-paths of their backwards run too.
    x, W = fixed_array(rng, (1, 2, 5, 5)), fixed_array(rng, (2, 2 // groups, 3, 2))
    arrays = [x, W, fixed_array(rng, (2,))] if bias else [x, W]

    def fn(x, W, b=None):
        y = F.conv2d(x, W, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
        return y * y

    check_gradgrad(fn, arrays, device)


def test_conv2d_double_backward_like_torch(device, torch, rng):
    # gradient of a gradient norm (as in gradient penalties) against PyTorch
    x, W, b = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    gy = rng.standard_normal((2, 4, 3, 3))
    args = dict(stride=2, padding=1, dilation=1, groups=2)

    xs = [mdl.tensor(a, requires_grad=True, device=device) for a in (x, W, b)]
    gx, gW = mdl.grad([F.conv2d(*xs, **args)], xs[:2], [mdl.tensor(gy, device=device)], create_graph=True)
    ((gx * gx).sum() + (gW * gW * gW).sum()).backward()

    ts = [torch.tensor(a, requires_grad=True) for a in (x, W, b)]
    tgx, tgW = torch.autograd.grad(torch.nn.functional.conv2d(*ts, **args), ts[:2], torch.from_numpy(gy),
                                   create_graph=True)
    ((tgx * tgx).sum() + (tgW * tgW * tgW).sum()).backward()
    for name, mine, theirs in zip("xW", xs, ts):
        np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=1e-9, atol=1e-10,
                                   err_msg=f"second-order gradient of {name}")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_conv2d_dtype_kept(dtype, device, rng):
    x, W, b = fixed_array(rng, (2, 4, 5, 5)), fixed_array(rng, (4, 2, 3, 3)), fixed_array(rng, (4,))
    check_dtype(lambda x, W, b: F.conv2d(x, W, b, padding=1, groups=2), [x, W, b], dtype, device)


# conv2d errors: ShapeError that names the shapes involved
@pytest.mark.parametrize("x_shape, w_shape, b_shape, kwargs, words", [
    ((1, 3, 5, 5), (4, 1, 3, 3), None, {"groups": 2}, ["3 channels", "(4, 1, 3, 3)", "groups=2"]),
    ((1, 4, 5, 5), (3, 2, 3, 3), None, {"groups": 2}, ["4 channels", "(3, 2, 3, 3)", "groups=2"]),
    ((1, 4, 5, 5), (4, 4, 3, 3), None, {"groups": 2}, ["4 channels", "(4, 4, 3, 3)"]),
    ((1, 3, 5, 5), (4, 3, 3, 3), (3,), {}, ["(3,)", "4 output channels"]),
    ((1, 3, 5, 5), (4, 3, 3, 3), (4, 1), {}, ["(4, 1)", "4 output channels"]),
    ((1, 3, 2, 5), (4, 3, 3, 3), None, {}, ["2x5", "3x3"]),
    ((1, 3, 5, 5), (4, 3, 3, 3), None, {"dilation": 3}, ["5x5", "3x3", "dilation 3x3"]),
    ((3, 5, 5), (4, 3, 3, 3), None, {}, ["(3, 5, 5)", "(4, 3, 3, 3)"]),
])
def test_conv2d_errors_name_the_shapes(x_shape, w_shape, b_shape, kwargs, words, device):
    x = mdl.tensor(np.zeros(x_shape), device=device)
    W = mdl.tensor(np.zeros(w_shape), device=device)
    b = None if b_shape is None else mdl.tensor(np.zeros(b_shape), device=device)
    with pytest.raises(mdl.ShapeError) as info:
        F.conv2d(x, W, b, **kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"


@pytest.mark.parametrize("kwargs", [{"stride": 0}, {"padding": -1}, {"dilation": 0}, {"stride": (1, 2, 3)},
                                    {"padding": 1.5}])
def test_conv2d_bad_geometry_raises(kwargs, device):
    x, W = mdl.tensor(np.zeros((1, 1, 5, 5)), device=device), mdl.tensor(np.zeros((1, 1, 3, 3)), device=device)
    with pytest.raises(ValueError):
        F.conv2d(x, W, **kwargs)




# ------------------------------------------------------------------ conv2d(activation="relu")
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("algorithm", ["im2col_gemm", "fft"])  # channels-last and (N, C, H, W) outputs
def test_conv2d_relu_is_relu_of_conv2d(algorithm, bias, device, rng):
    x, W, b = rng.standard_normal((2, 8, 6, 6)), rng.standard_normal((6, 4, 3, 3)), rng.standard_normal(6)
    gy = rng.standard_normal((2, 6, 6, 6))
    args = dict(padding=1, groups=2, algorithm=algorithm)
    results = []
    for activation in ("relu", None):
        xs = [mdl.tensor(a, requires_grad=True, device=device) for a in ((x, W, b) if bias else (x, W))]
        y = F.conv2d(*xs, **args, activation=activation)
        if activation is None:
            y = F.relu(y)
        else:
            pre = y.creator.inputs[0]  # the convolution's own output, which the bias add and relu overwrote
            assert type(y.creator).__name__ == "BiasReLU" and y.data is pre.data
        y.backward(mdl.tensor(gy, device=device))
        results.append((y.data.strides, y.numpy(), *(t.grad.numpy() for t in xs)))
    assert results[0][0] == results[1][0], "the output keeps the algorithm's storage order"
    for a, e in zip(results[0][1:], results[1][1:]):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


def test_conv2d_relu_gradients(device, rng):
    x, W, b = fixed_array(rng, (2, 4, 5, 5)), fixed_array(rng, (4, 2, 3, 3)), fixed_array(rng, (4,))
    check_op(lambda x, W, b: F.conv2d(x, W, b, padding=1, groups=2, activation="relu"), [x, W, b], device, None,
             lambda x, W, b: np.maximum(np_conv2d(x, W, b, (1, 1), (1, 1), (1, 1), 2), 0.0))
    check_gradgrad(lambda x, W, b: F.conv2d(x, W, b, stride=2, groups=2, activation="relu") ** 2, [x, W, b], device)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_conv2d_relu_dtype_kept(dtype, device, rng):
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    x, W, b = fixed_array(rng, (2, 4, 5, 5)), fixed_array(rng, (4, 2, 3, 3)), fixed_array(rng, (4,))
    check_dtype(lambda x, W, b: F.conv2d(x, W, b, padding=1, groups=2, activation="relu"), [x, W, b], dtype,
                device)


def test_conv2d_unknown_activation_is_an_error(device):
    x, W = mdl.tensor(np.zeros((1, 1, 5, 5)), device=device), mdl.tensor(np.zeros((1, 1, 3, 3)), device=device)
    with pytest.raises(ValueError, match="conv2d: activation must be None or one of 'relu', got 'tanh'"):
        F.conv2d(x, W, activation="tanh")
