"""Running one model over several devices: device strategies and their machinery.

    model = mdl.build_model("models/alexnet.yaml")
    mdl.parallel.place(model, "columns", devices="cpu:0,cpu:1")
    loss = F.cross_entropy(model(x), labels)    # the forward and backward run split
    loss.backward()

Strategies are plugins (``minidl_register_device_strategies``); minidl's own
are ``single``, ``columns``, ``data_parallel`` and ``hybrid`` (see
``plugins/minidl_strategies``). A strategy assigns each layer a mode and
:class:`Placement` runs it: the per-device shares of a layer run concurrently
on one thread per device (:mod:`.threads`), as one autograd op
(:class:`OnDevices`), and activations move between devices with
differentiable transfers, so backward crosses devices the same way.
Parameters stay where they are: a state dict, a checkpoint and an optimizer
see the same model whatever the placement.

Processes (MPI) are :mod:`minidl.parallel.mpi`.
"""
from __future__ import annotations

from .ondevices import Branch, OnDevices
from .placement import LAYER_MODES, Placement, PlacementError, Strategy, parse_devices
from .sharded import Ledger, Sharded, even_ranges
from .threads import DeviceThreads, cpu_cores

__all__ = [
    "Branch", "DeviceThreads", "LAYER_MODES", "Ledger", "OnDevices", "Placement", "PlacementError", "Sharded",
    "Strategy", "cpu_cores", "even_ranges", "make_strategy", "parse_devices", "place",
]


def make_strategy(strategy="single", devices=None, **options) -> Strategy:
    """The registered strategy ``strategy`` (a name, or ``{type: name, ...options}``) over ``devices``."""
    from ..plugins import registry

    if isinstance(strategy, dict):
        options = {**{k: v for k, v in strategy.items() if k != "type"}, **options}
        strategy = strategy.get("type")
    strategies = registry("device_strategies")
    if strategy not in strategies:
        raise PlacementError(strategies.unknown_message(strategy))
    made = strategies.create(strategy, devices, **options)
    if not isinstance(made, Strategy):
        raise PlacementError(f"strategy {strategy!r} made a {type(made).__name__}, not a minidl.parallel.Strategy")
    return made


def place(model, strategy="single", devices=None, **options):
    """Split ``model`` over ``devices`` with ``strategy``; returns ``model`` (placed in place)."""
    return make_strategy(strategy, devices, **options).place(model)
