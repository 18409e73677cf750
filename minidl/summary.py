"""Per-layer output shapes, parameters, multiply-accumulates and activation memory of a built model."""
from __future__ import annotations

import numpy

__all__ = ["summarize", "format_table"]


def _layer_params(module) -> int:
    return sum(p.size for p in module.parameters())


def _layer_device(module, default: str) -> str:
    for p in module.parameters():
        return str(p.device)
    return default


def _algorithm(node, batch, dtype, device) -> dict:
    """{"algorithm", "workspace_bytes"} of a convolution layer (one with ``problem_for``/``choose_algorithm``)."""
    module = node.module
    if not (hasattr(module, "problem_for") and hasattr(module, "choose_algorithm")):
        return {"algorithm": None, "workspace_bytes": 0}
    problem = module.problem_for(node.input_shapes[0], batch, dtype, device)
    algorithm = module.choose_algorithm(problem, record=False)
    return {"algorithm": algorithm.name, "workspace_bytes": int(algorithm.workspace_bytes(problem))}


def summarize(model, batch: int = 1, dtype="float32", device=None) -> dict:
    """The summary as a dict: {"name", "input", "params", "macs", "activation_bytes", "layers": [...]}.

    ``macs`` are per image (convolutions and fully connected layers; a layer
    plugin reports its own through a ``macs(input_shape)`` method).
    Activation memory is the layer's output for ``batch`` images of ``dtype``.
    Each layer's ``device`` is the list of devices it runs on and ``split``
    how it is split over them (``"data"``, ``"model"``, ``"home"``, or None
    for an unsplit model). Convolutions name the ``algorithm`` that computes
    them for a batch of ``batch`` on ``device`` (default: where the model
    is) and its ``workspace_bytes``.
    For a model split over devices (``model.placement``), ``"placement"``
    adds, per device, the parameters it holds and the activations it
    produces, and the bytes that cross devices in one training step.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    itemsize = numpy.dtype(dtype).itemsize
    default_device = _layer_device(model, "cpu:0")
    placement = getattr(model, "placement", None)
    layers = []
    for node in model.nodes:
        macs = int(node.module.macs(*node.input_shapes)) if hasattr(node.module, "macs") else 0
        if placement is None:
            devices, split = [_layer_device(node.module, default_device)], None
        else:
            split = placement.modes[node.name]
            devices = [str(placement.home)] if split == "home" else [str(d) for d in placement.devices]
        layers.append({
            "index": node.index,
            "name": node.name,
            "type": node.type,
            "inputs": list(node.inputs),
            "output_shape": [batch] + list(node.output_shape),
            "params": _layer_params(node.module),
            "macs": macs,
            "device": devices,
            "split": split,
            **_algorithm(node, batch, dtype, device or devices[0]),
            "activation_bytes": int(numpy.prod(node.output_shape)) * batch * itemsize,
        })
    return {
        "name": model.name,
        "input": [batch] + list(model.input_shape),
        "params": model.num_parameters(),
        "macs": sum(layer["macs"] for layer in layers),
        "activation_bytes": sum(layer["activation_bytes"] for layer in layers),
        "batch": batch,
        "layers": layers,
        **({"placement": _placement_summary(model, placement, batch)} if placement is not None else {}),
    }


def _placement_summary(model, placement, batch) -> dict:
    """Per device: parameters held and activations made; bytes crossing devices per training step."""
    ledger = placement.measure(model, batch)
    itemsize = next(iter(model.parameters())).data.itemsize if model.num_parameters() else 4
    devices = [{
        "device": str(d),
        "params": ledger.param_bytes.get(d, 0) // itemsize,
        "param_bytes": ledger.param_bytes.get(d, 0),
        "activation_bytes": ledger.activation_bytes.get(d, 0),
    } for d in placement.devices]
    activations = sum(ledger.sent_bytes.values()) + sum(ledger.returned_bytes.values())
    replicas = sum(ledger.replica_bytes.values())
    return {
        "strategy": placement.strategy,
        "devices": devices,
        # forward sends activations, backward sends their gradients back (not for the input); a
        # data-parallel replica receives the parameters and sends their gradients once per step
        "transfer_bytes_per_step": activations + 2 * replicas,
        "activation_transfer_bytes_per_step": activations,
        "parameter_sync_bytes_per_step": 2 * replicas,
        "transfers": [{"from": str(a), "to": str(b), "forward_bytes": n} for (a, b), n in ledger.sent_bytes.items()],
    }


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _device_cell(layer) -> str:
    devices = ",".join(layer["device"])
    return devices if layer["split"] in (None, "home") else f"{devices} ({layer['split']})"


def format_table(summary: dict) -> str:
    """A fixed-width table for people (``minidl summary``)."""
    head = ["#", "name", "type", "output shape", "params", "MACs", "device", "algorithm", "activations"]
    rows = [[str(l["index"]), l["name"], l["type"], "x".join(map(str, l["output_shape"])), f"{l['params']:,}",
             f"{l['macs']:,}", _device_cell(l), l["algorithm"] or "", _bytes(l["activation_bytes"])]
            for l in summary["layers"]]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    right = {0, 4, 5, 8}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [f"{summary['name']}: input {'x'.join(map(str, summary['input']))}", line(head),
           "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    out.append(f"total: {summary['params']:,} parameters, {summary['macs']:,} MACs per image, "
               f"{_bytes(summary['activation_bytes'])} of activations for batch {summary['batch']}")
    placement = summary.get("placement")
    if placement:
        out.append(f"strategy {placement['strategy']}:")
        for d in placement["devices"]:
            out.append(f"  {d['device']}: {d['params']:,} parameters ({_bytes(d['param_bytes'])}), "
                       f"{_bytes(d['activation_bytes'])} of activations")
        out.append(f"  crossing devices per training step: {_bytes(placement['transfer_bytes_per_step'])} "
                   f"({_bytes(placement['activation_transfer_bytes_per_step'])} of activations and their gradients, "
                   f"{_bytes(placement['parameter_sync_bytes_per_step'])} of replica parameters and gradients)")
    return "\n".join(out)
