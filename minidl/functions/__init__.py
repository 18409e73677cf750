"""Differentiable ops, one family per module.

Import as ``import minidl.functions as F`` (also available as ``minidl.F``)::

    F.relu(x), F.matmul(a, b), F.sum(x, axis=1), F.cross_entropy(logits, labels)

Importing this package also gives :class:`minidl.Tensor` its operators
(``+ - * / ** @``, indexing) and methods (``x.sum()``, ``x.reshape(...)``),
see :mod:`minidl.functions.tensor_methods`.
"""
from . import conv, normalization, pooling
from .array import (
    astype, broadcast_to, concatenate, expand_dims, flatten, getitem, pad, permute, reshape,
    split, squeeze, stack, sum_to, swapaxes, to_device, transpose,
)
from .conv import conv2d
from .conv_algorithm import ConvAlgorithm, ConvProblem
from .linalg import linear, matmul
from .loss import cross_entropy
from .math import (
    abs, add, clip, div, exp, log, maximum, minimum, mul, neg, pow, sigmoid, sign, sqrt, sub, tanh,
    where,
)
from .nn import bias_relu, log_softmax, relu, softmax
from .normalization import batch_norm, local_response_norm
from .pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .stochastic import dropout
from .reduction import max, mean, min, sum
from .tensor_methods import attach_tensor_methods
from .window import Window, conv_output_size

attach_tensor_methods()

__all__ = [
    "ConvAlgorithm", "ConvProblem", "Window", "conv_output_size",
    "adaptive_avg_pool2d", "avg_pool2d", "batch_norm", "conv2d", "dropout", "local_response_norm", "max_pool2d",
    "abs", "add", "astype", "bias_relu", "broadcast_to", "clip", "concatenate", "cross_entropy", "div", "exp",
    "expand_dims", "flatten", "getitem", "linear", "log", "log_softmax", "matmul", "max", "maximum", "mean",
    "min", "minimum", "mul", "neg", "pad", "permute", "pow", "relu", "reshape", "sigmoid", "sign",
    "softmax", "split", "sqrt", "squeeze", "stack", "sub", "sum", "sum_to", "swapaxes", "tanh",
    "to_device", "transpose", "where",
]
