"""GR012: the server's keep-alive against the idle timeout a balancer's annotation states.

Followed from the Ingress (or a LoadBalancer Service) through the backend Service's selector to the
workloads' containers. ``nginx.ingress.kubernetes.io/proxy-read-timeout`` is the wait for a response,
not the upstream pool's idle time, so it is not used.
"""

from __future__ import annotations

import re

from graceful.doctor._drain import keep_alive
from graceful.doctor._manifests import (
    WORKLOADS,
    Cluster,
    Manifest,
    as_map,
    as_seq,
    config_env,
    container_command,
    container_env,
    labels_match,
    namespace,
)

_ALB_IDLE = re.compile(r"idle_timeout\.timeout_seconds=(\d+)")


def idle_timeouts(cluster: Cluster) -> list[tuple[Manifest, float, str, tuple[int, int], list[str]]]:
    """(object, idle seconds, what states it, where, names of the Services it sends to)."""
    found: list[tuple[Manifest, float, str, tuple[int, int], list[str]]] = []
    for manifest in cluster.of_kind("Ingress", "Service"):
        body = manifest.body
        metadata = as_map(body.get("metadata"))
        annotations = as_map(metadata.get("annotations"))
        if body.get("kind") == "Ingress":
            services = [
                str(as_map(as_map(as_map(path).get("backend")).get("service")).get("name"))
                for rule in as_seq(as_map(body.get("spec")).get("rules"))
                for path in as_seq(as_map(as_map(rule).get("http")).get("paths"))
            ]
            default = as_map(as_map(as_map(body.get("spec")).get("defaultBackend")).get("service")).get(
                "name"
            )
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


def check(cluster: Cluster) -> None:
    for source, idle, what, where, service_names in idle_timeouts(cluster):
        space = namespace(source.body)
        services = [
            manifest
            for manifest in cluster.of_kind("Service")
            if namespace(manifest.body) == space
            and as_map(manifest.body.get("metadata")).get("name") in service_names
        ]
        for service in services:
            selector = as_map(service.body.get("spec")).get("selector")
            for workload in cluster.of_kind(*WORKLOADS):
                if namespace(workload.body) != space:
                    continue
                template = as_map(as_map(workload.body.get("spec")).get("template"))
                if not labels_match(selector, as_map(template.get("metadata")).get("labels")):
                    continue
                for container in as_seq(as_map(template.get("spec")).get("containers")):
                    container = as_map(container)
                    command, _ = container_command(container, cluster.conf_for)
                    value = keep_alive(
                        command, container_env(container) | config_env(command, cluster.conf_for)
                    )
                    if value is not None and value[0] <= idle:
                        cluster.add(
                            "GR012",
                            source.path,
                            where,
                            f"{what} is {idle:g} s but container {container.get('name', '?')!r} of "
                            f"{as_map(workload.body.get('metadata')).get('name', '?')!r} closes idle "
                            f"connections after {value[0]:g} s ({value[1]}): requests on a closing "
                            "connection get 502",
                        )
