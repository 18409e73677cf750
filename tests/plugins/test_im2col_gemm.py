"""The im2col algorithms keep their columns for the weight gradient on the CPU only (a GPU gathers them again)."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F


@pytest.mark.parametrize("algorithm", ["im2col_gemm", "im2col_tapfold", "im2col_flip"])
def test_columns_are_kept_on_the_cpu_and_remade_on_a_gpu(algorithm, device, rng):
    x = rng.standard_normal((2, 6, 9, 9)).astype("float32")
    W = rng.standard_normal((8, 3, 3, 3)).astype("float32")
    gy = rng.standard_normal((2, 8, 9, 9)).astype("float32")
    grads = {}
    for on in ("cpu", device):
        xt, Wt = (mdl.tensor(a, device=on, requires_grad=True) for a in (x, W))
        y = F.conv2d(xt, Wt, padding=1, groups=2, algorithm=algorithm)
        assert (y.creator.saved is not None) == (on == "cpu")  # (G, N*oh*ow, kh*kw*C/G) columns, or nothing
        y.backward(mdl.tensor(gy, device=on))
        grads[on] = xt.grad.numpy(), Wt.grad.numpy()
    for got, expected in zip(grads[device], grads["cpu"]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
