"""minidl/training/ema.py: the average follows the documented update, evaluation sees it and gives the weights
back, and its state round-trips."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
from minidl.training.ema import WeightAverage


def _model():
    model = mdl.build_model({"name": "m", "input": [3], "layers": [{"type": "linear", "out_features": 2}]})
    return model, dict(model.named_parameters())


def test_average_follows_the_update_rule_with_warm_up():
    model, params = _model()
    ema = WeightAverage(model, 0.9)
    name = next(iter(params))
    expected = params[name].numpy().astype(np.float64)
    for step in range(1, 40):
        params[name].data[...] += 1.0  # an optimizer step
        ema.update()
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * params[name].numpy()
        np.testing.assert_allclose(ema.averages[name], expected, rtol=1e-5)


def test_applied_swaps_in_the_averages_and_back():
    model, params = _model()
    ema = WeightAverage(model, 0.99)
    name = next(iter(params))
    trained = params[name].numpy().copy()
    ema.averages[name][...] = 7.0
    x = mdl.tensor(np.ones((1, 3), dtype=np.float32))
    with ema.applied():
        assert (params[name].numpy() == 7.0).all()
        averaged = model(x).numpy()
    np.testing.assert_array_equal(params[name].numpy(), trained)
    assert not np.array_equal(model(x).numpy(), averaged)


def test_state_round_trips_and_mismatches_are_refused():
    model, params = _model()
    ema = WeightAverage(model, 0.999)
    ema.update()
    other = WeightAverage(_model()[0], 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and other.decay == 0.999
    for name in params:
        np.testing.assert_array_equal(other.averages[name], ema.averages[name])
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"decay": 0.9, "updates": 0, "averages": {}})
    with pytest.raises(ValueError, match="between 0 and 1"):
        WeightAverage(model, 1.0)
