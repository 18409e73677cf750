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

from collections import OrderedDict

import numpy

from ..backend import CPU, as_device, device_of_array, transfer
from ..tensor import Parameter, Tensor

__all__ = ["Module", "Sequential"]


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
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
            self._unbuilt.discard(name)
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array) -> None:
        """Keep ``array`` (NumPy/CuPy) with the module: moved by ``to()``, saved in ``state_dict()``."""
        self._buffers[name] = array
        object.__setattr__(self, name, array)

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
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ walking
    def named_modules(self, prefix: str = ""):
        """(name, module) for this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

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

    def named_buffers(self):
        for path, module in self.named_modules():
            for name, b in module._buffers.items():
                yield (f"{path}.{name}" if path else name), b

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

    def to(self, device) -> "Module":
        """Move every parameter and buffer to ``device`` in place (Parameters keep their identity)."""
        device = as_device(device)
        for m in self.modules():
            for p in m._parameters.values():
                p.data = transfer(p.data, device)
                p.device = device
                if p.grad is not None:
                    p.grad = Tensor(transfer(p.grad.data, device), device=device)
            for name, b in list(m._buffers.items()):
                m.register_buffer(name, transfer(b, device))
        return self

    # ------------------------------------------------------------- state
    def state_dict(self) -> "OrderedDict[str, object]":
        """Parameters and buffers by dotted name, as arrays (on their device; no copy)."""
        state = OrderedDict((name, p.data) for name, p in self.named_parameters())
        state.update(self.named_buffers())
        return state

    def load_state_dict(self, state, strict: bool = True) -> None:
        """Copy arrays into parameters and buffers, checking names and shapes.

        With ``strict`` (the default), missing and unexpected names are an
        error listing them. Shapes must match exactly.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(
                f"load_state_dict: missing {missing or 'nothing'}; unexpected {unexpected or 'nothing'}"
            )
        params = dict(self.named_parameters())
        owners = {}
        for path, module in self.named_modules():
            for name in module._buffers:
                owners[f"{path}.{name}" if path else name] = (module, name)
        for key, value in state.items():
            if key not in own:
                continue
            value = value.data if isinstance(value, Tensor) else value
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(
                    f"load_state_dict: {key} has shape {tuple(value.shape)} in the state but "
                    f"{tuple(own[key].shape)} in the model"
                )
            if key in params:
                p = params[key]
                p.data = transfer(numpy.array(transfer(value, CPU), dtype=p.dtype), p.device)  # a copy
            else:
                module, name = owners[key]
                target = own[key]
                module.register_buffer(name, transfer(numpy.array(transfer(value, CPU), dtype=target.dtype),
                                                      device_of_array(target)))

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
        for layer in self._modules.values():
            x = layer(x)
        return x
