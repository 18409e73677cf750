"""ONNX file -> minidl model: ``mdl.onnx.load("model.onnx")``.

The file is parsed by the onnx package (a protobuf: reading it runs no code),
without external data, which is refused, and checked with ``onnx.checker``.
Every stored tensor's size is checked from its declared shape and data type
before any array is made. Each node becomes one minidl layer (Identity and
Dropout vanish; a Reshape that flattens becomes ``flatten``), see
:mod:`minidl.onnx.nodes`; an op with no minidl layer is refused, naming the
op and the node. The layers form a model spec (what a YAML model file holds),
built with :func:`minidl.build_model`; the weights are then loaded by name.
"""
from __future__ import annotations

import re
from math import prod
from pathlib import Path

import numpy

from .common import OnnxError, require_onnx
from .nodes import HANDLERS

__all__ = ["load", "MAX_TENSOR_BYTES", "MAX_FILE_BYTES", "MIN_IMPORT_OPSET"]

MAX_TENSOR_BYTES = 2**30  # one initializer (AlexNet's largest, fc6, is 151 MB)
MAX_FILE_BYTES = 2**31 - 1  # a whole file, and all its tensors together (protobuf's own limit)
MIN_IMPORT_OPSET = 11
_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


def _dtypes(onnx) -> dict:
    t = onnx.TensorProto
    return {t.FLOAT: numpy.float32, t.DOUBLE: numpy.float64, t.FLOAT16: numpy.float16, t.INT64: numpy.int64,
            t.INT32: numpy.int32}


class _Reader:
    """The stored tensors of one file (initializers and Constant nodes), size-checked; arrays made on use."""

    def __init__(self, onnx, proto, source: str, max_tensor_bytes: int, max_file_bytes: int):
        self.onnx = onnx
        self.max_tensor_bytes, self.max_file_bytes = max_tensor_bytes, max_file_bytes
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.tensors = {}  # name -> TensorProto (checked) or a NumPy array (small Constant attributes)
        self.total = 0
        for tensor in proto.graph.initializer:
            try:
                self.add(tensor.name, tensor, f"initializer {tensor.name!r}")
            except OnnxError as e:
                raise OnnxError(f"{source}: {e}") from None

    def add(self, name, tensor, what: str) -> None:
        onnx = self.onnx
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise OnnxError(f"{what} keeps its data in the external file {location!r}; minidl reads self-contained "
                            "ONNX files only (re-export without external data)")
        dtype = _dtypes(onnx).get(tensor.data_type)
        if dtype is None or tensor.HasField("segment"):
            kind = onnx.TensorProto.DataType.Name(tensor.data_type) if dtype is None else "a segmented tensor"
            raise OnnxError(f"{what} is {kind}, which minidl does not read")
        dims = [int(d) for d in tensor.dims]
        count = prod(dims)
        nbytes = count * numpy.dtype(dtype).itemsize
        if min(dims, default=0) < 0:
            raise OnnxError(f"{what} declares the shape {dims}")
        if nbytes > self.max_tensor_bytes:
            raise OnnxError(f"{what} declares shape {dims} of {numpy.dtype(dtype).name}, "
                            f"{nbytes:,} bytes: over the limit of {self.max_tensor_bytes:,} (max_tensor_bytes)")
        self.total += nbytes
        if self.total > self.max_file_bytes:
            raise OnnxError(f"with {what}, the stored tensors need over {self.max_file_bytes:,} bytes "
                            "(max_file_bytes)")
        self.tensors[name] = tensor  # that it holds that much data: onnx.checker and numpy_helper check

    def array(self, node, index: int, dtype=numpy.float32):
        """The stored tensor that ``node`` reads as input ``index``, as a NumPy array (float32 by default)."""
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            raise OnnxError(f"input {index} is missing")
        if name not in self.tensors:
            raise OnnxError(f"input {index} {name!r} is computed in the graph; minidl needs it stored in the file")
        value = self.tensors[name]
        try:
            array = value if isinstance(value, numpy.ndarray) else self.onnx.numpy_helper.to_array(value)
        except ValueError as e:  # more data than the declared shape holds
            raise OnnxError(f"input {index} {name!r} does not hold the data its shape {list(value.dims)} "
                            f"declares: {e}") from None
        if dtype is None:
            return array
        if not numpy.issubdtype(array.dtype, numpy.floating):
            raise OnnxError(f"input {index} {name!r} holds {array.dtype} values, not floating-point weights")
        return numpy.ascontiguousarray(array, dtype=dtype)

    def constant(self, node) -> None:
        """Keep the value of a Constant node."""
        (attribute,) = node.attribute
        value = self.onnx.helper.get_attribute_value(attribute)
        if attribute.name == "value":
            self.add(node.output[0], value, "its value")
        elif attribute.name in ("value_int", "value_ints", "value_float", "value_floats"):
            kind = numpy.int64 if "int" in attribute.name else numpy.float32
            self.tensors[node.output[0]] = numpy.asarray(value, dtype=kind)
        else:
            raise OnnxError(f"attribute {attribute.name} is not supported")


def _attributes(onnx, node) -> dict:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _layer_name(node, stored_inputs, taken) -> str:
    """The layer's name: the prefix of its weight (``features.0`` of ``features.0.weight``), else the module
    an exporter's scope path names (``features.1`` of ``/features/features.1/Relu``), else the node's name."""
    candidates = [n[: -len(".weight")] for n in stored_inputs if n.endswith(".weight")]
    parts = [p for p in node.name.split("/") if p]
    candidates += ([parts[-2]] if len(parts) > 1 else []) + (["_".join(parts)] if parts else [])
    cleaned = [c for c in (_NAME.sub("_", c) for c in candidates) if c]
    cleaned = [c if c[0].isalpha() or c[0] == "_" else f"_{c}" for c in cleaned]
    for name in cleaned:
        if name not in taken and name != "input":
            return name
    base, i = (cleaned[0] if cleaned else node.op_type.lower()), 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def _sample_shape(graph_input, sample_shape, source):
    dims = graph_input.type.tensor_type.shape.dim
    fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]
    if sample_shape is not None:
        shape = tuple(sample_shape)
        if len(shape) != len(fixed) or any(f is not None and f != s for f, s in zip(fixed, shape)):
            raise OnnxError(f"{source}: sample_shape {shape} does not fit input {graph_input.name!r} "
                            f"of shape {['?' if f is None else f for f in [None] + fixed]}")
        return shape
    if not fixed or any(f is None or f < 1 for f in fixed):
        raise OnnxError(f"{source}: input {graph_input.name!r} has no fixed per-sample shape "
                        f"({['?' if f is None else f for f in [None] + fixed]}); pass sample_shape=(C, H, W)")
    return tuple(fixed)


def _read(path, max_tensor_bytes, max_file_bytes):
    onnx = require_onnx()
    from google.protobuf.message import DecodeError

    path = Path(path)
    size = path.stat().st_size
    if size > max_file_bytes:
        raise OnnxError(f"{path}: {size:,} bytes, over the limit of {max_file_bytes:,} (max_file_bytes)")
    data = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)  # external data is never read
    except (DecodeError, RuntimeError, ValueError) as e:
        raise OnnxError(f"{path}: not a readable ONNX file: {e}") from None
    reader = _Reader(onnx, proto, str(path), max_tensor_bytes, max_file_bytes)
    if reader.opset < MIN_IMPORT_OPSET:
        raise OnnxError(f"{path}: opset {reader.opset} is older than {MIN_IMPORT_OPSET}; convert it first with "
                        "onnx.version_converter")
    try:
        onnx.checker.check_model(data)
    except onnx.checker.ValidationError as e:
        raise OnnxError(f"{path}: not a valid ONNX model: {e}") from None
    return onnx, proto, reader


class _Layers:
    """The minidl layers of a graph, as spec entries, with their weights and the nodes they come from."""

    def __init__(self):
        self.specs, self.weights, self.origins, self.checks = [], {}, {}, []

    def add(self, layer, node, where: str, stored_inputs: list, sources: list) -> str:
        name = _layer_name(node, stored_inputs, self.origins)
        spec = {"name": name, "type": layer.type, **layer.params}
        if sources != [self.specs[-1]["name"] if self.specs else "input"]:
            spec["inputs"] = sources
        self.specs.append(spec)
        self.weights.update({f"{name}.{key}": array for key, array in layer.weights.items()})
        self.origins[name] = where
        if layer.check is not None:
            self.checks.append((name, layer.check))
        return name


def _convert(onnx, reader, graph, source: str, input_name: str):
    """(:class:`_Layers`, ONNX value name -> the layer computing it) for the graph's nodes."""
    values = {input_name: "input"}
    layers = _Layers()
    for index, node in enumerate(graph.node):
        where = f"node {index} {node.name!r} ({node.op_type})"
        try:
            if node.domain not in ("", "ai.onnx"):
                raise OnnxError(f"op {node.domain}.{node.op_type} is not a standard ONNX op")
            if node.op_type == "Constant":
                reader.constant(node)
                continue
            handler = HANDLERS.get(node.op_type)
            if handler is None:
                raise OnnxError(f"op {node.op_type} has no minidl layer (supported: {', '.join(sorted(HANDLERS))})")
            layer = handler(reader, node, _attributes(onnx, node))
            if isinstance(layer, str) and layer in reader.tensors:  # a second name for a stored tensor
                reader.tensors[node.output[0]] = reader.tensors[layer]
                continue
            unknown = [v for v in ([layer] if isinstance(layer, str) else layer.inputs) if v not in values]
            if unknown:
                stored = [v for v in unknown if v in reader.tensors]
                raise OnnxError(f"reads {stored[0]!r}, a stored tensor, where minidl's layer reads a layer output"
                                if stored else f"reads {unknown[0]!r}, which no earlier node computes")
        except OnnxError as e:
            raise OnnxError(f"{source}: {where}: {e}") from None
        except KeyError as e:
            raise OnnxError(f"{source}: {where}: missing attribute {e}") from None
        if isinstance(layer, str):  # passes a value through
            values[node.output[0]] = values[layer]
        else:
            values[node.output[0]] = layers.add(layer, node, where, [v for v in node.input if v in reader.tensors],
                                                [values[v] for v in layer.inputs])
    return layers, values


def load(path, sample_shape=None, *, device=None, max_tensor_bytes: int = MAX_TENSOR_BYTES,
         max_file_bytes: int = MAX_FILE_BYTES):
    """Build a minidl model (in evaluation mode) from an ONNX file.

    Args:
        path: an ``.onnx`` file with its weights inside (external data files are refused).
        sample_shape: the per-sample input shape ``(C, H, W)``, needed only when the file leaves it open.
        device: where to put the model (default: the CPU).
        max_tensor_bytes, max_file_bytes: limits on one stored tensor and on the file, checked before
            any array is made.

    The graph must have one input and one output and use the ops minidl has
    layers for (Conv, Gemm, Relu, LRN, MaxPool, AveragePool, GlobalAveragePool,
    Flatten, BatchNormalization, Softmax, LogSoftmax, Concat, Add, Sum, and
    Identity, Dropout and flattening Reshapes as exporters write them);
    anything else raises :class:`minidl.onnx.OnnxError` naming the op and the
    node. Layers are named after their weights (``features.0.weight`` gives
    ``features.0``) or their nodes. The model's ``spec`` holds the layers, so
    ``mdl.save`` stores it like any model.

    >>> model = mdl.onnx.load("alexnet.onnx")      # e.g. from torch.onnx.export
    >>> logits = model(mdl.tensor(images))
    """
    from ..builder import build_model
    from ..spec import ModelError

    onnx, proto, reader = _read(path, max_tensor_bytes, max_file_bytes)
    source, graph = str(path), proto.graph
    inputs = [i for i in graph.input if i.name not in reader.tensors]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxError(f"{source}: minidl models have one input and one output; this graph has inputs "
                        f"{[i.name for i in inputs]} and outputs {[o.name for o in graph.output]}")
    sample = _sample_shape(inputs[0], sample_shape, source)
    layers, values = _convert(onnx, reader, graph, source, inputs[0].name)
    output = values.get(graph.output[0].name)
    if output in (None, "input"):
        raise OnnxError(f"{source}: the output {graph.output[0].name!r} is not computed by any layer")
    spec = {"name": graph.name or Path(source).stem, "input": list(sample), "layers": layers.specs}
    if output != layers.specs[-1]["name"]:
        spec["output"] = output
    placeholder = {"weight_init": 0.0, "bias_init": 0.0}  # the file's weights replace them: no random draws
    try:
        model = build_model(dict(spec, layers=[dict(layer, **placeholder) if layer["type"] in ("conv2d", "linear")
                                               else layer for layer in layers.specs]))
    except ModelError as e:
        raise OnnxError(f"{source}: {layers.origins.get(e.layer_name, 'model')}: {e.message}") from None
    object.__setattr__(model, "spec", spec)  # the layers as the file gives them, for mdl.save
    nodes = {n.name: n for n in model.nodes}
    for name, check in layers.checks:
        problem = check(nodes[name])
        if problem:
            raise OnnxError(f"{source}: {layers.origins[name]}: {problem}")
    try:
        model.load_state_dict(layers.weights)
    except (KeyError, ValueError) as e:
        raise OnnxError(f"{source}: weights do not fit the layers: {e.args[0] if e.args else e}") from None
    if device is not None:
        model.to(device)
    return model.eval()
