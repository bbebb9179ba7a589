"""Connection: close while draining when an outer middleware wraps start_response (Sentry, APMs,
hand-written ones), with real waitress, wsgiref, werkzeug and gunicorn servers on 127.0.0.1.

graceful must find the server's own start_response inside the wrapper: waitress and wsgiref
answer 500 to an app's Connection header, gunicorn silently drops it. Also: an error page sent by
a second start_response call (with exc_info) keeps the close notice, and headers given as a tuple
do not break the header path.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import pytest

from graceful import Lifecycle
from graceful._wsgi_close import closing_start_response
from graceful.wsgi import GracefulMiddleware
from tests.server_process import ServerProcess, wait_for
from tests.test_wsgi_servers import SERVERS, Exchange, hello, lifecycle

__all__ = ["lifecycle"]  # the fixture, shared with tests/test_wsgi_servers.py

pytestmark = pytest.mark.timeout(60)

Environ = dict[str, Any]
App = Callable[[Environ, Any], Any]


# -- the shapes of start_response wrappers met in the wild -------------------------------------


def partial_wrapper(app: App) -> App:
    """Sentry's shape: functools.partial(_sentry_start_response, start_response, ...)."""

    def record(start_response: Any, status: str, headers: list[Any], exc_info: Any = None) -> Any:
        return start_response(status, headers, exc_info)

    return lambda environ, start_response: app(environ, functools.partial(record, start_response))


def closure_wrapper(app: App) -> App:
    """A nested function over the server's start_response (most hand-written middlewares)."""

    def wrapped(environ: Environ, start_response: Any) -> Any:
        def start(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Seen", "1")], exc_info)

        return app(environ, start)

    return wrapped


class _Recorder:
    """An object with __call__ holding the server's start_response as an attribute."""

    def __init__(self, start_response: Any) -> None:
        self.start_response = start_response

    def __call__(self, status: str, headers: list[Any], exc_info: Any = None) -> Any:
        return self.start_response(status, headers, exc_info)


def object_wrapper(app: App) -> App:
    return lambda environ, start_response: app(environ, _Recorder(start_response))


def wraps_wrapper(app: App) -> App:
    """A functools.wraps-decorated wrapper: found through __wrapped__."""

    def wrapped(environ: Environ, start_response: Any) -> Any:
        @functools.wraps(start_response)
        def start(*args: Any) -> Any:
            return start_response(*args)

        return app(environ, start)

    return wrapped


WRAPPERS = {
    "partial": partial_wrapper,
    "closure": closure_wrapper,
    "object": object_wrapper,
    "wraps": wraps_wrapper,
}


class _Hidden:
    """A wrapper graceful cannot see into: the server's start_response sits in a slot."""

    __slots__ = ("_inner",)

    def __init__(self, start_response: Any) -> None:
        self._inner = start_response

    def __call__(self, status: str, headers: list[Any], exc_info: Any = None) -> Any:
        return self._inner(status, headers, exc_info)


# -- real servers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_wrapped_start_response_still_closes_while_draining(
    server: str, wrapper: str, lifecycle: Lifecycle
) -> None:
    """Behind an outer middleware's wrapper, drain responses are 200 with Connection: close, and closed."""
    app = WRAPPERS[wrapper](GracefulMiddleware(hello, lifecycle=lifecycle))
    with SERVERS[server](app) as port:
        assert Exchange(port).status == 200
        lifecycle.begin_drain("test")
        for _ in range(2):
            during = Exchange(port)
            assert (during.status, during.body) == (200, b"hello"), (server, wrapper)
            assert during.connection is not None and during.connection.lower() == "close", (server, wrapper)
            assert during.closed_by_server, (server, wrapper)


@pytest.mark.parametrize("server", ["waitress", "wsgiref"])
def test_a_wrapper_that_hides_the_server_never_makes_a_500(
    server: str, lifecycle: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    """Where graceful cannot find the server's start_response and the server refuses the header,
    the response goes out as the app made it (without the notice), and graceful says why once."""
    middleware = GracefulMiddleware(hello, lifecycle=lifecycle)
    # A class of its own per server: graceful remembers its way per kind of start_response (one
    # process runs one server), and this test runs two servers in one process.
    hidden = type(f"Hidden{server}", (_Hidden,), {"__slots__": ()})
    app: App = lambda environ, start_response: middleware(environ, hidden(start_response))  # noqa: E731
    with SERVERS[server](app) as port, caplog.at_level(logging.WARNING, logger="graceful"):
        lifecycle.begin_drain("test")
        for _ in range(2):
            during = Exchange(port)
            assert (during.status, during.body) == (200, b"hello")
    assert sum("cannot see through" in record.getMessage() for record in caplog.records) == 1


def replaced_by_an_error_page(environ: Environ, start_response: Any) -> list[bytes]:
    """Starts a 200, then fails before the body and sends an error page instead (exc_info)."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise RuntimeError("late failure")
    except RuntimeError:
        start_response(
            "500 Internal Server Error",
            [("Content-Type", "text/plain"), ("Content-Length", "4")],
            sys.exc_info(),
        )
    return [b"oops"]


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_an_error_page_replacing_the_response_keeps_the_close_notice(
    server: str, lifecycle: Lifecycle
) -> None:
    """A second start_response call with exc_info replaces the headers: Connection: close is still sent."""
    app = GracefulMiddleware(replaced_by_an_error_page, lifecycle=lifecycle)
    with SERVERS[server](app) as port:
        lifecycle.begin_drain("test")
        during = Exchange(port)
        assert (during.status, during.body) == (500, b"oops")
        assert during.connection is not None and during.connection.lower() == "close"
        assert during.closed_by_server


def test_headers_given_as_a_tuple_get_the_close_header() -> None:
    """The header path (uWSGI, cheroot...) accepts an app's headers as a tuple, not only a list."""
    sent: list[Any] = []

    def server_start_response(status: str, headers: list[Any], exc_info: Any = None) -> None:
        sent.append((status, headers))

    closing_start_response(server_start_response, {})("200 OK", (("Content-Type", "text/plain"),))
    assert sent == [("200 OK", [("Content-Type", "text/plain"), ("Connection", "close")])]


# -- gunicorn: the header would be dropped silently, force_close() is found inside the wrapper --------


def _sentry_like(app: App, environ: Environ, start_response: Any) -> Any:
    def record(start_response: Any, status: str, headers: list[Any], exc_info: Any = None) -> Any:
        return start_response(status, headers, exc_info)

    return app(environ, functools.partial(record, start_response))


_sentry_middleware: list[App] = []


def sentry_wrapped(environ: Environ, start_response: Any) -> Any:
    """tests.test_wsgi_apps:app in a graceful middleware, inside a partial-style start_response
    wrapper, the way Sentry's middleware sits around an app (served by the gunicorn test)."""
    if not _sentry_middleware:
        from tests.test_wsgi_apps import app

        _sentry_middleware.append(GracefulMiddleware(app))
    return _sentry_like(_sentry_middleware[0], environ, start_response)


def test_gunicorn_behind_a_wrapper_closes_connections_while_draining() -> None:
    """gunicorn drops an app's Connection header: behind a wrapper graceful still reaches force_close()."""
    argv = [
        "{python}", "-m", "gunicorn", "-k", "graceful.gunicorn.ThreadWorker", "-w", "1", "--threads", "2",
        "-b", "127.0.0.1:{port}", "--keep-alive", "30", "--no-control-socket", "tests.test_wsgi_wrapped:sentry_wrapped",
    ]  # fmt: skip
    server = ServerProcess(argv, env={"GRACEFUL_DRAIN_DELAY": "10"})
    try:
        server.wait_ready()
        before = Exchange(server.port, "/fast")
        assert before.status == 200 and not before.closed_by_server  # keep-alive outside the drain
        server.signal(signal.SIGTERM)
        wait_for(lambda: server.status("/healthz/ready") == 503, 5, "readiness to fail")
        during = Exchange(server.port, "/fast")
        assert during.status == 200
        assert during.connection is not None and during.connection.lower() == "close"
        assert during.closed_by_server
    finally:
        server.close()
