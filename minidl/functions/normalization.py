"""Normalization ops: local response normalization (AlexNet) and batch normalization.

Both are compositions of differentiable ops, so their gradients (and second
derivatives) need no code of their own.
"""
from __future__ import annotations

import numpy

from ..tensor import Tensor, _wrap
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
    n, c = x.shape[:2]
    scale = alpha if convention == "paper" else alpha / size
    band = _wrap(_channel_band(c, size, x.dtype, x.device.xp), x.device)
    squares = reshape(x * x, (n, c, -1))  # (N, C, H*W)
    window_sums = reshape(matmul(band, squares), x.shape)
    return x / (window_sums * scale + k) ** beta


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
