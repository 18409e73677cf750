"""The registered learning-rate schedulers by class name, where PyTorch has them: ``mdl.optim.lr_scheduler.StepLR``."""
from .scheduler import Scheduler

__all__ = ["Scheduler"]

_KINDS = ("schedulers",)


def __getattr__(name):
    from ..registered import registered_class

    return registered_class(_KINDS, name, __name__)


def __dir__():
    from ..registered import registered_class_names

    return sorted(set(globals()) | set(registered_class_names(_KINDS)))
