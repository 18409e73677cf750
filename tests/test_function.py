"""The Function base: float32 stays the default float dtype through integer promotion and NumPy scalars."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F


@pytest.mark.parametrize("ours, theirs", [
    (lambda x: x * 0.5, lambda t, x: x * 0.5),
    (lambda x: 0.5 * x, lambda t, x: 0.5 * x),
    (lambda x: x / 2, lambda t, x: x / 2),
    (lambda x: x / x, lambda t, x: x / x),
    (lambda x: F.sqrt(x), lambda t, x: t.sqrt(x)),
    (lambda x: F.exp(x), lambda t, x: t.exp(x)),
    (lambda x: x + np.float64(0.5), lambda t, x: x + np.float64(0.5)),
    (lambda x: x.mean(), lambda t, x: x.float().mean()),  # (PyTorch refuses an int mean; NumPy gives float64)
])
def test_integer_inputs_promote_to_float32_as_in_pytorch(torch, ours, theirs):
    mine = ours(mdl.tensor([1, 2, 3]))
    reference = theirs(torch, torch.tensor([1, 2, 3]))
    assert mine.dtype == np.float32 and reference.dtype == torch.float32
    np.testing.assert_allclose(mine.numpy(), reference.numpy(), rtol=1e-6)


def test_numpy_scalars_take_the_tensors_float_dtype(torch):
    x = mdl.tensor([1.0, 2.0])
    for scalar in (np.float64(0.5), np.int64(3), np.float16(2.0)):
        assert (x * scalar).dtype == np.float32 and (torch.tensor([1.0, 2.0]) * scalar).dtype == torch.float32


def test_float64_appears_only_from_a_float64_operand():
    f32 = mdl.tensor([1.0, 2.0])
    f64 = mdl.tensor(np.array([1.0, 2.0]))
    assert (f32 * f64).dtype == np.float64  # as PyTorch: the wider operand wins
    assert (f64 * 0.5).dtype == np.float64 and f64.mean().dtype == np.float64
    assert F.astype(f32, "float64").dtype == np.float64  # an explicit cast is kept
    assert (mdl.tensor([1, 2]) * np.array([0.5, 0.5])).dtype == np.float64  # an explicit float64 array


def test_int_arithmetic_stays_integer():
    x = mdl.tensor([1, 2, 3])
    assert (x * 2).dtype == np.int64 and (x + x).dtype == np.int64 and x.sum().dtype == np.int64
