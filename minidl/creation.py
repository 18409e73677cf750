"""Tensors made from nothing: zeros, ones, full, arange, and their ``*_like`` forms."""
from __future__ import annotations

import operator

from .backend import as_device
from .tensor import DEFAULT_DTYPE, Tensor, _resolve_dtype

__all__ = ["zeros", "ones", "full", "arange", "zeros_like", "ones_like"]


def _shape(sizes) -> tuple:
    """``(2, 3)`` from ``zeros(2, 3)``, ``zeros((2, 3))`` or ``zeros([2, 3])``."""
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    try:
        shape = tuple(operator.index(n) for n in sizes)
    except TypeError:
        raise TypeError(f"a shape is ints, given as zeros(2, 3) or zeros((2, 3)); got {sizes!r}") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"a shape cannot have negative sizes, got {shape}")
    return shape


def full(shape, value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ``shape`` (an int or a tuple) filled with ``value`` (float32 unless ``dtype`` says otherwise)."""
    device = as_device(device)
    dtype = DEFAULT_DTYPE if dtype is None else _resolve_dtype(dtype)
    shape = _shape((shape,))
    with device.context():
        data = device.xp.full(shape, value, dtype=dtype)
    return Tensor(data, requires_grad=requires_grad, device=device)


def zeros(*shape, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros: ``zeros(2, 3)`` or ``zeros((2, 3))`` (float32 unless ``dtype`` says otherwise)."""
    return full(_shape(shape), 0, dtype, device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ones: ``ones(2, 3)`` or ``ones((2, 3))`` (float32 unless ``dtype`` says otherwise)."""
    return full(_shape(shape), 1, dtype, device, requires_grad)


def zeros_like(x: Tensor, requires_grad: bool = False) -> Tensor:
    """Zeros of ``x``'s shape, dtype and device."""
    return full(x.shape, 0, x.dtype, x.device, requires_grad)


def ones_like(x: Tensor, requires_grad: bool = False) -> Tensor:
    """Ones of ``x``'s shape, dtype and device."""
    return full(x.shape, 1, x.dtype, x.device, requires_grad)


def arange(start, stop=None, step=1, dtype=None, device=None) -> Tensor:
    """Evenly spaced values in [start, stop), like ``numpy.arange``.

    Integers give int64; any float among the arguments gives float32 (the
    default float dtype), as in PyTorch, unless ``dtype`` says otherwise.
    """
    device = as_device(device)
    if stop is None:
        start, stop = 0, start
    if dtype is None:
        dtype = DEFAULT_DTYPE if any(isinstance(v, float) for v in (start, stop, step)) else None
    with device.context():
        data = device.xp.arange(start, stop, step, dtype=None if dtype is None else _resolve_dtype(dtype))
    return Tensor(data, device=device)
