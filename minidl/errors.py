"""Error types raised by ops, so users see the op and the operands, not NumPy internals."""
from __future__ import annotations

from .backend import DeviceError

__all__ = [
    "OpError", "ShapeError", "OpTypeError", "OpIndexError", "DeviceError", "describe_operands", "annotate_layer_error",
    "prefix_message",
]


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


def prefix_message(error: BaseException, prefix: str) -> None:
    """Put ``prefix`` in front of ``error``'s message, in place: its type, fields and traceback stay."""
    if len(error.args) == 1 and isinstance(error.args[0], str):
        error.args = (prefix + error.args[0],)
    elif hasattr(error, "add_note"):  # an exception with structured args (OSError, ...): a note instead
        error.add_note(prefix.rstrip(": "))


def annotate_layer_error(error: BaseException, name: str, type_name: str, index: int, inputs,
                         source: str | None = None) -> None:
    """Say in ``error`` which layer of a model raised it and on what input shapes.

    The exception keeps its type and fields (a ShapeError stays a ShapeError
    with its ``op``) and gains ``layer_name``, ``layer_type``, ``layer_index``
    and ``input_shapes``; its message starts with, e.g.,
    ``layer 7 'fc6' (linear, models/alexnet.yaml), input shape (2, 576): ``.
    The innermost layer wins when models are nested.
    """
    if getattr(error, "layer_name", None) is not None:
        return
    shapes = [tuple(getattr(x, "shape", ())) for x in inputs]
    where = f"layer {index} {name!r} ({type_name}{', ' + source if source else ''})"
    noun = "shapes" if len(shapes) > 1 else "shape"
    try:
        error.layer_name, error.layer_type, error.layer_index, error.input_shapes = name, type_name, index, shapes
    except AttributeError:  # an exception type that takes no attributes: the message still says it
        pass
    prefix_message(error, f"{where}, input {noun} {' and '.join(map(str, shapes))}: ")
