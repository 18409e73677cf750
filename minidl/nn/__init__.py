"""Modules (layers and models) and weight initializers.

The layers themselves (conv2d, linear, lrn, ...) are plugins: see
``minidl.plugins.registry("layers")`` and the ``minidl_layers`` package.
"""
from . import init
from .module import Module, Sequential

__all__ = ["Module", "Sequential", "init"]
