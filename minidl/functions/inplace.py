"""In-place updates of a tensor's own data: ``+=  -=  *=  /=``, ``add_``, ``sub_``, ``mul_``, ``div_``,
``zero_``, ``fill_``, ``copy_``.

They change ``x.data`` itself (every reference to ``x`` sees the new values)
wherever no gradient can be affected, which is PyTorch's rule too:

- under ``no_grad()`` (an optimizer step: ``p -= lr * p.grad``), or
- on a tensor that does not require grad, updated with operands that do not.

Elsewhere they refuse, never rebinding the name silently: a leaf that
requires grad with PyTorch's own message, and a tensor that is part of the
graph because minidl records ops on new tensors only (write ``y = y + z``).
Each update bumps the tensor's version counter (shared with its views); a
Function that saved the old value then refuses to run backward with it (see
:meth:`minidl.Function.check_saved_versions`).
"""
from __future__ import annotations

import numpy

from .. import backend
from ..errors import OpTypeError, ShapeError
from ..grad_mode import _mode
from ..tensor import DEFAULT_DTYPE, Tensor

__all__ = ["add_", "sub_", "mul_", "div_", "zero_", "fill_", "copy_", "INPLACE_METHODS"]


def _check_allowed(x: Tensor, other, op: str) -> None:
    if not _mode.enabled:
        return
    if x.requires_grad:
        if x.creator is None:
            raise RuntimeError(
                "a leaf Variable that requires grad is being used in an in-place operation. "
                f"({op} on a tensor of shape {x.shape}; update parameters inside `with mdl.no_grad():`, "
                "as an optimizer step does)"
            )
        raise RuntimeError(
            f"{op}: this tensor is part of the autograd graph (it was computed from tensors that require grad), "
            "and minidl records ops on new tensors only, so it cannot be modified in place; write the "
            "out-of-place form (y = y + z), or modify it under `with mdl.no_grad():` if no gradient should flow"
        )
    if isinstance(other, Tensor) and other.requires_grad:
        raise RuntimeError(
            f"{op}: the operand requires grad but the tensor updated in place does not, so the result could not "
            "carry a gradient; write the out-of-place form (y = y + z), or update under `with mdl.no_grad():`"
        )


def _operand(x: Tensor, other, op: str):
    """``other``'s array (or number) on ``x``'s device."""
    if isinstance(other, Tensor):
        if other.device != x.device:
            raise backend.DeviceError(f"{op}: operands are on different devices ({x.device} and {other.device}); "
                                      "move one with .to(device) first")
        return other.data
    if hasattr(other, "dtype") and hasattr(other, "shape"):
        return backend.transfer(other, x.device)
    return other


def _bump(x: Tensor) -> Tensor:
    if x._vc is None:
        x._vc = [1]
    else:
        x._vc[0] += 1
    return x


def _update(x: Tensor, ufunc: str, other, op: str) -> Tensor:
    _check_allowed(x, other, op)
    value = _operand(x, other, op)
    xp = x.device.xp
    try:
        with x.device.context():
            getattr(xp, ufunc)(x.data, value, out=x.data)
    except TypeError:  # the result's dtype cannot be written into x (int tensor *= 0.5)
        other = _dtype_of(value)  # minidl's promotion, as PyTorch's: an int and a float give the float's dtype
        result = other if x.dtype.kind in "biu" and other.kind in "fV" else numpy.result_type(x.dtype, other)
        if result.kind in "biu" and ufunc == "true_divide":
            result = DEFAULT_DTYPE
        raise OpTypeError(f"{op}: result type {result} can't be cast to the desired output type {x.dtype}",
                          op) from None
    except ValueError as e:
        raise _value_error(x, value, op, e) from None
    return _bump(x)


def _dtype_of(value):
    """The dtype an operand has in minidl's promotion rules (a Python float is the default float dtype)."""
    if isinstance(value, float):
        return DEFAULT_DTYPE
    dtype = getattr(value, "dtype", None)
    return numpy.asarray(value).dtype if dtype is None else dtype


def _value_error(x, value, op, error):
    if "read-only" in str(error):
        return RuntimeError(f"{op}: the tensor's data is read-only (a broadcast view: more than one element refers "
                            "to a single memory location); clone() it before modifying it in place")
    try:
        broadcast = numpy.broadcast_shapes(x.shape, tuple(getattr(value, "shape", ())))
    except ValueError:
        broadcast = None
    if broadcast is None:
        return ShapeError(f"{op}: operand of shape {tuple(getattr(value, 'shape', ()))} does not broadcast to the "
                          f"tensor's shape {x.shape}", op)
    return ShapeError(f"{op}: output with shape {x.shape} doesn't match the broadcast shape {broadcast}", op)


def add_(x: Tensor, other, alpha=1) -> Tensor:
    """``x += alpha * other`` in place; returns ``x``."""
    if alpha != 1:
        _check_allowed(x, other, "add_")  # before the operand becomes a bare array
        other = _operand(x, other, "add_") * alpha
    return _update(x, "add", other, "add_")


def sub_(x: Tensor, other, alpha=1) -> Tensor:
    """``x -= alpha * other`` in place; returns ``x``."""
    return add_(x, other, -alpha) if alpha != 1 else _update(x, "subtract", other, "sub_")


def mul_(x: Tensor, other) -> Tensor:
    """``x *= other`` in place; returns ``x``."""
    return _update(x, "multiply", other, "mul_")


def div_(x: Tensor, other) -> Tensor:
    """``x /= other`` in place; returns ``x``."""
    return _update(x, "true_divide", other, "div_")


def fill_(x: Tensor, value) -> Tensor:
    """Set every element to ``value``; returns ``x``."""
    _check_allowed(x, None, "fill_")
    try:
        with x.device.context():
            x.data.fill(value)
    except ValueError as e:
        raise _value_error(x, value, "fill_", e) from None
    return _bump(x)


def zero_(x: Tensor) -> Tensor:
    """Set every element to 0; returns ``x``."""
    return fill_(x, 0)


def copy_(x: Tensor, src) -> Tensor:
    """Copy ``src``'s values into ``x`` (broadcast to ``x``'s shape, cast to its dtype, moved to its device)."""
    _check_allowed(x, src, "copy_")
    value = backend.transfer(src.data, x.device) if isinstance(src, Tensor) else _operand(x, src, "copy_")
    try:
        with x.device.context():
            x.device.xp.copyto(x.data, value, casting="unsafe")
    except ValueError as e:
        raise _value_error(x, value, "copy_", e) from None
    return _bump(x)


INPLACE_METHODS = {
    "add_": add_, "sub_": sub_, "mul_": mul_, "div_": div_, "fill_": fill_, "zero_": zero_, "copy_": copy_,
    "__iadd__": add_, "__isub__": sub_, "__imul__": mul_, "__itruediv__": div_,
}
