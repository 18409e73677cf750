"""Pooling over (N, C, H, W): max (AlexNet's overlapping 3/2 windows), average, adaptive average.

Max pooling keeps its input's storage order (channels-last after a
convolution, see :mod:`.window`) and works a few images at a time so that its
passes find their block in cache; on a GPU it is one kernel each way (the
backward gathers, so no atomics), beside the NumPy code it must match.
Average pooling is a window sum over
:func:`~.im2col.im2col` columns; adaptive average pooling is two matmuls.
"""
from __future__ import annotations

import numpy

from ..backend import elementwise_kernel, get_array_module, scatter_add
from ..cpu import host_blocks
from ..function import Function
from ..tensor import Tensor, _wrap
from .im2col import col2im, im2col
from .linalg import matmul
from .window import Window, as_pair, crop_hw, empty_nchw, from_storage, is_channels_last, pad_hw, storage_view

__all__ = ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]


def _flat(a, channels_last: bool):
    """The elements of an (N, C, H, W) array in storage order, flat (a view when stored so)."""
    return storage_view(a, channels_last).reshape(-1)


def _window_sources(win: Window, padded_shape, channels_last: bool, winner, first_image: int = 0):
    """Flat storage index, into the padded input, of the element that won each window (winner: its tap k).

    Returned flat, in the storage order of the output; winner may be a block of images from ``first_image`` on.
    """
    xp = get_array_module(winner)
    _, c, hp, wp = padded_shape
    n = winner.shape[0]
    sn, sc, sh, sw = (hp * wp * c, 1, wp * c, c) if channels_last else (c * hp * wp, hp * wp, wp, 1)
    oh, ow = winner.shape[2:]
    offsets = xp.asarray([i * win.dy * sh + j * win.dx * sw for i in range(win.kh) for j in range(win.kw)],
                         dtype=numpy.int64)
    rows = xp.arange(oh, dtype=numpy.int64)[:, None] * (win.sy * sh)  # (oh, 1)
    cols = xp.arange(ow, dtype=numpy.int64) * (win.sx * sw)  # (ow,)
    channels = xp.arange(c, dtype=numpy.int64) * sc  # (C,)
    if channels_last:
        origin = (rows[:, :, None] + cols[:, None] + channels)  # window origins, (oh, ow, C)
    else:
        origin = channels[:, None, None] + rows + cols  # (C, oh, ow)
    source = offsets[_flat(winner, channels_last)].reshape((n,) + origin.shape)
    source += xp.arange(first_image, first_image + n, dtype=numpy.int64)[:, None, None, None] * sn
    source += origin
    return source.reshape(-1)


# CUDA: one thread per output (forward) or input element (backward), no atomics. Windows are read from
# the unpadded input; the forward keeps the winning tap a * KW + b of each window (one byte), where the NumPy
# path keeps a flat index into the padded input (MaxPool2d.sources() gives that index on either device).
_WINDOW_PARAMS = ("int32 N, int32 C, int32 H, int32 W, int32 OH, int32 OW, int32 KH, int32 KW, int32 SY, int32 SX, "
                  "int32 PH, int32 PW, int32 DY, int32 DX, int32 HP, int32 WP, bool CL")
_MAX_POOL_FORWARD = """
    int ox = i % OW, t = i / OW, oy = t % OH; t /= OH;
    int c = t % C, n = t / C;
    double best = 0.0;
    int k = -1;
    for (int a = 0; a < KH; ++a) {
        int yp = oy * SY + a * DY, yy = yp - PH;
        for (int b = 0; b < KW; ++b) {
            int xp = ox * SX + b * DX, xx = xp - PW;
            double v = __longlong_as_double(0xfff0000000000000ULL);  // padding: -inf
            if (yy >= 0 && yy < H && xx >= 0 && xx < W) {
                ptrdiff_t at[] = {n, c, yy, xx};
                v = (double)x[at];
            }
            if (k < 0 || v > best || (v != v && best == best)) {  // the first maximum wins (NaN: the first NaN)
                best = v;
                k = a * KW + b;
            }
        }
    }
    y = (T)best;
    tap = (S)k;
"""
_MAX_POOL_BACKWARD = """
    int xx = i % W, t = i / W, yy = t % H; t /= H;
    int c = t % C, n = t / C;
    int yp = yy + PH, xp = xx + PW;
    double total = 0.0;
    for (int a = 0; a < KH; ++a) {
        int r = yp - a * DY;
        if (r < 0 || r % SY) continue;
        int oy = r / SY;
        if (oy >= OH) continue;
        for (int b = 0; b < KW; ++b) {
            int q = xp - b * DX;
            if (q < 0 || q % SX) continue;
            int ox = q / SX;
            if (ox >= OW) continue;
            ptrdiff_t at[] = {n, c, oy, ox};
            if ((int)tap[at] == a * KW + b) total += (double)gy[at];  // this element won that window
        }
    }
    gx = (T)total;
"""


def _tap_dtype(win: Window):
    """The smallest integer type that numbers a window's taps."""
    return numpy.uint8 if win.kh * win.kw <= 255 else numpy.int32


def _max_pool_cuda(x, win: Window, out_hw, padded_hw, channels_last: bool):
    """(y, winner) of max pooling on a GPU, both in x's storage order: winner is the tap (a * kw + b) of each
    window's first maximum, one byte for windows up to 255 taps (a flat index would take eight)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    y = empty_nchw(xp, (n, c) + tuple(out_hw), x.dtype, channels_last)
    winner = empty_nchw(xp, y.shape, _tap_dtype(win), channels_last)
    kernel = elementwise_kernel("raw T x, " + _WINDOW_PARAMS, "T y, S tap", _MAX_POOL_FORWARD,
                                "minidl_max_pool_forward")
    kernel(x, *_window_args(x.shape, win, out_hw, padded_hw, channels_last), y, winner)
    return y, winner


def _max_pool_grad_cuda(gy, winner, win: Window, x_shape, padded_hw, channels_last: bool):
    """The input gradient of max pooling on a GPU, gathered per input element from the winning taps (no atomics)."""
    xp = get_array_module(gy)
    gx = empty_nchw(xp, x_shape, gy.dtype, channels_last)
    kernel = elementwise_kernel("raw T gy, raw S tap, " + _WINDOW_PARAMS, "T gx", _MAX_POOL_BACKWARD,
                                "minidl_max_pool_backward")
    kernel(gy, winner, *_window_args(x_shape, win, gy.shape[2:], padded_hw, channels_last), gx)
    return gx


def _window_args(x_shape, win: Window, out_hw, padded_hw, channels_last: bool) -> tuple:
    return tuple(numpy.int32(v) for v in (*x_shape, *out_hw, win.kh, win.kw, win.sy, win.sx, win.ph, win.pw,
                                          win.dy, win.dx, *padded_hw)) + (numpy.bool_(channels_last),)


class MaxPool2d(Function):
    """Max over windows as kh*kw elementwise maxima of strided views (no window copies).

    Works in whatever storage order x has (channels-last storage makes each
    view runs of C contiguous values) and remembers where the first maximum
    of each window was (as PyTorch) for the backward, as a flat index into
    the (padded) input's storage. Runs a few images at a time, so that the
    maxima, comparisons and counts find their block in cache.
    """

    def __init__(self, win: Window, ceil_mode: bool):
        self.win = win
        self.ceil_mode = ceil_mode

    def forward(self, x):
        xp = get_array_module(x)
        n, c, h, w = x.shape
        oh, ow = self.win.output_hw(h, w, self.ceil_mode)
        low = -numpy.inf if x.dtype.kind in "fV" else numpy.iinfo(x.dtype).min
        self.channels_last = is_channels_last(x)
        if not (self.channels_last or x.flags.c_contiguous):
            x = xp.ascontiguousarray(x)  # flat indices need one of the two storage orders
        self.source = self.winner = None
        if xp is not numpy:
            self.padded_shape = (n, c) + self.win.padded_hw(h, w, oh, ow)
            best, self.winner = _max_pool_cuda(x, self.win, (oh, ow), self.padded_shape[2:], self.channels_last)
            return best
        padded = pad_hw(x, self.win, oh, ow, low)
        best = empty_nchw(xp, (n, c, oh, ow), x.dtype, self.channels_last)
        self.source = xp.empty(best.size, dtype=numpy.int64)  # in the output's storage order
        per_image = c * oh * ow
        taps = [tap for _, tap in self.win.taps(oh, ow)]

        def block(a, b):  # images a:b
            views = [padded[a:b, :, rows, cols] for rows, cols in taps]
            out = best[a:b]
            out[...] = views[0]
            for view in views[1:]:
                xp.maximum(out, view, out=out)
            # which offset won: the first one equal to the maximum, i.e. the number of leading taps that are not
            behind = views[0] != out
            winner = behind.astype(numpy.int8 if len(views) < 128 else numpy.int32)
            differs = xp.empty_like(behind)
            for view in views[1:-1]:
                behind &= xp.not_equal(view, out, out=differs)
                winner += behind
            self.source[a * per_image:b * per_image] = _window_sources(
                self.win, padded.shape, self.channels_last, winner, first_image=a)

        for a, b in host_blocks(xp, n, best.size * len(taps)):  # a few images at a time, in cache
            block(a, b)
        self.padded_shape = padded.shape
        return best

    def sources(self):
        """The flat storage index, into the padded input, of each window's winner (in the output's storage order)."""
        if self.source is not None:
            return self.source
        return _window_sources(self.win, self.padded_shape, self.channels_last, self.winner)

    def backward(self, gy):
        return MaxPool2dGrad(self.win, self.source, self.padded_shape, self.inputs[0].shape, self.channels_last,
                             winner=self.winner)(gy)

    def release(self):
        self.source = self.winner = None


class MaxPool2dGrad(Function):
    """Route each output gradient to the input element that won its window (adding where windows overlap)."""

    def __init__(self, win: Window, source, padded_shape, x_shape, channels_last: bool, winner=None):
        self.win = win
        self.source = source  # flat storage index of each output's winner in the padded input (CPU), or None
        self.winner = winner  # the winning tap of each window (GPU), or None
        self.padded_shape = padded_shape
        self.x_shape = x_shape
        self.channels_last = channels_last

    def forward(self, gy):
        if self.winner is not None:
            return _max_pool_grad_cuda(gy, self.winner, self.win, self.x_shape, self.padded_shape[2:],
                                       self.channels_last)
        gx = scatter_add(int(numpy.prod(self.padded_shape)), self.source, _flat(gy, self.channels_last))
        gx = from_storage(gx, self.padded_shape, self.channels_last)
        return crop_hw(gx, self.win, *self.x_shape[2:])

    def backward(self, ggx):
        source = self.source
        if source is None:  # double backward on a GPU: the flat indices, made from the taps
            source = _window_sources(self.win, self.padded_shape, self.channels_last, self.winner)
        return _MaxPool2dSelect(self.win, source, self.padded_shape, self.inputs[0].shape[2:],
                                self.channels_last)(ggx)


class _MaxPool2dSelect(Function):
    """Pick, for every output, the element of ggx where the forward max was (double backward)."""

    def __init__(self, win: Window, source, padded_shape, out_hw, channels_last: bool):
        self.win = win
        self.source = source
        self.padded_shape = padded_shape
        self.out_hw = tuple(out_hw)
        self.channels_last = channels_last

    def forward(self, x):
        xp = get_array_module(x)
        n, c, hp, wp = self.padded_shape
        padded = empty_nchw(xp, self.padded_shape, x.dtype, self.channels_last)
        padded[...] = 0
        crop_hw(padded, self.win, *x.shape[2:])[...] = x
        self.x_shape = x.shape
        picked = xp.take(_flat(padded, self.channels_last), self.source)
        return from_storage(picked, (n, c) + self.out_hw, self.channels_last)

    def backward(self, gy):
        return MaxPool2dGrad(self.win, self.source, self.padded_shape, self.x_shape, self.channels_last)(gy)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max over sliding windows; ``stride < kernel_size`` gives AlexNet's overlapping pooling.

    ``stride`` defaults to ``kernel_size``. Padding counts as -inf.
    """
    win = Window.make(kernel_size, kernel_size if stride is None else stride, padding, dilation)
    if 2 * win.ph > win.kh or 2 * win.pw > win.kw:
        raise ValueError(f"max_pool2d: padding {padding} must be at most half the kernel size {kernel_size}")
    return MaxPool2d(win, ceil_mode)(x)


class _WindowSum(Function):
    """Sum over each window (zero padding); linear, so its adjoint is its gradient."""

    def __init__(self, win: Window, out_hw):
        self.win = win
        self.out_hw = out_hw

    def forward(self, x):
        self.x_shape = x.shape
        return im2col(x, self.win, *self.out_hw).sum(axis=(4, 5))

    def backward(self, gy):
        return _WindowSumAdjoint(self.win, self.x_shape)(gy)


class _WindowSumAdjoint(Function):
    def __init__(self, win: Window, x_shape):
        self.win = win
        self.x_shape = x_shape

    def forward(self, gy):
        xp = get_array_module(gy)
        gcol = xp.broadcast_to(gy[..., None, None], gy.shape + (self.win.kh, self.win.kw))
        return xp.ascontiguousarray(col2im(gcol, self.win, self.x_shape))

    def backward(self, ggx):
        return _WindowSum(self.win, self.inputs[0].shape[2:])(ggx)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """Mean over sliding windows (PyTorch's defaults: padding zeros count in the mean)."""
    win = Window.make(kernel_size, kernel_size if stride is None else stride, padding)
    oh, ow = win.output_hw(x.shape[2], x.shape[3], ceil_mode)
    sums = _WindowSum(win, (oh, ow))(x)
    xp = x.device.xp
    if count_include_pad and not ceil_mode:
        return sums * (1.0 / (win.kh * win.kw))
    # The divisor varies by position: count the elements each window covers.
    ones = xp.ones((1, 1) + x.shape[2:], dtype=x.dtype)
    if count_include_pad:
        ones = xp.pad(ones, ((0, 0), (0, 0), (win.ph, win.ph), (win.pw, win.pw)), constant_values=1)
        unpadded = Window(win.kh, win.kw, win.sy, win.sx, 0, 0, win.dy, win.dx)
        counts = im2col(ones, unpadded, oh, ow).sum(axis=(4, 5))
    else:
        counts = im2col(ones, win, oh, ow).sum(axis=(4, 5))
    return sums / _wrap(counts, x.device)


def _adaptive_matrix(xp, size: int, out: int, dtype):
    """(out, size) averaging matrix of adaptive pooling: bin i covers [floor(i*size/out), ceil((i+1)*size/out))."""
    m = numpy.zeros((out, size))
    for i in range(out):
        start, stop = (i * size) // out, -(-((i + 1) * size) // out)
        m[i, start:stop] = 1.0 / (stop - start)
    return xp.asarray(m.astype(dtype))


def adaptive_avg_pool2d(x, output_size) -> Tensor:
    """Average-pool to a fixed (oh, ow) whatever the input size (torchvision AlexNet's 6x6).

    Computed as P_h @ x @ P_w^T with constant averaging matrices, so it is
    two matmuls and its gradient comes for free.
    """
    oh, ow = as_pair(output_size, "output_size")
    h, w = x.shape[2], x.shape[3]
    if (oh, ow) == (h, w):
        return x
    xp = x.device.xp
    ph = _wrap(_adaptive_matrix(xp, h, oh, x.dtype), x.device)
    pw = _wrap(_adaptive_matrix(xp, w, ow, x.dtype).T.copy(), x.device)
    return matmul(matmul(ph, x), pw)
