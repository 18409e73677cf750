"""minidl's built-in optimizers: sgd, adam, adamw, registered as a plugin."""
from __future__ import annotations

import math

import numpy

import minidl
from minidl.backend import elementwise_kernel, get_array_module
from minidl.optim import Optimizer

__all__ = ["SGD", "Adam", "AdamW"]

SGD_FORMS = ("pytorch", "paper")


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov momentum and weight decay.

    ``form="pytorch"`` (default): g <- g + wd*w; v <- momentum*v + (1-dampening)*g; w <- w - lr*v
    (Nesterov: w <- w - lr*(g + momentum*v)).

    ``form="paper"`` (Krizhevsky et al. 2012): v <- momentum*v - wd*lr*w - lr*g; w <- w + v.
    With a constant lr both forms give the same weights; they differ when
    the lr changes, because the paper's velocity carries the old lr.

    ``params, lr, momentum`` may be positional, as in PyTorch; the rest are
    keyword-only (PyTorch's fourth positional is ``dampening``, not ours).
    On a GPU each parameter's update is one kernel, which reads the learning
    rate from device memory (so a CUDA graph can replay it).
    """

    capturable = True

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, *, weight_decay: float = 0.0,
                 nesterov: bool = False, dampening: float = 0.0, form: str = "pytorch"):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"sgd: lr, momentum and weight_decay must be >= 0 (lr={lr}, momentum={momentum}, "
                             f"weight_decay={weight_decay})")
        if form not in SGD_FORMS:
            raise ValueError(f"sgd: form must be one of {SGD_FORMS}, got {form!r}")
        if nesterov and (momentum <= 0 or dampening != 0 or form != "pytorch"):
            raise ValueError("sgd: nesterov needs momentum > 0, dampening 0 and form 'pytorch'")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                      dampening=dampening, form=form))

    def hyperparameters(self, group):
        return (group["lr"],)

    def update(self, param, grad, state, group):
        w = param.data
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        if get_array_module(w) is not numpy:  # one kernel per parameter instead of about five launches
            _sgd_cuda(w, grad, state, group, self.device_hyperparameters(group, param.device))
            return
        if group["form"] == "paper":
            v = state.get("velocity")
            if v is None:
                v = state["velocity"] = w * 0
            v *= mu
            v -= (wd * lr) * w
            v -= lr * grad
            w += v
            return
        g = grad + wd * w if wd else grad
        if mu:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= mu
                buf += (1.0 - group["dampening"]) * g
            g = g + mu * buf if group["nesterov"] else buf
        w -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with optional L2 weight decay added to the gradient, as PyTorch's Adam.

    Each parameter counts its own steps (``state["step"]``), as in PyTorch. On a GPU the update is one
    kernel per parameter, reading the learning rate and the bias corrections from device memory; those
    are the group's, so a CUDA graph can replay the step while every parameter of a group has taken the
    same number of steps (the usual case).
    """

    decoupled = False
    capturable = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        b1, b2 = betas
        if lr < 0 or not (0 <= b1 < 1 and 0 <= b2 < 1) or eps < 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__.lower()}: invalid lr={lr}, betas={betas}, eps={eps} "
                             f"or weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=(float(b1), float(b2)), eps=eps, weight_decay=weight_decay))
        self._shared_step = {}  # id(group) -> the step count its device corrections are for

    def prepare_step(self):
        for group in self.param_groups:  # count the step of each parameter that will be updated
            for p in group["params"]:
                if p.grad is not None:
                    state = self.state.setdefault(id(p), {})
                    if "exp_avg" not in state:
                        state["step"] = 0
                        state["exp_avg"] = p.data * 0
                        state["exp_avg_sq"] = p.data * 0
                    state["step"] += 1
        super().prepare_step()

    def _corrections(self, group, t):
        """(lr, step size, sqrt of the second moment's bias correction) at step ``t``."""
        lr, (b1, b2) = group["lr"], group["betas"]
        return lr, lr / (1.0 - b1 ** t), math.sqrt(1.0 - b2 ** t)

    def _group_steps(self, group) -> set:
        return {self.state[id(p)]["step"] for p in group["params"] if id(p) in self.state}

    def hyperparameters(self, group):
        steps = self._group_steps(group)
        self._shared_step[id(group)] = max(steps, default=None)
        return self._corrections(group, max(steps)) if steps else ()

    def capture_refusal(self):
        for index, group in enumerate(self.param_groups):
            if len(self._group_steps(group)) > 1:
                return (f"{type(self).__name__}: the parameters of group {index} have taken different numbers of "
                        "steps, and a captured step reads one bias correction per group")
        return super().capture_refusal()

    def update(self, param, grad, state, group):
        w = param.data
        (b1, b2), eps, wd = group["betas"], group["eps"], group["weight_decay"]
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        lr, step_size, correction2 = self._corrections(group, t)
        if get_array_module(w) is not numpy:  # the decay and the step in one kernel
            hyper = self.device_hyperparameters(group, param.device)
            if t != self._shared_step[id(group)]:  # this parameter missed steps: its own corrections
                hyper = param.device.xp.asarray([lr, step_size, correction2], dtype=numpy.float64)
            elementwise_kernel(
                "T grad, raw float64 hyper, float64 wd, bool decoupled, float64 b1, float64 b2, float64 eps",
                "T w, T m, T v", _ADAM, "minidl_adam", _WIDE,
            )(grad, hyper, wd, self.decoupled, b1, b2, eps, w, m, v)
            return
        if wd:
            if self.decoupled:
                w *= 1.0 - lr * wd
            else:
                grad = grad + wd * w
        m *= b1
        m += (1.0 - b1) * grad
        v *= b2
        v += (1.0 - b2) * (grad * grad)
        denom = param.device.xp.sqrt(v) / correction2 + eps
        w -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): w <- w - lr*wd*w before the Adam step."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


# CUDA: each update is one elementwise kernel per parameter, doing in registers what the NumPy code above
# does in array passes (its reference: tests/plugins/test_optim_kernels.py). The arithmetic runs in float32
# (float64 for float64 parameters), also for float16 and bfloat16 ones, and each value is stored once.
# Values that change from step to step come from the device array ``hyper`` (Optimizer.prepare_step
# writes it): SGD's learning rate; Adam's learning rate, step size and bias correction.
_WIDE = """
template <typename T> struct minidl_wide { typedef float type; };
template <> struct minidl_wide<double> { typedef double type; };
"""
_SGD_PLAIN = """
    typedef typename minidl_wide<T>::type A;
    const double lr = hyper[0];
    A weight = (A)w, g = (A)grad;
    if (wd != 0.0) g += (A)wd * weight;
    w = (T)(weight - (A)lr * g);
"""
_SGD_PYTORCH = """
    typedef typename minidl_wide<T>::type A;
    const double lr = hyper[0];
    A weight = (A)w, g = (A)grad;
    if (wd != 0.0) g += (A)wd * weight;
    A b = first ? g : (A)mu * (A)buf + (A)(1.0 - dampening) * g;
    buf = (T)b;
    w = (T)(weight - (A)lr * (nesterov ? g + (A)mu * b : b));
"""
_SGD_PAPER = """
    typedef typename minidl_wide<T>::type A;
    const double lr = hyper[0];
    A weight = (A)w, v = (A)mu * (A)buf - (A)(wd * lr) * weight - (A)lr * (A)grad;
    buf = (T)v;
    w = (T)(weight + v);
"""
_ADAM = """
    typedef typename minidl_wide<T>::type A;
    const double lr = hyper[0], step_size = hyper[1], correction2 = hyper[2];
    A weight = (A)w, g = (A)grad;
    if (wd != 0.0) {
        if (decoupled) weight *= (A)(1.0 - lr * wd);
        else g += (A)wd * weight;
    }
    A m1 = (A)b1 * (A)m + (A)(1.0 - b1) * g, m2 = (A)b2 * (A)v + (A)(1.0 - b2) * (g * g);
    m = (T)m1;
    v = (T)m2;
    w = (T)(weight - (A)step_size * (m1 / (sqrt(m2) / (A)correction2 + (A)eps)));
"""


def _sgd_cuda(w, grad, state, group, hyper):
    """SGD on a GPU: the weight (and the momentum buffer) updated by one kernel; the lr is ``hyper[0]``."""
    xp = get_array_module(w)
    mu, wd = group["momentum"], group["weight_decay"]
    if not mu:  # both forms are w <- w - lr * (g + wd * w) without momentum
        elementwise_kernel("T grad, raw float64 hyper, float64 wd", "T w", _SGD_PLAIN, "minidl_sgd_plain",
                           _WIDE)(grad, hyper, wd, w)
        return
    if group["form"] == "paper":
        if "velocity" not in state:
            state["velocity"] = xp.zeros_like(w)
        elementwise_kernel("T grad, raw float64 hyper, float64 mu, float64 wd", "T w, T buf", _SGD_PAPER,
                           "minidl_sgd_paper", _WIDE)(grad, hyper, mu, wd, w, state["velocity"])
        return
    first = "momentum_buffer" not in state
    if first:
        state["momentum_buffer"] = xp.empty_like(w)
    elementwise_kernel(
        "T grad, raw float64 hyper, float64 mu, float64 wd, float64 dampening, bool nesterov, bool first",
        "T w, T buf", _SGD_PYTORCH, "minidl_sgd", _WIDE)(grad, hyper, mu, wd, group["dampening"], group["nesterov"],
                                                  first, w, state["momentum_buffer"])


@minidl.hookimpl
def minidl_register_optimizers(register):
    register("sgd", SGD)
    register("adam", Adam)
    register("adamw", AdamW)
