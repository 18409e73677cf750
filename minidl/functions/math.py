"""Elementwise math: arithmetic with broadcasting, exp/log family, comparisons-based selects.

Binary ops broadcast like NumPy; their backward sums each gradient back to
its input's shape with ``sum_to``.
"""
from __future__ import annotations

import numpy

from ..backend import get_array_module
from ..function import Function
from ..tensor import Tensor, _is_float_dtype, _wrap
from .array import sum_to
from .autocast import cast_operands

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sqrt", "abs", "tanh", "sigmoid",
    "maximum", "minimum", "where", "clip", "sign",
]


def _like(value, x):
    """A Python number as a scalar of ``x``'s floating dtype (NumPy promotes bfloat16 with a float to float32)."""
    if value is None or not _is_float_dtype(x.dtype):
        return value
    return x.dtype.type(value)


# ------------------------------------------------------------ arithmetic
class Add(Function):
    saves_inputs = False

    def forward(self, a, b):
        return a + b

    def backward(self, gy):
        a, b = self.inputs
        return sum_to(gy, a.shape), sum_to(gy, b.shape)


class Sub(Function):
    saves_inputs = False

    def forward(self, a, b):
        return a - b

    def backward(self, gy):
        a, b = self.inputs
        return sum_to(gy, a.shape), sum_to(-gy, b.shape)


class Mul(Function):
    def forward(self, a, b):
        return a * b

    def backward(self, gy):
        a, b = self.inputs
        ga = sum_to(gy * b, a.shape) if a.requires_grad else None
        gb = sum_to(gy * a, b.shape) if b.requires_grad else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        return a / b

    def backward(self, gy):
        a, b = self.inputs
        ga = gy / b
        gb = sum_to(-ga * a / b, b.shape) if b.requires_grad else None
        return sum_to(ga, a.shape) if a.requires_grad else None, gb


class Neg(Function):
    saves_inputs = False

    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Pow(Function):
    """``a ** b`` with a tensor exponent (see ``PowScalar`` for a constant one)."""

    saves_output = True

    def forward(self, a, b):
        return a ** b

    def backward(self, gy):
        a, b = self.inputs
        # 0 ** b: the formulas give 0 * inf and 0 * log(0); the limits are 0, as in PyTorch
        ga = sum_to(where(b.data == 0, 0.0, gy * b * a ** (b - 1)), a.shape) if a.requires_grad else None
        at_zero = (a.data == 0) & (b.data >= 0)
        gb = sum_to(where(at_zero, 0.0, gy * self.output * log(a)), b.shape) if b.requires_grad else None
        return ga, gb


class PowScalar(Function):
    def __init__(self, exponent):
        self.exponent = exponent

    def forward(self, x):
        c = self.exponent
        return x ** (_like(c, x) if isinstance(c, float) else c)

    def backward(self, gy):
        (x,) = self.inputs
        c = self.exponent
        if c == 0:  # x ** -1 would give 0 * inf = nan at x = 0; the derivative is 0 everywhere
            return gy * 0.0
        if c == 2:
            return gy * (x * 2.0)
        return gy * (c * x ** (c - 1))


def add(a, b) -> Tensor:
    """``a + b`` with broadcasting."""
    return Add()(a, b)


def sub(a, b) -> Tensor:
    """``a - b`` with broadcasting."""
    return Sub()(a, b)


def mul(a, b) -> Tensor:
    """``a * b`` with broadcasting."""
    return Mul()(a, b)


def div(a, b) -> Tensor:
    """``a / b`` with broadcasting."""
    return Div()(a, b)


def neg(x) -> Tensor:
    """``-x``."""
    return Neg()(x)


def pow(a, b) -> Tensor:  # noqa: A001 - the op's name
    """``a ** b``; ``b`` may be a Python number (fast path) or a tensor."""
    a, b = cast_operands("pow", a, b)
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        return PowScalar(b)(a)
    return Pow()(a, b)


def rsub(a, b) -> Tensor:
    return Sub()(b, a)


def rdiv(a, b) -> Tensor:
    return Div()(b, a)


def rpow(a, b) -> Tensor:
    return Pow()(b, a)


# ------------------------------------------------------------ unary math
class Exp(Function):
    saves_inputs = False
    saves_output = True

    def forward(self, x):
        xp = get_array_module(x)
        return xp.exp(x)

    def backward(self, gy):
        return gy * self.output


class Log(Function):
    def forward(self, x):
        xp = get_array_module(x)
        return xp.log(x)

    def backward(self, gy):
        return gy / self.inputs[0]


class Sqrt(Function):
    saves_inputs = False
    saves_output = True

    def forward(self, x):
        xp = get_array_module(x)
        return xp.sqrt(x)

    def backward(self, gy):
        return gy / (self.output * 2.0)


class Sign(Function):
    """Sign of x; its gradient is zero (it is piecewise constant)."""

    saves_inputs = False

    def forward(self, x):
        xp = get_array_module(x)
        return xp.sign(x)

    def backward(self, gy):
        return gy * 0.0


class Abs(Function):
    def forward(self, x):
        xp = get_array_module(x)
        return xp.abs(x)

    def backward(self, gy):
        return gy * sign(self.inputs[0])


class Tanh(Function):
    saves_inputs = False
    saves_output = True

    def forward(self, x):
        xp = get_array_module(x)
        return xp.tanh(x)

    def backward(self, gy):
        y = self.output
        return gy * (1.0 - y * y)


class Sigmoid(Function):
    saves_inputs = False
    saves_output = True

    def forward(self, x):
        xp = get_array_module(x)
        # tanh form: stable for large |x| in both directions
        half = _like(0.5, x)
        return xp.tanh(x * half) * half + half

    def backward(self, gy):
        y = self.output
        return gy * y * (1.0 - y)


def exp(x) -> Tensor:
    """e to the power x, elementwise."""
    (x,) = cast_operands("exp", x)
    return Exp()(x)


def log(x) -> Tensor:
    """Natural logarithm, elementwise."""
    (x,) = cast_operands("log", x)
    return Log()(x)


def sqrt(x) -> Tensor:
    """Square root, elementwise."""
    return Sqrt()(x)


def sign(x) -> Tensor:
    """-1, 0 or 1 by the sign of each element (zero gradient)."""
    return Sign()(x)


def abs(x) -> Tensor:  # noqa: A001 - the op's name
    """Absolute value; the gradient at 0 is 0, as in PyTorch."""
    return Abs()(x)


def tanh(x) -> Tensor:
    """Hyperbolic tangent."""
    return Tanh()(x)


def sigmoid(x) -> Tensor:
    """Logistic sigmoid 1 / (1 + exp(-x)), stable for large |x|."""
    return Sigmoid()(x)


# --------------------------------------------------------------- selects
def _mask(tensor, array) -> Tensor:
    """A constant tensor (no graph) on ``tensor``'s device, of ``tensor``'s dtype."""
    return _wrap(array.astype(tensor.dtype, copy=False), tensor.device)


class Maximum(Function):
    """Elementwise max; at ties the gradient is shared equally, as in PyTorch."""

    def forward(self, a, b):
        xp = get_array_module(a, b)
        return xp.maximum(a, b)

    def backward(self, gy):
        a, b = self.inputs
        return _select_grads(gy, a, b, a.data > b.data)


class Minimum(Function):
    """Elementwise min; at ties the gradient is shared equally, as in PyTorch."""

    def forward(self, a, b):
        xp = get_array_module(a, b)
        return xp.minimum(a, b)

    def backward(self, gy):
        a, b = self.inputs
        return _select_grads(gy, a, b, a.data < b.data)


def _select_grads(gy, a, b, a_wins):
    """Gradients of max/min: to ``a`` where it won, to ``b`` where it lost, half each on ties."""
    ties = a.data == b.data
    share_a = _mask(gy, a_wins + 0.5 * ties)
    ga = sum_to(gy * share_a, a.shape) if a.requires_grad else None
    gb = sum_to(gy * (1.0 - share_a), b.shape) if b.requires_grad else None
    return ga, gb


def maximum(a, b) -> Tensor:
    """Elementwise maximum with broadcasting."""
    return Maximum()(a, b)


def minimum(a, b) -> Tensor:
    """Elementwise minimum with broadcasting."""
    return Minimum()(a, b)


class Where(Function):
    def forward(self, condition, a, b):
        xp = get_array_module(a, b)
        # (CuPy promotes two bfloat16 operands to float32 here; keep NumPy's result dtype)
        return xp.where(condition, a, b).astype(numpy.result_type(a.dtype, b.dtype), copy=False)

    def backward(self, gy):
        condition, a, b = self.inputs
        take_a = _mask(gy, condition.data)
        ga = sum_to(gy * take_a, a.shape) if a.requires_grad else None
        gb = sum_to(gy * (1.0 - take_a), b.shape) if b.requires_grad else None
        return None, ga, gb


def where(condition, a, b) -> Tensor:
    """Pick ``a`` where ``condition`` is true, else ``b`` (all three broadcast)."""
    if isinstance(condition, Tensor):
        condition = condition.data
    xp = get_array_module(condition)
    return Where()(xp.asarray(condition, dtype=bool), a, b)


class Clip(Function):
    def __init__(self, low, high):
        self.low = low
        self.high = high

    def forward(self, x):
        xp = get_array_module(x)
        y = xp.clip(x, _like(self.low, x), _like(self.high, x))
        return y.astype(x.dtype, copy=False) if _is_float_dtype(x.dtype) else y  # ml_dtypes clips in float32

    def backward(self, gy):
        x = self.inputs[0].data
        inside = x == x  # all True, and NaN stays False
        if self.low is not None:
            inside &= x >= self.low
        if self.high is not None:
            inside &= x <= self.high
        return gy * _mask(gy, inside)


def clip(x, low=None, high=None) -> Tensor:
    """Limit values to [low, high] (either may be None); gradient 1 inside, 0 outside."""
    if low is None and high is None:
        raise ValueError("clip: give at least one of low and high")
    return Clip(low, high)(x)
