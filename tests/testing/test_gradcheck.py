"""minidl.testing.gradcheck must catch wrong gradients, not only pass right ones."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
from minidl.backend import get_array_module
from minidl.testing import GradcheckError, gradcheck, gradgradcheck, tolerances


class WrongSquare(mdl.Function):
    """x**2 with a backward that is off by a small factor."""

    def forward(self, x):
        return x * x

    def backward(self, gy):
        return gy * self.inputs[0] * 2.02


class CubeWithWrongSecondDerivative(mdl.Function):
    """x**3 with a correct first derivative whose own gradient is wrong (detached)."""

    def forward(self, x):
        return x ** 3

    def backward(self, gy):
        x = self.inputs[0]
        return gy * (x.detach() * x.detach() * 3.0)


def x64(shape, seed=0):
    return mdl.tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


def test_gradcheck_passes_a_correct_op():
    assert gradcheck(lambda a: (a * a).sum(axis=0), [x64((3, 2))])


def test_gradcheck_catches_a_wrong_gradient():
    with pytest.raises(GradcheckError, match=r"input 0 \(shape \(3, 2\)\), element"):
        gradcheck(lambda a: WrongSquare()(a), [x64((3, 2))])
    assert gradcheck(lambda a: WrongSquare()(a), [x64((3, 2))], raise_exception=False) is False


def test_directional_mode_for_large_inputs():
    big = x64((80, 80))
    assert gradcheck(lambda a: (a @ a).tanh(), [big], max_elements=100)
    with pytest.raises(GradcheckError, match="directional check"):
        gradcheck(lambda a: WrongSquare()(a), [big], max_elements=100)


def test_float32_mode_uses_its_own_tolerances():
    x = mdl.tensor(np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32), requires_grad=True)
    assert tolerances(np.float32)["eps"] == pytest.approx(1e-2)
    assert gradcheck(lambda a: a.tanh() * a, [x])


def test_gradgradcheck_catches_a_wrong_second_derivative():
    assert gradgradcheck(lambda a: a ** 3, [x64((4,))])
    assert gradcheck(lambda a: CubeWithWrongSecondDerivative()(a), [x64((4,))])
    with pytest.raises(GradcheckError):
        gradgradcheck(lambda a: CubeWithWrongSecondDerivative()(a), [x64((4,))])


def test_gradcheck_with_several_inputs_and_outputs():
    a, b = x64((2, 3), 1), x64((3,), 2)
    assert gradcheck(lambda p, q: (p * q, (p - q).exp()), [a, b])


def test_gradcheck_on_device(device):
    x = mdl.tensor(np.random.default_rng(0).standard_normal((2, 3)), requires_grad=True, device=device)
    assert gradcheck(lambda a: a.sigmoid(), [x])


def test_gradcheck_needs_an_input_requiring_grad():
    with pytest.raises(ValueError, match="no input has requires_grad"):
        gradcheck(lambda a: a * 2, [mdl.tensor([1.0])])


def test_a_third_party_style_op_written_with_xp():
    class Softplus(mdl.Function):
        def forward(self, x):
            xp = get_array_module(x)
            return xp.logaddexp(0, x)

        def backward(self, gy):
            return gy * self.inputs[0].sigmoid()

    x = x64((5,))
    assert gradcheck(lambda a: Softplus()(a), [x])
    assert gradgradcheck(lambda a: Softplus()(a), [x])


class NanGradient(mdl.Function):
    def forward(self, x):
        return x * 2

    def backward(self, gy):
        return gy * float("nan")


def test_gradcheck_fails_on_nan_gradients():
    with pytest.raises(GradcheckError):
        gradcheck(lambda a: NanGradient()(a), [x64((3,))])
    with pytest.raises(GradcheckError, match="directional"):
        gradcheck(lambda a: NanGradient()(a), [x64((30, 30))], max_elements=10)
