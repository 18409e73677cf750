"""mdl.onnx.export: whole models in ONNX Runtime, names, batch sizes, plugins' layers, refusals."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import minidl as mdl
from minidl.onnx import OnnxError

from ..plugins.conftest import install_plugin
from .helpers import assert_close, lively, minidl_forward, ort_forward, require_onnx

onnx = require_onnx()


@pytest.fixture(scope="module", params=["alexnet-mini", "alexnet", "alexnet-torchvision"])
def exported(request, tmp_path_factory):
    """(model, path of its ONNX file) for each model file, built and exported once per module."""
    model = lively(mdl.build_model(f"models/{request.param}.yaml"))
    path = mdl.onnx.export(model, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    return model, path


def test_models_run_in_onnx_runtime_with_minidls_logits(exported):
    model, path = exported
    x = np.random.default_rng(1).standard_normal((2,) + model.input_shape).astype(np.float32)
    assert_close(ort_forward(path, x), minidl_forward(model.eval(), x))


def test_names_follow_the_model_file(exported):
    model, path = exported
    graph = onnx.load(str(path)).graph
    layers = [n.name for n in model.nodes if n.type != "dropout"]
    assert [n.name for n in graph.node] == layers  # one node per layer here, named after it
    assert [t.name for t in graph.initializer] == list(model.state_dict())
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == [model.output]
    assert [n.output[0] for n in graph.node] == layers  # each value is named after the layer computing it
    ops = {n.name: n.op_type for n in graph.node}
    expected = {"conv2d": "Conv", "linear": "Gemm", "relu": "Relu", "maxpool2d": "MaxPool", "flatten": "Flatten",
                "lrn": "LRN", "adaptive_avgpool2d": "AveragePool"}
    assert all(ops[n.name] == expected[n.type] for n in model.nodes if n.type != "dropout")


def test_batch_dynamic_by_default_or_fixed(tmp_path):
    model = lively(mdl.build_model("models/alexnet-mini.yaml"))
    dynamic = mdl.onnx.export(model, tmp_path / "dynamic.onnx")
    dims = onnx.load(str(dynamic)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    for n in (1, 5):
        x = np.random.default_rng(n).standard_normal((n, 1, 28, 28)).astype(np.float32)
        assert_close(ort_forward(dynamic, x), minidl_forward(model.eval(), x))
    fixed = mdl.onnx.export(model, tmp_path / "fixed.onnx", (3, 1, 28, 28))
    dims = onnx.load(str(fixed)).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, 10]
    named = mdl.onnx.export(model, tmp_path / "named.onnx", ("batch", 1, 28, 28), opset=21)
    proto = onnx.load(str(named))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert proto.opset_import[0].version == 21


@pytest.mark.parametrize("shape", [(1, 28, 28), (2, 1, 28, 27), (0, 1, 28, 28), (True, 1, 28, 28), (2.0, 1, 28, 28)])
def test_input_shape_must_be_a_batch_of_the_models_samples(shape, tmp_path):
    model = mdl.build_model("models/alexnet-mini.yaml")
    with pytest.raises(OnnxError, match=r"per-sample input shape \(1, 28, 28\)"):
        mdl.onnx.export(model, tmp_path / "m.onnx", shape)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("opset", [12, 10**6, "17"])
def test_opset_must_be_known(opset, tmp_path):
    with pytest.raises(OnnxError, match="opset must be an integer from 13"):
        mdl.onnx.export(mdl.build_model("models/alexnet-mini.yaml"), tmp_path / "m.onnx", opset=opset)


def test_exports_evaluation_mode_and_leaves_the_model_as_it_was(tmp_path):
    model = lively(mdl.build_model("models/alexnet-mini.yaml")).train()
    path = mdl.onnx.export(model, tmp_path / "m.onnx")
    assert model.training  # not switched to eval
    x = np.random.default_rng(2).standard_normal((4, 1, 28, 28)).astype(np.float32)
    assert_close(ort_forward(path, x), minidl_forward(model.eval(), x))  # dropout gone


@pytest.fixture(scope="module")
def mini_reference():
    """alexnet-mini with lively weights and its logits on a fixed batch."""
    x = np.random.default_rng(5).standard_normal((4, 1, 28, 28)).astype(np.float32)
    model = lively(mdl.build_model("models/alexnet-mini.yaml")).eval()
    return model, x, minidl_forward(model, x)


def test_a_model_on_any_device_exports_the_same(device, mini_reference, tmp_path):
    reference, x, expected = mini_reference
    model = mdl.build_model("models/alexnet-mini.yaml", device=device)
    model.load_state_dict(reference.state_dict())
    assert_close(ort_forward(mdl.onnx.export(model, tmp_path / "m.onnx"), x), expected)


@pytest.mark.parametrize("strategy", ["columns", "hybrid", "data_parallel"])
def test_a_model_split_over_devices_exports_the_same(strategy, mini_reference, tmp_path):
    reference, x, expected = mini_reference
    model = mdl.build_model("models/alexnet-mini.yaml", devices="cpu:0,cpu:1", strategy=strategy)
    model.load_state_dict(reference.state_dict())
    assert_close(ort_forward(mdl.onnx.export(model, tmp_path / "m.onnx"), x), expected)


def test_graph_models_concat_and_add(tmp_path):
    spec = {"name": "branches", "input": [3, 8, 8], "layers": [
        {"name": "a", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"name": "b", "type": "conv2d", "out_channels": 4, "kernel_size": 1, "inputs": "input"},
        {"name": "sum", "type": "add", "inputs": ["a", "b"]},
        {"name": "three", "type": "add", "inputs": ["a", "b", "sum"]},
        {"name": "cat", "type": "concat", "inputs": ["three", "a"]},
        {"name": "relu", "type": "relu"},
        {"name": "flat", "type": "flatten"},
        {"name": "fc", "type": "linear", "out_features": 5},
        {"name": "drop", "type": "dropout", "inputs": "fc"},
    ], "output": "drop"}
    model = lively(mdl.build_model(spec))
    path = mdl.onnx.export(model, tmp_path / "graph.onnx")
    graph = onnx.load(str(path)).graph
    assert {n.name: n.op_type for n in graph.node} == {
        "a": "Conv", "b": "Conv", "sum": "Add", "three": "Sum", "cat": "Concat", "relu": "Relu", "flat": "Flatten",
        "fc": "Gemm", "drop": "Identity"}  # an output that passes its input through gets a node of its own
    assert graph.output[0].name == "drop"
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert_close(ort_forward(path, x), minidl_forward(model.eval(), x))


SWISH = {"name": "swishnet", "input": [3, 6, 6], "layers": [
    {"name": "conv", "type": "conv2d", "out_channels": 4, "kernel_size": 3},
    {"name": "act", "type": "swish", "beta": 1.5},
    {"name": "act2", "type": "swish"},
    {"name": "flatten", "type": "flatten"},
    {"name": "fc", "type": "linear", "out_features": 3},
]}


def test_the_example_plugins_swish_exports_as_sigmoid_times_input(swish_installed, tmp_path):
    model = lively(mdl.build_model(SWISH))
    path = mdl.onnx.export(model, tmp_path / "swish.onnx")
    nodes = [(n.name, n.op_type) for n in onnx.load(str(path)).graph.node]
    assert nodes == [("conv", "Conv"), ("act/Mul", "Mul"), ("act/Sigmoid", "Sigmoid"), ("act", "Mul"),
                     ("act2/Sigmoid", "Sigmoid"), ("act2", "Mul"), ("flatten", "Flatten"), ("fc", "Gemm")]
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert_close(ort_forward(path, x), minidl_forward(model.eval(), x))


CUBE_PLUGIN = """
import minidl

class Cube(minidl.nn.Module):
    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x):
        return x * x * x

def broken_to_onnx(graph, node, inputs):
    return graph.add("Mul", inputs, no_such_attribute=object())

@minidl.hookimpl
def minidl_register_layers(register):
    register("cube", Cube)
    register("cube_broken", Cube, onnx=broken_to_onnx)
"""


@pytest.fixture
def cube_installed(tmp_path, monkeypatch, fresh_plugins):
    install_plugin(tmp_path, monkeypatch, "minidl-cube", "0.2.0", "minidl_cube", CUBE_PLUGIN)


@pytest.mark.parametrize("type_name, message", [
    ("cube", r"layer 1 'power': type 'cube' \(from plugin 'cube' \(package minidl-cube 0\.2\.0\)\) has no ONNX form"),
    ("cube_broken", r"layer 1 'power' \(cube_broken\): its ONNX converter failed"),
])
def test_a_layer_without_an_onnx_form_is_refused_by_name(cube_installed, tmp_path, type_name, message):
    model = mdl.build_model({"name": "m", "input": [4], "layers": [
        {"name": "fc", "type": "linear", "out_features": 3}, {"name": "power", "type": type_name}]})
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(OnnxError, match=message):
        mdl.onnx.export(model, target)
    assert target.read_bytes() == b"previous"  # nothing half-written


def test_metadata_and_producer_are_stored(tmp_path):
    path = mdl.onnx.export(mdl.build_model("models/alexnet-mini.yaml"), tmp_path / "m.onnx",
                           metadata={"minidl.step": 7})
    proto = onnx.load(str(path))
    assert proto.producer_name == "minidl"
    assert {p.key: p.value for p in proto.metadata_props} == {"minidl.model": "alexnet-mini", "minidl.step": "7"}


def test_import_minidl_does_not_import_onnx():
    code = ("import sys, minidl as mdl; mdl.build_model('models/alexnet-mini.yaml'); mdl.onnx; "
            "print('onnx' in sys.modules, 'minidl.onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]  # minidl.onnx loads on first use; the onnx package only when it runs


def test_without_the_onnx_package_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'minidl\[onnx\]'"):
        mdl.onnx.export(mdl.build_model("models/alexnet-mini.yaml"), tmp_path / "m.onnx")
