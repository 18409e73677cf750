"""The Tensor type and the backward engine: order, accumulation, graph lifetime, grad modes."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import minidl as mdl
from minidl.testing import gradcheck


def leaf(values, device="cpu", dtype="float64"):
    return mdl.tensor(np.asarray(values, dtype=dtype), requires_grad=True, device=device)


# ------------------------------------------------------------- creation
def test_tensor_copies_and_defaults_to_float32():
    source = np.array([1.0, 2.0])
    x = mdl.tensor([1.0, 2.0])
    assert x.dtype == np.float32
    assert mdl.tensor(source).dtype == np.float64  # NumPy arrays keep their dtype, as in PyTorch
    assert mdl.tensor([1, 2]).dtype == np.int64
    y = mdl.tensor(source)
    source[0] = 99.0
    assert y.numpy()[0] == 1.0


def test_requires_grad_on_integer_tensor_is_refused():
    with pytest.raises(TypeError, match="floating-point.*int64"):
        mdl.tensor([1, 2, 3], requires_grad=True)


def test_tensor_on_device(device):
    x = mdl.tensor([1.0, 2.0], device=device)
    assert x.device == device
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0])


def test_tensor_from_an_array_or_tensor_stays_on_its_device(device):
    x = mdl.tensor([1.0, 2.0], device=device)
    from_array = mdl.tensor(x.data)  # a CuPy array stays on its GPU, as torch.tensor(t) keeps t's device
    from_tensor = mdl.tensor(x)
    assert from_array.device == x.device and from_tensor.device == x.device
    assert from_array.data is not x.data  # copied, as documented
    np.testing.assert_array_equal(from_array.numpy(), [1.0, 2.0])
    assert mdl.tensor(x.data, device="cpu").device == mdl.Device("cpu")


def test_parameter_and_tensor_take_a_tensor_without_nesting():
    t = mdl.tensor([1.0, 2.0])
    p = mdl.Parameter(t)
    assert isinstance(p.data, np.ndarray) and p.data is t.data  # shares the values, as torch.nn.Parameter(t)
    assert p.requires_grad and p.is_leaf and p.dtype == np.float32
    nonleaf = mdl.Parameter(leaf([1.0, 2.0]) * 2)
    assert nonleaf.is_leaf and nonleaf.creator is None
    copied = mdl.tensor(t)
    assert isinstance(copied.data, np.ndarray) and copied.data is not t.data
    assert isinstance(mdl.Parameter([1.0, 2.0]).data, np.ndarray)  # a list too, float32
    assert mdl.Parameter([1.0, 2.0]).dtype == np.float32


def test_repr_and_item():
    x = mdl.tensor([[1.5]], requires_grad=True)
    assert "requires_grad=True" in repr(x)
    assert x.item() == 1.5
    with pytest.raises(ValueError, match="one element"):
        mdl.tensor([1.0, 2.0]).item()
    with pytest.raises(ValueError, match="ambiguous"):
        bool(mdl.tensor([1.0, 2.0]))


# ------------------------------------------------------------- backward
def test_backward_scalar_implicit_gradient(device):
    x = leaf([1.0, -2.0, 3.0], device)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, -4.0, 6.0])
    assert x.grad.device == device


def test_backward_non_scalar_needs_gradient():
    x = leaf([[1.0, 2.0]])
    with pytest.raises(RuntimeError, match=r"shape \(1, 2\) needs a gradient"):
        (x * 2).backward()


def test_backward_with_explicit_gradient_and_wrong_shape():
    x = leaf([1.0, 2.0])
    y = x * 3
    y.backward(np.array([1.0, 10.0]))
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 30.0])
    with pytest.raises(RuntimeError, match="does not match"):
        (x * 3).backward(np.ones(3))


def test_backward_without_requires_grad_is_an_error():
    x = mdl.tensor([1.0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        (x * 2).sum().backward()


def test_reused_value_gradients_accumulate():
    x = leaf([3.0])
    y = x * x + x * 2 + x  # dy/dx = 2x + 3
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [9.0])


def test_diamond_graph_visits_each_op_once():
    # a -> b, c -> d: the engine must wait for both branches before processing a's creator
    x = leaf([2.0])
    a = x.exp()
    b = a * 3
    c = a.log() * a
    d = (b + c).sum()
    d.backward()
    # d = 3 e^x + x e^x  -> d' = 3 e^x + e^x + x e^x
    expected = np.exp(2.0) * (3 + 1 + 2.0)
    np.testing.assert_allclose(x.grad.numpy(), [expected])


def test_gradients_accumulate_across_backward_calls():
    x = leaf([1.0, 2.0])
    (x * 2).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5.0, 5.0])
    x.zero_grad()
    assert x.grad is None


def test_broadcast_gradient_is_summed_to_input_shape():
    x = leaf(np.ones((3, 1)))
    b = leaf(np.arange(4.0))
    (x * b).sum().backward()
    assert x.grad.shape == (3, 1) and b.grad.shape == (4,)
    np.testing.assert_allclose(x.grad.numpy(), np.full((3, 1), 6.0))
    np.testing.assert_allclose(b.grad.numpy(), np.full(4, 3.0))


def test_long_chain_does_not_hit_recursion_limit():
    x = leaf([1.0])
    y = x
    for _ in range(100_000):
        y = y * 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0])


def test_leaf_grad_is_an_owned_writable_array():
    x = leaf(np.ones((2, 3)))
    x.sum().backward()  # the sum's gradient is a broadcast view internally
    assert x.grad.data.flags.writeable and x.grad.data.flags.c_contiguous


def test_two_leaves_do_not_share_a_gradient_array():
    x, y = leaf([1.0]), leaf([2.0])
    (x + y).sum().backward()
    assert x.grad.data is not y.grad.data
    x.grad.data[...] = 7.0
    assert y.grad.numpy()[0] == 1.0


def test_intermediate_grad_only_when_retained():
    x = leaf([1.0, 2.0])
    h = x * 2
    h2 = x * 3
    h.retain_grad()
    (h * h2).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), [3.0, 6.0])
    assert h2.grad is None


# ------------------------------------------------------------- grad modes
def test_no_grad_records_nothing():
    x = leaf([1.0])
    with mdl.no_grad():
        y = x * 2
    assert not y.requires_grad and y.creator is None
    assert mdl.is_grad_enabled()


def test_no_grad_as_decorator_and_enable_grad_inside():
    x = leaf([1.0])

    @mdl.no_grad()
    def infer(t):
        with mdl.enable_grad():
            inner = t * 2
        return t * 2, inner

    outer, inner = infer(x)
    assert not outer.requires_grad and inner.requires_grad


def test_detach_cuts_the_graph_and_shares_data():
    x = leaf([1.0, 2.0])
    y = (x * 2).detach()
    assert not y.requires_grad and y.creator is None
    z = (x * y).sum()
    z.backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0])


# ------------------------------------------------------------- graph lifetime
def test_graph_is_freed_after_backward():
    x = leaf([1.0])
    y = x.exp() * 2
    loss = y.sum()
    creator = weakref.ref(y.creator)
    loss.backward()
    assert creator().inputs is None  # saved tensors released
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()


def test_retain_graph_allows_second_backward():
    x = leaf([1.0, 2.0])
    loss = (x.exp() * 2).sum()
    loss.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first)


def test_outputs_and_graph_are_collected_without_cycles():
    gc.disable()
    try:
        x = leaf(np.ones(1000))
        y = (x * 2).exp()
        ref = weakref.ref(y)
        fn_ref = weakref.ref(y.creator)
        del y
        assert ref() is None and fn_ref() is None  # refcounting alone frees them: no cycles
    finally:
        gc.enable()


# ------------------------------------------------------------- higher order
def test_second_derivative_with_create_graph():
    x = leaf([0.5, -1.5])
    (g,) = mdl.grad((x ** 3).sum(), [x], create_graph=True)
    np.testing.assert_allclose(g.numpy(), 3 * x.numpy() ** 2)
    (gg,) = mdl.grad(g.sum(), [x])
    np.testing.assert_allclose(gg.numpy(), 6 * x.numpy())
    assert x.grad is None  # mdl.grad does not touch .grad


def test_backward_create_graph_makes_grad_differentiable():
    x = leaf([2.0])
    (x.tanh() * x).sum().backward(create_graph=True)
    first = x.grad
    assert first.requires_grad
    x.grad = None
    first.sum().backward()
    t = np.tanh(2.0)
    # d/dx [tanh x + x (1 - tanh^2 x)] = 2(1 - t^2) - 2 x t (1 - t^2)
    np.testing.assert_allclose(x.grad.numpy(), [2 * (1 - t * t) - 2 * 2.0 * t * (1 - t * t)])


def test_ordinary_backward_builds_no_graph():
    x = leaf([1.0, 2.0])
    (x.exp() * x).sum().backward()
    assert not x.grad.requires_grad and x.grad.creator is None


def test_grad_reports_unused_inputs():
    x, unused = leaf([1.0]), leaf([1.0])
    with pytest.raises(RuntimeError, match="not used"):
        mdl.grad((x * 2).sum(), [x, unused])
    gx, gu = mdl.grad((x * 2).sum(), [x, unused], allow_unused=True)
    assert gu is None and gx.numpy()[0] == 2.0


# ------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_gradient_dtype_matches_input(dtype):
    x = leaf([1.0, 2.0], dtype=dtype)
    (x * 2.5 + 1).sum().backward()
    assert x.grad.dtype == np.dtype(dtype)


def test_mixed_precision_gradient_is_cast_back():
    x = leaf([1.0, 2.0], dtype="float32")
    w = leaf([3.0, 4.0], dtype="float64")
    y = x * w
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float64


def test_bfloat16_tensors():
    pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (pip install 'minidl[bf16]')")
    x = mdl.tensor([1.0, 2.0], dtype=mdl.bfloat16, requires_grad=True)
    (x * x).sum().backward()
    assert x.grad.dtype == mdl.bfloat16
    np.testing.assert_allclose(x.grad.numpy().astype(np.float32), [2.0, 4.0])


def test_gradcheck_through_a_small_network():
    rng = np.random.default_rng(1)
    x = leaf(rng.standard_normal((4, 3)))
    w1 = leaf(rng.standard_normal((3, 5)))
    w2 = leaf(rng.standard_normal((5, 2)))
    labels = np.array([0, 1, 1, 0])
    assert gradcheck(lambda a, b, c: mdl.F.cross_entropy((a @ b).tanh() @ c, labels), [x, w1, w2])
