"""YAML -> validated spec -> Model: ``minidl.build_model("models/alexnet.yaml")``.

A model file::

    name: alexnet-mini
    input: [1, 28, 28]                 # C, H, W of one sample
    layers:
      - {type: conv2d, out_channels: 64, kernel_size: 5, padding: 2, name: conv1}
      - {type: relu}
      - {type: flatten}
      - {type: linear, out_features: 10}

On a GPU, a relu layer right after a conv2d or linear layer runs inside
that layer's op (see :attr:`Model.fuse_activations`; on the CPU when asked);
it stays a layer of its own in the model's layers, summary and errors.

Every layer runs on the previous layer's output unless it names its
``inputs:`` (layer names, or ``input`` for the model input), which gives a
graph: two columns joined by ``{type: concat, inputs: [a, b]}``, or a
residual ``{type: add, inputs: [x, y]}``. The last layer is the output
unless ``output:`` names another. Each layer's keys are checked against its
plugin's registration (signature and annotations, or an explicit schema), so
third-party layers are validated exactly like built-ins. Shapes are inferred
layer by layer (``output_shape`` when the layer has one, else a zero batch of
one), lazy parameters are created, and every error names the file, line,
column, layer index and name.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import numpy

from .errors import annotate_layer_error
from .grad_mode import no_grad
from .nn import Module
from .parallel import PlacementError, make_strategy, parse_devices
from .plugins import registry
from .spec import ModelError, check_params, schema_of, where
from .tensor import Tensor, tensor
from .yaml_loader import LocatedDict, YamlError, load_yaml, plain

__all__ = ["build_model", "load_spec", "Model", "LayerNode", "ModelError", "TOP_LEVEL_KEYS", "LAYER_KEYS",
           "FUSE_ACTIVATIONS", "fused_activation"]

TOP_LEVEL_KEYS = ("name", "input", "layers", "output", "devices", "strategy", "train")
LAYER_KEYS = ("type", "name", "inputs", "split")  # keys the builder itself reads; the rest go to the layer
SPLIT_MODES = ("data", "model", "home")  # a layer's `split:` annotation overrides its strategy's choice
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
# Whether a sequential model runs a relu layer inside the conv2d or linear layer before it, by device type,
# when Model.fuse_activations is None. On a GPU: one kernel instead of two forward, two launches instead of four
# backward. On the CPU fused steps were about 2 % faster (python benchmarks/bench_fusion.py, docs/benchmarks.md),
# but the bias gradient is summed in another order, and the main job (models/alexnet-mini.yaml, seed 0) then
# ended at 91.93 % instead of 92.11 %: off there, so the measured CPU results stand.
FUSE_ACTIVATIONS = {"cpu": False, "cuda": True}


@dataclass
class LayerNode:
    """One layer of a built model: where it came from and what flows in and out."""

    index: int
    name: str
    type: str
    module: Module
    inputs: list
    params: dict = field(default_factory=dict)
    input_shapes: list = field(default_factory=list)
    output_shape: tuple = ()
    split: str | None = None  # the layer's `split:` annotation (data, model or home), if any


class Model(Module):
    """A model built from a spec: a Module whose layers are named submodules.

    ``model.nodes`` lists the layers in order (:class:`LayerNode`),
    ``model.input_shape`` is the per-sample input shape, ``model.spec`` the
    validated spec (with ``train:`` if the file had one).

    ``model.fuse_activations``: whether a sequential model runs each relu
    layer that directly follows a conv2d or linear layer inside that layer's
    op (:func:`minidl.functions.bias_relu`: the bias add and the ReLU in one
    pass, one activation kept for the backward instead of two, one GPU
    kernel). Same outputs and gradients either way; the relu layer stays in
    :attr:`layers`, the summary, the state dict and error messages. None
    (the default) follows :data:`FUSE_ACTIVATIONS` for the input's device (on for GPUs,
    off on the CPU, where the other summation order moves results);
    True or False decide for every device. A pair is fused only when
    :func:`fused_activation` finds it safe. Graph models and models split
    over devices run every layer on its own.
    """

    def __init__(self, name: str, input_shape: tuple, nodes: list, output: str, spec: dict, source: str):
        super().__init__()
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "input_shape", tuple(input_shape))
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "placement", None)  # set by a device strategy (minidl.parallel)
        object.__setattr__(self, "fuse_activations", None)
        for node in nodes:
            setattr(self, node.name, node.module)
        previous = ["input"] + [n.name for n in nodes[:-1]]
        sequential = all(n.inputs == [p] for n, p in zip(nodes, previous)) and output == nodes[-1].name
        object.__setattr__(self, "sequential", sequential)
        # for graph models: after which node each value is last used, so it can be dropped early
        last_use = {}
        for node in nodes:
            for name in node.inputs:
                last_use[name] = node.index
        object.__setattr__(self, "_last_use", last_use)

    @property
    def layers(self) -> dict:
        """name -> layer Module, in order."""
        return {node.name: node.module for node in self.nodes}

    def forward(self, x):
        """Run the layers; an error names the layer (index, name, type, model file) and its input shapes."""
        if self.placement is not None:  # split over devices by a strategy
            return self.placement.forward(self, x)
        if self.sequential:
            node = None
            try:
                for node, activation in self._sequential_steps(x):
                    x = node.module(x) if activation is None else node.module(x, activation=activation)
            except Exception as e:
                annotate_layer_error(e, node.name, node.type, node.index, [x], self.source)
                raise
            return x
        values = {"input": x}
        for node in self.nodes:
            inputs = [values[name] for name in node.inputs]
            try:
                values[node.name] = node.module(*inputs)
            except Exception as e:
                annotate_layer_error(e, node.name, node.type, node.index, inputs, self.source)
                raise
            for name in dict.fromkeys(node.inputs):  # a layer may read one value twice ([x, x])
                if self._last_use.get(name) == node.index and name != self.output:
                    del values[name]
        return values[self.output]

    def _sequential_steps(self, x) -> list:
        """[(node, activation or None)]: each node to run, with the activation of the relu layer after it
        when that layer runs inside it (the relu's own node is then left out)."""
        fuse = self.fuse_activations
        if fuse is None:
            fuse = FUSE_ACTIVATIONS.get(getattr(getattr(x, "device", None), "type", None), False)
        nodes = self.nodes
        if not fuse:
            return [(node, None) for node in nodes]
        steps, i = [], 0
        while i < len(nodes):
            activation = fused_activation(nodes[i].module, nodes[i + 1].module) if i + 1 < len(nodes) else None
            steps.append((nodes[i], activation))
            i += 1 if activation is None else 2
        return steps

    def extra_repr(self):
        return f"name={self.name!r}, input={self.input_shape}"


def _declared_with_forward(module, name: str):
    """Class attribute ``name`` as declared by the class that defines ``module``'s forward (None when that
    class does not declare it), or None when the instance overrides forward or __call__, or its class
    overrides __call__: such a module does more than the declaration says."""
    if "forward" in vars(module) or "__call__" in vars(module) or type(module).__call__ is not Module.__call__:
        return None
    for cls in type(module).__mro__:
        if "forward" in vars(cls):
            return vars(cls).get(name)
    return None


def fused_activation(producer: Module, consumer: Module) -> str | None:
    """The activation ``producer`` may apply in place of the layer ``consumer`` that reads its output, or None.

    ``consumer`` must declare ``elementwise_activation = "relu"`` (its forward
    is exactly that function of its input), ``producer`` must list it in
    ``fusable_activations`` (its ``forward(x, activation=...)`` applies it)
    and have no ``activation`` of its own, and both declarations must come
    from the class that defines forward, with neither forward nor __call__
    replaced: a subclass that changes forward, or a wrapped or patched
    forward, is never fused. The caller makes sure ``consumer`` is the only
    reader of ``producer``'s output (in a sequential model it is).
    """
    name = _declared_with_forward(consumer, "elementwise_activation")
    if name is None or getattr(producer, "activation", None) is not None:
        return None
    return name if name in (_declared_with_forward(producer, "fusable_activations") or ()) else None


# ----------------------------------------------------------------- reading
def load_spec(path_or_mapping):
    """(spec mapping, source name) from a YAML path, YAML text-free mapping, or an already-loaded dict."""
    if isinstance(path_or_mapping, dict):
        return path_or_mapping, "<mapping>"
    source = str(path_or_mapping)
    try:
        spec = load_yaml(source)
    except YamlError as e:
        raise ModelError(e.message, source, e.mark) from None
    return spec, source


def _require(condition, message, source, container, key=None, **context):
    if not condition:
        raise ModelError(message, source, where(container, key), **context)


def _input_shape(spec, source):
    value = spec.get("input")
    _require("input" in spec, "missing 'input' (the per-sample shape, e.g. [3, 227, 227])", source, spec)
    ok = isinstance(value, (list, tuple)) and value and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    _require(ok, f"'input' must be a list of positive integers (C, H, W), got {value!r}", source, spec, "input")
    return tuple(value)


def _layer_name(layer, index, type_name, taken, source):
    name = layer.get("name")
    if name is None:
        name = f"{type_name}{index}"
        while name in taken:
            name += "_"
        return name
    context = dict(layer_index=index, layer_name=str(name))
    _require(isinstance(name, str) and _NAME.match(name) and name != "input",
             f"name must be an identifier-like string other than 'input', got {name!r}", source, layer, "name",
             **context)
    _require(name not in taken, f"duplicate layer name {name!r} (also layer {taken.get(name)})", source, layer,
             "name", **context)
    return name


def _layer_inputs(layer, index, name, previous, known, source):
    context = dict(layer_index=index, layer_name=name)
    if "inputs" not in layer:
        return [previous]
    value = layer["inputs"]
    inputs = [value] if isinstance(value, str) else value
    _require(isinstance(inputs, list) and inputs and all(isinstance(v, str) for v in inputs),
             f"inputs must be a layer name or a list of layer names, got {value!r}", source, layer, "inputs",
             **context)
    for item in inputs:
        if item not in known:
            close = difflib.get_close_matches(item, list(known), n=1)
            raise ModelError(f"inputs names {item!r}, which is not an earlier layer", source,
                             where(layer, "inputs"), hint=f"did you mean {close[0]!r}?" if close else
                             f"earlier layers: {', '.join(known)}", **context)
    return list(inputs)


def _make_layer(layer, index, name, layers_registry, source):
    context = dict(layer_index=index, layer_name=name)
    type_name = layer["type"]
    try:
        entry = layers_registry[type_name]
    except KeyError as e:
        raise ModelError(str(e.args[0]), source, where(layer, "type"), **context) from None
    given = LocatedDict(layer.mark if isinstance(layer, LocatedDict) else None)
    for key, value in layer.items():
        if key not in LAYER_KEYS:
            given[key] = value
            if isinstance(layer, LocatedDict):
                given.key_marks[key] = layer.key_marks.get(key)
                given.value_marks[key] = layer.value_marks.get(key)
    kwargs = check_params(given, schema_of(entry), f"{entry.name}", source, context)
    try:
        module = entry.create(**kwargs)
    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise ModelError(str(message), source, where(layer, "type"), **context) from None
    if not isinstance(module, Module):
        raise ModelError(f"layer type {type_name!r} (plugin {entry.plugin.name}) made a {type(module).__name__}, "
                         "not a minidl.nn.Module", source, where(layer, "type"), **context)
    return entry, module, kwargs


def _infer_shape(node, source, mark, describe_inputs, dtype):
    """Create lazy parameters and return the layer's per-sample output shape."""
    module = node.module
    shapes = node.input_shapes
    try:
        if hasattr(module, "output_shape"):
            if not module.is_built() and hasattr(module, "build"):
                module.build(shapes[0], None, dtype)
            return tuple(int(n) for n in module.output_shape(*shapes))
        with no_grad():  # no shape rule: run it on a zero batch of one
            was_training = module.training
            module.eval()
            out = module(*[tensor(numpy.zeros((1,) + tuple(s), dtype=dtype)) for s in shapes])
            module.train(was_training)
        if not isinstance(out, Tensor):
            raise TypeError(f"forward returned {type(out).__name__}, not a Tensor")
        return tuple(int(n) for n in out.shape[1:])
    except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as e:
        raise ModelError(f"cannot take input {describe_inputs()}: {e}", source, mark,
                         layer_index=node.index, layer_name=node.name) from None


def build_model(path_or_mapping, device=None, dtype="float32", devices=None, strategy=None) -> Model:
    """Build a :class:`Model` from a YAML file path or a mapping with the same structure.

    ``devices`` and ``strategy`` (the file's ``devices:`` and ``strategy:``
    unless given here) split the model over devices with a registered
    device strategy (see :mod:`minidl.parallel`); ``device`` alone moves the
    whole model to one device.

    Raises :class:`minidl.ModelError` (a ValueError) naming file:line:column,
    the layer's index and name, and a hint, for anything wrong in the spec.

    >>> model = mdl.build_model("models/alexnet-mini.yaml")
    >>> logits = model(x)            # x: (N, 1, 28, 28)
    """
    spec, source = load_spec(path_or_mapping)
    _require(isinstance(spec, dict), "a model file must be a mapping with 'name', 'input' and 'layers'", source,
             spec)
    for key in spec:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            raise ModelError(f"unknown top-level key {key!r}", source, where(spec, key),
                             hint=f"did you mean {close[0]!r}?" if close else f"known: {', '.join(TOP_LEVEL_KEYS)}")
    name = spec.get("name", "model")
    _require(isinstance(name, str), f"'name' must be a string, got {name!r}", source, spec, "name")
    input_shape = _input_shape(spec, source)
    layers = spec.get("layers")
    _require(isinstance(layers, list) and layers, "'layers' must be a non-empty list of layers", source, spec,
             "layers" if "layers" in spec else None)

    strategy = _strategy(spec, source, device, devices, strategy)  # device errors before anything is built
    layers_registry = registry("layers")
    nodes, taken = [], {}
    shapes = {"input": input_shape}
    for index, layer in enumerate(layers):
        mark = where(layers, index)
        if not isinstance(layer, dict):
            raise ModelError(f"a layer must be a mapping with a 'type', got {layer!r}", source, mark,
                             layer_index=index)
        type_name = layer.get("type")
        if not isinstance(type_name, str):
            raise ModelError("layer has no 'type' (a string naming a registered layer)", source, mark,
                             layer_index=index, layer_name=layer.get("name"),
                             hint=f"known layer types: {', '.join(layers_registry.names())}")
        node_name = _layer_name(layer, index, type_name, taken, source)
        previous = nodes[-1].name if nodes else "input"
        inputs = _layer_inputs(layer, index, node_name, previous, shapes, source)
        entry, module, kwargs = _make_layer(layer, index, node_name, layers_registry, source)
        if len(inputs) > 1 and entry.options.get("inputs") != "many":
            raise ModelError(f"{type_name} takes one input, got {len(inputs)} ({', '.join(inputs)})", source,
                             where(layer, "inputs"), layer_index=index, layer_name=node_name)
        node = LayerNode(index, node_name, type_name, module, inputs, kwargs, [shapes[i] for i in inputs])
        node.split = layer.get("split")
        _require(node.split is None or node.split in SPLIT_MODES,
                 f"split must be one of {', '.join(SPLIT_MODES)} (how a device strategy runs this layer), "
                 f"got {node.split!r}", source, layer, "split", layer_index=index, layer_name=node_name)

        def describe(node=node):
            parts = []
            for i, shape in zip(node.inputs, node.input_shapes):
                producer = next((n for n in nodes if n.name == i), None)
                origin = (f"from layer {producer.index} {producer.name!r} ({producer.type})" if producer
                          else "from the model input")
                parts.append(f"{shape} {origin}")
            return " and ".join(parts)

        node.output_shape = _infer_shape(node, source, where(layer, "type") or mark, describe, dtype)
        if not all(isinstance(n, int) and n > 0 for n in node.output_shape):
            raise ModelError(f"produces an empty output of shape {node.output_shape} from input {describe()}",
                             source, where(layer, "type") or mark, layer_index=index, layer_name=node_name)
        shapes[node_name] = node.output_shape
        taken[node_name] = index
        nodes.append(node)

    output = spec.get("output", nodes[-1].name)
    _require(isinstance(output, str) and output in shapes and output != "input",
             f"output {output!r} is not a layer name", source, spec,
             "output")
    if "train" in spec:
        from .train_spec import validate_train_spec

        validate_train_spec(spec["train"], source, where(spec, "train"))
    model = Model(name, input_shape, nodes, output, spec, source)
    if strategy is not None:
        try:
            strategy.place(model)
        except PlacementError as e:
            raise ModelError(str(e), source, where(spec, "strategy") or where(spec, "devices")) from None
    elif device is not None:
        model.to(device)
    return model


def _strategy(spec, source, device, devices, strategy):
    """The device strategy asked for by the arguments or the file (None: no split asked for)."""
    from_file = {"devices": devices is None and device is None and "devices" in spec,
                 "strategy": strategy is None and "strategy" in spec}
    if devices is None and device is not None:
        devices = [str(device)]  # an explicit device overrides the file's devices
    devices = devices if devices is not None else spec.get("devices")
    strategy = strategy if strategy is not None else spec.get("strategy")
    if devices is None and strategy is None:
        return None
    if devices is None:
        devices = [device or "cpu"]
    ok = isinstance(devices, str) or isinstance(devices, list) and devices and all(isinstance(d, str) for d in devices)
    _require(ok, f"'devices' must be a list of device names (e.g. [cpu:0, cpu:1]), got {devices!r}", source, spec,
             "devices")

    def located(error, key):
        return ModelError(str(error), source, where(spec, key)) if from_file[key] else error

    try:
        devices = parse_devices(devices)
    except PlacementError as e:
        raise located(e, "devices") from None
    try:
        return make_strategy(plain(strategy) if strategy is not None else "single", devices)
    except PlacementError as e:
        raise located(e, "strategy") from None
