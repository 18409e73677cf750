"""Hypothesis strategies for shapes and arrays (needs ``hypothesis``).

    from hypothesis import given
    from minidl.testing import strategies as mst

    @given(mst.arrays(shape=mst.shapes(max_dims=3)))
    def test_exp(a): ...
"""
from __future__ import annotations

import numpy
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["shapes", "broadcastable_shapes", "arrays", "arrays_and_axis", "float_dtypes"]


def shapes(min_dims: int = 0, max_dims: int = 4, min_side: int = 1, max_side: int = 5):
    """Array shapes: tuples of ``min_dims..max_dims`` sides, each in ``min_side..max_side``."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes: int = 2, min_dims: int = 0, max_dims: int = 4,
                         min_side: int = 1, max_side: int = 5):
    """A tuple of ``num_shapes`` shapes that broadcast together (NumPy rules)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
    ).map(lambda result: result.input_shapes)


def float_dtypes():
    """float32 or float64."""
    return st.sampled_from([numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)])


def arrays(dtype=numpy.float64, shape=None, min_value: float = -5.0, max_value: float = 5.0,
           min_magnitude: float = 0.0, unique: bool = False):
    """Finite arrays of ``dtype`` with elements in [min_value, max_value].

    Args:
        shape: a shape or a strategy for shapes (default :func:`shapes`).
        min_magnitude: keep every element at least this far from 0 (for ops
            with a kink at 0, such as relu or abs, or a pole, such as 1/x).
        unique: all elements distinct (for max/min, where ties share gradients).
    """
    if shape is None:
        shape = shapes()
    elements = st.floats(min_value, max_value, allow_nan=False, allow_infinity=False,
                         width=numpy.dtype(dtype).itemsize * 8)
    if min_magnitude > 0:
        elements = elements.filter(lambda v: abs(v) >= min_magnitude)
    return hnp.arrays(dtype=dtype, shape=shape, elements=elements, unique=unique)


@st.composite
def arrays_and_axis(draw, dtype=numpy.float64, min_dims: int = 1, max_dims: int = 4, **array_kwargs):
    """(array, axis) with axis None, an int (possibly negative) or a tuple of distinct axes."""
    array = draw(arrays(dtype, shapes(min_dims=min_dims, max_dims=max_dims), **array_kwargs))
    ndim = array.ndim
    axis = draw(st.one_of(
        st.none(),
        st.integers(-ndim, ndim - 1),
        st.lists(st.integers(0, ndim - 1), unique=True, min_size=1, max_size=ndim).map(tuple),
    ))
    return array, axis
