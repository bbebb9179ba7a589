"""Kubernetes workloads: containers' commands, probes, grace period, preStop; rollout strategy, PDBs."""

from __future__ import annotations

from collections.abc import Callable

from graceful.doctor import _balancers
from graceful.doctor._commands import Command, kill_signal, split_shell
from graceful.doctor._drain import needed_grace, signal_name, stop_signal_problem, uses_graceful
from graceful.doctor._findings import Finding
from graceful.doctor._gunicorn_conf import GunicornConf
from graceful.doctor._manifests import (
    WORKLOADS,
    Cluster,
    Manifest,
    as_map,
    as_seq,
    config_env,
    container_command,
    container_env,
    int_or_percent,
    labels_match,
    namespace,
    objects,
    pre_stop,
)
from graceful.doctor._yaml import Map

__all__ = ["Manifest", "check", "objects"]


def _check_container(
    cluster: Cluster, manifest: Manifest, pod: Map, container: Map, where: tuple[int, int]
) -> None:
    path = manifest.path
    name = container.get("name", "?")
    command, known = container_command(container, cluster.conf_for)
    env = container_env(container) | config_env(command, cluster.conf_for)
    sleep, hook, hook_command = pre_stop(container)
    graceful = uses_graceful(command, env)
    serves = bool(as_seq(container.get("ports"))) or command.server is not None
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
    readiness = as_map(container.get("readinessProbe"))
    liveness = as_map(container.get("livenessProbe"))
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
    ready_get, live_get = as_map(readiness.get("httpGet")), as_map(liveness.get("httpGet"))
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
        _check_kill(cluster, path, container, command, hook_command, env)


def _check_kill(
    cluster: Cluster, path: str, container: Map, command: Command, hook: list[str], env: dict[str, str]
) -> None:
    """GR011 for a preStop that signals the server instead of waiting."""
    words = hook
    if len(hook) >= 3 and hook[0].endswith("sh") and hook[1] == "-c":
        words = [word for part, _ in split_shell(hook[2]) for word in part]
    signal = kill_signal(words)
    if signal is None:
        return
    problem = stop_signal_problem(command, signal)
    if problem is None and signal_name(signal) == "TERM" and not uses_graceful(command, env):
        problem = "the server shuts down before endpoints are updated, which is what preStop was to wait for"
    if problem is not None:
        cluster.add(
            "GR011",
            path,
            as_map(container.get("lifecycle")).where("preStop"),
            f"container {container.get('name', '?')!r}: preStop sends SIG{signal_name(signal)}: {problem}",
        )


def _check_workload(cluster: Cluster, manifest: Manifest) -> None:
    body = manifest.body
    kind = body.get("kind")
    spec = as_map(body.get("spec"))
    template = as_map(spec.get("template"))
    pod = as_map(template.get("spec"))
    labels = as_map(template.get("metadata")).get("labels")
    containers = as_seq(pod.get("containers"))
    for index, container in enumerate(containers):
        if isinstance(container, Map):
            _check_container(cluster, manifest, pod, container, containers.where(index))
    if kind == "DaemonSet":
        return
    replicas_value = spec.get("replicas", 1)
    replicas = replicas_value if isinstance(replicas_value, int) else 1
    name = as_map(body.get("metadata")).get("name", "?")
    for other in cluster.of_kind("HorizontalPodAutoscaler"):
        target = as_map(as_map(other.body.get("spec")).get("scaleTargetRef"))
        if target.get("name") == name and target.get("kind") == kind:
            minimum = as_map(other.body.get("spec")).get("minReplicas", 1)
            replicas = minimum if isinstance(minimum, int) else replicas
    strategy_key = "strategy" if kind == "Deployment" else "updateStrategy"
    strategy = as_map(spec.get(strategy_key))
    if strategy.get("type") == "Recreate":
        cluster.add(
            "GR009",
            manifest.path,
            strategy.where("type"),
            f"{kind} {name!r}: strategy Recreate stops all {replicas} replicas before starting new ones",
        )
    elif kind == "Deployment" and replicas >= 1:
        rolling = as_map(strategy.get("rollingUpdate"))
        unavailable = int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
        if unavailable is not None and unavailable >= replicas:
            cluster.add(
                "GR009",
                manifest.path,
                rolling.where("maxUnavailable") if "maxUnavailable" in rolling else strategy.where("type"),
                f"Deployment {name!r}: maxUnavailable {rolling.get('maxUnavailable')} resolves to "
                f"{unavailable} of {replicas} replicas: the rollout may stop every ready pod",
            )
    if replicas == 1:
        space = namespace(body)
        covered = any(
            namespace(other.body) == space
            and labels_match(as_map(other.body.get("spec")).get("selector"), labels)
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


def check(manifests: list[Manifest], conf_for: Callable[[str], GunicornConf | None]) -> list[Finding]:
    """Findings over every Kubernetes object of the run (PDBs and Services may be in other files)."""
    cluster = Cluster(manifests, conf_for)
    for manifest in cluster.of_kind(*WORKLOADS):
        _check_workload(cluster, manifest)
    _balancers.check(cluster)
    return cluster.findings
