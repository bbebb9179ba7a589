"""Kubernetes manifests: workloads' containers, probes, grace period, rollout strategy, PDBs, ingresses."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from graceful.doctor._commands import Command, analyse, split_shell
from graceful.doctor._drain import (
    keep_alive,
    needed_grace,
    signal_name,
    stop_signal_problem,
    uses_graceful,
    with_config,
)
from graceful.doctor._findings import Finding
from graceful.doctor._gunicorn_conf import GunicornConf
from graceful.doctor._rules import finding
from graceful.doctor._yaml import Map, Seq

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
_ALB_IDLE = re.compile(r"idle_timeout\.timeout_seconds=(\d+)")


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


def _map(value: Any) -> Map:
    return value if isinstance(value, Map) else Map()


def _seq(value: Any) -> Seq:
    return value if isinstance(value, Seq) else Seq()


def _namespace(body: Map) -> str:
    return str(_map(body.get("metadata")).get("namespace") or "default")


def _labels_match(selector: Any, labels: Any) -> bool:
    wanted = _map(_map(selector).get("matchLabels")) if "matchLabels" in _map(selector) else _map(selector)
    have = _map(labels)
    return bool(wanted) and all(have.get(key) == value for key, value in wanted.items())


def _env(container: Map) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in _seq(container.get("env")):
        item = _map(item)
        if isinstance(item.get("name"), str) and "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def _pre_stop(container: Map) -> tuple[float, Map | None, list[str] | None]:
    """Seconds the preStop hook sleeps, the hook, and its exec command."""
    hook = _map(_map(container.get("lifecycle")).get("preStop"))
    if not hook:
        return 0.0, None, None
    sleep = _map(hook.get("sleep"))
    if isinstance(sleep.get("seconds"), (int, float)):
        return float(sleep["seconds"]), hook, None
    command = [str(word) for word in _seq(_map(hook.get("exec")).get("command"))]
    seconds = 0.0
    words = command
    if len(command) >= 3 and command[0].endswith("sh") and command[1] == "-c":
        words = [word for part, _ in split_shell(command[2]) for word in part]
    for index, word in enumerate(words[:-1]):
        if word.endswith("sleep"):
            with contextlib.suppress(ValueError):
                seconds = max(seconds, float(words[index + 1].rstrip("s")))
    return seconds, hook, command


def _int_or_percent(value: Any, replicas: int, round_up: bool) -> int | None:
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
class _Cluster:
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


def _command(container: Map, conf_for: Callable[[str], GunicornConf | None]) -> tuple[Command, bool]:
    """The container's command, and whether it is all known (``command:`` given)."""
    command = [str(word) for word in _seq(container.get("command"))]
    args = [str(word) for word in _seq(container.get("args"))]
    analysed = analyse(command + args) if command else analyse(args)
    if analysed.server is not None and analysed.server.config is not None:
        analysed = dataclasses.replace(
            analysed, server=with_config(analysed.server, conf_for(analysed.server.config))
        )
    return analysed, bool(command)


def _check_container(
    cluster: _Cluster, manifest: Manifest, pod: Map, container: Map, where: tuple[int, int]
) -> None:
    path = manifest.path
    name = container.get("name", "?")
    command, known = _command(container, cluster.conf_for)
    env = _env(container)
    sleep, hook, hook_command = _pre_stop(container)
    graceful = uses_graceful(command, env)
    serves = bool(_seq(container.get("ports"))) or command.server is not None
    # GR001: a shell in `command:` keeps PID 1 (shareProcessNamespace does not help: the kubelet
    # still signals the shell, which dies and leaves the server to the runtime's SIGKILL).
    if known and command.shell_text is not None and not command.execs and not command.init_signals_group:
        cluster.add(
            "GR001",
            path,
            container.where("command"),
            f"container {name!r} runs {command.shell_text.strip()!r} under sh -c without exec or an init: "
            "SIGTERM stops at the shell",
        )
    if known and command.spawns and command.init is None and not pod.get("shareProcessNamespace"):
        cluster.add(
            "GR003",
            path,
            container.where("command"),
            f"container {name!r} starts a background job ('&') with no init and no shareProcessNamespace",
        )
    grace_value = pod.get("terminationGracePeriodSeconds", 30)
    grace = float(grace_value) if isinstance(grace_value, (int, float)) else 30.0
    needed = needed_grace(command, env, sleep)
    if needed is not None and grace < needed[0]:
        at = pod.where("terminationGracePeriodSeconds") if "terminationGracePeriodSeconds" in pod else where
        stated = "" if "terminationGracePeriodSeconds" in pod else " (the default)"
        cluster.add(
            "GR004",
            path,
            at,
            f"terminationGracePeriodSeconds {grace:g}{stated} < {needed[0]:g} = {needed[1]} "
            f"(container {name!r}): SIGKILL comes before the drain ends",
        )
    readiness = _map(container.get("readinessProbe"))
    liveness = _map(container.get("livenessProbe"))
    if serves and not readiness:
        cluster.add(
            "GR005",
            path,
            where,
            f"container {name!r} has no readinessProbe: in rotation before it serves and while it drains",
        )
    if "tcpSocket" in readiness:
        cluster.add(
            "GR006",
            path,
            container.where("readinessProbe"),
            f"container {name!r}: tcpSocket readiness passes while the server drains",
        )
    ready_get, live_get = _map(readiness.get("httpGet")), _map(liveness.get("httpGet"))
    if (
        ready_get
        and live_get
        and (ready_get.get("path", "/"), str(ready_get.get("port")))
        == (
            live_get.get("path", "/"),
            str(live_get.get("port")),
        )
    ):
        cluster.add(
            "GR007",
            path,
            container.where("livenessProbe"),
            f"container {name!r}: readiness and liveness both probe {ready_get.get('path', '/')}: "
            "the drain fails liveness too and the pod is restarted",
        )
    drains = graceful or sleep > 0 or (hook is not None and "httpGet" in hook)
    # Only with `command:` given: args alone may run under the image's ENTRYPOINT (graceful-run).
    if known and command.server is not None and not drains:
        cluster.add(
            "GR008",
            path,
            container.where("command"),
            f"container {name!r}: {command.server.kind} closes its listener at SIGTERM and has no "
            "graceful and no preStop sleep: requests routed during endpoint propagation are refused",
        )
    if hook_command is not None:
        _check_kill(cluster, path, container, command, hook_command, name)


def _check_kill(
    cluster: _Cluster, path: str, container: Map, command: Command, hook: list[str], name: Any
) -> None:
    words = hook
    if len(hook) >= 3 and hook[0].endswith("sh") and hook[1] == "-c":
        words = [word for part, _ in split_shell(hook[2]) for word in part]
    for index, word in enumerate(words):
        if word.rsplit("/", 1)[-1] not in ("kill", "pkill", "killall"):
            continue
        signal = "TERM"
        for option in words[index + 1 :]:
            if option.startswith("-") and option not in ("-s", "-n", "-f"):
                signal = option.lstrip("-")
                break
            if not option.startswith("-"):
                break
        if option_s := next((words[i + 1] for i in range(index, len(words) - 1) if words[i] == "-s"), None):
            signal = option_s
        problem = stop_signal_problem(command, signal)
        if signal_name(signal) == "TERM" and problem is None and not uses_graceful(command, {}):
            problem = "SIGTERM from preStop starts the server's shutdown before endpoints are updated"
        if problem is not None:
            where = _map(container.get("lifecycle")).where("preStop")
            cluster.add("GR011", path, where, f"container {name!r}: preStop runs {word} -{signal}: {problem}")
        return


def _check_workload(cluster: _Cluster, manifest: Manifest) -> None:
    body = manifest.body
    kind = body.get("kind")
    spec = _map(body.get("spec"))
    template = _map(spec.get("template"))
    pod = _map(template.get("spec"))
    labels = _map(template.get("metadata")).get("labels")
    containers = _seq(pod.get("containers"))
    for index, container in enumerate(containers):
        if isinstance(container, Map):
            _check_container(cluster, manifest, pod, container, containers.where(index))
    if kind == "DaemonSet":
        return
    replicas_value = spec.get("replicas", 1)
    replicas = replicas_value if isinstance(replicas_value, int) else 1
    name = _map(body.get("metadata")).get("name", "?")
    for other in cluster.of_kind("HorizontalPodAutoscaler"):
        target = _map(_map(other.body.get("spec")).get("scaleTargetRef"))
        if target.get("name") == name and target.get("kind") == kind:
            minimum = _map(other.body.get("spec")).get("minReplicas", 1)
            replicas = minimum if isinstance(minimum, int) else replicas
    strategy_key = "strategy" if kind == "Deployment" else "updateStrategy"
    strategy = _map(spec.get(strategy_key))
    if strategy.get("type") == "Recreate":
        cluster.add(
            "GR009",
            manifest.path,
            strategy.where("type"),
            f"{kind} {name!r}: strategy Recreate stops all {replicas} replicas before starting new ones",
        )
    elif kind == "Deployment" and replicas >= 1:
        rolling = _map(strategy.get("rollingUpdate"))
        unavailable = _int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
        if unavailable is not None and unavailable >= replicas:
            cluster.add(
                "GR009",
                manifest.path,
                rolling.where("maxUnavailable") if "maxUnavailable" in rolling else strategy.where("type"),
                f"Deployment {name!r}: maxUnavailable {rolling.get('maxUnavailable')} resolves to "
                f"{unavailable} of {replicas} replicas: the rollout may stop every ready pod",
            )
    if replicas == 1:
        namespace = _namespace(body)
        covered = any(
            _namespace(other.body) == namespace
            and _labels_match(_map(other.body.get("spec")).get("selector"), labels)
            for other in cluster.of_kind("PodDisruptionBudget")
        )
        if not covered:
            at = spec.where("replicas") if "replicas" in spec else (body.line, body.col)
            cluster.add(
                "GR010",
                manifest.path,
                at,
                f"{kind} {name!r} has 1 replica and no PodDisruptionBudget selects it",
            )


def _idle_timeouts(cluster: _Cluster) -> list[tuple[Manifest, float, str, tuple[int, int], list[str]]]:
    """(object, idle seconds, what states it, where, names of the Services it sends to)."""
    found: list[tuple[Manifest, float, str, tuple[int, int], list[str]]] = []
    for manifest in cluster.of_kind("Ingress", "Service"):
        body = manifest.body
        metadata = _map(body.get("metadata"))
        annotations = _map(metadata.get("annotations"))
        if body.get("kind") == "Ingress":
            services = [
                str(_map(_map(_map(path).get("backend")).get("service")).get("name"))
                for rule in _seq(_map(body.get("spec")).get("rules"))
                for path in _seq(_map(_map(rule).get("http")).get("paths"))
            ]
            default = _map(_map(_map(body.get("spec")).get("defaultBackend")).get("service")).get("name")
            services += [str(default)] if default else []
            key = "alb.ingress.kubernetes.io/load-balancer-attributes"
            match = _ALB_IDLE.search(str(annotations.get(key, "")))
            if match:
                found.append(
                    (
                        manifest,
                        float(match.group(1)),
                        "the ALB idle timeout",
                        annotations.where(key),
                        services,
                    )
                )
            key = "nginx.ingress.kubernetes.io/upstream-keepalive-timeout"
            if key in annotations:
                value = str(annotations[key]).rstrip("s")
                if value.isdigit():
                    found.append(
                        (
                            manifest,
                            float(value),
                            "nginx's upstream keepalive",
                            annotations.where(key),
                            services,
                        )
                    )
        elif body.get("kind") == "Service":
            key = "service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout"
            if str(annotations.get(key, "")).isdigit():
                name = str(metadata.get("name"))
                found.append(
                    (
                        manifest,
                        float(annotations[key]),
                        "the ELB idle timeout",
                        annotations.where(key),
                        [name],
                    )
                )
    return found


def _check_keep_alive(cluster: _Cluster) -> None:
    for source, idle, what, where, service_names in _idle_timeouts(cluster):
        namespace = _namespace(source.body)
        services = [
            manifest
            for manifest in cluster.of_kind("Service")
            if _namespace(manifest.body) == namespace
            and _map(manifest.body.get("metadata")).get("name") in service_names
        ]
        for service in services:
            selector = _map(service.body.get("spec")).get("selector")
            for workload in cluster.of_kind(*WORKLOADS):
                if _namespace(workload.body) != namespace:
                    continue
                template = _map(_map(workload.body.get("spec")).get("template"))
                if not _labels_match(selector, _map(template.get("metadata")).get("labels")):
                    continue
                for container in _seq(_map(template.get("spec")).get("containers")):
                    container = _map(container)
                    command, _ = _command(container, cluster.conf_for)
                    value = keep_alive(command, _env(container))
                    if value is not None and value[0] <= idle:
                        cluster.add(
                            "GR012",
                            source.path,
                            where,
                            f"{what} is {idle:g} s but container {container.get('name', '?')!r} of "
                            f"{_map(workload.body.get('metadata')).get('name', '?')!r} closes idle "
                            f"connections after {value[0]:g} s ({value[1]}): requests on a closing "
                            "connection get 502",
                        )


def check(manifests: list[Manifest], conf_for: Callable[[str], GunicornConf | None]) -> list[Finding]:
    """Findings over every Kubernetes object of the run (PDBs and Services may be in other files)."""
    cluster = _Cluster(manifests, conf_for)
    for manifest in cluster.of_kind(*WORKLOADS):
        _check_workload(cluster, manifest)
    _check_keep_alive(cluster)
    return cluster.findings
