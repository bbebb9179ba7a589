"""A gunicorn config file is Python: read its module-level literal settings with :mod:`ast`, never run it."""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

from graceful.doctor._findings import InputError

#: The settings that decide the drain and the keep-alive.
NAMES = ("graceful_timeout", "keepalive", "worker_class", "workers", "raw_env")


@dataclasses.dataclass(frozen=True)
class GunicornConf:
    path: str
    values: dict[str, Any]
    lines: dict[str, int]

    def number(self, name: str) -> float | None:
        value = self.values.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)

    def env(self) -> dict[str, str]:
        """``raw_env = ["GRACEFUL_DRAIN_DELAY=10", ...]`` entries that are plain strings."""
        raw = self.values.get("raw_env")
        if not isinstance(raw, (list, tuple)):
            return {}
        pairs = (item.partition("=") for item in raw if isinstance(item, str) and "=" in item)
        return {name: value for name, _, value in pairs}


def read(path: str, text: str) -> GunicornConf:
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as exc:
        raise InputError(path, f"not valid Python: {exc.msg}", exc.lineno) from None
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for statement in tree.body:
        if not isinstance(statement, ast.Assign):
            continue
        for target in statement.targets:
            if isinstance(target, ast.Name) and target.id in NAMES:
                lines[target.id] = statement.lineno
                try:
                    values[target.id] = ast.literal_eval(statement.value)
                except ValueError:
                    # raw_env of f-strings: keep the entries that are plain strings.
                    if isinstance(statement.value, ast.List):
                        values[target.id] = [
                            element.value
                            for element in statement.value.elts
                            if isinstance(element, ast.Constant) and isinstance(element.value, str)
                        ]
                    else:
                        values.pop(target.id, None)
    return GunicornConf(path=path, values=values, lines=lines)
