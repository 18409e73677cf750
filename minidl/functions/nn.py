"""Neural-network activations: relu, softmax, log_softmax."""
from __future__ import annotations

from ..backend import get_array_module
from ..function import Function
from ..tensor import Tensor, _wrap
from .math import exp
from . import reduction

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
    """Numerically stable softmax of an array (the max is subtracted first)."""
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def log_softmax_array(x, axis):
    """Numerically stable log-softmax of an array (log-sum-exp with the max factored out)."""
    xp = get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


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
    return Softmax(axis)(x)


def log_softmax(x, axis: int = -1) -> Tensor:
    """log(softmax(x)) along ``axis``, computed stably (no log of 0 for large logits)."""
    return LogSoftmax(axis)(x)
