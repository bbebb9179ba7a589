"""Procfiles (Heroku, Cloud Native Buildpacks, honcho): ``name: command``, run by ``bash -c``."""

from __future__ import annotations

from collections.abc import Callable

from graceful.doctor._commands import analyse_shell
from graceful.doctor._findings import Finding
from graceful.doctor._rules import finding
from graceful.doctor._script import check_script


def check(path: str, text: str, read: Callable[[str], str | None], base: str) -> list[Finding]:
    import os

    findings: list[Finding] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        name, _, command_text = line.partition(":")
        # Heroku and the buildpacks' launcher run the line with `bash -c`: bash execs its last simple
        # command, but a server in a pipeline (`gunicorn ... | tee`) or before another command
        # keeps bash as its parent, and the launcher makes that bash PID 1.
        command = analyse_shell(command_text.strip(), "bash")
        if command.server is not None and not command.execs:
            findings.append(
                finding(
                    "GR001",
                    path,
                    number,
                    1,
                    f"process {name.strip()!r}: {command_text.strip()!r} keeps bash as the server's parent: "
                    "SIGTERM stops at the shell",
                )
            )
        for words in (part for part in command_text.split() if part.endswith(".sh")):
            script_path = os.path.join(base, words.removeprefix("./"))
            script_text = read(script_path)
            if script_text is not None:
                findings += check_script(script_path, script_text, False, None)
    return findings
