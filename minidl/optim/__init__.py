"""Base classes for optimizer and scheduler plugins, and the registered ones by class name.

    opt = mdl.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = mdl.optim.lr_scheduler.StepLR(opt, step_size=30)   # also mdl.optim.StepLR

sgd, adam, step, cosine, ... are plugins (``minidl_optim``, ``minidl_schedulers``).
"""
from .optimizer import Optimizer
from .scheduler import Scheduler

__all__ = ["Optimizer", "Scheduler", "lr_scheduler"]

_KINDS = ("optimizers", "schedulers")


def __getattr__(name):
    if name == "lr_scheduler":
        import importlib

        return importlib.import_module(".lr_scheduler", __name__)
    from ..registered import registered_class

    return registered_class(_KINDS, name, __name__)


def __dir__():
    from ..registered import registered_class_names

    return sorted(set(globals()) | {"lr_scheduler"} | set(registered_class_names(_KINDS)))
