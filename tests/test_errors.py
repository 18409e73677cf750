"""Bad input gets a clear error naming the op and the offending shapes, dtypes or devices."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F


def t(shape, **kw):
    return mdl.tensor(np.ones(shape), **kw)


def test_mismatched_shapes_name_op_and_shapes():
    with pytest.raises(mdl.ShapeError, match=r"add: .*\(2, 3\) and \(4,\)") as info:
        t((2, 3)) + t((4,))
    assert info.value.op == "add"
    assert info.value.__cause__ is None  # no NumPy traceback chained in front


def test_matmul_shape_error():
    with pytest.raises(mdl.ShapeError, match=r"matmul: .*\(2, 3\) and \(4, 5\)"):
        t((2, 3)) @ t((4, 5))


def test_reshape_error_names_shapes():
    with pytest.raises(mdl.ShapeError, match=r"reshape: .*\(2, 3\)"):
        t((2, 3)).reshape(4, 2)


def test_shape_errors_are_value_errors():
    with pytest.raises(ValueError):
        F.concatenate([t((2, 3)), t((2, 4))], axis=0)


def test_bad_axis():
    with pytest.raises(ValueError, match="axis 3 is out of bounds"):
        t((2, 3)).sum(axis=3)


def test_index_out_of_range():
    with pytest.raises(IndexError, match=r"getitem: .*\(2, 3\)"):
        t((2, 3))[5]


def test_operands_on_different_devices():
    with pytest.raises(mdl.DeviceError, match=r"mul: operands are on different devices \(cpu:0 and cpu:1\)"):
        t((2,)) * t((2,), device="cpu:1")


def test_requires_grad_on_integers():
    with pytest.raises(TypeError, match="requires_grad=True needs a floating-point tensor, got dtype int64"):
        mdl.tensor(np.arange(3), requires_grad=True)


def test_backward_on_non_scalar():
    x = t((2, 2), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"shape \(2, 2\) needs a gradient"):
        (x * 2).backward()


def test_unsupported_operand_type():
    with pytest.raises(TypeError, match="cannot use an operand of type object"):
        t((2,)) + object()


def test_cross_entropy_bad_labels():
    logits = t((3, 4), requires_grad=True)
    with pytest.raises(mdl.OpIndexError, match="label 4 is out of range for 4 classes"):
        F.cross_entropy(logits, np.array([0, 1, 4]))
    with pytest.raises(mdl.OpTypeError, match="labels must be integers"):
        F.cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(mdl.ShapeError, match=r"labels of shape \(2,\) do not match logits of shape \(3, 4\)"):
        F.cross_entropy(logits, np.array([0, 1]))


def test_plugin_style_backward_returning_wrong_shape_is_caught():
    class Broken(mdl.Function):
        def forward(self, x):
            return x * 2

        def backward(self, gy):
            return gy.sum()

    x = t((2, 3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"Broken.backward returned a gradient of shape \(\) for an input of shape \(2, 3\)"):
        Broken()(x).sum().backward()
