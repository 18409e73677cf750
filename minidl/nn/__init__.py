"""Modules (layers and models) and weight initializers.

The layers themselves are plugins (``minidl_layers`` and any third-party
package), registered by name for model files (``conv2d``, ``linear``, ...)
and reachable here by class name, as in PyTorch::

    conv = mdl.nn.Conv2d(3, 64, kernel_size=3, padding=1)   # PyTorch's positional order
    fc = mdl.nn.Linear(out_features=10)                      # in_features learned from the first input

See ``minidl.plugins.registry("layers")`` for every registered layer.
"""
from . import init
from .module import IncompatibleKeys, Module, Sequential, StateDictKeyError

__all__ = ["IncompatibleKeys", "Module", "Sequential", "StateDictKeyError", "init"]

_KINDS = ("layers",)


def __getattr__(name):
    from ..registered import registered_class

    return registered_class(_KINDS, name, __name__)


def __dir__():
    from ..registered import registered_class_names

    return sorted(set(globals()) | set(registered_class_names(_KINDS)))
