"""Random ops: dropout."""
from __future__ import annotations

import numpy

from .. import random
from ..backend import elementwise_kernel, get_array_module
from ..function import Function
from ..tensor import Tensor

__all__ = ["dropout"]


class Dropout(Function):
    """y = x * mask / (1 - p), the mask keeping each element with probability 1 - p.

    On the CPU the mask is drawn from :mod:`minidl.random`'s generator and kept for backward. On a GPU
    only the counter-based stream's (key, first, shift) is kept: one kernel draws number
    ``first + shift + i`` for element i (C order; ``shift`` is a device value, zero unless a CUDA graph
    replays the op, see :func:`minidl.random.counter_shift`) and applies the mask, and backward runs the same kernel on gy, drawing the same
    numbers. Either way backward is this op again with the same mask, so every derivative order works.
    """

    saves_inputs = False  # backward reads only the mask (or the stream's position)

    def __init__(self, p: float, mask=None, stream=None):
        self.p, self.mask, self.stream = p, mask, stream

    def forward(self, x):
        xp = get_array_module(x)
        if xp is numpy:
            return x * self.mask
        key, first, shift = self.stream
        y = xp.empty_like(x)
        elementwise_kernel("T x, uint64 key, uint64 first, raw uint64 shift, float32 p, float64 scale", "T y",
                           _DROPOUT, "minidl_dropout", random.PHILOX_CUDA)(x, key, first, shift, self.p,
                                                                            1.0 / (1.0 - self.p), y)
        return y

    def backward(self, gy):
        return Dropout(self.p, self.mask, self.stream)(gy)


# CUDA: the mask of element i is philox_uniform(key, first + shift + i) >= p (minidl.random, whose NumPy code
# it matches bit for bit), so nothing is stored between forward and backward. shift is a device value: zero
# eagerly, and in a captured CUDA graph how far the stream has moved since the capture (random.counter_shift).
_DROPOUT = """
    y = minidl_philox_uniform(first + shift[0] + i, key) >= p ? (T)((double)x * scale) : (T)0;
"""


def dropout(x, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability ``p`` and scale the rest by 1/(1-p).

    Identity when ``training`` is False (so evaluation needs no rescaling).
    The mask comes from :mod:`minidl.random` on ``x``'s device (on a GPU its
    counter-based stream, regenerated in backward), so
    ``mdl.random.manual_seed`` makes it reproducible.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        stream = random.counter_stream(x.shape, x.device) + (random.counter_shift(x.device),)
        return Dropout(p, stream=stream)(x)
    keep = random.uniform(x.shape, x.dtype, x.device) >= p
    return Dropout(p, mask=keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p)))(x)
