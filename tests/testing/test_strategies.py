"""The hypothesis strategies give what they promise."""
from __future__ import annotations

import numpy as np
from hypothesis import given

from minidl.testing import strategies as mst


@given(mst.broadcastable_shapes(num_shapes=3))
def test_broadcastable_shapes_broadcast(shapes):
    assert len(shapes) == 3
    np.broadcast_shapes(*shapes)


@given(mst.arrays(np.float32, mst.shapes(max_dims=3), min_magnitude=0.1, unique=True))
def test_arrays_respect_bounds(a):
    assert a.dtype == np.float32
    assert np.isfinite(a).all()
    assert (np.abs(a) >= 0.1).all() and (np.abs(a) <= 5.0).all()
    assert len(np.unique(a)) == a.size


@given(mst.arrays_and_axis())
def test_arrays_and_axis_gives_a_valid_axis(pair):
    array, axis = pair
    array.sum(axis=axis)  # NumPy accepts the axis
