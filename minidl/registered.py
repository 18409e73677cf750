"""Registered plugin classes by their class name: ``mdl.nn.Conv2d``, ``mdl.optim.SGD``, ``mdl.optim.StepLR``.

Layers, optimizers and schedulers are plugins, above ``minidl.nn`` and
``minidl.optim`` in the import order, so those packages find them through the
registries on first use (a module ``__getattr__``) instead of importing them.
A third-party plugin's class is found the same way (``mdl.nn.Swish``).
"""
from __future__ import annotations

import inspect

__all__ = ["registered_class", "registered_class_names"]


def _classes(kinds):
    from .plugins import registry

    for kind in kinds:
        for entry in registry(kind).entries.values():
            if inspect.isclass(entry.factory):
                yield entry


def registered_class(kinds, name: str, namespace: str):
    """The class called ``name`` registered under one of ``kinds``, or AttributeError as a module gives."""
    if name[:1].isupper():
        found = {}
        for entry in _classes(kinds):
            if entry.factory.__name__ == name:
                found.setdefault(entry.factory, entry)
        if len(found) == 1:
            return next(iter(found))
        if len(found) > 1:
            providers = " and ".join(entry.plugin.provider for entry in found.values())
            raise AttributeError(f"{namespace}.{name} is ambiguous: classes of that name are registered by "
                                 f"{providers}; use minidl.plugins.registry(...) with the registered name instead")
    raise AttributeError(f"module {namespace!r} has no attribute {name!r}")


def registered_class_names(kinds) -> list:
    return sorted({entry.factory.__name__ for entry in _classes(kinds)})
