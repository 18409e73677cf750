"""minidl's device strategies, registered through the public plugin API.

- ``single``: the whole model on one device.
- ``columns``: the paper's two-GPU split, over any number of devices. Every
  layer computes a share of its output channels on each device; grouped
  convolutions are cut by group (no exchange), layers that read every
  channel (conv3 and the fully connected layers in AlexNet) gather their input
  from all devices first.
- ``data_parallel``: every device runs the whole model on its share of the
  batch; parameter gradients are summed before the update.
- ``hybrid``: Krizhevsky's "one weird trick": data parallelism up to the first
  fully connected layer, the columns' model parallelism from there on.
"""
import minidl
from minidl.parallel import Strategy

__all__ = ["Columns", "DataParallel", "Hybrid", "Single"]


class Single(Strategy):
    """Everything on one device."""

    name = "single"
    max_devices = 1

    def layer_modes(self, model):
        return {node.name: "home" for node in model.nodes}


class Columns(Strategy):
    """Model parallelism: each device holds a share of every layer's channels (the paper's columns)."""

    name = "columns"

    def layer_modes(self, model):
        return {node.name: "model" for node in model.nodes}


class DataParallel(Strategy):
    """One replica per device, the batch split between them."""

    name = "data_parallel"

    def layer_modes(self, model):
        return {node.name: "data" for node in model.nodes}


class Hybrid(Strategy):
    """Data-parallel convolutions, model-parallel fully connected layers ("one weird trick")."""

    name = "hybrid"

    def layer_modes(self, model):
        modes, mode = {}, "data"
        for node in model.nodes:
            if len(node.output_shape) == 1 and hasattr(node.module, "output_slice"):
                mode = "model"  # the first fully connected layer
            modes[node.name] = mode
        return modes


@minidl.hookimpl
def minidl_register_device_strategies(register):
    register("single", Single)
    register("columns", Columns, aliases=("model_parallel",))
    register("data_parallel", DataParallel, aliases=("data",))
    register("hybrid", Hybrid)
