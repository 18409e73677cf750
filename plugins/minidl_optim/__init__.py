"""minidl's built-in optimizers: sgd, adam, adamw, registered as a plugin."""
from __future__ import annotations

import math

import minidl
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
    """

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

    def update(self, param, grad, state, group):
        w = param.data
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
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
    """Adam (Kingma & Ba) with optional L2 weight decay added to the gradient, as PyTorch's Adam."""

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        b1, b2 = betas
        if lr < 0 or not (0 <= b1 < 1 and 0 <= b2 < 1) or eps < 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__.lower()}: invalid lr={lr}, betas={betas}, eps={eps} "
                             f"or weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=(float(b1), float(b2)), eps=eps, weight_decay=weight_decay))

    def update(self, param, grad, state, group):
        w = param.data
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if wd:
            if self.decoupled:
                w *= 1.0 - lr * wd
            else:
                grad = grad + wd * w
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = w * 0
            state["exp_avg_sq"] = w * 0
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1.0 - b1) * grad
        v *= b2
        v += (1.0 - b2) * (grad * grad)
        xp = param.device.xp
        denom = xp.sqrt(v) / math.sqrt(1.0 - b2 ** t) + eps
        w -= (lr / (1.0 - b1 ** t)) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): w <- w - lr*wd*w before the Adam step."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


@minidl.hookimpl
def minidl_register_optimizers(register):
    register("sgd", SGD)
    register("adam", Adam)
    register("adamw", AdamW)
