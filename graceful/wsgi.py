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
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol, cast

from graceful._board import REQUEST_STARTED, TERMINATING_PHASE
from graceful._control import ControlPlane, Reply, Request
from graceful._lifecycle import Lifecycle, lifecycle_for
from graceful._logging import install_probe_log_filter
from graceful._settings import Settings
from graceful._wsgi_close import closing_start_response

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
_PHASE = 3  # index of the phase in the board's header (StateBoard.phase_cell)

# Threads of a WSGI server share this process's slot. With the GIL, one `ints[i] += n` on a
# memoryview is atomic between threads: memoryview item access runs no Python code, and CPython
# switches threads (and runs signal handlers) only at eval-breaker checks, which none of
# BINARY_SUBSCR / BINARY_OP / STORE_SUBSCR make (tests/test_wsgi.py counts 8 threads exactly with
# a 1 us switch interval). A lock would double the middleware's cost. Free-threaded builds (no GIL)
# take the lifecycle's count lock instead.
_GIL_MAKES_ADD_ATOMIC: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


class GracefulMiddleware:
    """Wrap a WSGI app so that a rolling deployment loses none of its requests.

    Settings come, in order of precedence, from keyword arguments, ``settings``, then ``GRACEFUL_*``
    environment variables. All middlewares of a process share one lifecycle (``get_lifecycle``).
    Safe under threaded servers: the in-flight count of this process stays exact (see
    ``_GIL_MAKES_ADD_ATOMIC``).
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
        self.lifecycle = lifecycle = lifecycle_for(settings, lifecycle, overrides)
        self.control = ControlPlane(lifecycle)
        self._paths = self.control.paths
        phases, phase_index = lifecycle.board.phase_cell
        assert phase_index == _PHASE
        self._phases = phases
        self._terminating = lifecycle.terminating
        self._traffic_cell = lifecycle.traffic_cell  # a list updated in place after a fork
        self._lock = None if _GIL_MAKES_ADD_ATOMIC else lifecycle.count_lock
        # Until the server has started, every path is "special" (see _serve_special): one set
        # lookup on the hot path instead of a check for the gate and one for the paths.
        self._special_paths: frozenset[str] | _EveryPath = _EVERY_PATH
        if not lifecycle.settings.log_probes:
            install_probe_log_filter(lifecycle.settings)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # The hot path is written out here (no helper calls, the counter changed inline): see
        # bench/overhead_wsgi.py for what it costs.
        if environ.get("PATH_INFO", "") in self._special_paths:
            return self._serve_special(environ, start_response)
        if self._phases[_PHASE] >= TERMINATING_PHASE:
            # Draining: this response tells the client to take its next request elsewhere.
            # Decided when the request arrives, not when the response starts as in the ASGI
            # middleware: wrapping start_response on every request would cost as much as the rest
            # of the middleware. A request that began before the drain keeps its connection; the
            # next request on it is still served during the delay, and closes it.
            start_response = self._closing(start_response)
        counters, traffic = self._traffic_cell  # the slot of this process (re-taken after a fork)
        lock = self._lock
        if lock is None:
            counters[traffic] += REQUEST_STARTED  # one more in flight, one more served
        else:
            _add(counters, traffic, REQUEST_STARTED, lock)
        try:
            result = self.app(environ, start_response)
            if type(result) is list and lock is None:
                # The common body: a list. A list subclass that closes the count is cheaper than a
                # wrapper, iterates at C speed, and keeps servers' list fast paths (Content-Length).
                counted = _CountedList(result)
                counted._counters, counted._traffic = counters, traffic
                return counted
            file_wrapper = environ.get("wsgi.file_wrapper")
            if (
                file_wrapper is not None
                and isinstance(file_wrapper, type)
                and isinstance(result, file_wrapper)
                and _hook_close(result, counters, traffic, lock)
            ):
                # The server's own file wrapper is kept (gunicorn sends it with sendfile); its
                # close() now ends the count (PEP 3333, "Optional Platform-Specific File Handling").
                return result
        except BaseException:
            _add(counters, traffic, -1, lock)
            raise
        if lock is None:
            return _Counted(result, counters, traffic)
        return _CountedLocked(result, counters, traffic, lock)

    def _serve_special(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._special_paths is _EVERY_PATH:
            # A server only calls the app once it has started: the first request opens the gate,
            # and from then on only the probe and shutdown paths are special.
            self._special_paths = self._paths
            self.lifecycle.open_gate()
        if environ.get("PATH_INFO", "") in self._paths:
            return self._answer_control(environ, start_response)
        return self(environ, start_response)

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
        if self.lifecycle.phase.is_terminating:
            start_response = self._closing(start_response)
        start_response(_status_line(reply.status), _str_headers(reply))
        return [b"" if request.method == "HEAD" else reply.body]

    def _closing(self, start_response: StartResponse) -> StartResponse:
        """``start_response`` for a response after which the server closes the connection."""
        if not self._terminating[0]:
            self.lifecycle.poll()  # another process moved the phase: tell this process's listeners
        return cast(StartResponse, closing_start_response(start_response))

    def _wait_for_drain_delay(self) -> None:
        # Blocks one server thread until the delay is over (bounded: see drain_delay_left).
        while (left := self.lifecycle.drain_delay_left()) > 0:
            time.sleep(min(left, WAIT_INTERVAL))


def _str_headers(reply: Reply) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in reply.headers()]


def _status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


class _Counted:
    """The app's body; ``close()`` closes it and ends the request's count, exactly once.

    A class rather than a generator: a generator would end the count (and close the app's
    iterable) when the last chunk is taken, before the server has written it; PEP 3333 has the
    server call ``close()`` when it is done, whether the body ran out, failed or the client left.
    """

    __slots__ = ("_counters", "_result", "_traffic")

    def __init__(self, result: Iterable[bytes], counters: memoryview, traffic: int) -> None:
        self._result = result
        self._counters: memoryview | None = counters
        self._traffic = traffic

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        counters = self._counters
        if counters is None:
            return  # closed before
        self._counters = None
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._finish(counters)

    def _finish(self, counters: memoryview) -> None:
        counters[self._traffic] -= 1  # atomic with the GIL: see _GIL_MAKES_ADD_ATOMIC


class _CountedList(list[bytes]):
    """A list body whose ``close()`` ends the request's count, exactly once (see ``_Counted``)."""

    __slots__ = ("_counters", "_traffic")
    _counters: memoryview | None
    _traffic: int

    def close(self) -> None:
        counters = self._counters
        if counters is not None:
            self._counters = None
            counters[self._traffic] -= 1  # atomic with the GIL: see _GIL_MAKES_ADD_ATOMIC


class _CountedLocked(_Counted):
    """``_Counted`` for free-threaded Python: the count changes under the lifecycle's lock."""

    __slots__ = ("_lock",)

    def __init__(
        self, result: Iterable[bytes], counters: memoryview, traffic: int, lock: threading.Lock
    ) -> None:
        super().__init__(result, counters, traffic)
        self._lock = lock

    def _finish(self, counters: memoryview) -> None:
        _add(counters, self._traffic, -1, self._lock)


def _add(counters: memoryview, traffic: int, amount: int, lock: threading.Lock | None) -> None:
    if lock is None:
        counters[traffic] += amount
        return
    with lock:
        counters[traffic] += amount


class _EveryPath:
    """A stand-in path set that contains every path (see ``_special_paths``)."""

    def __contains__(self, path: object) -> bool:
        return True


_EVERY_PATH = _EveryPath()


def _hook_close(result: Any, counters: memoryview, traffic: int, lock: threading.Lock | None) -> bool:
    """Make the file wrapper's ``close()`` end the count (once); False if it cannot be set."""
    original = getattr(result, "close", None)
    done = [False]

    def close() -> None:
        try:
            if original is not None:
                original()
        finally:
            if not done[0]:
                done[0] = True
                _add(counters, traffic, -1, lock)

    try:
        result.close = close
    except AttributeError:  # __slots__ or a read-only attribute: wrap it instead
        return False
    return True


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
