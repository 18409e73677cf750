"""An exponential moving average of a model's weights (``train: {ema: 0.999}``), evaluated instead of them.

After every optimizer step each averaged weight moves toward the trained one:

    average <- d * average + (1 - d) * weight,   d = min(decay, (1 + updates) / (10 + updates))

The warm-up in ``d`` lets the average forget the random initial weights in
the first few hundred steps (as TensorFlow's ExponentialMovingAverage with
``num_updates``). Buffers (batch-norm statistics) are not averaged: the
model's own are used. The averages are float32 arrays on the weights'
device; checkpoints hold them and the update count, so a resumed run
continues bit for bit.
"""
from __future__ import annotations

import contextlib

__all__ = ["WeightAverage"]


class WeightAverage:
    """The moving average of ``model``'s parameters with ``decay`` (0 < decay < 1)."""

    def __init__(self, model, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema: the decay must be between 0 and 1 (exclusive), got {decay}")
        self.model, self.decay, self.updates = model, float(decay), 0
        self.params = dict(model.named_parameters())
        self.averages = {name: p.data.copy() for name, p in self.params.items()}

    def update(self) -> None:
        """Move every average toward its parameter (call after each optimizer step)."""
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for name, p in self.params.items():
            average = self.averages[name]
            average *= d
            average += (1.0 - d) * p.data

    @contextlib.contextmanager
    def applied(self):
        """Inside the block the model's parameters hold the averages (for evaluation); afterwards, their own values."""
        for name, p in self.params.items():
            p.data, self.averages[name] = self.averages[name], p.data
        try:
            yield self.model
        finally:
            for name, p in self.params.items():
                p.data, self.averages[name] = self.averages[name], p.data

    def state_dict(self) -> dict:
        """{"decay", "updates", "averages": {parameter name: array}}."""
        return {"decay": self.decay, "updates": self.updates, "averages": dict(self.averages)}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.params) - set(state["averages"])
        unexpected = set(state["averages"]) - set(self.params)
        if missing or unexpected:
            raise ValueError(f"ema: the averages do not match the model's parameters (missing {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)})")
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for name, p in self.params.items():
            value = state["averages"][name]
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"ema: average of {name} has shape {tuple(value.shape)}, the parameter {p.shape}")
            self.averages[name] = p.device.xp.asarray(value).astype(p.dtype, copy=True)
