"""Scheduler: the base class of learning-rate scheduler plugins."""
from __future__ import annotations

__all__ = ["Scheduler"]


class Scheduler:
    """Sets each parameter group's ``lr`` from its initial lr and a step counter.

    Subclasses implement :meth:`factor` (the multiplier at step ``t``), so
    the schedule is closed-form and resumable from ``t`` alone. Optional
    linear warm-up for every scheduler: the first ``warmup_steps`` steps
    ramp the factor from ``warmup_start_factor`` to 1 (as PyTorch's LinearLR
    followed by the schedule, SequentialLR), then the schedule starts at t=0.

    Call :meth:`step` once per epoch (or per iteration, if the schedule is
    written in iterations), after ``optimizer.step()``.
    """

    needs_metric = False  # True: step(metric) takes a validation metric (reduce-on-plateau)

    def __init__(self, optimizer, warmup_steps: int = 0, warmup_start_factor: float = 0.1):
        if warmup_steps < 0 or not 0.0 < warmup_start_factor <= 1.0:
            raise ValueError("warmup_steps must be >= 0 and warmup_start_factor in (0, 1]")
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def factor(self, t: int) -> float:
        """lr multiplier ``t`` steps after warm-up; subclasses override this or :meth:`lr_at`."""
        return 1.0

    def lr_at(self, base_lr: float, t: int) -> float:
        """The lr of a group whose initial lr is ``base_lr``, ``t`` steps after warm-up."""
        return base_lr * self.factor(t)

    def step(self, metric=None) -> None:
        self.last_step += 1
        self._apply()

    def _apply(self) -> None:
        t = self.last_step
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            if t < self.warmup_steps:
                start = self.warmup_start_factor
                group["lr"] = base * (start + (1.0 - start) * t / self.warmup_steps)
            else:
                group["lr"] = self.lr_at(base, t - self.warmup_steps)

    def get_last_lr(self) -> list:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)
        self._apply()
