"""Shared checks for the op tests in this folder (not a test module).

``check_op`` runs, on one drawn example, every property an op must have. The
``reference`` fixture (import it into a test module) runs each op test twice:
against NumPy with numerical gradients, and against PyTorch (skipped, with the
reason, where PyTorch is not installed)::

    @op_settings()
    @given(a=mst.arrays(shape=SHAPES))
    def test_exp(device, reference, a):
        check_op(F.exp, [a], device, reference, numpy_fn=np.exp, torch_fn=lambda t: t.exp())
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import minidl as mdl
from minidl.testing import gradcheck, gradgradcheck
from minidl.testing import strategies as mst

# Forward values against NumPy on the same float64 inputs, and against PyTorch.
NUMPY_TOL = {"rtol": 1e-10, "atol": 1e-12}
TORCH_TOL = {"rtol": 1e-9, "atol": 1e-11}
# Low-precision forward against the float64 forward of the same (rounded) values.
DTYPE_TOL = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 3e-2}


def op_settings(fraction: float = 1.0):
    """The active hypothesis profile, with the function-scoped ``device``/``reference`` fixtures
    allowed (they only pick a parameter; nothing in them changes between examples).

    ``fraction`` scales the profile's ``max_examples`` down for the slower tests.
    """
    base = settings.default
    return settings(
        suppress_health_check=sorted(set(base.suppress_health_check) | {HealthCheck.function_scoped_fixture},
                                     key=lambda h: h.value),
        max_examples=max(1, round(base.max_examples * fraction)),
    )


@pytest.fixture(params=["numpy", "torch"])
def reference(request):
    """None: check against NumPy and numerical gradients. Otherwise the torch module."""
    if request.param == "torch":
        return request.getfixturevalue("torch")
    return None


# ------------------------------------------------------------------ inputs
def domain_arrays(domain: str = "any", shape=None, **kwargs):
    """float64 arrays (minidl.testing.strategies.arrays) kept inside an op's smooth domain.

    any: [-5, 5]; nonzero: |x| >= 0.25 (poles, kinks at 0); positive: [0.25, 5.25];
    exponent: [-2, 2].
    """
    if shape is None:
        shape = mst.shapes(max_dims=3, max_side=4)
    if domain == "any":
        return mst.arrays(shape=shape, **kwargs)
    if domain == "nonzero":
        return mst.arrays(shape=shape, min_magnitude=0.25, **kwargs)
    if domain == "positive":
        return mst.arrays(shape=shape, **kwargs).map(lambda a: np.abs(a) + 0.25)
    if domain == "exponent":
        return mst.arrays(shape=shape, min_value=-2.0, max_value=2.0, **kwargs)
    raise ValueError(domain)


def fixed_array(rng, shape, domain: str = "any"):
    """A seeded float64 array in ``domain`` (see :func:`domain_arrays`), for the fixed-input tests."""
    a = rng.standard_normal(shape)
    if domain == "nonzero":
        return np.sign(a) * (np.abs(a) + 0.5) + (a == 0)
    if domain == "positive":
        return np.abs(a) + 0.5
    if domain == "exponent":
        return np.clip(a, -2.0, 2.0)
    return a


def spread_apart(*arrays, gap: float = 1e-3):
    """The arrays with every element at least ``gap`` from every other one, order kept.

    max/min and maximum/minimum have kinks where elements tie; no finite-difference
    step (1e-6) may cross one. Elements are shifted up by ``gap`` times their rank.
    """
    flat = np.concatenate([np.ravel(a) for a in arrays]).astype(np.float64)
    order = np.argsort(flat, kind="stable")
    flat[order] += gap * np.arange(flat.size)
    out, start = [], 0
    for a in arrays:
        out.append(flat[start:start + np.size(a)].reshape(np.shape(a)))
        start += np.size(a)
    return out if len(out) > 1 else out[0]


def away_from(a, points, margin: float = 0.05):
    """``a`` with elements closer than ``margin`` to any of ``points`` moved 2 margins off it."""
    for p in points:
        near = np.abs(a - p) < margin
        a = np.where(near, p + np.where(a >= p, 2 * margin, -2 * margin), a)
    return a


def small_ints(n):
    """Index values in [-n, n) (negative ones count from the end)."""
    return st.integers(-n, n - 1)


# ------------------------------------------------------------------ checks
def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _host(x):
    """float64 NumPy copy of a Tensor or array (bfloat16 included)."""
    return np.asarray(x.numpy() if isinstance(x, mdl.Tensor) else x).astype(np.float64)


def _shares_memory(xp, a, b) -> bool:
    """``xp.shares_memory``; for CuPy 0-d arrays a byte-bounds check, exact for one element.

    (CuPy 14.2's shares_memory answers True for two separate 0-d arrays, seen on an H100.)
    """
    if xp is not np and (a.ndim == 0 or b.ndim == 0):
        return xp.may_share_memory(a, b)
    return xp.shares_memory(a, b)


def check_op(fn, arrays, device, reference, numpy_fn, torch_fn=None, *, out_device=None,
             numerical=True, gradcheck_kwargs=None, seed=0):
    """Check one example of an op; returns ``(outputs, gradients)`` for extra assertions.

    fn: the minidl op applied to Tensors made from ``arrays`` (each requires grad, on
        ``device``); returns a Tensor or a tuple of Tensors.
    numpy_fn: the NumPy reference on copies of ``arrays``.
    torch_fn: the same op on float64 PyTorch leaf tensors.
    reference: the ``reference`` fixture: None checks the forward against ``numpy_fn``
        and the gradients against central differences (``gradcheck``, unless
        ``numerical`` is False); the torch module checks forward and gradients
        against PyTorch.
    Always checked: outputs on ``out_device`` (default ``device``); outputs and gradients
    finite (inputs are drawn inside the op's smooth domain); every input gets a
    gradient of its own shape, dtype and device, in memory of its own; neither the
    inputs' data nor the upstream gradients passed to backward are modified.
    """
    arrays = [np.asarray(a) for a in arrays]
    saved = [a.copy() for a in arrays]
    xs = [mdl.tensor(a, requires_grad=True, device=device) for a in arrays]
    outs = _as_tuple(fn(*xs))
    expected_device = mdl.Device(out_device or device)
    for k, y in enumerate(outs):
        assert isinstance(y, mdl.Tensor), f"output {k} is a {type(y).__name__}, not a Tensor"
        assert y.device == expected_device, f"output {k} is on {y.device}, expected {expected_device}"

    rng = np.random.default_rng(seed)
    gys = [mdl.tensor(rng.standard_normal(y.shape).astype(y.dtype), device=y.device) for y in outs]
    gys_saved = [gy.numpy().copy() for gy in gys]
    if len(outs) == 1:
        outs[0].backward(gys[0])
        grads = [x.grad for x in xs]
    else:
        grads = list(mdl.grad(list(outs), xs, gys))

    for i, (x, a) in enumerate(zip(xs, saved)):
        np.testing.assert_array_equal(x.numpy(), a, err_msg=f"the op modified input {i}")
    for k, (gy, g) in enumerate(zip(gys, gys_saved)):
        np.testing.assert_array_equal(gy.numpy(), g, err_msg=f"backward modified upstream gradient {k}")
    for i, (x, g) in enumerate(zip(xs, grads)):
        assert g is not None, f"input {i} got no gradient"
        assert g.shape == x.shape, f"gradient of input {i} has shape {g.shape}, the input {x.shape}"
        assert g.dtype == x.dtype, f"gradient of input {i} is {g.dtype}, the input {x.dtype}"
        assert g.device == x.device, f"gradient of input {i} is on {g.device}, the input on {x.device}"
        # gradcheck alone would miss a NaN gradient: NaN compares False against any tolerance.
        assert np.isfinite(_host(g)).all(), f"gradient of input {i} is not finite: {g}"
    for k, y in enumerate(outs):
        assert np.isfinite(_host(y)).all(), f"output {k} is not finite: {y}"
    # .grad belongs to its leaf: an in-place update of one (an optimizer's) must not change
    # the caller's upstream gradient nor another input's gradient.
    for i, g in enumerate(grads):
        xp = g.device.xp  # cpu:0 and cpu:1 share host memory, so compare by array module
        for k, gy in enumerate(gys):
            if gy.device.xp is xp:
                assert not _shares_memory(xp, g.data, gy.data), f"gradient of input {i} views upstream gradient {k}"
        for j in range(i):
            if grads[j].device.xp is xp:
                assert not _shares_memory(xp, g.data, grads[j].data), f"gradients of inputs {j} and {i} share memory"

    if reference is None:
        expected = _as_tuple(numpy_fn(*[a.copy() for a in saved]))
        assert len(outs) == len(expected), f"{len(outs)} outputs, NumPy gives {len(expected)}"
        for k, (y, e) in enumerate(zip(outs, expected)):
            e = np.asarray(e)
            assert y.shape == e.shape, f"output {k} has shape {y.shape}, NumPy gives {e.shape}"
            assert y.dtype == e.dtype, f"output {k} is {y.dtype}, NumPy gives {e.dtype}"
            np.testing.assert_allclose(y.numpy(), e, **NUMPY_TOL, err_msg=f"output {k} differs from NumPy")
        if numerical:
            fresh = [mdl.tensor(a, requires_grad=True, device=device) for a in saved]
            assert gradcheck(fn, fresh, **(gradcheck_kwargs or {}))
    else:
        torch = reference
        txs = [torch.tensor(a, requires_grad=True) for a in saved]
        touts = _as_tuple(torch_fn(*txs))
        assert len(outs) == len(touts), f"{len(outs)} outputs, PyTorch gives {len(touts)}"
        for k, (y, t) in enumerate(zip(outs, touts)):
            assert y.shape == tuple(t.shape), f"output {k} has shape {y.shape}, PyTorch gives {tuple(t.shape)}"
            assert str(y.dtype) == str(t.dtype).removeprefix("torch."), f"output {k}: {y.dtype} vs {t.dtype}"
            np.testing.assert_allclose(y.numpy(), t.detach().numpy(), **TORCH_TOL,
                                       err_msg=f"output {k} differs from PyTorch")
        torch.autograd.backward(list(touts), [torch.from_numpy(g.copy()) for g in gys_saved])
        for i, (g, t) in enumerate(zip(grads, txs)):
            tg = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
            np.testing.assert_allclose(g.numpy(), tg, **TORCH_TOL,
                                       err_msg=f"gradient of input {i} differs from PyTorch")
    return outs, grads


def check_gradgrad(fn, arrays, device, **kwargs):
    """Second derivatives (backward run with create_graph) against central differences."""
    xs = [mdl.tensor(np.asarray(a, dtype=np.float64), requires_grad=True, device=device) for a in arrays]
    assert gradgradcheck(fn, xs, **kwargs)


def check_dtype(fn, arrays, dtype, device):
    """The op keeps a low-precision dtype, forward and backward, and stays close to float64."""
    xs = [mdl.tensor(a, dtype=dtype, requires_grad=True, device=device) for a in arrays]
    outs = _as_tuple(fn(*xs))
    for k, y in enumerate(outs):
        assert y.dtype == xs[0].dtype, f"output {k} is {y.dtype}, the inputs {xs[0].dtype}"
    # The same op in float64 on the values the low-precision inputs really hold.
    wide = _as_tuple(fn(*[mdl.tensor(_host(x), device=device) for x in xs]))
    tol = DTYPE_TOL[str(xs[0].dtype)]
    for k, (y, w) in enumerate(zip(outs, wide)):
        np.testing.assert_allclose(_host(y), _host(w), rtol=tol, atol=tol,
                                   err_msg=f"{xs[0].dtype} output {k} is far from float64")
    grads = mdl.grad(list(outs), xs, [mdl.ones_like(y) for y in outs], allow_unused=True)
    for i, g in enumerate(grads):
        assert g is not None, f"input {i} got no gradient"
        assert g.dtype == xs[i].dtype, f"gradient of input {i} is {g.dtype}, the input {xs[i].dtype}"
        assert np.isfinite(_host(g)).all(), f"gradient of input {i} is not finite"
