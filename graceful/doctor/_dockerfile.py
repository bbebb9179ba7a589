"""Dockerfiles: what the final stage runs (ENTRYPOINT + CMD, STOPSIGNAL) and its COPY'd entry script."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shlex
from collections.abc import Callable

from graceful.doctor._commands import Command, analyse, split_shell
from graceful.doctor._drain import stop_signal_problem
from graceful.doctor._findings import Finding
from graceful.doctor._rules import finding
from graceful.doctor._script import check_script


@dataclasses.dataclass
class _Instruction:
    value: str
    line: int
    exec_form: list[str] | None


@dataclasses.dataclass
class _Stage:
    entrypoint: _Instruction | None = None
    cmd: _Instruction | None = None
    stopsignal: _Instruction | None = None
    #: What runs the shell forms (the SHELL instruction; Docker's default otherwise).
    shell: tuple[str, ...] = ("/bin/sh", "-c")
    #: destination in the image -> source in the build context
    copies: dict[str, str] = dataclasses.field(default_factory=dict)


def _exec_form(value: str) -> list[str] | None:
    if not value.lstrip().startswith("["):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None  # Docker runs invalid JSON as shell form, and so do we
    if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
        return parsed
    return None


def _copies(value: str, workdir: str) -> dict[str, str]:
    form = _exec_form(value)
    try:
        words = form if form is not None else shlex.split(value)
    except ValueError:
        return {}
    if any(word.startswith("--from") for word in words):
        return {}  # from another stage or image: not in the build context
    words = [word for word in words if not word.startswith("--")]
    if len(words) < 2:
        return {}
    *sources, dest = words
    dest = dest if dest.startswith("/") else os.path.join(workdir, dest)
    found: dict[str, str] = {}
    for source in sources:
        if len(sources) == 1 and not dest.endswith("/"):
            found[os.path.normpath(dest)] = source
        found[os.path.normpath(os.path.join(dest, os.path.basename(source)))] = source
    return found


def _stages(text: str) -> list[_Stage]:
    from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]

    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    stages: list[_Stage] = []
    names: dict[str, _Stage] = {}
    workdir = "/"
    for item in parser.structure:
        instruction = item["instruction"]
        value: str = item["value"]
        line = item["startline"] + 1
        if instruction == "FROM":
            words = value.split()
            base = names.get(words[0].lower()) if words else None
            # Only what the file shows is inherited: an image's own ENTRYPOINT/CMD are unknown here.
            stage = dataclasses.replace(base, copies=dict(base.copies)) if base else _Stage()
            if len(words) >= 3 and words[1].upper() == "AS":
                names[words[2].lower()] = stage
            stages.append(stage)
            workdir = "/"
            continue
        if not stages:
            continue
        stage = stages[-1]
        if instruction == "ENTRYPOINT":
            stage.entrypoint = _Instruction(value, line, _exec_form(value))
            stage.cmd = None  # Docker: setting ENTRYPOINT resets a CMD inherited from the base
        elif instruction == "CMD":
            stage.cmd = _Instruction(value, line, _exec_form(value))
        elif instruction == "SHELL":
            form = _exec_form(value)
            if form:
                stage.shell = tuple(form)
        elif instruction == "STOPSIGNAL":
            stage.stopsignal = _Instruction(value.strip(), line, None)
        elif instruction == "WORKDIR":
            workdir = os.path.join(workdir, value.strip())
        elif instruction in ("COPY", "ADD"):
            stage.copies.update(_copies(value, workdir))
    return stages


def _command(stage: _Stage) -> tuple[Command, _Instruction] | None:
    """The command the image runs, and the instruction to point at when it is wrong."""
    entrypoint, cmd = stage.entrypoint, stage.cmd
    if entrypoint is not None and entrypoint.exec_form is None:
        return analyse([*stage.shell, entrypoint.value]), entrypoint  # shell-form ENTRYPOINT ignores CMD
    argv: list[str] = list(entrypoint.exec_form or []) if entrypoint else []
    if cmd is not None:
        argv += cmd.exec_form if cmd.exec_form is not None else [*stage.shell, cmd.value]
    if not argv:
        return None
    where = cmd if cmd is not None and (cmd.exec_form is None or entrypoint is None) else entrypoint
    assert where is not None
    return analyse(argv), where


def check(path: str, text: str, read: Callable[[str], str | None]) -> list[Finding]:
    """Findings of the Dockerfile at ``path``; ``read`` gives a build-context file's text or None."""
    stages = _stages(text)
    if not stages:
        return []
    stage = stages[-1]
    resolved = _command(stage)
    if resolved is None:
        return []
    command, where = resolved
    findings: list[Finding] = []
    has_init = command.init is not None
    if command.shell_text is not None and not command.execs and not command.init_signals_group:
        cause = (
            f"{command.init} signals only its child, the shell (add -g)"
            if has_init
            else f"{os.path.basename(command.argv[0])} is PID 1 and does not pass SIGTERM on"
        )
        findings.append(
            finding(
                "GR001",
                path,
                where.line,
                1,
                f"shell-form command {command.shell_text.strip()!r}: {cause}; the server is SIGKILLed "
                "at the end of the grace period",
            )
        )
    if command.spawns and not has_init:
        findings.append(
            finding("GR003", path, where.line, 1, "the command starts a background job ('&') and has no init")
        )
    script = _script_command(command)
    if script is not None:
        source = stage.copies.get(os.path.normpath(script if script.startswith("/") else "/" + script))
        if source is None:
            source = next((src for dest, src in stage.copies.items() if dest.endswith("/" + script)), None)
        if source is not None:
            script_path = os.path.join(os.path.dirname(path), source)
            script_text = read(script_path)
            if script_text is not None:
                cmd = stage.cmd.exec_form if stage.cmd is not None and stage.entrypoint is not None else None
                findings += check_script(script_path, script_text, has_init, cmd)
    if stage.stopsignal is not None:
        problem = stop_signal_problem(command, stage.stopsignal.value)
        if problem is not None:
            findings.append(
                finding(
                    "GR011", path, stage.stopsignal.line, 1, f"STOPSIGNAL {stage.stopsignal.value}: {problem}"
                )
            )
    return findings


def _script_command(command: Command) -> str | None:
    if command.script is not None:
        return command.script
    if command.shell_text is not None:
        for words, _ in split_shell(command.shell_text):
            inner = analyse([word for word in words if word != "exec"])
            if inner.script is not None:
                return inner.script
    return None
