"""PyYAML, held to the YAML that CDI spec files are written in: imported only when a YAML spec is read.

CDI's own loader (container-device-interface `pkg/cdi/spec.go`, sigs.k8s.io/yaml's strict mode) reads one
document into Go structs; the specs NVIDIA's tools write (go-yaml v3) use block and flow collections and plain or
quoted scalars, nothing else. A spec file is written by whatever runs as root on the node, and read by a collector
whose run must end with a file: so this loader refuses, with a reason, what CDI never writes and what could make a
parse explode or crash:

- anchors and aliases (a billion laughs is a few lines of aliases), tags (a tag picks a constructor), `%` directives,
  more than one document, complex (collection) keys, merge keys (`<<`): `yaml_unsupported`;
- duplicate keys (CDI's strict loader refuses them too), nesting deeper than MAX_DEPTH, integers longer than
  MAX_INT_DIGITS digits (Python's int() raises past 4,300), non-finite floats, and anything not YAML: `malformed`.

It parses with libyaml (`yaml.CSafeLoader`) where PyYAML was built with it, else the pure-Python parser, and builds
the value from the parser's events itself, with a stack: PyYAML's own composer and constructor recurse once per
level (the C composer without any depth check). Scalars resolve and construct as `yaml.safe_load`'s do.
The measured cost of the import and of one spec: docs/allocation.md.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Optional, Union

import yaml
from yaml import events
from yaml.nodes import ScalarNode

MAX_DEPTH = 64  # a CDI spec nests 6 levels (devices, a device, containerEdits, deviceNodes, a node)
MAX_INT_DIGITS = 40

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
LIBYAML = _Base is not yaml.SafeLoader
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"
_NO_KEY = object()


class YamlRefused(Exception):
    """A document this loader will not read. reason: `yaml_unsupported` (YAML that CDI never writes) or
    `malformed`; the message says what and where."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _line(event: events.Event) -> int:
    return event.start_mark.line + 1 if event.start_mark is not None else 0


def _unsupported(what: str, event: events.Event) -> YamlRefused:
    return YamlRefused("yaml_unsupported", f"{what} (line {_line(event)}): CDI specs use none")


def _malformed(what: str, event: events.Event) -> YamlRefused:
    return YamlRefused("malformed", f"{what} (line {_line(event)})")


def _check_document(event: events.DocumentStartEvent, number: int) -> None:
    if number > 1:
        raise _unsupported("a second document", event)
    if event.version is not None or event.tags:
        raise _unsupported("a % directive", event)


class _Strict:
    """get_single_data() for a SafeLoader or CSafeLoader: the one document, built from the parser's events,
    refusing what the module docstring lists."""

    check_event: Any
    get_event: Any
    resolve: Any
    yaml_constructors: ClassVar[dict[Optional[str], Any]]

    def get_single_data(self) -> Any:
        stack: list[tuple[Union[list[Any], dict[Any, Any]], list[Any]]] = []  # (collection, [pending key])
        root: Any = None
        documents = 0
        while self.check_event():
            event = self.get_event()
            if isinstance(event, events.DocumentStartEvent):
                documents += 1
                _check_document(event, documents)
            elif isinstance(event, (events.SequenceEndEvent, events.MappingEndEvent)):
                stack.pop()
            elif isinstance(event, events.NodeEvent):
                value = self._node(event, len(stack))
                if not stack:
                    root = value
                else:
                    self._add(stack[-1], value, event)
                if isinstance(value, (list, dict)):
                    stack.append((value, [_NO_KEY]))
        return root

    def _node(self, event: events.NodeEvent, depth: int) -> Any:
        """A scalar's value, or a new empty collection."""
        if isinstance(event, events.AliasEvent):
            raise _unsupported("an alias", event)
        if event.anchor is not None:
            raise _unsupported("an anchor", event)
        if getattr(event, "tag", None) is not None:
            raise _unsupported(f"a tag ({getattr(event, 'tag', '')})", event)
        if isinstance(event, events.ScalarEvent):
            return self._scalar(event)
        if depth >= MAX_DEPTH:
            raise _malformed(f"nested deeper than {MAX_DEPTH} levels", event)
        return [] if isinstance(event, events.SequenceStartEvent) else {}

    def _scalar(self, event: events.ScalarEvent) -> Any:
        tag = self.resolve(ScalarNode, event.value, event.implicit)
        if tag == _MERGE:
            raise _unsupported("a merge key (<<)", event)
        if tag in (_STR, _VALUE):
            return event.value
        if tag == _INT and len(event.value.lstrip("+-").replace("_", "")) > MAX_INT_DIGITS:
            raise _malformed(f"an integer of {len(event.value)} digits (at most {MAX_INT_DIGITS})", event)
        try:
            value = self.yaml_constructors[tag](self, ScalarNode(tag, event.value))
        except (ValueError, OverflowError, yaml.YAMLError) as err:
            raise _malformed(f"a {tag.rsplit(':', 1)[-1]} that cannot be read: {err}", event) from None
        if tag == _FLOAT and not math.isfinite(value):
            raise _malformed(f"a non-finite number ({event.value})", event)
        return value

    @staticmethod
    def _add(top: tuple[Union[list[Any], dict[Any, Any]], list[Any]], value: Any, event: events.Event) -> None:
        collection, pending = top
        if isinstance(collection, list):
            collection.append(value)
        elif pending[0] is _NO_KEY:
            if isinstance(value, (list, dict)):
                raise _unsupported("a collection as a mapping key", event)
            if value in collection:
                raise _malformed(f"the key {str(value)[:40]!r} twice", event)
            pending[0] = value
        else:
            collection[pending[0]] = value
            pending[0] = _NO_KEY


class StrictLoader(_Strict, _Base):  # type: ignore[misc]  # CSafeLoader where PyYAML has libyaml, else SafeLoader
    pass


class PythonStrictLoader(_Strict, yaml.SafeLoader):
    """The same on PyYAML's pure-Python parser (what StrictLoader is without libyaml)."""


def load(text: Union[str, bytes], loader_class: type = StrictLoader) -> Any:
    """The one document in text. Raises YamlRefused."""
    loader = loader_class(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise YamlRefused("malformed", "not YAML: " + " ".join(str(err).split())) from None
    finally:
        loader.dispose()
