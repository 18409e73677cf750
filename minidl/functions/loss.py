"""Loss functions."""
from __future__ import annotations

import numpy

from ..backend import elementwise_kernel, get_array_module
from ..errors import OpIndexError, OpTypeError, ShapeError
from ..function import Function
from ..grad_mode import is_grad_enabled
from ..tensor import Tensor, _wrap
from .array import astype
from .autocast import cast_operands
from .nn import log_softmax_array, softmax
from .reduction import accumulator

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
        if xp is not numpy and logits.size:  # one kernel: per-sample losses (NaN: label out of range), log-sum-exps
            losses, self.lse = _cross_entropy_cuda(logits, labels, self.smoothing)
        else:
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
        factor = 1.0 / max(n, 1) if self.reduction == "mean" else 1.0
        if xp is not numpy and logits.size and not is_grad_enabled():  # one kernel (higher orders compose ops)
            scale = gy.data.reshape(n, 1) if self.reduction == "none" else gy.data
            return _wrap(_cross_entropy_grad_cuda(logits.data, labels.data, self.lse, scale, factor,
                                                  self.smoothing), logits.device), None
        target = xp.full(logits.shape, self.smoothing / classes, dtype=logits.dtype)
        target[xp.arange(n), labels.data] += 1.0 - self.smoothing
        if self.reduction == "none":
            scale = gy.reshape(n, 1)
        else:
            scale = gy * factor if self.reduction == "mean" else gy
        return astype((softmax(logits, axis=1) - _wrap(target, logits.device)) * scale, logits.dtype), None


# CUDA: the loss is one kernel with a thread per sample (max, log-sum-exp and the picked and mean logits in
# double precision), its gradient one kernel with a thread per logit; the NumPy code above is their
# reference. A label outside [0, C) gives NaN (loss and its row's gradient) instead of a host-side check.
_CROSS_ENTROPY = """
    ptrdiff_t first[] = {i, 0};
    double mx = (double)x[first], total = 0.0, sum_exp = 0.0;
    for (int j = 1; j < C; ++j) {
        ptrdiff_t at[] = {i, j};
        mx = max(mx, (double)x[at]);
    }
    for (int j = 0; j < C; ++j) {
        ptrdiff_t at[] = {i, j};
        double v = (double)x[at];
        sum_exp += exp(v - mx);
        total += v;
    }
    double l = mx + log(sum_exp);
    lse = (W)l;
    if (label < 0 || label >= C) {
        loss = (W)__longlong_as_double(0x7ff8000000000000LL);  // NaN
    } else {
        ptrdiff_t at[] = {i, (ptrdiff_t)label};
        loss = (W)((1.0 - smoothing) * (l - (double)x[at]) + smoothing * (l - total / C));
    }
"""
_CROSS_ENTROPY_GRAD = """
    int j = i % C;
    if (label < 0 || label >= C) {
        gx = (T)__longlong_as_double(0x7ff8000000000000LL);  // NaN
    } else {
        double target = smoothing / C + (j == label ? 1.0 - smoothing : 0.0);
        gx = (T)((exp((double)x - (double)lse) - target) * (double)scale * factor);
    }
"""


def _cross_entropy_cuda(logits, labels, smoothing):
    """(per-sample losses, log-sum-exps), both (N,) in float32 (float64 for float64 logits), on a GPU."""
    xp = get_array_module(logits)
    n, classes = logits.shape
    wide = accumulator(logits.dtype) or logits.dtype
    losses, lse = xp.empty(n, dtype=wide), xp.empty(n, dtype=wide)
    elementwise_kernel("raw T x, L label, int32 C, float64 smoothing", "W loss, W lse", _CROSS_ENTROPY,
                       "minidl_cross_entropy")(logits, labels, numpy.int32(classes), smoothing, losses, lse)
    return losses, lse


def _cross_entropy_grad_cuda(logits, labels, lse, scale, factor, smoothing):
    """d loss / d logits on a GPU: (softmax - target) * scale * factor, scale a device array (no host read)."""
    xp = get_array_module(logits)
    n, classes = logits.shape
    gx = xp.empty(logits.shape, dtype=logits.dtype)
    elementwise_kernel("T x, L label, W lse, S scale, float64 factor, float64 smoothing, int32 C", "T gx",
                       _CROSS_ENTROPY_GRAD, "minidl_cross_entropy_grad")(
        logits, labels.reshape(n, 1), lse.reshape(n, 1), scale, factor, smoothing, numpy.int32(classes), gx)
    return gx


def cross_entropy(logits, labels, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy between ``softmax(logits)`` and integer class labels.

    Stable for large logits (log-sum-exp with the max subtracted).

    Args:
        logits: (N, C) unnormalised scores.
        labels: (N,) integers in [0, C). One outside that range raises on the CPU; on a GPU, where a
            check would wait for the device, that sample's loss (so a mean or sum) is NaN instead.
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
