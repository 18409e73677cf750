"""Every pass of one stride-1 convolution through minidl's autograd, by a named algorithm (shared by the
winograd and fft tests)."""
from __future__ import annotations

import numpy as np

import minidl as mdl
import minidl.functions as F


def conv_results(x, W, b, padding, groups, gy, device, algorithm):
    """[y, gx, gW, gb] as NumPy arrays of conv2d(x, W, b) computed by ``algorithm``, gy its output gradient."""
    xs = [mdl.tensor(a, requires_grad=True, device=device) for a in (x, W, b)]
    y = F.conv2d(*xs, padding=padding, groups=groups, algorithm=algorithm)
    assert y.creator.algorithm.name == algorithm
    y.backward(mdl.tensor(gy, device=device))
    return [y.numpy()] + [t.grad.numpy() for t in xs]


def float32_errors(algorithm, channels, k, padding, groups, size, rng) -> dict:
    """Each pass of ``algorithm`` in float32 against im2col + GEMM in float64 on random data (2 images of
    ``channels`` x size x size, as many output channels): {pass: max |error| / max |value|}."""
    x = rng.standard_normal((2, channels, size, size))
    W = rng.standard_normal((channels, channels // groups, k, k)) * 0.05
    b = rng.standard_normal(channels)
    gy = rng.standard_normal((2, channels, size + 2 * padding - k + 1, size + 2 * padding - k + 1))
    exact = conv_results(x, W, b, padding, groups, gy, "cpu", "im2col_gemm")
    single = conv_results(*(a.astype(np.float32) for a in (x, W, b)), padding, groups, gy.astype(np.float32),
                          "cpu", algorithm)
    assert all(a.dtype == np.float32 for a in single)
    return {name: np.abs(a - e).max() / np.abs(e).max() for name, a, e in zip(["y", "gx", "gW", "gb"], single, exact)}
