"""Numerical gradient checks: compare backward() with central differences."""
from __future__ import annotations

import numpy

from ..backend import CPU, transfer
from ..grad_mode import enable_grad, no_grad
from ..autograd import grad
from ..tensor import Tensor, _wrap

__all__ = ["gradcheck", "gradgradcheck", "GradcheckError", "tolerances"]


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree; the message says where and by how much."""


def tolerances(dtype) -> dict:
    """Default ``eps``, ``atol`` and ``rtol`` for a floating dtype.

    float64: eps 1e-6, atol 1e-5, rtol 1e-3 (central differences are
    accurate to about eps**2, rounding to about 1e-16/eps).
    float32: eps 1e-2, atol 2e-3, rtol 2e-3 (rounding error of float32
    forces a much larger step). float16/bfloat16 are not supported.
    """
    dtype = numpy.dtype(dtype)
    if dtype == numpy.float64:
        return {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}
    if dtype == numpy.float32:
        return {"eps": 1e-2, "atol": 2e-3, "rtol": 2e-3}
    raise TypeError(f"gradcheck needs float64 (recommended) or float32 inputs, got {dtype}")


def _outputs(fn, inputs):
    out = fn(*inputs)
    return (out,) if isinstance(out, Tensor) else tuple(out)


def _weighted_sum(outputs, weights) -> float:
    """sum_k <outputs[k], weights[k]> in float64, on the host."""
    total = 0.0
    for y, w in zip(outputs, weights):
        total += float(numpy.dot(transfer(y.data, CPU).astype(numpy.float64).ravel(), w.ravel()))
    return total


def gradcheck(fn, inputs, eps=None, atol=None, rtol=None, seed: int = 0,
              max_elements: int = 4096, directions: int = 4, raise_exception: bool = True) -> bool:
    """Check ``fn``'s analytic gradients against central finite differences.

    ``fn`` takes the tensors in ``inputs`` and returns a Tensor or a tuple of
    Tensors. The check contracts the outputs with seeded random weights ``w``
    (so every output element matters) and compares, for each input that
    requires grad, the gradient of ``sum(out * w)`` from backward with

        (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)      for every element i.

    Inputs with more than ``max_elements`` elements in total get a
    directional check instead: for ``directions`` seeded random unit
    directions v, the numerical derivative along v is compared with
    ``<grad, v>``. Passes when ``|analytic - numerical| <= atol + rtol * |numerical|``.

    Tolerances default from the inputs' dtype (see :func:`tolerances`):
    float64 is the reliable mode; float32 uses eps 1e-2, atol/rtol 2e-3.

    Returns True, or raises :class:`GradcheckError` naming the input, the
    element and both values (returns False if ``raise_exception=False``).

    >>> x = mdl.tensor(np.random.randn(3, 4), requires_grad=True, dtype="float64")
    >>> mdl.testing.gradcheck(lambda t: (t * t).sum(axis=1), [x])
    True
    """
    inputs = list(inputs)
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    defaults = tolerances(inputs[checked[0]].dtype)
    eps = defaults["eps"] if eps is None else eps
    atol = defaults["atol"] if atol is None else atol
    rtol = defaults["rtol"] if rtol is None else rtol
    rng = numpy.random.default_rng(seed)

    outputs = _outputs(fn, inputs)
    weights = [rng.standard_normal(y.shape) for y in outputs]
    differentiable = [(y, w) for y, w in zip(outputs, weights) if y.requires_grad]
    if differentiable:
        grad_outputs = [_wrap(transfer(w.astype(y.dtype), y.device), y.device) for y, w in differentiable]
        analytic = grad([y for y, _ in differentiable], [inputs[i] for i in checked], grad_outputs,
                        allow_unused=True)
    else:
        analytic = (None,) * len(checked)
    analytic = [
        numpy.zeros(inputs[i].shape) if g is None else transfer(g.data, CPU).astype(numpy.float64)
        for i, g in zip(checked, analytic)
    ]
    for i, g in zip(checked, analytic):
        if g.shape != inputs[i].shape:
            return _fail(f"gradient of input {i} has shape {g.shape}, the input has {inputs[i].shape}",
                         raise_exception)

    def loss_at(perturbed):
        with no_grad():
            return _weighted_sum(_outputs(fn, perturbed), weights)

    total = sum(inputs[i].size for i in checked)
    if total <= max_elements:
        return _elementwise(inputs, checked, analytic, loss_at, eps, atol, rtol, raise_exception)
    return _directional(inputs, checked, analytic, loss_at, eps, atol, rtol, rng, directions, raise_exception)


def _shifted(x: Tensor, delta) -> Tensor:
    """A copy of ``x`` (same device, dtype, requires_grad) with ``delta`` added."""
    host = transfer(x.data, CPU).astype(numpy.float64) + delta
    return Tensor(transfer(host.astype(x.dtype), x.device), device=x.device)


def _elementwise(inputs, checked, analytic, loss_at, eps, atol, rtol, raise_exception):
    for slot, i in enumerate(checked):
        x = inputs[i]
        numeric = numpy.zeros(x.shape)
        for flat in range(x.size):
            delta = numpy.zeros(x.size)
            delta[flat] = eps
            delta = delta.reshape(x.shape)
            plus = list(inputs)
            plus[i] = _shifted(x, delta)
            minus = list(inputs)
            minus[i] = _shifted(x, -delta)
            numeric.flat[flat] = (loss_at(plus) - loss_at(minus)) / (2 * eps)
        # written as "not within" so that a NaN anywhere counts as a failure
        bad = ~(numpy.abs(analytic[slot] - numeric) <= atol + rtol * numpy.abs(numeric))
        if bad.any():
            where = numpy.unravel_index(int(numpy.argmax(bad)), x.shape) if x.ndim else ()
            return _fail(
                f"input {i} (shape {x.shape}), element {where}: analytic {analytic[slot][where]:.8g} "
                f"vs numerical {numeric[where]:.8g} (max abs difference "
                f"{numpy.abs(analytic[slot] - numeric).max():.3g}, atol {atol}, rtol {rtol})",
                raise_exception,
            )
    return True


def _directional(inputs, checked, analytic, loss_at, eps, atol, rtol, rng, directions, raise_exception):
    for d in range(directions):
        vs = [rng.standard_normal(inputs[i].shape) for i in checked]
        norm = numpy.sqrt(sum(float((v * v).sum()) for v in vs))
        vs = [v / norm for v in vs]
        plus, minus = list(inputs), list(inputs)
        for i, v in zip(checked, vs):
            plus[i] = _shifted(inputs[i], eps * v)
            minus[i] = _shifted(inputs[i], -eps * v)
        numeric = (loss_at(plus) - loss_at(minus)) / (2 * eps)
        exact = sum(float((g * v).sum()) for g, v in zip(analytic, vs))
        if not abs(exact - numeric) <= atol + rtol * abs(numeric):  # NaN fails too
            return _fail(
                f"directional check {d}: analytic {exact:.8g} vs numerical {numeric:.8g} "
                f"(atol {atol}, rtol {rtol})",
                raise_exception,
            )
    return True


def _fail(message, raise_exception):
    if raise_exception:
        raise GradcheckError("gradcheck failed: " + message)
    return False


def gradgradcheck(fn, inputs, eps=None, atol=None, rtol=None, seed: int = 0, **kwargs) -> bool:
    """Check second derivatives: gradcheck of the map inputs -> grad(sum(fn(inputs) * w), inputs).

    The first-order gradients are taken with ``create_graph=True``, so this
    verifies that ``fn``'s backward is itself correctly differentiable.
    Same arguments and tolerances as :func:`gradcheck`.
    """
    inputs = list(inputs)
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    rng = numpy.random.default_rng(seed + 1)
    probe = _outputs(fn, inputs)
    weights = [rng.standard_normal(y.shape) for y in probe]

    def first_order(*xs):
        outputs = [y for y in _outputs(fn, xs)]
        pairs = [(y, w) for y, w in zip(outputs, weights) if y.requires_grad]
        if not pairs:
            return tuple(_wrap(xs[i].device.xp.zeros(xs[i].shape, xs[i].dtype), xs[i].device) for i in checked)
        grad_outputs = [_wrap(transfer(w.astype(y.dtype), y.device), y.device) for y, w in pairs]
        grads = grad([y for y, _ in pairs], [xs[i] for i in checked], grad_outputs,
                     create_graph=True, allow_unused=True)
        return tuple(
            g if g is not None else _wrap(xs[i].device.xp.zeros(xs[i].shape, xs[i].dtype), xs[i].device)
            for i, g in zip(checked, grads)
        )

    def first_order_with_grad(*xs):
        # The numerical pass runs under no_grad with perturbed copies that do not
        # require grad; first-order gradients need both, so restore them here.
        xs = [Tensor(x.data, requires_grad=True, device=x.device) if i in checked and not x.requires_grad else x
              for i, x in enumerate(xs)]
        with enable_grad():
            return first_order(*xs)

    return gradcheck(first_order_with_grad, inputs, eps=eps, atol=atol, rtol=rtol, seed=seed + 2, **kwargs)
