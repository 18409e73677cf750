"""Safe YAML reading for model files, keeping the file:line:column of every value.

What is refused, each with the place in the file: duplicate mapping keys,
nesting deeper than ``MAX_DEPTH``, alias/anchor expansion beyond
``MAX_EXPANDED_NODES`` (the "billion laughs" bomb), any tag that would build
a Python object (only plain scalars, lists and mappings exist here), and YAML
syntax errors. Mappings come back as :class:`LocatedDict` and sequences as
:class:`LocatedList`, which remember where each key and item was.
"""
from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["LocatedDict", "LocatedList", "YamlError", "load_yaml", "plain", "MAX_DEPTH", "MAX_EXPANDED_NODES", "Mark"]

MAX_DEPTH = 64
MAX_EXPANDED_NODES = 100_000
MAX_BYTES = 10 << 20


class Mark(tuple):
    """(line, column), both 1-based."""

    __slots__ = ()

    def __new__(cls, line: int, column: int):
        return super().__new__(cls, (line, column))

    def __getnewargs__(self):
        return tuple(self)

    @classmethod
    def of(cls, node_or_mark):
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        return cls(mark.line + 1, mark.column + 1)

    @property
    def line(self):
        return self[0]

    @property
    def column(self):
        return self[1]


class YamlError(ValueError):
    """A model file that is not acceptable YAML; ``source``, ``line`` and ``column`` say where."""

    def __init__(self, message: str, source: str = "<string>", mark: Mark | None = None):
        self.source, self.mark = source, mark
        self.line, self.column = (mark if mark else (None, None))
        where = f"{source}:{mark.line}:{mark.column}" if mark else source
        super().__init__(f"{where}: {message}")
        self.message = message


class LocatedDict(dict):
    """A dict from YAML that knows where it, each key and each value came from."""

    def __init__(self, mark: Mark | None = None):
        super().__init__()
        self.mark = mark
        self.key_marks = {}
        self.value_marks = {}

    def mark_of(self, key) -> Mark | None:
        return self.key_marks.get(key, self.mark)

    def value_mark_of(self, key) -> Mark | None:
        return self.value_marks.get(key, self.mark)


class LocatedList(list):
    """A list from YAML that knows where it and each item came from."""

    def __init__(self, mark: Mark | None = None):
        super().__init__()
        self.mark = mark
        self.item_marks = []

    def mark_of(self, index) -> Mark | None:
        return self.item_marks[index] if 0 <= index < len(self.item_marks) else self.mark


class _Loader(yaml.SafeLoader):
    """SafeLoader producing Located containers and refusing duplicate keys."""


def _construct_mapping(loader, node):
    loader.flatten_mapping(node)  # "<<" merge keys
    data = LocatedDict(Mark.of(node))
    yield data
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise YamlError("a mapping key must be a plain value", loader.source, Mark.of(key_node)) from None
        if key in data:
            first = data.key_marks[key]
            raise YamlError(f"duplicate key {key!r} (first defined at line {first.line})", loader.source,
                            Mark.of(key_node))
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_marks[key] = Mark.of(key_node)
        data.value_marks[key] = Mark.of(value_node)


def _construct_sequence(loader, node):
    data = LocatedList(Mark.of(node))
    yield data
    for item in node.value:
        data.append(loader.construct_object(item, deep=True))
        data.item_marks.append(Mark.of(item))


def _refuse(loader, tag_suffix, node):
    raise YamlError(f"tag {node.tag!r} is not allowed in model files", loader.source, Mark.of(node))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:omap", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:binary", lambda loader, node: _refuse(loader, None, node))
_Loader.add_constructor("tag:yaml.org,2002:set", lambda loader, node: _refuse(loader, None, node))
_Loader.add_multi_constructor("", _refuse)  # any other explicit tag (!!python/object, !custom, ...)


def _check_events(text: str, source: str) -> None:
    """Depth limit, checked on the event stream before anything recursive runs."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", source, Mark.of(event))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _expanded_size(node, memo) -> int:
    """Number of nodes after expanding aliases (shared nodes counted each time they are used)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a cycle (recursive alias) counts as one until resolved below
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[key] = min(size, MAX_EXPANDED_NODES + 1)
    return memo[key]


def load_yaml(source, text: str | None = None):
    """Parse a model file (a path) or ``text`` safely; returns Located containers and scalars.

    Raises :class:`YamlError` with ``file:line:column`` for anything refused.
    """
    name = str(source)
    if text is None:
        path = Path(source)
        try:
            if path.stat().st_size > MAX_BYTES:
                raise YamlError(f"file larger than {MAX_BYTES} bytes", name)
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise YamlError(f"cannot read model file: {e.strerror or e}", name) from None
        except UnicodeDecodeError as e:
            raise YamlError(f"not UTF-8 text ({e.reason} at byte {e.start})", name) from None
    try:
        _check_events(text, name)
        loader = _Loader(text)
        loader.source = name
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if _expanded_size(node, {}) > MAX_EXPANDED_NODES:
                raise YamlError(f"aliases expand to more than {MAX_EXPANDED_NODES} nodes (an alias bomb?)", name,
                                Mark.of(node))
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except YamlError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(p for p in (e.context, e.problem) if p)
        raise YamlError(f"YAML syntax error: {problem}", name, Mark.of(mark) if mark else None) from None
    except yaml.YAMLError as e:
        raise YamlError(f"YAML error: {e}", name) from None
    except RecursionError:
        raise YamlError("structure too deeply nested or self-referencing", name) from None


def plain(value):
    """Located containers -> plain dicts and lists (for JSON, copies, comparisons)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value

