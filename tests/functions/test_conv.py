"""Convolution and pooling (minidl/functions/conv.py): conv2d with stride, padding, dilation,
groups and bias; max, average and adaptive average pooling; im2col/col2im. Forward against
loop-and-einsum NumPy references (written without minidl's im2col) and PyTorch, gradients
against central differences and PyTorch, second derivatives, error messages."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minidl as mdl
import minidl.functions as F
from minidl.functions import conv, winograd
from minidl.functions.conv import Window, col2im, im2col, winograd_tile
from minidl.testing import strategies as mst

from ._opcheck import (  # noqa: F401 - reference is a fixture
    check_dtype, check_gradgrad, check_op, fixed_array, op_settings, reference, spread_apart,
)


# ------------------------------------------------------------ NumPy references
def out_size(size, k, s, p, d=1, ceil_mode=False):
    """PyTorch's pooling_output_shape: floor or ceil, the last window starting inside input + padding."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def np_conv2d(x, W, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Sum over kernel offsets of an einsum over each offset's strided window of the padded input."""
    (sy, sx), (ph, pw), (dy, dx) = stride, padding, dilation
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    oh, ow = out_size(h, kh, sy, ph, dy), out_size(w, kw, sx, pw, dx)
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    xg = xpad.reshape(n, groups, cg, h + 2 * ph, w + 2 * pw)  # (N, G, C/G, H', W')
    Wg = W.reshape(groups, o // groups, cg, kh, kw)  # (G, O/G, C/G, kh, kw)
    y = np.zeros((n, groups, o // groups, oh, ow))
    for i in range(kh):
        for j in range(kw):
            window = xg[..., i * dy:i * dy + sy * (oh - 1) + 1:sy, j * dx:j * dx + sx * (ow - 1) + 1:sx]
            y += np.einsum("ngcyx,goc->ngoyx", window, Wg[..., i, j])
    y = y.reshape(n, o, oh, ow)
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def _window_rows(start, k, d, size):
    """Indices start, start+d, ... (k of them) that fall inside [0, size): padding is skipped."""
    return [v for v in range(start, start + d * k, d) if 0 <= v < size][:k]


def np_max_pool2d(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    (kh, kw), (sy, sx), (ph, pw), (dy, dx) = kernel, stride, padding, dilation
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sy, ph, dy, ceil_mode), out_size(w, kw, sx, pw, dx, ceil_mode)
    y = np.empty((n, c, oh, ow))
    for r in range(oh):
        rows = _window_rows(r * sy - ph, kh, dy, h)
        for q in range(ow):
            cols = _window_rows(q * sx - pw, kw, dx, w)
            assert rows and cols, "a window lies entirely in the padding"
            y[:, :, r, q] = x[:, :, rows][:, :, :, cols].max(axis=(2, 3))
    return y


def np_avg_pool2d(x, kernel, stride, padding, ceil_mode=False, count_include_pad=True):
    """PyTorch's CPU kernel: the divisor counts padding (not what ceil_mode adds past it) or not."""
    (kh, kw), (sy, sx), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sy, ph, 1, ceil_mode), out_size(w, kw, sx, pw, 1, ceil_mode)
    y = np.empty((n, c, oh, ow))
    for r in range(oh):
        top = r * sy - ph
        bottom = min(top + kh, h + ph)
        span_h = bottom - top
        top, bottom = max(top, 0), min(bottom, h)
        for q in range(ow):
            left = q * sx - pw
            right = min(left + kw, w + pw)
            span_w = right - left
            left, right = max(left, 0), min(right, w)
            divisor = span_h * span_w if count_include_pad else (bottom - top) * (right - left)
            y[:, :, r, q] = x[:, :, top:bottom, left:right].sum(axis=(2, 3)) / divisor
    return y


def np_adaptive_avg_pool2d(x, output_size):
    oh, ow = output_size
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow))
    for r in range(oh):
        top, bottom = (r * h) // oh, -(-((r + 1) * h) // oh)
        for q in range(ow):
            left, right = (q * w) // ow, -(-((q + 1) * w) // ow)
            y[:, :, r, q] = x[:, :, top:bottom, left:right].mean(axis=(2, 3))
    return y


# ------------------------------------------------------------------ strategies
def _min_input(k, d, p):
    """The smallest input side with at least one output (never below 1)."""
    return max(1, d * (k - 1) + 1 - 2 * p)


@st.composite
def conv_cases(draw):
    """(x, W, b or None, stride, padding, dilation, groups) with a valid, small geometry."""
    groups = draw(st.sampled_from([1, 1, 2, 3]), label="groups")
    cg, og = draw(st.integers(1, 2), label="in/group"), draw(st.integers(1, 2), label="out/group")
    n = draw(st.integers(1, 2), label="N")
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(2))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(2))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(2))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(2))
    hw = tuple(draw(st.integers(lo, lo + 3)) for lo in map(_min_input, kernel, dilation, padding))
    x = draw(mst.arrays(shape=(n, groups * cg) + hw), label="x")
    W = draw(mst.arrays(shape=(groups * og, cg) + kernel), label="W")
    b = draw(st.none() | mst.arrays(shape=(groups * og,)), label="b")
    return x, W, b, stride, padding, dilation, groups


@st.composite
def pool_geometry(draw, dilated=False):
    """((H, W), kernel, stride, padding, dilation, ceil_mode): padding at most half the kernel (as PyTorch asks);
    one example in three is AlexNet's overlapping 3/2 window."""
    if draw(st.integers(0, 2)) == 0:
        kernel, stride = (3, 3), (2, 2)
    else:
        kernel = tuple(draw(st.integers(1, 3)) for _ in range(2))
        stride = tuple(draw(st.integers(1, 3)) for _ in range(2))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(2)) if dilated else (1, 1)
    hw = tuple(draw(st.integers(lo, lo + 4)) for lo in map(_min_input, kernel, dilation, padding))
    ceil_mode = draw(st.booleans(), label="ceil_mode")
    # a dilated window can skip over a small input and see only padding (-inf in PyTorch too): not drawn
    for size, k, s, p, d in zip(hw, kernel, stride, padding, dilation):
        assume(all(_window_rows(o * s - p, k, d, size) for o in range(out_size(size, k, s, p, d, ceil_mode))))
    return hw, kernel, stride, padding, dilation, ceil_mode


def _nc(draw):
    return draw(st.integers(1, 2), label="N"), draw(st.integers(1, 3), label="C")


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
    (3, 4, 1, 2), (32, 4, 1, 2), (32, 4, 2, 2), (64, 8, 2, 2),  # strided: fold along rows (< 16 channels) or channels
    (4, 8, 1, 1), (4, 12, 1, 1), (16, 48, 2, 1),  # stride 1: flipped convolution, or fold when O > 2 C per group
])
def test_conv2d_input_gradient_routes_like_torch(channels, out_channels, groups, stride, device, torch, rng):
    # the input gradient takes one of three routes depending on the geometry: all must agree with torch
    x = rng.standard_normal((2, channels, 9, 9))
    W = rng.standard_normal((out_channels, channels // groups, 3, 3))
    check_op(lambda x, W: F.conv2d(x, W, stride=stride, padding=1, groups=groups), [x, W], device, torch, None,
             lambda x, W: torch.nn.functional.conv2d(x, W, stride=stride, padding=1, groups=groups))


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


# ------------------------------------------------------- conv2d: Winograd path
def _direct_only(monkeypatch):
    """Every convolution through im2col + GEMM: the rule finds no kernel size with Winograd tiles."""
    monkeypatch.setattr(conv, "TILES", {})


def _conv_results(x, W, b, padding, groups, gy, device):
    """y, gx, gW, gb of conv2d (stride 1) and the plan the forward chose (None: im2col)."""
    xs = [mdl.tensor(a, requires_grad=True, device=device) for a in (x, W, b)]
    y = F.conv2d(*xs, padding=padding, groups=groups)
    plan = y.creator.plan  # (backward frees it)
    y.backward(mdl.tensor(gy, device=device))
    return [y.numpy()] + [t.grad.numpy() for t in xs], plan


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
])
def test_winograd_rule(x_shape, w_shape, kwargs, m):
    groups, dtype = kwargs.pop("groups", 1), kwargs.pop("dtype", "float32")
    win = Window.make(w_shape[2:], kwargs.get("stride", 1), kwargs.get("padding", 0), kwargs.get("dilation", 1))
    assert winograd_tile(x_shape, w_shape, win, groups, np.dtype(dtype)) == m


_WINOGRAD_SHAPES = [  # shape, out_channels, k, padding, groups
    ((2, 8, 9, 11), 8, 3, 1, 1),  # outputs 9x11: tiles overhang both edges
    ((1, 8, 7, 13), 12, 3, 0, 2),  # no padding, groups
    ((2, 4, 13, 13), 6, 3, 2, 1),
    ((1, 4, 6, 7), 4, 3, 3, 1),  # padding past the kernel: the input gradient cannot be a flipped convolution
    ((2, 4, 13, 13), 4, 5, 2, 1),
    ((2, 8, 10, 9), 12, 5, 1, 2),
    ((1, 8, 11, 12), 8, 5, 0, 2),
    ((2, 4, 4, 5), 4, 3, 1, 1),  # a single tile row
]


@pytest.mark.parametrize("shape, out_channels, k, padding, groups, m", [
    case + (m,) for case in _WINOGRAD_SHAPES for m in winograd.TILES[case[2]]])  # every tile size of each kernel
@pytest.mark.parametrize("channels_last", [False, True])
def test_winograd_matches_direct(shape, out_channels, k, padding, groups, m, channels_last, device, rng,
                                 monkeypatch):
    # float64 forward and all gradients of F(m x m, k x k) against the im2col path
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "TILES", {k: (m,)})
    x = rng.standard_normal(shape)
    if channels_last:
        x = _channels_last_copy(x)
    W = rng.standard_normal((out_channels, shape[1] // groups, k, k))
    b = rng.standard_normal(out_channels)
    oh, ow = shape[2] + 2 * padding - k + 1, shape[3] + 2 * padding - k + 1
    gy = rng.standard_normal((shape[0], out_channels, oh, ow))
    fast, plan = _conv_results(x, W, b, padding, groups, gy, device)
    assert plan is not None and plan.m == m
    _direct_only(monkeypatch)
    direct, plan = _conv_results(x, W, b, padding, groups, gy, device)
    assert plan is None
    for name, a, e in zip(["y", "gx", "gW", "gb"], fast, direct):
        np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-11 * np.abs(e).max(), err_msg=name)
    np.testing.assert_allclose(direct[0], np_conv2d(x, W, b, padding=(padding, padding), groups=groups),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k, padding, groups, size", [(3, 1, 1, 13), (3, 1, 2, 6), (5, 2, 2, 27)])
def test_winograd_float32_accuracy(k, padding, groups, size, rng):
    # float32 Winograd (forward and gradients) within 5e-5 of float64, relative to the largest value
    x = rng.standard_normal((2, 64, size, size))
    W = rng.standard_normal((64, 64 // groups, k, k)) * 0.05
    b = rng.standard_normal(64)
    gy = rng.standard_normal((2, 64, size, size))
    exact, _ = _conv_results(x, W, b, padding, groups, gy, "cpu")
    single, plan = _conv_results(*(a.astype(np.float32) for a in (x, W, b)), padding, groups,
                                 gy.astype(np.float32), "cpu")
    assert plan is not None
    for name, a, e in zip(["y", "gx", "gW", "gb"], single, exact):
        assert a.dtype == np.float32
        assert np.abs(a - e).max() <= 5e-5 * np.abs(e).max(), name


@pytest.mark.parametrize("k", [3, 5])
def test_winograd_gradcheck(k, device, rng, monkeypatch):
    # every element of x, W and b against central differences (float64), few channels forced onto Winograd
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
    x = fixed_array(rng, (2, 4, 7, 6))
    W = fixed_array(rng, (6, 2, k, k))
    b = fixed_array(rng, (6,))
    fn = lambda x, W, b: F.conv2d(x, W, b, padding=k // 2, groups=2)  # noqa: E731
    xs = [mdl.tensor(a, requires_grad=True, device=device) for a in (x, W, b)]
    assert fn(*xs).creator.plan is not None
    assert mdl.testing.gradcheck(fn, xs)


def test_winograd_gradgradcheck(device, rng, monkeypatch):
    # the input and weight gradients of a Winograd convolution are themselves differentiable
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
    x, W = fixed_array(rng, (1, 4, 5, 5)), fixed_array(rng, (4, 4, 3, 3))

    def fn(x, W):
        y = F.conv2d(x, W, padding=1)
        return y * y

    y = fn(mdl.tensor(x, requires_grad=True), mdl.tensor(W, requires_grad=True))
    assert y.creator.inputs[0].creator.plan is not None
    check_gradgrad(fn, [x, W], device)


# conv2d errors: ValueError that names the shapes involved
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
    with pytest.raises(ValueError) as info:
        F.conv2d(x, W, b, **kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"


@pytest.mark.parametrize("kwargs", [{"stride": 0}, {"padding": -1}, {"dilation": 0}, {"stride": (1, 2, 3)},
                                    {"padding": 1.5}])
def test_conv2d_bad_geometry_raises(kwargs, device):
    x, W = mdl.tensor(np.zeros((1, 1, 5, 5)), device=device), mdl.tensor(np.zeros((1, 1, 3, 3)), device=device)
    with pytest.raises(ValueError):
        F.conv2d(x, W, **kwargs)


# ------------------------------------------------------------------ max_pool2d
@op_settings()
@given(data=st.data())
def test_max_pool2d(device, reference, data):
    (h, w), kernel, stride, padding, dilation, ceil_mode = data.draw(pool_geometry(dilated=True), label="geometry")
    x = spread_apart(data.draw(mst.arrays(shape=_nc(data.draw) + (h, w)), label="x"))  # no ties
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
    x = data.draw(mst.arrays(shape=_nc(data.draw) + (h, w)), label="x")
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
    x = data.draw(mst.arrays(shape=_nc(data.draw) + (h, w)), label="x")
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


# ------------------------------------------------------------------ im2col / col2im
@st.composite
def im2col_cases(draw):
    (h, w), kernel, stride, padding, dilation, ceil_mode = draw(pool_geometry(dilated=True))
    win = Window(*kernel, *stride, *padding, *dilation)
    oh, ow = win.output_hw(h, w, ceil_mode)
    x = draw(mst.arrays(shape=_nc(draw) + (h, w)))
    return x, win, oh, ow


def _np_windows(x, win, oh, ow, pad_value):
    """(N, C, oh, ow, kh, kw) by explicit indexing; positions outside x hold pad_value."""
    n, c, h, w = x.shape
    out = np.full((n, c, oh, ow, win.kh, win.kw), pad_value)
    for r in range(oh):
        for q in range(ow):
            for i in range(win.kh):
                for j in range(win.kw):
                    y, z = r * win.sy - win.ph + i * win.dy, q * win.sx - win.pw + j * win.dx
                    if 0 <= y < h and 0 <= z < w:
                        out[:, :, r, q, i, j] = x[:, :, y, z]
    return out


@op_settings()
@given(case=im2col_cases(), pad_value=st.sampled_from([0.0, -np.inf]))
def test_im2col_layouts_match_explicit_windows(case, pad_value):
    x, win, oh, ow = case
    expected = _np_windows(x, win, oh, ow, pad_value)
    np.testing.assert_array_equal(im2col(x, win, oh, ow, layout="nck", pad_value=pad_value), expected)
    np.testing.assert_array_equal(im2col(x, win, oh, ow, layout="ckn", pad_value=pad_value),
                                  expected.transpose(1, 4, 5, 0, 2, 3))


@op_settings()
@given(case=im2col_cases(), layout=st.sampled_from(["ckn", "nck"]), data=st.data())
def test_col2im_is_the_adjoint_of_im2col(case, layout, data):
    # <im2col(x), c> == <x, col2im(c)> for every x and c
    x, win, oh, ow = case
    col = im2col(x, win, oh, ow, layout=layout)
    c = data.draw(mst.arrays(shape=col.shape), label="c")
    folded = col2im(c, win, x.shape, layout=layout)
    assert folded.shape == x.shape
    np.testing.assert_allclose(np.vdot(col, c), np.vdot(x, folded), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------ storage order
def _channels_last_copy(a):
    """The same (N, C, H, W) values stored (N, H, W, C)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name", ["conv", "conv_groups", "conv_stride", "max_pool", "max_pool_padded", "lrn"])
def test_channels_last_storage_gives_the_same_values(name, device, rng):
    # convolutions return channels-last storage and the next ops keep it: values and gradients
    # must not depend on the storage order of the input or of the incoming gradient
    W = rng.standard_normal((6, 4, 3, 3))
    ops = {
        "conv": lambda x: F.conv2d(x, mdl.tensor(W, device=device), padding=1),
        "conv_groups": lambda x: F.conv2d(x, mdl.tensor(W[:, :2], device=device), padding=1, groups=2),
        "conv_stride": lambda x: F.conv2d(x, mdl.tensor(W, device=device), stride=2, padding=1),
        "max_pool": lambda x: F.max_pool2d(x, 3, 2),
        "max_pool_padded": lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True),
        "lrn": lambda x: F.local_response_norm(x, 3),
    }
    x = spread_apart(rng.standard_normal((2, 4, 9, 9)))
    results = []
    for store in (np.ascontiguousarray, _channels_last_copy):
        xt = mdl.tensor(store(x), device=device, requires_grad=True)
        y = ops[name](xt)
        gy = store(rng.standard_normal(y.shape)) if not results else results[0][2]
        (gx,) = mdl.grad([y], [xt], [mdl.tensor(store(gy), device=device)])
        results.append((y.numpy(), gx.numpy(), gy))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-12, atol=1e-12)
