"""WSGI middleware: probes, /shutdown, in-flight counting, ``Connection: close`` while draining.

    app = GracefulMiddleware(app)                    # settings from GRACEFUL_* environment variables
    flask_app.wsgi_app = GracefulMiddleware(flask_app.wsgi_app)             # Flask
    application = GracefulMiddleware(get_wsgi_application())                # Django's wsgi.py

A request is in flight from the call until the server calls ``close()`` on the returned iterable
(PEP 3333: servers must call it however the response ended: done, failed, or the client went
away), so streamed bodies and ``wsgi.file_wrapper`` responses count until their last byte.
"""

from __future__ import annotations

import http
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

from graceful._control import ControlPlane, Reply, Request
from graceful._lifecycle import Lifecycle, get_lifecycle
from graceful._logging import install_probe_log_filter
from graceful._phase import Phase
from graceful._settings import Settings

__all__ = ["GracefulMiddleware", "find_middleware"]

logger = logging.getLogger("graceful")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
Environ = dict[str, Any]


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = ..., /
    ) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

WAIT_INTERVAL = 0.05


class GracefulMiddleware:
    """Wrap a WSGI app so that a rolling deployment loses none of its requests.

    Settings come, in order of precedence, from keyword arguments, ``settings``, then ``GRACEFUL_*``
    environment variables. All middlewares of a process share one lifecycle (``get_lifecycle``).
    Safe under threaded servers: the in-flight count of this process is updated under a lock.
    """

    def __init__(
        self,
        app: WSGIApp,
        settings: Settings | None = None,
        *,
        lifecycle: Lifecycle | None = None,
        **overrides: Any,
    ) -> None:
        self.app = app
        if lifecycle is None:
            lifecycle = get_lifecycle()
            if settings is not None or overrides:
                lifecycle.settings = (settings or Settings.from_env()).replace(**overrides)
        elif settings is not None or overrides:
            raise TypeError("pass either lifecycle= or settings, not both")
        self.lifecycle = lifecycle
        self.control = ControlPlane(lifecycle)
        self._paths = self.control.paths
        self._board = lifecycle.board
        self._gate_open = False
        if not lifecycle.settings.log_probes:
            install_probe_log_filter(lifecycle.settings)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not self._gate_open:
            # A server only calls the app once it has started: the first request opens the gate.
            self._gate_open = True
            self.lifecycle.open_gate()
        if environ.get("PATH_INFO", "") in self._paths:
            return self._answer_control(environ, start_response)
        lifecycle = self.lifecycle
        board = self._board

        def start_closing_when_draining(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            # Decided when the response starts, as in the ASGI middleware: a response that begins
            # during the drain tells the client to take its next request elsewhere.
            if board.is_terminating:
                headers = _closing(lifecycle, start_response, headers)
            return start_response(status, headers, exc_info)

        lifecycle.request_started_threadsafe()
        try:
            result = self.app(environ, start_closing_when_draining)
        except BaseException:
            lifecycle.request_finished_threadsafe()
            raise
        return _counted(result, lifecycle, environ.get("wsgi.file_wrapper"))

    # -- probes and /shutdown --------------------------------------------------------------------

    def _answer_control(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        request = Request(
            method=environ.get("REQUEST_METHOD", "GET"),
            path=environ.get("PATH_INFO", ""),
            query=environ.get("QUERY_STRING", ""),
            authorization=environ.get("HTTP_AUTHORIZATION"),
            client_host=environ.get("REMOTE_ADDR") or None,
        )
        reply = self.control.answer(request)
        if reply.wait_for_drain:
            self._wait_for_drain_delay()
        headers = _str_headers(reply)
        if self.lifecycle.phase.is_terminating:
            headers = _closing(self.lifecycle, start_response, headers)
        start_response(_status_line(reply.status), headers)
        return [b"" if request.method == "HEAD" else reply.body]

    def _wait_for_drain_delay(self) -> None:
        # Blocks one server thread, bounded: the deadline is at most drain_delay away, and a
        # second signal (the phase moves on) ends it early.
        lifecycle = self.lifecycle
        deadline = lifecycle.drain_deadline()
        while deadline is not None and lifecycle.phase is Phase.DRAINING:
            remaining = deadline - lifecycle.clock()
            if remaining <= 0:
                break
            time.sleep(min(remaining, WAIT_INTERVAL))


def _closing(
    lifecycle: Lifecycle, start_response: StartResponse, headers: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Make the server close the connection after this response (RFC 9112 section 9.6)."""
    if not lifecycle.terminating[0]:
        lifecycle.poll()  # another process moved the phase: tell this process's listeners
    # gunicorn drops hop-by-hop headers an app sets (gunicorn/http/wsgi.py process_headers, as
    # PEP 3333 forbids apps to send them), so ask its Response object to close instead.
    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    if callable(force_close):
        force_close()
        return headers
    kept = [(name, value) for name, value in headers if name.lower() != "connection"]
    return [*kept, ("Connection", "close")]


def _str_headers(reply: Reply) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in reply.headers()]


def _status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _counted(result: Iterable[bytes], lifecycle: Lifecycle, file_wrapper: Any) -> Iterable[bytes]:
    """The app's iterable, with ``close()`` ending the request's count exactly once."""
    # Keep the server's own file wrapper (gunicorn sends it with sendfile): only hook its close(),
    # which the server calls after the last byte (PEP 3333, "Optional Platform-Specific File
    # Handling").
    if isinstance(file_wrapper, type) and isinstance(result, file_wrapper) and _hook_close(result, lifecycle):
        return result
    return _CountedIterable(result, lifecycle)


def _hook_close(result: Any, lifecycle: Lifecycle) -> bool:
    original = getattr(result, "close", None)
    done = [False]

    def close() -> None:
        try:
            if original is not None:
                original()
        finally:
            if not done[0]:
                done[0] = True
                lifecycle.request_finished_threadsafe()

    try:
        result.close = close
    except AttributeError:  # __slots__ or a read-only attribute: wrap it instead
        return False
    return True


class _CountedIterable:
    """Iterates the app's result; ``close()`` closes it and ends the count (once)."""

    __slots__ = ("_lifecycle", "_open", "_result")

    def __init__(self, result: Iterable[bytes], lifecycle: Lifecycle) -> None:
        self._result = result
        self._lifecycle = lifecycle
        self._open = True

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            if self._open:
                self._open = False
                self._lifecycle.request_finished_threadsafe()


def find_middleware(app: Any, depth: int = 16) -> GracefulMiddleware | None:
    """The WSGI GracefulMiddleware somewhere in a chain of wrappers (``.app``, Flask's ``.wsgi_app``)."""
    for _ in range(depth):
        if isinstance(app, GracefulMiddleware):
            return app
        inner = getattr(app, "app", None)
        if inner is None:
            inner = getattr(app, "wsgi_app", None)
        if inner is None or inner is app:
            return None
        app = inner
    return None
