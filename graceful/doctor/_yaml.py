"""YAML documents as plain dicts and lists that remember where each key was (PyYAML's safe composer).

``yaml.compose_all`` keeps every node's ``start_mark``; building the values from the nodes here (not
with the constructor) keeps those lines and treats an alias as the same object, so an alias bomb
costs one node per alias, not an exponential copy.
"""

from __future__ import annotations

from typing import Any

from graceful.doctor._findings import InputError

_TRUE = {"true", "yes", "on", "y"}
_FALSE = {"false", "no", "off", "n"}


class Map(dict[Any, Any]):
    """A mapping with the 1-based line and column of itself and of each key."""

    line: int = 1
    col: int = 1
    key_lines: dict[Any, tuple[int, int]]

    def where(self, key: Any) -> tuple[int, int]:
        return self.key_lines.get(key, (self.line, self.col))


class Seq(list[Any]):
    line: int = 1
    col: int = 1
    item_lines: list[tuple[int, int]]

    def where(self, index: int) -> tuple[int, int]:
        return self.item_lines[index] if index < len(self.item_lines) else (self.line, self.col)


def _scalar(node: Any) -> Any:
    tag: str = node.tag
    value: str = node.value
    if tag.endswith(":int"):
        try:
            return int(value.replace("_", ""), 0)
        except ValueError:
            return value
    if tag.endswith(":float"):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            return value
    if tag.endswith(":bool"):
        return value.lower() in _TRUE
    if tag.endswith(":null"):
        return None
    return value


def _build(node: Any, memo: dict[int, Any]) -> Any:
    import yaml

    known = memo.get(id(node))
    if known is not None:
        return known
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node)
    if isinstance(node, yaml.SequenceNode):
        seq = Seq()
        memo[id(node)] = seq
        seq.line, seq.col = node.start_mark.line + 1, node.start_mark.column + 1
        seq.item_lines = [(item.start_mark.line + 1, item.start_mark.column + 1) for item in node.value]
        seq.extend(_build(item, memo) for item in node.value)
        return seq
    mapping = Map()
    memo[id(node)] = mapping
    mapping.line, mapping.col = node.start_mark.line + 1, node.start_mark.column + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        if key_node.tag.endswith(":merge"):
            merged = _build(value_node, memo)
            for part in merged if isinstance(merged, list) else [merged]:
                if isinstance(part, Map):
                    for key, value in part.items():
                        mapping.setdefault(key, value)
                        mapping.key_lines.setdefault(key, part.where(key))
            continue
        key = _build(key_node, memo)
        if isinstance(key, (dict, list)):
            continue  # complex keys mean nothing in the files the doctor reads
        mapping[key] = _build(value_node, memo)
        mapping.key_lines[key] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
    return mapping


def load_all(text: str, path: str) -> list[Any]:
    """Every document of ``text``; a YAML error is an InputError at its line."""
    import yaml

    loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        nodes = list(yaml.compose_all(text, Loader=loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise InputError(path, f"not valid YAML: {exc.problem or exc}", line) from None
    except RecursionError:
        raise InputError(path, "not usable YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {exc}") from None
    try:
        return [_build(node, {}) for node in nodes if node is not None]
    except RecursionError:  # the pure-Python loader has no nesting limit of its own
        raise InputError(path, "not usable YAML: nested too deeply") from None
