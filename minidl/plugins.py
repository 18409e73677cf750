"""The plugin manager: built-in plugins, entry-point plugins, and the registries they fill.

Registries are built once, on first use (``registry("layers")``), by calling
each active plugin's registration hook; nothing here runs per op or per step.

Environment:
    MINIDL_DISABLE_PLUGINS=a,b   skip these plugins (by plugin or package name) before importing them
    MINIDL_STRICT_PLUGINS=1      a plugin that fails to import or register is an error, not a warning
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import threading
import warnings
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .hookspecs import PROJECT, REGISTRY_HOOKS

__all__ = [
    "BUILTIN_PLUGINS", "ENTRY_POINT_GROUP", "Entry", "PluginError", "PluginInfo", "PluginWarning", "Registry",
    "PluginManager", "get_plugin_manager", "make_initializer", "registry", "reset_plugin_manager",
]

ENTRY_POINT_GROUP = "minidl"

# minidl's own plugins (packages under plugins/ in the source tree), listed explicitly.
BUILTIN_PLUGINS = (
    "minidl_layers",
    "minidl_init",
    "minidl_optim",
    "minidl_schedulers",
    "minidl_data",
    "minidl_strategies",
    "minidl_conv",
    "minidl_cudnn",  # optional: refuses every convolution, saying why, without nvidia-cudnn-frontend and a GPU
)


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered something invalid (strict mode, or a name clash)."""


class PluginWarning(UserWarning):
    """A plugin failed and was skipped; the rest keep working."""


@dataclass
class PluginInfo:
    """What ``minidl plugins`` shows for one plugin."""

    name: str
    package: str
    version: str
    builtin: bool
    status: str = "active"  # active | disabled | failed
    error: str | None = None
    module: object = None
    registered: dict = field(default_factory=dict)  # kind -> [names]

    def as_dict(self) -> dict:
        return {
            "name": self.name, "package": self.package, "version": self.version, "builtin": self.builtin,
            "status": self.status, "error": self.error, "registered": self.registered,
        }

    @property
    def provider(self) -> str:
        return f"plugin {self.name!r} (package {self.package} {self.version})"


@dataclass
class Entry:
    """One registered name: its factory, who provided it, and the options given at registration."""

    kind: str
    name: str
    factory: object
    plugin: PluginInfo
    aliases: tuple = ()
    options: dict = field(default_factory=dict)

    def create(self, *args, **params):
        return self.factory(*args, **params)

    def signature_params(self) -> dict:
        """name -> inspect.Parameter of the factory, from its signature (the default schema)."""
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory
        params = inspect.signature(target).parameters
        skip = {"self", "args", "kwargs"}
        return {n: p for n, p in params.items()
                if n not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


class Registry:
    """Names of one kind (layers, optimizers, ...) mapped to their :class:`Entry`."""

    def __init__(self, kind: str):
        self.kind = kind
        self.entries: dict[str, Entry] = {}
        self.aliases: dict[str, str] = {}

    def add(self, entry: Entry) -> None:
        for name in (entry.name,) + tuple(entry.aliases):
            previous = self._lookup(name)
            if previous is not None:
                raise PluginError(
                    f"{self.kind[:-1] if self.kind.endswith('s') else self.kind} name {name!r} is registered twice: "
                    f"by {previous.plugin.provider} and by {entry.plugin.provider}. Disable one with "
                    f"MINIDL_DISABLE_PLUGINS={entry.plugin.name} (or ={previous.plugin.name})."
                )
        self.entries[entry.name] = entry
        for alias in entry.aliases:
            self.aliases[alias] = entry.name

    def _lookup(self, name):
        if name in self.entries:
            return self.entries[name]
        if name in self.aliases:
            return self.entries[self.aliases[name]]
        return None

    def __contains__(self, name) -> bool:
        return self._lookup(name) is not None

    def __getitem__(self, name) -> Entry:
        entry = self._lookup(name)
        if entry is None:
            raise KeyError(self.unknown_message(name))
        return entry

    def unknown_message(self, name) -> str:
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        singular = self.kind[:-3] + "y" if self.kind.endswith("ies") else self.kind[:-1]
        return f"unknown {singular.replace('_', ' ')} type {name!r}.{hint} Known: {', '.join(known)}"

    def names(self) -> list:
        return sorted(self.entries)

    def __iter__(self):
        return iter(self.entries.values())

    def __len__(self):
        return len(self.entries)

    def create(self, name, *args, **params):
        return self[name].create(*args, **params)


def _env_names(var: str) -> set:
    return {n.strip() for n in os.environ.get(var, "").split(",") if n.strip()}


class PluginManager:
    """Loads plugins once and builds each registry on first use."""

    def __init__(self, builtins=BUILTIN_PLUGINS, group: str = ENTRY_POINT_GROUP):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.strict = os.environ.get("MINIDL_STRICT_PLUGINS", "") not in ("", "0")
        self.disabled = _env_names("MINIDL_DISABLE_PLUGINS")
        self._registries: dict[str, Registry] = {}
        self._lock = threading.Lock()
        version = _minidl_version()
        for module_name in builtins:
            info = PluginInfo(module_name, "minidl", version, builtin=True)
            self._load(info, lambda m=module_name: importlib.import_module(m))
        for ep in importlib.metadata.entry_points(group=group):
            dist = ep.dist
            package = dist.metadata["Name"] if dist is not None else "?"
            version = dist.version if dist is not None else "?"
            info = PluginInfo(ep.name, package, version, builtin=False)
            self._load(info, ep.load)

    def _load(self, info: PluginInfo, loader) -> None:
        if info.name in self.plugins:
            other = self.plugins[info.name]
            self._fail(info, f"plugin name {info.name!r} is already used by {other.provider}")
            self.plugins[f"{info.name}@{info.package}"] = info
            return
        self.plugins[info.name] = info
        if info.name in self.disabled or info.package in self.disabled:
            info.status = "disabled"
            return
        try:
            info.module = loader()
            self.pm.register(info.module, name=info.name)
        except Exception as e:  # a broken plugin must not break minidl
            self._fail(info, f"failed to load: {type(e).__name__}: {e}")

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.status = "failed"
        info.error = message
        if self.strict:
            raise PluginError(f"{info.provider} {message} (MINIDL_STRICT_PLUGINS is set)")
        warnings.warn(f"minidl {info.provider} {message}; continuing without it", PluginWarning, stacklevel=3)

    def registry(self, kind: str) -> Registry:
        """The registry of ``kind`` ("layers", "optimizers", ...), built on first call."""
        if kind not in self._registries:
            with self._lock:
                if kind not in self._registries:
                    self._registries[kind] = self._build(kind)
        return self._registries[kind]

    def _build(self, kind: str) -> Registry:
        if kind not in REGISTRY_HOOKS:
            raise KeyError(f"unknown registry {kind!r}; known: {', '.join(REGISTRY_HOOKS)}")
        hook_name = REGISTRY_HOOKS[kind]
        implementations = {impl.plugin_name: impl for impl in getattr(self.pm.hook, hook_name).get_hookimpls()}
        result = Registry(kind)
        for name, info in self.plugins.items():
            impl = implementations.get(name)
            if impl is None or info.status != "active":
                continue
            collected = []

            def register(entry_name, factory, *, aliases=(), _info=info, _sink=collected, **options):
                if not isinstance(entry_name, str) or not entry_name:
                    raise PluginError(f"{hook_name}: name must be a non-empty string, got {entry_name!r}")
                if not callable(factory):
                    raise PluginError(f"{hook_name}: factory for {entry_name!r} is not callable")
                _sink.append(Entry(kind, entry_name, factory, _info, tuple(aliases), options))

            try:
                impl.function(register=register)
            except Exception as e:
                self._fail(info, f"raised in {hook_name}: {type(e).__name__}: {e}")
                continue
            for entry in collected:
                result.add(entry)  # a name clash raises PluginError naming both providers
            info.registered[kind] = [e.name for e in collected]
        return result

    def build_all(self) -> dict:
        """Build every registry (for ``minidl plugins``); returns kind -> Registry."""
        return {kind: self.registry(kind) for kind in REGISTRY_HOOKS}


def _minidl_version() -> str:
    try:
        return importlib.metadata.version("minidl")
    except importlib.metadata.PackageNotFoundError:
        from . import __version__

        return __version__


_manager = None
_manager_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, created (and plugins loaded) on first call."""
    global _manager
    if _manager is None:
        with _manager_lock:
            if _manager is None:
                _manager = PluginManager()
    return _manager


def reset_plugin_manager() -> None:
    """Forget loaded plugins and registries (after installing a plugin, or in tests)."""
    global _manager
    with _manager_lock:
        _manager = None
    importlib.invalidate_caches()


def registry(kind: str) -> Registry:
    """Shortcut: ``registry("layers")["conv2d"]``."""
    return get_plugin_manager().registry(kind)


def make_initializer(spec, default="fan_in_uniform"):
    """An initializer from a YAML-style spec, through the initializer registry.

    ``None`` -> ``default``; a number -> ``constant(value)``; a name ->
    that initializer with its defaults; ``{"type": name, **options}`` -> with
    options. For layer plugins: ``self.weight_init = make_initializer(weight_init)``.
    """
    if spec is None:
        spec = default
    if isinstance(spec, bool):
        raise ValueError(f"initializer spec must be a number, a name or a mapping, got {spec!r}")
    if isinstance(spec, (int, float)):
        return registry("initializers").create("constant", value=float(spec))
    if isinstance(spec, str):
        return registry("initializers").create(spec)
    if isinstance(spec, dict) and isinstance(spec.get("type"), str):
        options = {k: v for k, v in spec.items() if k != "type"}
        return registry("initializers").create(spec["type"], **options)
    if callable(spec):
        return spec
    raise ValueError(
        f"initializer spec must be a number, a name or a mapping with 'type', got {spec!r}"
    )
