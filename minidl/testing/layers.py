"""Gradient-check a whole layer (a Module): its input and every parameter, in float64, on a copy."""
from __future__ import annotations

import copy

import numpy

from .. import random
from ..tensor import Tensor, tensor
from .gradcheck import gradcheck, gradgradcheck

__all__ = ["check_layer", "functional_call"]

DEFAULT_INPUT_SHAPE = (2, 3, 5, 5)


def _parameter_slots(module):
    """[(owner module, attribute name, Parameter)] for every parameter, each once."""
    slots, seen = [], set()
    for _, owner in module.named_modules():
        for name, p in owner._parameters.items():
            if id(p) not in seen:
                seen.add(id(p))
                slots.append((owner, name, p))
    return slots


def functional_call(module, params, *args, seed: int | None = None):
    """Call ``module(*args)`` with its parameters replaced by ``params`` (same order as ``parameters()``).

    The replacements are used as they are (gradients flow into them), and
    the module's own parameters are restored afterwards. With ``seed``, the
    call draws its random numbers from generators seeded with it, so
    stochastic layers (dropout) draw the same mask on every call; the global
    random state is left as it was.
    """
    slots = _parameter_slots(module)
    if len(params) != len(slots):
        raise ValueError(f"functional_call: {len(slots)} parameters expected, got {len(params)}")
    try:
        for (owner, name, _), value in zip(slots, params):
            object.__setattr__(owner, name, value)
        if seed is None:
            return module(*args)
        with random.fork_rng():
            random.manual_seed(seed)
            return module(*args)
    finally:
        for owner, name, original in slots:
            object.__setattr__(owner, name, original)


def check_layer(layer, input_shape=DEFAULT_INPUT_SHAPE, device=None, seed: int = 0, second_order: bool = False,
                **gradcheck_options) -> bool:
    """Gradient-check ``layer`` with respect to its input and all its parameters, in float64.

    The check runs on a copy of ``layer`` converted to float64 (the check
    needs its precision; lazily created parameters are created by a first
    call on a float64 input): the layer passed in is left as it was, built or
    not, in its dtype. The copy stays in the layer's mode (train or eval).
    Random draws (dropout masks) are seeded before every call, so dropout is
    checked with a fixed mask, inside :func:`minidl.random.fork_rng`: the
    global random state is the same afterwards.

    >>> mdl.testing.check_layer(MyLayer(), input_shape=(2, 3, 8, 8))
    True
    """
    layer = copy.deepcopy(layer)
    layer.to(dtype="float64")
    with random.fork_rng():
        rng = numpy.random.default_rng(seed)
        x = tensor(rng.standard_normal(input_shape), requires_grad=True, device=device, dtype="float64")
        random.manual_seed(seed)
        layer(x)  # builds lazy parameters from the input's shape and dtype
        params = [Tensor(p.data, requires_grad=True, device=p.device) for p in layer.parameters()]

        def run(x_, *ps):
            return functional_call(layer, list(ps), x_, seed=seed + 1)

        ok = gradcheck(run, [x] + params, seed=seed, **gradcheck_options)
        if second_order:
            ok = ok and gradgradcheck(run, [x] + params, seed=seed, **gradcheck_options)
    return ok
