"""Mixed precision training: dynamic loss scaling for float16 (``mdl.amp.LossScaler``).

float16 has a narrow range: small gradients underflow to zero. Scaling the
loss by a large factor before ``backward()`` and the gradients back down
before the update keeps them representable; when a scaled gradient overflows
instead (inf or NaN), the update is skipped and the scale halved, and after
``growth_interval`` clean steps in a row it doubles again. bfloat16 has
float32's range and needs none of this.

    scaler = mdl.amp.LossScaler()
    loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)        # unscales; skips the update if a gradient is not finite
    scaler.update()               # halves or grows the scale

The scale, the clean-step count and the overflow flag live as arrays on the
parameters' device and are updated there: on a GPU nothing is read back per
step (``get_scale()`` and ``skipped_steps`` read when asked, e.g. with the
metrics). The CPU skips an overflowing step outright; a GPU computes the
update and keeps the old values where the flag is set (so an optimizer's own
step count still advances there).
"""
from __future__ import annotations

import numpy

from .backend import CPU, device_of_array, get_array_module, transfer
from .tensor import Tensor

__all__ = ["LossScaler"]


class LossScaler:
    """Dynamic loss scaling (PyTorch's ``GradScaler`` rule): see the module docstring.

    Args:
        init_scale: the first scale (2**16).
        growth_factor / backoff_factor: multiply the scale after ``growth_interval`` clean steps / on an overflow.
        growth_interval: clean steps in a row before the scale grows (2,000).
        enabled: False makes every method a pass-through (fp32, bf16).
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        if init_scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1 or growth_interval < 1:
            raise ValueError(f"LossScaler: need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1 and "
                             f"growth_interval >= 1, got {init_scale}, {growth_factor}, {backoff_factor}, "
                             f"{growth_interval}")
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval, self.enabled = int(growth_interval), bool(enabled)
        self._host = {"scale": float(init_scale), "clean": 0, "skipped": 0}  # until a device is known
        self._scale = self._clean = self._skipped = None  # 0-d arrays on the parameters' device
        self._found = None  # this step's overflow flag, once unscaled

    # ----------------------------------------------------------------- device state
    def _on(self, device) -> None:
        if self._scale is None or device_of_array(self._scale) != device:
            self._scale = transfer(numpy.asarray(self._host["scale"], dtype=numpy.float32), device)
            self._clean = transfer(numpy.asarray(self._host["clean"], dtype=numpy.int64), device)
            self._skipped = transfer(numpy.asarray(self._host["skipped"], dtype=numpy.int64), device)

    def scale(self, loss: Tensor) -> Tensor:
        """``loss`` times the current scale (a differentiable product; call ``backward()`` on it)."""
        if not self.enabled:
            return loss
        self._on(loss.device)
        self._found = None
        return loss * Tensor(self._scale, device=loss.device)  # float32: a float16 loss times it is float32

    def unscale_(self, optimizer) -> None:
        """Divide every gradient of ``optimizer``'s parameters by the scale, in place, and note whether any
        is not finite. Call it before clipping gradients; :meth:`step` calls it if you did not."""
        if not self.enabled or self._found is not None:
            return
        grads = [p.grad.data for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            self._found = False
            return
        xp = get_array_module(grads[0])
        self._on(device_of_array(grads[0]))
        inverse = 1.0 / self._scale
        found = xp.zeros((), dtype=bool)
        for g in grads:
            g *= inverse.astype(g.dtype)
            found |= ~xp.isfinite(g).all()
        self._found = found

    def step(self, optimizer):
        """Unscale (if not done) and apply ``optimizer.step()`` unless a gradient overflowed.

        Returns whether the update was applied: a bool on the CPU, a 0-d device array on a GPU.
        """
        if not self.enabled:
            optimizer.step()
            return True
        self.unscale_(optimizer)
        found = self._found
        if isinstance(found, bool) or get_array_module(found) is numpy:
            if not bool(found):
                optimizer.step()
            return not bool(found)
        _step_unless(optimizer, found)
        return ~found

    def update(self) -> None:
        """Halve the scale after an overflow; multiply it by ``growth_factor`` after ``growth_interval`` clean
        steps in a row. Call once per step, after :meth:`step`."""
        if not self.enabled or self._found is None or self._scale is None:
            self._found = None
            return
        xp = get_array_module(self._scale)
        found = xp.asarray(self._found)
        clean = xp.where(found, 0, self._clean + 1)
        grow = clean >= self.growth_interval
        factor = xp.where(found, self.backoff_factor, xp.where(grow, self.growth_factor, 1.0))
        self._scale = (self._scale * factor).astype(numpy.float32)
        self._clean = xp.where(grow, 0, clean).astype(numpy.int64)
        self._skipped = (self._skipped + found).astype(numpy.int64)
        self._found = None

    # ----------------------------------------------------------------- reading and saving
    def get_scale(self) -> float:
        """The current scale (reads it back from the device: call it with the metrics, not every step)."""
        return float(transfer(self._scale, CPU)) if self._scale is not None else self._host["scale"]

    @property
    def skipped_steps(self) -> int:
        """Updates skipped for overflowing gradients so far (a device read)."""
        return int(transfer(self._skipped, CPU)) if self._skipped is not None else self._host["skipped"]

    def state_dict(self) -> dict:
        """Plain numbers, for checkpoints."""
        clean = int(transfer(self._clean, CPU)) if self._clean is not None else self._host["clean"]
        return {"scale": self.get_scale(), "clean_steps": clean, "skipped_steps": self.skipped_steps,
                "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "enabled": self.enabled}

    def load_state_dict(self, state: dict) -> None:
        self.growth_factor, self.backoff_factor = float(state["growth_factor"]), float(state["backoff_factor"])
        self.growth_interval, self.enabled = int(state["growth_interval"]), bool(state["enabled"])
        self._host = {"scale": float(state["scale"]), "clean": int(state["clean_steps"]),
                      "skipped": int(state["skipped_steps"])}
        self._scale = self._clean = self._skipped = self._found = None


def _step_unless(optimizer, found) -> None:
    """``optimizer.step()``, then put back every parameter and state array where the device flag ``found``
    is set: a skip decided on the device, with no host read."""
    xp = get_array_module(found)
    kept = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state.get(id(p), {})
            kept.append((p.data, p.data.copy(), state, {k: v.copy() for k, v in state.items() if hasattr(v, "shape")}))
    optimizer.step()
    for data, old, state, old_state in kept:
        xp.copyto(data, old, where=found)
        for key, value in old_state.items():
            xp.copyto(state[key], value, where=found)
    for data, _, state, old_state in kept:  # state made by this very step (a first step) is dropped on a skip
        for key in set(state) - set(old_state):
            if hasattr(state[key], "shape"):
                state[key] = xp.where(found, xp.zeros_like(state[key]), state[key])
