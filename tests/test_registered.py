"""Registered plugin classes by class name: mdl.nn.Conv2d, mdl.optim.SGD, a third party's mdl.nn.Swish."""
from __future__ import annotations

import pytest

import minidl as mdl
from minidl.plugins import registry, reset_plugin_manager
from tests.plugins.conftest import SWISH_SOURCE, fresh_plugins, write_distribution  # noqa: F401 - a fixture


def test_builtin_layers_optimizers_and_schedulers_by_class_name():
    layers = registry("layers")
    for cls_name, registered in [("Conv2d", "conv2d"), ("Linear", "linear"), ("MaxPool2d", "maxpool2d"),
                                 ("BatchNorm2d", "batchnorm2d"), ("ReLU", "relu"), ("Dropout", "dropout"),
                                 ("Flatten", "flatten"), ("LRN", "lrn"), ("AdaptiveAvgPool2d", "adaptive_avgpool2d")]:
        assert getattr(mdl.nn, cls_name) is layers[registered].factory
    assert mdl.optim.SGD is registry("optimizers")["sgd"].factory
    assert mdl.optim.AdamW is registry("optimizers")["adamw"].factory
    assert mdl.optim.lr_scheduler.StepLR is mdl.optim.StepLR is registry("schedulers")["step"].factory
    assert {"Conv2d", "Linear", "Module", "Sequential"} <= set(dir(mdl.nn))
    assert "SGD" in dir(mdl.optim) and "CosineLR" in dir(mdl.optim.lr_scheduler)
    assert not hasattr(mdl.nn, "Conv3d") and not hasattr(mdl.nn, "conv2d")
    with pytest.raises(AttributeError, match="module 'minidl.nn' has no attribute 'Conv3d'"):
        mdl.nn.Conv3d  # noqa: B018


def test_a_third_party_layer_class_and_an_ambiguous_name(tmp_path, monkeypatch, fresh_plugins):
    site = write_distribution(tmp_path / "site", "minidl-swish", "0.1.0", {"swish": "minidl_swish"})
    monkeypatch.syspath_prepend(str(SWISH_SOURCE))
    monkeypatch.syspath_prepend(str(site))
    reset_plugin_manager()
    assert mdl.nn.Swish is registry("layers")["swish"].factory
    other = write_distribution(tmp_path / "other", "other-conv", "2.0", {"other_conv": "other_conv"}, {
        "other_conv": """
            import minidl

            class Conv2d(minidl.nn.Module):
                def forward(self, x):
                    return x

            @minidl.hookimpl
            def minidl_register_layers(register):
                register("other_conv2d", Conv2d)
        """})
    monkeypatch.syspath_prepend(str(other))
    reset_plugin_manager()
    with pytest.raises(AttributeError, match=r"minidl.nn.Conv2d is ambiguous: .*'minidl_layers'.* and .*'other_conv'"):
        mdl.nn.Conv2d  # noqa: B018
