"""The Function base class: one differentiable op, forward and backward side by side.

Write an op by subclassing :class:`Function`::

    class Exp(Function):
        def forward(self, x):                 # arrays in, arrays out
            xp = get_array_module(x)
            return xp.exp(x)

        def backward(self, gy):               # Tensors in, Tensors out
            y = self.output                   # the Tensor forward produced
            return gy * y                     # differentiable ops only

    def exp(x):
        return Exp()(x)

``forward`` works on raw NumPy/CuPy arrays. ``backward`` receives the
upstream gradients as Tensors and must return one gradient Tensor (or None)
per input, built from minidl ops, so the same formula serves ordinary
backward (run under ``no_grad``, no graph is built) and double backward
(``create_graph=True``). Inputs are available as ``self.inputs`` (Tensors).
"""
from __future__ import annotations

import weakref

import numpy

from . import backend
from .errors import op_error
from .grad_mode import _mode
from .tensor import Tensor, _is_float_dtype, _wrap

__all__ = ["Function"]


class Function:
    """Base class of every differentiable op. See the module docstring."""

    generation = 0
    inputs = None  # tuple of input Tensors while the op is recorded
    outputs = None  # tuple of weak references to the output Tensors
    output_meta = None  # [(shape, dtype, device)] for multi-output ops
    output_device = None  # set by ops whose outputs live elsewhere than their inputs
    mixed_devices = False  # True for ops whose operands may live on several devices (device-split layers)
    output_devices = None  # with mixed_devices: the device of each output

    def __call__(self, *inputs):
        device = None
        for x in inputs:
            if isinstance(x, Tensor):
                device = x.device
                ref_dtype = x.data.dtype
                break
        else:
            raise TypeError(f"{self.name}: at least one operand must be a Tensor")
        tensors = []
        for x in inputs:
            if isinstance(x, Tensor):
                if x.device is not device and x.device != device and not self.mixed_devices:
                    raise backend.DeviceError(
                        f"{self.name}: operands are on different devices ({device} and {x.device}); "
                        "move one with .to(device) first"
                    )
            else:
                x = _constant(x, device, ref_dtype, self)
            tensors.append(x)
        arrays = [x.data for x in tensors]
        try:
            if device.type == "cuda":
                with device.context():
                    ys = self.forward(*arrays)
            else:
                ys = self.forward(*arrays)
        except (ValueError, TypeError, IndexError) as e:
            raise op_error(self.name, e, arrays) from None
        if not isinstance(ys, tuple):
            ys = (ys,)
        out_devices = self.output_devices or [self.output_device or device] * len(ys)
        outputs = [_wrap(y if not isinstance(y, numpy.generic) else numpy.asarray(y), d) for y, d in zip(ys, out_devices)]
        record = False
        if _mode.enabled and _is_float_dtype(outputs[0].data.dtype):
            for x in tensors:
                if x.requires_grad:
                    record = True
                    break
        if record:
            self._record(tensors, outputs)
        else:
            self.release()  # no backward will come: drop what forward kept for it (e.g. im2col buffers)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _record(self, inputs, outputs):
        self.generation = max(x.creator.generation if x.creator is not None else 0 for x in inputs) + 1
        self.inputs = tuple(inputs)
        for y in outputs:
            y.creator = self
            y.requires_grad = True
        self.outputs = tuple(weakref.ref(y) for y in outputs)
        if len(outputs) > 1:
            self.output_meta = [(y.shape, y.dtype, y.device) for y in outputs]

    @property
    def name(self) -> str:
        """The op's name in error messages (the class name by default)."""
        return type(self).__name__.lower()

    @property
    def output(self) -> Tensor:
        """The single output Tensor (for backward formulas that reuse it, like exp)."""
        return self.outputs[0]()

    def forward(self, *xs):
        """Compute the outputs from input arrays (NumPy or CuPy)."""
        raise NotImplementedError

    def backward(self, *gys):
        """Return the gradient of each input (a Tensor or None) from the outputs' gradients."""
        raise NotImplementedError(f"{type(self).__name__} is not differentiable")

    def release(self) -> None:
        """Drop whatever the op saved for backward (when the graph is freed, or was never recorded)."""


def _constant(value, device, ref_dtype, op) -> Tensor:
    """Turn a Python number or array operand into a constant Tensor on ``device``."""
    if isinstance(value, (bool, int, float)) and _is_float_dtype(ref_dtype):
        array = numpy.asarray(value, dtype=ref_dtype)
    elif isinstance(value, (bool, int, float, complex, list, tuple, numpy.ndarray, numpy.generic)):
        array = numpy.asarray(value)
    elif hasattr(value, "dtype") and hasattr(value, "shape") and backend.device_of_array(value) == device:
        return _wrap(value, device)
    else:
        raise TypeError(
            f"{op.name}: cannot use an operand of type {type(value).__name__} "
            f"(expected a Tensor, an array or a number on {device})"
        )
    return _wrap(backend.transfer(array, device), device)
