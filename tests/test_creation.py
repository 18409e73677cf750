"""Factories: shapes given either way, the default float dtype, arange's dtype rule."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl


@pytest.mark.parametrize("make", [mdl.zeros, mdl.ones])
def test_shapes_either_way(device, make):
    assert make(2, 3, device=device).shape == make((2, 3), device=device).shape == make([2, 3]).shape == (2, 3)
    assert make(4).shape == (4,) and make(np.int64(3)).shape == (3,) and make().shape == ()
    assert make(2, 3).dtype == np.float32
    assert make(2, dtype="float64", requires_grad=True).requires_grad
    with pytest.raises(TypeError, match=r"zeros\(2, 3\) or zeros\(\(2, 3\)\)"):
        make(2.5)
    with pytest.raises(ValueError, match="negative"):
        make(2, -1)


def test_full_takes_an_int_or_a_tuple():
    assert mdl.full(3, 1.5).shape == (3,) and mdl.full((2, 2), 1.5).dtype == np.float32


def test_arange_dtype_follows_pytorch(torch):
    for args in [(5,), (0, 1, 0.25), (0.0, 3), (1, 7, 2)]:
        ours, theirs = mdl.arange(*args), torch.arange(*args)
        assert str(ours.dtype) == str(theirs.dtype).replace("torch.", "")
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert mdl.arange(0.0, 1.0, 0.5, dtype="float64").dtype == np.float64
