"""Random ops (minidl/functions/stochastic.py): inverted dropout. Identity in evaluation and
for p=0; in training the mask is reproducible under minidl.random.manual_seed, keeps about
1-p of the elements, scales them by 1/(1-p), and is the gradient too."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidl as mdl
import minidl.functions as F
from minidl.testing import gradcheck, gradgradcheck

from ._opcheck import domain_arrays, fixed_array, op_settings

P = st.sampled_from([0.1, 0.25, 0.5, 0.8]) | st.floats(0.01, 0.95)


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """These tests reseed minidl's generator; leave it as they found it for the other tests."""
    state = mdl.random.get_state()
    yield
    mdl.random.set_state(state)


def _dropout(x, p, seed, gy=None):
    """(output, gradient) of dropout on x (an array) under a fixed seed."""
    t = mdl.tensor(x, requires_grad=True)
    mdl.random.manual_seed(seed)
    y = F.dropout(t, p, training=True)
    y.backward(mdl.ones_like(y) if gy is None else mdl.tensor(gy))
    return y.numpy(), t.grad.numpy()


def _to(x, device):
    return mdl.tensor(x, requires_grad=True, device=device)


# ------------------------------------------------------------------ evaluation and p = 0
@op_settings()
@given(a=domain_arrays("any"), p=P)
def test_eval_is_identity_and_returns_the_same_tensor(device, a, p):
    x = _to(a, device)
    state = mdl.random.get_state()
    assert F.dropout(x, p, training=False) is x
    assert mdl.random.get_state() == state, "evaluation dropout drew random numbers"


@op_settings()
@given(a=domain_arrays("any"))
def test_p_zero_is_identity(device, a):
    x = _to(a, device)
    y = F.dropout(x, 0.0, training=True)
    np.testing.assert_array_equal(y.numpy(), a)
    gy = np.arange(a.size, dtype=np.float64).reshape(a.shape)
    y.backward(mdl.tensor(gy, device=device))
    np.testing.assert_array_equal(x.grad.numpy(), gy)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, -1e-12, float("nan"), float("inf")])
@pytest.mark.parametrize("training", [True, False])
def test_p_outside_zero_one_raises(p, training, device):
    x = mdl.tensor(np.ones((2, 3)), device=device)
    with pytest.raises(ValueError, match="p must be in"):
        F.dropout(x, p, training=training)


# ------------------------------------------------------------------ training
@op_settings()
@given(a=domain_arrays("nonzero"), p=P, seed=st.integers(0, 2**32 - 1))
def test_mask_scales_kept_values_and_is_the_gradient(device, a, p, seed):
    x = _to(a, device)
    mdl.random.manual_seed(seed)
    y = F.dropout(x, p, training=True)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    out = y.numpy()
    kept = out != 0  # inputs are nonzero, so a zero output was dropped
    np.testing.assert_allclose(out[kept], a[kept] / (1 - p), rtol=1e-15, err_msg="kept values not scaled by 1/(1-p)")
    # the gradient is the same mask: gy / (1-p) where kept, 0 where dropped
    gy = fixed_array(np.random.default_rng(seed), a.shape)
    y.backward(mdl.tensor(gy, device=device))
    np.testing.assert_allclose(x.grad.numpy(), np.where(kept, gy / (1 - p), 0.0), rtol=1e-15, atol=0)


@op_settings()
@given(a=domain_arrays("nonzero"), p=P, seed=st.integers(0, 2**32 - 1))
def test_mask_is_reproducible_under_manual_seed(device, a, p, seed):
    x = _to(a, device)
    mdl.random.manual_seed(seed)
    first = F.dropout(x, p).numpy()
    second = F.dropout(x, p).numpy()  # the generator moved on
    mdl.random.manual_seed(seed)
    np.testing.assert_array_equal(F.dropout(x, p).numpy(), first)
    np.testing.assert_array_equal(F.dropout(x, p).numpy(), second)


def test_masks_differ_between_calls_and_seeds(device):
    x = _to(np.ones((64, 64)), device)
    mdl.random.manual_seed(0)
    a, b = F.dropout(x, 0.5).numpy(), F.dropout(x, 0.5).numpy()
    mdl.random.manual_seed(1)
    c = F.dropout(x, 0.5).numpy()
    assert (a != b).any() and (a != c).any()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_kept_fraction_is_one_minus_p(p, dtype, device):
    n = 100_000
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    x = mdl.tensor(np.ones((100, n // 100)), dtype=dtype, device=device)
    mdl.random.manual_seed(123)
    y = F.dropout(x, p)
    assert y.dtype == x.dtype
    out = y.numpy().astype(np.float64)
    kept = out != 0
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept.mean() - (1 - p)) < 6 * sigma, f"kept {kept.mean():.4f}, expected {1 - p}"
    scale = np.float64(np.dtype(dtype).type(1 / (1 - p)))
    np.testing.assert_array_equal(out[kept], scale)
    # inverted dropout keeps the expectation: mean output ~ mean input
    assert abs(out.mean() - 1.0) < 6 * sigma / (1 - p)


def test_gradient_matches_central_differences_with_a_fixed_seed(device, rng):
    a = fixed_array(rng, (3, 4, 5))

    def fn(x):
        mdl.random.manual_seed(7)  # the same mask on every call
        return F.dropout(x, 0.4)

    assert gradcheck(fn, [_to(a, device)])
    assert gradgradcheck(lambda x: fn(x) * x, [_to(a, device)])


def test_same_seed_same_mask_for_forward_and_recomputation(device, rng):
    # a fixed seed gives the same mask in two separate graphs, so the gradient of one matches the other's output
    a = fixed_array(rng, (4, 6), "nonzero")
    y1, g1 = _dropout(a, 0.3, seed=11)
    y2, g2 = _dropout(a, 0.3, seed=11)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(g1, g2)
    np.testing.assert_allclose(g1, y1 / a, rtol=1e-15)
