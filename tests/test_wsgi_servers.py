"""Connection: close while draining, with the real WSGI servers that treat an app's header differently.

PEP 3333 forbids hop-by-hop headers from apps: waitress answers 500 if an app sends one, wsgiref
(and Django's runserver, built on it) asserts, gunicorn drops it, werkzeug passes it on. The
middleware must close the connection after each response of the drain on all of them, and must
never turn a drain-time response into an error. gunicorn is driven in tests/test_gunicorn.py.
Servers run in threads of this process, bound to 127.0.0.1.
"""

from __future__ import annotations

import http.client
import socket
import sys
import threading
import wsgiref.simple_server
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import waitress
import werkzeug.serving
from waitress import wasyncore

from graceful import Lifecycle, Settings
from graceful.wsgi import GracefulMiddleware

Environ = dict[str, Any]


def hello(environ: Environ, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def crashing(environ: Environ, start_response: Any) -> list[bytes]:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"failed"]


def stop_waitress(server: Any, thread: threading.Thread) -> None:
    """Stop a waitress server running in ``thread``: its sockets are closed from its own loop (a
    close from another thread races the loop's select, which then fails with EBADF)."""
    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))  # the map empties: run() returns
    thread.join(5)
    server.task_dispatcher.shutdown()


@contextmanager
def waitress_server(app: Any) -> Iterator[int]:
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server.effective_port
    finally:
        stop_waitress(server, thread)


@contextmanager
def wsgiref_server(app: Any) -> Iterator[int]:
    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def werkzeug_server(app: Any) -> Iterator[int]:
    server = werkzeug.serving.make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


SERVERS: dict[str, Callable[[Any], Any]] = {
    "waitress": waitress_server,
    "wsgiref": wsgiref_server,
    "werkzeug": werkzeug_server,
}


class Exchange:
    """One request on a raw keep-alive connection, and whether the server closed it afterwards."""

    def __init__(self, port: int, path: str = "/") -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            response = http.client.HTTPResponse(sock)
            response.begin()
            self.status = response.status
            self.connection = response.getheader("Connection")
            self.body = response.read()
            # The response was read to its end: the next read is EOF if the server closed, or
            # times out if it keeps the connection open for another request.
            try:
                self.closed_by_server = sock.recv(1) == b""
            except TimeoutError:
                self.closed_by_server = False


@pytest.fixture
def lifecycle() -> Iterator[Lifecycle]:
    made = Lifecycle(Settings(drain_delay=30, drain_timeout=60))
    try:
        yield made
    finally:
        made.close()


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_drain_responses_succeed_and_close_the_connection(server: str, lifecycle: Lifecycle) -> None:
    """During the drain every response is still a success, says Connection: close, and the server closes."""
    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    with SERVERS[server](app) as port:
        before = Exchange(port)
        assert before.status == 200 and before.body == b"hello"
        lifecycle.begin_drain("test")
        for _ in range(3):
            during = Exchange(port)
            assert (during.status, during.body) == (200, b"hello"), server
            assert during.connection is not None and during.connection.lower() == "close", server
            assert during.closed_by_server, server
        probe = Exchange(port, "/healthz/ready")
        assert probe.status == 503 and probe.closed_by_server


def test_waitress_keeps_connections_alive_until_the_drain(lifecycle: Lifecycle) -> None:
    """The drain is what closes waitress's keep-alive connections (it keeps them open otherwise)."""
    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    with waitress_server(app) as port, socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.read() == b"hello"
        with pytest.raises(TimeoutError):
            sock.recv(1)  # kept open: waiting for the next request
        lifecycle.begin_drain("test")
        sock.settimeout(5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")  # the same connection, now draining
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, response.getheader("Connection"), response.read()) == (
            200,
            "close",
            b"hello",
        )
        assert sock.recv(1) == b""


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_an_error_response_during_the_drain_still_closes(server: str, lifecycle: Lifecycle) -> None:
    """An app that calls start_response with exc_info (its own error page) still gets its page out, and the close."""
    app = GracefulMiddleware(crashing, lifecycle=lifecycle)
    with SERVERS[server](app) as port:
        lifecycle.begin_drain("test")
        during = Exchange(port)
        assert (during.status, during.body) == (500, b"failed")
        assert during.closed_by_server
