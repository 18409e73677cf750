"""The winograd algorithm (plugins/minidl_conv/winograd.py): its transforms, its tile rule, every tile size
against im2col + GEMM in float64, float32 accuracy, gradient checks. (The conformance suite in
test_conv_algorithms.py checks it on the shared shapes like every algorithm.)"""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl.functions import ConvProblem
from minidl_conv import winograd

from ..functions._conv_reference import channels_last_copy, np_conv2d
from ..functions._opcheck import check_gradgrad, fixed_array
from ._conv_passes import conv_results, float32_errors


@pytest.fixture
def one_tile(monkeypatch):
    """A function forcing the tile size m for r x r kernels (plans are cached per problem: cleared around it)."""
    def force(r, m):
        monkeypatch.setitem(winograd.TILES, r, (m,))
        winograd.plan_for.cache_clear()

    yield force
    winograd.plan_for.cache_clear()


@pytest.mark.parametrize("m, r", [(2, 3), (3, 3), (4, 3), (5, 3), (2, 5), (3, 5), (4, 5), (3, 2)])
def test_winograd_transforms_compute_a_correlation(m, r, rng):
    # 1-D F(m, r): A^T [(G g) * (B^T d)] equals y_i = sum_k d[i + k] g[k], for any d and g
    at, g, bt = winograd.matrices(m, r)
    assert at.shape == (m, m + r - 1) and g.shape == (m + r - 1, r) and bt.shape == (m + r - 1, m + r - 1)
    np.testing.assert_array_equal(bt, np.round(bt))  # integer data transform (rounds least)
    d, k = rng.standard_normal(m + r - 1), rng.standard_normal(r)
    np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), np.correlate(d, k, "valid"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, m", [
    ((2, 192, 13, 13), (384, 192, 3, 3), {"padding": 1}, 5),  # AlexNet conv3-5
    ((2, 96, 27, 27), (256, 48, 5, 5), {"padding": 2, "groups": 2}, 4),  # the paper's conv2
    ((2, 64, 6, 6), (96, 64, 3, 3), {"padding": 1}, 3),  # alexnet-mini conv3
    ((2, 32, 27, 27), (32, 32, 3, 3), {"padding": 1}, 4),  # 5 ties with 4: the smaller tile
    ((2, 32, 3, 3), (32, 32, 3, 3), {"padding": 1}, 3),
    ((2, 32, 3, 3), (32, 32, 3, 3), {}, 0),  # a 1x1 output
    ((2, 16, 13, 13), (32, 16, 3, 3), {"padding": 1}, 0),  # too few input channels
    ((2, 32, 13, 13), (32, 16, 5, 5), {"padding": 2, "groups": 2}, 0),  # alexnet-mini conv2: 16 per group
    ((2, 32, 13, 13), (32, 32, 3, 3), {"stride": 2}, 0),
    ((2, 32, 13, 13), (32, 32, 3, 3), {"dilation": 2}, 0),
    ((2, 32, 13, 13), (32, 32, 7, 7), {}, 0),
    ((2, 32, 13, 13), (32, 32, 3, 5), {}, 0),
    ((2, 32, 13, 13), (32, 32, 3, 3), {"dtype": "float16"}, 0),
    ((2, 192, 13, 13), (384, 192, 3, 3), {"padding": 1, "device": "cuda:0"}, 0),  # never a GPU default
])
def test_winograd_default_rule(x_shape, w_shape, kwargs, m):
    # Winograd ranks under the default rule, with the tile of fewest multiplies, exactly where its docstring
    # says (whether it is then chosen depends on what else ranks: the paper's conv2 goes to fft)
    problem = ConvProblem.make(x_shape, w_shape, **kwargs)
    algorithm = winograd.Winograd()
    assert (algorithm.unsupported(problem) is None and algorithm.priority(problem) is not None) == bool(m)
    if m:
        assert winograd.winograd_tile(problem) == m


_SHAPES = [  # shape, out_channels, k, padding, groups
    ((2, 8, 9, 11), 8, 3, 1, 1),  # outputs 9x11: tiles overhang both edges
    ((1, 8, 7, 13), 12, 3, 0, 2),  # no padding, groups
    ((2, 4, 13, 13), 6, 3, 2, 1),
    ((2, 4, 13, 13), 4, 5, 2, 1),
    ((2, 8, 10, 9), 12, 5, 1, 2),
    ((1, 8, 11, 12), 8, 5, 0, 2),
    ((2, 4, 4, 5), 4, 3, 1, 1),  # a single tile row
]


@pytest.mark.parametrize("shape, out_channels, k, padding, groups, m", [
    case + (m,) for case in _SHAPES for m in winograd.TILES[case[2]]])  # every tile size of each kernel
@pytest.mark.parametrize("channels_last", [False, True])
def test_winograd_matches_im2col(shape, out_channels, k, padding, groups, m, channels_last, device, rng, one_tile):
    # float64 forward and all gradients of F(m x m, k x k) against im2col + GEMM
    one_tile(k, m)
    x = rng.standard_normal(shape)
    if channels_last:
        x = channels_last_copy(x)
    W = rng.standard_normal((out_channels, shape[1] // groups, k, k))
    b = rng.standard_normal(out_channels)
    oh, ow = shape[2] + 2 * padding - k + 1, shape[3] + 2 * padding - k + 1
    gy = rng.standard_normal((shape[0], out_channels, oh, ow))
    problem = ConvProblem.make(shape, W.shape, padding=padding, groups=groups, dtype="float64", device=device)
    assert winograd.plan_for(problem).m == m
    fast = conv_results(x, W, b, padding, groups, gy, device, "winograd")
    direct = conv_results(x, W, b, padding, groups, gy, device, "im2col_gemm")
    for name, a, e in zip(["y", "gx", "gW", "gb"], fast, direct):
        np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-11 * np.abs(e).max(), err_msg=name)
    np.testing.assert_allclose(direct[0], np_conv2d(x, W, b, padding=(padding, padding), groups=groups),
                               rtol=1e-10, atol=1e-10)


def test_winograd_refuses_what_it_cannot_compute():
    algorithm = winograd.Winograd()
    cases = {
        ((1, 4, 6, 7), (4, 4, 3, 3), 3, 1, "float64"): "padding 3x3",  # the input gradient could not be a convolution
        ((1, 4, 9, 9), (4, 4, 3, 3), 1, 2, "float64"): "stride 2x2",
        ((1, 4, 9, 9), (4, 4, 7, 7), 1, 1, "float64"): "7x7 kernels",
        ((1, 4, 9, 9), (4, 4, 3, 3), 1, 1, "float16"): "float16",
    }
    for (x_shape, w_shape, padding, stride, dtype), words in cases.items():
        reason = algorithm.unsupported(ConvProblem.make(x_shape, w_shape, stride, padding, dtype=dtype))
        assert reason is not None and words in reason, reason


@pytest.mark.parametrize("k, padding, groups, size", [(3, 1, 1, 13), (3, 1, 2, 6), (5, 2, 2, 27)])
def test_winograd_float32_accuracy(k, padding, groups, size, rng):
    # float32 Winograd (forward and gradients) within 5e-5 of float64, relative to the largest value
    errors = float32_errors("winograd", 64, k, padding, groups, size, rng)
    assert max(errors.values()) <= 5e-5, errors


@pytest.mark.parametrize("k", [3, 5])
def test_winograd_gradcheck(k, device, rng):
    # every element of x, W and b against central differences (float64)
    x, W, b = fixed_array(rng, (2, 4, 7, 6)), fixed_array(rng, (6, 2, k, k)), fixed_array(rng, (6,))
    fn = lambda x, W, b: F.conv2d(x, W, b, padding=k // 2, groups=2, algorithm="winograd")  # noqa: E731
    xs = [mdl.tensor(a, requires_grad=True, device=device) for a in (x, W, b)]
    assert fn(*xs).creator.algorithm.name == "winograd"
    assert mdl.testing.gradcheck(fn, xs)


def test_winograd_gradgradcheck(device, rng):
    # the input and weight gradients of a Winograd convolution are themselves differentiable
    x, W = fixed_array(rng, (1, 4, 5, 5)), fixed_array(rng, (4, 4, 3, 3))

    def fn(x, W):
        y = F.conv2d(x, W, padding=1, algorithm="winograd")
        return y * y

    check_gradgrad(fn, [x, W], device)
