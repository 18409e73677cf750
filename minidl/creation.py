"""Tensors made from nothing: zeros, ones, full, arange, and their ``*_like`` forms."""
from __future__ import annotations

from .backend import as_device
from .tensor import DEFAULT_DTYPE, Tensor, _resolve_dtype

__all__ = ["zeros", "ones", "full", "arange", "zeros_like", "ones_like"]


def full(shape, value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ``shape`` filled with ``value`` (float32 unless ``dtype`` says otherwise)."""
    device = as_device(device)
    dtype = DEFAULT_DTYPE if dtype is None else _resolve_dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    with device.context():
        data = device.xp.full(shape, value, dtype=dtype)
    return Tensor(data, requires_grad=requires_grad, device=device)


def zeros(shape, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros."""
    return full(shape, 0, dtype, device, requires_grad)


def ones(shape, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ones."""
    return full(shape, 1, dtype, device, requires_grad)


def zeros_like(x: Tensor, requires_grad: bool = False) -> Tensor:
    """Zeros of ``x``'s shape, dtype and device."""
    return full(x.shape, 0, x.dtype, x.device, requires_grad)


def ones_like(x: Tensor, requires_grad: bool = False) -> Tensor:
    """Ones of ``x``'s shape, dtype and device."""
    return full(x.shape, 1, x.dtype, x.device, requires_grad)


def arange(start, stop=None, step=1, dtype=None, device=None) -> Tensor:
    """Evenly spaced values in [start, stop), like ``numpy.arange``."""
    device = as_device(device)
    if stop is None:
        start, stop = 0, start
    with device.context():
        data = device.xp.arange(start, stop, step, dtype=None if dtype is None else _resolve_dtype(dtype))
    return Tensor(data, device=device)
