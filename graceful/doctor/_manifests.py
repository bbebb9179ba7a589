"""Kubernetes objects as the checks see them: the run's objects indexed by kind, and container facts."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from typing import Any

from graceful.doctor._commands import Command, analyse, split_shell
from graceful.doctor._drain import with_config
from graceful.doctor._findings import Finding
from graceful.doctor._gunicorn_conf import GunicornConf
from graceful.doctor._rules import finding
from graceful.doctor._yaml import Map, Seq

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """One Kubernetes object and the file it came from."""

    path: str
    body: Map


def objects(path: str, documents: list[Any]) -> list[Manifest]:
    """The objects of a file's documents, ``kind: List`` (``kubectl get -o yaml``) unrolled."""
    found: list[Manifest] = []
    for document in documents:
        if not isinstance(document, Map):
            continue
        if document.get("kind") == "List" or str(document.get("kind", "")).endswith("List"):
            items = document.get("items")
            found += objects(path, list(items) if isinstance(items, list) else [])
        elif isinstance(document.get("kind"), str):
            found.append(Manifest(path, document))
    return found


def as_map(value: Any) -> Map:
    return value if isinstance(value, Map) else Map()


def as_seq(value: Any) -> Seq:
    return value if isinstance(value, Seq) else Seq()


def namespace(body: Map) -> str:
    return str(as_map(body.get("metadata")).get("namespace") or "default")


def labels_match(selector: Any, labels: Any) -> bool:
    wanted = (
        as_map(as_map(selector).get("matchLabels")) if "matchLabels" in as_map(selector) else as_map(selector)
    )
    have = as_map(labels)
    return bool(wanted) and all(have.get(key) == value for key, value in wanted.items())


def container_env(container: Map) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in as_seq(container.get("env")):
        item = as_map(item)
        if isinstance(item.get("name"), str) and "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def pre_stop(container: Map) -> tuple[float, Map | None, list[str] | None]:
    """Seconds the preStop hook sleeps, the hook, and its exec command."""
    hook = as_map(as_map(container.get("lifecycle")).get("preStop"))
    if not hook:
        return 0.0, None, None
    sleep = as_map(hook.get("sleep"))
    if isinstance(sleep.get("seconds"), (int, float)):
        return float(sleep["seconds"]), hook, None
    command = [str(word) for word in as_seq(as_map(hook.get("exec")).get("command"))]
    seconds = 0.0
    words = command
    if len(command) >= 3 and command[0].endswith("sh") and command[1] == "-c":
        words = [word for part, _ in split_shell(command[2]) for word in part]
    for index, word in enumerate(words[:-1]):
        if word.endswith("sleep"):
            with contextlib.suppress(ValueError):
                seconds = max(seconds, float(words[index + 1].rstrip("s")))
    return seconds, hook, command


def int_or_percent(value: Any, replicas: int, round_up: bool) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.endswith("%"):
        try:
            share = float(value[:-1]) / 100 * replicas
        except ValueError:
            return None
        return math.ceil(share) if round_up else math.floor(share)
    return None


@dataclasses.dataclass
class Cluster:
    manifests: list[Manifest]
    conf_for: Callable[[str], GunicornConf | None]
    findings: list[Finding] = dataclasses.field(default_factory=list)
    by_kind: dict[str, list[Manifest]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for manifest in self.manifests:
            self.by_kind.setdefault(str(manifest.body.get("kind")), []).append(manifest)

    def of_kind(self, *kinds: str) -> list[Manifest]:
        return [manifest for kind in kinds for manifest in self.by_kind.get(kind, [])]

    def add(self, code: str, path: str, where: tuple[int, int], message: str) -> None:
        self.findings.append(finding(code, path, where[0], where[1], message))


def container_command(container: Map, conf_for: Callable[[str], GunicornConf | None]) -> tuple[Command, bool]:
    """The container's command, and whether it is all known (``command:`` given)."""
    command = [str(word) for word in as_seq(container.get("command"))]
    args = [str(word) for word in as_seq(container.get("args"))]
    analysed = analyse(command + args) if command else analyse(args)
    if analysed.server is not None and analysed.server.config is not None:
        analysed = dataclasses.replace(
            analysed, server=with_config(analysed.server, conf_for(analysed.server.config))
        )
    return analysed, bool(command)


def config_env(command: Command, conf_for: Callable[[str], GunicornConf | None]) -> dict[str, str]:
    """``raw_env`` of the gunicorn config the command names: the master sets it before it forks."""
    if command.server is None or command.server.config is None:
        return {}
    conf = conf_for(command.server.config)
    return conf.env() if conf is not None else {}
