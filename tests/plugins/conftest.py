"""Helpers to make real plugin distributions (dist-info directories with entry points) on sys.path."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from minidl.plugins import reset_plugin_manager

REPO = Path(__file__).resolve().parents[2]
SWISH_SOURCE = REPO / "plugins" / "example-swish"


def write_distribution(root: Path, name: str, version: str, entry_points: dict, modules: dict | None = None) -> Path:
    """Write ``name-version.dist-info`` (METADATA, entry_points.txt, RECORD) and module files under ``root``.

    This is what pip leaves in site-packages, so importlib.metadata discovers it
    exactly as it would an installed plugin.
    """
    root.mkdir(parents=True, exist_ok=True)
    dist = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[minidl]"] + [f"{ep} = {target}" for ep, target in entry_points.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (dist / "RECORD").write_text("")
    for module_name, source in (modules or {}).items():
        (root / f"{module_name}.py").write_text(textwrap.dedent(source))
    return root


def install_plugin(tmp_path, monkeypatch, package: str, version: str, module: str, source: str) -> Path:
    """A one-module plugin ``module`` (entry point ``module`` minus its ``minidl_`` prefix) made discoverable
    through a real dist-info on sys.path, with the plugin manager reset to see it; returns the site folder."""
    entry = module.removeprefix("minidl_")
    site = write_distribution(tmp_path / "site", package, version, {entry: module}, {module: source})
    monkeypatch.syspath_prepend(str(site))
    reset_plugin_manager()
    return site


@pytest.fixture
def fresh_plugins(monkeypatch):
    """Reset the plugin manager before and after the test (env and sys.path changes take effect)."""
    monkeypatch.delenv("MINIDL_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("MINIDL_STRICT_PLUGINS", raising=False)
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture
def swish_installed(tmp_path, monkeypatch, fresh_plugins):
    """The example plugin made discoverable through a real dist-info, as `pip install` would."""
    site = write_distribution(tmp_path / "site", "minidl-swish", "0.1.0", {"swish": "minidl_swish"})
    monkeypatch.syspath_prepend(str(SWISH_SOURCE))
    monkeypatch.syspath_prepend(str(site))
    reset_plugin_manager()
    return site
