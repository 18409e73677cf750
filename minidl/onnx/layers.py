"""ONNX converters of minidl's own layers (plugins/minidl_layers), keyed by registered type name.

Each is ``convert(graph, node, inputs) -> output value name`` (see
:class:`minidl.onnx.exporter.OnnxGraph`); shapes in ``node`` are per sample.
"""
from __future__ import annotations

import numpy

from ..functions.normalization import _channel_band
from ..functions.pooling import _adaptive_matrix
from ..functions.window import conv_output_size
from .common import OnnxError

__all__ = ["CONVERTERS"]


def _weights(graph, module) -> list:
    return [graph.parameter("weight")] + ([graph.parameter("bias")] if module.use_bias else [])


def _activated(graph, module, output):
    """A conv2d or linear layer's ``activation`` (None or "relu") as its own ONNX node."""
    activation = getattr(module, "activation", None)
    if activation is None:
        return output
    if activation == "relu":
        return graph.add("Relu", [output])
    raise OnnxError(f"no ONNX form for activation {activation!r}")


def conv2d(graph, node, inputs):
    m, w = node.module, node.module.window
    return _activated(graph, m, graph.add(
        "Conv", inputs + _weights(graph, m), kernel_shape=[w.kh, w.kw], strides=[w.sy, w.sx],
        pads=[w.ph, w.pw, w.ph, w.pw], dilations=[w.dy, w.dx], group=m.groups))


def linear(graph, node, inputs):
    gemm = graph.add("Gemm", inputs + _weights(graph, node.module), transB=1)  # x W^T + b, W (out, in)
    return _activated(graph, node.module, gemm)


def relu(graph, node, inputs):
    return graph.add("Relu", inputs)


def dropout(graph, node, inputs):
    return inputs[0]  # identity in evaluation


def flatten(graph, node, inputs):
    start = node.module.start_dim
    if start == 1:
        return graph.add("Flatten", inputs, axis=1)
    kept = list(node.input_shapes[0][: start - 1])  # (N, kept..., rest): Reshape copies N (0) and infers rest (-1)
    return graph.add("Reshape", inputs + [graph.constant([0] + kept + [-1], dtype="int64")])


def softmax(graph, node, inputs):
    return graph.add("Softmax", inputs, axis=node.module.axis)


def log_softmax(graph, node, inputs):
    return graph.add("LogSoftmax", inputs, axis=node.module.axis)


def concat(graph, node, inputs):
    return graph.add("Concat", inputs, axis=node.module.axis)


def add(graph, node, inputs):
    if len(inputs) == 1:
        return inputs[0]
    return graph.add("Add" if len(inputs) == 2 else "Sum", inputs)


def batchnorm2d(graph, node, inputs):
    m = node.module
    if m.affine:
        scale, shift = graph.parameter("weight"), graph.parameter("bias")
    else:
        scale, shift = graph.constant(numpy.ones(m.num_features)), graph.constant(numpy.zeros(m.num_features))
    return graph.add("BatchNormalization", inputs + [scale, shift, graph.parameter("running_mean"),
                                                     graph.parameter("running_var")], epsilon=m.eps)


def lrn(graph, node, inputs):
    """ONNX's LRN divides alpha by size (PyTorch's and Caffe's convention); the paper's alpha is multiplied back."""
    m = node.module
    scale = m.alpha if m.convention == "paper" else m.alpha / m.size  # of the sum of squares
    if m.size % 2:
        return graph.add("LRN", inputs, size=m.size, alpha=scale * m.size, beta=m.beta, bias=m.k)
    # ONNX's window for an even size is shifted one channel from minidl's (and PyTorch's): sum the squares
    # with a banded 1x1 convolution instead
    if len(node.input_shapes[0]) != 3:
        raise OnnxError(f"an even LRN size ({m.size}) is written with a 1x1 convolution, which needs (C, H, W) "
                        f"inputs, not per-sample shape {tuple(node.input_shapes[0])}")
    (x,) = inputs
    channels = node.input_shapes[0][0]
    band = _channel_band(channels, m.size, numpy.float32, numpy) * numpy.float32(scale)
    sums = graph.add("Conv", [graph.add("Mul", [x, x]), graph.constant(band[:, :, None, None])], kernel_shape=[1, 1])
    denominator = graph.add("Pow", [graph.add("Add", [sums, graph.constant(m.k)]), graph.constant(m.beta)])
    return graph.add("Div", [x, denominator])


def _pool(graph, node, inputs, op_type, **attributes):
    m, w = node.module, node.module.window
    attributes.update(kernel_shape=[w.kh, w.kw], strides=[w.sy, w.sx], pads=[w.ph, w.pw, w.ph, w.pw])
    if (w.dy, w.dx) != (1, 1):
        attributes["dilations"] = [w.dy, w.dx]
    if m.ceil_mode:
        _, h, width = node.input_shapes[0]
        out = tuple(node.output_shape[1:])
        geometry = ((h, w.kh, w.sy, w.ph, w.dy), (width, w.kw, w.sx, w.pw, w.dx))
        if out != tuple(conv_output_size(*axis) for axis in geometry):  # rounding up adds a window
            # ONNX drops a last window that starts in the end padding, as minidl does, but onnx's shape
            # inference before opset 22 does not: then the declared shapes would be wrong
            span = [size + 2 * pad - dilation * (kernel - 1) - 1 for size, kernel, _, pad, dilation in geometry]
            unclipped = tuple(-(-s // axis[2]) + 1 for s, axis in zip(span, geometry))
            if graph.opset < 22 and unclipped != out:
                raise OnnxError(f"ceil_mode on a {h}x{width} input drops a window that starts in the padding; "
                                "ONNX describes this shape correctly from opset 22: export with opset 22 or later")
            attributes["ceil_mode"] = 1
    return graph.add(op_type, inputs, **attributes)


def maxpool2d(graph, node, inputs):
    return _pool(graph, node, inputs, "MaxPool")


def avgpool2d(graph, node, inputs):
    return _pool(graph, node, inputs, "AveragePool", count_include_pad=int(node.module.args["count_include_pad"]))


def adaptive_avgpool2d(graph, node, inputs):
    """GlobalAveragePool for 1x1, AveragePool when the output size divides the input's, else two MatMuls."""
    _, h, w = node.input_shapes[0]
    oh, ow = node.module.output_size
    if (oh, ow) == (1, 1):
        return graph.add("GlobalAveragePool", inputs)
    if h % oh == 0 and w % ow == 0:
        return graph.add("AveragePool", inputs, kernel_shape=[h // oh, w // ow], strides=[h // oh, w // ow])
    rows = graph.constant(_adaptive_matrix(numpy, h, oh, numpy.float32))  # (oh, h)
    columns = graph.constant(_adaptive_matrix(numpy, w, ow, numpy.float32).T)  # (w, ow)
    return graph.add("MatMul", [graph.add("MatMul", [rows, inputs[0]]), columns])  # P_h x P_w^T, as minidl does


CONVERTERS = {
    "conv2d": conv2d, "linear": linear, "relu": relu, "dropout": dropout, "flatten": flatten, "softmax": softmax,
    "log_softmax": log_softmax, "concat": concat, "add": add, "batchnorm2d": batchnorm2d, "lrn": lrn,
    "maxpool2d": maxpool2d, "avgpool2d": avgpool2d, "adaptive_avgpool2d": adaptive_avgpool2d,
}
