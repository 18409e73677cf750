"""Mixed precision at the op level (minidl/functions/autocast.py and the reductions): float16 and bfloat16 sums,
means, softmax, cross-entropy, batch-norm statistics, LRN and GEMMs accumulate in float32, against float64
references on both backends; autocast runs each listed op in the dtype its list says, casts each parameter once
per block, and sends float32 gradients to float32 parameters."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl.functions.autocast import FLOAT32, LOW_PRECISION, autocast_dtype

pytest.importorskip("ml_dtypes", reason="bfloat16 comes from ml_dtypes (in the test extra)")
LOW = ["float16", "bfloat16"]


def _dtype(name):
    return mdl.bfloat16 if name == "bfloat16" else np.dtype(name)


def _round(value, name):
    """``value`` rounded once to the low precision: what an op that accumulates in float32 returns."""
    return np.asarray(value, dtype=np.float64).astype(np.float32).astype(_dtype(name)).astype(np.float64)


@pytest.mark.parametrize("name", LOW)
def test_sums_and_means_accumulate_in_float32(name, device):
    count = 100_000 if name == "bfloat16" else 30_000  # within float16's range (65504)
    ones = mdl.tensor(np.ones(count, dtype=_dtype(name)), device=device)
    total = ones.sum()
    assert total.dtype == _dtype(name)
    assert total.numpy().astype(np.float64) == _round(count, name)  # summed in their own dtype: 256 and 2048
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, (64, 400))
    x = mdl.tensor(values.astype(_dtype(name)), device=device)
    exact = values.astype(_dtype(name)).astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=1).numpy().astype(np.float64), _round(exact.mean(axis=1), name),
                               rtol=1e-2 if name == "bfloat16" else 1e-3)
    assert abs(float(x.sum().numpy().astype(np.float64)) - exact.sum()) <= 0.01 * exact.sum()


@pytest.mark.parametrize("name", LOW)
def test_softmax_cross_entropy_and_gemm_keep_their_precision(name, device, rng):
    logits = rng.standard_normal((32, 1000)) * 4
    labels = rng.integers(0, 1000, 32)
    low = logits.astype(_dtype(name))
    exact = low.astype(np.float64)
    shifted = exact - exact.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    t = mdl.tensor(low, device=device)
    loss = F.cross_entropy(t, labels)
    assert loss.dtype == _dtype(name)  # reduced in float32, rounded once
    assert float(loss.numpy().astype(np.float64)) == _round(-log_p[np.arange(32), labels].mean(), name)
    ulp = 2.0 ** -8 if name == "bfloat16" else 2.0 ** -11  # a rounding of the result, and no more
    np.testing.assert_allclose(F.log_softmax(t, axis=1).numpy().astype(np.float64), log_p, rtol=ulp, atol=1e-3)
    assert F.softmax(t, axis=1).dtype == _dtype(name)
    a, b = np.ones((2, 4096), dtype=_dtype(name)), np.ones((4096, 3), dtype=_dtype(name))
    product = mdl.tensor(a, device=device) @ mdl.tensor(b, device=device)
    assert product.dtype == _dtype(name) and (product.numpy().astype(np.float64) == 4096).all()


@pytest.mark.parametrize("name", LOW)
def test_batch_norm_statistics_and_lrn_in_float32(name, device, rng):
    x64 = rng.standard_normal((8, 6, 5, 5)) * 3 + 100.0  # a large mean: float16 sums of squares would be far off
    x = mdl.tensor(x64.astype(_dtype(name)), device=device)
    exact = x64.astype(_dtype(name)).astype(np.float64)
    mean, var = np.zeros(6, np.float32), np.ones(6, np.float32)
    F.batch_norm(x, running_mean=mean, running_var=var, momentum=1.0)
    np.testing.assert_allclose(mdl.tensor(mean).numpy(), exact.mean(axis=(0, 2, 3)), rtol=1e-3)
    unbiased = exact.var(axis=(0, 2, 3)) * 200 / 199
    np.testing.assert_allclose(mdl.tensor(var).numpy(), unbiased, rtol=0.05)
    y = F.local_response_norm(x, 5, 1e-4, 0.75, 2.0)
    squares = np.stack([(exact[:, max(c - 2, 0):c + 3] ** 2).sum(axis=1) for c in range(6)], axis=1)
    expected = exact / (2.0 + 1e-4 * squares) ** 0.75
    assert y.dtype == _dtype(name)
    np.testing.assert_allclose(y.numpy().astype(np.float64), expected, rtol=1e-2)


@pytest.mark.parametrize("name", LOW)
def test_autocast_runs_each_listed_op_in_its_dtype(name, device, rng):
    low = _dtype(name)
    W = mdl.Parameter(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), device=device)
    lin = mdl.Parameter(rng.standard_normal((5, 16)).astype(np.float32), device=device)
    x = mdl.tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32), device=device)
    with mdl.autocast(name):
        assert autocast_dtype() == low
        y = F.conv2d(x, W, padding=1)  # low precision
        assert y.dtype == low
        assert F.relu(y).dtype == low  # not listed: the input's dtype
        assert F.local_response_norm(y, 3).dtype == np.float32  # float32 ops
        assert F.max_pool2d(y, 2).dtype == low
        flat = F.max_pool2d(F.relu(y), 3, 3).reshape(2, -1)
        logits = F.linear(flat, lin)
        again = F.linear(flat, lin)
        assert logits.dtype == low
        assert logits.creator.inputs[1] is again.creator.inputs[1]  # the parameter was cast once in the block
        assert F.softmax(logits).dtype == np.float32 and logits.exp().dtype == np.float32
        assert (logits ** 2).dtype == np.float32 and logits.sum().dtype == np.float32
        loss = F.cross_entropy(logits, np.array([0, 1]))
        assert loss.dtype == np.float32
    assert autocast_dtype() is None
    assert F.conv2d(x, W, padding=1).dtype == np.float32  # outside the block: as before
    loss.backward()
    assert W.grad.dtype == np.float32 and lin.grad.dtype == np.float32
    assert np.isfinite(W.grad.numpy()).all()


def test_the_lists_and_errors():
    assert {"conv2d", "linear", "matmul"} == LOW_PRECISION
    assert {"softmax", "log_softmax", "cross_entropy", "local_response_norm", "batch_norm", "sum", "mean", "exp",
            "log", "pow"} == FLOAT32
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        with mdl.autocast("float32"):
            pass
    with mdl.autocast("bfloat16", enabled=False):
        assert autocast_dtype() is None
