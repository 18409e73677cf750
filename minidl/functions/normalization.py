"""Normalization ops: local response normalization (AlexNet) and batch normalization.

Batch norm is a composition of differentiable ops. LRN has a fused forward
and backward for speed; its higher derivatives come from the composite form.
"""
from __future__ import annotations

import numpy

from ..backend import array_matmul, get_array_module
from ..function import Function
from ..grad_mode import enable_grad, is_grad_enabled
from ..tensor import Tensor, _wrap, partial_grad
from .array import reshape
from .linalg import matmul
from .math import sqrt

__all__ = ["local_response_norm", "batch_norm", "LRN_CONVENTIONS"]

LRN_CONVENTIONS = ("paper", "pytorch")


def _channel_band(channels: int, size: int, dtype, xp):
    """(C, C) 0/1 matrix summing channels i - size//2 .. i + (size-1)//2 (clipped at the edges)."""
    index = numpy.arange(channels)
    offset = index[None, :] - index[:, None]  # j - i
    band = (offset >= -(size // 2)) & (offset <= (size - 1) // 2)
    return xp.asarray(band.astype(dtype))


def _channel_mix(band, a):
    """band @ a over axis 1 of a (N, C, ...): out[:, i] = sum_j band[i, j] * a[:, j].

    One (N*H*W, C) @ (C, C) GEMM when channels are the innermost axis in
    memory (the channels-last storage convolutions produce), else one small
    GEMM per image.
    """
    xp = get_array_module(a)
    n, c = a.shape[:2]
    last = xp.moveaxis(a, 1, -1)  # (N, ..., C)
    if last.flags.c_contiguous:
        out = array_matmul(last.reshape(-1, c), band.T).reshape(last.shape)
        out = xp.moveaxis(out, -1, 1)  # same storage order as a
    else:
        out = array_matmul(band, a.reshape(n, c, -1)).reshape(a.shape)
    return out


def _lrn_composite(x, band, scale, beta, k):
    """LRN written with differentiable ops: the reference the fused version must match."""
    n, c = x.shape[:2]
    squares = reshape(x * x, (n, c, -1))  # (N, C, H*W)
    window_sums = reshape(matmul(band, squares), x.shape)
    return x / (window_sums * scale + k) ** beta


class LocalResponseNorm(Function):
    """LRN with a fused forward and first-order backward (a few array passes instead of a dozen ops).

    Second and higher derivatives come from differentiating the composite
    :func:`_lrn_composite`, so there is one definition of the maths.
    """

    def __init__(self, size, scale, beta, k):
        self.size, self.scale, self.beta, self.k = size, scale, beta, k

    def forward(self, x):
        xp = get_array_module(x)
        self.band = _channel_band(x.shape[1], self.size, x.dtype, xp)
        squares = x * x
        sums = _channel_mix(self.band * x.dtype.type(self.scale), squares)  # scale * window sums
        sums += x.dtype.type(self.k)
        self.denominator = sums  # k + scale * window sum
        self.factor = xp.power(sums, x.dtype.type(-self.beta), out=squares)  # (reuses the squares' buffer)
        self.y = x * self.factor
        return self.y

    def backward(self, gy):
        return LocalResponseNormGrad(self)(self.inputs[0], gy)

    def release(self):
        self.denominator = self.factor = self.y = None


class LocalResponseNormGrad(Function):
    """gx = gy * d^-beta - 2 * scale * beta * x * band^T (gy * x * d^(-beta-1))."""

    def __init__(self, lrn: LocalResponseNorm):
        self.lrn = lrn
        self.denominator, self.factor, self.band, self.y = lrn.denominator, lrn.factor, lrn.band, lrn.y

    def forward(self, x, gy):
        xp = get_array_module(x, gy)
        t = gy * self.y  # gy * x * d^-beta (y is the forward's output)
        t /= self.denominator
        back = _channel_mix(self.band.T * x.dtype.type(-2.0 * self.lrn.scale * self.lrn.beta), t)
        back *= x
        back += xp.multiply(gy, self.factor, out=t)
        return back

    def backward(self, ggx):
        # Inputs keep their graph only when this backward is itself recorded (create_graph);
        # otherwise detached copies suffice, since only the values are wanted.
        recording = is_grad_enabled()
        x, gy = (t if recording and t.requires_grad else t.detach().requires_grad_() for t in self.inputs)
        lrn = self.lrn
        with enable_grad():
            y = _lrn_composite(x, _wrap(self.band, x.device), lrn.scale, lrn.beta, lrn.k)
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
    the paper's convention. The channel sum is one banded (C, C) matmul.
    """
    if convention not in LRN_CONVENTIONS:
        raise ValueError(f"local_response_norm: convention must be one of {LRN_CONVENTIONS}, got {convention!r}")
    if size < 1:
        raise ValueError(f"local_response_norm: size must be >= 1, got {size}")
    if x.ndim < 2:
        raise ValueError(f"local_response_norm: expected (N, C, ...) input, got shape {x.shape}")
    scale = alpha if convention == "paper" else alpha / size
    return LocalResponseNorm(size, scale, beta, k)(x)


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, training: bool = True,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalization over every axis but the channel axis 1 (PyTorch semantics).

    In training, normalizes with the batch's mean and biased variance and
    updates ``running_mean``/``running_var`` (arrays, in place) with the
    unbiased variance, as PyTorch does. In evaluation, uses the running
    statistics.
    """
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
