"""``activation: relu`` on the conv2d and linear layers (plugins/minidl_layers): from YAML, as the model with
relu layers computes it, on one device and split over two, and refused with the layer named when unknown."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

import minidl as mdl
from minidl.builder import build_model
from minidl.parallel import place
from minidl.plugins import registry
from minidl.spec import ModelError

WITH_OPTION = """
name: small
input: [4, 6, 6]
layers:
  - {name: c1, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1, groups: 2, activation: relu}
  - {name: c2, type: conv2d, out_channels: 6, kernel_size: 3, activation: relu}
  - {name: flat, type: flatten}
  - {name: fc1, type: linear, out_features: 5, activation: relu}
  - {name: fc2, type: linear, out_features: 3}
"""
WITH_LAYERS = """
name: small
input: [4, 6, 6]
layers:
  - {name: c1, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1, groups: 2}
  - {name: r1, type: relu}
  - {name: c2, type: conv2d, out_channels: 6, kernel_size: 3}
  - {name: r2, type: relu}
  - {name: flat, type: flatten}
  - {name: fc1, type: linear, out_features: 5}
  - {name: r3, type: relu}
  - {name: fc2, type: linear, out_features: 3}
"""


def write(tmp_path, text, name="model.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def step(model, x, fuse=False):
    """Output and parameter gradients (by layer name and parameter) of one backward pass."""
    object.__setattr__(model, "fuse_activations", fuse)
    model.zero_grad()
    y = model(mdl.tensor(x))
    (y * y).sum().backward()
    return y.numpy(), {name: p.grad.numpy() for name, p in model.named_parameters()}


def assert_same(result, reference):
    np.testing.assert_allclose(result[0], reference[0], rtol=1e-10, atol=1e-12)
    assert result[1].keys() == reference[1].keys()
    for name in reference[1]:
        np.testing.assert_allclose(result[1][name], reference[1][name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.fixture
def models(tmp_path):
    option = build_model(write(tmp_path, WITH_OPTION, "option.yaml"), dtype="float64")
    layers = build_model(write(tmp_path, WITH_LAYERS, "layers.yaml"), dtype="float64")
    option.load_state_dict(layers.state_dict())  # the same parameter names: the relu layers have none
    return option, layers


def test_activation_from_yaml_is_a_relu_after_the_layer(models, rng):
    option, layers = models
    assert option.layers["c1"].activation == "relu" and option.layers["fc2"].activation is None
    assert "activation='relu'" in repr(option.layers["c2"]) and "activation='relu'" in repr(option.layers["fc1"])
    x = rng.standard_normal((3, 4, 6, 6))
    assert_same(step(option, x), step(layers, x))


def test_an_activation_and_a_relu_layer_after_it(tmp_path, rng):
    # relu twice is relu: the relu layer runs on its own (the conv has an activation already)
    text = WITH_LAYERS.replace("padding: 1, groups: 2}", "padding: 1, groups: 2, activation: relu}")
    twice = build_model(write(tmp_path, text), dtype="float64")
    once = build_model(write(tmp_path, WITH_LAYERS, "once.yaml"), dtype="float64")
    twice.load_state_dict(once.state_dict())
    x = rng.standard_normal((2, 4, 6, 6))
    assert_same(step(twice, x, fuse=True), step(once, x))


@pytest.mark.skipif(mdl.parallel.cpu_cores() < 2, reason="needs two CPU cores for cpu:0 and cpu:1")
@pytest.mark.parametrize("strategy", ["columns", "hybrid"])
def test_activation_in_a_model_split_over_devices(models, strategy, rng):
    # the columns strategy computes each device's share of a layer's channels with output_slice
    option, layers = models
    x = rng.standard_normal((4, 4, 6, 6))
    reference = step(layers, x)
    place(option, strategy, "cpu:0,cpu:1")
    try:
        assert_same(step(option, x), reference)
    finally:
        option.placement.close()


@pytest.mark.parametrize("first, layer", [
    ("{type: relu}", "{type: conv2d, out_channels: 4, kernel_size: 3, activation: tanh}"),
    ("{type: flatten}", "{type: linear, out_features: 4, activation: tanh}"),
])
def test_an_unknown_activation_names_the_layer(tmp_path, first, layer):
    path = write(tmp_path, f"""
    name: bad
    input: [4, 6, 6]
    layers:
      - {first}
      - {{type: relu}}
      - {layer}
    """)
    with pytest.raises(ModelError) as info:
        build_model(path)
    name = "conv2d2" if "conv2d" in layer else "linear2"
    assert str(info.value) == (f"{path}:6:6: layer 2 '{name}': {name[:-1]}: activation must be None or one of "
                               "'relu', got 'tanh'")


def test_activation_must_be_a_string(tmp_path):
    path = write(tmp_path, """
    name: bad
    input: [4]
    layers:
      - {type: linear, out_features: 4, activation: 1}
    """)
    with pytest.raises(ModelError, match="activation"):
        build_model(path)


def test_layers_take_it_in_python():
    conv = registry("layers").create("conv2d", out_channels=2, kernel_size=1, activation="relu")
    x = mdl.tensor(np.linspace(-1, 1, 2 * 3 * 2 * 2).reshape(2, 3, 2, 2))
    y = conv.to("float64")(x)
    assert (y.numpy() >= 0).all() and (y.numpy() > 0).any()
    with pytest.raises(ValueError, match="linear: activation must be None or one of 'relu', got 'gelu'"):
        registry("layers").create("linear", out_features=2, activation="gelu")
