"""How a plugin author tests a layer: gradient check with minidl.testing, no framework internals."""
import numpy as np

import minidl as mdl
from minidl.testing import gradcheck, gradgradcheck
from minidl_swish import Swish


def test_swish_gradients():
    x = mdl.tensor(np.random.default_rng(0).standard_normal((2, 3)), requires_grad=True)  # float64
    layer = Swish(beta=1.5)
    assert gradcheck(layer, [x])
    assert gradgradcheck(layer, [x])


def test_swish_values():
    x = np.linspace(-3, 3, 7)
    y = Swish()(mdl.tensor(x)).numpy()
    np.testing.assert_allclose(y, x / (1 + np.exp(-x)))
