"""Each built-in layer's ONNX form against minidl's own result, in ONNX Runtime, over its settings."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
from minidl.onnx import OnnxError

from .helpers import assert_close, lively, minidl_forward, ort_forward, require_onnx

helper = require_onnx().helper


def check(layers, sample_shape, opset=17, batch=2, seed=0):
    """Export a model of ``layers`` and compare ONNX Runtime's output with minidl's; returns the ModelProto."""
    model = lively(mdl.build_model({"name": "m", "input": list(sample_shape), "layers": layers}), seed)
    model.eval()
    for node in model.nodes:  # give batch norms running statistics of their own
        if node.type == "batchnorm2d":
            rng = np.random.default_rng(seed)
            c = node.output_shape[0]
            node.module.running_mean[...] = rng.standard_normal(c)
            node.module.running_var[...] = rng.uniform(0.5, 2.0, c)
    proto = mdl.onnx.to_model_proto(model, opset=opset)
    x = np.random.default_rng(seed + 1).standard_normal((batch,) + tuple(sample_shape)).astype(np.float32)
    assert_close(ort_forward(proto.SerializeToString(), x), minidl_forward(model, x))
    return proto


@pytest.mark.parametrize("params", [
    dict(out_channels=6, kernel_size=3),
    dict(out_channels=6, kernel_size=3, stride=2, padding=1, groups=2),
    dict(out_channels=4, kernel_size=(3, 2), stride=(1, 2), padding=(2, 0), dilation=(2, 1), bias=False),
    dict(out_channels=8, kernel_size=5, padding=2, groups=4),
])
def test_conv2d(params):
    proto = check([{"type": "conv2d", **params}], (4, 9, 10))
    assert [n.op_type for n in proto.graph.node] == ["Conv"]


@pytest.mark.parametrize("bias", [True, False])
def test_linear_is_gemm_with_transposed_weight(bias):
    proto = check([{"type": "linear", "out_features": 7, "bias": bias}], (5,))
    (gemm,) = proto.graph.node
    assert gemm.op_type == "Gemm" and helper.get_attribute_value(gemm.attribute[0]) == 1  # transB
    assert len(gemm.input) == (3 if bias else 2)


@pytest.mark.parametrize("layer, ops", [
    ({"type": "conv2d", "out_channels": 6, "kernel_size": 3, "groups": 2}, ["Conv", "Relu"]),
    ({"type": "linear", "out_features": 7}, ["Flatten", "Gemm", "Relu"]),
])
def test_a_layers_activation_is_a_relu_node(layer, ops):
    first = [{"type": "flatten"}] if layer["type"] == "linear" else []
    proto = check(first + [{**layer, "activation": "relu"}], (4, 3, 3))
    assert [n.op_type for n in proto.graph.node] == ops


# (input H, W), kernel, stride, padding, dilation: including windows that ceil_mode adds and ones it drops
POOLS = [
    ((7, 8), 3, 2, 0, 1),
    ((8, 8), 3, 2, 1, 1),
    ((6, 7), 2, 2, 1, 1),
    ((9, 6), 3, 3, 1, 1),
    ((6, 5), (3, 2), 2, 1, 1),
    ((10, 9), 2, 2, 0, 2),
]


@pytest.mark.parametrize("geometry", POOLS)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("opset", [17, 22])
def test_max_pool(geometry, ceil_mode, opset):
    hw, kernel, stride, padding, dilation = geometry
    layer = dict(type="maxpool2d", kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
                 ceil_mode=ceil_mode)
    _pool_case([layer], hw, opset)


@pytest.mark.parametrize("geometry", [g for g in POOLS if g[4] == 1])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("opset", [17, 22])
def test_avg_pool(geometry, ceil_mode, count_include_pad, opset):
    hw, kernel, stride, padding, _ = geometry
    layer = dict(type="avgpool2d", kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                 count_include_pad=count_include_pad)
    _pool_case([layer], hw, opset)


def _pool_case(layers, hw, opset):
    if hw == (6, 5) and layers[0]["ceil_mode"] and opset < 22:
        # rounding up adds a window on H and drops one that starts in the padding on W: ONNX's shape
        # inference only gets that right from opset 22, so the export is refused below it
        with pytest.raises(OnnxError, match="export with opset 22 or later"):
            check(layers, (3,) + hw, opset)
        return
    proto = check(layers, (3,) + hw, opset)
    assert [n.op_type for n in proto.graph.node] in (["MaxPool"], ["AveragePool"])


@pytest.mark.parametrize("convention", ["paper", "pytorch"])
@pytest.mark.parametrize("size", [1, 3, 4, 5])
def test_lrn_in_either_convention(convention, size):
    # alpha large enough that dividing it by size or not changes the result far beyond the tolerance
    layer = dict(type="lrn", size=size, alpha=0.5, beta=0.75, k=2.0, convention=convention)
    proto = check([layer], (7, 3, 4))
    ops = [n.op_type for n in proto.graph.node]
    if size % 2:
        (lrn,) = proto.graph.node
        attributes = {a.name: helper.get_attribute_value(a) for a in lrn.attribute}
        # ONNX's LRN divides alpha by size, as PyTorch's and Caffe's do; the paper's does not
        assert attributes["alpha"] == pytest.approx(0.5 * size if convention == "paper" else 0.5)
        assert attributes["size"] == size and attributes["bias"] == 2.0 and attributes["beta"] == 0.75
    else:  # ONNX's window for an even size is one channel off minidl's: a banded 1x1 convolution instead
        assert ops == ["Mul", "Conv", "Add", "Pow", "Div"]


def test_lrn_conventions_differ():
    """The parity above could not pass with the conventions swapped: they give different results."""
    x = mdl.tensor(np.random.default_rng(0).standard_normal((2, 7, 3, 4)).astype(np.float32))
    paper = mdl.F.local_response_norm(x, 5, 0.5, 0.75, 2.0, "paper").numpy()
    pytorch = mdl.F.local_response_norm(x, 5, 0.5, 0.75, 2.0, "pytorch").numpy()
    assert np.abs(paper - pytorch).max() > 0.05


@pytest.mark.parametrize("output_size, op_types", [
    (1, ["GlobalAveragePool"]),
    (3, ["AveragePool"]),  # 6x9 -> 3x3: windows of 2x3
    ((4, 5), ["MatMul", "MatMul"]),  # uneven bins: averaging matrices on both sides, as minidl computes it
])
def test_adaptive_avg_pool(output_size, op_types):
    proto = check([{"type": "adaptive_avgpool2d", "output_size": output_size}], (3, 6, 9))
    assert [n.op_type for n in proto.graph.node] == op_types


@pytest.mark.parametrize("start_dim, op_type", [(1, "Flatten"), (2, "Reshape"), (3, "Reshape")])
def test_flatten(start_dim, op_type):
    proto = check([{"type": "flatten", "start_dim": start_dim}], (3, 4, 5))
    assert [n.op_type for n in proto.graph.node] == [op_type]


@pytest.mark.parametrize("type_name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [1, -1, 2])
def test_softmax(type_name, axis):
    check([{"type": "conv2d", "out_channels": 5, "kernel_size": 1}, {"type": type_name, "axis": axis}], (3, 2, 4))


@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_uses_running_statistics(affine):
    proto = check([{"type": "batchnorm2d", "affine": affine, "eps": 1e-3}], (4, 3, 3))
    (bn,) = proto.graph.node
    assert bn.op_type == "BatchNormalization" and bn.input[3:] == ["batchnorm2d0.running_mean",
                                                                     "batchnorm2d0.running_var"]
