"""The nginx balancer of the rollout harness: endpoint changes and what a reload does to clients."""

from __future__ import annotations

import contextlib
import http.server
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.cluster import LOCALHOST
from tests.e2e.nginx import NginxBalancer

pytestmark = [pytest.mark.e2e, pytest.mark.nginx, pytest.mark.timeout(60)]


class _NameHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the server's name, keep-alive (HTTP/1.1), as a pod would."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def pod(name: str) -> Iterator[int]:
    """A real HTTP server on 127.0.0.1 that says its name; yields its port."""
    server = http.server.ThreadingHTTPServer((LOCALHOST, 0), _NameHandler)
    server.name = name  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def nginx(**options: bool) -> Iterator[NginxBalancer]:
    with tempfile.TemporaryDirectory(prefix="graceful-nginx-") as workdir:
        balancer = NginxBalancer(Path(workdir), slots=4, **options)
        balancer.start()
        try:
            yield balancer
        finally:
            balancer.stop()


def answers(balancer: NginxBalancer, count: int) -> list[str]:
    """``count`` requests, each on a new connection, as the rollout's clients make them behind nginx."""
    url = f"http://{LOCALHOST}:{balancer.port}/"
    replies = []
    for _ in range(count):
        response = httpx.get(url, headers={"connection": "close"}, timeout=5.0, trust_env=False)
        replies.append(response.text if response.status_code == 200 else str(response.status_code))
    return replies


def test_endpoint_changes_are_in_effect_when_add_and_remove_return() -> None:
    """The first request after add() or remove() returns already sees the new upstream: no reload race in the harness."""
    with pod("a") as port_a, pod("b") as port_b, nginx() as balancer:
        assert answers(balancer, 1) == ["502"]  # no endpoints: the placeholder server is down
        slot_a, slot_b = balancer.take_slot(), balancer.take_slot()
        balancer.add(slot_a, port_a)
        assert answers(balancer, 3) == ["a", "a", "a"]
        balancer.add(slot_b, port_b)
        assert sorted(answers(balancer, 4)) == ["a", "a", "b", "b"]  # round robin over both
        balancer.remove(slot_a)
        assert answers(balancer, 6) == ["b"] * 6
        balancer.remove(slot_b)
        assert answers(balancer, 1) == ["502"]


def _get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    reply = b""
    while not reply.endswith(b"\r\n\r\na") and len(reply) < 65536:  # the body is one byte: "a"
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """The peer closes the connection within ``seconds`` (EOF), without sending anything more."""
    sock.settimeout(seconds)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False


def test_reload_closes_idle_client_keepalive_connections() -> None:
    """A reload closes every idle client keep-alive connection: why the rollout's clients reach nginx without keep-alive."""
    with pod("a") as port_a, pod("b") as port_b, nginx(client_keepalive=True) as balancer:
        balancer.add(balancer.take_slot(), port_a)
        with socket.create_connection((LOCALHOST, balancer.port), timeout=5.0) as sock:
            reply = _get(sock)
            assert b" 200 " in reply.split(b"\r\n")[0] and b"connection: keep-alive" in reply.lower()
            balancer.add(balancer.take_slot(), port_b)  # any endpoint change is a reload
            # The old worker closed the connection: a client sending its next request on it now
            # races that close (a reset or an empty reply), whatever the pods do.
            assert _closed_within(sock, 5.0), "the idle connection survived the reload"


def test_clients_get_connection_close_by_default() -> None:
    """Without client keep-alive (the rollout's setting) every response closes its connection."""
    with pod("a") as port_a, nginx() as balancer:
        balancer.add(balancer.take_slot(), port_a)
        with socket.create_connection((LOCALHOST, balancer.port), timeout=5.0) as sock:
            reply = _get(sock)
            assert b"connection: close" in reply.lower()
            assert _closed_within(sock, 5.0)
