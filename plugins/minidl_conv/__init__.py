"""minidl's convolution algorithms, registered through the public plugin API like any third-party one.

``minidl plugins`` lists them; :mod:`minidl.functions.conv_algorithm` says how one is chosen.
"""
import minidl

from .fft import FFT
from .im2col_gemm import Im2colFlip, Im2colGemm, Im2colTapFold
from .winograd import Winograd

__all__ = ["FFT", "Im2colFlip", "Im2colGemm", "Im2colTapFold", "Winograd"]


@minidl.hookimpl
def minidl_register_conv_algorithms(register):
    register("im2col_gemm", Im2colGemm)
    register("im2col_tapfold", Im2colTapFold)
    register("im2col_flip", Im2colFlip)
    register("fft", FFT, examples=[  # odd and even periods, unequal sides, wide padding
        {"x_shape": (2, 4, 13, 13), "w_shape": (6, 2, 5, 5), "padding": 2, "groups": 2},
        {"x_shape": (1, 3, 6, 9), "w_shape": (4, 3, 3, 3), "padding": 1},
        {"x_shape": (2, 2, 7, 8), "w_shape": (3, 2, 5, 3), "padding": (0, 3)},
    ])
    register("winograd", Winograd, examples=[  # beyond the shared conformance shapes: tiles of 2 to 5
        {"x_shape": (2, 4, 13, 13), "w_shape": (6, 4, 3, 3), "padding": 1},
        {"x_shape": (1, 2, 6, 6), "w_shape": (4, 2, 3, 3), "padding": 1},
        {"x_shape": (2, 4, 9, 11), "w_shape": (4, 2, 3, 3), "padding": 0, "groups": 2},
        {"x_shape": (2, 2, 27, 27), "w_shape": (3, 2, 5, 5), "padding": 2},
        {"x_shape": (1, 3, 8, 7), "w_shape": (2, 3, 5, 5), "padding": 1},
    ])
