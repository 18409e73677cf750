"""Matrix products."""
from __future__ import annotations

import numpy

from ..backend import get_array_module
from ..function import Function
from ..tensor import Tensor
from .array import reshape, sum_to, swapaxes

__all__ = ["matmul"]


class MatMul(Function):
    """``a @ b`` with NumPy semantics: batched, broadcasting, 1-D operands promoted."""

    def forward(self, a, b):
        xp = get_array_module(a, b)
        # ml_dtypes returns float32 for bfloat16 operands; keep the operands' dtype
        return xp.matmul(a, b).astype(xp.result_type(a, b), copy=False)

    def backward(self, gy):
        a, b = self.inputs
        # Promote 1-D operands the way matmul does, so one formula covers every case:
        # a2 (..., m, k) @ b2 (..., k, n) -> gy2 (..., m, n).
        a2 = reshape(a, (1,) + a.shape) if a.ndim == 1 else a
        b2 = reshape(b, b.shape + (1,)) if b.ndim == 1 else b
        batch = numpy.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        gy2 = reshape(gy, batch + (a2.shape[-2], b2.shape[-1]))
        ga = gb = None
        if a.requires_grad:
            ga = reshape(sum_to(matmul(gy2, swapaxes(b2, -1, -2)), a2.shape), a.shape)
        if b.requires_grad:
            gb = reshape(sum_to(matmul(swapaxes(a2, -1, -2), gy2), b2.shape), b.shape)
        return ga, gb


def matmul(a, b) -> Tensor:
    """Matrix product ``a @ b`` (batched and broadcasting over leading axes)."""
    return MatMul()(a, b)
