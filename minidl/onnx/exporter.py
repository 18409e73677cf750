"""minidl model -> ONNX file: ``mdl.onnx.export(model, "model.onnx")``.

Every layer becomes an ONNX node named after the layer (a layer that needs
several ONNX ops gets several nodes, the last one named after the layer);
its parameters and buffers become initializers named as in the model's state
dict (``conv1.weight``), and the value each layer produces is named after the
layer. The graph reads ``input`` and returns the model's output layer.

How a layer type becomes ONNX nodes is a converter function,
``convert(graph, node, inputs) -> output value name`` (see :class:`OnnxGraph`).
minidl's own layers' converters are in :mod:`minidl.onnx.layers`; a plugin
gives one for its layer when it registers it::

    register("swish", Swish, onnx=swish_to_onnx)

A layer with no converter is refused, naming the layer and its plugin.
"""
from __future__ import annotations

from pathlib import Path

import numpy

from ..io_utils import atomic_write
from .common import DEFAULT_OPSET, OnnxError, check_opset, float32_array, require_onnx

__all__ = ["export", "to_model_proto", "OnnxGraph", "DYNAMIC_BATCH"]

DYNAMIC_BATCH = "N"  # the name of the batch dimension when its size is chosen at run time
_PROTOBUF_LIMIT = 2**31 - 1  # one serialized ONNX model (minidl writes no external data files)


class OnnxGraph:
    """The ONNX graph being written, as a layer's converter sees it.

    A converter is called once per layer as ``convert(graph, node, inputs)``:
    ``node`` is the layer's :class:`minidl.builder.LayerNode` (``node.module``,
    ``node.name``, per-sample ``node.input_shapes`` and ``node.output_shape``),
    ``inputs`` the names of the ONNX values the layer reads. It adds nodes with
    :meth:`add` and returns the name of the value holding the layer's output
    (one of ``inputs`` for a layer that passes its input through). It may
    raise :class:`minidl.onnx.OnnxError` for settings ONNX cannot express.
    Plugins need not import onnx::

        def swish_to_onnx(graph, node, inputs):
            (x,) = inputs
            scaled = graph.add("Mul", [x, graph.constant(node.module.beta)])
            return graph.add("Mul", [x, graph.add("Sigmoid", [scaled])])

    ``graph.opset`` is the opset being written.
    """

    def __init__(self, opset: int, proto):
        self.opset = opset
        self._onnx = require_onnx()
        self.proto = proto  # the GraphProto that nodes and initializers are written into, in place
        self._taken = {"input"}  # value, initializer and node names
        self._layer = None  # the LayerNode being converted
        self._first = 0  # index in proto.node of its first ONNX node

    def add(self, op_type: str, inputs, **attributes) -> str:
        """Append one ONNX node (default domain) reading the values ``inputs``; returns its output's name."""
        name = self._fresh(f"{self._layer.name}/{op_type}")
        self.proto.node.add().CopyFrom(self._onnx.helper.make_node(op_type, list(inputs), [name], name=name,
                                                                  **attributes))
        return name

    def constant(self, value, dtype="float32") -> str:
        """An initializer holding ``value`` (a number or an array, as ``dtype``); returns its name."""
        return self._initializer(self._fresh(f"{self._layer.name}/constant"), numpy.asarray(value, dtype=dtype))

    def parameter(self, key: str) -> str:
        """The layer's parameter or buffer ``key`` (``weight``, ``running_mean``) as a float32 initializer
        named as in the model's state dict (``conv1.weight``); returns that name."""
        name = self._claim(f"{self._layer.name}.{key}")
        return self._initializer(name, float32_array(self._layer.module.state_dict()[key]))

    # ------------------------------------------------------- used by export
    def begin_layer(self, layer) -> None:
        self._layer, self._first = layer, len(self.proto.node)

    def end_layer(self, out: str, is_output: bool) -> str:
        """Name the layer's last node and its output after the layer; returns the layer's value name."""
        name = self._layer.name
        own = self.proto.node[self._first:]
        passed_through = not any(out in n.output for n in own)
        if passed_through and not is_output:
            return out
        self._claim(name)
        if passed_through:  # the model's output must be a value of its own
            self.proto.node.add().CopyFrom(self._onnx.helper.make_node("Identity", [out], [name], name=name))
            return name
        for n in own:
            for field in (n.input, n.output):
                renamed = [name if v == out else v for v in field]
                del field[:]
                field.extend(renamed)
            if name in n.output:
                n.name = name
        return name

    def _fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._taken:
            name, i = f"{base}_{i}", i + 1
        self._taken.add(name)
        return name

    def _claim(self, name: str) -> str:
        if name in self._taken:
            raise OnnxError(f"{name!r} would name two things in the ONNX graph (layers, weights and values share "
                            "one namespace there)")
        self._taken.add(name)
        return name

    def _initializer(self, name: str, array) -> str:
        tensor = self.proto.initializer.add()  # filled in place: a large weight is copied once
        tensor.name = name
        tensor.data_type = self._onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()  # ONNX is little-endian
        return name


def _converter(node):
    """The ONNX converter of a layer: its plugin's ``onnx=`` registration option, else minidl's own."""
    from ..plugins import registry
    from .layers import CONVERTERS

    entry = registry("layers")[node.type]
    convert = entry.options.get("onnx")
    if convert is None and entry.plugin.builtin:
        convert = CONVERTERS.get(entry.name)
    if convert is None:
        raise OnnxError(f"layer {node.index} {node.name!r}: type {node.type!r} (from {entry.plugin.provider}) has no "
                        "ONNX form; its plugin can give one with register(..., onnx=convert)")
    return convert


def _batch_and_shape(model, input_shape):
    per_sample = tuple(model.input_shape)
    if input_shape is None:
        return DYNAMIC_BATCH, per_sample
    shape = tuple(input_shape)
    batch = shape[0] if shape else None
    if (len(shape) != len(per_sample) + 1 or shape[1:] != per_sample
            or not (batch is None or isinstance(batch, str) and batch.isidentifier()
                    or isinstance(batch, int) and not isinstance(batch, bool) and batch > 0)):
        raise OnnxError(f"input_shape must be (batch,) + the model's per-sample input shape {per_sample}, with batch "
                        f"a positive int, or None or a name for a batch size chosen at run time; got {input_shape!r}")
    return (DYNAMIC_BATCH if batch is None else batch), per_sample


def _model_proto(model, input_shape, opset: int, metadata: dict | None):
    onnx = require_onnx()
    from .. import __version__
    from ..builder import Model

    if not isinstance(model, Model):
        raise TypeError(f"export needs a model built from a spec (mdl.build_model or mdl.load), got "
                        f"{type(model).__name__}")
    check_opset(opset)
    batch, per_sample = _batch_and_shape(model, input_shape)
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.ModelProto(ir_version=onnx.helper.find_min_ir_version_for(opsets), producer_name="minidl",
                            producer_version=__version__, opset_import=opsets,
                            doc_string=f"minidl model {model.name!r} in evaluation mode (no dropout, batch norm "
                                       "with running statistics)")
    onnx.helper.set_model_props(proto, {"minidl.model": model.name, **{str(k): str(v)
                                                                        for k, v in (metadata or {}).items()}})
    graph = OnnxGraph(opset, proto.graph)
    values = {"input": "input"}
    for node in model.nodes:
        convert = _converter(node)
        graph.begin_layer(node)
        try:
            out = convert(graph, node, [values[name] for name in node.inputs])
        except OnnxError as e:
            raise OnnxError(f"layer {node.index} {node.name!r} ({node.type}): {e}") from None
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise OnnxError(f"layer {node.index} {node.name!r} ({node.type}): its ONNX converter failed: "
                            f"{type(e).__name__}: {e}") from e
        values[node.name] = graph.end_layer(out, node.name == model.output)
    output_shape = next(n.output_shape for n in model.nodes if n.name == model.output)
    float32 = onnx.TensorProto.FLOAT
    proto.graph.name = model.name
    proto.graph.input.add().CopyFrom(onnx.helper.make_tensor_value_info("input", float32, (batch,) + per_sample))
    proto.graph.output.add().CopyFrom(onnx.helper.make_tensor_value_info(values[model.output], float32,
                                                                         (batch,) + tuple(output_shape)))
    return proto


def _checked_bytes(proto) -> bytes:
    """The serialized model, once it fits one file and passes ``onnx.checker`` (with shape inference)."""
    onnx = require_onnx()
    data = proto.SerializeToString()
    if len(data) > _PROTOBUF_LIMIT:
        raise OnnxError(f"model {proto.graph.name!r} needs {len(data):,} bytes, over the 2 GiB a single ONNX "
                        "file can hold (minidl writes no external data files)")
    try:
        onnx.checker.check_model(data, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OnnxError(f"model {proto.graph.name!r}: the ONNX graph does not pass onnx.checker: {e}") from None
    return data


def to_model_proto(model, input_shape=None, opset: int = DEFAULT_OPSET, metadata: dict | None = None):
    """The ONNX ``ModelProto`` of ``model`` (see :func:`export`), checked with ``onnx.checker``."""
    proto = _model_proto(model, input_shape, opset, metadata)
    _checked_bytes(proto)
    return proto


def export(model, path, input_shape=None, *, opset: int = DEFAULT_OPSET, metadata: dict | None = None) -> Path:
    """Write ``model`` to ``path`` as an ONNX file that ONNX Runtime (and other ONNX tools) can run.

    Args:
        model: a model from :func:`minidl.build_model` or ``mdl.load(...).model``.
        path: the ``.onnx`` file to write (atomically: a complete file or none).
        input_shape: the input's full shape ``(N, C, H, W)``: ``N`` a positive int for a fixed batch size,
            or None or a name for one chosen at run time; the rest must be the model's per-sample input
            shape. Default: ``(None,) + model.input_shape`` (any batch size, dimension named ``N``).
        opset: the ONNX opset to write (13 or later; default 17).
        metadata: extra ``metadata_props`` (string keys and values) stored in the file.

    The graph computes the model as in evaluation mode (dropout removed, batch
    norm with its running statistics) in float32, whichever mode ``model`` is
    in (it is left as it is). Layers map to ONNX ops as the README's "Exporting
    to ONNX" section lists; a layer with no ONNX form raises
    :class:`minidl.onnx.OnnxError` naming it.

    >>> mdl.onnx.export(mdl.build_model("models/alexnet-mini.yaml"), "alexnet-mini.onnx")
    """
    data = _checked_bytes(_model_proto(model, input_shape, opset, metadata))
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path
