"""ONNX nodes -> minidl layers, one handler per op type (used by :mod:`minidl.onnx.importer`).

A handler ``handle(reader, node, attributes)`` returns a :class:`Layer` (a
layer spec, the ONNX values it reads, its weights) or, for ops that pass a
value through (Identity, Dropout), the name of that value. It raises
:class:`OnnxError` for settings minidl's layer cannot reproduce exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy

from .common import OnnxError

__all__ = ["Layer", "HANDLERS"]


@dataclass
class Layer:
    type: str
    params: dict
    inputs: list  # ONNX value names
    weights: dict = field(default_factory=dict)  # parameter or buffer name -> float32 array
    check: object = None  # check(layer_node) -> problem or None, once the model is built and shapes are known


def _pair(values, what):
    values = [int(v) for v in values]
    if len(values) != 2:
        raise OnnxError(f"{what} {values} is not 2-D: minidl's layers are 2-D")
    return values[0] if values[0] == values[1] else values


def _padding(a):
    """(pad_h, pad_w) from ONNX's pads [top, left, bottom, right]; asymmetric padding is refused."""
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad == "VALID":
        return 0
    if auto_pad != "NOTSET":
        raise OnnxError(f"auto_pad {auto_pad} is not supported (only explicit pads)")
    pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
    if len(pads) != 4 or pads[:2] != pads[2:]:
        raise OnnxError(f"pads {pads} are not the same at both ends of each axis (minidl pads symmetrically)")
    return _pair(pads[:2], "pads")


def _float(value) -> float:
    """An ONNX float attribute (float32) as the shortest decimal that gives it back: 0.75, not 0.7500000xx."""
    return float(str(numpy.float32(value)))


def _one_output(node):
    if any(node.output[1:]):
        raise OnnxError(f"its extra outputs {list(node.output[1:])} are not supported")


def conv(reader, node, a):
    w = reader.array(node, 1)
    if w.ndim != 4:
        raise OnnxError(f"weight of shape {w.shape} is not a 2-D convolution's (out, in/groups, kh, kw)")
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    if kernel != list(w.shape[2:]):
        raise OnnxError(f"kernel_shape {kernel} does not match the weight's shape {w.shape}")
    b = reader.array(node, 2) if len(node.input) > 2 and node.input[2] else None
    params = dict(out_channels=w.shape[0], kernel_size=_pair(kernel, "kernel_shape"),
                  stride=_pair(a.get("strides", [1, 1]), "strides"), padding=_padding(a),
                  dilation=_pair(a.get("dilations", [1, 1]), "dilations"), groups=int(a.get("group", 1)),
                  bias=b is not None)
    return Layer("conv2d", params, [node.input[0]], {"weight": w, **({"bias": b} if b is not None else {})})


def gemm(reader, node, a):
    """y = alpha A B' + beta C with B' = B^T when transB: a linear layer with W = alpha B', b = beta C."""
    if a.get("transA", 0):
        raise OnnxError("transA=1 (a transposed input) is not supported")
    w = reader.array(node, 1)
    if w.ndim != 2:
        raise OnnxError(f"B of shape {w.shape} is not a matrix")
    w = numpy.ascontiguousarray(w if a.get("transB", 0) else w.T)
    if a.get("alpha", 1.0) != 1.0:
        w = w * numpy.float32(a["alpha"])
    weights = {"weight": w}
    if len(node.input) > 2 and node.input[2]:
        c = reader.array(node, 2)
        if c.size not in (1, w.shape[0]) or c.ndim > 2 or c.ndim == 2 and c.shape[0] != 1:
            raise OnnxError(f"C of shape {c.shape} is not a bias for {w.shape[0]} outputs")
        weights["bias"] = numpy.broadcast_to(c.reshape(-1) * numpy.float32(a.get("beta", 1.0)), (w.shape[0],)).copy()
    return Layer("linear", dict(out_features=w.shape[0], bias="bias" in weights), [node.input[0]], weights)


def relu(reader, node, a):
    return Layer("relu", {}, [node.input[0]])


def lrn(reader, node, a):
    size = int(a["size"])
    if size % 2 == 0:
        raise OnnxError(f"an even size ({size}) sums a window one channel off minidl's lrn (and PyTorch's)")
    params = dict(size=size, alpha=_float(a.get("alpha", 1e-4)), beta=_float(a.get("beta", 0.75)),
                  k=_float(a.get("bias", 1.0)), convention="pytorch")  # ONNX's alpha is divided by size
    return Layer("lrn", params, [node.input[0]])


def _pool(node, a, type_name, **params):
    _one_output(node)
    kernel = a["kernel_shape"]
    params.update(kernel_size=_pair(kernel, "kernel_shape"), stride=_pair(a.get("strides", [1] * len(kernel)),
                  "strides"), padding=_padding(a), ceil_mode=bool(a.get("ceil_mode", 0)))
    return Layer(type_name, params, [node.input[0]])


def max_pool(reader, node, a):
    if a.get("storage_order", 0):
        raise OnnxError("storage_order=1 is not supported")
    return _pool(node, a, "maxpool2d", dilation=_pair(a.get("dilations", [1, 1]), "dilations"))


def average_pool(reader, node, a):
    if any(d != 1 for d in a.get("dilations", [])):
        raise OnnxError(f"dilations {list(a['dilations'])}: minidl's average pooling has none")
    return _pool(node, a, "avgpool2d", count_include_pad=bool(a.get("count_include_pad", 0)))


def global_average_pool(reader, node, a):
    return Layer("adaptive_avgpool2d", dict(output_size=1), [node.input[0]])


def flatten(reader, node, a):
    if a.get("axis", 1) != 1:
        raise OnnxError(f"axis {a['axis']} would merge the batch axis (only axis 1 keeps one row per sample)")
    return Layer("flatten", {}, [node.input[0]])


def reshape(reader, node, a):
    """A Reshape that flattens trailing axes, as exporters write flatten: minidl's flatten."""
    target = [int(s) for s in reader.array(node, 1, dtype=None).reshape(-1)]
    if len(target) < 2 or a.get("allowzero", 0) and 0 in target:
        raise OnnxError(f"shape {target} is not a flatten that keeps the batch axis")

    def check(layer):
        sample = tuple(layer.input_shapes[0])
        full = ("N",) + sample
        expected = ("N",) + tuple(layer.output_shape)
        ok = len(target) <= len(full) and all(
            s == -1 or (full[k] == expected[k] if s == 0 else k == 0 or s == expected[k]) for k, s in enumerate(target))
        if not ok:
            return f"shape {target} on inputs of per-sample shape {sample} is not a flatten that keeps the batch axis"
        return None

    return Layer("flatten", dict(start_dim=len(target) - 1), [node.input[0]], check=check)


def _softmax(type_name):
    def handle(reader, node, a):
        if reader.opset >= 13:
            return Layer(type_name, dict(axis=int(a.get("axis", -1))), [node.input[0]])
        axis = int(a.get("axis", 1))  # before opset 13: over all axes from `axis` on, as one

        def check(layer):
            rank = len(layer.input_shapes[0]) + 1
            if axis % rank != rank - 1:
                return f"axis {axis} of a rank-{rank} input is over several axes (opset {reader.opset} semantics)"
            return None

        return Layer(type_name, dict(axis=axis), [node.input[0]], check=check)

    return handle


def batch_norm(reader, node, a):
    _one_output(node)
    if a.get("training_mode", 0):
        raise OnnxError("training_mode=1 is not supported (inference graphs only)")
    names = ("weight", "bias", "running_mean", "running_var")
    weights = {name: reader.array(node, i) for i, name in enumerate(names, 1)}
    if len({w.shape for w in weights.values()}) != 1 or weights["weight"].ndim != 1:
        raise OnnxError(f"scale, B, mean and var have shapes {[w.shape for w in weights.values()]}, not one (C,)")
    return Layer("batchnorm2d", dict(eps=_float(a.get("epsilon", 1e-5))), [node.input[0]], weights)


def concat(reader, node, a):
    return Layer("concat", dict(axis=int(a["axis"])), list(node.input))


def add(reader, node, a):
    return Layer("add", {}, list(node.input))


def pass_through(reader, node, a):
    _one_output(node)  # Dropout's mask
    return node.input[0]


HANDLERS = {
    "Conv": conv, "Gemm": gemm, "Relu": relu, "LRN": lrn, "MaxPool": max_pool, "AveragePool": average_pool,
    "GlobalAveragePool": global_average_pool, "Flatten": flatten, "Reshape": reshape, "BatchNormalization": batch_norm,
    "Softmax": _softmax("softmax"), "LogSoftmax": _softmax("log_softmax"), "Concat": concat, "Add": add, "Sum": add,
    "Identity": pass_through, "Dropout": pass_through,
}
