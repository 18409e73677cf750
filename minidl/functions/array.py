"""Shape and layout ops: reshape, transpose, broadcasting, indexing, joining, padding, casts, transfers."""
from __future__ import annotations

import numpy

from .. import backend
from ..backend import get_array_module, scatter_add
from ..errors import ShapeError
from ..function import Function
from ..tensor import Tensor, _resolve_dtype

__all__ = [
    "reshape", "flatten", "transpose", "permute", "swapaxes", "broadcast_to", "sum_to",
    "getitem", "concatenate", "stack", "split", "pad", "astype", "to_device",
    "expand_dims", "squeeze", "clone",
]


def _normalize_shape(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(int(s) for s in shape)


# ---------------------------------------------------------------- reshape
class Reshape(Function):
    saves_inputs = False
    returns_view = True

    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return reshape(gy, self.in_shape)


def reshape(x, *shape) -> Tensor:
    """Give ``x`` a new shape with the same number of elements (one entry may be -1).

    >>> reshape(x, 2, -1)     # or x.reshape(2, -1), x.reshape((2, -1))
    """
    shape = _normalize_shape(shape)
    if isinstance(x, Tensor) and x.shape == shape:
        return x
    return Reshape(shape)(x)


def _axis(axis, ndim: int, op: str) -> int:
    """``axis`` as a non-negative index, or a ShapeError naming the op and the tensor's rank."""
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{op}: axis {axis} is out of range for a tensor with {ndim} dimension(s)", op)
    return axis % ndim


def flatten(x, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge axes ``start_dim..end_dim`` (inclusive) into one, as ``torch.flatten``.

    >>> flatten(x)        # (N, C, H, W) -> (N*C*H*W,)
    >>> flatten(x, 1)     # (N, C, H, W) -> (N, C*H*W)
    """
    if x.ndim == 0:
        return reshape(x, (1,))
    start, end = _axis(start_dim, x.ndim, "flatten"), _axis(end_dim, x.ndim, "flatten")
    if start > end:
        raise ShapeError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}", "flatten")
    return reshape(x, x.shape[:start] + (-1,) + x.shape[end + 1:])


def expand_dims(x, axis: int) -> Tensor:
    """Insert an axis of length 1 at ``axis`` (``x.unsqueeze(dim)`` in PyTorch)."""
    shape = list(x.shape)
    shape.insert(_axis(axis, x.ndim + 1, "expand_dims"), 1)
    return reshape(x, tuple(shape))


def squeeze(x, axis=None) -> Tensor:
    """Remove axes of length 1 (all of them, or the given ones: an error if one is longer, as in NumPy)."""
    if axis is None:
        shape = tuple(s for s in x.shape if s != 1)
    else:
        axes = {_axis(a, x.ndim, "squeeze") for a in ((axis,) if isinstance(axis, int) else axis)}
        bad = [a for a in axes if x.shape[a] != 1]
        if bad:
            raise ValueError(f"squeeze: axis {bad[0]} of shape {x.shape} is not of length 1")
        shape = tuple(s for i, s in enumerate(x.shape) if i not in axes)
    return reshape(x, shape)


# -------------------------------------------------------------- transpose
class Transpose(Function):
    saves_inputs = False
    returns_view = True

    def __init__(self, axes):
        self.axes = axes

    def forward(self, x):
        return x.transpose(self.axes)

    def backward(self, gy):
        if self.axes is None:
            return transpose(gy)
        inverse = tuple(numpy.argsort([a % len(self.axes) for a in self.axes]))
        return transpose(gy, inverse)


def transpose(x, axes=None) -> Tensor:
    """Permute axes (reverse them when ``axes`` is None), like ``numpy.transpose``."""
    return Transpose(None if axes is None else tuple(axes))(x)


def permute(x, *axes) -> Tensor:
    """``x.permute(0, 2, 3, 1)``: reorder axes (PyTorch spelling of transpose)."""
    return transpose(x, _normalize_shape(axes))


def swapaxes(x, axis1: int, axis2: int) -> Tensor:
    """Exchange two axes (PyTorch's ``x.transpose(dim0, dim1)``)."""
    axes = list(range(x.ndim))
    axis1, axis2 = _axis(axis1, x.ndim, "swapaxes"), _axis(axis2, x.ndim, "swapaxes")
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return transpose(x, axes)


# --------------------------------------------------------- broadcasting
class BroadcastTo(Function):
    saves_inputs = False
    returns_view = True

    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        xp = get_array_module(x)
        self.in_shape = x.shape
        return xp.broadcast_to(x, self.shape)

    def backward(self, gy):
        return sum_to(gy, self.in_shape)


def broadcast_to(x, shape) -> Tensor:
    """Broadcast ``x`` to ``shape`` (NumPy rules); the gradient is summed back."""
    shape = tuple(shape)
    if isinstance(x, Tensor) and x.shape == shape:
        return x
    return BroadcastTo(shape)(x)


def sum_to_array(x, shape):
    """Sum array ``x`` over the axes that broadcasting added to reach ``x.shape`` from ``shape``."""
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, n in enumerate(shape) if n == 1 and x.shape[i + lead] != 1
    )
    y = x.sum(axis=axes, keepdims=True)
    return y.reshape(shape) if lead else y


class SumTo(Function):
    saves_inputs = False

    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        return sum_to_array(x, self.shape)

    def backward(self, gy):
        return broadcast_to(gy, self.in_shape)


def sum_to(x, shape) -> Tensor:
    """Reverse of broadcast_to: sum ``x`` down to ``shape``."""
    shape = tuple(shape)
    if x.shape == shape:
        return x
    return SumTo(shape)(x)


# -------------------------------------------------------------- indexing
def _index_to_arrays(index, xp):
    """Replace Tensors and lists inside an index by arrays of module ``xp``."""
    if isinstance(index, tuple):
        return tuple(_index_to_arrays(i, xp) for i in index)
    if isinstance(index, Tensor):
        index = index.data
    if isinstance(index, list) or (hasattr(index, "dtype") and get_array_module(index) is not xp):
        index = xp.asarray(backend.transfer(index, backend.CPU) if xp is numpy else index)
    return index


def _is_basic(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, slice, numpy.integer)) for p in parts)


class GetItem(Function):
    saves_inputs = False
    returns_view = True

    def __init__(self, index):
        self.index = index

    def forward(self, x):
        xp = get_array_module(x)
        self.index = _index_to_arrays(self.index, xp)
        self.in_shape = x.shape
        return x[self.index]

    def backward(self, gy):
        return GetItemGrad(self.index, self.in_shape)(gy)


class GetItemGrad(Function):
    """Scatter-add ``gy`` into zeros of the indexed tensor's shape (repeated indices add up)."""

    saves_inputs = False

    def __init__(self, index, in_shape):
        self.index = index
        self.in_shape = in_shape

    def forward(self, gy):
        xp = get_array_module(gy)
        if _is_basic(self.index):
            gx = xp.zeros(self.in_shape, dtype=gy.dtype)
            gx[self.index] = gy
            return gx
        return scatter_add(self.in_shape, self.index, gy)  # repeated indices add up

    def backward(self, ggx):
        return getitem(ggx, self.index)


def getitem(x, index) -> Tensor:
    """``x[index]`` with basic slicing and integer-array indexing; gradients scatter-add."""
    return GetItem(index)(x)


# ----------------------------------------------------------------- joins
class Concatenate(Function):
    saves_inputs = False

    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        xp = get_array_module(*xs)
        self.sizes = [x.shape[self.axis] for x in xs]
        return xp.concatenate(xs, axis=self.axis)

    def backward(self, gy):
        bounds = numpy.cumsum(self.sizes)[:-1].tolist()
        parts = split(gy, bounds, axis=self.axis)
        return parts if isinstance(parts, tuple) else (parts,)


def concatenate(tensors, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis."""
    return Concatenate(axis)(*tensors)


class Stack(Function):
    saves_inputs = False

    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        xp = get_array_module(*xs)
        return xp.stack(xs, axis=self.axis)

    def backward(self, gy):
        axis = self.axis % gy.ndim
        lead = (slice(None),) * axis
        return tuple(getitem(gy, lead + (i,)) for i in range(len(self.inputs)))


def stack(tensors, axis: int = 0) -> Tensor:
    """Join tensors of one shape along a new axis."""
    return Stack(axis)(*tensors)


class Split(Function):
    saves_inputs = False
    returns_view = True

    def __init__(self, indices_or_sections, axis):
        self.indices_or_sections = indices_or_sections
        self.axis = axis

    def forward(self, x):
        xp = get_array_module(x)
        return tuple(xp.split(x, self.indices_or_sections, axis=self.axis))

    def backward(self, *gys):
        return concatenate(gys, axis=self.axis)


def split(x, indices_or_sections, axis: int = 0):
    """Split into equal sections (an int) or at the given indices (a list); returns a tuple."""
    if not isinstance(indices_or_sections, int):
        indices_or_sections = [int(i) for i in indices_or_sections]
    parts = Split(indices_or_sections, axis)(x)
    return parts if isinstance(parts, tuple) else (parts,)


# ---------------------------------------------------------------- padding
class Pad(Function):
    saves_inputs = False

    def __init__(self, pad_width, value):
        self.pad_width = pad_width
        self.value = value

    def forward(self, x):
        xp = get_array_module(x)
        return xp.pad(x, self.pad_width, mode="constant", constant_values=self.value)

    def backward(self, gy):
        index = tuple(slice(before, gy.shape[i] - after) for i, (before, after) in enumerate(self.pad_width))
        return getitem(gy, index)


def pad(x, pad_width, value: float = 0.0) -> Tensor:
    """Pad with a constant. ``pad_width`` as in NumPy: an int, a (before, after) pair, or one pair per axis."""
    widths = numpy.broadcast_to(numpy.asarray(pad_width, dtype=numpy.int64), (x.ndim, 2))
    if (widths < 0).any():
        raise ValueError(f"pad: widths must be >= 0, got {pad_width}")
    return Pad(tuple((int(a), int(b)) for a, b in widths), value)(x)


# ----------------------------------------------------------- dtype, device
class Clone(Function):
    saves_inputs = False

    def forward(self, x):
        return x.copy()

    def backward(self, gy):
        return gy


def clone(x) -> Tensor:
    """A copy of ``x`` with its own data; gradients flow back to ``x`` (``detach()`` cuts them)."""
    return Clone()(x)


class AsType(Function):
    saves_inputs = False
    keeps_dtype = True

    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, x):
        self.in_dtype = x.dtype
        return x.astype(self.dtype)

    def backward(self, gy):
        return astype(gy, self.in_dtype)


def astype(x, dtype) -> Tensor:
    """Cast to ``dtype`` (differentiable between floating types)."""
    dtype = _resolve_dtype(dtype)
    if x.dtype == dtype:
        return x
    return AsType(dtype)(x)


class ToDevice(Function):
    saves_inputs = False

    def __init__(self, device):
        self.output_device = device

    def forward(self, x):
        return backend.transfer(x, self.output_device)

    def backward(self, gy):
        return to_device(gy, self.inputs[0].device)


def to_device(x, device) -> Tensor:
    """Move ``x`` to ``device`` ("cpu", "cpu:1", "cuda:0", ...); gradients flow back."""
    device = backend.as_device(device)
    if x.device == device:
        return x
    return ToDevice(device)(x)
