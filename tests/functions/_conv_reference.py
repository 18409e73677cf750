"""NumPy references for convolution and pooling (written without minidl's im2col), and hypothesis strategies
for their geometry; shared by the conv, pooling and im2col tests and the conv-algorithm conformance suite."""
from __future__ import annotations

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from minidl.testing import strategies as mst


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


def window_rows(start, k, d, size):
    """Indices start, start+d, ... (k of them) that fall inside [0, size): padding is skipped."""
    return [v for v in range(start, start + d * k, d) if 0 <= v < size][:k]


def np_max_pool2d(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    (kh, kw), (sy, sx), (ph, pw), (dy, dx) = kernel, stride, padding, dilation
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sy, ph, dy, ceil_mode), out_size(w, kw, sx, pw, dx, ceil_mode)
    y = np.empty((n, c, oh, ow))
    for r in range(oh):
        rows = window_rows(r * sy - ph, kh, dy, h)
        for q in range(ow):
            cols = window_rows(q * sx - pw, kw, dx, w)
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
def min_input(k, d, p):
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
    hw = tuple(draw(st.integers(lo, lo + 3)) for lo in map(min_input, kernel, dilation, padding))
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
    hw = tuple(draw(st.integers(lo, lo + 4)) for lo in map(min_input, kernel, dilation, padding))
    ceil_mode = draw(st.booleans(), label="ceil_mode")
    # a dilated window can skip over a small input and see only padding (-inf in PyTorch too): not drawn
    for size, k, s, p, d in zip(hw, kernel, stride, padding, dilation):
        assume(all(window_rows(o * s - p, k, d, size) for o in range(out_size(size, k, s, p, d, ceil_mode))))
    return hw, kernel, stride, padding, dilation, ceil_mode


def nc(draw):
    return draw(st.integers(1, 2), label="N"), draw(st.integers(1, 3), label="C")


def channels_last_copy(a):
    """The same (N, C, H, W) values stored (N, H, W, C)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
