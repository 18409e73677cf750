"""mdl.amp.LossScaler: overflowing float16 steps are skipped and halve the scale, clean ones grow it, the
state survives a checkpoint, and on a GPU the skip needs no host read."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl.amp import LossScaler
from minidl.plugins import registry


def _setup(device, dtype="float16", momentum=0.9):
    w = mdl.Parameter(np.array([1.0, -2.0, 3.0], dtype=dtype), device=device)
    opt = registry("optimizers").create("sgd", [w], lr=0.1, momentum=momentum)
    return w, opt


def _step(scaler, w, opt, factor):
    opt.zero_grad()
    loss = (w * factor).sum()
    scaler.scale(loss).backward()
    applied = scaler.step(opt)
    scaler.update()
    return applied


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the overflow is the point
def test_overflow_skips_the_step_and_halves_the_scale(device):
    w, opt = _setup(device)
    scaler = LossScaler(growth_interval=3)
    before = w.numpy().copy()
    # d loss / dw = 10 everywhere; times 2**16 the float16 gradient overflows to inf
    applied = _step(scaler, w, opt, 10.0)
    assert not bool(mdl.tensor(applied).numpy())
    np.testing.assert_array_equal(w.numpy(), before)
    assert scaler.get_scale() == 2.0 ** 15 and scaler.skipped_steps == 1
    while scaler.get_scale() * 10.0 >= 65504:  # halves until 10 * scale fits in float16
        _step(scaler, w, opt, 10.0)
    skipped = scaler.skipped_steps
    assert _step(scaler, w, opt, 10.0)  # now it fits: the update happens, with the unscaled gradient
    np.testing.assert_allclose(w.numpy().astype(np.float64), before - 0.1 * 10.0, rtol=1e-3)
    assert scaler.skipped_steps == skipped
    scale = scaler.get_scale()
    _step(scaler, w, opt, 1e-3)
    _step(scaler, w, opt, 1e-3)
    assert scaler.get_scale() == 2 * scale  # three clean steps in a row: it grows


def test_state_dict_round_trips_and_disabled_is_a_pass_through(tmp_path):
    scaler = LossScaler(init_scale=1024.0, growth_interval=5)
    w, opt = _setup("cpu", "float32")
    _step(scaler, w, opt, 1.0)
    state = scaler.state_dict()
    assert state == {"scale": 1024.0, "clean_steps": 1, "skipped_steps": 0, "growth_factor": 2.0,
                     "backoff_factor": 0.5, "growth_interval": 5, "enabled": True}
    other = LossScaler()
    other.load_state_dict(state)
    assert other.state_dict() == state
    off = LossScaler(enabled=False)
    loss = (w * 2.0).sum()
    assert off.scale(loss) is loss
    with pytest.raises(ValueError, match="growth_factor > 1"):
        LossScaler(growth_factor=1.0)


def test_a_scaled_float32_step_equals_an_unscaled_one():
    # powers of two scale exactly: the update is bit for bit the plain one
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 5)).astype(np.float32), rng.integers(0, 3, 8)
    results = []
    for scaler in (None, LossScaler(init_scale=2.0 ** 10)):
        W = mdl.Parameter(rng.standard_normal((3, 5)).astype(np.float32) if not results else results[0][1].copy())
        if not results:
            start = W.numpy().copy()
        else:
            W = mdl.Parameter(start.copy())
        opt = registry("optimizers").create("sgd", [W], lr=0.1, momentum=0.9)
        loss = F.cross_entropy(F.linear(mdl.tensor(x), W), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        results.append((W.numpy(), start))
    np.testing.assert_array_equal(results[0][0], results[1][0])
