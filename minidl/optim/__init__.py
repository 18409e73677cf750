"""Base classes for optimizer and scheduler plugins (sgd, adam, step, cosine, ... are plugins)."""
from .optimizer import Optimizer
from .scheduler import Scheduler

__all__ = ["Optimizer", "Scheduler"]
