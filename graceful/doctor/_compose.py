"""docker-compose files: each service's command, ``init``, ``stop_signal`` and ``stop_grace_period``."""

from __future__ import annotations

import re
import shlex
from typing import Any

from graceful.doctor._commands import Command, analyse
from graceful.doctor._drain import needed_grace, stop_signal_problem
from graceful.doctor._findings import Finding
from graceful.doctor._rules import finding
from graceful.doctor._yaml import Map

#: `docker compose stop` waits 10 s before SIGKILL unless stop_grace_period says otherwise.
DEFAULT_GRACE = 10.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


def is_compose(document: Any) -> bool:
    return isinstance(document, Map) and isinstance(document.get("services"), Map) and "kind" not in document


def duration(value: Any) -> float | None:
    """Compose durations: ``1m30s``, ``10s``, or a bare number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def _words(value: Any) -> list[str] | None:
    """Compose splits a string command with shell-like rules (no shell runs); a list is used as is."""
    if isinstance(value, list):
        return [str(word) for word in value]
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError:
            return None
    return None


def _env(value: Any) -> dict[str, str]:
    if isinstance(value, Map):
        return {str(key): str(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        pairs = (str(item).partition("=") for item in value)
        return {name: item for name, sep, item in pairs if sep}
    return {}


def check(path: str, document: Map) -> list[Finding]:
    findings: list[Finding] = []
    services = document["services"]
    for name, service in services.items():
        if not isinstance(service, Map):
            continue
        entrypoint = _words(service.get("entrypoint"))
        cmd = _words(service.get("command"))
        if entrypoint is None and cmd is None:
            continue  # the image's own command: the Dockerfile's checks cover it
        command: Command = analyse((entrypoint or []) + (cmd or []))
        key = "entrypoint" if entrypoint is not None and cmd is None else "command"
        line, col = service.where(key)
        init = bool(service.get("init")) or command.init is not None
        if command.shell_text is not None and not command.execs and not command.init_signals_group:
            findings.append(
                finding(
                    "GR001",
                    path,
                    line,
                    col,
                    f"service {name!r} runs {command.shell_text.strip()!r} under sh -c without exec: "
                    "SIGTERM stops at the shell",
                )
            )
        if command.spawns and not init:
            findings.append(
                finding(
                    "GR003",
                    path,
                    line,
                    col,
                    f"service {name!r} starts a background job ('&') without init: true",
                )
            )
        env = _env(service.get("environment"))
        grace = duration(service.get("stop_grace_period", DEFAULT_GRACE))
        needed = needed_grace(command, env, 0.0)
        if grace is not None and needed is not None and grace < needed[0]:
            at = service.where("stop_grace_period") if "stop_grace_period" in service else service.where(key)
            stated = "" if "stop_grace_period" in service else " (the default)"
            findings.append(
                finding(
                    "GR004",
                    path,
                    at[0],
                    at[1],
                    f"service {name!r}: stop_grace_period {grace:g} s{stated} < {needed[0]:g} = {needed[1]}: "
                    "SIGKILL comes before the drain ends",
                )
            )
        if "stop_signal" in service:
            problem = stop_signal_problem(command, str(service["stop_signal"]))
            if problem is not None:
                at = service.where("stop_signal")
                findings.append(
                    finding(
                        "GR011",
                        path,
                        at[0],
                        at[1],
                        f"service {name!r}: stop_signal {service['stop_signal']}: {problem}",
                    )
                )
    return findings
