"""Sliding-window geometry and the storage-order helpers convolutions, pooling and LRN share.

Public for layer plugins::

    from minidl.functions import Window
    win = Window.make(kernel_size=3, stride=2, padding=1)
    oh, ow = win.output_hw(h, w)

Storage order: arrays are always indexed (N, C, H, W), but convolutions
return (and pools and LRN keep) channels-last *storage* -- an (N, H, W, C)
array seen through a transposed view -- since that is what a GEMM produces.
A conv -> relu -> lrn -> pool -> conv chain then never transposes its
activations or gradients. :func:`is_channels_last` tells which order an
array has; :func:`storage_view` and :func:`from_storage` move between the
(N, C, ...) index order and the storage order without copying when they can.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy

from ..backend import get_array_module

__all__ = [
    "Window", "as_pair", "conv_output_size", "is_channels_last", "empty_nchw", "storage_view", "from_storage",
    "pad_hw", "crop_hw",
]


def as_pair(value, name) -> tuple:
    """``3`` -> ``(3, 3)``, ``(3, 5)`` -> ``(3, 5)``; anything else is a ValueError naming ``name``."""
    if isinstance(value, (int, numpy.integer)) and not isinstance(value, bool):
        pair = (value, value)
    else:
        pair = tuple(value) if isinstance(value, (tuple, list)) else ()  # a float or None: not a pair
    if len(pair) != 2 or any(not isinstance(v, (int, numpy.integer)) or isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """Output length of a convolution or pooling window along one axis (PyTorch's formula)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:  # the last window must start inside the input
            out -= 1
        return out
    return span // stride + 1


@dataclass(frozen=True)
class Window:
    """Geometry of a sliding window over H and W: kernel (kh, kw), stride (sy, sx), padding (ph, pw),
    dilation (dy, dx). Build one with :meth:`make`, which checks the values."""

    kh: int
    kw: int
    sy: int = 1
    sx: int = 1
    ph: int = 0
    pw: int = 0
    dy: int = 1
    dx: int = 1

    @classmethod
    def make(cls, kernel_size, stride=1, padding=0, dilation=1) -> "Window":
        """From ints or (h, w) pairs, as PyTorch's layers take them."""
        kh, kw = as_pair(kernel_size, "kernel_size")
        sy, sx = as_pair(stride, "stride")
        ph, pw = as_pair(padding, "padding")
        dy, dx = as_pair(dilation, "dilation")
        if min(kh, kw, sy, sx, dy, dx) < 1 or min(ph, pw) < 0:
            raise ValueError(
                f"kernel_size, stride and dilation must be >= 1 and padding >= 0, got kernel_size={kernel_size}, "
                f"stride={stride}, padding={padding}, dilation={dilation}"
            )
        return cls(kh, kw, sy, sx, ph, pw, dy, dx)

    @property
    def stride(self) -> tuple:
        return self.sy, self.sx

    @property
    def padding(self) -> tuple:
        return self.ph, self.pw

    @property
    def dilation(self) -> tuple:
        return self.dy, self.dx

    def output_hw(self, h: int, w: int, ceil_mode: bool = False) -> tuple:
        """(oh, ow) for an h x w input; a ValueError if no window fits."""
        oh = conv_output_size(h, self.kh, self.sy, self.ph, self.dy, ceil_mode)
        ow = conv_output_size(w, self.kw, self.sx, self.pw, self.dx, ceil_mode)
        if oh < 1 or ow < 1:
            raise ValueError(
                f"input of height x width {h}x{w} is too small for a {self.kh}x{self.kw} window "
                f"(stride {self.sy}x{self.sx}, padding {self.ph}x{self.pw}, dilation {self.dy}x{self.dx})"
            )
        return oh, ow

    def padded_hw(self, h: int, w: int, oh: int, ow: int) -> tuple:
        """(Hp, Wp) of the padded input that holds every window of an (oh, ow) output grid
        (ceil_mode may reach past the padding)."""
        hp = max((oh - 1) * self.sy + self.dy * (self.kh - 1) + 1, h + 2 * self.ph)
        wp = max((ow - 1) * self.sx + self.dx * (self.kw - 1) + 1, w + 2 * self.pw)
        return hp, wp

    def taps(self, oh: int, ow: int):
        """For each kernel offset k = i * kw + j: k and the (rows, cols) slices of the padded input it reads."""
        for k in range(self.kh * self.kw):
            i, j = divmod(k, self.kw)
            yield k, (slice(i * self.dy, i * self.dy + self.sy * (oh - 1) + 1, self.sy),
                      slice(j * self.dx, j * self.dx + self.sx * (ow - 1) + 1, self.sx))


def is_channels_last(a) -> bool:
    """True when an (N, C, ...) array with several channels is stored with C last (C-contiguous once C is moved last)."""
    return a.ndim > 2 and a.shape[1] > 1 and get_array_module(a).moveaxis(a, 1, -1).flags.c_contiguous


def empty_nchw(xp, shape, dtype, channels_last: bool):
    """An uninitialised (N, C, H, W) array, stored (N, H, W, C) when ``channels_last``."""
    if not channels_last:
        return xp.empty(shape, dtype=dtype)
    n, c, h, w = shape
    return xp.empty((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)


def storage_view(a, channels_last: bool):
    """(N, C, ...) -> three axes in storage order: (N, pixels, C) if ``channels_last`` else (N, C, pixels).

    A view when ``a`` is stored so, else a copy.
    """
    n, c = a.shape[:2]
    if channels_last:
        return get_array_module(a).moveaxis(a, 1, -1).reshape(n, -1, c)
    return a.reshape(n, c, -1)


def from_storage(a, shape, channels_last: bool):
    """The inverse of :func:`storage_view`: an array holding ``shape``'s elements in storage order
    (any shape, flat included) seen as (N, C, ...) ``shape``."""
    if channels_last:
        return get_array_module(a).moveaxis(a.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)), -1, 1)
    return a.reshape(shape)


def pad_hw(x, win: Window, oh: int, ow: int, value=0.0):
    """x (N, C, H, W) padded with ``value`` so every window of the (oh, ow) output grid lies inside,
    kept in x's storage order; x itself when no padding is needed."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    hp, wp = win.padded_hw(h, w, oh, ow)
    if (hp, wp) == (h, w):
        return x
    out = empty_nchw(xp, (n, c, hp, wp), x.dtype, is_channels_last(x))
    out[...] = value
    out[:, :, win.ph:win.ph + h, win.pw:win.pw + w] = x
    return out


def crop_hw(a, win: Window, h: int, w: int):
    """The (h, w) input region of an array padded by :func:`pad_hw` (a view)."""
    if a.shape[2:] == (h, w):
        return a
    return a[:, :, win.ph:win.ph + h, win.pw:win.pw + w]
