"""Shape and layout ops (minidl/functions/array.py): reshape, transpose/permute, broadcasting,
indexing, joins, split, pad, dtype casts and device transfers."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minidl as mdl
import minidl.functions as F
from minidl.testing import strategies as mst

from ._opcheck import (  # noqa: F401 - reference is a fixture
    check_dtype, check_gradgrad, check_op, fixed_array, op_settings, reference, small_ints,
)

SHAPES = mst.shapes(max_dims=4, max_side=4)
SHAPES_1D_UP = mst.shapes(min_dims=1, max_dims=3, max_side=4)


def arrays_of(shape):
    return mst.arrays(shape=shape)


# ---------------------------------------------------------------- reshape
@st.composite
def reshape_case(draw):
    """(array, new shape, pass the shape unpacked): sides reordered, 1s inserted, maybe one -1."""
    a = draw(arrays_of(SHAPES))
    sides = list(draw(st.permutations(a.shape)))
    for _ in range(draw(st.integers(0, 2))):
        sides.insert(draw(st.integers(0, len(sides))), 1)
    if sides and draw(st.booleans()):
        sides[draw(st.integers(0, len(sides) - 1))] = -1
    return a, tuple(sides), draw(st.booleans())


@op_settings()
@given(case=reshape_case())
def test_reshape(device, reference, case):
    a, shape, unpacked = case
    fn = (lambda x: F.reshape(x, *shape)) if unpacked else (lambda x: F.reshape(x, shape))
    check_op(fn, [a], device, reference, lambda x: x.reshape(shape), lambda t: t.reshape(shape))


@op_settings(fraction=0.6)
@given(a=arrays_of(mst.shapes(min_dims=2, max_dims=4, max_side=3)), data=st.data())
def test_flatten_expand_dims_squeeze(device, reference, a, data):
    start = data.draw(st.integers(0, a.ndim - 1), label="start_axis")
    check_op(lambda x: F.flatten(x, start), [a], device, reference,
             lambda x: x.reshape(x.shape[:start] + (-1,)), lambda t: t.flatten(start))
    axis = data.draw(st.integers(-a.ndim - 1, a.ndim), label="axis")
    check_op(lambda x: F.squeeze(F.expand_dims(x, axis)), [a], device, reference,
             lambda x: np.squeeze(np.expand_dims(x, axis)), lambda t: t.unsqueeze(axis).squeeze())


# -------------------------------------------------------------- transpose
@st.composite
def transpose_case(draw, form):
    """(array, axes): a permutation (some axes negative), or two axes for swapaxes."""
    a = draw(arrays_of(mst.shapes(min_dims=1 if form == "swapaxes" else 0, max_dims=4, max_side=4)))
    if form == "swapaxes":
        return a, (draw(st.integers(-a.ndim, a.ndim - 1)), draw(st.integers(-a.ndim, a.ndim - 1)))
    axes = draw(st.permutations(range(a.ndim)))
    return a, tuple(ax - a.ndim if draw(st.booleans()) else ax for ax in axes)


@pytest.mark.parametrize("form", ["transpose", "permute", "reverse", "swapaxes"])
@op_settings()
@given(data=st.data())
def test_transpose_permute(form, device, reference, data):
    a, axes = data.draw(transpose_case(form), label="x, axes")
    ndim = a.ndim
    if form == "swapaxes":
        fn, numpy_fn, torch_fn = (lambda x: F.swapaxes(x, *axes)), (lambda x: np.swapaxes(x, *axes)), \
            (lambda t: t.swapaxes(*axes))
    elif form == "reverse":
        fn, numpy_fn, torch_fn = F.transpose, np.transpose, lambda t: t.permute(tuple(reversed(range(ndim))))
    else:
        fn = (lambda x: F.transpose(x, axes)) if form == "transpose" else (lambda x: F.permute(x, *axes))
        numpy_fn, torch_fn = (lambda x: np.transpose(x, axes)), (lambda t: t.permute(tuple(axes)))
    check_op(fn, [a], device, reference, numpy_fn, torch_fn)


def test_T_reverses_the_axes(rng):
    a = rng.standard_normal((2, 3, 4))
    np.testing.assert_array_equal(mdl.tensor(a).T.numpy(), a.T)


# ----------------------------------------------------------- broadcasting
@st.composite
def broadcast_case(draw):
    """(array, target shape) where the array's shape broadcasts to the target."""
    target = draw(SHAPES)
    kept = target[draw(st.integers(0, len(target))):]  # leading axes dropped
    shape = tuple(1 if draw(st.booleans()) else side for side in kept)
    return draw(arrays_of(shape)), target


def np_sum_to(a, shape):
    a = a.sum(axis=tuple(range(a.ndim - len(shape))))
    return a.sum(axis=tuple(i for i, side in enumerate(shape) if side == 1), keepdims=True)


@op_settings()
@given(case=broadcast_case())
def test_broadcast_to(device, reference, case):
    a, target = case
    check_op(lambda x: F.broadcast_to(x, target), [a], device, reference,
             lambda x: np.broadcast_to(x, target), lambda t: t.broadcast_to(target))


@op_settings(fraction=0.6)
@given(case=broadcast_case(), data=st.data())
def test_sum_to(device, reference, case, data):
    small, target = case
    a = data.draw(arrays_of(target), label="x")
    check_op(lambda x: F.sum_to(x, small.shape), [a], device, reference,
             lambda x: np_sum_to(x, small.shape), lambda t: t.sum_to_size(small.shape))


# --------------------------------------------------------------- indexing
@st.composite
def basic_index_case(draw):
    a = draw(arrays_of(SHAPES_1D_UP))
    return a, draw(hnp.basic_indices(a.shape, allow_newaxis=True, allow_ellipsis=True))


def _has_negative_step(index):
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, slice) and p.step is not None and p.step < 0 for p in parts)


@op_settings()
@given(case=basic_index_case())
def test_getitem_basic(device, reference, case):
    a, index = case
    if reference is not None:
        assume(not _has_negative_step(index))  # PyTorch has no negative slice steps
    check_op(lambda x: F.getitem(x, index), [a], device, reference, lambda x: x[index], lambda t: t[index])


ONE_AXIS_FORMS = ["first_axis", "list", "tensor", "2d_index"]
TWO_AXIS_FORMS = ["second_axis", "pair", "with_slice"]


@st.composite
def advanced_index_case(draw, form):
    """(array, index for NumPy/PyTorch) with integer arrays that hold a repeated index."""
    a = draw(arrays_of(mst.shapes(min_dims=2 if form in TWO_AXIS_FORMS else 1, max_dims=3, max_side=4)))
    n0 = a.shape[0]
    first = draw(st.lists(small_ints(n0), min_size=1, max_size=5))
    first = np.array(first + [first[0]])  # a repeat, so the scatter-add must sum
    if form in ("second_axis", "pair"):
        other = np.array(draw(st.lists(small_ints(a.shape[1]), min_size=first.size, max_size=first.size)))
        other[-1] = other[0]
        index = (slice(None), other) if form == "second_axis" else (first, other)
    else:
        index = {"first_axis": first, "list": first, "tensor": first, "2d_index": np.stack([first, first[::-1]]),
                 "with_slice": (first, slice(1, None))}[form]
    return a, index


@pytest.mark.parametrize("form", ONE_AXIS_FORMS + TWO_AXIS_FORMS)
@op_settings(fraction=0.6)
@given(data=st.data())
def test_getitem_integer_arrays(form, device, reference, data):
    a, index = data.draw(advanced_index_case(form), label="x, index")
    if form == "list":
        mdl_index = index.tolist()
    elif form == "tensor":
        mdl_index = mdl.tensor(index, device=device)
    else:
        mdl_index = index

    def torch_index():
        parts = index if isinstance(index, tuple) else (index,)
        return tuple(reference.from_numpy(p) if isinstance(p, np.ndarray) else p for p in parts)

    check_op(lambda x: x[mdl_index] if form == "tensor" else F.getitem(x, mdl_index), [a], device, reference,
             lambda x: x[index], lambda t: t[torch_index()])


# ------------------------------------------------------------------ joins
@st.composite
def concat_case(draw):
    """(arrays, axis): 1-3 arrays that differ only along ``axis`` (possibly of length 0 there)."""
    base = draw(SHAPES_1D_UP)
    axis = draw(st.integers(-len(base), len(base) - 1))
    arrays = []
    for _ in range(draw(st.integers(1, 3))):
        shape = list(base)
        shape[axis] = draw(st.integers(0, 3))
        arrays.append(draw(arrays_of(tuple(shape))))
    return arrays, axis


@op_settings()
@given(case=concat_case())
def test_concatenate(device, reference, case):
    arrays, axis = case
    check_op(lambda *xs: F.concatenate(xs, axis=axis), arrays, device, reference,
             lambda *xs: np.concatenate(xs, axis=axis), lambda *ts: reference.cat(ts, dim=axis))


@st.composite
def stack_case(draw):
    shape = draw(mst.shapes(max_dims=3, max_side=4))
    axis = draw(st.integers(-len(shape) - 1, len(shape)))
    return [draw(arrays_of(shape)) for _ in range(draw(st.integers(1, 3)))], axis


@op_settings()
@given(case=stack_case())
def test_stack(device, reference, case):
    arrays, axis = case
    check_op(lambda *xs: F.stack(xs, axis=axis), arrays, device, reference,
             lambda *xs: np.stack(xs, axis=axis), lambda *ts: reference.stack(ts, dim=axis))


@st.composite
def split_case(draw, mode):
    """(array, how, axis): ``how`` equal sections dividing the axis, or sorted cut points."""
    a = draw(arrays_of(SHAPES_1D_UP))
    axis = draw(st.integers(-a.ndim, a.ndim - 1))
    size = a.shape[axis]
    if mode == "sections":
        how = draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
    else:
        how = sorted(draw(st.lists(st.integers(0, size), min_size=1, max_size=3)))  # repeats give empty parts
    return a, how, axis


@pytest.mark.parametrize("mode", ["sections", "indices"])
@op_settings()
@given(data=st.data())
def test_split(mode, device, reference, data):
    a, how, axis = data.draw(split_case(mode), label="x, how, axis")
    check_op(lambda x: F.split(x, how, axis=axis), [a], device, reference,
             lambda x: tuple(np.split(x, how, axis=axis)), lambda t: t.tensor_split(how, dim=axis))


def test_split_unused_parts_get_zero_gradient(device, torch):
    a = np.arange(12.0).reshape(3, 4)
    check_op(lambda x: F.split(x, [1, 3], axis=1)[1], [a], device, torch, None,
             lambda t: t.tensor_split([1, 3], dim=1)[1])


# ---------------------------------------------------------------- padding
@st.composite
def pad_case(draw, form):
    """(array, pad_width in NumPy's ``form``, the same as per-axis pairs, fill value)."""
    a = draw(arrays_of(SHAPES_1D_UP))
    widths = st.integers(0, 2)
    if form == "int":
        pad_width = draw(widths)
        pairs = [(pad_width, pad_width)] * a.ndim
    elif form == "pair":
        pad_width = (draw(widths), draw(widths))
        pairs = [pad_width] * a.ndim
    else:
        pairs = pad_width = [(draw(widths), draw(widths)) for _ in range(a.ndim)]
    return a, pad_width, pairs, draw(st.sampled_from([0.0, 1.5, -2.0]))


@pytest.mark.parametrize("form", ["int", "pair", "per_axis"])
@op_settings()
@given(data=st.data())
def test_pad(form, device, reference, data):
    a, pad_width, pairs, value = data.draw(pad_case(form), label="x, pad_width, pairs, value")
    torch_pad = [w for pair in reversed(pairs) for w in pair]  # last axis first
    check_op(lambda x: F.pad(x, pad_width, value), [a], device, reference,
             lambda x: np.pad(x, pad_width, constant_values=value),
             lambda t: reference.nn.functional.pad(t, torch_pad, value=value))


# ------------------------------------------------------ dtypes and devices
# float32 <-> float64: a float32 value (or step) limits the numerical gradient, so use
# float32's step and tolerances (design notes: eps about 1e-2, tolerance about 2e-3).
FLOAT32_GRADCHECK = {"eps": 1e-2, "atol": 2e-3, "rtol": 2e-3}


@pytest.mark.parametrize("method", [False, True])
@pytest.mark.parametrize("source, target", [("float64", "float32"), ("float32", "float64")])
@op_settings(fraction=0.6)
@given(a=arrays_of(mst.shapes(max_dims=3, max_side=4)))
def test_astype(source, target, method, device, reference, a):
    a = a.astype(source)
    fn = (lambda x: x.to(dtype=target)) if method else (lambda x: F.astype(x, target))
    torch_dtype = None if reference is None else getattr(reference, target)
    check_op(fn, [a], device, reference, lambda x: x.astype(target), lambda t: t.to(torch_dtype),
             gradcheck_kwargs=FLOAT32_GRADCHECK)


@pytest.mark.parametrize("form", ["function", "method", "round_trip"])
@op_settings(fraction=0.6)
@given(a=arrays_of(SHAPES))
def test_to_device(form, device, reference, a):
    if form == "round_trip":  # there and back, with an op on the other device in between
        fn, out_device = (lambda x: F.to_device(F.to_device(x, "cpu:1") * 2.0, device)), device
        numpy_fn, torch_fn = (lambda x: x * 2.0), (lambda t: t * 2.0)
    else:
        fn = (lambda x: x.to("cpu:1")) if form == "method" else (lambda x: F.to_device(x, "cpu:1"))
        out_device, numpy_fn, torch_fn = "cpu:1", (lambda x: x.copy()), (lambda t: t.to("cpu"))
    check_op(fn, [a], device, reference, numpy_fn, torch_fn, out_device=out_device)


# ------------------------------------------------------- second derivatives
# name: (function, input shapes); each is multiplied by itself so the second derivative is not 0
GRADGRAD = {
    "reshape": (lambda x: F.reshape(x, (4, -1)), [(2, 3, 2)]),
    "transpose": (lambda x: F.transpose(x, (2, 0, 1)), [(2, 3, 2)]),
    "broadcast_to": (lambda x: F.broadcast_to(x, (2, 3, 4)), [(3, 1)]),
    "sum_to": (lambda x: F.sum_to(x, (3, 1)), [(2, 3, 4)]),
    "getitem_basic": (lambda x: F.getitem(x, (slice(None, None, -1), 1)), [(3, 4)]),
    "getitem_repeated": (lambda x: F.getitem(x, np.array([0, 2, 0, 0])), [(3, 2)]),
    "concatenate": (lambda a, b: F.concatenate([a, b], axis=1), [(2, 3), (2, 1)]),
    "stack": (lambda a, b: F.stack([a, b], axis=-1), [(2, 3), (2, 3)]),
    "split": (lambda x: F.split(x, [1, 3], axis=1)[1], [(2, 4)]),
    "pad": (lambda x: F.pad(x, [(1, 0), (0, 2)], 1.0), [(2, 3)]),
    "astype": (lambda x: F.astype(x, "float32"), [(2, 3)]),
    "to_device": (lambda x: F.to_device(x, "cpu:1"), [(2, 3)]),
}


@pytest.mark.parametrize("name", GRADGRAD)
def test_gradgradcheck(name, device, rng):
    fn, shapes = GRADGRAD[name]
    kwargs = FLOAT32_GRADCHECK if name == "astype" else {}
    arrays = [fixed_array(rng, shape) for shape in shapes]

    def squared(*xs):
        y = fn(*xs)
        return y * y

    check_gradgrad(squared, arrays, device, **kwargs)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", ["reshape", "transpose", "broadcast_to", "getitem_repeated", "concatenate",
                                  "stack", "split", "pad"])
def test_dtype_kept(name, dtype, device, rng):
    fn, shapes = GRADGRAD[name]
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    check_dtype(fn, [fixed_array(rng, shape) for shape in shapes], dtype, device)
