"""Max, average and adaptive average pooling (minidl/functions/pooling.py) against NumPy loop references
and PyTorch, gradients, second derivatives, dtypes, errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidl as mdl
import minidl.functions as F
from minidl.testing import strategies as mst

from ._conv_reference import (
    channels_last_copy, nc, np_adaptive_avg_pool2d, np_avg_pool2d, np_max_pool2d, pool_geometry,
)
from ._opcheck import (  # noqa: F401 - reference is a fixture
    check_dtype, check_gradgrad, check_op, fixed_array, op_settings, reference, spread_apart,
)


# ------------------------------------------------------------------ max_pool2d
@op_settings()
@given(data=st.data())
def test_max_pool2d(device, reference, data):
    (h, w), kernel, stride, padding, dilation, ceil_mode = data.draw(pool_geometry(dilated=True), label="geometry")
    x = spread_apart(data.draw(mst.arrays(shape=nc(data.draw) + (h, w)), label="x"))  # no ties
    check_op(
        lambda x: F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode), [x], device, reference,
        lambda x: np_max_pool2d(x, kernel, stride, padding, dilation, ceil_mode),
        lambda t: reference.nn.functional.max_pool2d(t, kernel, stride, padding, dilation, ceil_mode),
    )


@pytest.mark.parametrize("size, ceil_mode, out", [(13, False, 6), (27, False, 13), (14, False, 6), (14, True, 7)])
def test_max_pool2d_alexnet_overlapping_like_torch(size, ceil_mode, out, device, torch, rng):
    x = spread_apart(rng.standard_normal((2, 3, size, size)))
    (y,), (gx,) = check_op(lambda x: F.max_pool2d(x, 3, 2, ceil_mode=ceil_mode), [x], device, torch, None,
                           lambda t: torch.nn.functional.max_pool2d(t, 3, 2, ceil_mode=ceil_mode))
    assert y.shape == (2, 3, out, out)
    # overlapping windows: an element winning two windows collects both gradients
    assert (gx.numpy() != 0).sum() <= y.size


def test_max_pool2d_stride_defaults_to_kernel(device, rng):
    x = mdl.tensor(spread_apart(rng.standard_normal((1, 2, 6, 6))), device=device)
    np.testing.assert_array_equal(F.max_pool2d(x, 2).numpy(), F.max_pool2d(x, 2, 2).numpy())
    assert F.max_pool2d(x, 2).shape == (1, 2, 3, 3)


def test_max_pool2d_padding_is_minus_infinity(device):
    # all-negative input: a zero-padded max would return 0 at the borders
    x = -1.0 - np.arange(16.0).reshape(1, 1, 4, 4)
    y = F.max_pool2d(mdl.tensor(x, device=device), 3, 1, padding=1).numpy()
    np.testing.assert_array_equal(y, np_max_pool2d(x, (3, 3), (1, 1), (1, 1)))
    assert (y < 0).all()


@pytest.mark.parametrize("kwargs", [{"kernel_size": 3, "padding": 2}, {"kernel_size": 2, "padding": (0, 2)},
                                    {"kernel_size": 0}, {"kernel_size": 2, "stride": 0}])
def test_max_pool2d_bad_geometry_raises(kwargs, device):
    with pytest.raises(ValueError):
        F.max_pool2d(mdl.tensor(np.zeros((1, 1, 6, 6)), device=device), **kwargs)


def test_pool_input_too_small_raises(device):
    x = mdl.tensor(np.zeros((1, 1, 2, 2)), device=device)
    for pool in (F.max_pool2d, F.avg_pool2d):
        with pytest.raises(ValueError, match="2x2"):
            pool(x, 3, 2)


# ------------------------------------------------------------------ avg_pool2d
@op_settings()
@given(data=st.data())
def test_avg_pool2d(device, reference, data):
    (h, w), kernel, stride, padding, _, ceil_mode = data.draw(pool_geometry(), label="geometry")
    count_include_pad = data.draw(st.booleans(), label="count_include_pad")
    x = data.draw(mst.arrays(shape=nc(data.draw) + (h, w)), label="x")
    check_op(
        lambda x: F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad), [x], device, reference,
        lambda x: np_avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad),
        lambda t: reference.nn.functional.avg_pool2d(t, kernel, stride, padding, ceil_mode, count_include_pad),
    )


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avg_pool2d_divisors_like_torch(count_include_pad, ceil_mode, device, torch):
    # ones in: every output is (elements covered) / divisor, so the divisor rule shows directly
    x = np.ones((1, 1, 5, 6))
    (y,), _ = check_op(lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode, count_include_pad), [x], device, torch,
                       None, lambda t: torch.nn.functional.avg_pool2d(t, 3, 2, 1, ceil_mode, count_include_pad))
    if not count_include_pad:
        np.testing.assert_allclose(y.numpy(), 1.0, rtol=1e-15)
    else:
        assert y.numpy()[0, 0, 0, 0] == pytest.approx(4 / 9)  # corner: 2x2 of the 3x3 window is input


# ------------------------------------------------------------------ adaptive_avg_pool2d
@op_settings()
@given(data=st.data())
def test_adaptive_avg_pool2d(device, reference, data):
    h, w = data.draw(st.integers(1, 7), label="H"), data.draw(st.integers(1, 7), label="W")
    # divisors of the input, non-divisors, and sizes above the input (bins then repeat elements)
    output_size = tuple(data.draw(st.integers(1, side + 2), label="out") for side in (h, w))
    x = data.draw(mst.arrays(shape=nc(data.draw) + (h, w)), label="x")
    arg = output_size[0] if output_size[0] == output_size[1] and data.draw(st.booleans()) else output_size
    check_op(
        lambda x: F.adaptive_avg_pool2d(x, arg), [x], device, reference,
        lambda x: np_adaptive_avg_pool2d(x, output_size),
        lambda t: reference.nn.functional.adaptive_avg_pool2d(t, arg),
    )


@pytest.mark.parametrize("in_hw, out_hw", [((12, 12), (6, 6)), ((13, 13), (6, 6)), ((5, 7), (3, 2)), ((4, 4), (4, 4))])
def test_adaptive_avg_pool2d_fixed_like_torch(in_hw, out_hw, device, torch, rng):
    # torchvision AlexNet's 6x6 from a divisible and an indivisible map, and the identity case
    x = rng.standard_normal((2, 3) + in_hw)
    (y,), _ = check_op(lambda x: F.adaptive_avg_pool2d(x, out_hw), [x], device, torch, None,
                       lambda t: torch.nn.functional.adaptive_avg_pool2d(t, out_hw))
    assert y.shape == (2, 3) + out_hw


# ------------------------------------------------------------------ pooling: second derivatives, dtypes
POOLS = {
    "max_overlapping": lambda x: F.max_pool2d(x, 3, 2),
    "max_padded_ceil": lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True),
    "max_dilated": lambda x: F.max_pool2d(x, 2, 1, dilation=2),
    "avg": lambda x: F.avg_pool2d(x, 3, 2, padding=1),
    "avg_ceil_no_pad_count": lambda x: F.avg_pool2d(x, 2, 2, padding=1, ceil_mode=True, count_include_pad=False),
    "adaptive": lambda x: F.adaptive_avg_pool2d(x, (2, 3)),
}


@pytest.mark.parametrize("name", POOLS)
def test_pool_gradgradcheck(name, device, rng):
    pool = POOLS[name]
    x = spread_apart(fixed_array(rng, (1, 2, 5, 6)), gap=1e-2)
    # pools are (piecewise) linear: square the output so the second derivative is not identically 0
    check_gradgrad(lambda x: pool(x) * pool(x), [x], device)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", POOLS)
def test_pool_dtype_kept(name, dtype, device, rng):
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    check_dtype(POOLS[name], [fixed_array(rng, (2, 2, 5, 6))], dtype, device)




@pytest.mark.parametrize("kwargs", [{"kernel_size": 3, "stride": 2}, {"kernel_size": 3, "stride": 2, "padding": 1,
                                                                      "ceil_mode": True},
                                    {"kernel_size": (2, 3), "stride": (1, 2), "dilation": (2, 1)}])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_max_pool_cuda_kernels_match_the_numpy_path(kwargs, channels_last, dtype, cuda, rng):
    # the same values, the same winners (flat indices into the padded input; a GPU keeps each window's tap, in one
    # byte) and the same gradient
    x = spread_apart(rng.standard_normal((2, 5, 13, 11))).astype(dtype)
    if channels_last:
        x = channels_last_copy(x)
    results = []
    for device in ("cpu", cuda):
        t = mdl.tensor(x, device=device, requires_grad=True)
        y = F.max_pool2d(t, **kwargs)
        source = mdl.tensor(y.creator.sources()).numpy()
        gy = np.linspace(-1, 1, y.size, dtype=dtype).reshape(y.shape)
        y.backward(mdl.tensor(gy, device=device))
        results.append((y.numpy(), source, t.grad.numpy()))
    (y0, s0, g0), (y1, s1, g1) = results
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(s1, s0)
    np.testing.assert_allclose(g1.astype(np.float64), g0.astype(np.float64), rtol=2e-3, atol=2e-3)
    # what a GPU keeps for backward: one byte per output
    y = F.max_pool2d(mdl.tensor(x, device=cuda, requires_grad=True), **kwargs)
    assert y.creator.winner.dtype == np.uint8 and y.creator.source is None
