"""Error types raised by ops, so users see the op and the operands, not NumPy internals."""
from __future__ import annotations

from .backend import DeviceError

__all__ = ["OpError", "ShapeError", "OpTypeError", "OpIndexError", "DeviceError", "describe_operands"]


class OpError(Exception):
    """Base class for an op that refused its operands; ``.op`` names the op."""

    def __init__(self, message: str, op: str | None = None):
        super().__init__(message)
        self.op = op


class ShapeError(OpError, ValueError):
    """Operand shapes do not fit the op (broadcasting, matmul, reshape, axis...)."""


class OpTypeError(OpError, TypeError):
    """Operand dtypes or Python types do not fit the op."""


class OpIndexError(OpError, IndexError):
    """An index is out of range for the operand."""


def describe_operands(arrays) -> str:
    """'shapes (2, 3) and (4,), dtypes float32 and float32' for an error message."""
    shapes = " and ".join(str(tuple(getattr(a, "shape", ()))) for a in arrays)
    dtypes = " and ".join(str(getattr(a, "dtype", type(a).__name__)) for a in arrays)
    noun = "s" if len(arrays) > 1 else ""
    return f"shape{noun} {shapes}, dtype{noun} {dtypes}"


def op_error(op: str, error: Exception, arrays) -> OpError:
    """Translate an exception raised inside an op's forward into an OpError."""
    message = f"{op}: {error} (operands: {describe_operands(arrays)})"
    if isinstance(error, TypeError):
        return OpTypeError(message, op)
    if isinstance(error, IndexError) and not isinstance(error, ValueError):
        return OpIndexError(message, op)
    return ShapeError(message, op)
