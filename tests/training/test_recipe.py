"""minidl.training.recipe.prepare: the run's seed decides everything, the initial weights included."""
from __future__ import annotations

import numpy as np

from minidl import random
from minidl.training.recipe import prepare


def _initial(tiny, seed=None):
    model, data = tiny
    trainer = prepare(str(model), data=str(data), steps=1, progress=False, workers=1, seed=seed)
    return [p.numpy().copy() for _, p in trainer.model.named_parameters()]


def test_initial_weights_follow_the_seed_not_the_generators_state(tiny):
    first = _initial(tiny)  # the model file's seed (3)
    random.manual_seed(99)
    random.uniform((1000,), "float32")  # whatever ran before prepare drew numbers
    again = _initial(tiny)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other = _initial(tiny, seed=4)
    assert not np.array_equal(first[0], other[0])
    assert all(np.array_equal(a, b) for a, b in zip(other, _initial(tiny, seed=4)))
