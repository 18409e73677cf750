"""Tensor methods in both spellings users bring: NumPy's and PyTorch's (checked against both libraries)."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl

A = np.arange(24, dtype=np.float64).reshape(2, 3, 4)


def leaf(array, device="cpu"):
    return mdl.tensor(array, requires_grad=True, device=device)


# ------------------------------------------------------------------ axes
def test_transpose_permutes_like_numpy(device):
    x = leaf(A, device)
    np.testing.assert_array_equal(x.transpose().numpy(), A.transpose())
    np.testing.assert_array_equal(x.transpose(2, 0, 1).numpy(), A.transpose(2, 0, 1))
    np.testing.assert_array_equal(x.transpose((2, 0, 1)).numpy(), A.transpose((2, 0, 1)))
    np.testing.assert_array_equal(x.T.numpy(), A.T)
    m = leaf(A[0], device)
    np.testing.assert_array_equal(m.transpose(1, 0).numpy(), A[0].T)  # the example: was a TypeError


def test_transpose_with_two_axes_swaps_them_like_pytorch(device, torch):
    x = leaf(A, device)
    for dims in [(0, 2), (2, 1), (-1, 0)]:
        expected = torch.from_numpy(A).transpose(*dims).numpy()
        np.testing.assert_array_equal(x.transpose(*dims).numpy(), expected)
        np.testing.assert_array_equal(x.swapaxes(*dims).numpy(), expected)
    y = x.transpose(0, 2)
    (y * mdl.tensor(np.arange(24.0).reshape(4, 3, 2), device=device)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.arange(24.0).reshape(4, 3, 2).transpose(2, 1, 0))
    m = A[0]
    assert np.array_equal(leaf(m, device).transpose(0, 1).numpy(), torch.from_numpy(m).transpose(0, 1).numpy())
    with pytest.raises(mdl.ShapeError, match="axis 3 is out of range"):
        x.transpose(0, 3)


def test_permute_reshape_view(device, torch):
    x = leaf(A, device)
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), torch.from_numpy(A).permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(x.permute((1, 2, 0)).numpy(), A.transpose(1, 2, 0))
    assert x.reshape(6, -1).shape == x.reshape((6, -1)).shape == x.view(6, 4).shape == (6, 4)
    x.view(-1).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.ones_like(A))


@pytest.mark.parametrize("start, end", [(0, -1), (1, -1), (0, 1), (1, 2), (-2, -1), (2, 2)])
def test_flatten_follows_pytorch(device, torch, start, end):
    x = leaf(A, device)
    assert x.flatten(start, end).shape == tuple(torch.from_numpy(A).flatten(start, end).shape)
    assert mdl.F.flatten(x, start, end).shape == x.flatten(start_dim=start, end_dim=end).shape


def test_flatten_of_a_vector_stays_a_vector_and_bad_dims_are_errors():
    assert mdl.tensor([1.0, 2.0, 3.0]).flatten().shape == (3,)  # was (3, 1)
    assert mdl.tensor(2.0).flatten().shape == (1,)  # as torch.flatten of a 0-d tensor
    with pytest.raises(mdl.ShapeError, match="start_dim 2 comes after end_dim 1"):
        mdl.tensor(A).flatten(2, 1)


def test_squeeze_and_unsqueeze(device, torch):
    a = np.zeros((1, 3, 1, 2))
    x = mdl.tensor(a, device=device)
    reference = torch.from_numpy(a)
    assert x.squeeze().shape == tuple(reference.squeeze().shape)
    assert x.squeeze(0).shape == x.squeeze(dim=0).shape == tuple(reference.squeeze(0).shape)
    for dim in (0, 2, -1, 4):
        assert x.unsqueeze(dim).shape == tuple(reference.unsqueeze(dim).shape)
    with pytest.raises(ValueError, match="axis 1 of shape"):
        x.squeeze(1)  # NumPy's rule: squeezing an axis longer than 1 is an error, not a silent no-op
    with pytest.raises(mdl.ShapeError, match="axis 5 is out of range"):
        x.unsqueeze(5)


# ------------------------------------------------------------ reductions
@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
def test_reductions_take_axis_or_dim(device, torch, name):
    x = mdl.tensor(A, device=device)
    reference = getattr(torch.from_numpy(A), name)(dim=1, keepdim=True)
    reference = reference.values if name in ("max", "min") else reference
    for kwargs in ({"dim": 1, "keepdim": True}, {"axis": 1, "keepdims": True}):
        np.testing.assert_allclose(getattr(x, name)(**kwargs).numpy(), reference.numpy())
        np.testing.assert_allclose(getattr(mdl.F, name)(x, **kwargs).numpy(), reference.numpy())
    assert getattr(x, name)(1).shape == (2, 4)
    with pytest.raises(TypeError, match="axis .* or dim .*, not both"):
        getattr(x, name)(axis=0, dim=1)
    with pytest.raises(TypeError, match="keepdims .* or keepdim .*, not both"):
        getattr(x, name)(1, keepdims=True, keepdim=True)


def test_argmax_argmin_take_axis_or_dim(device, torch):
    values = np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    x = mdl.tensor(values, device=device)
    reference = torch.from_numpy(values)
    np.testing.assert_array_equal(x.argmax(dim=1).numpy(), reference.argmax(dim=1).numpy())
    np.testing.assert_array_equal(x.argmin(axis=0, keepdims=True).numpy(),
                                  reference.argmin(dim=0, keepdim=True).numpy())
    assert x.argmax().item() == 3


def test_integer_mean_is_float32():
    assert mdl.tensor([1, 2, 4]).mean().dtype == np.float32
    assert mdl.tensor([1, 2, 4]).mean().item() == pytest.approx(7 / 3)


# ---------------------------------------------------------- dtype, device
def test_to_device_dtype_or_both(device):
    x = leaf(A, device)
    assert x.to(mdl.float32).dtype == np.float32  # was "unknown device"
    assert x.to("float16").dtype == np.float16
    assert x.to(dtype="float32").dtype == np.float32
    moved = x.to("cpu", mdl.float32)
    assert moved.device == mdl.Device("cpu") and moved.dtype == np.float32
    assert x.to(device).device == x.device and x.to(device) is x  # nothing to do: the same tensor
    like = x.to(mdl.tensor(np.zeros(1, np.float32)))
    assert like.dtype == np.float32 and like.device == mdl.Device("cpu")
    like.sum().backward()  # differentiable
    assert x.grad.dtype == np.float64 and x.grad.device == x.device
    with pytest.raises(TypeError, match="neither a device .* nor a dtype"):
        x.to("gpu0")


def test_float_double_half():
    x = mdl.tensor([1, 2])
    assert (x.float().dtype, x.double().dtype, x.half().dtype) == (np.float32, np.float64, np.float16)


def test_numel_dim_clone_detach(device):
    x = leaf(A, device)
    assert (x.numel(), x.dim()) == (24, 3)
    c = x.clone()
    assert c.data is not x.data and c.requires_grad
    (c * 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full(A.shape, 2.0))
    d = x.detach()
    assert not d.requires_grad and d.data is x.data


def test_conversions_to_python_and_numpy():
    x = mdl.tensor(np.array([[1.5, 2.0], [3.0, 4.0]]))
    array = np.asarray(x)
    assert array.dtype == np.float64 and array.shape == (2, 2)  # was an object array
    assert np.shares_memory(array, x.data)  # the CPU data itself, like torch's __array__
    assert np.asarray(x, dtype=np.float32).dtype == np.float32
    assert np.array(x, copy=True) is not x.data
    loss = (leaf(np.array([2.0])) * 3).sum()
    assert float(loss) == 6.0 and int(loss) == 6  # float(loss) was a TypeError
    assert isinstance(x[0, 0].item(), float) and x.tolist() == [[1.5, 2.0], [3.0, 4.0]]
    assert isinstance(x.numpy(), np.ndarray)
    with pytest.raises(ValueError, match="one element"):
        float(x)


def test_len_and_iteration_over_the_first_axis():
    x = leaf(A)
    assert len(x) == 2
    rows = list(x)
    assert [r.shape for r in rows] == [(3, 4), (3, 4)]
    sum(r.sum() for r in rows).backward()  # rows are in the graph
    np.testing.assert_array_equal(x.grad.numpy(), np.ones_like(A))
    with pytest.raises(TypeError, match="0-d"):
        len(mdl.tensor(1.0))
    with pytest.raises(TypeError, match="0-d"):
        iter(mdl.tensor(1.0)).__next__()
