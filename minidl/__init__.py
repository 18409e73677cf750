"""minidl: a small, fast, plugin-based deep-learning framework.

    import minidl as mdl
    x = mdl.tensor([[1.0, 2.0]], requires_grad=True)
    y = (x * x).sum()
    y.backward()
    x.grad          # tensor([[2., 4.]])

Autograd runs on NumPy arrays on the CPU and on CuPy arrays on NVIDIA GPUs
(``device="cuda:0"``), from the same code.
"""
import numpy as _numpy

from . import amp, cpu, functions, nn, optim, random
from . import functions as F
from .backend import Device, DeviceError, cuda_available, cuda_device_count
from .creation import arange, full, ones, ones_like, zeros, zeros_like
from .errors import OpError, OpIndexError, OpTypeError, ShapeError
from .function import Function
from .functions.autocast import autocast
from .functions.conv_algorithm import (
    are_deterministic_algorithms_enabled, get_conv_algorithm, set_conv_algorithm, use_deterministic_algorithms,
)
from .hookspecs import hookimpl
from .grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .autograd import grad
from .tensor import Parameter, Tensor, as_tensor, tensor

__version__ = "0.1.0"

float16 = _numpy.dtype("float16")
float32 = _numpy.dtype("float32")
float64 = _numpy.dtype("float64")
int32 = _numpy.dtype("int32")
int64 = _numpy.dtype("int64")

__all__ = [
    "Device", "DeviceError", "F", "Function", "OpError", "OpIndexError", "OpTypeError", "Parameter",
    "ShapeError", "Tensor", "arange", "as_tensor", "cuda_available", "cuda_device_count",
    "enable_grad", "float16", "nn", "optim", "random", "grad", "float32", "hookimpl", "float64", "full", "functions", "int32", "int64",
    "is_grad_enabled", "no_grad", "ones", "ones_like", "set_grad_enabled", "tensor", "zeros",
    "zeros_like", "amp", "autocast", "cpu", "use_deterministic_algorithms", "are_deterministic_algorithms_enabled",
    "set_conv_algorithm", "get_conv_algorithm",
]


def __getattr__(name):
    # Optional parts load on first use, so `import minidl` stays light and side-effect free.
    if name == "bfloat16":
        from .backend import bfloat16

        return bfloat16()
    if name in ("save", "load"):
        from . import serialization

        return getattr(serialization, name)
    if name in ("build_model", "ModelError", "Model"):
        from . import builder

        return getattr(builder, name)
    if name in ("testing", "onnx"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'minidl' has no attribute {name!r}")
