"""cuDNN convolutions for minidl on NVIDIA GPUs: the ``cudnn`` conv algorithm, an optional plugin.

``pip install -e ".[cudnn]"`` brings what it needs: NVIDIA's cuDNN frontend
(``nvidia-cudnn-frontend``, imported as ``cudnn``) and the cuDNN library
(``nvidia-cudnn-cu13``); CuPy and a GPU come from the ``gpu`` extra. With them,
the default rule picks ``cudnn`` for every CUDA convolution cuDNN can build
(:data:`~minidl_cudnn.conv.CUDA_PRIORITY`), and ``"auto"`` times it against
minidl's own algorithms. Without them, the algorithm stays registered but
refuses every convolution, saying why (``minidl plugins`` lists the reason),
and minidl runs as it does without this package. Importing this module never
imports ``cudnn``.

Force it like any algorithm: ``algorithm: cudnn`` on a conv2d layer,
``train: {conv_algorithm: cudnn}``, ``F.conv2d(..., algorithm="cudnn")``.
"""
import minidl

from .conv import CUDA_PRIORITY, Cudnn

__all__ = ["CUDA_PRIORITY", "Cudnn"]


@minidl.hookimpl
def minidl_register_conv_algorithms(register):
    register("cudnn", Cudnn, examples=[  # tensor-core-sized channels, grouped and strided
        {"x_shape": (2, 16, 12, 12), "w_shape": (32, 8, 3, 3), "padding": 1, "groups": 2},
        {"x_shape": (2, 8, 15, 15), "w_shape": (16, 8, 5, 5), "stride": 2, "padding": 2},
    ])
