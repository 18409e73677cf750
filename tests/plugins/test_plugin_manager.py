"""Plugin discovery through real entry points: third-party plugins, failures, clashes, disabling."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl.plugins import PluginError, PluginWarning, get_plugin_manager, registry, reset_plugin_manager

from .conftest import SWISH_SOURCE, write_distribution

BUILTINS = {"minidl_layers", "minidl_init", "minidl_optim", "minidl_schedulers", "minidl_data"}


def test_builtins_are_active_and_register_the_alexnet_layer_set(fresh_plugins):
    manager = get_plugin_manager()
    assert BUILTINS <= {name for name, info in manager.plugins.items() if info.status == "active"}
    layers = registry("layers")
    for name in ["conv2d", "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "lrn", "relu", "dropout", "linear",
                 "flatten", "softmax", "log_softmax", "batchnorm2d"]:
        assert name in layers and layers[name].plugin.name == "minidl_layers"
    assert set(registry("optimizers").names()) >= {"sgd", "adam", "adamw"}
    assert set(registry("schedulers").names()) >= {"step", "multistep", "cosine", "linear_warmup",
                                                   "reduce_on_plateau"}
    assert set(registry("initializers").names()) >= {"normal", "constant", "xavier_uniform", "kaiming_normal"}


def test_registries_are_built_once(fresh_plugins):
    manager = get_plugin_manager()
    assert registry("layers") is registry("layers")
    assert get_plugin_manager() is manager


def test_unknown_name_lists_known_and_suggests(fresh_plugins):
    with pytest.raises(KeyError, match=r"unknown layer type 'conv2D'.*Did you mean 'conv2d'.*Known: .*linear"):
        registry("layers")["conv2D"]


def test_example_plugin_through_entry_points(swish_installed):
    manager = get_plugin_manager()
    info = manager.plugins["swish"]
    assert (info.package, info.version, info.status, info.builtin) == ("minidl-swish", "0.1.0", "active", False)
    entry = registry("layers")["swish"]
    assert entry.plugin is info
    layer = entry.create(beta=1.0)
    # train one step with the plugin's layer and the plugin's optimizer
    rng = np.random.default_rng(0)
    w = mdl.Parameter(rng.standard_normal((4, 3)).astype(np.float32))
    opt = registry("optimizers").create("lion", [w], lr=0.1)
    x = mdl.tensor(rng.standard_normal((8, 4)).astype(np.float32))
    labels = rng.integers(0, 3, 8)
    before = w.numpy().copy()
    loss = F.cross_entropy(layer(x @ w), labels)
    loss.backward()
    opt.step()
    assert np.abs(w.numpy() - before).max() == pytest.approx(0.1, rel=1e-5)  # Lion moves by lr * sign


def _with_swish_on_path(site):
    """The environment for a `minidl` subprocess that sees the example plugin's dist-info,
    keeping any PYTHONPATH the suite itself runs under (an uninstalled checkout, say)."""
    paths = [str(site), str(SWISH_SOURCE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


def test_cli_plugins_json_shows_builtins_and_example(swish_installed):
    env = _with_swish_on_path(swish_installed)
    out = subprocess.run([sys.executable, "-m", "minidl.cli", "plugins", "--json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    listing = {p["name"]: p for p in json.loads(out)["plugins"]}
    assert BUILTINS <= set(listing)
    swish = listing["swish"]
    assert swish["package"] == "minidl-swish" and swish["version"] == "0.1.0" and swish["status"] == "active"
    assert swish["registered"] == {"layers": ["swish"], "optimizers": ["lion"]}
    assert "conv2d" in listing["minidl_layers"]["registered"]["layers"]


def test_cli_plugins_table(swish_installed):
    env = _with_swish_on_path(swish_installed)
    out = subprocess.run([sys.executable, "-m", "minidl.cli", "plugins"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "swish  [minidl-swish 0.1.0]  active" in out
    assert "layers: swish" in out


def test_plugin_failing_to_import_is_reported_and_others_work(tmp_path, monkeypatch, fresh_plugins):
    site = write_distribution(tmp_path, "broken-plugin", "2.0", {"broken": "broken_plugin"},
                              {"broken_plugin": "raise ImportError('needs libfoo')\n"})
    monkeypatch.syspath_prepend(str(site))
    reset_plugin_manager()
    with pytest.warns(PluginWarning, match=r"plugin 'broken' \(package broken-plugin 2.0\) failed to load: "
                                           r"ImportError: needs libfoo"):
        manager = get_plugin_manager()
    assert manager.plugins["broken"].status == "failed"
    assert "conv2d" in registry("layers")


def test_plugin_raising_while_registering_is_reported(tmp_path, monkeypatch, fresh_plugins):
    site = write_distribution(tmp_path, "raiser", "1.0", {"raiser": "raiser_plugin"}, {"raiser_plugin": """
        import minidl

        @minidl.hookimpl
        def minidl_register_layers(register):
            register("half_done", lambda: None)
            raise RuntimeError("oops")
        """})
    monkeypatch.syspath_prepend(str(site))
    reset_plugin_manager()
    with pytest.warns(PluginWarning, match="raised in minidl_register_layers: RuntimeError: oops"):
        layers = registry("layers")
    assert "half_done" not in layers and "conv2d" in layers
    assert get_plugin_manager().plugins["raiser"].status == "failed"


def test_strict_mode_makes_failures_errors(tmp_path, monkeypatch, fresh_plugins):
    site = write_distribution(tmp_path, "broken-plugin", "2.0", {"broken": "broken_plugin"},
                              {"broken_plugin": "raise ImportError('needs libfoo')\n"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MINIDL_STRICT_PLUGINS", "1")
    reset_plugin_manager()
    with pytest.raises(PluginError, match="broken-plugin 2.0.*needs libfoo"):
        get_plugin_manager()


def test_name_clash_names_both_providers(tmp_path, monkeypatch, fresh_plugins):
    site = write_distribution(tmp_path, "clasher", "3.1", {"clasher": "clash_plugin"}, {"clash_plugin": """
        import minidl

        @minidl.hookimpl
        def minidl_register_layers(register):
            register("relu", object)
        """})
    monkeypatch.syspath_prepend(str(site))
    reset_plugin_manager()
    with pytest.raises(PluginError) as info:
        registry("layers")
    message = str(info.value)
    assert "'relu' is registered twice" in message
    assert "minidl_layers" in message and "package minidl" in message
    assert "clasher" in message and "3.1" in message and "MINIDL_DISABLE_PLUGINS=clasher" in message


def test_disabled_plugin_is_not_even_imported(tmp_path, monkeypatch, fresh_plugins):
    marker = tmp_path / "imported.txt"
    site = write_distribution(tmp_path / "site", "noisy", "1.0", {"noisy": "noisy_plugin"}, {"noisy_plugin": f"""
        open({str(marker)!r}, "w").write("imported")
        """})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MINIDL_DISABLE_PLUGINS", "noisy, minidl_schedulers")
    reset_plugin_manager()
    manager = get_plugin_manager()
    assert manager.plugins["noisy"].status == "disabled"
    assert manager.plugins["minidl_schedulers"].status == "disabled"
    assert not marker.exists()
    assert len(registry("schedulers")) == 0
    assert "conv2d" in registry("layers")
