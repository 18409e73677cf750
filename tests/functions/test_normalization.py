"""Normalization (minidl/functions/normalization.py): local response normalization in both
conventions and batch normalization in training and evaluation, against NumPy and PyTorch,
with numerical gradients and second derivatives; running statistics updated like PyTorch's."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidl as mdl
import minidl.functions as F
from minidl.testing import strategies as mst

from ._opcheck import (  # noqa: F401 - reference is a fixture
    check_dtype, check_gradgrad, check_op, fixed_array, op_settings, reference,
)


# ------------------------------------------------------------ NumPy references
def np_lrn(x, size, alpha, beta, k, convention):
    """Explicit window per channel: channels i - size//2 .. i + (size-1)//2, clipped at the edges."""
    c = x.shape[1]
    squares = x * x
    sums = np.stack([squares[:, max(0, i - size // 2):i + (size - 1) // 2 + 1].sum(axis=1) for i in range(c)],
                    axis=1)
    scale = alpha if convention == "paper" else alpha / size
    return x / (k + scale * sums) ** beta


def np_batch_norm(x, weight, bias, mean, var, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _batch_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def on_device(a, device):
    """Running statistics are raw arrays on the input's device (as the BatchNorm layer keeps them)."""
    return mdl.Device(device).xp.array(a)  # a copy


def on_host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)  # CuPy arrays have .get()


def torch_lrn_alpha(alpha, size, convention):
    """PyTorch divides alpha by size; the paper does not."""
    return alpha * size if convention == "paper" else alpha


# ------------------------------------------------------------------ strategies
@st.composite
def lrn_cases(draw):
    """(x, size, alpha, beta, k): (N, C, L) or (N, C, H, W); odd and even sizes, some wider than C."""
    spatial = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2), label="spatial")
    x = draw(mst.arrays(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 6)), *spatial)), label="x")
    size = draw(st.integers(1, 7), label="size")
    alpha = draw(st.sampled_from([1e-4, 0.01, 0.3]), label="alpha")  # 0.3: the nonlinearity shows
    beta = draw(st.sampled_from([0.5, 0.75, 1.0]), label="beta")
    k = draw(st.sampled_from([1.0, 2.0]), label="k")
    return x, size, alpha, beta, k


@st.composite
def batch_norm_shapes(draw):
    """(N, C), (N, C, L) or (N, C, H, W) with at least 2 values per channel."""
    spatial = draw(st.lists(st.integers(1, 3), max_size=2), label="spatial")
    n = draw(st.integers(2 if not spatial or np.prod(spatial) == 1 else 1, 4), label="N")
    return (n, draw(st.integers(1, 3), label="C"), *spatial)


@st.composite
def batch_norm_cases(draw):
    shape = draw(batch_norm_shapes())
    c = shape[1]
    x = draw(mst.arrays(shape=shape), label="x")
    weight = draw(st.none() | mst.arrays(shape=(c,)), label="weight")
    bias = draw(st.none() | mst.arrays(shape=(c,)), label="bias")
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.5]), label="eps")
    return x, weight, bias, eps


# ------------------------------------------------------------------ local_response_norm
@pytest.mark.parametrize("convention", ["paper", "pytorch"])
@op_settings()
@given(case=lrn_cases())
def test_local_response_norm(convention, device, reference, case):
    x, size, alpha, beta, k = case
    check_op(
        lambda x: F.local_response_norm(x, size, alpha, beta, k, convention=convention), [x], device, reference,
        lambda x: np_lrn(x, size, alpha, beta, k, convention),
        lambda t: reference.nn.functional.local_response_norm(t, size, torch_lrn_alpha(alpha, size, convention),
                                                              beta, k),
    )


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 9])
def test_local_response_norm_conventions_relate_by_size(size, device, rng):
    # paper with alpha == pytorch with alpha * size, and the two differ otherwise (for size > 1)
    x = mdl.tensor(fixed_array(rng, (2, 7, 3, 3)), device=device)
    paper = F.local_response_norm(x, size, 0.2, 0.75, 2.0, convention="paper").numpy()
    scaled = F.local_response_norm(x, size, 0.2 * size, 0.75, 2.0, convention="pytorch").numpy()
    np.testing.assert_allclose(paper, scaled, rtol=1e-13)
    if size > 1:
        other = F.local_response_norm(x, size, 0.2, 0.75, 2.0, convention="pytorch").numpy()
        assert np.abs(paper - other).max() > 1e-3


def test_local_response_norm_alexnet_defaults(device, torch, rng):
    # size 5, alpha 1e-4, beta 0.75, k 2 in the paper's convention, scaled to show the window
    x = fixed_array(rng, (2, 8, 3, 3)) * 30
    (y,), _ = check_op(lambda x: F.local_response_norm(x), [x], device, torch, None,
                       lambda t: torch.nn.functional.local_response_norm(t, 5, 5e-4, 0.75, 2.0))
    assert not np.allclose(y.numpy(), x / 2.0 ** 0.75, rtol=1e-3)  # the squares do count


@pytest.mark.parametrize("size", [1, 2, 4, 5, 9])
@pytest.mark.parametrize("channels", [1, 3, 8])
@pytest.mark.parametrize("gy_channels_last", [False, True])
def test_local_response_norm_channels_last_storage(size, channels, gy_channels_last, device, rng):
    # channels-last input (as convolutions leave it) sums each window with flat shifted adds and
    # recomputes the edge channels: values and gradients against the NumPy reference and the
    # C-contiguous route, whatever the storage of the incoming gradient; the output stays channels-last
    x = fixed_array(rng, (3, channels, 4, 5)) * 3
    gy = rng.standard_normal(x.shape)
    stored = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    gy_stored = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) if gy_channels_last else gy
    results = []
    for a in (x, stored):
        t = mdl.tensor(a, requires_grad=True, device=device)
        y = F.local_response_norm(t, size, 0.3, 0.75, 1.5)
        y.backward(mdl.tensor(gy_stored, device=device))
        results.append((y, t.grad.numpy()))
    np.testing.assert_allclose(results[0][0].numpy(), np_lrn(x, size, 0.3, 0.75, 1.5, "paper"), rtol=1e-12)
    for (y, g), other in zip(results[1:], results[:1]):
        np.testing.assert_allclose(y.numpy(), other[0].numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g, other[1], rtol=1e-12, atol=1e-14)
    if channels > 1 and device.startswith("cpu"):
        assert np.moveaxis(results[1][0].numpy(), 1, -1).flags.c_contiguous


@pytest.mark.parametrize("convention", ["paper", "pytorch"])
@pytest.mark.parametrize("size", [3, 4])
def test_local_response_norm_gradgradcheck(convention, size, device, rng):
    x = fixed_array(rng, (2, 5, 2, 2))
    check_gradgrad(lambda x: F.local_response_norm(x, size, 0.5, 0.75, 1.0, convention=convention), [x], device)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_local_response_norm_dtype_kept(dtype, device, rng):
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    check_dtype(lambda x: F.local_response_norm(x, 3, 0.1), [fixed_array(rng, (2, 5, 3, 3))], dtype, device)


@pytest.mark.parametrize("kwargs, shape, word", [
    ({"convention": "caffe"}, (1, 3, 2, 2), "caffe"),
    ({"size": 0}, (1, 3, 2, 2), "size"),
    ({}, (4,), "(4,)"),
])
def test_local_response_norm_errors(kwargs, shape, word, device):
    with pytest.raises(ValueError, match=word.replace("(", r"\(").replace(")", r"\)")):
        F.local_response_norm(mdl.tensor(np.ones(shape), device=device), **kwargs)


# ------------------------------------------------------------------ batch_norm: training
@op_settings()
@given(case=batch_norm_cases())
def test_batch_norm_training(device, reference, case):
    x, weight, bias, eps = case
    names = [name for name, a in (("weight", weight), ("bias", bias)) if a is not None]
    arrays = [x] + [a for a in (weight, bias) if a is not None]

    def fn(x, *params):
        kw = dict(zip(names, params))
        return F.batch_norm(x, kw.get("weight"), kw.get("bias"), training=True, eps=eps)

    def numpy_fn(x, *params):
        kw = dict(zip(names, params))
        mean, var = x.mean(axis=_batch_axes(x)), x.var(axis=_batch_axes(x))  # biased variance
        return np_batch_norm(x, kw.get("weight"), kw.get("bias"), mean, var, eps)

    def torch_fn(t, *params):
        kw = dict(zip(names, params))
        return reference.nn.functional.batch_norm(t, None, None, kw.get("weight"), kw.get("bias"),
                                                  training=True, eps=eps)

    (y,), _ = check_op(fn, arrays, device, reference, numpy_fn, torch_fn)
    if weight is None and bias is None:
        # normalized: zero mean, and variance var / (var + eps) (1 up to eps; 0 for a constant channel)
        axes = _batch_axes(x)
        np.testing.assert_allclose(y.numpy().mean(axis=axes), 0.0, atol=1e-9)
        var = x.var(axis=axes)
        np.testing.assert_allclose(y.numpy().var(axis=axes), var / (var + eps), rtol=1e-9, atol=1e-12)


@op_settings()
@given(shape=batch_norm_shapes(), data=st.data(),
       momentum=st.sampled_from([0.1, 0.5, 1.0]), steps=st.integers(1, 3),
       dtype=st.sampled_from(["float64", "float32"]))
def test_batch_norm_running_stats_like_torch(device, torch, shape, data, momentum, steps, dtype):
    c = shape[1]
    running_mean = data.draw(mst.arrays(shape=(c,)), label="running_mean").astype(dtype)
    running_var = (np.abs(data.draw(mst.arrays(shape=(c,)), label="running_var")) + 0.1).astype(dtype)
    t_mean, t_var = torch.tensor(running_mean), torch.tensor(running_var)
    running_mean, running_var = on_device(running_mean, device), on_device(running_var, device)
    for step in range(steps):
        x = data.draw(mst.arrays(shape=shape), label=f"x{step}").astype(dtype)
        # the arrays passed in are the ones updated (no copy, no rebinding)
        mean_id, var_id = id(running_mean), id(running_var)
        y = F.batch_norm(mdl.tensor(x, device=device), None, None, running_mean, running_var,
                         training=True, momentum=momentum)
        ty = torch.nn.functional.batch_norm(torch.tensor(x), t_mean, t_var, training=True, momentum=momentum)
        assert (id(running_mean), id(running_var)) == (mean_id, var_id)
        assert running_mean.dtype == running_var.dtype == np.dtype(dtype)
        tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == "float64" else {"rtol": 1e-5, "atol": 1e-5}
        # float32 rounding of a (near-)constant channel's mean is amplified by 1/sqrt(eps) ~ 316
        y_tol = tol if dtype == "float64" else {"rtol": 1e-4, "atol": 2e-3}
        np.testing.assert_allclose(y.numpy(), ty.numpy(), **y_tol, err_msg=f"output, step {step}")
        np.testing.assert_allclose(on_host(running_mean), t_mean.numpy(), **tol, err_msg=f"running mean, step {step}")
        np.testing.assert_allclose(on_host(running_var), t_var.numpy(), **tol, err_msg=f"running var, step {step}")


def test_batch_norm_running_var_is_unbiased(device):
    # one channel, values 0 and 2: batch variance 1 (biased), running variance gets 2 (unbiased)
    running_mean, running_var = on_device(np.zeros(1), device), on_device(np.ones(1), device)
    x = mdl.tensor(np.array([[0.0], [2.0]]), device=device)
    y = F.batch_norm(x, running_mean=running_mean, running_var=running_var, training=True, momentum=1.0, eps=0.0)
    np.testing.assert_allclose(y.numpy().ravel(), [-1.0, 1.0])  # normalized with the biased variance
    np.testing.assert_allclose(on_host(running_mean), [1.0])
    np.testing.assert_allclose(on_host(running_var), [2.0])


def test_batch_norm_training_output_ignores_running_stats(device, rng):
    x = mdl.tensor(fixed_array(rng, (4, 3, 2)), device=device)
    a = F.batch_norm(x, running_mean=on_device(np.zeros(3), device), running_var=on_device(np.ones(3), device),
                     training=True)
    b = F.batch_norm(x, running_mean=on_device(np.full(3, 7.0), device),
                     running_var=on_device(np.full(3, 9.0), device), training=True)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


# ------------------------------------------------------------------ batch_norm: evaluation
@op_settings()
@given(case=batch_norm_cases(), data=st.data())
def test_batch_norm_eval(device, reference, case, data):
    x, weight, bias, eps = case
    c = x.shape[1]
    running_mean = data.draw(mst.arrays(shape=(c,)), label="running_mean")
    running_var = np.abs(data.draw(mst.arrays(shape=(c,)), label="running_var")) + 0.1
    stats = on_device(running_mean, device), on_device(running_var, device)
    names = [name for name, a in (("weight", weight), ("bias", bias)) if a is not None]
    arrays = [x] + [a for a in (weight, bias) if a is not None]

    def fn(x, *params):
        kw = dict(zip(names, params))
        return F.batch_norm(x, kw.get("weight"), kw.get("bias"), *stats, training=False, eps=eps)

    def numpy_fn(x, *params):
        kw = dict(zip(names, params))
        return np_batch_norm(x, kw.get("weight"), kw.get("bias"), running_mean, running_var, eps)

    def torch_fn(t, *params):
        kw = dict(zip(names, params))
        torch = reference
        return torch.nn.functional.batch_norm(t, torch.tensor(running_mean), torch.tensor(running_var),
                                              kw.get("weight"), kw.get("bias"), training=False, eps=eps)

    check_op(fn, arrays, device, reference, numpy_fn, torch_fn)
    np.testing.assert_array_equal(on_host(stats[0]), running_mean, err_msg="evaluation changed the running mean")
    np.testing.assert_array_equal(on_host(stats[1]), running_var, err_msg="evaluation changed the running variance")


def test_batch_norm_eval_needs_running_stats(device):
    x = mdl.tensor(np.ones((2, 3)), device=device)
    with pytest.raises(ValueError, match="running"):
        F.batch_norm(x, training=False)


# ------------------------------------------------------------------ batch_norm: second derivatives, dtypes
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradgradcheck(training, device, rng):
    x, weight, bias = fixed_array(rng, (3, 2, 2, 2)), fixed_array(rng, (2,)), fixed_array(rng, (2,))
    running_mean, running_var = fixed_array(rng, (2,)), fixed_array(rng, (2,), "positive")

    def fn(x, weight, bias):
        y = F.batch_norm(x, weight, bias, on_device(running_mean, device), on_device(running_var, device),
                         training=training)
        return y if training else y * y  # evaluation is affine in x: square it

    check_gradgrad(fn, [x, weight, bias], device)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_dtype_kept(training, dtype, device, rng):
    dtype = mdl.bfloat16 if dtype == "bfloat16" else dtype
    running_mean, running_var = fixed_array(rng, (3,)), fixed_array(rng, (3,), "positive")
    stats = on_device(running_mean, device), on_device(running_var, device)
    check_dtype(lambda x, w, b: F.batch_norm(x, w, b, *stats, training=training),
                [fixed_array(rng, (4, 3, 2, 2)), fixed_array(rng, (3,)), fixed_array(rng, (3,))], dtype, device)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [3, 5])
def test_lrn_cuda_kernels_match_the_numpy_path(channels_last, size, rng, cuda):
    x = rng.standard_normal((2, 7, 5, 6)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    results = []
    for device in ("cpu", cuda):
        t = mdl.tensor(x, device=device, requires_grad=True)
        y = F.local_response_norm(t, size, 1e-2, 0.75, 2.0)
        y.backward(mdl.tensor(gy, device=device))
        results.append((y.numpy(), t.grad.numpy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
