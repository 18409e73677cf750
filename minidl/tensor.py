"""Tensor, Parameter and the reverse-mode engine behind ``Tensor.backward``.

A Tensor wraps one NumPy or CuPy array (``.data``) together with the device it
lives on and, when it was produced by a recorded op, the Function that made it
(``.creator``). ``backward()`` walks those creators in reverse topological
order, iteratively, so arbitrarily long chains work.

The arithmetic operators and methods such as ``sum`` or ``reshape`` are
attached by :mod:`minidl.functions` (the ops live there; this module stays
below them in the import order).
"""
from __future__ import annotations

import heapq
import itertools

import numpy

from . import backend
from .backend import CPU, Device, as_device
from .grad_mode import enable_grad, no_grad

__all__ = ["Tensor", "Parameter", "tensor", "as_tensor", "grad", "DEFAULT_DTYPE"]

DEFAULT_DTYPE = numpy.dtype(numpy.float32)


def _is_float_dtype(dtype) -> bool:
    # kind 'V' covers ml_dtypes' bfloat16, which NumPy sees as a void-like type.
    return dtype.kind in "fcV"


class Tensor:
    """An array with a device, an optional gradient and a link to the op that made it.

    Create tensors with :func:`minidl.tensor`; ops return new tensors. The
    main attributes are ``data`` (the NumPy/CuPy array), ``grad`` (a Tensor,
    filled by ``backward()`` on leaves that require grad), ``requires_grad``,
    ``device``, ``shape`` and ``dtype``.
    """

    __slots__ = ("data", "grad", "requires_grad", "creator", "device", "name", "_retain_grad", "__weakref__")
    __array_priority__ = 200  # ndarray (op) Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad: bool = False, device=None, name: str | None = None):
        if device is None:
            self.device = backend.device_of_array(data)
        else:
            self.device = as_device(device)
            data = backend.transfer(data, self.device)  # no copy when already there
        self.data = data
        self.grad = None
        self.creator = None
        self.name = name
        self._retain_grad = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # ----------------------------------------------------------------- info
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded op (inputs and parameters)."""
        return self.creator is None

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = numpy.array2string(backend.transfer(self.data, CPU), separator=", ", prefix="tensor(")
        extras = []
        if self.device.type != "cpu" or self.device.index:
            extras.append(f"device='{self.device}'")
        if self.dtype != DEFAULT_DTYPE:
            extras.append(f"dtype={self.dtype}")
        if self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + ", ".join([body] + extras) + ")"

    def __bool__(self):
        if self.size != 1:
            raise ValueError(
                f"the truth value of a tensor of shape {self.shape} is ambiguous; use .any() or .all()"
            )
        return bool(self.item())

    # ------------------------------------------------------------ conversion
    def numpy(self):
        """The values as a NumPy array (copied from the GPU when needed; no graph)."""
        return backend.transfer(self.data, CPU)

    def item(self):
        """The single value of a one-element tensor as a Python number."""
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self) -> "Tensor":
        """A tensor sharing this one's data, cut from the graph (requires_grad=False)."""
        return Tensor(self.data, device=self.device)

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        """Set ``requires_grad`` in place; only floating-point tensors can require grad."""
        if requires_grad and not _is_float_dtype(self.data.dtype):
            raise TypeError(
                f"requires_grad=True needs a floating-point tensor, got dtype {self.data.dtype}; "
                "convert first, e.g. x.astype('float32')"
            )
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor during backward (leaves always keep it)."""
        self._retain_grad = True

    def zero_grad(self) -> None:
        self.grad = None

    # -------------------------------------------------------------- backward
    def backward(self, grad=None, retain_graph: bool = False, create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        Args:
            grad: the gradient of some scalar with respect to this tensor, of
                this tensor's shape. May be omitted only when this tensor has
                one element (the implicit gradient is 1).
            retain_graph: keep the graph so backward can run through it again.
                Default False: saved inputs are released as backward goes.
            create_graph: record the backward computation itself, so the
                gradients are differentiable (second derivatives). Implies
                retain_graph.

        Example::

            x = mdl.tensor([1.0, 2.0], requires_grad=True)
            (x * x).sum().backward()
            x.grad   # tensor([2., 4.])
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() called on a tensor that does not require grad "
                "(no input had requires_grad=True, or it was computed under no_grad())"
            )
        grad = _initial_grad(self, grad)
        run_backward((self,), (grad,), retain_graph=retain_graph or create_graph, create_graph=create_graph)

    # Operators and most methods are attached by minidl.functions.


class Parameter(Tensor):
    """A Tensor that a Module trains: ``requires_grad`` is always on."""

    __slots__ = ()

    def __init__(self, data, device=None, name: str | None = None):
        super().__init__(data, requires_grad=True, device=device, name=name)

    def __repr__(self):
        return "Parameter(" + super().__repr__()[len("tensor("):]


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


def _wrap(data, device: Device) -> Tensor:
    """Fast internal constructor for op outputs (no checks)."""
    t = Tensor.__new__(Tensor)
    t.data = data
    t.device = device
    t.grad = None
    t.creator = None
    t.requires_grad = False
    t.name = None
    t._retain_grad = False
    return t


def tensor(data, requires_grad: bool = False, device=None, dtype=None) -> Tensor:
    """Create a tensor from a Python number, a (nested) list or a NumPy/CuPy array.

    The data is copied. Python floats become float32 (the default dtype),
    Python ints int64; NumPy arrays keep their dtype unless ``dtype`` is given.

    Args:
        data: the values.
        requires_grad: record ops on this tensor for backward.
        device: ``"cpu"``, ``"cpu:N"`` or ``"cuda:N"``. By default the device ``data`` is
            on: a Tensor's device, a CuPy array's GPU, else the CPU.
        dtype: e.g. ``"float32"``, ``"float64"``, ``"float16"``, ``"bfloat16"`` or ``mdl.bfloat16``.

    >>> x = mdl.tensor([[1.0, 2.0]], requires_grad=True)
    """
    if device is None:
        device = data.device if isinstance(data, Tensor) else backend.device_of_array(data)
    device = as_device(device)
    if isinstance(data, Tensor):
        data = data.data
    xp = device.xp
    if dtype is not None:
        dtype = _resolve_dtype(dtype)
    elif not hasattr(data, "dtype"):
        probe = numpy.asarray(data)
        dtype = DEFAULT_DTYPE if probe.dtype.kind == "f" else probe.dtype
    if device.type == "cuda":
        with device.context():
            array = xp.array(data, dtype=dtype)
    else:
        array = numpy.array(backend.transfer(data, CPU), dtype=dtype)
    return Tensor(array, requires_grad=requires_grad, device=device)


def as_tensor(data, device=None) -> Tensor:
    """Return ``data`` if it is a Tensor, else wrap it without copying where possible."""
    if isinstance(data, Tensor):
        return data
    return tensor(data, device=device)


def _resolve_dtype(dtype):
    if isinstance(dtype, str) and dtype in ("bfloat16", "bf16"):
        return backend.bfloat16()
    return numpy.dtype(dtype)


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
