"""mdl.onnx.load: minidl's own exports, PyTorch's exports of torchvision's AlexNet, and what is refused."""
from __future__ import annotations

import re

import numpy as np
import pytest

import minidl as mdl
from minidl.onnx import OnnxError

from .helpers import assert_close, lively, minidl_forward, ort_forward, require_onnx

onnx = require_onnx()
TensorProto, helper, numpy_helper = onnx.TensorProto, onnx.helper, onnx.numpy_helper


def make_file(path, nodes, initializers=(), input_shape=("N", 3, 4, 4), opset=17, inputs=None, output_rank=None):
    """An ONNX file of ``nodes`` reading ``x`` and writing ``y`` (of unknown sizes, by default of the input's
    rank), with NumPy ``initializers`` {name: array}."""
    graph = helper.make_graph(
        nodes, "handmade",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * (output_rank or len(input_shape)))],
        [numpy_helper.from_array(np.asarray(a), name) for name, a in dict(initializers).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# ---------------------------------------------------------------- round trips
def test_minidl_exports_load_back_with_the_same_layers_and_logits(tmp_path):
    model = lively(mdl.build_model("models/alexnet-mini.yaml")).eval()
    loaded = mdl.onnx.load(mdl.onnx.export(model, tmp_path / "m.onnx"))
    assert not loaded.training
    kept = [n for n in model.nodes if n.type != "dropout"]
    assert [(n.name, n.type) for n in loaded.nodes] == [(n.name, n.type) for n in kept]
    assert list(loaded.state_dict()) == list(model.state_dict())
    x = np.random.default_rng(0).standard_normal((2,) + model.input_shape).astype(np.float32)
    assert_close(minidl_forward(loaded, x), minidl_forward(model, x))
    # the spec is plain data: saved and restored like any model's
    mdl.save(tmp_path / "m.safetensors", loaded)
    assert_close(minidl_forward(mdl.load(tmp_path / "m.safetensors").model.eval(), x), minidl_forward(model, x))


def test_every_layer_type_that_exports_loads_back(tmp_path):
    spec = {"name": "zoo", "input": [4, 9, 9], "layers": [
        {"name": "conv", "type": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": 1, "groups": 2},
        {"name": "bn", "type": "batchnorm2d"},
        {"name": "relu", "type": "relu"},
        {"name": "lrn", "type": "lrn", "size": 3, "alpha": 0.5, "convention": "paper"},
        {"name": "max", "type": "maxpool2d", "kernel_size": 3, "stride": 2, "ceil_mode": True},
        {"name": "avg", "type": "avgpool2d", "kernel_size": 2, "stride": 1, "padding": 1, "count_include_pad": False},
        {"name": "side", "type": "avgpool2d", "kernel_size": 3, "stride": 1, "padding": 1, "inputs": "max"},
        {"name": "cat", "type": "concat", "inputs": ["max", "side"]},
        {"name": "gap", "type": "adaptive_avgpool2d", "output_size": 1},
        {"name": "flat", "type": "flatten"},
        {"name": "fc", "type": "linear", "out_features": 5},
        {"name": "res", "type": "add", "inputs": ["fc", "fc"]},
        {"name": "prob", "type": "log_softmax"},
    ]}
    model = lively(mdl.build_model(spec)).eval()
    loaded = mdl.onnx.load(mdl.onnx.export(model, tmp_path / "zoo.onnx"))
    assert [(n.name, n.type, n.inputs) for n in loaded.nodes] == [(n.name, n.type, n.inputs) for n in model.nodes]
    x = np.random.default_rng(1).standard_normal((3, 4, 9, 9)).astype(np.float32)
    assert_close(minidl_forward(loaded, x), minidl_forward(model, x))


# ------------------------------------------------------ PyTorch's exporters
def torchvision_alexnet(torch, num_classes=1000):
    """torchvision.models.AlexNet's structure and module names (torchvision is not installed here)."""
    nn = torch.nn

    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2))
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(p=0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
                nn.Dropout(p=0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
                nn.Linear(4096, num_classes))

        def forward(self, x):
            x = self.avgpool(self.features(x))
            return self.classifier(torch.flatten(x, 1))

    return AlexNet()


@pytest.fixture(scope="module")
def torch_alexnet(torch, tmp_path_factory):
    """(torch AlexNet in eval mode with He-initialized weights, its ONNX file from torch.onnx.export)."""
    torch.manual_seed(0)
    net = torchvision_alexnet(torch).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                module.bias.fill_(0.01)  # equal biases: the exporter stores one and names it again with Identity
    path = tmp_path_factory.mktemp("torch") / "alexnet.onnx"
    # the TorchScript exporter: the dynamo one needs the onnxscript package (test below)
    torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    return net, path


def test_torchvision_alexnet_exported_by_pytorch_loads_with_matching_logits(torch, torch_alexnet):
    net, path = torch_alexnet
    model = mdl.onnx.load(path)
    # layers named after torchvision's modules: the state dict is models/alexnet-torchvision.yaml's
    assert list(model.state_dict()) == list(mdl.build_model("models/alexnet-torchvision.yaml").state_dict())
    assert [n.name for n in model.nodes][:3] == ["features.0", "features.1", "features.2"]
    x = np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert_close(minidl_forward(model, x), expected)
    assert_close(ort_forward(path, x), expected)  # and ONNX Runtime agrees on the file


def test_pytorchs_dynamo_exporter_too(torch, tmp_path):
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs the onnxscript package")
    nn = torch.nn
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                        nn.Conv2d(8, 8, 3, groups=2), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(),
                        nn.Linear(32, 5), nn.LogSoftmax(dim=1)).eval()  # 11 -> 11 -> 6 (ceil) -> 4 -> 2
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 11, 11)
    path = tmp_path / "dynamo.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=True, external_data=False, verbose=False)
    model = mdl.onnx.load(path)
    # (this exporter folds the batch norm into the convolution before it)
    assert {n.type for n in model.nodes} == {"conv2d", "relu", "maxpool2d", "avgpool2d", "flatten", "linear",
                                              "log_softmax"}
    with torch.no_grad():
        assert_close(minidl_forward(model, x.numpy()), net(x).numpy())


def test_pytorchs_lrn_is_refused_naming_the_op_and_node(torch, tmp_path):
    """PyTorch writes LocalResponseNorm as padding and 3-D pooling ops, which minidl has no layers for."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.LocalResponseNorm(3)).eval()
    path = tmp_path / "lrn.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 4, 4),), str(path), dynamo=False)
    with pytest.raises(OnnxError, match=r"lrn\.onnx: node \d+ '/1/\w+' \((\w+)\): op \1 has no minidl layer "
                                        r"\(supported: Add, AveragePool, BatchNormalization"):
        mdl.onnx.load(path)


# --------------------------------------------------------- handmade graphs
def test_onnx_lrn_becomes_lrn_in_pytorchs_convention(torch, tmp_path):
    path = make_file(tmp_path / "lrn.onnx", [helper.make_node("LRN", ["x"], ["y"], size=5, alpha=0.5, beta=0.6,
                                                              bias=1.5)], input_shape=(2, 7, 3, 3))
    model = mdl.onnx.load(path)
    (node,) = model.nodes
    assert node.params == dict(size=5, alpha=0.5, beta=0.6, k=1.5, convention="pytorch")
    x = np.random.default_rng(3).standard_normal((2, 7, 3, 3)).astype(np.float32)
    expected = torch.nn.LocalResponseNorm(5, alpha=0.5, beta=0.6, k=1.5)(torch.from_numpy(x)).numpy()
    assert_close(minidl_forward(model, x), expected)
    assert_close(ort_forward(path, x), expected)


def test_gemm_alpha_beta_and_untransposed_weights(tmp_path):
    rng = np.random.default_rng(4)
    b, c = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal((1, 3)).astype(np.float32)
    path = make_file(tmp_path / "gemm.onnx", [helper.make_node("Flatten", ["x"], ["f"]),
                                              helper.make_node("Gemm", ["f", "B", "C"], ["y"], alpha=0.5, beta=2.0)],
                     {"B": b, "C": c}, input_shape=(4, 6, 1, 1), output_rank=2)
    x = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    assert_close(minidl_forward(mdl.onnx.load(path), x), ort_forward(path, x))


@pytest.mark.parametrize("shape, ok", [([0, -1], True), ([-1, 48], True), ([2, 48], True), ([0, 3, -1], True),
                                       ([0, 3, 16], True), ([0, 4, -1], False), ([-1, 24], False),
                                       ([0, 48, 1], False)])
def test_reshapes_that_flatten_become_flatten(tmp_path, shape, ok):
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    path = make_file(tmp_path / "reshape.onnx", nodes, {"shape": np.array(shape, np.int64)}, input_shape=(2, 3, 4, 4),
                     output_rank=len(shape))
    if not ok:
        with pytest.raises(OnnxError, match=rf"node 0 '' \(Reshape\): shape {re.escape(str(shape))} on inputs of "
                                            r"per-sample shape \(3, 4, 4\) is not a flatten"):
            mdl.onnx.load(path)
        return
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 4)).astype(np.float32)
    assert_close(minidl_forward(mdl.onnx.load(path), x), ort_forward(path, x))


@pytest.mark.parametrize("constant", [
    helper.make_node("Constant", [], ["shape"], name="c", value=numpy_helper.from_array(np.array([0, -1]), "v")),
    helper.make_node("Constant", [], ["shape"], name="c", value_ints=[0, -1]),
    helper.make_node("Constant", [], ["shape"], name="c", value_string="0, -1"),
])
def test_constant_nodes(tmp_path, constant):
    nodes = [constant, helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    path = make_file(tmp_path / "constant.onnx", nodes, output_rank=2)
    if constant.attribute[0].name == "value_string":
        with pytest.raises(OnnxError, match=r"node 0 'c' \(Constant\): attribute value_string is not supported"):
            mdl.onnx.load(path)
        return
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 4)).astype(np.float32)
    model = mdl.onnx.load(path)
    assert [n.type for n in model.nodes] == ["flatten", "relu"]
    assert_close(minidl_forward(model, x), ort_forward(path, x))


def test_loads_onto_a_device(device, tmp_path):
    model = lively(mdl.build_model("models/alexnet-mini.yaml")).eval()
    loaded = mdl.onnx.load(mdl.onnx.export(model, tmp_path / "m.onnx"), device=device)
    assert all(p.device == mdl.Device(device) for p in loaded.parameters())
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    with mdl.no_grad():
        assert_close(loaded(mdl.tensor(x, device=device)).numpy(), minidl_forward(model, x))


def test_softmax_before_opset_13_over_one_axis_only(tmp_path):
    flat = make_file(tmp_path / "flat.onnx", [helper.make_node("Flatten", ["x"], ["f"]),
                                              helper.make_node("Softmax", ["f"], ["y"])], opset=11, output_rank=2)
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 4)).astype(np.float32)
    assert_close(minidl_forward(mdl.onnx.load(flat), x), ort_forward(flat, x), tol=1e-6)
    spatial = make_file(tmp_path / "spatial.onnx", [helper.make_node("Softmax", ["x"], ["y"], axis=1)], opset=11)
    with pytest.raises(OnnxError, match=r"axis 1 of a rank-4 input is over several axes \(opset 11"):
        mdl.onnx.load(spatial)


def test_open_sample_shape_needs_sample_shape(tmp_path):
    path = make_file(tmp_path / "open.onnx", [helper.make_node("Relu", ["x"], ["y"])], input_shape=("N", 3, "H", "W"))
    with pytest.raises(OnnxError, match=r"no fixed per-sample shape \(\['\?', 3, '\?', '\?'\]\); pass sample_shape"):
        mdl.onnx.load(path)
    assert mdl.onnx.load(path, sample_shape=(3, 5, 6)).input_shape == (3, 5, 6)
    with pytest.raises(OnnxError, match=r"sample_shape \(4, 5, 6\) does not fit"):
        mdl.onnx.load(path, sample_shape=(4, 5, 6))


# --------------------------------------------------------------- refusals
W = np.zeros((4, 3, 3, 3), np.float32)


@pytest.mark.parametrize("nodes, initializers, message", [
    ([helper.make_node("Sigmoid", ["x"], ["y"], name="gate")], {},
     r"node 0 'gate' \(Sigmoid\): op Sigmoid has no minidl layer \(supported: .*Conv"),
    ([helper.make_node("Conv", ["x", "W"], ["y"], name="c", pads=[1, 1, 0, 0])], {"W": W},
     r"node 0 'c' \(Conv\): pads \[1, 1, 0, 0\] are not the same at both ends"),
    ([helper.make_node("Conv", ["x", "W"], ["y"], name="c", auto_pad="SAME_UPPER")], {"W": W},
     r"auto_pad SAME_UPPER is not supported"),
    ([helper.make_node("Add", ["x", "bias"], ["y"], name="plus")], {"bias": np.ones(3, np.float32)},
     r"node 0 'plus' \(Add\): reads 'bias', a stored tensor, where minidl's layer reads a layer output"),
    ([helper.make_node("Conv", ["x", "x"], ["y"], name="c")], {},
     r"node 0 'c' \(Conv\): input 1 'x' is computed in the graph; minidl needs it stored"),
    ([helper.make_node("LRN", ["x"], ["y"], name="n", size=4)], {},
     r"node 0 'n' \(LRN\): an even size \(4\) sums a window one channel off"),
    ([helper.make_node("MaxPool", ["x"], ["y", "i"], name="p", kernel_shape=[2, 2])], {},
     r"node 0 'p' \(MaxPool\): its extra outputs \['i'\] are not supported"),
    ([helper.make_node("Flatten", ["x"], ["y"], name="f", axis=2)], {},
     r"node 0 'f' \(Flatten\): axis 2 would merge the batch axis"),
])
def test_refused_naming_the_node(tmp_path, nodes, initializers, message):
    path = make_file(tmp_path / "bad.onnx", nodes, initializers)
    with pytest.raises(OnnxError, match=message):
        mdl.onnx.load(path)


def test_two_inputs_are_refused(tmp_path):
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in ("a", "b")]
    path = make_file(tmp_path / "two.onnx", [helper.make_node("Add", ["a", "b"], ["y"])], inputs=inputs)
    with pytest.raises(OnnxError, match=r"one input and one output; this graph has inputs \['a', 'b'\]"):
        mdl.onnx.load(path)


def test_external_data_is_refused(tmp_path):
    model = onnx.load(str(make_file(tmp_path / "ext.onnx", [helper.make_node("Conv", ["x", "W"], ["y"])],
                                    {"W": np.ones((4, 3, 3, 3), np.float32)})))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    with pytest.raises(OnnxError, match=r"initializer 'W' keeps its data in the external file 'ext.data'"):
        mdl.onnx.load(tmp_path / "ext.onnx")


def raw_tensor(name, dims, data):
    """A float32 TensorProto declaring ``dims`` and holding the bytes ``data`` (onnx.helper would refuse)."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, raw_data=data)
    tensor.dims.extend(dims)
    return tensor


def test_initializer_sizes_are_checked_before_any_array_is_made(tmp_path):
    huge = raw_tensor("W", [2**20, 2**20, 1, 1], b"\0" * 16)  # declares 4 TiB
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2**20, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)], [huge])
    path = tmp_path / "huge.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(OnnxError, match=r"initializer 'W' declares shape \[1048576, 1048576, 1, 1\] of float32, "
                                        r"4,398,046,511,104 bytes: over the limit of 1,073,741,824"):
        mdl.onnx.load(path)
    # a smaller limit applies to ordinary files too
    small = make_file(tmp_path / "small.onnx", [helper.make_node("Conv", ["x", "W"], ["y"])], {"W": W})
    with pytest.raises(OnnxError, match=r"initializer 'W' .* 432 bytes: over the limit of 400 \(max_tensor_bytes\)"):
        mdl.onnx.load(small, max_tensor_bytes=400)
    with pytest.raises(OnnxError, match=r"over the limit of 100 \(max_file_bytes\)"):
        mdl.onnx.load(small, max_file_bytes=100)


@pytest.mark.parametrize("size, message", [
    (16, r"not a valid ONNX model: .*raw_data size \(16 bytes\) is too small"),  # onnx.checker's own check
    (436, r"input 1 'W' does not hold the data its shape \[4, 3, 3, 3\] declares"),
])
def test_data_that_does_not_match_its_shape_is_refused(tmp_path, size, message):
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
                              [raw_tensor("W", [4, 3, 3, 3], b"\0" * size)])
    path = tmp_path / "mismatch.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(OnnxError, match=message):
        mdl.onnx.load(path)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\x00 definitely not a protobuf")
    with pytest.raises(OnnxError, match=r"junk.onnx: not a (readable|valid) ONNX"):
        mdl.onnx.load(path)
