"""Operators and methods of :class:`minidl.Tensor`, backed by the ops in this package.

Tensor lives below the ops in the import order, so the ops give Tensor its
methods here, once, when :mod:`minidl.functions` is imported (which
``import minidl`` does). Comparisons (``<``, ``<=``, ``>``, ``>=``, ``.eq()``,
``.ne()``) return boolean tensors outside the graph; ``==`` keeps Python's
identity meaning so tensors can live in sets and dicts.

Both NumPy's and PyTorch's spellings work where they do not conflict:
``x.transpose(*axes)`` permutes and ``x.transpose(dim0, dim1)`` swaps two
axes; reductions take ``axis=``/``keepdims=`` or ``dim=``/``keepdim=``;
``x.to(device)``, ``x.to(dtype)``, ``x.to(device, dtype)``.
"""
from __future__ import annotations

import numpy

from ..tensor import Tensor, _wrap, parse_to_args
from . import array, inplace, linalg, math, nn, reduction


def _compare(op):
    def compare(self, other):
        other = other.data if isinstance(other, Tensor) else other
        return _wrap(op(self.data, other), self.device)

    return compare


def _reduce_data(method):
    """A non-differentiable reduction (argmax, any, ...) returning a tensor outside the graph."""

    def reduce(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        axis, keepdims = reduction.axis_args(method, axis, keepdims, dim, keepdim)
        xp = self.device.xp
        return _wrap(xp.asarray(getattr(self.data, method)(axis=axis, keepdims=keepdims)), self.device)

    reduce.__name__ = method
    return reduce


def _reshape(self, *shape):
    """``x.reshape(2, -1)`` or ``x.reshape((2, -1))``; ``x.view(...)`` is the same (a view when possible)."""
    return array.reshape(self, *shape)


def _transpose(self, *axes):
    """Reverse the axes, permute them (NumPy), or swap two of them (PyTorch).

    ``x.transpose()`` reverses; ``x.transpose(axes)`` and ``x.transpose(*axes)``
    with every axis permute; ``x.transpose(dim0, dim1)`` swaps two axes. For a
    matrix both readings of two axes agree, except ``(0, 1)``, which swaps.
    """
    if not axes or axes == (None,):
        return array.transpose(self)
    if len(axes) == 1:
        return array.transpose(self, axes[0] if isinstance(axes[0], (tuple, list)) else axes)
    if len(axes) == 2:
        return array.swapaxes(self, *axes)
    return array.transpose(self, axes)


def _squeeze(self, axis=None, *, dim=None):
    """Remove length-1 axes: all of them, or ``axis``/``dim`` (an error if that one is longer, as in NumPy)."""
    axis, _ = reduction.axis_args("squeeze", axis, False, dim, None)
    return array.squeeze(self, axis)


def _unsqueeze(self, dim: int):
    """Insert a length-1 axis at ``dim`` (``expand_dims``)."""
    return array.expand_dims(self, dim)


def _to(self, *args, device=None, dtype=None):
    """``x.to(device)``, ``x.to(dtype)``, ``x.to(device, dtype)`` or ``x.to(other_tensor)``; differentiable.

    Returns ``x`` itself when nothing changes.
    """
    device, dtype = parse_to_args(args, device, dtype)
    out = self
    if device is not None and device != self.device:
        out = array.to_device(out, device)
    if dtype is not None:
        out = array.astype(out, dtype)
    return out


def _cast(dtype):
    def cast(self):
        return array.astype(self, dtype)

    cast.__doc__ = f"``x.to({dtype})``."
    return cast


def _iterate(self):
    """Iterate over the first axis (each row is ``x[i]``, in the graph)."""
    if self.ndim == 0:
        raise TypeError("iteration over a 0-d tensor")
    for i in range(self.shape[0]):
        yield array.getitem(self, i)


def attach_tensor_methods() -> None:
    methods = {
        "__add__": math.add,
        "__radd__": math.add,
        "__sub__": math.sub,
        "__rsub__": math.rsub,
        "__mul__": math.mul,
        "__rmul__": math.mul,
        "__truediv__": math.div,
        "__rtruediv__": math.rdiv,
        "__pow__": math.pow,
        "__rpow__": math.rpow,
        "__neg__": math.neg,
        "__abs__": math.abs,
        "__matmul__": linalg.matmul,
        "__rmatmul__": lambda self, other: linalg.matmul(other, self),
        "__getitem__": array.getitem,
        "__lt__": _compare(lambda a, b: a < b),
        "__le__": _compare(lambda a, b: a <= b),
        "__gt__": _compare(lambda a, b: a > b),
        "__ge__": _compare(lambda a, b: a >= b),
        "eq": _compare(lambda a, b: a == b),
        "ne": _compare(lambda a, b: a != b),
        "exp": math.exp,
        "log": math.log,
        "sqrt": math.sqrt,
        "abs": math.abs,
        "tanh": math.tanh,
        "sigmoid": math.sigmoid,
        "relu": nn.relu,
        "clip": math.clip,
        "sum": reduction.sum,
        "mean": reduction.mean,
        "max": reduction.max,
        "min": reduction.min,
        "softmax": nn.softmax,
        "log_softmax": nn.log_softmax,
        "reshape": _reshape,
        "view": _reshape,
        "flatten": array.flatten,
        "transpose": _transpose,
        "permute": array.permute,
        "swapaxes": array.swapaxes,
        "squeeze": _squeeze,
        "expand_dims": array.expand_dims,
        "unsqueeze": _unsqueeze,
        "broadcast_to": array.broadcast_to,
        "astype": array.astype,
        "to": _to,
        "float": _cast(numpy.float32),
        "double": _cast(numpy.float64),
        "half": _cast(numpy.float16),
        "clone": array.clone,
        "numel": lambda self: self.size,
        "dim": lambda self: self.ndim,
        "__iter__": _iterate,
        "matmul": linalg.matmul,
        "argmax": _reduce_data("argmax"),
        "argmin": _reduce_data("argmin"),
        "any": _reduce_data("any"),
        "all": _reduce_data("all"),
        "T": property(lambda self: array.transpose(self)),
    }
    methods.update(inplace.INPLACE_METHODS)
    for name, fn in methods.items():
        setattr(Tensor, name, fn)
