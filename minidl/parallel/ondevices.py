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
from ..autograd import grad
from ..tensor import _wrap

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


def _disjoint_rows(indices, extent):
    """None unless ``indices`` are disjoint row slices; else whether they cover rows 0..extent."""
    if not all(isinstance(i, slice) and i.step in (None, 1) and i.start is not None for i in indices):
        return None
    spans = sorted((i.start, i.stop) for i in indices)
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        return None
    return spans[0][0] == 0 and spans[-1][1] == extent and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


class OnDevices(Function):
    """Runs a list of :class:`Branch` es (see the module docstring); returns one output per branch."""

    mixed_devices = True
    wraps_errors = False  # a share's error comes from a whole layer and keeps its type and fields

    def __init__(self, branches, threads, in_order: bool = False, name: str = "layer"):
        self.branches = list(branches)
        self.threads = threads
        self.in_order = in_order
        self.layer_name = name
        self.record = False
        self._params = []  # the distinct Parameters, in first-use order
        rows = {}  # id(parameter) -> the row slices the branches read
        for branch in self.branches:
            for p, index, _ in branch.params:
                if id(p) not in rows:
                    self._params.append(p)
                rows.setdefault(id(p), []).append(index)
        # parameters whose branches read disjoint row ranges: each branch writes its rows of the
        # gradient itself, on its own thread (as the columns do); True when the ranges cover every row
        self._disjoint = {}
        for p in self._params:
            covers = _disjoint_rows(rows[id(p)], p.shape[0])
            if covers is not None:
                self._disjoint[id(p)] = covers

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
        totals = {}  # id(parameter) -> gradient array on the parameter's device
        for p in self._params:
            if id(p) in self._disjoint:
                make = p.device.xp.empty if self._disjoint[id(p)] else p.device.xp.zeros
                totals[id(p)] = make(p.shape, dtype=p.dtype)
        jobs = [(b.device, lambda b=b, gy=gy: self._backward_branch(b, gy, totals))
                for b, gy in zip(self.branches, gys)]
        per_branch = self.threads.run(jobs)
        input_grads = []
        for b, (gxs, gps) in zip(self.branches, per_branch):
            input_grads.extend(gxs)
            for (p, index, _), g in zip(b.params, gps):
                if g is None or id(p) in self._disjoint:  # unused, or already written by the branch
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

    def _backward_branch(self, b, gy, totals):
        targets = [t for t in b.leaves + b.param_leaves if t.requires_grad]
        found = {}
        if gy is not None and b.output is not None and b.output.requires_grad and targets:
            found = dict(zip(map(id, targets), grad([b.output], targets, [gy], allow_unused=True)))
        param_grads = [found.get(id(t)) for t in b.param_leaves]
        for (p, index, _), g in zip(b.params, param_grads):
            if id(p) in self._disjoint:  # this branch's rows of the gradient, written here in parallel
                rows = totals[id(p)][index]
                if g is None:
                    rows[...] = 0
                else:
                    rows[...] = transfer(g.data, p.device)
        return [found.get(id(t)) for t in b.leaves], param_grads

    def release(self) -> None:
        for b in self.branches:
            b.leaves = b.param_leaves = b.output = None
