"""Tools for testing autograd code: gradient checks and hypothesis strategies.

    from minidl.testing import gradcheck, gradgradcheck
    gradcheck(my_fn, [x64])                  # float64 inputs: eps 1e-6, atol 1e-5, rtol 1e-3
    check_layer(MyLayer(), (2, 3, 8, 8))     # input and every parameter of a Module
    from minidl.testing import strategies    # needs hypothesis (pip install 'minidl[test]')

Plugin authors can check any layer or op the same way minidl checks its own.
"""
from .gradcheck import GradcheckError, gradcheck, gradgradcheck, tolerances
from .layers import check_layer, functional_call

__all__ = [
    "GradcheckError", "check_layer", "functional_call", "gradcheck", "gradgradcheck", "strategies", "tolerances",
]


def __getattr__(name):
    if name == "strategies":  # imports hypothesis, a test-only dependency
        import importlib

        return importlib.import_module(".strategies", __name__)
    raise AttributeError(f"module 'minidl.testing' has no attribute {name!r}")
