"""Entry scripts (``start.sh``): read line by line with :mod:`shlex`, find how the server is started."""

from __future__ import annotations

from graceful.doctor._commands import analyse, split_shell, unwrap
from graceful.doctor._findings import Finding
from graceful.doctor._rules import finding

# Words that open or close a compound command; what follows them on the line is a command.
_KEYWORDS = frozenset(
    {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "{", "}", "(", ")"}
)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined, each with its first line number; comments dropped."""
    lines: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line and not line.startswith("#"):
            lines.append((start, line))
    if pending.strip():
        lines.append((start, pending.strip()))
    return lines


def check_script(path: str, text: str, has_init: bool, cmd: list[str] | None) -> list[Finding]:
    """GR002 for each server started without ``exec``; GR003 for background jobs without an init.

    ``cmd`` is the image's exec-form CMD, which ``exec "$@"`` at the end of the script runs (and
    a bare ``"$@"`` runs as a child: the docker-entrypoint.sh mistake).
    """
    findings: list[Finding] = []
    background: int | None = None
    for number, line in logical_lines(text):
        for words, separator in split_shell(line):
            while words and words[0] in _KEYWORDS:
                words = words[1:]
            bare, execs = unwrap(words)
            inner = analyse(words)
            if separator == "&" and background is None:
                background = number
            if bare[:1] in (["$@"], ["${@}"]) and not execs:
                ran = f" ({' '.join(cmd)})" if cmd else ""
                findings.append(
                    finding(
                        "GR002",
                        path,
                        number,
                        1,
                        f"'\"$@\"' runs the image's CMD{ran} as a child of the shell: SIGTERM reaches the "
                        "shell, not the server, which is SIGKILLed at the end of the grace period",
                    )
                )
            if inner.server is not None and not execs:
                how = "in the background ('&')" if separator == "&" else "as a child"
                findings.append(
                    finding(
                        "GR002",
                        path,
                        number,
                        1,
                        f"'{' '.join(words)}' runs {how} of the shell: SIGTERM reaches the shell, "
                        "not the server, which is SIGKILLed at the end of the grace period",
                    )
                )
    if background is not None and not has_init:
        findings.append(
            finding("GR003", path, background, 1, "the script starts a background job ('&') and has no init")
        )
    return findings
