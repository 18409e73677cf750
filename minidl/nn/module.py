"""Module: the base class of layers and models.

A Module owns Parameters (trained), buffers (arrays saved with the model but
not trained, such as batch-norm running statistics) and child Modules, found
by assigning them as attributes::

    class Affine(mdl.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.scale = mdl.Parameter(np.ones(n, np.float32))

        def forward(self, x):
            return x * self.scale

Parameters may also be created lazily on the first call, from the input's
shape (``Linear(out_features=10)`` learns ``in_features`` then).
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy

from ..backend import CPU, device_of_array, transfer
from ..errors import OpTypeError, annotate_layer_error
from ..tensor import Parameter, Tensor, parse_to_args

__all__ = ["Module", "Sequential", "IncompatibleKeys", "StateDictKeyError"]

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = "What ``load_state_dict(strict=False)`` skipped: names missing from the state, extra ones."


class StateDictKeyError(KeyError):
    """``load_state_dict(strict=True)`` found missing or unexpected names (all listed in the message)."""

    def __str__(self):
        return str(self.args[0])


def _is_array(value) -> bool:
    return hasattr(value, "dtype") and hasattr(value, "shape")


class Module:
    """Base class of every layer and model. Subclasses implement ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_unbuilt", set())  # parameter names declared but not created yet
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            buffers.pop(name, None)
            modules.pop(name, None)
            params[name] = value
            self._unbuilt.discard(name)
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            modules[name] = value
        elif name in params or name in modules:  # as in PyTorch: only a Parameter (Module) or None replaces one
            if value is not None:
                kind = "parameter" if name in params else "child module"
                raise TypeError(f"cannot assign a {type(value).__name__} as {kind} {name!r} of "
                                f"{type(self).__name__} (a minidl.{'Parameter' if kind == 'parameter' else 'nn.Module'}"
                                " or None expected; del the attribute first to replace it with something else)")
            params.pop(name, None)
            modules.pop(name, None)
        elif name in buffers:  # reassigning a buffer keeps it a buffer
            if value is not None and not isinstance(value, Tensor) and not _is_array(value):
                raise TypeError(f"cannot assign a {type(value).__name__} as buffer {name!r} of {type(self).__name__} "
                                "(an array, a Tensor or None expected)")
            value = value.data if isinstance(value, Tensor) else value
            buffers[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        self._unbuilt.discard(name)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, array) -> None:
        """Keep ``array`` with the module: moved by ``to()``, saved in ``state_dict()``.

        Buffers are stored as NumPy/CuPy arrays (a Tensor's data is taken):
        ``module.name`` gives the array. Assigning to the name later keeps it
        a buffer.
        """
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"buffer name must be a non-empty string without '.', got {name!r}")
        if array is not None and not isinstance(array, Tensor) and not _is_array(array):
            raise TypeError(f"register_buffer: {name!r} must be an array, a Tensor or None, got {type(array).__name__}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        array = array.data if isinstance(array, Tensor) else array
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def add_module(self, name: str, module: "Module | None") -> None:
        """Add a child module under ``name`` (the same as ``setattr(self, name, module)``)."""
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"module name must be a non-empty string without '.', got {name!r}")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a minidl.nn.Module or None, got {type(module).__name__}")
        if module is None:
            self._modules[name] = None
            object.__setattr__(self, name, None)
        else:
            setattr(self, name, module)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add a Parameter (or None, a placeholder for one built lazily from the first input)."""
        if param is None:
            object.__setattr__(self, name, None)
            self._unbuilt.add(name)
        else:
            setattr(self, name, param)

    def is_built(self) -> bool:
        """False while a parameter declared with ``register_parameter(name, None)`` is still missing."""
        return not self._unbuilt

    # ----------------------------------------------------------- calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def __call__(self, *args, **kwargs):
        if self._parameters:
            self._check_input_dtypes(args)
        return self.forward(*args, **kwargs)

    def _check_input_dtypes(self, args) -> None:
        """Refuse a floating input wider than this layer's parameters (a float64 batch into a float32 model)."""
        p = next(iter(self._parameters.values()))  # a layer's parameters share one dtype
        for x in args:
            if isinstance(x, Tensor) and x.dtype != p.dtype and x.dtype.kind == "f" \
                    and p.dtype.kind in "fV" and x.dtype.itemsize > p.dtype.itemsize:
                raise OpTypeError(
                    f"{type(self).__name__}: input of dtype {x.dtype} for parameters of dtype {p.dtype}; "
                    f"convert the input (x.to({p.dtype})) or the model (model.to({x.dtype}))",
                    type(self).__name__.lower())

    # ------------------------------------------------------------ walking
    def named_modules(self, prefix: str = ""):
        """(name, module) for this module and every descendant, depth first, each once."""
        seen = set()

        def walk(module, path):
            if id(module) in seen:
                return
            seen.add(id(module))
            yield path, module
            for name, child in module._modules.items():
                if child is not None:
                    yield from walk(child, f"{path}.{name}" if path else name)

        yield from walk(self, prefix)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return ((name, m) for name, m in self._modules.items() if m is not None)

    def children(self):
        return (m for m in self._modules.values() if m is not None)

    def apply(self, fn) -> "Module":
        """Call ``fn(module)`` on every child (recursively), then on this module; returns self.

        >>> model.apply(lambda m: print(type(m).__name__))
        """
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) for every parameter, each once, in definition order."""
        seen = set()
        for path, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{path}.{name}" if path else name), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix: str = ""):
        """(dotted name, array) for every buffer (None placeholders are skipped)."""
        for path, module in self.named_modules(prefix):
            for name, b in module._buffers.items():
                if b is not None:
                    yield (f"{path}.{name}" if path else name), b

    def buffers(self):
        return (b for _, b in self.named_buffers())

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # ------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> "Module":
        """Training mode (dropout active, batch-norm batch statistics); returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        """Evaluation mode; returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, *args, device=None, dtype=None) -> "Module":
        """Move to a device and/or cast to a floating dtype, in place: ``to("cuda:0")``, ``to(mdl.float64)``,
        ``to("cpu", "float32")``. Parameters keep their identity; only floating parameters and buffers are cast.
        """
        device, dtype = parse_to_args(args, device, dtype)

        def convert(array):
            if dtype is not None and array.dtype.kind in "fV" and array.dtype != dtype:
                array = array.astype(dtype)
            return array if device is None else transfer(array, device)

        for m in self.modules():
            for p in m._parameters.values():
                p.data = convert(p.data)
                p.device = device or p.device
                if p.grad is not None:
                    p.grad = Tensor(convert(p.grad.data), device=p.device)
            for name, b in list(m._buffers.items()):
                if b is not None:
                    m._buffers[name] = convert(b)
                    object.__setattr__(m, name, m._buffers[name])
        return self

    def float(self) -> "Module":
        return self.to(dtype="float32")

    def double(self) -> "Module":
        return self.to(dtype="float64")

    def half(self) -> "Module":
        return self.to(dtype="float16")

    # ------------------------------------------------------------- state
    def state_dict(self) -> "OrderedDict[str, object]":
        """Parameters and buffers by dotted name, as arrays (on their device; no copy)."""
        state = OrderedDict((name, p.data) for name, p in self.named_parameters())
        state.update(self.named_buffers())
        return state

    def load_state_dict(self, state, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays into parameters and buffers, checking names and shapes; nothing is copied on an error.

        With ``strict`` (the default), missing and unexpected names are a
        :class:`StateDictKeyError` (a KeyError) listing all of them; with
        ``strict=False`` they are skipped and returned, as in PyTorch::

            missing, unexpected = model.load_state_dict(state, strict=False)

        Shapes must match exactly (every mismatch is listed in one ValueError).
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise StateDictKeyError(
                f"load_state_dict: missing {missing or 'nothing'}; unexpected {unexpected or 'nothing'}"
            )
        mismatched = [f"{key} has shape {tuple(value.shape)} in the state but {tuple(own[key].shape)} in the model"
                      for key, value in state.items() if key in own and tuple(value.shape) != tuple(own[key].shape)]
        if mismatched:
            raise ValueError("load_state_dict: " + "; ".join(mismatched))
        params = dict(self.named_parameters())
        owners = {}
        for path, module in self.named_modules():
            for name in module._buffers:
                owners[f"{path}.{name}" if path else name] = (module, name)
        for key, value in state.items():
            if key not in own:
                continue
            value = value.data if isinstance(value, Tensor) else value
            if key in params:
                p = params[key]
                p.data = transfer(numpy.array(transfer(value, CPU), dtype=p.dtype), p.device)  # a copy
            else:
                module, name = owners[key]
                target = own[key]
                module.register_buffer(name, transfer(numpy.array(transfer(value, CPU), dtype=target.dtype),
                                                      device_of_array(target)))
        return IncompatibleKeys(missing, unexpected)

    # -------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            child_lines = repr(child).splitlines()
            lines.append(f"  ({name}): {child_lines[0]}")
            lines.extend("  " + line for line in child_lines[1:])
        return "\n".join(lines) + ")" if len(lines) > 1 else lines[0] + ")"


class Sequential(Module):
    """Modules applied one after another; ``Sequential(a, b)`` or ``Sequential({"name": a})``."""

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], dict):
            items = layers[0].items()
        else:
            items = ((str(i), layer) for i, layer in enumerate(layers))
        for name, layer in items:
            setattr(self, name, layer)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def forward(self, x):
        for index, (name, layer) in enumerate(self._modules.items()):
            try:
                x = layer(x)
            except Exception as e:
                annotate_layer_error(e, name, type(layer).__name__, index, [x])
                raise
        return x
