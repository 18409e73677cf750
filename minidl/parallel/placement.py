"""Placing a built model on several devices: the layer modes and the split forward pass.

A strategy decides, for every layer of a :class:`minidl.builder.Model`, one of
three modes; :class:`Placement` then runs the model that way:

``"data"``
    each device runs the whole layer on its share of the batch (a replica
    of the layer's parameters per device; their gradients are summed).
``"model"``
    each device computes a share of the layer's output channels or features
    (the paper's columns). How a layer splits is declared by the layer
    itself, with one of these optional methods (plain duck typing, so
    third-party layers opt in without importing anything):

    - ``output_slice(lo, hi) -> (in_lo, in_hi, fn, params)``: output
      channels ``[lo, hi)`` need input channels ``[in_lo, in_hi)`` and are
      ``fn(inputs, params)`` of ``params`` = [(Parameter, rows)]
      (conv2d, linear). May raise ValueError when the cut is impossible
      (a cut through a convolution group).
    - ``channel_halo() -> (before, after)``: output channel ``c`` reads
      input channels ``c - before .. c + after`` (lrn).
    - ``channel_map(lo, hi, input_shape) -> (lo', hi')``: input channels
      ``[lo, hi)`` alone give output channels ``[lo', hi')`` (relu,
      dropout, pooling; flatten maps channels to features).

    A layer with none of them runs whole on the first device.
``"home"``
    the layer runs whole on the first device.

Layers that set ``stochastic = True`` (dropout) run their shares one after
another in device order, so their random draws are reproducible.
"""
from __future__ import annotations

import copy

from ..backend import Device, DeviceError, as_device, transfer
from ..errors import annotate_layer_error
from ..functions import to_device
from .ondevices import Branch, OnDevices
from .sharded import Ledger, Sharded, even_ranges
from .threads import DeviceThreads, cpu_cores

__all__ = ["Placement", "PlacementError", "Strategy", "parse_devices", "LAYER_MODES"]

LAYER_MODES = ("data", "model", "home")


class PlacementError(ValueError):
    """A model cannot be placed as asked: names the layer, device or strategy at fault."""


def parse_devices(devices) -> list:
    """``"cpu:0,cpu:1"`` or a list of names/Devices -> a list of distinct, present Devices.

    Logical CPU devices ``cpu:N`` must have ``N`` below the number of cores
    this process may use; CUDA devices must exist. Checked before anything
    is allocated.
    """
    if devices is None:
        return [as_device("cpu")]
    if isinstance(devices, (str, Device)):
        devices = [d for d in str(devices).split(",") if d.strip()] if isinstance(devices, str) else [devices]
    if not devices:
        raise PlacementError("no devices given (e.g. --devices cpu:0,cpu:1)")
    parsed = []
    for spec in devices:
        try:
            device = as_device(str(spec).strip() if not isinstance(spec, Device) else spec)
        except DeviceError as e:
            raise PlacementError(str(e)) from None
        if device.type == "cpu" and device.index >= cpu_cores():
            raise PlacementError(f"device {device} is not present: this machine has {cpu_cores()} CPU core(s) "
                                 f"for logical devices cpu:0..cpu:{cpu_cores() - 1}")
        if device in parsed:
            raise PlacementError(f"device {device} is listed twice in {', '.join(map(str, devices))}")
        parsed.append(device)
    return parsed


class Strategy:
    """Base class of device strategies: say which mode each layer runs in.

    A strategy plugin registers a factory ``factory(devices, **options)``
    returning a Strategy; subclasses implement :meth:`layer_modes`.
    """

    name = "strategy"
    min_devices = 1
    max_devices = None

    def __init__(self, devices, **options):
        if options:
            raise PlacementError(f"strategy {self.name!r} takes no options, got {', '.join(sorted(options))}")
        self.devices = parse_devices(devices)
        if len(self.devices) < self.min_devices or (self.max_devices and len(self.devices) > self.max_devices):
            wanted = (f"exactly {self.min_devices}" if self.min_devices == self.max_devices
                      else f"at least {self.min_devices}")
            raise PlacementError(f"strategy {self.name!r} needs {wanted} device(s), got {len(self.devices)} "
                                 f"({', '.join(map(str, self.devices))})")

    def layer_modes(self, model) -> dict:
        """{layer name: "data" | "model" | "home"} for every node of ``model``."""
        raise NotImplementedError

    def place(self, model, blas_threads: int | None = None):
        """Move ``model`` to the first device and split it; returns the model.

        A layer's ``split:`` annotation in the model file overrides the mode
        :meth:`layer_modes` gives it.
        """
        if not hasattr(model, "nodes"):
            raise PlacementError(f"a device strategy places models built by minidl.build_model, not a "
                                 f"{type(model).__name__}")
        modes = self.layer_modes(model)
        for node in model.nodes:
            if getattr(node, "split", None) is not None:  # the model file's per-layer annotation wins
                modes[node.name] = node.split
            if modes.get(node.name) not in LAYER_MODES:
                raise PlacementError(f"strategy {self.name!r} gave layer {node.index} {node.name!r} the mode "
                                     f"{modes.get(node.name)!r}; expected one of {LAYER_MODES}")
        previous = getattr(model, "placement", None)
        if previous is not None:
            previous.close()
        if len(self.devices) == 1 or all(m == "home" for m in modes.values()):
            model.to(self.devices[0])
            object.__setattr__(model, "placement", None)
            return model
        placement = Placement(model, self.devices, modes, strategy=self.name, blas_threads=blas_threads)
        model.to(self.devices[0])
        object.__setattr__(model, "placement", placement)
        return model


class Placement:
    """Runs ``model``'s layers over ``devices`` in the given modes (see the module docstring).

    Built by :meth:`Strategy.place`; ``Model.forward`` hands over to it.
    Checks every split at construction, so an impossible one is an error
    naming the layer before anything runs.
    """

    def __init__(self, model, devices, modes, strategy: str = "custom", blas_threads: int | None = None):
        self.devices = list(devices)
        self.home = self.devices[0]
        self.modes = dict(modes)
        self.strategy = strategy
        self.ledger = None
        self._replicas = {}  # (node name, device) -> (replica module, [(param, replica param)])
        self._splits = {}  # node name -> [(device, lo, hi, (in_lo, in_hi, fn, params))] for output_slice layers
        for node in model.nodes:
            if self.modes[node.name] == "model" and hasattr(node.module, "output_slice"):
                self._splits[node.name] = self._plan_output_split(node)
        self.threads = DeviceThreads(self.devices, blas_threads)

    def _plan_output_split(self, node):
        extent = node.output_shape[0]
        plan = []
        for device, (lo, hi) in zip(self.devices, even_ranges(extent, len(self.devices))):
            if hi <= lo:
                continue
            try:
                plan.append((device, lo, hi, node.module.output_slice(lo, hi)))
            except ValueError as e:
                raise PlacementError(f"layer {node.index} {node.name!r} ({node.type}) cannot be split over "
                                     f"{len(self.devices)} devices: {e}") from None
        return plan

    def close(self) -> None:
        """Stop the device threads and restore the BLAS thread count."""
        self.threads.close()

    # ------------------------------------------------------------- running
    def forward(self, model, x):
        values = {"input": Sharded.whole(to_device(x, self.home), constant=not x.requires_grad)}
        last_use = model._last_use
        for node in model.nodes:
            inputs = [values[name] for name in node.inputs]
            try:
                values[node.name] = self._run(node, inputs)
            except Exception as e:
                annotate_layer_error(e, node.name, node.type, node.index, inputs, getattr(model, "source", None))
                raise
            for name in dict.fromkeys(node.inputs):
                if last_use.get(name) == node.index and name != model.output:
                    del values[name]
        return values[model.output].piece(self.home, ledger=self.ledger)

    def _run(self, node, inputs):
        mode = self.modes[node.name]
        module = node.module
        if len(inputs) == 1:
            x = inputs[0]
            if mode == "data":
                return self._data_parallel(node, x)
            if mode == "model":
                if node.name in self._splits:
                    return self._output_split(node, x)
                if x.axis == 0 and len(x.shards) > 1 and not module.num_parameters():
                    return self._per_shard(node, x, lambda lo, hi: (lo, hi))
                if hasattr(module, "channel_halo"):
                    return self._halo(node, x)
                if hasattr(module, "channel_map"):
                    shape = node.input_shapes[0]
                    return self._per_shard(node, x, lambda lo, hi: module.channel_map(lo, hi, shape))
        pieces = [value.piece(self.home, ledger=self.ledger) for value in inputs]
        out = module(*pieces)
        if self.ledger is not None:
            self._count(self.ledger, [(self.home, out)], [(p, None, self.home) for p in module.parameters()])
        return Sharded.whole(out)

    def _launch(self, node, branches):
        op = OnDevices(branches, self.threads, in_order=getattr(node.module, "stochastic", False), name=node.name)
        outputs = op()
        if self.ledger is not None:  # only while `measure` runs: nothing is built per step otherwise
            self._count(self.ledger, [(b.device, y) for b, y in zip(branches, outputs)],
                        [(p, index, b.device) for b in branches for p, index, _ in b.params])
        return outputs

    @staticmethod
    def _count(ledger, outputs, params):
        """Add layer outputs [(device, tensor)] and parameters [(parameter, rows, device)] to ``ledger``."""
        for device, y in outputs:
            ledger.activation_bytes[device] += y.data.nbytes
        for p, index, device in params:
            nbytes = p.data.nbytes if index is None else p.data[index].nbytes
            ledger.add_params(device, (id(p), str(index)), nbytes)

    # -------------------------------------------------------------- modes
    def _data_parallel(self, node, x):
        ranges = even_ranges(x.shape[0], len(self.devices))
        branches = []
        for device, (lo, hi) in zip(self.devices, ranges):
            if hi <= lo:
                continue
            replica, pairs = self._replica(node, device)
            branches.append(Branch(device, lambda xs, ps, m=replica: m(*xs),
                                   [x.piece(device, batch=(lo, hi), ledger=self.ledger)],
                                   [(p, None, rp) for p, rp in pairs]))
        outputs = self._launch(node, branches)
        return Sharded(0, [(b.device, y, lo, hi) for b, y, (lo, hi) in
                           zip(branches, outputs, [r for r in ranges if r[1] > r[0]])])

    def _replica(self, node, device):
        """The layer as ``device`` runs it: the layer itself on the first device, else a copy sharing its state."""
        module = node.module
        if device == self.home:
            return module, [(p, p) for p in module.parameters()]
        key = (node.name, device)
        if key not in self._replicas:
            replica = _replicate(module)
            self._replicas[key] = (replica, list(zip(module.parameters(), replica.parameters())))
        replica, pairs = self._replicas[key]
        replica.train(module.training)
        for p, rp in pairs:  # the optimizer updated p: the replica reads the new values
            rp.data = transfer(p.data, device)
            rp.device = device
            if self.ledger is not None:
                self.ledger.replica_bytes[device] += p.data.nbytes
        return replica, pairs

    def _output_split(self, node, x):
        branches = []
        for device, lo, hi, (in_lo, in_hi, fn, params) in self._splits[node.name]:
            xd = x.piece(device, channels=(in_lo, in_hi), ledger=self.ledger)
            branches.append(Branch(device, fn, [xd], [(p, index, None) for p, index in params]))
        outputs = self._launch(node, branches)
        return Sharded(1, [(b.device, y, lo, hi) for b, y, (_, lo, hi, _) in
                           zip(branches, outputs, self._splits[node.name])])

    def _halo(self, node, x):
        before, after = node.module.channel_halo()
        channels = x.shape[1]
        branches, ranges = [], []
        for device, _, lo, hi in x.shards:
            start, stop = max(0, lo - before), min(channels, hi + after)
            xd = x.piece(device, channels=(start, stop), ledger=self.ledger)

            def fn(xs, ps, module=node.module, keep=slice(lo - start, hi - start), whole=(start, stop) == (lo, hi)):
                y = module(xs[0])
                return y if whole else y[:, keep]

            branches.append(Branch(device, fn, [xd]))
            ranges.append((lo, hi))
        outputs = self._launch(node, branches)
        return Sharded(1, [(b.device, y, lo, hi) for b, y, (lo, hi) in zip(branches, outputs, ranges)])

    def _per_shard(self, node, x, map_range):
        branches, ranges = [], []
        for device, tensor, lo, hi in x.shards:
            branches.append(Branch(device, lambda xs, ps, m=node.module: m(*xs), [tensor]))
            ranges.append((lo, hi) if x.axis == 0 else map_range(lo, hi))
        outputs = self._launch(node, branches)
        return Sharded(x.axis, [(b.device, y, lo, hi) for b, y, (lo, hi) in zip(branches, outputs, ranges)])

    # ------------------------------------------------------------ summary
    def measure(self, model, batch: int = 1):
        """Run one forward pass on zeros of ``batch`` samples and return its :class:`Ledger`."""
        from ..grad_mode import no_grad
        from ..tensor import tensor

        dtype = next(iter(model.parameters())).dtype if model.num_parameters() else "float32"
        x = tensor(self.home.xp.zeros((batch,) + tuple(model.input_shape), dtype=dtype), device=self.home)
        self.ledger = ledger = Ledger()
        try:
            with no_grad():
                was_training = model.training
                model.eval()
                self.forward(model, x)
                model.train(was_training)
        finally:
            self.ledger = None
        return ledger


def _replicate(module):
    """A copy of ``module`` (and its children) with Parameters of its own that share the arrays."""
    twin = copy.copy(module)
    for table in ("_parameters", "_buffers", "_modules"):
        object.__setattr__(twin, table, type(getattr(module, table))(getattr(module, table)))
    object.__setattr__(twin, "_unbuilt", set(module._unbuilt))
    for name, p in module._parameters.items():
        twin_p = copy.copy(p)
        twin_p.grad, twin_p.creator = None, None
        twin._parameters[name] = twin_p
        object.__setattr__(twin, name, twin_p)
    for name, child in module._modules.items():
        twin._modules[name] = twin_child = _replicate(child)
        object.__setattr__(twin, name, twin_child)
    return twin

