"""graceful's keep_alive on the real servers: applied unless the server's own option is given.

A server that closes an idle keep-alive connection before the pool in front of it does races that
pool's next request (a 502 behind nginx or Envoy, a reset behind an L4 balancer), so the server
integrations keep idle connections for ``keep_alive`` (75 s), not uvicorn's 5 s or gunicorn's 2 s.
Each test measures, on a raw socket, when the server closes a connection left idle after one
response.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.server_process import ServerProcess, wait_for
from tests.test_gunicorn import gunicorn_argv
from tests.test_uvicorn_integration import GRACEFUL_UVICORN

pytestmark = pytest.mark.timeout(60)

REQUEST = b"GET /fast HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def start(servers: list[ServerProcess], argv: list[str], **env: str) -> ServerProcess:
    server = ServerProcess(argv, env={"GRACEFUL_DRAIN_DELAY": "0", **env})
    servers.append(server)
    server.wait_ready()
    return server


def read_response(sock: socket.socket) -> bytes:
    """One whole response (these apps send Content-Length), bounded by the socket's timeout."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside the body"
        body += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return head


def idle_close_seconds(server: ServerProcess, limit: float) -> float | None:
    """Seconds from the end of a response until the server closes the idle connection (None: not
    within ``limit``; then one more request on it must still be answered)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=limit + 2) as sock:
        sock.sendall(REQUEST)
        head = read_response(sock)
        assert b"connection: close" not in head.lower()
        answered = time.monotonic()
        sock.settimeout(limit)
        try:
            leftover = sock.recv(1)
        except TimeoutError:
            sock.settimeout(5)
            sock.sendall(REQUEST)  # still open: it serves the next request
            read_response(sock)
            return None
        except ConnectionResetError:
            leftover = b""
        assert leftover == b"", f"unexpected bytes on an idle connection: {leftover!r}"
        return time.monotonic() - answered


def test_graceful_uvicorn_keeps_idle_connections_longer_than_uvicorns_5_s(
    started: list[ServerProcess],
) -> None:
    """`python -m graceful.uvicorn` keeps an idle keep-alive connection past uvicorn's 5 s default."""
    server = start(started, GRACEFUL_UVICORN)
    assert idle_close_seconds(server, limit=6.5) is None


def test_graceful_uvicorn_applies_graceful_keep_alive(started: list[ServerProcess]) -> None:
    """GRACEFUL_KEEP_ALIVE=2 closes an idle connection after about 2 s (not uvicorn's 5 s)."""
    server = start(started, GRACEFUL_UVICORN, GRACEFUL_KEEP_ALIVE="2")
    closed = idle_close_seconds(server, limit=8)
    assert closed is not None and 1.8 <= closed <= 3.5, closed


def test_uvicorns_own_timeout_keep_alive_wins(started: list[ServerProcess]) -> None:
    """An explicit --timeout-keep-alive is kept, whatever GRACEFUL_KEEP_ALIVE says."""
    server = start(started, [*GRACEFUL_UVICORN, "--timeout-keep-alive", "1"], GRACEFUL_KEEP_ALIVE="4")
    closed = idle_close_seconds(server, limit=8)
    assert closed is not None and 0.8 <= closed <= 2.5, closed


@pytest.mark.parametrize("kind", ["thread", "uvicorn"])
def test_gunicorn_workers_apply_graceful_keep_alive(started: list[ServerProcess], kind: str) -> None:
    """The gunicorn worker classes keep idle connections for GRACEFUL_KEEP_ALIVE=4 s, not gunicorn's 2 s."""
    server = start(started, gunicorn_argv(kind), GRACEFUL_KEEP_ALIVE="4")
    closed = idle_close_seconds(server, limit=9)
    # gthread looks for expired connections after each poll (at most 1 s apart).
    assert closed is not None and 3.8 <= closed <= 5.5, closed


@pytest.mark.parametrize("kind", ["thread", "uvicorn"])
def test_gunicorns_own_keep_alive_wins(started: list[ServerProcess], kind: str) -> None:
    """An explicit --keep-alive is kept, whatever GRACEFUL_KEEP_ALIVE says."""
    server = start(started, gunicorn_argv(kind, "--keep-alive", "1"), GRACEFUL_KEEP_ALIVE="6")
    closed = idle_close_seconds(server, limit=9)
    assert closed is not None and 0.8 <= closed <= 2.5, closed


def refused(port: int) -> bool:
    """Is the listener closed? A connect that races the close is reset (seen in CI): not yet, ask again."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    return False


@pytest.mark.parametrize(
    "argv",
    [GRACEFUL_UVICORN, gunicorn_argv("uvicorn"), gunicorn_argv("thread")],
    ids=["graceful.uvicorn", "gunicorn-uvicorn-worker", "gunicorn-thread-worker"],
)
def test_request_on_an_idle_connection_as_the_stop_begins_is_answered(
    started: list[ServerProcess], argv: list[str]
) -> None:
    """Once the listener is closed, a request on a kept-alive connection is still answered, with
    Connection: close, during the linger: not cut as uvicorn's own shutdown would cut it."""
    server = start(started, argv)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(REQUEST)
        read_response(sock)  # the connection is now idle, between two requests
        server.signal(signal.SIGTERM)  # drain delay 0: the stop begins at once
        wait_for(lambda: refused(server.port), 5, "the listener to close")
        sock.sendall(REQUEST)
        head = read_response(sock)
        assert b"connection: close" in head.lower(), head
        assert sock.recv(1) == b"", "the server closes after answering"
    assert server.wait_exit(10) == 0


def test_request_on_an_idle_connection_when_max_requests_ends_graceful_uvicorn(
    started: list[ServerProcess],
) -> None:
    """uvicorn's --limit-max-requests stops the server without any signal (the phase is not moved):
    a request on a kept-alive connection during the linger still gets Connection: close, so the
    client does not reuse a connection the linger is about to close."""
    server = start(started, [*GRACEFUL_UVICORN, "--limit-max-requests", "2"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(REQUEST)
        read_response(sock)  # request 1: the connection is now idle, between two requests
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as other:
            other.sendall(REQUEST)
            read_response(other)  # request 2: the limit, the stop begins
        wait_for(lambda: refused(server.port), 5, "the listener to close")
        sock.sendall(REQUEST)
        head = read_response(sock)
        assert b"connection: close" in head.lower(), head
        assert sock.recv(1) == b"", "the server closes after answering"
    assert server.wait_exit(10) == 0
