"""In-place updates: they change the tensor's own data where no gradient is affected, refuse with
PyTorch's reason elsewhere, and a value saved for backward and then modified is caught in backward."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl


def torch_error(torch, fn) -> str:
    with pytest.raises(RuntimeError) as info:
        fn(torch)
    return str(info.value)


# ------------------------------------------------------- allowed updates
def test_manual_sgd_step_under_no_grad_trains(device):
    rng = np.random.default_rng(0)
    x = mdl.tensor(rng.standard_normal((16, 3)), device=device)
    target = x @ mdl.tensor([[1.0], [-2.0], [0.5]], device=device)
    w = mdl.tensor(np.zeros((3, 1)), requires_grad=True, device=device)
    data = w.data
    losses = []
    for _ in range(20):
        loss = ((x @ w - target) ** 2).mean()
        losses.append(float(loss))
        w.grad = None
        loss.backward()
        with mdl.no_grad():
            w -= 0.3 * w.grad  # the issue: this rebound a local name and nothing trained
    assert w.data is data  # updated in place: the same array, every reference sees it
    assert losses[-1] < 0.01 * losses[0]
    np.testing.assert_allclose(w.numpy().ravel(), [1.0, -2.0, 0.5], atol=0.05)


def test_updates_match_pytorch(device, torch):
    start = np.arange(6, dtype=np.float32).reshape(2, 3)
    other = np.array([1.0, -2.0, 4.0], dtype=np.float32)

    def run(lib, make):
        x = make(start.copy())
        x += make(other)
        x -= 1.5
        x *= make(other)
        x /= 4.0
        x.add_(make(other), alpha=0.5)
        x.sub_(2.0)
        x.mul_(3.0)
        x.div_(make(other))
        return x

    ours = run(mdl, lambda a: mdl.tensor(a, device=device))
    theirs = run(torch, torch.from_numpy)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)
    assert ours.dtype == np.float32


def test_zero_fill_copy(device, torch):
    x = mdl.tensor(np.ones((2, 3), np.float32), device=device)
    same = x.zero_()
    assert same is x and not x.numpy().any()
    x.fill_(2.5)
    np.testing.assert_array_equal(x.numpy(), np.full((2, 3), 2.5))
    x.copy_(mdl.tensor(np.array([1, 2, 3]), device=device))  # broadcast and cast, as torch's copy_
    reference = torch.zeros(2, 3).copy_(torch.tensor([1, 2, 3]))
    np.testing.assert_array_equal(x.numpy(), reference.numpy())
    assert x.dtype == np.float32
    x.copy_(np.full((2, 3), 7.0))
    assert (x.numpy() == 7.0).all()


def test_update_through_a_view_changes_the_base(torch):
    x = mdl.tensor(np.zeros((2, 3)))
    v = x.reshape(-1)
    v += 1
    t = torch.zeros(2, 3)
    t.reshape(-1).add_(1)
    np.testing.assert_array_equal(x.numpy(), t.numpy())


def test_a_leaf_that_requires_grad_may_be_updated_under_no_grad():
    w = mdl.tensor([1.0, 2.0], requires_grad=True)
    with mdl.no_grad():
        w.mul_(2).add_(1)
    np.testing.assert_array_equal(w.numpy(), [3.0, 5.0])
    assert w.requires_grad and w.is_leaf


# ------------------------------------------------------------- refusals
def test_leaf_that_requires_grad_is_refused_with_pytorchs_message(torch):
    expected = torch_error(torch, lambda t: t.ones(2, requires_grad=True).add_(1))
    w = mdl.tensor([1.0, 2.0], requires_grad=True)
    for update in (lambda: w.add_(1), lambda: w.zero_(), lambda: w.copy_(np.zeros(2))):
        with pytest.raises(RuntimeError) as info:
            update()
        assert str(info.value).startswith(expected)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        w -= 1.0
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])  # untouched


def test_a_tensor_in_the_graph_is_refused_not_rebound():
    w = mdl.tensor([1.0, 2.0], requires_grad=True)
    y = w * 2
    alias = y
    with pytest.raises(RuntimeError, match="part of the autograd graph.*y = y \\+ z"):
        y += 1
    assert y is alias and y.numpy().tolist() == [2.0, 4.0]


def test_an_operand_that_requires_grad_is_refused():
    buffer = mdl.tensor([0.0, 0.0])
    w = mdl.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="operand requires grad"):
        buffer += w
    with pytest.raises(RuntimeError, match="operand requires grad"):
        buffer.add_(w, alpha=2.0)
    with mdl.no_grad():
        buffer += w
    assert buffer.numpy().tolist() == [1.0, 2.0]


def test_dtype_and_shape_errors_say_what_pytorch_says(torch):
    ints = mdl.tensor([1, 2, 3])
    with pytest.raises(mdl.OpTypeError, match="result type float32 can't be cast to the desired output type int64"):
        ints *= 0.5
    with pytest.raises(mdl.OpTypeError, match="result type float32 can't be cast"):
        ints /= 2
    assert ints.numpy().tolist() == [1, 2, 3]
    expected = torch_error(torch, lambda t: t.zeros(3).add_(t.zeros(2, 3)))
    assert "doesn't match the broadcast shape" in expected
    with pytest.raises(mdl.ShapeError, match=r"output with shape \(3,\) doesn't match the broadcast shape \(2, 3\)"):
        mdl.tensor([0.0, 0.0, 0.0]).add_(mdl.tensor(np.zeros((2, 3))))
    with pytest.raises(mdl.ShapeError, match="does not broadcast"):
        mdl.tensor([0.0, 0.0, 0.0]).copy_(np.zeros(2))


def test_a_read_only_broadcast_view_is_refused():
    view = mdl.tensor([1.0, 2.0]).broadcast_to((3, 2))
    with pytest.raises(RuntimeError, match="read-only.*clone"):
        view += 1
    cloned = view.clone()
    cloned += 1
    assert cloned.numpy().tolist() == [[2.0, 3.0]] * 3


# --------------------------------------------------- saved for backward
def test_a_saved_input_modified_in_place_is_caught_in_backward(torch):
    expected = torch_error(torch, _torch_modified_saved_input)
    x = mdl.tensor([1.0, 2.0, 3.0])
    w = mdl.tensor([1.0, 1.0, 1.0], requires_grad=True)
    y = (x * w).sum()  # mul saves x for w's gradient
    x += 1
    with pytest.raises(RuntimeError) as info:
        y.backward()
    message = str(info.value)
    assert message.startswith(expected.split(":")[0])  # "one of the variables needed for gradient computation ..."
    assert "is at version 1; expected version 0 instead" in message and "input 0 of mul" in message


def _torch_modified_saved_input(torch):
    x = torch.tensor([1.0, 2.0, 3.0])
    w = torch.ones(3, requires_grad=True)
    y = (x * w).sum()
    x += 1
    y.backward()


def test_an_input_that_is_not_saved_may_change(torch):
    x = mdl.tensor([1.0, 2.0])
    w = mdl.tensor([1.0, 1.0], requires_grad=True)
    y = (x + w).sum()  # add needs no values for its backward, so PyTorch allows this too
    x += 1
    y.backward()
    assert w.grad.numpy().tolist() == [1.0, 1.0]


def test_a_view_shares_the_version_counter():
    x = mdl.tensor([[1.0, 2.0], [3.0, 4.0]])
    w = mdl.tensor([[1.0, 1.0], [1.0, 1.0]], requires_grad=True)
    y = (x * w).sum()
    row = x[0]
    with mdl.no_grad():
        row.mul_(10)
    assert x._version == row._version == 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_a_saved_output_modified_in_place_is_caught(torch):
    w = mdl.tensor([0.5, 1.0], requires_grad=True)
    y = w.exp()  # exp's backward reads its output
    with mdl.no_grad():
        y.mul_(2)
    with pytest.raises(RuntimeError, match="output 0 of exp, is at version 1; expected version 0"):
        y.sum().backward()


def test_an_update_after_backward_is_fine():
    w = mdl.tensor([1.0, 2.0], requires_grad=True)
    for _ in range(2):
        (w * w).sum().backward()
        with mdl.no_grad():
            w -= 0.1 * w.grad
        w.grad = None
    np.testing.assert_allclose(w.numpy(), [0.64, 1.28])
