"""YAML for configuration files, stricter than ``yaml.safe_load``: a drop-in for PyYAML's ``safe_load``.

A configuration file is small and plain, so what a hostile or mistaken file could do with full YAML is refused,
each as a ``yaml.YAMLError`` that names where: a duplicate key (PyYAML silently keeps the last), an alias (an alias
bomb expands to billions of nodes when validated or printed), nesting deeper than a configuration has (PyYAML's
composer recurses), an integer longer than any setting (int() of it is slow or refused), and input over 1 MiB.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml import MarkedYAMLError, YAMLError
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MarkedYAMLError", "StrictLoader", "YAMLError", "safe_load"]

MAX_BYTES = 1 << 20
"""The largest configuration accepted (the reference configuration is about 4 KiB)."""
MAX_DEPTH = 32
"""The deepest nesting accepted (a configuration needs four levels: section, field, class rule, list)."""
MAX_INT_CHARS = 64
"""The longest integer literal accepted: no setting is near 20 digits, and base-60 literals cost quadratic time."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, aliases, deep nesting and over-long integers."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ComposerError(
                None, None, f"found alias *{event.anchor}: a configuration may not use aliases", event.start_mark
            )
        if self._depth >= MAX_DEPTH:
            raise ComposerError(
                None, None, f"found a value nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # unhashable: PyYAML's own check reports it
                    continue
                if earlier is not key_node:
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r} (first on line {earlier.start_mark.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        if isinstance(node.value, str) and len(node.value) > MAX_INT_CHARS:
            raise ConstructorError(
                None,
                None,
                f"found an integer of {len(node.value)} characters (at most {MAX_INT_CHARS})",
                node.start_mark,
            )
        return super().construct_yaml_int(node)


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)


def safe_load(stream: str | bytes | Any) -> Any:
    """Parse one YAML document like ``yaml.safe_load``, with the limits above; a stream is read up to the limit."""
    text = stream if isinstance(stream, str | bytes) else stream.read(MAX_BYTES + 1)
    if len(text) > MAX_BYTES:
        raise YAMLError(f"the input is longer than {MAX_BYTES} characters, the most a configuration may have")
    return yaml.load(text, Loader=StrictLoader)
