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
    ("sgd", dict(lr=0.1)),  # no momentum: the plain kernel on a GPU
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


def run_with_a_skipped_step(device, name):
    # two parameters; the second has no gradient at step 1, so it counts one step fewer (as in PyTorch)
    rng = np.random.default_rng(3)
    ws = [mdl.Parameter(rng.standard_normal((4, 3)), device=device) for _ in range(2)]
    opt = registry("optimizers").create(name, ws, lr=1e-2)
    for step in range(4):
        for i, w in enumerate(ws):
            w.grad = None if (step, i) == (1, 1) else mdl.tensor(rng.standard_normal((4, 3)), device=device)
        opt.step()
    return [w.numpy() for w in ws], opt


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_parameters_with_different_step_counts(name, device):
    weights, opt = run_with_a_skipped_step(device, name)
    reference, _ = run_with_a_skipped_step("cpu", name)
    assert [opt.state[id(p)]["step"] for p in opt.param_groups[0]["params"]] == [4, 3]
    for got, expected in zip(weights, reference):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert "different numbers of steps" in opt.capture_refusal()  # one bias correction per group in a graph


def test_capture_refusal_of_builtin_and_third_party_optimizers():
    w = mdl.Parameter(np.ones(3))
    for name in ("sgd", "adam", "adamw"):
        assert registry("optimizers").create(name, [w], lr=0.1).capture_refusal() is None
    from minidl.optim import Optimizer

    class HostMath(Optimizer):  # a plugin that never said its updates are array work only
        def update(self, param, grad, state, group):
            param.data -= group["lr"] * grad

    assert "capturable" in HostMath([w], dict(lr=0.1)).capture_refusal()
