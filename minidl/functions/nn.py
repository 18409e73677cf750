"""Neural-network activations: relu, bias_relu (a bias add and ReLU in one op), softmax, log_softmax."""
from __future__ import annotations

import numpy

from ..backend import elementwise_kernel, get_array_module
from ..errors import OpTypeError, ShapeError
from ..function import Function
from ..tensor import Tensor, _wrap
from . import reduction
from .array import broadcast_to, reshape
from .autocast import cast_operands
from .math import exp
from .reduction import accumulator

__all__ = ["relu", "bias_relu", "softmax", "log_softmax", "ACTIVATIONS", "check_activation"]

ACTIVATIONS = ("relu",)  # what conv2d and linear (the ops and the layers) accept as ``activation=``


class ReLU(Function):
    saves_inputs = False
    saves_output = True

    def forward(self, x):
        xp = get_array_module(x)
        return xp.maximum(x, 0)

    def backward(self, gy):
        positive = self.output.data > 0
        return gy * _wrap(positive.astype(gy.dtype), gy.device)


def relu(x) -> Tensor:
    """max(x, 0); the gradient at 0 is 0, as in PyTorch."""
    return ReLU()(x)


# CUDA: one thread per element, the arrays passed in their storage order (see _memory_order). The sum is
# taken in double and rounded once, which gives the correctly rounded x + b of NumPy's float16, bfloat16,
# float32 and float64 adds; NaN passes through, as NumPy's maximum(v, 0) lets it.
_BIAS_RELU = """
    double v = (double)x + (double)b;
    y = (T)((v > 0.0 || v != v) ? v : 0.0);
"""
_RELU = """
    double v = (double)x;
    y = (T)((v > 0.0 || v != v) ? v : 0.0);
"""
# gy times 1 or 0, as NumPy's gy * (y > 0): a NaN in gy stays NaN.
_RELU_GRAD = """
    gx = (T)((double)gy * ((double)y > 0.0 ? 1.0 : 0.0));
"""


def _memory_order(a) -> tuple:
    """a's axes from the largest stride to the smallest: a transposed by it is read in storage order
    (channels-last convolution outputs included), which is how a GPU thread per element reads coalesced."""
    return tuple(sorted(range(a.ndim), key=lambda k: -abs(a.strides[k])))


def _bias_shape(ndim: int, axis: int, channels: int) -> tuple:
    """(1, C, 1, 1) for axis 1 of a 4-D array: the shape that broadcasts a (C,) bias along ``axis``."""
    return tuple(channels if k == axis else 1 for k in range(ndim))


def _rows(a, order, axis):
    """NumPy array a as C-contiguous (outer, inner) rows in storage order (``order``: _memory_order(a)),
    the bias repeating the same way in every row; None when a is not stored densely or ``axis`` is outermost.

    A bias broadcast (1, C, 1, 1) onto channels-last storage is added 32 values (C) at a time by NumPy's
    loops; a row of one image at a time is several times faster, for the add and for the bias gradient's sum.
    """
    if a.ndim < 2 or order[0] == axis:
        return None
    t = a.transpose(order)
    return t.reshape(t.shape[0], -1) if t.flags.c_contiguous else None


class BiasReLU(Function):
    """y = max(x + b, 0), b (C,) broadcast along ``axis``: a layer's bias add and its ReLU in one op.

    Keeps only y for backward (a convolution followed by a separate ReLU keeps
    both its output and the ReLU's). y has x's storage order (channels-last
    convolution outputs stay so). With ``overwrite`` y is written into x's
    own memory: conv2d and linear use that for the output they have just
    made, which nothing else can see. On NumPy the bias is added a row (an
    image) at a time (:func:`_rows`). On a GPU the forward is one kernel; the
    backward is one kernel for gx (:class:`ReLUGrad`) and one reduction for
    gb (:class:`BiasGrad`).
    """

    saves_inputs = False
    saves_output = True

    def __init__(self, axis: int, overwrite: bool = False):
        self.axis, self.overwrite = axis, overwrite

    def forward(self, x, b=None):
        xp = get_array_module(x)
        y = x if self.overwrite else xp.empty_like(x)  # (empty_like keeps x's storage order)
        order = _memory_order(y)
        if b is not None:
            b = b.reshape(_bias_shape(x.ndim, self.axis, b.size))
        if xp is numpy:
            if b is None:
                return xp.maximum(x, 0, out=y)
            xr, yr = _rows(x, order, self.axis), _rows(y, order, self.axis)
            if xr is None or yr is None:
                xp.add(x, b, out=y)
            else:  # the bias over one row, in storage order
                row = xp.ascontiguousarray(xp.broadcast_to(b, x.shape).transpose(order)[0]).reshape(-1)
                xp.add(xr, row, out=yr)
            return xp.maximum(y, 0, out=y)
        xv = x.transpose(order)
        yv = xv if y is x else y.transpose(order)  # the same view object: CuPy then does not copy x first
        if b is None:
            elementwise_kernel("T x", "T y", _RELU, "minidl_relu")(xv, yv)
        else:
            elementwise_kernel("T x, T b", "T y", _BIAS_RELU, "minidl_bias_relu")(xv, b.transpose(order), yv)
        return y

    def backward(self, gy):
        gx = ReLUGrad()(gy, self.output)
        if len(self.inputs) == 1:
            return gx
        return gx, BiasGrad(self.axis)(gx) if self.inputs[1].requires_grad else None


class BiasGrad(Function):
    """gb = g summed over every axis but ``axis``: the gradient of a bias added along ``axis``.

    Summed in float32 for float16 and bfloat16. On NumPy over rows first
    (:func:`_rows`), then over the positions of one row; on a GPU one reduction.
    """

    saves_inputs = False

    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, g):
        self.in_shape = g.shape
        wide = accumulator(g.dtype)
        order = _memory_order(g)
        rows = _rows(g, order, self.axis) if get_array_module(g) is numpy else None
        if rows is None:
            gb = g.sum(axis=tuple(k for k in range(g.ndim) if k != self.axis), dtype=wide)
        else:
            inner = tuple(g.shape[k] for k in order[1:])  # one row's axes, in storage order
            channel = order.index(self.axis) - 1
            gb = rows.sum(axis=0, dtype=wide).reshape(inner).sum(
                axis=tuple(k for k in range(len(inner)) if k != channel))
        return gb if wide is None else gb.astype(g.dtype)

    def backward(self, ggb):
        return broadcast_to(reshape(ggb, _bias_shape(len(self.in_shape), self.axis, ggb.size)), self.in_shape)


class ReLUGrad(Function):
    """gx = gy * (y > 0) for a ReLU output y, in y's storage order (one kernel on a GPU).

    Linear in gy with a constant mask, so its own gradient is itself.
    """

    def forward(self, gy, y):
        xp = get_array_module(gy, y)
        gx = xp.empty_like(y)
        if xp is numpy:
            return xp.multiply(gy, y > 0, out=gx)
        gy = gy.astype(y.dtype, copy=False)  # (the kernel takes one dtype)
        order = _memory_order(y)
        elementwise_kernel("T gy, T y", "T gx", _RELU_GRAD, "minidl_relu_grad")(
            gy.transpose(order), y.transpose(order), gx.transpose(order))
        return gx

    def backward(self, ggx):
        return ReLUGrad()(ggx, self.inputs[1]), None


def check_activation(activation, op: str):
    """``activation`` if conv2d/linear take it (None or "relu"), else a ValueError naming ``op``."""
    if activation is not None and activation not in ACTIVATIONS:
        choices = ", ".join(repr(a) for a in ACTIVATIONS)
        raise ValueError(f"{op}: activation must be None or one of {choices}, got {activation!r}")
    return activation


def bias_relu(x, b=None, axis: int = 1) -> Tensor:
    """``relu(x + b)`` in one op, b (C,) added along ``axis`` (1: the channels of (N, C, H, W) or the
    features of (N, F)); without b, ``relu(x)``.

    Faster and leaner than the two ops: it keeps only its output for the
    backward, and on a GPU it is one kernel each way (plus the bias gradient's
    sum). The gradient at 0 is 0, as :func:`relu`'s. The bias gradient is
    summed in float32 for float16 and bfloat16. ``F.conv2d(...,
    activation="relu")`` and ``F.linear(..., activation="relu")`` end with it.

    Example::

        y = F.bias_relu(F.conv2d(x, W), b)      # = F.relu(F.conv2d(x, W, b))
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"bias_relu: x must be a Tensor, got {type(x).__name__}")
    if not -x.ndim <= axis < max(x.ndim, 1) or x.ndim == 0:
        raise ShapeError(f"bias_relu: axis {axis} is out of range for x of shape {x.shape}", "bias_relu")
    axis %= x.ndim
    if b is None:
        return BiasReLU(axis)(x)
    if tuple(getattr(b, "shape", ())) != (x.shape[axis],):
        raise ShapeError(f"bias_relu: bias of shape {tuple(getattr(b, 'shape', ()))} does not match the "
                         f"{x.shape[axis]} channels along axis {axis} of x of shape {x.shape}", "bias_relu")
    if b.dtype != x.dtype:
        raise OpTypeError(f"bias_relu: x is {x.dtype} but the bias is {b.dtype} (convert one with .to(dtype))",
                          "bias_relu")
    return BiasReLU(axis)(x, b)


def activate(y, b, activation, op: str, axis: int = 1) -> Tensor:
    """For conv2d and linear: ``y`` (an output they have just made, without its bias) with the bias
    ``b`` (or None) added and ``activation`` applied, in place."""
    if activation == "relu":
        return BiasReLU(axis, overwrite=True)(y) if b is None else BiasReLU(axis, overwrite=True)(y, b)
    raise ValueError(f"{op}: unknown activation {activation!r}")  # (check_activation ran first)


def softmax_array(x, axis):
    """Numerically stable softmax of an array (the max is subtracted first); float16 and bfloat16 are computed
    in float32 and rounded back."""
    xp = get_array_module(x)
    wide = accumulator(x.dtype)
    xw = x if wide is None else x.astype(wide)
    e = xp.exp(xw - xw.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e if wide is None else e.astype(x.dtype)


def log_softmax_array(x, axis, keep_wide=False):
    """Numerically stable log-softmax of an array (log-sum-exp with the max factored out); float16 and bfloat16
    are computed in float32 and rounded back (or left in float32 with ``keep_wide``)."""
    xp = get_array_module(x)
    wide = accumulator(x.dtype)
    xw = x if wide is None else x.astype(wide)
    shifted = xw - xw.max(axis=axis, keepdims=True)
    out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    return out if wide is None or keep_wide else out.astype(x.dtype)


class Softmax(Function):
    saves_inputs = False
    saves_output = True

    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        return softmax_array(x, self.axis)

    def backward(self, gy):
        y = self.output
        gx = y * gy
        return gx - y * reduction.sum(gx, axis=self.axis, keepdims=True)


class LogSoftmax(Function):
    saves_inputs = False
    saves_output = True

    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        return log_softmax_array(x, self.axis)

    def backward(self, gy):
        return gy - exp(self.output) * reduction.sum(gy, axis=self.axis, keepdims=True)


def softmax(x, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis``, computed stably."""
    (x,) = cast_operands("softmax", x)
    return Softmax(axis)(x)


def log_softmax(x, axis: int = -1) -> Tensor:
    """log(softmax(x)) along ``axis``, computed stably (no log of 0 for large logits)."""
    (x,) = cast_operands("log_softmax", x)
    return LogSoftmax(axis)(x)
