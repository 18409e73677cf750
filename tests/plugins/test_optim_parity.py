"""Optimizers and schedulers against PyTorch: 20 steps on the same problem end at the same parameters."""
from __future__ import annotations

import math

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl.plugins import registry

STEPS = 20


def problem(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal((16, 3)), rng.integers(0, 4, 16)


def train_minidl(opt_name, opt_kwargs, sched=None, groups=False, metrics=None):
    w0, b0, x, y = problem()
    w, b = mdl.Parameter(w0.copy()), mdl.Parameter(b0.copy())
    params = [{"params": [w]}, {"params": [b], "lr": opt_kwargs["lr"] * 0.5}] if groups else [w, b]
    opt = registry("optimizers").create(opt_name, params, **opt_kwargs)
    scheduler = registry("schedulers").create(sched[0], opt, **sched[1]) if sched else None
    lrs = []
    for step in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(mdl.tensor(x) @ w + b, y).backward()
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        if scheduler:
            scheduler.step(metrics[step]) if metrics is not None else scheduler.step()
    return w.numpy(), b.numpy(), lrs


def train_torch(torch, make_opt, make_sched=None, groups=False, lr=None, metrics=None):
    w0, b0, x, y = problem()
    w, b = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    params = [{"params": [w]}, {"params": [b], "lr": lr * 0.5}] if groups else [w, b]
    opt = make_opt(params)
    scheduler = make_sched(opt) if make_sched else None
    xt, yt = torch.tensor(x), torch.tensor(y)
    lrs = []
    for step in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(xt @ w + b, yt).backward()
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        if scheduler:
            scheduler.step(metrics[step]) if metrics is not None else scheduler.step()
    return w.detach().numpy(), b.detach().numpy(), lrs


def assert_same(ours, theirs):
    for a, b in zip(ours[:2], theirs[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(ours[2], theirs[2], rtol=1e-12)


OPTIMIZERS = [
    ("sgd", dict(lr=0.1), lambda t, p: t.optim.SGD(p, lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=5e-4), lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.9,
                                                                                    weight_decay=5e-4)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True), lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.9,
                                                                                nesterov=True)),
    ("sgd", dict(lr=0.1, momentum=0.5, dampening=0.3), lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.5,
                                                                                dampening=0.3)),
    ("adam", dict(lr=0.05), lambda t, p: t.optim.Adam(p, lr=0.05)),
    ("adam", dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.01), lambda t, p: t.optim.Adam(
        p, lr=0.05, betas=(0.8, 0.9), weight_decay=0.01)),
    ("adamw", dict(lr=0.05), lambda t, p: t.optim.AdamW(p, lr=0.05)),
    ("adamw", dict(lr=0.05, weight_decay=0.1, eps=1e-6), lambda t, p: t.optim.AdamW(p, lr=0.05, weight_decay=0.1,
                                                                                    eps=1e-6)),
]


@pytest.mark.parametrize("name,kwargs,torch_opt", OPTIMIZERS, ids=[f"{o[0]}-{i}" for i, o in enumerate(OPTIMIZERS)])
@pytest.mark.parametrize("groups", [False, True], ids=["one-group", "two-groups"])
def test_optimizer_matches_torch(torch, name, kwargs, torch_opt, groups):
    ours = train_minidl(name, kwargs, groups=groups)
    theirs = train_torch(torch, lambda p: torch_opt(torch, p), groups=groups, lr=kwargs["lr"])
    assert_same(ours, theirs)


def test_paper_sgd_equals_pytorch_sgd_at_constant_lr(torch):
    ours = train_minidl("sgd", dict(lr=0.1, momentum=0.9, weight_decay=5e-4, form="paper"))
    theirs = train_torch(torch, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4))
    assert_same(ours, theirs)


def test_paper_sgd_update_rule():
    """v <- 0.9 v - wd*lr*w - lr*g; w <- w + v, with the lr changing between steps."""
    w = mdl.Parameter(np.array([1.0, -2.0]))
    opt = registry("optimizers").create("sgd", [w], lr=0.1, momentum=0.9, weight_decay=5e-4, form="paper")
    v, expected = np.zeros(2), np.array([1.0, -2.0])
    for lr, g in [(0.1, np.array([0.5, 0.25])), (0.01, np.array([-1.0, 2.0])), (0.001, np.array([3.0, 0.0]))]:
        opt.param_groups[0]["lr"] = lr
        w.grad = mdl.tensor(g)
        opt.step()
        v = 0.9 * v - 5e-4 * lr * expected - lr * g
        expected = expected + v
        np.testing.assert_allclose(w.numpy(), expected, rtol=1e-14)


SCHEDULERS = [
    (("step", dict(step_size=5, gamma=0.5)), lambda t, o: t.optim.lr_scheduler.StepLR(o, 5, 0.5)),
    (("multistep", dict(milestones=[3, 7, 15], gamma=0.3)),
     lambda t, o: t.optim.lr_scheduler.MultiStepLR(o, [3, 7, 15], 0.3)),
    (("cosine", dict(t_max=20, eta_min=0.001)), lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, 20, 0.001)),
    (("linear_warmup", dict(start_factor=0.2, total_steps=6)),
     lambda t, o: t.optim.lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=6)),
    (("cosine", dict(t_max=16, warmup_steps=4, warmup_start_factor=0.25)),
     lambda t, o: t.optim.lr_scheduler.SequentialLR(o, [
         t.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=4),
         t.optim.lr_scheduler.CosineAnnealingLR(o, 16)], milestones=[4])),
]


@pytest.mark.parametrize("sched,torch_sched", SCHEDULERS, ids=[s[0][0] + f"-{i}" for i, s in enumerate(SCHEDULERS)])
def test_scheduler_matches_torch(torch, sched, torch_sched):
    ours = train_minidl("sgd", dict(lr=0.1, momentum=0.9), sched=sched, groups=True)
    theirs = train_torch(torch, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                         lambda o: torch_sched(torch, o), groups=True, lr=0.1)
    assert_same(ours, theirs)


def test_reduce_on_plateau_matches_torch(torch):
    # validation error that improves, stalls (lr / 10), improves, stalls again
    metrics = [1.0, 0.8, 0.7, 0.7, 0.71, 0.7, 0.6, 0.5, 0.5, 0.5, 0.5, 0.49999, 0.4, 0.4, 0.4, 0.4, 0.4,
               0.3, 0.3, 0.3]
    ours = train_minidl("sgd", dict(lr=0.1), sched=("reduce_on_plateau", dict(patience=2)), metrics=metrics)
    theirs = train_torch(torch, lambda p: torch.optim.SGD(p, lr=0.1),
                         lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=2), metrics=metrics)
    assert_same(ours, theirs)
    assert ours[2][-1] == pytest.approx(1e-4)  # divided by 10 on each of the three plateaus


def test_scheduler_state_round_trip():
    w = mdl.Parameter(np.zeros(2))
    opt = registry("optimizers").create("sgd", [w], lr=1.0)
    sched = registry("schedulers").create("cosine", opt, t_max=10)
    for _ in range(4):
        sched.step()
    state = sched.state_dict()
    opt2 = registry("optimizers").create("sgd", [mdl.Parameter(np.zeros(2))], lr=1.0)
    sched2 = registry("schedulers").create("cosine", opt2, t_max=10)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx((1 + math.cos(math.pi * 4 / 10)) / 2)


def test_optimizer_state_round_trip():
    w = mdl.Parameter(np.array([1.0, 2.0]))
    opt = registry("optimizers").create("adam", [w], lr=0.1)
    w.grad = mdl.tensor([0.5, -0.5])
    opt.step()
    state = opt.state_dict()
    w2 = mdl.Parameter(w.numpy().copy())
    opt2 = registry("optimizers").create("adam", [w2], lr=0.1)
    opt2.load_state_dict(state)
    for o, p in ((opt, w), (opt2, w2)):
        p.grad = mdl.tensor([0.25, 1.0])
        o.step()
    np.testing.assert_array_equal(w.numpy(), w2.numpy())


def test_optimizer_errors():
    w = mdl.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="unknown option"):
        registry("optimizers").create("sgd", [{"params": [w], "momentun": 0.9}], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        registry("optimizers").create("sgd", [], lr=0.1)
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        registry("optimizers").create("sgd", [w], lr=0.1, nesterov=True)
