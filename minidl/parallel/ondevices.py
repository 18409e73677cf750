"""OnDevices: one autograd op that runs a layer's per-device shares concurrently, forward and backward.

Each :class:`Branch` is one device's share of a layer: a function of that
device's input tensors and of parameter slices. In forward every branch runs
on its device's thread and records its own small graph from fresh leaves; in
backward every branch runs :func:`minidl.grad` over its graph on the same
thread, and the op hands the input gradients back per device and sums the
parameter gradients onto the parameters' own devices (slices scatter into
their rows). To the engine outside it is one ordinary Function, so cross-device
backward needs nothing special.

Second derivatives through a split layer are not supported (use the
``single`` strategy for double backward).
"""
from __future__ import annotations

from ..backend import transfer
from ..function import Function
from ..grad_mode import _mode, set_grad_enabled
from ..tensor import _wrap, grad

__all__ = ["Branch", "OnDevices"]


class Branch:
    """One device's share of a split layer.

    Args:
        device: where it runs.
        fn: ``fn(inputs, params) -> Tensor``, called with this branch's input
            tensors (as leaves on ``device``) and its parameter tensors.
        inputs: Tensors already on ``device``.
        params: ``(parameter, index, leaf)`` triples: the trained Parameter,
            the rows this branch reads (``None``: all of it) and, for modules
            that hold their own copy (data-parallel replicas), the tensor
            ``fn`` uses; with ``leaf=None`` a fresh leaf of
            ``parameter[index]`` on ``device`` is passed to ``fn``.
    """

    __slots__ = ("device", "fn", "inputs", "params", "leaves", "param_leaves", "output")

    def __init__(self, device, fn, inputs, params=()):
        self.device, self.fn, self.inputs, self.params = device, fn, list(inputs), list(params)
        self.leaves = self.param_leaves = self.output = None


def _leaf(array, device, requires_grad):
    t = _wrap(array, device)
    t.requires_grad = requires_grad
    return t


class OnDevices(Function):
    """Runs a list of :class:`Branch` es (see the module docstring); returns one output per branch."""

    mixed_devices = True

    def __init__(self, branches, threads, in_order: bool = False, name: str = "layer"):
        self.branches = list(branches)
        self.threads = threads
        self.in_order = in_order
        self.layer_name = name
        self.record = False
        self._params = []  # the distinct Parameters, in first-use order
        seen = set()
        for branch in self.branches:
            for p, _, _ in branch.params:
                if id(p) not in seen:
                    seen.add(id(p))
                    self._params.append(p)

    @property
    def name(self) -> str:
        return f"{self.layer_name} (split over {', '.join(str(b.device) for b in self.branches)})"

    def __call__(self):
        operands = [x for b in self.branches for x in b.inputs] + self._params
        self.record = _mode.enabled and any(x.requires_grad for x in operands)
        self.output_devices = [b.device for b in self.branches]
        outputs = super().__call__(*operands)
        return list(outputs) if isinstance(outputs, tuple) else [outputs]

    # ---------------------------------------------------------------- forward
    def forward(self, *arrays):
        jobs = [(b.device, lambda b=b: self._forward_branch(b)) for b in self.branches]
        return tuple(self.threads.run(jobs, in_order=self.in_order))

    def _forward_branch(self, b):
        record = self.record
        with set_grad_enabled(record):
            b.leaves = [_leaf(x.data, b.device, record and x.requires_grad) for x in b.inputs]
            b.param_leaves = [
                leaf if leaf is not None else
                _leaf(transfer(p.data if index is None else p.data[index], b.device), b.device, record)
                for p, index, leaf in b.params
            ]
            out = b.fn(b.leaves, b.param_leaves)
        b.output = out if record else None
        return out.data

    # --------------------------------------------------------------- backward
    def backward(self, *gys):
        if _mode.enabled:
            raise RuntimeError(f"{self.name}: double backward (create_graph=True) through a device-split layer is "
                               "not supported; use the 'single' strategy for higher-order gradients")
        jobs = [(b.device, lambda b=b, gy=gy: self._backward_branch(b, gy)) for b, gy in zip(self.branches, gys)]
        per_branch = self.threads.run(jobs)
        input_grads = []
        totals = {}  # id(parameter) -> gradient array on the parameter's device
        for b, (gxs, gps) in zip(self.branches, per_branch):
            input_grads.extend(gxs)
            for (p, index, _), g in zip(b.params, gps):
                if g is None:
                    continue
                g = transfer(g.data, p.device)
                total = totals.get(id(p))
                if index is None:
                    totals[id(p)] = g if total is None else total + g
                else:
                    if total is None:
                        total = totals[id(p)] = p.device.xp.zeros(p.shape, dtype=p.dtype)
                    total[index] += g
        param_grads = [None if id(p) not in totals else _wrap(totals[id(p)], p.device) for p in self._params]
        return tuple(input_grads) + tuple(param_grads)

    def _backward_branch(self, b, gy):
        targets = [t for t in b.leaves + b.param_leaves if t.requires_grad]
        if gy is None or b.output is None or not b.output.requires_grad or not targets:
            return [None] * len(b.leaves), [None] * len(b.param_leaves)
        found = dict(zip(map(id, targets), grad([b.output], targets, [gy], allow_unused=True)))
        return [found.get(id(t)) for t in b.leaves], [found.get(id(t)) for t in b.param_leaves]

    def release(self) -> None:
        for b in self.branches:
            b.leaves = b.param_leaves = b.output = None
