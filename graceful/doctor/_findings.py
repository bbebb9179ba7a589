"""What the doctor reports: one finding per cause, and the input errors that stop it reading a file."""

from __future__ import annotations

import dataclasses
from typing import Literal

Severity = Literal["error", "warning"]


@dataclasses.dataclass(frozen=True)
class Finding:
    """One rollout-loss cause at a place in a file. ``line`` and ``col`` are 1-based."""

    code: str
    severity: Severity
    path: str
    line: int
    col: int
    message: str
    fix: str


class InputError(Exception):
    """A file the doctor cannot read or parse; the CLI exits 2 naming ``path`` (and ``line``)."""

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.message = message
