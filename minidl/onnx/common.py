"""What export and import share: the error type, the onnx import, the opsets and the dtypes."""
from __future__ import annotations

import importlib

import numpy

__all__ = ["OnnxError", "require_onnx", "MIN_OPSET", "DEFAULT_OPSET", "max_opset", "check_opset", "float32_array"]

MIN_OPSET = 13  # Softmax/LogSoftmax along one axis (before 13 they flattened the trailing axes)
DEFAULT_OPSET = 17


class OnnxError(ValueError):
    """A model that cannot be exported to ONNX, or an ONNX file that cannot become a minidl model.

    The message names the file, the layer or ONNX node, and the reason.
    """


def require_onnx():
    """The ``onnx`` package, or an ImportError saying how to install it."""
    try:
        return importlib.import_module("onnx")
    except ImportError as e:
        raise ImportError(f"ONNX export and import need the onnx package ({e}): "
                          "pip install 'minidl[onnx]' (onnx and onnxruntime)") from None


def max_opset() -> int:
    """The newest opset the installed onnx package knows."""
    return require_onnx().defs.onnx_opset_version()


def check_opset(opset) -> int:
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= max_opset():
        raise OnnxError(f"opset must be an integer from {MIN_OPSET} to {max_opset()} (what the installed onnx "
                        f"package knows), got {opset!r}")
    return opset


def float32_array(array):
    """``array`` (NumPy or CuPy) as a C-contiguous float32 NumPy array: the weights of an ONNX file from minidl."""
    from ..backend import CPU, transfer

    return numpy.ascontiguousarray(transfer(array, CPU), dtype=numpy.float32)
