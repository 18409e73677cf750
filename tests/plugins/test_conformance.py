"""Every registered differentiable layer passes a float64 gradient check, with no per-layer code."""
from __future__ import annotations

import pytest

from minidl.plugins import get_plugin_manager, registry
from minidl.testing import check_layer
from minidl.testing.layers import DEFAULT_INPUT_SHAPE


def layer_cases(layers):
    """(entry, example) for every example of every differentiable layer in the registry."""
    cases = []
    for entry in layers:
        if not entry.options.get("differentiable", True):
            continue
        for example in entry.options.get("examples") or [{}]:
            cases.append((entry, example))
    return cases


def check_example(entry, example):
    layer = entry.create(**example.get("params", {}))
    assert check_layer(layer, tuple(example.get("input_shape", DEFAULT_INPUT_SHAPE)))


CASES = layer_cases(registry("layers"))  # whatever is installed, third-party plugins included


@pytest.mark.parametrize(
    "entry,example", CASES, ids=[f"{e.name}-{i}" for i, (e, _) in enumerate(CASES)]
)
def test_registered_layer_gradients(entry, example):
    check_example(entry, example)


def test_every_builtin_layer_is_covered():
    covered = {entry.name for entry, _ in CASES}
    assert {"conv2d", "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "lrn", "batchnorm2d", "linear", "relu",
            "dropout", "flatten", "softmax", "log_softmax"} <= covered


def test_third_party_layers_conform(swish_installed):
    third_party = [(e, ex) for e, ex in layer_cases(registry("layers")) if not e.plugin.builtin]
    assert {e.name for e, _ in third_party} == {"swish"}
    assert get_plugin_manager().plugins["swish"].status == "active"
    for entry, example in third_party:
        check_example(entry, example)


def test_layers_in_eval_mode_too():
    for entry, example in CASES:
        layer = entry.create(**example.get("params", {})).eval()
        assert check_layer(layer, tuple(example.get("input_shape", DEFAULT_INPUT_SHAPE)))
