"""Building models from YAML: the reference models, graph models, and every error with its location."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl.builder import build_model
from minidl.spec import ModelError

MODELS = Path(__file__).resolve().parents[1] / "models"


def write(tmp_path, text, name="model.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def model_error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ModelError) as info:
        build_model(path)
    return info.value, str(path)


# ----------------------------------------------------------------- reference models
@pytest.mark.parametrize("name,batch", [("alexnet-mini", 4), ("alexnet", 1), ("alexnet-torchvision", 1),
                                        ("alexnet-columns", 1)])
def test_every_model_file_runs_forward_and_backward(name, batch):
    model = build_model(MODELS / f"{name}.yaml")
    x = mdl.tensor(np.random.default_rng(0).standard_normal((batch,) + model.input_shape).astype(np.float32))
    logits = model(x)
    classes = model.nodes[-1].output_shape[0]
    assert logits.shape == (batch, classes)
    F.cross_entropy(logits, np.arange(batch) % classes).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, pname
        assert np.isfinite(p.grad.numpy()).all(), pname


def test_all_model_files_are_covered():
    assert {p.stem for p in MODELS.glob("*.yaml")} == {"alexnet-mini", "alexnet", "alexnet-torchvision",
                                                       "alexnet-columns"}


def test_build_from_mapping_and_graph_forms(tmp_path):
    spec = {"name": "res", "input": [2, 4, 4], "layers": [
        {"name": "c1", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
        {"name": "r1", "type": "relu"},
        {"name": "sum", "type": "add", "inputs": ["input", "r1"]},
        {"name": "cat", "type": "concat", "inputs": ["sum", "c1"]},
        {"type": "flatten"},
    ]}
    model = build_model(spec, dtype="float64")  # float64 inputs need a float64 model (no silent promotion)
    assert not model.sequential and model.nodes[-1].output_shape == (64,)
    x = mdl.tensor(np.random.default_rng(1).standard_normal((3, 2, 4, 4)), requires_grad=True)
    y = model(x)
    c1 = F.conv2d(x, model.c1.weight, model.c1.bias, padding=1)
    expected = F.concatenate([x + F.relu(c1), c1], axis=1).reshape(3, -1)
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=1e-6)


def test_columns_graph_equals_grouped_model_given_same_weights():
    """The explicit two-column graph computes what groups=2 computes, with weights split by column."""
    small = {
        "grouped": {"name": "g", "input": [4, 9, 9], "layers": [
            {"name": "c1", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "groups": 2},
            {"name": "c2", "type": "conv2d", "out_channels": 6, "kernel_size": 3}]},
        "columns": {"name": "c", "input": [4, 9, 9], "layers": [
            {"name": "split_a", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "inputs": "input"},
            {"name": "split_b", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "inputs": "input"},
            {"name": "cat", "type": "concat", "inputs": ["split_a", "split_b"]},
            {"name": "c2", "type": "conv2d", "out_channels": 6, "kernel_size": 3}]},
    }
    g, c = build_model(small["grouped"]), build_model(small["columns"])
    w = g.c1.weight.numpy()
    # column a sees input channels 0-1, column b 2-3: pad the other half with zeros
    wa = np.zeros((2, 4, 3, 3), np.float32)
    wa[:, :2] = w[:2]
    wb = np.zeros((2, 4, 3, 3), np.float32)
    wb[:, 2:] = w[2:]
    c.split_a.weight.data, c.split_b.weight.data = wa, wb
    c.split_a.bias.data, c.split_b.bias.data = g.c1.bias.numpy()[:2], g.c1.bias.numpy()[2:]
    c.c2.weight.data, c.c2.bias.data = g.c2.weight.numpy(), g.c2.bias.numpy()
    x = mdl.tensor(np.random.default_rng(2).standard_normal((2, 4, 9, 9)).astype(np.float32))
    np.testing.assert_allclose(c(x).numpy(), g(x).numpy(), rtol=1e-5, atol=1e-6)


def test_layer_without_shape_rule_is_run_on_a_zero_batch(tmp_path):
    from minidl.plugins import registry

    class NoRule(mdl.nn.Module):
        def forward(self, x):
            return x[:, :1] * 2

    layers = registry("layers")
    entry = layers["relu"]
    fake = type(entry)("layers", "first_channel", NoRule, entry.plugin)
    layers.entries["first_channel"] = fake
    try:
        model = build_model({"name": "z", "input": [3, 4, 4], "layers": [{"type": "first_channel"}]})
        assert model.nodes[0].output_shape == (1, 4, 4)
    finally:
        del layers.entries["first_channel"]


# ----------------------------------------------------------------- errors with locations
def test_unknown_layer_type(tmp_path):
    e, path = model_error(tmp_path, """
        name: m
        input: [1, 8, 8]
        layers:
          - {type: relu}
          - {type: conv2D, out_channels: 4, kernel_size: 3}
        """)
    assert (e.line, e.column, e.layer_index) == (5, 6, 1)
    assert str(e).startswith(f"{path}:5:6: layer 1 'conv2D1': unknown layer type 'conv2D'. Did you mean 'conv2d'?")
    assert "Known: " in str(e) and "maxpool2d" in str(e)


def test_unknown_key_with_suggestion(tmp_path):
    e, path = model_error(tmp_path, """
        name: m
        input: [1, 8, 8]
        layers:
          - name: conv1
            type: conv2d
            out_channels: 4
            kernal_size: 3
        """)
    assert str(e) == f"{path}:7:5: layer 0 'conv1': unknown key 'kernal_size' for conv2d (did you mean 'kernel_size'?)"


def test_wrong_value_type(tmp_path):
    e, path = model_error(tmp_path, """
        name: m
        input: [1, 8, 8]
        layers:
          - {type: conv2d, name: c, out_channels: 4.5, kernel_size: 3}
        """)
    assert (e.line, e.column) == (4, 43)  # the value 4.5
    assert "layer 0 'c': conv2d: out_channels must be int, got 4.5 (float)" in str(e)


def test_missing_required_parameter(tmp_path):
    e, path = model_error(tmp_path, """
        name: m
        input: [1, 8, 8]
        layers:
          - {type: linear}
        """)
    assert str(e) == f"{path}:4:5: layer 0 'linear0': linear: missing required parameter(s) out_features"


def test_shape_mismatch_names_both_layers(tmp_path):
    e, path = model_error(tmp_path, """
        name: m
        input: [1, 8, 8]
        layers:
          - {type: conv2d, name: conv1, out_channels: 4, kernel_size: 3}
          - {type: flatten, name: flat}
          - {type: linear, name: fc, out_features: 3, in_features: 100}
        """)
    assert str(e) == (f"{path}:6:6: layer 2 'fc': cannot take input (144,) from layer 1 'flat' (flatten): "
                      "linear expects 100 input features, got 144")


def test_merge_shape_mismatch_names_both_inputs(tmp_path):
    e, _ = model_error(tmp_path, """
        name: m
        input: [2, 8, 8]
        layers:
          - {name: a, type: conv2d, out_channels: 2, kernel_size: 3, inputs: input}
          - {name: b, type: conv2d, out_channels: 2, kernel_size: 1, inputs: input}
          - {name: s, type: add, inputs: [a, b]}
        """)
    assert "layer 2 's'" in str(e)
    assert "(2, 6, 6) from layer 0 'a' (conv2d) and (2, 8, 8) from layer 1 'b' (conv2d)" in str(e)


def test_too_small_input(tmp_path):
    e, _ = model_error(tmp_path, """
        name: m
        input: [1, 4, 4]
        layers:
          - {type: conv2d, name: big, out_channels: 2, kernel_size: 7}
        """)
    assert "layer 0 'big'" in str(e) and "too small for a 7x7 window" in str(e)


def test_unknown_input_reference(tmp_path):
    e, _ = model_error(tmp_path, """
        name: m
        input: [1, 4, 4]
        layers:
          - {type: relu, name: r}
          - {type: add, name: s, inputs: [r, rr]}
        """)
    assert "inputs names 'rr', which is not an earlier layer" in str(e) and "did you mean 'r'?" in str(e)


def test_duplicate_layer_names(tmp_path):
    e, _ = model_error(tmp_path, """
        name: m
        input: [1, 4, 4]
        layers:
          - {type: relu, name: r}
          - {type: relu, name: r}
        """)
    assert (e.line, e.layer_index) == (5, 1) and "duplicate layer name 'r'" in str(e)


def test_duplicate_mapping_keys(tmp_path):
    e, path = model_error(tmp_path, """
        name: m
        input: [1, 4, 4]
        layers:
          - {type: relu, type: flatten}
        """)
    assert str(e) == f"{path}:4:18: duplicate key 'type' (first defined at line 4)"


def test_yaml_syntax_error(tmp_path):
    e, path = model_error(tmp_path, """
        name: m
        input: [1, 4, 4
        layers: []
        """)
    assert e.line is not None and str(e).startswith(f"{path}:") and "YAML syntax error" in str(e)


def test_alias_bomb_is_refused(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    e, path = model_error(tmp_path, "\n".join(lines) + "\nname: m\ninput: [1]\nlayers: [*a7]\n")
    assert "alias bomb" in str(e) and str(e).startswith(f"{path}:1:1:")


def test_deep_nesting_is_refused(tmp_path):
    e, path = model_error(tmp_path, "name: m\ninput: [1]\nlayers: " + "[" * 100 + "]" * 100 + "\n")
    assert "nesting deeper than 64 levels" in str(e) and e.line == 3


def test_python_tags_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    e, _ = model_error(tmp_path, f"""
        name: !!python/object/apply:os.system ["touch {marker}"]
        input: [1]
        layers: [{{type: relu}}]
        """)
    assert "is not allowed in model files" in str(e) and e.line == 1
    assert not marker.exists()


def test_unknown_top_level_key(tmp_path):
    e, _ = model_error(tmp_path, """
        name: m
        inputs: [1, 4, 4]
        layers: [{type: relu}]
        """)
    assert "unknown top-level key 'inputs'" in str(e) and "did you mean 'input'?" in str(e)


def test_bad_input_shape_and_layers(tmp_path):
    e, _ = model_error(tmp_path, "name: m\ninput: [1, -4, 4]\nlayers: [{type: relu}]\n")
    assert "'input' must be a list of positive integers" in str(e) and e.line == 2
    e, _ = model_error(tmp_path, "name: m\ninput: [1]\nlayers: []\n")
    assert "'layers' must be a non-empty list" in str(e)
    e, _ = model_error(tmp_path, "name: m\ninput: [1]\nlayers: [{out_channels: 3}]\n")
    assert "layer has no 'type'" in str(e) and "known layer types" in str(e)


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="cannot read model file"):
        build_model(tmp_path / "nope.yaml")


# ----------------------------------------------------------------- train section
def test_train_section_is_validated(tmp_path):
    base = "name: m\ninput: [1, 4, 4]\nlayers: [{type: flatten}, {type: linear, out_features: 2}]\n"
    build_model(write(tmp_path, base + "train:\n  epochs: 3\n  optimizer: {type: sgd, lr: 0.1, momentum: 0.9}\n"
                      "  scheduler: {type: cosine, t_max: 3}\n"))
    e, _ = model_error(tmp_path, base + "train:\n  epochs: 3\n  optimizer: {type: sgd, lr: 0.1, momentun: 0.9}\n")
    assert "unknown key 'momentun' for train.optimizer sgd" in str(e) and "did you mean 'momentum'?" in str(e)
    assert e.line == 6
    e, _ = model_error(tmp_path, base + "train:\n  epoch: 3\n")
    assert "unknown key 'epoch' in train" in str(e) and "did you mean 'epochs'?" in str(e)
    e, _ = model_error(tmp_path, base + "train:\n  optimizer: {type: sgdd}\n")
    assert "unknown optimizer type 'sgdd'" in str(e) and "Did you mean 'sgd'?" in str(e)
    e, _ = model_error(tmp_path, base + "train:\n  batch_size: many\n")
    assert "train.batch_size must be int" in str(e)
    build_model(write(tmp_path, base + "train:\n  conv_algorithm: auto\n"))
    e, _ = model_error(tmp_path, base + "train:\n  epochs: 3\n  conv_algorithm: im2col\n")
    assert "unknown conv algorithm type 'im2col'" in str(e) and "im2col_gemm" in str(e) and e.line == 6


# ------------------------------------------------ errors while running
RUN_SPEC = """\
name: m
input: [1, 8, 8]
layers:
  - {type: conv2d, name: conv1, out_channels: 4, kernel_size: 3}
  - {type: relu}
  - {type: flatten}
  - {type: linear, name: fc6, out_features: 5}
"""


def test_a_shape_error_while_running_names_the_layer_and_shapes(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(RUN_SPEC)
    model = build_model(path)
    with pytest.raises(mdl.ShapeError) as info:
        model(mdl.tensor(np.zeros((2, 1, 10, 10), np.float32)))
    e = info.value
    assert str(e).startswith(f"layer 3 'fc6' (linear, {path}), input shape (2, 256): linear: expected x (N, 144)")
    assert (e.op, e.layer_name, e.layer_type, e.layer_index, e.input_shapes) == ("linear", "fc6", "linear", 3,
                                                                                  [(2, 256)])


def test_a_float64_input_to_a_float32_model_is_refused_naming_both_dtypes(tmp_path, torch):
    path = tmp_path / "m.yaml"
    path.write_text(RUN_SPEC)
    model = build_model(path)
    x = np.zeros((2, 1, 8, 8))
    with pytest.raises(mdl.OpTypeError, match=r"layer 0 'conv1' \(conv2d, .*m.yaml\), input shape \(2, 1, 8, 8\): "
                                              r"Conv2d: input of dtype float64 for parameters of dtype float32"):
        model(mdl.tensor(x))
    with pytest.raises(RuntimeError):  # PyTorch refuses too
        torch.nn.Conv2d(1, 4, 3)(torch.from_numpy(x))
    assert model(mdl.tensor(x).float()).dtype == np.float32
    assert build_model(path, dtype="float64")(mdl.tensor(x)).dtype == np.float64


def test_a_device_error_in_a_graph_model_names_the_layer():
    model = build_model({"name": "g", "input": [3], "layers": [
        {"type": "linear", "name": "a", "out_features": 3},
        {"type": "add", "name": "join", "inputs": ["input", "a"]}]})
    with pytest.raises(mdl.DeviceError, match=r"layer 0 'a' \(linear, <mapping>\), input shape \(2, 3\): .*devices"):
        model(mdl.tensor(np.zeros((2, 3), np.float32), device="cpu:1"))
    e = None
    try:
        model(mdl.tensor(np.zeros((2, 4), np.float32)))
    except mdl.ShapeError as error:
        e = error
    assert e is not None and e.layer_name == "a"


def test_sequential_names_the_failing_layer():
    seq = mdl.nn.Sequential(mdl.nn.Linear(4, 3), mdl.nn.ReLU(), mdl.nn.Linear(5, 2))
    with pytest.raises(mdl.ShapeError, match=r"^layer 2 '2' \(Linear\), input shape \(1, 3\): linear: expected"):
        seq(mdl.tensor(np.zeros((1, 4), np.float32)))
