"""Weight initializers: each is a callable ``init(shape, dtype, device) -> array``.

Built by name through the initializer registry (YAML ``weight_init:`` /
``bias_init:``), or directly::

    init = normal(std=0.01)          # the AlexNet paper's weights
    W = init((96, 3, 11, 11), "float32", "cpu")

Fans follow PyTorch: for a weight of shape (out, in, *kernel),
fan_in = in * prod(kernel) and fan_out = out * prod(kernel). A bias
initializer is called with ``fan_in`` of its layer's weight.
"""
from __future__ import annotations

import math

from .. import random
from ..backend import as_device

__all__ = [
    "fans", "normal", "uniform", "constant", "xavier_uniform", "xavier_normal", "kaiming_uniform",
    "kaiming_normal", "fan_in_uniform",
]


def fans(shape) -> tuple:
    """(fan_in, fan_out) of a weight shape (out, in, *kernel)."""
    if len(shape) < 2:
        n = shape[0] if shape else 1
        return n, n
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


class Initializer:
    """Base: subclasses implement ``sample(shape, dtype, device, fan_in, fan_out)``."""

    def __call__(self, shape, dtype, device, fan_in=None, fan_out=None):
        fi, fo = fans(shape)
        return self.sample(tuple(shape), dtype, device, fan_in or fi, fan_out or fo)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class normal(Initializer):
    """N(mean, std^2). ``normal(std=0.01)`` is the AlexNet paper's weight init."""

    def __init__(self, std: float = 0.01, mean: float = 0.0):
        self.std = float(std)
        self.mean = float(mean)

    def sample(self, shape, dtype, device, fan_in, fan_out):
        return random.normal(shape, self.std, dtype, device, self.mean)


class uniform(Initializer):
    """U(low, high)."""

    def __init__(self, low: float = -0.05, high: float = 0.05):
        self.low = float(low)
        self.high = float(high)

    def sample(self, shape, dtype, device, fan_in, fan_out):
        return (random.uniform(shape, dtype, device) * (self.high - self.low) + self.low).astype(dtype, copy=False)


class constant(Initializer):
    """Every element = ``value`` (the paper's bias 1 in conv2/4/5 and fc6/7; 0 elsewhere)."""

    def __init__(self, value: float = 0.0):
        self.value = float(value)

    def sample(self, shape, dtype, device, fan_in, fan_out):
        device = as_device(device)
        with device.context():
            return device.xp.full(shape, self.value, dtype=dtype)


class _Scaled(Initializer):
    def __init__(self, gain: float = 1.0):
        self.gain = float(gain)


class xavier_uniform(_Scaled):
    """Glorot & Bengio: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""

    def sample(self, shape, dtype, device, fan_in, fan_out):
        bound = self.gain * math.sqrt(6.0 / (fan_in + fan_out))
        return uniform(-bound, bound).sample(shape, dtype, device, fan_in, fan_out)


class xavier_normal(_Scaled):
    """Glorot & Bengio: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""

    def sample(self, shape, dtype, device, fan_in, fan_out):
        return random.normal(shape, self.gain * math.sqrt(2.0 / (fan_in + fan_out)), dtype, device)


class kaiming_normal(Initializer):
    """He et al.: N(0, std^2), std = sqrt(2 / fan) for ReLU (``mode`` "fan_in" or "fan_out")."""

    def __init__(self, mode: str = "fan_in", gain: float = math.sqrt(2.0)):
        if mode not in ("fan_in", "fan_out"):
            raise ValueError(f"kaiming mode must be 'fan_in' or 'fan_out', got {mode!r}")
        self.mode = mode
        self.gain = float(gain)

    def sample(self, shape, dtype, device, fan_in, fan_out):
        fan = fan_in if self.mode == "fan_in" else fan_out
        return random.normal(shape, self.gain / math.sqrt(fan), dtype, device)


class kaiming_uniform(kaiming_normal):
    """He et al.: U(-a, a), a = gain * sqrt(3 / fan)."""

    def sample(self, shape, dtype, device, fan_in, fan_out):
        fan = fan_in if self.mode == "fan_in" else fan_out
        bound = self.gain * math.sqrt(3.0 / fan)
        return uniform(-bound, bound).sample(shape, dtype, device, fan_in, fan_out)


class fan_in_uniform(Initializer):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Linear and Conv weights and biases."""

    def sample(self, shape, dtype, device, fan_in, fan_out):
        bound = 1.0 / math.sqrt(fan_in)
        return uniform(-bound, bound).sample(shape, dtype, device, fan_in, fan_out)
