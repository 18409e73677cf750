"""Differentiable ops, one family per module.

Import as ``import minidl.functions as F`` (also available as ``minidl.F``)::

    F.relu(x), F.matmul(a, b), F.sum(x, axis=1), F.cross_entropy(logits, labels)

Importing this package also gives :class:`minidl.Tensor` its operators
(``+ - * / ** @``, indexing) and methods (``x.sum()``, ``x.reshape(...)``),
see :mod:`minidl.functions.tensor_methods`.
"""
from .array import (
    astype, broadcast_to, concatenate, expand_dims, flatten, getitem, pad, permute, reshape,
    split, squeeze, stack, sum_to, swapaxes, to_device, transpose,
)
from .linalg import matmul
from .loss import cross_entropy
from .math import (
    abs, add, clip, div, exp, log, maximum, minimum, mul, neg, pow, sigmoid, sign, sqrt, sub, tanh,
    where,
)
from .nn import log_softmax, relu, softmax
from .reduction import max, mean, min, sum
from .tensor_methods import attach_tensor_methods

attach_tensor_methods()

__all__ = [
    "abs", "add", "astype", "broadcast_to", "clip", "concatenate", "cross_entropy", "div", "exp",
    "expand_dims", "flatten", "getitem", "log", "log_softmax", "matmul", "max", "maximum", "mean",
    "min", "minimum", "mul", "neg", "pad", "permute", "pow", "relu", "reshape", "sigmoid", "sign",
    "softmax", "split", "sqrt", "squeeze", "stack", "sub", "sum", "sum_to", "swapaxes", "tanh",
    "to_device", "transpose", "where",
]
