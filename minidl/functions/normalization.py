"""Normalization ops: local response normalization (AlexNet) and batch normalization.

Batch norm is a composition of differentiable ops. LRN has a fused forward
and backward for speed; its higher derivatives come from the composite form.
"""
from __future__ import annotations

import numpy

from ..backend import elementwise_kernel, get_array_module
from ..cpu import host_blocks
from ..function import Function
from ..grad_mode import enable_grad, is_grad_enabled
from ..autograd import partial_grad
from ..tensor import Tensor, _wrap
from .array import astype, reshape
from .autocast import cast_operands
from .linalg import matmul
from .math import sqrt
from .reduction import accumulator
from .window import from_storage, is_channels_last, storage_view

__all__ = ["local_response_norm", "batch_norm", "LRN_CONVENTIONS"]

LRN_CONVENTIONS = ("paper", "pytorch")


def _channel_band(channels: int, size: int, dtype, xp):
    """(C, C) 0/1 matrix summing channels i - size//2 .. i + (size-1)//2 (clipped at the edges)."""
    index = numpy.arange(channels)
    offset = index[None, :] - index[:, None]  # j - i
    band = (offset >= -(size // 2)) & (offset <= (size - 1) // 2)
    return xp.asarray(band.astype(dtype))


def _window_sums(a, before: int, after: int, out, channels_last: bool):
    """out[:, i] = sum of a[:, i - before .. i + after] over the channels, clipped at the edges.

    a and out are C-contiguous blocks in storage order, (N, pixels, C) when
    ``channels_last`` else (N, C, pixels). before + after shifted adds:
    cheaper than a (C, C) banded GEMM that multiplies C values to keep
    ``size`` of them. Channels-last, the adds run over the flat arrays
    (contiguous; each pixel's edge channels pick up the neighbouring pixel's)
    and the few edge channels are summed again on their own.
    """
    if not channels_last:
        out[...] = a
        for d in range(1, before + 1):
            out[:, d:] += a[:, :-d]
        for d in range(1, after + 1):
            out[:, :-d] += a[:, d:]
        return out
    c = a.shape[-1]
    flat, total = a.reshape(-1), out.reshape(-1)
    if before:  # the first add writes the sum (all but its first element), saving a copy
        get_array_module(a).add(flat[1:], flat[:-1], out=total[1:])
        total[:1] = flat[:1]
    else:
        total[...] = flat
    for d in range(2, before + 1):
        total[d:] += flat[:-d]
    for d in range(1, after + 1):
        total[:-d] += flat[d:]
    for j in sorted(set(range(min(before, c))) | set(range(max(c - after, 0), c))):
        first, stop = max(0, j - before), min(c, j + after + 1)
        column = out[..., j]
        column[...] = a[..., first]
        for i in range(first + 1, stop):
            column += a[..., i]
    return out


def _lrn_composite(x, band, scale, beta, k):
    """LRN written with differentiable ops: the reference the fused version must match."""
    n, c = x.shape[:2]
    squares = reshape(x * x, (n, c, -1))  # (N, C, H*W)
    window_sums = reshape(matmul(band, squares), x.shape)
    return x / (window_sums * scale + k) ** beta


# CUDA: one thread per element over the (N, C, pixels) view, whatever the storage order; the channel
# window is summed in place (size terms), in double precision.
_CHANNEL_WINDOW = """
    int p = i % P, rest = i / P, c = rest % C, n = rest / C;
    int lo = max(c - before, 0), hi = min(c + after, C - 1);
    double total = 0.0;
    for (int cc = lo; cc <= hi; ++cc) {
        ptrdiff_t at[] = {n, cc, p};
"""
_LRN_FORWARD = _CHANNEL_WINDOW + """
        double v = (double)x[at];
        total += v * v;
    }
    ptrdiff_t me[] = {n, c, p};
    double dd = k + scale * total;
    d = (T)dd;
    y = (T)((double)x[me] * pow(dd, power));
"""
_LRN_BACKWARD = _CHANNEL_WINDOW + """
        total += (double)t[at];
    }
    gx = (T)((double)gy * pow((double)d, power) + coef * (double)x * total);
"""


def _lrn_cuda(x, size, scale, beta, k):
    """(y, d) of LRN on a GPU, both in x's storage order; d = k + scale * window sum of squares."""
    xp = get_array_module(x)
    n, c = x.shape[:2]
    y, d = xp.empty_like(x), xp.empty_like(x)
    kernel = elementwise_kernel(
        "raw T x, float64 scale, float64 k, float64 power, int32 C, int32 P, int32 before, int32 after",
        "T y, T d", _LRN_FORWARD, "minidl_lrn_forward")
    p = x.size // max(n * c, 1)
    kernel(x.reshape(n, c, -1), scale, k, -beta, numpy.int32(c), numpy.int32(p), numpy.int32(size // 2),
           numpy.int32((size - 1) // 2), y.reshape(n, c, -1), d.reshape(n, c, -1))
    return y, d


def _lrn_grad_cuda(x, gy, d, size, scale, beta):
    """gx of LRN on a GPU from x, gy and the forward's d: two kernels, no window copies."""
    xp = get_array_module(x, gy)
    n, c = x.shape[:2]
    p = x.size // max(n * c, 1)
    x3, gy3, d3 = (a.reshape(n, c, -1) for a in (x, gy, d))
    t = elementwise_kernel("T gy, T x, T d, float64 power", "T t", "t = (T)((double)gy * (double)x * "
                           "pow((double)d, power - 1.0))", "minidl_lrn_backward_terms")(gy3, x3, d3, -beta)
    gx = xp.empty_like(x)
    kernel = elementwise_kernel(
        "raw T t, T gy, T x, T d, float64 power, float64 coef, int32 C, int32 P, int32 before, int32 after",
        "T gx", _LRN_BACKWARD, "minidl_lrn_backward")
    kernel(t, gy3, x3, d3, -beta, -2.0 * scale * beta, numpy.int32(c), numpy.int32(p),
           numpy.int32((size - 1) // 2), numpy.int32(size // 2), gx.reshape(n, c, -1))  # the window mirrored
    return gx


class LocalResponseNorm(Function):
    """LRN with a fused forward and first-order backward (a few array passes instead of a dozen ops).

    Both run image block by image block, each block's passes while it is in
    cache (:func:`minidl.cpu.host_blocks`), in the input's storage order. On
    a GPU the forward is one kernel that keeps only the denominator, and the
    backward two.
    Second and higher derivatives come from differentiating the composite
    :func:`_lrn_composite`, so there is one definition of the maths.
    """

    saves_output = True  # keeps y for the backward

    def __init__(self, size, scale, beta, k):
        self.size, self.scale, self.beta, self.k = size, scale, beta, k

    def forward(self, x):
        xp = get_array_module(x)
        if xp is not numpy:  # one kernel; backward recomputes the rest from x and d
            y, self.denominator = _lrn_cuda(x, self.size, self.scale, self.beta, self.k)
            self.factor = self.y = None
            return y
        scale, k, power = (x.dtype.type(v) for v in (self.scale, self.k, -self.beta))
        self.channels_last = is_channels_last(x)
        xs = xp.ascontiguousarray(storage_view(x, self.channels_last))
        d, f, y = xp.empty_like(xs), xp.empty_like(xs), xp.empty_like(xs)
        before, after = self.size // 2, (self.size - 1) // 2

        def block(a, b):
            xp.multiply(xs[a:b], xs[a:b], out=f[a:b])  # squares (f's buffer until the end)
            _window_sums(f[a:b], before, after, d[a:b], self.channels_last)
            d[a:b] *= scale
            d[a:b] += k  # k + scale * window sum
            xp.power(d[a:b], power, out=f[a:b])
            xp.multiply(xs[a:b], f[a:b], out=y[a:b])

        for a, b in host_blocks(xp, len(x), x.size):
            block(a, b)
        self.denominator, self.factor, self.y = d, f, y  # (in storage order)
        return from_storage(y, x.shape, self.channels_last)

    def backward(self, gy):
        return LocalResponseNormGrad(self)(self.inputs[0], gy)

    def release(self):
        self.denominator = self.factor = self.y = None


class LocalResponseNormGrad(Function):
    """gx = gy * d^-beta - 2 * scale * beta * x * band^T (gy * x * d^(-beta-1))."""

    def __init__(self, lrn: LocalResponseNorm):
        self.lrn = lrn
        self.denominator, self.factor, self.y = lrn.denominator, lrn.factor, lrn.y

    def forward(self, x, gy):
        xp = get_array_module(x, gy)
        lrn = self.lrn
        if xp is not numpy:
            return _lrn_grad_cuda(x, gy, self.denominator, lrn.size, lrn.scale, lrn.beta)
        y, d, f, size, layout = self.y, self.denominator, self.factor, lrn.size, lrn.channels_last
        coef = x.dtype.type(-2.0 * lrn.scale * lrn.beta)
        xs, gys = (xp.ascontiguousarray(storage_view(a, layout)) for a in (x, gy))  # (copies only if stored otherwise)
        t, gx = xp.empty_like(y), xp.empty_like(y)

        def block(a, b):
            xp.multiply(gys[a:b], y[a:b], out=t[a:b])  # gy * x * d^-beta (y is the forward's output)
            t[a:b] /= d[a:b]
            _window_sums(t[a:b], (size - 1) // 2, size // 2, gx[a:b], layout)  # band^T: the window mirrored
            gx[a:b] *= xs[a:b]
            gx[a:b] *= coef
            gx[a:b] += xp.multiply(gys[a:b], f[a:b], out=t[a:b])

        for a, b in host_blocks(xp, len(x), x.size):
            block(a, b)
        return from_storage(gx, x.shape, layout)

    def backward(self, ggx):
        # Inputs keep their graph only when this backward is itself recorded (create_graph);
        # otherwise detached copies suffice, since only the values are wanted.
        recording = is_grad_enabled()
        x, gy = (t if recording and t.requires_grad else t.detach().requires_grad_() for t in self.inputs)
        lrn = self.lrn
        with enable_grad():
            band = _channel_band(x.shape[1], lrn.size, x.dtype, x.device.xp)
            y = _lrn_composite(x, _wrap(band, x.device), lrn.scale, lrn.beta, lrn.k)
            (gx,) = partial_grad((y,), (x,), (gy,))
            return partial_grad((gx,), (x, gy), (ggx,))


def local_response_norm(x, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                        convention: str = "paper") -> Tensor:
    """Local response normalization across channels of x (N, C, ...).

        b_i = a_i / (k + s * sum_{j near i} a_j^2) ** beta

    with the sum over ``size`` adjacent channels (clipped at the edges) and

    - ``convention="paper"`` (Krizhevsky et al. 2012): s = alpha;
    - ``convention="pytorch"`` (also Caffe's): s = alpha / size.

    The AlexNet paper's values are size=5, alpha=1e-4, beta=0.75, k=2 with
    the paper's convention. The channel sum is a few shifted adds.
    """
    if convention not in LRN_CONVENTIONS:
        raise ValueError(f"local_response_norm: convention must be one of {LRN_CONVENTIONS}, got {convention!r}")
    if size < 1:
        raise ValueError(f"local_response_norm: size must be >= 1, got {size}")
    if x.ndim < 2:
        raise ValueError(f"local_response_norm: expected (N, C, ...) input, got shape {x.shape}")
    scale = alpha if convention == "paper" else alpha / size
    (x,) = cast_operands("local_response_norm", x)
    if accumulator(x.dtype) is not None:  # float16/bfloat16: the channel sums and powers in float32
        return astype(LocalResponseNorm(size, scale, beta, k)(astype(x, numpy.float32)), x.dtype)
    return LocalResponseNorm(size, scale, beta, k)(x)


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, training: bool = True,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalization over every axis but the channel axis 1 (PyTorch semantics).

    In training, normalizes with the batch's mean and biased variance and
    updates ``running_mean``/``running_var`` (arrays, in place) with the
    unbiased variance, as PyTorch does. In evaluation, uses the running
    statistics.
    """
    x, weight, bias = cast_operands("batch_norm", x, weight, bias)
    if accumulator(x.dtype) is not None:  # float16/bfloat16: statistics and normalization in float32
        return astype(batch_norm(astype(x, numpy.float32), weight, bias, running_mean, running_var, training,
                                 momentum, eps), x.dtype)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    if training:
        mean = x.mean(axis=axes, keepdims=True)
        centered = x - mean
        var = (centered * centered).mean(axis=axes, keepdims=True)
        if running_mean is not None:
            count = x.size // x.shape[1]
            running_mean *= 1 - momentum
            running_mean += momentum * mean.data.reshape(-1)
            running_var *= 1 - momentum
            running_var += momentum * var.data.reshape(-1) * (count / max(count - 1, 1))
        y = centered / sqrt(var + eps)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: evaluation mode needs running_mean and running_var")
        mean = _wrap(running_mean.reshape(shape).astype(x.dtype, copy=False), x.device)
        xp = x.device.xp
        inv = _wrap((1.0 / xp.sqrt(running_var + eps)).reshape(shape).astype(x.dtype, copy=False), x.device)
        y = (x - mean) * inv
    if weight is not None:
        y = y * reshape(weight, shape)
    if bias is not None:
        y = y + reshape(bias, shape)
    return y
