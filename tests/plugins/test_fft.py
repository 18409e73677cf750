"""The fft algorithm (plugins/minidl_conv/fft.py): its per-axis DFT matrices, its default rule, every pass
against im2col + GEMM in float64 over periods, paddings and storage orders, float32 accuracy. (Gradient checks
against PyTorch: test_conv2d_algorithms_like_torch in tests/functions/test_conv.py.)
(The conformance suite in test_conv_algorithms.py checks it on the shared shapes like every algorithm.)"""
from __future__ import annotations

import numpy as np
import pytest

from minidl.functions import ConvProblem
from minidl.functions.conv_algorithm import select
from minidl_conv import fft

from ..functions._conv_reference import channels_last_copy, np_conv2d
from ._conv_passes import conv_results, float32_errors


@pytest.mark.parametrize("size, kernel, pad", [(13, 5, 2), (6, 3, 1), (8, 3, 0), (7, 5, 0), (5, 3, 4), (1, 5, 2),
                                               (4, 1, 0)])
@pytest.mark.parametrize("half", [False, True])
def test_axis_matrices_compute_a_padded_correlation(size, kernel, pad, half, rng):
    # 1-D: Re(inverse @ ((data @ x) * (kernel @ k))) is y_i = sum_t x_pad[i + t] k[t] exactly, for any x and k:
    # the period size + pad wraps only onto zero padding (odd and even periods, padding past the kernel, and
    # a kernel longer than the period)
    data, kern, inverse = fft.axis_matrices(size, kernel, pad, half)
    period = size + pad
    assert data.shape == (period // 2 + 1 if half else period, size)
    x, k = rng.standard_normal(size), rng.standard_normal(kernel)
    expected = np.correlate(np.pad(x, pad), k, "valid")
    got = inverse @ ((data @ x) * (kern @ k))
    np.testing.assert_allclose(got.real, expected, rtol=1e-12, atol=1e-12)
    if not half:
        np.testing.assert_allclose(got.imag, 0, atol=1e-12)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, chosen", [
    ((128, 32, 13, 13), (64, 16, 5, 5), {"padding": 2, "groups": 2}, True),  # alexnet-mini conv2
    ((128, 96, 27, 27), (256, 48, 5, 5), {"padding": 2, "groups": 2}, True),  # the paper's conv2
    ((2, 8, 32, 32), (8, 8, 7, 7), {"padding": 3}, True),
    ((2, 8, 33, 33), (8, 8, 5, 5), {"padding": 2}, False),  # an image past 32
    ((128, 64, 6, 6), (96, 64, 3, 3), {"padding": 1}, True),  # alexnet-mini conv3 (conv4, conv5: 48 per group)
    ((2, 8, 13, 13), (8, 8, 3, 3), {"padding": 1}, True),
    ((32, 256, 13, 13), (384, 256, 3, 3), {"padding": 1}, False),  # the paper's conv3: Winograd's
    ((2, 96, 13, 13), (128, 96, 3, 3), {"padding": 1}, False),  # 128 output channels
    ((2, 8, 13, 13), (8, 8, 1, 1), {}, False),  # 1x1: a plain GEMM
    ((2, 8, 13, 13), (8, 8, 2, 2), {}, False),
    ((2, 4, 13, 13), (8, 4, 5, 5), {"padding": 2}, False),  # 4 input channels
    ((128, 1, 28, 28), (32, 1, 5, 5), {"padding": 2}, False),  # alexnet-mini conv1
    ((2, 8, 13, 13), (8, 8, 5, 5), {"stride": 2}, False),
    ((2, 8, 13, 13), (8, 8, 5, 5), {"dilation": 2}, False),
    ((2, 8, 13, 13), (8, 8, 5, 5), {"dtype": "float16"}, False),
    ((128, 32, 13, 13), (64, 16, 5, 5), {"padding": 2, "groups": 2, "device": "cuda:0"}, False),  # not on a GPU
])
def test_fft_default_rule(x_shape, w_shape, kwargs, chosen):
    # the default rule picks fft exactly where its docstring says
    assert (select(ConvProblem.make(x_shape, w_shape, **kwargs)).name == "fft") == chosen


def test_fft_refuses_what_it_cannot_compute():
    algorithm = fft.FFT()
    cases = {
        ((1, 4, 9, 9), (4, 4, 3, 3), 2, 1, 1, "float64"): "stride 2x2",
        ((1, 4, 9, 9), (4, 4, 3, 3), 1, 2, 2, "float64"): "dilation 2x2",
        ((1, 4, 9, 9), (4, 4, 3, 3), 1, 1, 1, "float16"): "float16",
    }
    for (x_shape, w_shape, stride, dilation, padding, dtype), words in cases.items():
        reason = algorithm.unsupported(ConvProblem.make(x_shape, w_shape, stride, padding, dilation, dtype=dtype))
        assert reason is not None and words in reason, reason


@pytest.mark.parametrize("shape, out_channels, k, padding, groups", [
    ((2, 8, 13, 13), 8, 5, 2, 2),  # period 15: odd
    ((2, 4, 9, 11), 6, 3, 1, 1),  # periods 10 and 12: even, a Nyquist frequency on the width
    ((1, 6, 7, 8), 6, (5, 3), (0, 2), 3),  # no padding on the height, unequal kernel sides
    ((2, 4, 5, 5), 4, 3, 3, 1),  # padding past the kernel: outputs larger than the input
    ((2, 2, 6, 6), 4, 1, 0, 2),  # 1x1
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fft_matches_im2col(shape, out_channels, k, padding, groups, channels_last, device, rng):
    # float64 forward and all gradients against im2col + GEMM and a NumPy reference
    kh, kw = (k, k) if isinstance(k, int) else k
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    x = rng.standard_normal(shape)
    if channels_last:
        x = channels_last_copy(x)
    W = rng.standard_normal((out_channels, shape[1] // groups, kh, kw))
    b = rng.standard_normal(out_channels)
    gy = rng.standard_normal((shape[0], out_channels, shape[2] + 2 * ph - kh + 1, shape[3] + 2 * pw - kw + 1))
    fast = conv_results(x, W, b, (ph, pw), groups, gy, device, "fft")
    direct = conv_results(x, W, b, (ph, pw), groups, gy, device, "im2col_gemm")
    for name, a, e in zip(["y", "gx", "gW", "gb"], fast, direct):
        np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-11 * np.abs(e).max(), err_msg=name)
    np.testing.assert_allclose(fast[0], np_conv2d(x, W, b, padding=(ph, pw), groups=groups), rtol=1e-10,
                               atol=1e-10)


@pytest.mark.parametrize("k, padding, groups, size", [(5, 2, 2, 13), (5, 2, 2, 27), (3, 1, 1, 6)])
def test_fft_float32_accuracy(k, padding, groups, size, rng):
    # float32 (forward and gradients) within 5e-6 of float64, relative to the largest value
    errors = float32_errors("fft", 32, k, padding, groups, size, rng)
    assert max(errors.values()) <= 5e-6, errors


def test_fft_keeps_the_input_spectra_for_the_weight_gradient(rng):
    # forward hands on X = Fx(x) (Fh, Fw, G, N, C/G); the weight gradient from it equals one that recomputes it
    problem = ConvProblem.make((3, 4, 9, 9), (6, 2, 5, 5), padding=2, groups=2, dtype="float64")
    x, W = rng.standard_normal(problem.x_shape), rng.standard_normal(problem.w_shape)
    gy = rng.standard_normal(problem.y_shape)
    algorithm = fft.FFT()
    y, saved = algorithm.forward(x, W, problem)
    assert saved.shape == (11, 6, 2, 3, 2) and saved.dtype == np.complex128
    assert algorithm.workspace_bytes(problem) == 11 * 6 * 3 * (4 + 6) * 2 * 8
    np.testing.assert_array_equal(algorithm.grad_weight(x, gy, problem, saved), algorithm.grad_weight(x, gy, problem))


def test_fft_weight_gradient_reuses_the_output_gradients_spectra_only_for_the_same_array(rng, monkeypatch):
    # grad_input then grad_weight with the same gy transforms gy once; another gy (even of equal shape and
    # values changed) is transformed afresh, so the result is always that of the gy passed
    problem = ConvProblem.make((2, 4, 9, 9), (6, 2, 5, 5), padding=2, groups=2, dtype="float64")
    x, W = rng.standard_normal(problem.x_shape), rng.standard_normal(problem.w_shape)
    gy, other = rng.standard_normal(problem.y_shape), rng.standard_normal(problem.y_shape)
    algorithm = fft.FFT()
    expected = {id(a): algorithm.grad_weight(x, a, problem) for a in (gy, other)}
    plan = fft.plan_for(problem)
    transforms = []
    original = fft.FFTPlan.images

    def counting(self, a, matrices):
        transforms.append(matrices is plan.gy_in)
        return original(self, a, matrices)

    monkeypatch.setattr(fft.FFTPlan, "images", counting)
    algorithm.grad_input(gy, W, problem)
    np.testing.assert_array_equal(algorithm.grad_weight(x, gy, problem), expected[id(gy)])
    assert transforms.count(True) == 1  # gy: once, in grad_input
    algorithm.grad_input(gy, W, problem)
    np.testing.assert_array_equal(algorithm.grad_weight(x, other, problem), expected[id(other)])
    assert transforms.count(True) == 3  # another array: transformed again
    np.testing.assert_array_equal(algorithm.grad_weight(x, gy, problem), expected[id(gy)])
    assert transforms.count(True) == 4  # the kept spectra were used once and let go
