"""Reductions: sum, mean, max, min over all axes or some, with or without keepdims."""
from __future__ import annotations

import builtins

import numpy

from ..function import Function
from ..tensor import Tensor, _wrap
from .array import broadcast_to, reshape
from .autocast import cast_operands

__all__ = ["sum", "mean", "max", "min"]


def axis_args(op, axis, keepdims, dim, keepdim):
    """(axis, keepdims) from NumPy's ``axis=``/``keepdims=`` or PyTorch's ``dim=``/``keepdim=`` spelling."""
    if dim is not None:
        if axis is not None:
            raise TypeError(f"{op}: give axis (NumPy) or dim (PyTorch), not both")
        axis = dim
    if keepdim is not None:
        if keepdims:
            raise TypeError(f"{op}: give keepdims (NumPy) or keepdim (PyTorch), not both")
        keepdims = keepdim
    return axis, bool(keepdims)


def _normalize_axis(axis, ndim):
    """None, or a sorted tuple of non-negative axes."""
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ValueError(f"axis {a} is out of bounds for a tensor with {ndim} dimension(s)")
    return tuple(sorted(a % builtins.max(ndim, 1) for a in axes))


def _keepdims_shape(in_shape, axis):
    """The reduced shape with length-1 axes kept, to broadcast a gradient back."""
    if axis is None:
        return (1,) * len(in_shape)
    return tuple(1 if i in axis else n for i, n in enumerate(in_shape))


def accumulator(dtype):
    """The dtype to sum ``dtype`` values in: float32 for float16 and bfloat16 (whose own running sums stall --
    100,000 bfloat16 ones add up to 256), None (the values' own) otherwise."""
    return numpy.float32 if dtype.itemsize == 2 and dtype.kind in "fV" else None


def _spread(gy, in_shape, axis, keepdims):
    """Broadcast a reduction's upstream gradient back to the input's shape."""
    if not keepdims:
        gy = reshape(gy, _keepdims_shape(in_shape, axis))
    return broadcast_to(gy, in_shape)


class Sum(Function):
    saves_inputs = False

    def __init__(self, axis, keepdims):
        self.axis = axis
        self.keepdims = keepdims

    def forward(self, x):
        self.in_shape = x.shape
        wide = accumulator(x.dtype)
        y = x.sum(axis=self.axis, keepdims=self.keepdims, dtype=wide)
        return y if wide is None else y.astype(x.dtype)

    def backward(self, gy):
        return _spread(gy, self.in_shape, self.axis, self.keepdims)


class Mean(Function):
    saves_inputs = False

    def __init__(self, axis, keepdims):
        self.axis = axis
        self.keepdims = keepdims

    def forward(self, x):
        self.in_shape = x.shape
        wide = accumulator(x.dtype)
        y = x.mean(axis=self.axis, keepdims=self.keepdims, dtype=wide)
        self.count = x.size // y.size if y.size else 1
        return y if wide is None else y.astype(x.dtype)

    def backward(self, gy):
        return _spread(gy, self.in_shape, self.axis, self.keepdims) * (1.0 / self.count)


class _Extreme(Function):
    """max/min: the gradient goes to the extreme elements, split equally among ties."""

    saves_output = True
    reduce_name = ""

    def __init__(self, axis, keepdims):
        self.axis = axis
        self.keepdims = keepdims

    def forward(self, x):
        self.in_shape = x.shape
        return getattr(x, self.reduce_name)(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        x = self.inputs[0].data
        y = self.output.data
        if not self.keepdims:
            y = y.reshape(_keepdims_shape(self.in_shape, self.axis))
        hits = (x == y).astype(x.dtype)
        share = hits / hits.sum(axis=self.axis, keepdims=True)
        return _spread(gy, self.in_shape, self.axis, self.keepdims) * _wrap(share, gy.device)


class Max(_Extreme):
    reduce_name = "max"


class Min(_Extreme):
    reduce_name = "min"


def sum(x, axis=None, keepdims: bool = False, *, dim=None, keepdim=None) -> Tensor:  # noqa: A001 - the op's name
    """Sum over ``axis`` (an int, a tuple, or None for all axes); PyTorch's ``dim=``/``keepdim=`` work too."""
    axis, keepdims = axis_args("sum", axis, keepdims, dim, keepdim)
    (x,) = cast_operands("sum", x)
    return Sum(_normalize_axis(axis, x.ndim), keepdims)(x)


def mean(x, axis=None, keepdims: bool = False, *, dim=None, keepdim=None) -> Tensor:
    """Mean over ``axis`` (an int, a tuple, or None for all axes); PyTorch's ``dim=``/``keepdim=`` work too.

    An integer tensor's mean is float32 (the default float dtype), as in PyTorch.
    """
    axis, keepdims = axis_args("mean", axis, keepdims, dim, keepdim)
    (x,) = cast_operands("mean", x)
    return Mean(_normalize_axis(axis, x.ndim), keepdims)(x)


def max(x, axis=None, keepdims: bool = False, *, dim=None, keepdim=None) -> Tensor:  # noqa: A001 - the op's name
    """Maximum over ``axis`` (or ``dim``); ties share the gradient equally.

    Returns the values only, as NumPy does (PyTorch's ``max(dim)`` also
    returns indices: use ``argmax`` for those).
    """
    axis, keepdims = axis_args("max", axis, keepdims, dim, keepdim)
    return Max(_normalize_axis(axis, x.ndim), keepdims)(x)


def min(x, axis=None, keepdims: bool = False, *, dim=None, keepdim=None) -> Tensor:  # noqa: A001 - the op's name
    """Minimum over ``axis`` (or ``dim``); ties share the gradient equally. Values only, as :func:`max`."""
    axis, keepdims = axis_args("min", axis, keepdims, dim, keepdim)
    return Min(_normalize_axis(axis, x.ndim), keepdims)(x)
