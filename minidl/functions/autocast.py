"""Autocast: which ops run in a low precision and which in float32 -- the one place that says so.

    with mdl.autocast("bfloat16"):          # or "float16" (then scale the loss: mdl.amp.LossScaler)
        loss = F.cross_entropy(model(x), y)
    loss.backward()                          # gradients reach the float32 parameters in float32

Inside the block, as PyTorch's autocast does it:

* ``LOW_PRECISION`` ops (convolutions, fully connected layers, matrix
  products) cast their floating operands to the autocast dtype; GEMMs still
  accumulate in float32.
* ``FLOAT32`` ops (softmax and log-softmax, losses, normalization, LRN,
  reductions, exp, log and pow) cast them to float32.
* Every other op runs in its operands' dtype (NumPy promotion when they differ).

Parameters stay float32 (the master weights the optimizer updates); each
one is cast once per autocast block (a forward pass), however often it is
used. Casts are differentiable, so gradients come back in each parameter's
own dtype. The setting is process-wide (device threads of a split model see
it too) and restored when the block ends.
"""
from __future__ import annotations

import contextlib

import numpy

from ..backend import as_dtype
from ..tensor import Tensor
from .array import astype

__all__ = ["autocast", "autocast_dtype", "cast_operands", "LOW_PRECISION", "FLOAT32"]

LOW_PRECISION = frozenset({"conv2d", "linear", "matmul"})
FLOAT32 = frozenset({"softmax", "log_softmax", "cross_entropy", "local_response_norm", "batch_norm", "sum", "mean",
                     "exp", "log", "pow"})
_LOW_DTYPES = ("float16", "bfloat16")


class _State:
    dtype = None  # the autocast dtype inside a block
    casts = None  # id(tensor) -> (tensor, its cast): parameters cast once per block


_state = _State()


@contextlib.contextmanager
def autocast(dtype="bfloat16", enabled: bool = True):
    """Run the block's ops under the autocast policy above, with ``dtype`` ("bfloat16" or "float16")."""
    dtype = as_dtype(dtype)
    if dtype.name not in _LOW_DTYPES:
        raise ValueError(f"autocast: dtype must be float16 or bfloat16, got {dtype.name}")
    previous = _state.dtype, _state.casts
    if enabled:
        _state.dtype, _state.casts = dtype, {}
    try:
        yield
    finally:
        _state.dtype, _state.casts = previous


def autocast_dtype():
    """The dtype autocast runs low-precision ops in, or None outside an autocast block."""
    return _state.dtype


def cast_operands(op: str, *operands) -> tuple:
    """``operands`` as op ``op`` takes them under autocast: unchanged outside a block, for ops the lists do not
    name, and for non-floating or non-Tensor operands."""
    dtype = _state.dtype
    if dtype is None or op not in LOW_PRECISION and op not in FLOAT32:
        return operands
    target = dtype if op in LOW_PRECISION else numpy.dtype(numpy.float32)
    return tuple(_cast(x, target) for x in operands)


def _cast(x, dtype):
    if not isinstance(x, Tensor) or x.dtype == dtype or x.dtype.kind not in "fV":
        return x
    if x.creator is not None:  # an activation: cast where it is used
        return astype(x, dtype)
    cached = _state.casts.get(id(x))
    if cached is None or cached[1].dtype != dtype:
        cached = _state.casts[id(x)] = (x, astype(x, dtype))
    return cached[1]
