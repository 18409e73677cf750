"""Matrix products."""
from __future__ import annotations

import numpy

from ..gemm import array_matmul
from ..errors import OpTypeError, ShapeError
from ..function import Function
from ..tensor import Tensor
from .array import reshape, sum_to, swapaxes
from .autocast import cast_operands
from .nn import activate, check_activation

__all__ = ["matmul", "linear"]


class MatMul(Function):
    """``a @ b`` with NumPy semantics: batched, broadcasting, 1-D operands promoted."""

    def forward(self, a, b):
        return array_matmul(a, b)

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
    a, b = cast_operands("matmul", a, b)
    return MatMul()(a, b)


class Linear(Function):
    """y = x @ W^T (+ b) for x (N, in), W (out, in): the fully connected layer in one op.

    Its backward gives W's gradient as gy^T @ x, already in W's layout (a
    generic matmul with a transposed operand would produce a transposed view
    that has to be copied).
    """

    def forward(self, x, W, b=None):
        y = array_matmul(x, W.T)
        if b is not None:
            y += b
        return y

    def backward(self, gy):
        x, W = self.inputs[:2]
        gx = matmul(gy, W) if x.requires_grad else None
        gW = matmul(swapaxes(gy, 0, 1), x) if W.requires_grad else None
        if len(self.inputs) == 2:
            return gx, gW
        return gx, gW, gy.sum(axis=0)


def linear(x, W, b=None, activation: str | None = None) -> Tensor:
    """Fully connected layer: ``x @ W.T + b`` with x (N, in_features), W (out_features, in_features).

    ``activation="relu"`` returns ``relu(x @ W.T + b)``, the bias add and the
    ReLU as one op (:func:`~minidl.functions.bias_relu`) working in the
    product's own memory.

    Raises :class:`minidl.ShapeError` for shapes that do not fit and
    :class:`minidl.OpTypeError` for operands of different dtypes (as PyTorch,
    no silent promotion: a float64 ``x`` with a float32 ``W`` is refused).
    """
    check_activation(activation, "linear")
    x, W, b = cast_operands("linear", x, W, b)
    if x.ndim != 2 or W.ndim != 2 or x.shape[1] != W.shape[1]:
        raise ShapeError(f"linear: expected x (N, {W.shape[-1] if W.ndim else '?'}) and W (out, in), got "
                         f"{x.shape} and {W.shape}", "linear")
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ShapeError(f"linear: bias of shape {tuple(b.shape)} does not match {W.shape[0]} outputs", "linear")
    dtypes = [x.dtype, W.dtype] + ([b.dtype] if b is not None else [])
    if any(d != W.dtype for d in dtypes):
        raise OpTypeError(f"linear: operands must have one dtype, got x {x.dtype}, W {W.dtype}"
                          + (f", b {b.dtype}" if b is not None else "")
                          + f" (convert the input with x.to({W.dtype}) or the layer with .to(dtype))", "linear")
    if activation is not None:
        return activate(Linear()(x, W), b, activation, "linear")
    return Linear()(x, W) if b is None else Linear()(x, W, b)

