"""In-flight counting is exact with a real uvicorn server, however a request ends."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn
from websockets.sync.client import connect as ws_connect

from graceful import Lifecycle, Settings
from graceful.asgi import GracefulMiddleware
from tests.apps import starlette_app
from tests.conftest import free_port


class InFlightWatch:
    """Samples the in-flight count in a thread, to catch a negative value between the assertions."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self.lowest = 0
        self.highest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for _ in range(600_000):  # bounded: at most ~10 minutes of sampling
            if self._stop.wait(0.001):
                return
            value = self.lifecycle.local_in_flight
            self.lowest = min(self.lowest, value)
            self.highest = max(self.highest, value)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Running:
    def __init__(self, server: uvicorn.Server, lifecycle: Lifecycle, port: int, watch: InFlightWatch) -> None:
        self.server, self.lifecycle, self.port, self.watch = server, lifecycle, port, watch
        self.url = f"http://127.0.0.1:{port}"

    def settle(self, timeout: float = 5.0) -> None:
        wait_for(lambda: self.lifecycle.local_in_flight == 0, timeout, "in-flight back to 0")


@pytest.fixture
def running() -> Iterator[Running]:
    """A real uvicorn server (h11, lifespan on) in a thread, serving the test app on 127.0.0.1."""
    lifecycle = Lifecycle(Settings(drain_delay=0, chain_server_signals=False))
    port = free_port()
    app = GracefulMiddleware(starlette_app, lifecycle=lifecycle)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "uvicorn to start")
    watch = InFlightWatch(lifecycle)
    try:
        yield Running(server, lifecycle, port, watch)
    finally:
        server.should_exit = True
        thread.join(10)
        watch.stop()
        lifecycle.close()
    assert watch.lowest == 0, f"in-flight went negative: {watch.lowest}"


def test_plain_requests_and_exceptions(running: Running) -> None:
    """Successful and failing requests both leave the count at 0, never below."""
    # uvicorn closes a connection whose app raised (after sending the 500): one connection each.
    with httpx.Client(base_url=running.url, headers={"connection": "close"}) as client:
        for _ in range(20):
            assert client.get("/ok").status_code == 200
            assert client.get("/boom").status_code == 500
    running.settle()
    assert running.lifecycle.snapshot()["requests"] == 40


def test_streamed_response_counts_until_the_last_chunk(running: Running) -> None:
    """A streamed response is in flight until its body is complete."""
    with (
        httpx.Client(base_url=running.url) as client,
        client.stream("GET", "/stream?chunks=10&interval=0.05") as response,
    ):
        lines = response.iter_lines()
        assert next(lines) == "0"
        assert running.lifecycle.local_in_flight == 1
        assert list(lines)[-1] == "9"
    running.settle()


def test_background_task_counts_until_it_is_done(running: Running) -> None:
    """A response with a background task stays in flight until the task finished (0.3 s)."""
    with httpx.Client(base_url=running.url) as client:
        started = time.monotonic()
        assert client.get("/background").text == "queued"
        assert running.lifecycle.local_in_flight == 1, "the background task still runs"
    running.settle()
    assert time.monotonic() - started >= 0.25


def test_client_disconnects_mid_stream_and_mid_request(running: Running) -> None:
    """A client that goes away mid-stream or mid-request is not counted forever."""
    for path in ("/stream?chunks=200&interval=0.02", "/hang?seconds=0.5"):
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_for(lambda: running.lifecycle.local_in_flight == 1, 5, "request to start")
        sock.close()
        running.settle()


def test_cancellation_at_the_graceful_timeout(running: Running) -> None:
    """Requests cancelled by uvicorn when its graceful-shutdown timeout expires are uncounted."""
    clients = [socket.create_connection(("127.0.0.1", running.port), timeout=5) for _ in range(3)]
    for sock in clients:
        sock.sendall(b"GET /hang?seconds=30 HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: running.lifecycle.local_in_flight == 3, 5, "3 requests in flight")
    running.server.should_exit = True  # uvicorn cancels them after timeout_graceful_shutdown=1
    running.settle(timeout=8)
    for sock in clients:
        sock.close()


def test_websockets_count_from_connect_to_close(running: Running) -> None:
    """A websocket is in flight while open, whether it closes cleanly or its TCP connection drops."""
    ws_url = f"ws://127.0.0.1:{running.port}/ws"
    with ws_connect(ws_url, open_timeout=5) as websocket:
        websocket.send("hi")
        assert websocket.recv(timeout=5) == "hi"
        assert running.lifecycle.local_in_flight == 1
        assert running.lifecycle.snapshot()["websockets"] == 1
    running.settle()
    with ws_connect(ws_url, open_timeout=5, close_timeout=1) as dropped:
        wait_for(lambda: running.lifecycle.local_in_flight == 1, 5, "websocket open")
        dropped.socket.shutdown(socket.SHUT_RDWR)  # the TCP connection drops: no close frame
        running.settle()
    assert running.lifecycle.snapshot()["websockets"] == 0


def test_concurrent_mixed_load_returns_to_zero(running: Running) -> None:
    """Many concurrent requests of every kind leave the count exactly at 0."""
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            headers = {"connection": "close"}  # /boom ends its connection (see above)
            with httpx.Client(base_url=running.url, timeout=10, headers=headers) as client:
                for step in range(15):
                    path = ("/ok", "/boom", "/stream?chunks=3&interval=0.01", "/background")[
                        (index + step) % 4
                    ]
                    client.get(path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    running.settle()
    assert running.watch.highest >= 2, "the load was concurrent"


def test_chaining_refused_outside_the_main_thread_says_why(caplog: pytest.LogCaptureFixture) -> None:
    """When the middleware cannot take over SIGTERM it logs one warning naming the reason and the fix."""
    lifecycle = Lifecycle(Settings(drain_delay=1))
    config = uvicorn.Config(
        GracefulMiddleware(starlette_app, lifecycle=lifecycle),
        host="127.0.0.1",
        port=free_port(),
        lifespan="on",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    with caplog.at_level("WARNING", logger="graceful"):
        thread.start()
        try:
            wait_for(lambda: server.started, 10, "uvicorn to start")
        finally:
            server.should_exit = True
            thread.join(10)
            lifecycle.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "graceful" and r.levelname == "WARNING"]
    assert len(warnings) == 1 and "outside the main thread" in warnings[0]
    assert "graceful-run" in warnings[0] and lifecycle.board.owner_pid == 0
