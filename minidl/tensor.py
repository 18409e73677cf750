"""Tensor and Parameter.

A Tensor wraps one NumPy or CuPy array (``.data``) together with the device it
lives on and, when it was produced by a recorded op, the Function that made it
(``.creator``). ``backward()`` walks those creators in reverse topological
order (the engine is :mod:`minidl.autograd`).

The arithmetic operators and methods such as ``sum`` or ``reshape`` are
attached by :mod:`minidl.functions` (the ops live there; this module stays
below them in the import order).
"""
from __future__ import annotations

import copy

import numpy

from . import backend
from .backend import CPU, Device, as_device

__all__ = ["Tensor", "Parameter", "tensor", "as_tensor", "DEFAULT_DTYPE"]

DEFAULT_DTYPE = numpy.dtype(numpy.float32)
_autograd = None  # minidl.autograd, imported by the first backward()


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

    # _vc: the version counter, [n] once the data was modified in place or a view of it was taken
    # (views share one counter, as in PyTorch); None means version 0 (no list made for every op output).
    __slots__ = ("data", "grad", "requires_grad", "creator", "device", "name", "_retain_grad", "_vc", "__weakref__")
    __array_priority__ = 200  # ndarray (op) Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad: bool = False, device=None, name: str | None = None):
        source = None
        if isinstance(data, Tensor):  # share the data (as torch.nn.Parameter(t) does), never nest
            source, data = data, data.data
            if device is None:
                device = source.device
            elif as_device(device) != source.device:
                source = None  # a copy on another device: nothing shared
        elif not (hasattr(data, "dtype") and hasattr(data, "shape")):  # a number or a (nested) list
            data = tensor(data).data
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
        self._vc = None
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

    @property
    def _version(self) -> int:
        """How many times the data was modified in place (shared with views, as in PyTorch)."""
        return 0 if self._vc is None else self._vc[0]

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
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

    def __array__(self, dtype=None, copy=None):
        # np.asarray(t): the CPU data itself (no copy unless asked); a GPU tensor must be fetched explicitly
        if self.device.type != "cpu":
            raise TypeError(f"cannot convert a tensor on {self.device} to a NumPy array implicitly; "
                            "use t.numpy() (copies it to the host)")
        if copy:
            return numpy.array(self.data, dtype=dtype, copy=True)
        return self.data if dtype is None else self.data.astype(dtype, copy=False)

    def item(self):
        """The single value of a one-element tensor as a Python number."""
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return backend.transfer(self.data.reshape(()), CPU).item()  # a GPU read goes through the backend

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def tolist(self):
        return self.numpy().tolist()

    def detach(self) -> "Tensor":
        """A tensor sharing this one's data (and version counter), cut from the graph (requires_grad=False)."""
        return Tensor(self, device=self.device)

    def __deepcopy__(self, memo):
        # copy.deepcopy(model) works as in PyTorch: new arrays, the same (immutable) device
        if self.creator is not None:
            raise RuntimeError("only leaf tensors can be deep-copied (as in PyTorch): this one was computed by a "
                               "recorded op; detach() it first")
        twin = type(self).__new__(type(self))
        memo[id(self)] = twin
        twin.data = self.data.copy()
        twin.device, twin.requires_grad, twin.name = self.device, self.requires_grad, self.name
        twin.grad = None if self.grad is None else copy.deepcopy(self.grad, memo)
        twin.creator, twin._retain_grad, twin._vc = None, self._retain_grad, None
        return twin

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
        global _autograd
        if _autograd is None:  # the engine sits above Tensor in the import order: found on first use
            from . import autograd as engine

            _autograd = engine
        if not self.requires_grad:
            raise RuntimeError(
                "backward() called on a tensor that does not require grad "
                "(no input had requires_grad=True, or it was computed under no_grad())"
            )
        grad = _autograd._initial_grad(self, grad)
        _autograd.run_backward((self,), (grad,), retain_graph=retain_graph or create_graph,
                               create_graph=create_graph)

    # Operators and most methods are attached by minidl.functions.


class Parameter(Tensor):
    """A Tensor that a Module trains: ``requires_grad`` is always on."""

    __slots__ = ()

    def __init__(self, data, device=None, name: str | None = None):
        super().__init__(data, requires_grad=True, device=device, name=name)

    def __repr__(self):
        return "Parameter(" + super().__repr__()[len("tensor("):]


def _share_version(source: Tensor, view: Tensor) -> None:
    """Give ``view`` (a tensor over ``source``'s memory) ``source``'s version counter."""
    if source._vc is None:
        source._vc = [0]
    view._vc = source._vc


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
    t._vc = None
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


def parse_to_args(args, device=None, dtype=None):
    """(device, dtype) from ``to()``'s arguments: a device, a dtype, both, or a tensor (in any order)."""
    for arg in args:
        if isinstance(arg, Tensor):
            device, dtype = arg.device, arg.dtype
        elif isinstance(arg, Device) or (isinstance(arg, str) and arg.partition(":")[0].strip().lower()
                                         in ("cpu", "cuda")):
            device = arg
        else:
            try:
                dtype = _resolve_dtype(arg)
            except TypeError:
                raise TypeError(f"to(): {arg!r} is neither a device ('cpu', 'cuda:0') nor a dtype "
                                "('float32', mdl.float64)") from None
    return (None if device is None else as_device(device)), (None if dtype is None else _resolve_dtype(dtype))
