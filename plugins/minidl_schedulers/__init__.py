"""minidl's built-in learning-rate schedulers, registered as a plugin.

All but reduce_on_plateau are closed-form in the step count (see
:class:`minidl.optim.Scheduler`), and all accept ``warmup_steps`` /
``warmup_start_factor`` for a linear warm-up first.
"""
from __future__ import annotations

import bisect
import math

import minidl
from minidl.optim import Scheduler

__all__ = ["StepLR", "MultiStepLR", "CosineLR", "LinearWarmup", "ReduceOnPlateau"]


class StepLR(Scheduler):
    """lr = initial * gamma ** (t // step_size)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, *, warmup_steps: int = 0,
                 warmup_start_factor: float = 0.1):
        if step_size < 1:
            raise ValueError(f"step: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, warmup_steps, warmup_start_factor)

    def factor(self, t):
        return self.gamma ** (t // self.step_size)


class MultiStepLR(Scheduler):
    """lr = initial * gamma ** (number of milestones <= t)."""

    def __init__(self, optimizer, milestones: list, gamma: float = 0.1, *, warmup_steps: int = 0,
                 warmup_start_factor: float = 0.1):
        self.milestones, self.gamma = sorted(int(m) for m in milestones), gamma
        super().__init__(optimizer, warmup_steps, warmup_start_factor)

    def factor(self, t):
        return self.gamma ** bisect.bisect_right(self.milestones, t)


class CosineLR(Scheduler):
    """Cosine annealing from the initial lr to ``eta_min`` over ``t_max`` steps (PyTorch's CosineAnnealingLR).

    ``t_max`` counts scheduler steps after the warm-up; left out of a model
    file's ``train.scheduler``, the trainer sets it to the rest of the run.
    """

    def __init__(self, optimizer, t_max: int | None = None, eta_min: float = 0.0, *, warmup_steps: int = 0,
                 warmup_start_factor: float = 0.1):
        if t_max is None or t_max < 1:
            raise ValueError(f"cosine: t_max must be >= 1 (the trainer fills it in when a model file omits it), "
                             f"got {t_max}")
        self.t_max, self.eta_min = t_max, eta_min
        super().__init__(optimizer, warmup_steps, warmup_start_factor)

    def lr_at(self, base_lr, t):
        return self.eta_min + (base_lr - self.eta_min) * (1.0 + math.cos(math.pi * t / self.t_max)) / 2.0


class LinearWarmup(Scheduler):
    """Linear ramp of the factor from ``start_factor`` to ``end_factor`` over ``total_steps`` (PyTorch's LinearLR)."""

    def __init__(self, optimizer, start_factor: float = 0.1, end_factor: float = 1.0, total_steps: int = 5):
        if total_steps < 1:
            raise ValueError(f"linear_warmup: total_steps must be >= 1, got {total_steps}")
        self.start_factor, self.end_factor, self.total_steps = start_factor, end_factor, total_steps
        super().__init__(optimizer)

    def factor(self, t):
        return self.start_factor + (self.end_factor - self.start_factor) * min(t, self.total_steps) / self.total_steps


class ReduceOnPlateau(Scheduler):
    """Divide the lr by 1/``factor`` (10 by default, as the AlexNet paper did) when a metric stops improving.

    ``step(metric)`` after each validation. ``mode`` "min" (a loss or an
    error) or "max" (an accuracy); improvement means better than the best
    by more than ``threshold`` (relative); after ``patience`` epochs without
    one the lr drops, then ``cooldown`` epochs pass before counting again.
    """

    needs_metric = True

    def __init__(self, optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, *, cooldown: int = 0, min_lr: float = 0.0):
        if mode not in ("min", "max") or not 0.0 < factor < 1.0:
            raise ValueError(f"reduce_on_plateau: mode must be 'min' or 'max' and 0 < factor < 1 "
                             f"(got mode={mode!r}, factor={factor})")
        self.mode, self.reduce_factor, self.patience = mode, factor, patience
        self.threshold, self.cooldown, self.min_lr = threshold, cooldown, min_lr
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_epochs = 0
        self.cooldown_left = 0
        self.reductions = 0
        super().__init__(optimizer)

    def _apply(self):
        pass  # the lr changes only on plateaus

    def improved(self, metric: float) -> bool:
        if self.mode == "min":
            return metric < self.best * (1.0 - self.threshold)
        return metric > self.best * (1.0 + self.threshold)

    def step(self, metric=None):
        if metric is None:
            raise ValueError("reduce_on_plateau: step(metric) needs the validation metric")
        metric = float(metric)
        self.last_step += 1
        if self.improved(metric):
            self.best = metric
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            for group in self.optimizer.param_groups:
                new_lr = max(group["lr"] * self.reduce_factor, self.min_lr)
                if group["lr"] - new_lr > 1e-8:
                    group["lr"] = new_lr
            self.reductions += 1
            self.cooldown_left = self.cooldown
            self.bad_epochs = 0


@minidl.hookimpl
def minidl_register_schedulers(register):
    register("step", StepLR)
    register("multistep", MultiStepLR)
    register("cosine", CosineLR)
    register("linear_warmup", LinearWarmup, aliases=("warmup",))
    register("reduce_on_plateau", ReduceOnPlateau, aliases=("plateau",))
