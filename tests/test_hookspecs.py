"""Every hook is documented like pytest's hookspecs and exercised through a real entry-point plugin."""
from __future__ import annotations

import inspect

import pytest

import minidl
from minidl import hookspecs
from minidl.plugins import get_plugin_manager, registry, reset_plugin_manager
from tests.plugins.conftest import write_distribution

HOOKS = sorted(name for name, fn in vars(hookspecs).items()
               if name.startswith("minidl_") and callable(fn))


def test_hooks_are_the_registry_hooks():
    assert set(HOOKS) == set(hookspecs.REGISTRY_HOOKS.values())
    assert minidl.hookimpl is hookspecs.hookimpl


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    fn = getattr(hookspecs, hook)
    doc = inspect.getdoc(fn) or ""
    assert list(inspect.signature(fn).parameters) == ["register"]
    assert ":param register:" in doc, "each argument is documented"
    assert "Called once per plugin" in doc, "when it is called is documented"
    assert len(doc.splitlines()[0]) > 10


PROBE = '''
import minidl

def make(kind):
    def factory(*args, **kwargs):
        return (kind, args, kwargs)
    return factory

''' + "\n".join(
    f"@minidl.hookimpl\ndef {hook}(register):\n    register('probe_{kind}', make('{kind}'))\n"
    for kind, hook in hookspecs.REGISTRY_HOOKS.items()
)


def test_every_hook_is_called_and_fills_its_registry(tmp_path, monkeypatch):
    site = write_distribution(tmp_path, "minidl-probe", "0.0.1", {"probe": "probe_plugin"}, {"probe_plugin": PROBE})
    monkeypatch.syspath_prepend(str(site))
    reset_plugin_manager()
    try:
        manager = get_plugin_manager()
        for kind in hookspecs.REGISTRY_HOOKS:
            entry = registry(kind)[f"probe_{kind}"]
            assert entry.plugin.package == "minidl-probe"
            assert entry.create(1, a=2) == (kind, (1,), {"a": 2})
        assert manager.plugins["probe"].registered == {kind: [f"probe_{kind}"] for kind in hookspecs.REGISTRY_HOOKS}
    finally:
        reset_plugin_manager()
