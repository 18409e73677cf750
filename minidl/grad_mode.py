"""Whether ops record a graph for backward: ``no_grad()`` and ``enable_grad()``.

The switch is per thread, as in PyTorch, so device threads of a split model
each keep their own.
"""
from __future__ import annotations

import functools
import threading

__all__ = ["no_grad", "enable_grad", "is_grad_enabled", "set_grad_enabled"]


class _GradMode(threading.local):
    enabled = True


_mode = _GradMode()


def is_grad_enabled() -> bool:
    """True when new ops are recorded for backward."""
    return _mode.enabled


class set_grad_enabled:
    """Turn graph recording on or off inside a ``with`` block or a decorated function.

    >>> with set_grad_enabled(False):
    ...     y = model(x)          # no graph, no saved inputs
    """

    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)
        self._previous = []

    def __enter__(self):
        self._previous.append(_mode.enabled)
        _mode.enabled = self.enabled
        return self

    def __exit__(self, *exc):
        _mode.enabled = self._previous.pop()
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with set_grad_enabled(self.enabled):
                return fn(*args, **kwargs)

        return wrapper


class no_grad(set_grad_enabled):
    """Run without recording a graph: ``with mdl.no_grad(): ...`` or ``@mdl.no_grad()``."""

    def __init__(self):
        super().__init__(False)


class enable_grad(set_grad_enabled):
    """Record a graph again inside a ``no_grad`` block."""

    def __init__(self):
        super().__init__(True)
