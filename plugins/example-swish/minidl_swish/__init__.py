"""Example third-party minidl plugin: a ``swish`` layer and the ``lion`` optimizer."""
from __future__ import annotations

import minidl
from minidl.optim import Optimizer

__all__ = ["Swish", "Lion", "swish_to_onnx"]


class Swish(minidl.nn.Module):
    """swish(x) = x * sigmoid(beta * x) (Ramachandran et al., 2017). YAML: ``{type: swish, beta: 1.0}``."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x):
        return x * (x * self.beta).sigmoid()


def swish_to_onnx(graph, node, inputs):
    """The swish layer as ONNX ops, for ``mdl.onnx.export``: x * Sigmoid(beta * x) (no onnx import needed)."""
    (x,) = inputs
    scaled = x if node.module.beta == 1.0 else graph.add("Mul", [x, graph.constant(node.module.beta)])
    return graph.add("Mul", [x, graph.add("Sigmoid", [scaled])])


class Lion(Optimizer):
    """Lion (Chen et al., 2023): w <- w - lr * (sign(b1*m + (1-b1)*g) + wd*w); m <- b2*m + (1-b2)*g."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple = (0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    def update(self, param, grad, state, group):
        xp = param.device.xp
        w = param.data
        b1, b2 = group["betas"]
        m = state.get("exp_avg")
        if m is None:
            m = state["exp_avg"] = xp.zeros_like(w)
        direction = xp.sign(b1 * m + (1.0 - b1) * grad)
        if group["weight_decay"]:
            w *= 1.0 - group["lr"] * group["weight_decay"]
        w -= group["lr"] * direction
        m *= b2
        m += (1.0 - b2) * grad


@minidl.hookimpl
def minidl_register_layers(register):
    register("swish", Swish, examples=[{"params": {"beta": 1.5}, "input_shape": (2, 3, 4, 4)}], onnx=swish_to_onnx)


@minidl.hookimpl
def minidl_register_optimizers(register):
    register("lion", Lion)
