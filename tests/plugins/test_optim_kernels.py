"""The optimizers' CUDA kernels (one per parameter and step) against their NumPy reference, step by step."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
from minidl.plugins import registry

CASES = [
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)),
    ("sgd", dict(lr=0.1, momentum=0.8, dampening=0.3, weight_decay=1e-3)),
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=5e-4, form="paper")),
    ("sgd", dict(lr=0.1)),  # no momentum: the plain array path on both devices
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=1e-2, weight_decay=1e-2, betas=(0.8, 0.99))),
    ("adamw", dict(lr=1e-2, weight_decay=0.1)),
]


def run(device, name, kwargs, dtype, rng_seed=0, steps=6):
    rng = np.random.default_rng(rng_seed)
    w0 = rng.standard_normal((5, 7)).astype(dtype)
    grads = [rng.standard_normal(w0.shape).astype(dtype) for _ in range(steps)]
    w = mdl.Parameter(w0.copy(), device=device)
    opt = registry("optimizers").create(name, [w], **kwargs)
    for step, g in enumerate(grads):
        w.grad = mdl.tensor(g, device=device)
        opt.param_groups[0]["lr"] = kwargs["lr"] * (1.0 - 0.1 * step)  # a changing lr, as under a schedule
        opt.step()
    state = opt.state_dict()["state"][0]
    return w.numpy(), {k: v for k, v in state.items() if hasattr(v, "shape")}


@pytest.mark.parametrize("name, kwargs", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_optimizer_cuda_kernels_match_the_numpy_path(name, kwargs, dtype, cuda):
    w_cpu, state_cpu = run("cpu", name, kwargs, dtype)
    w_gpu, state_gpu = run(cuda, name, kwargs, dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert w_gpu.dtype == w_cpu.dtype
    np.testing.assert_allclose(w_gpu, w_cpu, rtol=tol, atol=tol)
    assert state_gpu.keys() == state_cpu.keys()
    for key in state_cpu:
        np.testing.assert_allclose(state_gpu[key], state_cpu[key], rtol=tol, atol=tol, err_msg=key)
