"""Operators and methods of :class:`minidl.Tensor`, backed by the ops in this package.

Tensor lives below the ops in the import order, so the ops give Tensor its
methods here, once, when :mod:`minidl.functions` is imported (which
``import minidl`` does). Comparisons (``<``, ``<=``, ``>``, ``>=``, ``.eq()``,
``.ne()``) return boolean tensors outside the graph; ``==`` keeps Python's
identity meaning so tensors can live in sets and dicts.
"""
from __future__ import annotations

from ..backend import as_device
from ..tensor import Tensor, _wrap
from . import array, linalg, math, nn, reduction


def _compare(op):
    def compare(self, other):
        other = other.data if isinstance(other, Tensor) else other
        return _wrap(op(self.data, other), self.device)

    return compare


def _reduce_data(method):
    """A non-differentiable reduction (argmax, any, ...) returning a tensor outside the graph."""

    def reduce(self, axis=None):
        xp = self.device.xp
        return _wrap(xp.asarray(getattr(self.data, method)(axis=axis)), self.device)

    reduce.__name__ = method
    return reduce


def _reshape(self, *shape):
    return array.reshape(self, *shape)


def _to(self, device=None, dtype=None):
    """Move to ``device`` and/or cast to ``dtype`` (both differentiable)."""
    out = self
    if device is not None and as_device(device) != self.device:
        out = array.to_device(out, device)
    if dtype is not None:
        out = array.astype(out, dtype)
    return out


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
        "flatten": array.flatten,
        "transpose": array.transpose,
        "permute": array.permute,
        "swapaxes": array.swapaxes,
        "squeeze": array.squeeze,
        "expand_dims": array.expand_dims,
        "broadcast_to": array.broadcast_to,
        "astype": array.astype,
        "to": _to,
        "matmul": linalg.matmul,
        "argmax": _reduce_data("argmax"),
        "argmin": _reduce_data("argmin"),
        "any": _reduce_data("any"),
        "all": _reduce_data("all"),
        "T": property(lambda self: array.transpose(self)),
    }
    for name, fn in methods.items():
        setattr(Tensor, name, fn)
