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
from .tensor import DEFAULT_DTYPE, Tensor, _is_float_dtype, _share_version, _wrap

__all__ = ["Function"]

_FLOAT64 = numpy.dtype(numpy.float64)


class Function:
    """Base class of every differentiable op. See the module docstring."""

    generation = 0
    inputs = None  # tuple of input Tensors while the op is recorded
    outputs = None  # tuple of weak references to the output Tensors
    output_meta = None  # [(shape, dtype, device)] for multi-output ops
    output_device = None  # set by ops whose outputs live elsewhere than their inputs
    mixed_devices = False  # True for ops whose operands may live on several devices (device-split layers)
    output_devices = None  # with mixed_devices: the device of each output
    # What backward reads, so a value modified in place in between is caught (see minidl.autograd):
    saves_inputs = True  # the inputs' values (False for ops that need only their shapes: add, reshape, ...)
    saves_output = False  # the output's values (exp, tanh, relu, ...)
    returns_view = False  # forward may return a view of its first input, which then shares its version counter
    keeps_dtype = False  # True for ops whose output dtype is the point (astype): exempt from the float32 default
    wraps_errors = True  # NumPy's errors in forward become OpErrors naming the op (False: raised as they are)
    input_versions = output_versions = None  # recorded versions, only where some were not 0 (None: all were 0)

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
            if not self.wraps_errors:
                raise
            raise op_error(self.name, e, arrays) from None
        if not isinstance(ys, tuple):
            ys = (ys,)
        if ys[0].dtype is _FLOAT64 and not self.keeps_dtype:  # (NumPy's native dtypes are singletons)
            ys = _no_float64_from(arrays, ys)
        out_devices = self.output_devices or [self.output_device or device] * len(ys)
        outputs = [_wrap(y if not isinstance(y, numpy.generic) else numpy.asarray(y), d) for y, d in zip(ys, out_devices)]
        if self.returns_view:
            x = arrays[0]
            for y in outputs:
                base = y.data.base  # a view's base is the array owning the memory (NumPy and CuPy)
                if base is not None and (base is x or base is x.base):
                    _share_version(tensors[0], y)
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
        if self.saves_inputs:  # tensors never modified in place have no counter (version 0): nothing to store
            for x in inputs:
                if x._vc is not None:
                    self.input_versions = tuple(t._version for t in inputs)
                    break
        if self.saves_output:
            for y in outputs:
                if y._vc is not None:
                    self.output_versions = tuple(t._version for t in outputs)
                    break

    def check_saved_versions(self) -> None:
        """Raise if a tensor this op's backward reads was modified in place after the op ran (as PyTorch does)."""
        saved = []
        if self.saves_inputs:
            versions = self.input_versions or (0,) * len(self.inputs)
            saved += [(x, v, f"input {i}") for i, (x, v) in enumerate(zip(self.inputs, versions))]
        if self.saves_output:
            versions = self.output_versions or (0,) * len(self.outputs)
            saved += [(ref(), v, f"output {i}") for i, (ref, v) in enumerate(zip(self.outputs, versions))]
        for t, version, role in saved:
            if t is not None and t._version != version:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by an inplace "
                    f"operation: [{t.dtype} tensor of shape {t.shape}], which is {role} of {self.name}, is at "
                    f"version {t._version}; expected version {version} instead. Hint: compute a new tensor "
                    "(y = y * 2) instead of modifying it in place (y *= 2), or do the in-place change after backward."
                )

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


def _no_float64_from(arrays, ys):
    """Outputs cast down to the widest floating input dtype (float32 when none is floating).

    NumPy computes int64 * 0.5, an int mean or int / int in float64; PyTorch
    gives the default float dtype, and so does minidl: float64 appears only
    where an operand is float64.
    """
    widest = None
    for a in arrays:
        dtype = a.dtype
        if dtype.kind in "fV" and (widest is None or dtype.itemsize > widest.itemsize):
            widest = dtype
    target = DEFAULT_DTYPE if widest is None else widest
    if target is _FLOAT64:
        return ys
    return tuple(y.astype(target) if y.dtype is _FLOAT64 else y for y in ys)


def _constant(value, device, ref_dtype, op) -> Tensor:
    """Turn a Python number or array operand into a constant Tensor on ``device``.

    A number (Python's or a NumPy scalar) takes a floating tensor's dtype, as
    in PyTorch: ``x * 0.5`` stays float32 for a float32 ``x``.
    """
    is_number = isinstance(value, (bool, int, float)) or (
        isinstance(value, numpy.generic) and value.dtype.kind in "biuf")
    if is_number and _is_float_dtype(ref_dtype):
        array = numpy.asarray(value, dtype=ref_dtype)
    elif isinstance(value, (float, numpy.floating)):  # a float with an integer tensor: the default float dtype
        array = numpy.asarray(value, dtype=DEFAULT_DTYPE)
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
