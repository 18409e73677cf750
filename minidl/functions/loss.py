"""Loss functions."""
from __future__ import annotations

import numpy

from ..backend import get_array_module
from ..errors import OpIndexError, OpTypeError, ShapeError
from ..function import Function
from ..tensor import Tensor, _wrap
from .array import astype
from .autocast import cast_operands
from .nn import log_softmax_array, softmax

__all__ = ["cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


class CrossEntropy(Function):
    """Softmax cross-entropy of logits (N, C) against integer class labels (N,), the target optionally
    smoothed: (1 - s) on the label and s / C on every class."""

    def __init__(self, reduction, label_smoothing=0.0):
        self.reduction = reduction
        self.smoothing = label_smoothing

    def forward(self, logits, labels):
        xp = get_array_module(logits)
        n = logits.shape[0]
        log_probs = log_softmax_array(logits, axis=1, keep_wide=True)  # float32 for float16/bfloat16 logits
        losses = -log_probs[xp.arange(n), labels]
        if self.smoothing:
            losses *= 1.0 - self.smoothing
            losses -= self.smoothing * log_probs.mean(axis=1)
        if self.reduction == "mean":
            losses = losses.mean() if n else losses.sum()
        elif self.reduction == "sum":
            losses = losses.sum()
        return losses.astype(logits.dtype, copy=False)  # reduced in float32 for float16/bfloat16 logits

    def backward(self, gy):
        logits, labels = self.inputs
        xp = get_array_module(logits.data)
        n, classes = logits.shape
        target = xp.full(logits.shape, self.smoothing / classes, dtype=logits.dtype)
        target[xp.arange(n), labels.data] += 1.0 - self.smoothing
        if self.reduction == "none":
            scale = gy.reshape(n, 1)
        elif self.reduction == "mean":
            scale = gy * (1.0 / max(n, 1))
        else:
            scale = gy
        return astype((softmax(logits, axis=1) - _wrap(target, logits.device)) * scale, logits.dtype), None


def cross_entropy(logits, labels, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy between ``softmax(logits)`` and integer class labels.

    Stable for large logits (log-sum-exp with the max subtracted).

    Args:
        logits: (N, C) unnormalised scores.
        labels: (N,) integers in [0, C).
        reduction: "mean" (default), "sum" or "none" (per-sample losses).
        label_smoothing: s in [0, 1): the target puts 1 - s on the label and s / C on every class
            (as PyTorch's ``label_smoothing``).

    float16 and bfloat16 logits are reduced in float32 and the loss rounded to their dtype once (under
    :func:`minidl.autocast` the logits, and so the loss, are float32).

    >>> loss = cross_entropy(model(x), y)
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    label_array = labels.data if isinstance(labels, Tensor) else labels
    (logits,) = cast_operands("cross_entropy", logits)
    if logits.ndim != 2:
        raise ShapeError(f"cross_entropy: logits must be (N, C), got shape {logits.shape}", "cross_entropy")
    xp = get_array_module(logits.data)
    label_array = xp.asarray(label_array) if xp is not numpy else numpy.asarray(label_array)
    if label_array.dtype.kind not in "iu":
        raise OpTypeError(
            f"cross_entropy: labels must be integers (class indices), got dtype {label_array.dtype}", "cross_entropy"
        )
    if label_array.shape != (logits.shape[0],):
        raise ShapeError(
            f"cross_entropy: labels of shape {label_array.shape} do not match logits of shape {logits.shape} "
            f"(expected ({logits.shape[0]},))",
            "cross_entropy",
        )
    if xp is numpy and label_array.size:  # on a GPU this check would stall the stream
        low, high = int(label_array.min()), int(label_array.max())
        if low < 0 or high >= logits.shape[1]:
            raise OpIndexError(
                f"cross_entropy: label {low if low < 0 else high} is out of range for {logits.shape[1]} classes",
                "cross_entropy",
            )
    return CrossEntropy(reduction, float(label_smoothing))(logits, label_array)
