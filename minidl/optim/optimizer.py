"""Optimizer: the base class of every optimizer plugin (parameter groups, state, step)."""
from __future__ import annotations

import numpy

from ..backend import CPU, elementwise_kernel, transfer
from ..tensor import Parameter, Tensor

__all__ = ["Optimizer"]


class Optimizer:
    """Updates parameters in place from their ``.grad``.

    ``params`` is an iterable of Parameters or of parameter-group dicts
    (``{"params": [...], "lr": 0.001}``); a group's keys override the
    optimizer's defaults, as in PyTorch. Subclasses implement
    :meth:`update`, called for each parameter that has a gradient; ``state``
    is that parameter's dict of arrays (momentum buffers and so on).

    Updates run on raw arrays (no graph), on the parameter's device.

    A step has two halves. :meth:`prepare_step` is the host's part: step
    counters, and the values that change from step to step (the learning
    rate, bias corrections: :meth:`hyperparameters`), which on a GPU it
    writes into a small device array per group, :meth:`device_hyperparameters`.
    :meth:`apply_step` is the array work, which on a GPU reads those values
    from device memory. A CUDA graph captures ``apply_step`` once and replays
    it; ``prepare_step`` runs before each replay, so a schedule changes the
    learning rate without a new capture. An optimizer whose GPU updates keep
    to this declares ``capturable = True``.
    """

    capturable = False

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups = []
        seen = set()
        for group in groups:
            params = list(group["params"]) if not isinstance(group["params"], Tensor) else [group["params"]]
            for p in params:
                if not isinstance(p, Tensor) or not p.requires_grad:
                    raise TypeError(f"{type(self).__name__}: can only optimize tensors that require grad, got {p!r}")
                if id(p) in seen:
                    raise ValueError(f"{type(self).__name__}: a parameter appears in more than one group")
                seen.add(id(p))
            unknown = set(group) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"{type(self).__name__}: unknown option(s) {sorted(unknown)} in a parameter group; "
                                 f"known: {sorted(self.defaults)}")
            self.param_groups.append({**self.defaults, **group, "params": params})
        self.state = {}  # id(param) -> dict
        self.step_count = 0
        self._device_values = {}  # (id(group), device) -> [values last written, device float64 array]

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        """Apply one update to every parameter with a gradient."""
        self.prepare_step()
        self.apply_step()

    def prepare_step(self) -> None:
        """The host's half of a step: count it, and put each group's :meth:`hyperparameters` on its devices."""
        self.step_count += 1
        for group in self.param_groups:
            values = self.hyperparameters(group)
            if not values:
                continue
            for device in {p.device for p in group["params"] if p.device.type != "cpu"}:
                self._write_device_values(group, device, values)

    def apply_step(self) -> None:
        """The arrays' half of a step: :meth:`update` each parameter that has a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(id(p), {})
                self.update(p, p.grad.data, state, group)

    def update(self, param: Parameter, grad, state: dict, group: dict) -> None:
        raise NotImplementedError

    def hyperparameters(self, group: dict) -> tuple:
        """The float values of ``group`` that GPU updates read from :meth:`device_hyperparameters` (at most four);
        () when they read none."""
        return ()

    def capture_refusal(self):
        """Why this optimizer's step cannot be captured into a CUDA graph now, or None when it can."""
        if not self.capturable:
            return (f"{type(self).__name__} does not declare capturable = True (its updates may compute on the "
                    "host, which a replayed graph would not repeat)")
        return None

    def device_hyperparameters(self, group: dict, device):
        """The device array holding :meth:`hyperparameters` for ``group`` on ``device``, as :meth:`prepare_step`
        last wrote them."""
        return self._device_values[(id(group), device)][1]

    def _write_device_values(self, group, device, values) -> None:
        entry = self._device_values.get((id(group), device))
        if entry is None:
            with device.context():
                entry = self._device_values[(id(group), device)] = [None, device.xp.empty(4, numpy.float64)]
        values = tuple(float(v) for v in values)
        if entry[0] != values:  # one small kernel (no host-to-device copy, no wait), only when they changed
            padded = values + (0.0,) * (4 - len(values))
            with device.context():
                elementwise_kernel("float64 a, float64 b, float64 c, float64 d", "float64 h",
                                   "h = i == 0 ? a : i == 1 ? b : i == 2 ? c : d", "minidl_set_hyperparameters")(
                    *padded, entry[1])
            entry[0] = values

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """{"state": {index: {name: array}}, "param_groups": [...], "step_count": n}; host copies of arrays."""
        index = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index[id(p)] = len(index)
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {}
        for pid, values in self.state.items():
            if pid in index:
                state[index[pid]] = {k: _host_copy(v) for k, v in values.items()}
        return {"state": state, "param_groups": groups, "step_count": self.step_count}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(g["params"]) != len(own["params"]) for g, own in zip(groups, self.param_groups)
        ):
            raise ValueError(f"{type(self).__name__}.load_state_dict: parameter groups do not match the optimizer's")
        params = [p for group in self.param_groups for p in group["params"]]
        self.state = {}
        for key, values in state_dict["state"].items():
            p = params[int(key)]
            self.state[id(p)] = {k: transfer(_host_copy(v), p.device) if hasattr(v, "shape") else v
                                 for k, v in values.items()}
        for own, saved in zip(self.param_groups, groups):
            own.update({k: v for k, v in saved.items() if k != "params"})
        self.step_count = int(state_dict.get("step_count", 0))


def _host_copy(value):
    """A NumPy copy of an array (so saved state never aliases live buffers); other values as they are."""
    if hasattr(value, "shape"):
        return numpy.array(transfer(value, CPU), copy=True)
    return value
