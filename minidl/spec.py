"""Validating model specs: parameter schemas from plugin registrations, type checks, located errors."""
from __future__ import annotations

import difflib
import functools
import inspect
import operator
import types
import typing
from dataclasses import dataclass

from .yaml_loader import LocatedDict, LocatedList, Mark

__all__ = ["ModelError", "Param", "schema_of", "check_params", "where"]

_MISSING = inspect.Parameter.empty


class ModelError(ValueError):
    """A model file or mapping that cannot be built.

    Attributes: ``source`` (file), ``line``, ``column`` (1-based, None when
    unknown), ``layer_index`` and ``layer_name`` (when a layer is involved),
    ``hint`` (a suggestion), ``message`` (the bare problem).
    """

    def __init__(self, message: str, source: str = "<mapping>", mark: Mark | None = None,
                 layer_index: int | None = None, layer_name: str | None = None, hint: str | None = None):
        self.source, self.message, self.hint = source, message, hint
        self.line, self.column = (mark.line, mark.column) if mark else (None, None)
        self.layer_index, self.layer_name = layer_index, layer_name
        where_ = f"{source}:{self.line}:{self.column}" if mark else source
        layer = ""
        if layer_index is not None:
            layer = f"layer {layer_index}" + (f" {layer_name!r}" if layer_name else "") + ": "
        text = f"{where_}: {layer}{message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


def where(container, key=None) -> Mark | None:
    """The mark of ``container[key]``'s key (or of the container) when it came from YAML."""
    if isinstance(container, LocatedDict):
        return container.mark_of(key) if key is not None else container.mark
    if isinstance(container, LocatedList):
        return container.mark_of(key) if key is not None else container.mark
    return None


@dataclass
class Param:
    """One accepted key of a layer (or optimizer, ...): its type and default."""

    name: str
    annotation: object = typing.Any
    default: object = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def schema_of(entry, skip: int = 0) -> dict:
    """name -> Param for a registry entry: its explicit ``schema=`` option, else its signature.

    A ``required=(names...)`` registration option marks keys a model file
    must give even though the signature defaults them (to None, so that
    Python callers can use PyTorch's positional order and leave them out).

    ``skip`` drops leading positional parameters the framework fills in
    (an optimizer's ``params``, a scheduler's ``optimizer``).
    """
    explicit = entry.options.get("schema")
    if explicit is not None:
        params = {}
        for name, spec in explicit.items():
            if isinstance(spec, dict):
                params[name] = Param(name, spec.get("type", typing.Any), spec.get("default", _MISSING))
            else:
                params[name] = Param(name, spec)
        return params
    factory = entry.factory
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to no type checks
        hints = {}
    accepted = [p for name, p in inspect.signature(target).parameters.items()
                if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    required = set(entry.options.get("required", ()))  # None-defaulted in Python (positional order), not in files
    schema = {}
    for p in accepted[skip:]:
        annotation = hints.get(p.name, typing.Any)
        if p.name in required:
            schema[p.name] = Param(p.name, _without_none(annotation))
        else:
            schema[p.name] = Param(p.name, annotation, p.default)
    return schema


def _without_none(annotation):
    """``int | None`` -> ``int``: a required key's value cannot be null."""
    args = typing.get_args(annotation)
    if not (isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union):
        return annotation
    kept = [a for a in args if a is not type(None)]
    return functools.reduce(operator.or_, kept) if kept else annotation


def _type_name(annotation) -> str:
    if annotation is typing.Any:
        return "any"
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " or ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def coerce(value, annotation):
    """Return ``value`` converted to fit ``annotation`` (lists for tuples, ints for floats), or raise TypeError."""
    if annotation is typing.Any or annotation is _MISSING:
        return value
    origin = typing.get_origin(annotation)
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        for option in typing.get_args(annotation):
            try:
                return coerce(value, option)
            except TypeError:
                continue
        raise TypeError
    if annotation is type(None):
        if value is None:
            return None
        raise TypeError
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if annotation in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        item_types = typing.get_args(annotation)
        if item_types and item_types[-1] is not Ellipsis and len(item_types) != len(value):
            raise TypeError
        item_type = item_types[0] if item_types else typing.Any
        items = [coerce(v, item_type) for v in value]
        return tuple(items) if (annotation is tuple or origin is tuple) else items
    if annotation is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise TypeError
    return value  # a type minidl does not check (a plugin's own class): passed through


def check_params(given, schema: dict, what: str, source: str, error_context: dict) -> dict:
    """Validate a mapping of parameters against ``schema``; returns the coerced kwargs.

    Unknown keys get a "did you mean" hint; wrong types name the expected
    type; missing required parameters are listed. ``error_context`` carries
    layer_index/layer_name for the error.
    """
    kwargs = {}
    for key, value in given.items():
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"{what} accepts: {', '.join(schema) or 'no keys'}"
            raise ModelError(f"unknown key {key!r} for {what}", source, where(given, key), hint=hint, **error_context)
        try:
            kwargs[key] = coerce(value, schema[key].annotation)
        except TypeError:
            raise ModelError(
                f"{what}: {key} must be {_type_name(schema[key].annotation)}, got {value!r} "
                f"({type(value).__name__})", source, _value_mark(given, key), **error_context
            ) from None
    missing = [p.name for p in schema.values() if p.required and p.name not in given]
    if missing:
        raise ModelError(f"{what}: missing required parameter(s) {', '.join(missing)}", source, where(given),
                         **error_context)
    return kwargs


def _value_mark(container, key):
    if isinstance(container, LocatedDict):
        return container.value_mark_of(key)
    return None
