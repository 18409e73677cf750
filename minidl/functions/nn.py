"""Neural-network activations: relu, softmax, log_softmax."""
from __future__ import annotations

from ..backend import get_array_module
from ..function import Function
from ..tensor import Tensor, _wrap
from . import reduction
from .autocast import cast_operands
from .math import exp
from .reduction import accumulator

__all__ = ["relu", "softmax", "log_softmax"]


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
