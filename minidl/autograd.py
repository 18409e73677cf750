"""The reverse-mode engine behind ``Tensor.backward`` and :func:`minidl.grad`.

Functions are processed in decreasing ``generation`` (one more than the
largest generation among their inputs' creators), which is a reverse
topological order; a heap keeps it iterative, so arbitrarily long chains
work. Before a Function's backward runs, the tensors it saved are checked
against the versions they had when it was recorded: a value modified in
place since then would give a wrong gradient, so that is an error, as in
PyTorch.
"""
from __future__ import annotations

import heapq
import itertools

from . import backend
from .grad_mode import enable_grad, no_grad
from .tensor import Tensor, _wrap, tensor

__all__ = ["grad", "partial_grad", "run_backward"]


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool | None = None,
         create_graph: bool = False, allow_unused: bool = False):
    """Gradients of ``outputs`` with respect to ``inputs``, returned instead of stored in ``.grad``.

    Args:
        outputs: a Tensor or a sequence of Tensors.
        inputs: a Tensor or a sequence of Tensors that require grad.
        grad_outputs: one gradient per output (may be omitted for one-element outputs).
        retain_graph: keep the graph (default: the value of ``create_graph``).
        create_graph: make the returned gradients differentiable.
        allow_unused: return None for an input the outputs do not depend on
            (otherwise that is an error).

    Returns a tuple with one gradient per input.

    >>> (gx,) = mdl.grad(y, [x], create_graph=True)
    """
    outputs = (outputs,) if isinstance(outputs, Tensor) else tuple(outputs)
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    if grad_outputs is None:
        grad_outputs = (None,) * len(outputs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = (grad_outputs,)
    for y in outputs:
        if not y.requires_grad:
            raise RuntimeError("grad(): an output does not require grad (no input it depends on requires grad)")
    grads = tuple(_initial_grad(y, g) for y, g in zip(outputs, grad_outputs))
    capture = {id(x): None for x in inputs}
    if retain_graph is None:
        retain_graph = create_graph
    run_backward(outputs, grads, retain_graph=retain_graph or create_graph, create_graph=create_graph,
                 capture=capture)
    result = tuple(capture[id(x)] for x in inputs)
    for i, g in enumerate(result):
        if g is None and not allow_unused:
            raise RuntimeError(f"grad(): input {i} was not used to compute the outputs (pass allow_unused=True)")
    return result


def partial_grad(outputs, inputs, grad_outputs):
    """Partial derivatives of ``outputs`` with respect to each of ``inputs``, differentiably.

    Unlike :func:`grad`, nothing upstream of ``inputs`` is visited (a path
    from one input through another does not count). This is what a
    Function's backward needs when it obtains higher-order derivatives from a
    composite of differentiable ops (see ``minidl.functions.normalization``).
    """
    capture = {id(x): None for x in inputs}
    grads = tuple(_initial_grad(y, g) for y, g in zip(outputs, grad_outputs))
    run_backward(tuple(outputs), grads, retain_graph=True, create_graph=True, capture=capture,
                 stop_at_captured=True)
    return tuple(capture[id(x)] for x in inputs)


def _initial_grad(root: Tensor, grad) -> Tensor:
    if grad is None:
        if root.size != 1:
            raise RuntimeError(
                f"backward() on a tensor of shape {root.shape} needs a gradient of that shape: "
                "only a one-element tensor gets the implicit gradient 1 "
                "(reduce it first, e.g. loss.sum().backward(), or pass grad=...)"
            )
        return _wrap(root.device.xp.ones(root.shape, dtype=root.dtype), root.device)
    if not isinstance(grad, Tensor):
        grad = tensor(grad, device=root.device, dtype=root.dtype)
    if grad.shape != root.shape:
        raise RuntimeError(f"backward(): gradient shape {grad.shape} does not match tensor shape {root.shape}")
    if grad.device != root.device:
        raise backend.DeviceError(f"backward(): gradient is on {grad.device} but the tensor is on {root.device}")
    return grad


_tiebreak = itertools.count()


def run_backward(roots, grads, retain_graph: bool, create_graph: bool, capture: dict | None = None,
                 stop_at_captured: bool = False) -> None:
    """The engine: propagate ``grads`` from ``roots`` to every leaf that requires grad.

    Functions are processed in decreasing ``generation`` (one more than the
    largest generation among their inputs' creators), which is a reverse
    topological order. A heap keeps it iterative.

    With ``capture`` (a dict id(tensor) -> None), gradients of those tensors
    are summed into the dict instead of into any ``.grad`` (this is
    :func:`minidl.grad`). With ``stop_at_captured``, propagation ends at the
    captured tensors: the result is the partial derivative with respect to
    each, as a Function's backward needs (see :func:`partial_grad`).
    """
    if isinstance(roots, Tensor):
        roots, grads = (roots,), (grads,)
    with enable_grad() if create_graph else no_grad():
        given_out = set()  # ids of arrays already stored in some .grad (avoid aliasing)
        if not create_graph:
            given_out.update(id(g.data) for g in grads)
        pending = {}  # tensor id -> (tensor, summed grad)

        def deliver(x, gx):
            if capture is not None and id(x) in capture:
                previous = capture[id(x)]
                capture[id(x)] = gx if previous is None else previous + gx
                if stop_at_captured:
                    return
            if x.creator is None:
                if capture is None:
                    _accumulate_leaf(x, gx, create_graph, given_out)
            else:
                entry = pending.get(id(x))
                pending[id(x)] = (x, gx if entry is None else entry[1] + gx)
                enqueue(x.creator)

        heap = []
        queued = set()

        def enqueue(fn):
            if id(fn) not in queued:
                queued.add(id(fn))
                heapq.heappush(heap, (-fn.generation, next(_tiebreak), fn))

        for root, grad in zip(roots, grads):
            deliver(root, grad)
        while heap:
            fn = heapq.heappop(heap)[2]
            if fn.inputs is None:
                raise RuntimeError(
                    f"backward through {type(fn).__name__} a second time: its saved inputs were freed. "
                    "Pass retain_graph=True to the first backward() to keep them."
                )
            gys = []
            for ref in fn.outputs:
                out = ref()
                entry = pending.pop(id(out), None) if out is not None else None
                if entry is not None and out._retain_grad:
                    out.grad = entry[1]
                gys.append(None if entry is None else entry[1])
            if len(gys) > 1 and any(g is None for g in gys):
                gys = [g if g is not None else _zeros_for(meta) for g, meta in zip(gys, fn.output_meta)]
            if fn.saves_output or fn.saves_inputs and _any_modified(fn.inputs):
                fn.check_saved_versions()
            gxs = fn.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            inputs = fn.inputs
            if len(gxs) != len(inputs):
                raise RuntimeError(
                    f"{type(fn).__name__}.backward returned {len(gxs)} gradient(s) for {len(inputs)} input(s)"
                )
            for x, gx in zip(inputs, gxs):
                if gx is None or not x.requires_grad:
                    continue
                deliver(x, _check_grad(fn, x, gx))
            if not retain_graph:
                fn.inputs = None
                fn.release()


def _any_modified(tensors) -> bool:
    """Whether any of ``tensors`` has a version counter (was modified in place or viewed): then check them."""
    for t in tensors:
        if t._vc is not None:
            return True
    return False


def _check_grad(fn, x: Tensor, gx) -> Tensor:
    if not isinstance(gx, Tensor):
        raise TypeError(f"{type(fn).__name__}.backward must return Tensors (or None), got {type(gx).__name__}")
    if gx.shape != x.shape:
        raise RuntimeError(
            f"{type(fn).__name__}.backward returned a gradient of shape {gx.shape} for an input of shape {x.shape}"
        )
    if gx.dtype != x.dtype:
        gx = gx.astype(x.dtype)
    return gx


def _accumulate_leaf(x: Tensor, gx: Tensor, create_graph: bool, given_out: set) -> None:
    if x.grad is None:
        if not create_graph:
            data = gx.data
            flags = data.flags
            # Store an array the leaf owns: not another leaf's or the caller's (nor a view
            # of one, as reshape/transpose/split gradients are), not a read-only broadcast
            # view, so optimizers may update .grad in place.
            if (id(data) in given_out or data.base is not None or not flags.c_contiguous
                    or not getattr(flags, "writeable", True)):
                data = data.copy()
            given_out.add(id(data))
            gx = _wrap(data, gx.device)
        x.grad = gx
    elif create_graph:
        x.grad = x.grad + gx
    else:
        x.grad = _wrap(x.grad.data + gx.data, x.device)
        given_out.add(id(x.grad.data))


def _zeros_for(meta) -> Tensor:
    shape, dtype, device = meta
    return _wrap(device.xp.zeros(shape, dtype=dtype), device)
