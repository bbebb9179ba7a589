"""In-flight counting of the WSGI middleware under a real gunicorn ThreadWorker: exact after streams,
file_wrapper responses, exceptions and clients that go away mid-response."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.server_process import ServerProcess, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One gunicorn with two threaded graceful workers serving the plain (unwrapped) test WSGI app."""
    argv = [
        "{python}",
        "-m",
        "gunicorn",
        "-k",
        "graceful.gunicorn.ThreadWorker",
        "-w",
        "2",
        "--threads",
        "4",
        "-b",
        "127.0.0.1:{port}",
        "--no-control-socket",
        "tests.test_wsgi_apps:app",
    ]
    running = ServerProcess(argv, env={"GRACEFUL_DRAIN_DELAY": "0"})
    try:
        running.wait_ready()
        yield running
    finally:
        running.close()


def figures(server: ServerProcess) -> dict[str, int]:
    data = json.loads(server.get("/healthz").text)
    return {"in_flight": data["in_flight"], "requests": data["requests"]}


def settled(server: ServerProcess, requests: int) -> None:
    """Wait (bounded) until nothing is in flight and exactly ``requests`` were counted."""
    wait_for(
        lambda: figures(server) == {"in_flight": 0, "requests": requests},
        5,
        f"in_flight 0 and {requests} requests",
    )


def test_streamed_response_counts_until_its_last_chunk(server: ServerProcess) -> None:
    """A streamed body is in flight while it streams and not after."""
    before = figures(server)["requests"]
    with httpx.stream("GET", server.url + "/stream?chunks=30&interval=0.1", timeout=5) as response:
        chunks = response.iter_bytes()
        next(chunks)
        # /healthz may be answered by the other worker, which sees this one's count within 50 ms.
        wait_for(lambda: figures(server)["in_flight"] == 1, 2, "the stream to be in flight")
        body = b"".join(chunks)
    assert body.endswith(b"end\n")
    settled(server, before + 1)


def test_file_wrapper_response_counts_once(server: ServerProcess) -> None:
    """A wsgi.file_wrapper body (gunicorn's sendfile path) is served whole and ends its count."""
    before = figures(server)["requests"]
    response = httpx.get(server.url + "/file", timeout=5)
    assert response.status_code == 200 and len(response.content) == 10_000
    settled(server, before + 1)


@pytest.mark.parametrize("path", ["/boom", "/boom-body"])
def test_exceptions_leave_the_count_exact(server: ServerProcess, path: str) -> None:
    """An app raising at call time or mid-body is counted once and not left in flight."""
    before = figures(server)["requests"]
    try:
        status: int | None = httpx.get(server.url + path, timeout=5).status_code
    except httpx.HTTPError:
        status = None  # the body was cut after the headers: the connection is closed
    assert status in (500, 200, None)
    settled(server, before + 1)


def test_client_that_goes_away_mid_stream_leaves_the_count_exact(server: ServerProcess) -> None:
    """A client closing its connection in the middle of a long stream: the server's write fails, close() ends the count."""
    before = figures(server)["requests"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /stream?chunks=400&interval=0.02 HTTP/1.1\r\nHost: test\r\n\r\n")
        received = b""
        deadline = time.monotonic() + 5
        while b"\n3\n" not in received and time.monotonic() < deadline:
            received += sock.recv(4096)
        wait_for(lambda: figures(server)["in_flight"] == 1, 2, "the stream to be in flight")
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )  # RST on close
    settled(server, before + 1)
