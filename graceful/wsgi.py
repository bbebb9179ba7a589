"""WSGI middleware: probes, /shutdown, in-flight counting, ``Connection: close`` and the drain
notice (``graceful-drain``) while draining, dependency checks and warm-up admission control.

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
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol, cast

from graceful._admission import ThreadAdmissionControl
from graceful._board import REQUEST_STARTED, TERMINATING_PHASE
from graceful._checks import Check, CheckKind, Checks
from graceful._control import ControlPlane, Reply, Request, drain_notice, shed_reply
from graceful._lifecycle import Lifecycle, find_wrapped, lifecycle_for
from graceful._logging import install_probe_log_filter
from graceful._policies import is_forwarded
from graceful._runtime import AsyncRuntime, BackgroundRuntime
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

# Threads of a WSGI server share this process's count (Lifecycle.local_traffic). With the GIL, one
# `counts[0] += n` on a list of ints is atomic between threads: CPython switches threads (and runs
# signal handlers) only at eval-breaker checks, which none of BINARY_SUBSCR / BINARY_OP /
# STORE_SUBSCR make (tests/test_wsgi.py counts 8 threads exactly with a 1 us switch interval). A
# lock would double the middleware's cost. Free-threaded builds (no GIL) take the lifecycle's
# count lock instead.
_GIL_MAKES_ADD_ATOMIC: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


class GracefulMiddleware:
    """Wrap a WSGI app so that a rolling deployment loses none of its requests.

    Settings come, in order of precedence, from keyword arguments, ``settings``, then ``GRACEFUL_*``
    environment variables. All middlewares of a process share one lifecycle (``get_lifecycle``).
    Safe under threaded servers: the in-flight count of this process stays exact (see
    ``_GIL_MAKES_ADD_ATOMIC``). Dependency checks, the startup gate, warm-up and the HAProxy agent
    run on a background thread (``graceful._runtime.BackgroundRuntime``) once the server has
    started; admission control (``max_concurrency``) blocks a server thread while it waits.

    Each middleware registers itself on its lifecycle, so gunicorn's worker classes find it
    however it is wrapped and never stack a second one (``Lifecycle.middleware_for``). One started
    before a fork (a warm-up request at import under ``gunicorn --preload``) starts afresh in the
    child: see ``reset_after_fork``.
    """

    def __init__(
        self,
        app: WSGIApp,
        settings: Settings | None = None,
        *,
        lifecycle: Lifecycle | None = None,
        checks: Iterable[Check] = (),
        **overrides: Any,
    ) -> None:
        self.app = app
        self.lifecycle = lifecycle = lifecycle_for(settings, lifecycle, overrides)
        self.checks = Checks(default_timeout=lifecycle.settings.check_timeout, clock=lifecycle.clock)
        for check in checks:
            self.checks.add(check)
        self.control = ControlPlane(lifecycle, self.checks)
        phases, phase_index = lifecycle.board.phase_cell
        assert phase_index == _PHASE
        self._phases = phases
        self._terminating = lifecycle.terminating
        # Counted in a Python int of this process, moved to the shared board by the background
        # thread's watcher (Lifecycle.local_traffic): an int in a list costs a fraction of a
        # shared-memory add. The list is never replaced (a fork resets it in place).
        self._counts = lifecycle.local_traffic
        self._lock = None if _GIL_MAKES_ADD_ATOMIC else lifecycle.count_lock
        self._admission: ThreadAdmissionControl | None = None
        #: Requests take the guarded path (admission, or the count under a lock) when set.
        self._guarded = self._lock is not None
        self._runtime: BackgroundRuntime | None = None
        self._starting = threading.Lock()
        #: The process that started the background work (see server_started).
        self._started_in: int | None = None
        # Until the server has started, every path is "special" (see _serve_special): one set
        # lookup on the hot path instead of a check for the gate and one for the paths.
        self._special_paths: frozenset[str] | _EveryPath = _EVERY_PATH
        lifecycle.register_middleware(self)

    def add_check(
        self,
        name: str,
        func: Callable[[], Any],
        *,
        kind: CheckKind = "readiness",
        timeout: float | None = None,
        critical: bool = True,
    ) -> None:
        """Register a dependency check (see graceful._checks); call before the server starts."""
        self.checks.add(Check(name=name, func=func, kind=kind, timeout=timeout, critical=critical))

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # The hot path is written out here (no helper calls, the counter changed inline): see
        # bench/overhead_wsgi.py for what it costs.
        try:
            path = environ["PATH_INFO"]
        except KeyError:  # servers may leave it out when empty (CGI); a subscript is cheaper than get()
            path = ""
        if path in self._special_paths:
            return self._serve_special(environ, start_response)
        if self._phases[_PHASE] >= TERMINATING_PHASE:
            # Draining: this response tells the client to take its next request elsewhere.
            # Decided when the request arrives, not when the response starts as in the ASGI
            # middleware: wrapping start_response on every request would cost as much as the rest
            # of the middleware. A request that began before the drain keeps its connection; the
            # next request on it is still served during the delay, and closes it.
            if not self._terminating[0]:
                self.lifecycle.poll()  # another process moved the phase: tell this process's listeners
            self.lifecycle.note_arrival(None)  # the drain report's last arrival (any request)
            start_response = _Noticing(closing_start_response(start_response, environ), self.lifecycle)
        if self._guarded:
            return self._call_guarded(environ, start_response)
        counts = self._counts
        counts[0] += REQUEST_STARTED  # one more in flight, one more served
        try:
            result = self.app(environ, start_response)
            if result.__class__ is list:
                # The common body: a list. A list subclass that closes the count is cheaper than a
                # wrapper, iterates at C speed, and keeps servers' list fast paths (Content-Length).
                counted = _CountedList(result)
                counted._counts = counts
                return counted
            if _is_file_wrapper(result, environ) and _hook_close(result, _Finish(counts, None, None)):
                # The server's own file wrapper is kept (gunicorn sends it with sendfile); its
                # close() now ends the count (PEP 3333, "Optional Platform-Specific File Handling").
                return result
        except BaseException:
            counts[0] -= 1
            raise
        return _Counted(result, counts)

    def _call_guarded(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """A request under admission control, or counted under a lock (free-threaded Python)."""
        admission = self._admission
        if admission is not None and not admission.acquire():
            return self._shed(environ, start_response, admission.retry_after())
        counts = self._counts
        finish = _Finish(counts, self._lock, admission)
        _add(counts, REQUEST_STARTED, self._lock)
        try:
            result = self.app(environ, start_response)
            if _is_file_wrapper(result, environ) and _hook_close(result, finish):
                return result
        except BaseException:
            finish()
            raise
        return _Guarded(result, finish)

    def _shed(self, environ: Environ, start_response: StartResponse, retry_after: int) -> list[bytes]:
        """503 for a request over the cap: retry later, on a new connection (likely another instance)."""
        reply = shed_reply(retry_after)
        # A request that arrived during the drain has a start_response that adds the notice already.
        notice = () if isinstance(start_response, _Noticing) else drain_notice(self.lifecycle)
        self._closing(environ, start_response)(_status_line(reply.status), _str_headers(reply, notice))
        return [reply.body]

    def _serve_special(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._special_paths is _EVERY_PATH:
            # A server only calls the app once it has started.
            self.server_started()
        if environ.get("PATH_INFO", "") in self.control.paths:
            return self._answer_control(environ, start_response)
        return self(environ, start_response)

    # -- start-up ----------------------------------------------------------------------------------

    def server_started(self) -> None:
        """The server serves: set up from the settings, start the background work (idempotent).

        Called on the first request; gunicorn's graceful workers call it as soon as the worker has
        loaded the app, so the startup gate and the checks do not wait for a first request. Once per
        process: started before a fork, it starts again in the child (see ``reset_after_fork``).
        """
        with self._starting:
            if self._special_paths is not _EVERY_PATH:
                if self._started_in == os.getpid():
                    return
                # Started in a parent by a fork that ran no at-fork hooks (one made in C).
                self._forget_start()
            lifecycle = self.lifecycle
            settings = lifecycle.settings
            self.checks.default_timeout = settings.check_timeout
            if settings.max_concurrency is not None:
                self._admission = ThreadAdmissionControl(settings, lifecycle)
                self._guarded = True
            self.control = ControlPlane(lifecycle, self.checks, self._admission)
            if not settings.log_probes:
                install_probe_log_filter(settings)
            # Always: besides checks, gate, warm-up and agent, its watcher moves this process's
            # counts to the board and notices phase changes made by other processes.
            self._runtime = BackgroundRuntime(AsyncRuntime(lifecycle, self.checks, self._admission))
            self._runtime.start()
            self._started_in = os.getpid()
            self._special_paths = self.control.paths

    def reset_after_fork(self) -> None:
        """In a forked child (the lifecycle calls it): back to "not started".

        A thread does not survive a fork (fork(2)), so the parent's background work is gone: with
        ``gunicorn --preload`` and an app that warms itself up at import (Flask's ``test_client()``),
        the arbiter started it and no worker would run checks, move its counts to the board, end
        the warm-up or wake queued requests. The next ``server_started()`` (the worker's) or first
        request starts it afresh. Done here rather than by a pid check per request: the hot path
        stays as it was (bench/overhead_wsgi.py).
        """
        self._starting = threading.Lock()  # another thread of the parent may have held it
        self._forget_start()

    def _forget_start(self) -> None:
        # Admission starts empty: the parent's waiting threads and running requests are not ours.
        self._runtime = None
        self._started_in = None
        self._admission = None
        self._lock = None if _GIL_MAKES_ADD_ATOMIC else self.lifecycle.count_lock  # the child's lock
        self._guarded = self._lock is not None
        self.control = ControlPlane(self.lifecycle, self.checks)
        self._special_paths = _EVERY_PATH

    def stop(self) -> None:
        """Stop the background thread (tests, embedding); a server's exit ends it anyway."""
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.stop()

    # -- probes and /shutdown --------------------------------------------------------------------

    def _answer_control(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        request = Request(
            method=environ.get("REQUEST_METHOD", "GET"),
            path=environ.get("PATH_INFO", ""),
            query=environ.get("QUERY_STRING", ""),
            authorization=environ.get("HTTP_AUTHORIZATION"),
            client_host=environ.get("REMOTE_ADDR") or None,
            server_host=_local_address(environ),
            # gunicorn's PROXY protocol support puts the proxy's address in PROXY_ADDR.
            forwarded="PROXY_ADDR" in environ
            or is_forwarded(key[5:].replace("_", "-") for key in environ if key.startswith("HTTP_")),
        )
        reply = self.control.answer(request)
        if reply.wait_for_drain:
            self._wait_for_drain_delay()
        notice: tuple[tuple[bytes, bytes], ...] = ()
        if self.lifecycle.phase.is_terminating:
            start_response = self._closing(environ, start_response)
            notice = drain_notice(self.lifecycle)
        start_response(_status_line(reply.status), _str_headers(reply, notice))
        return [b"" if request.method == "HEAD" else reply.body]

    def _closing(self, environ: Environ, start_response: StartResponse) -> StartResponse:
        """``start_response`` for a response after which the server closes the connection."""
        if not self._terminating[0]:
            self.lifecycle.poll()  # another process moved the phase: tell this process's listeners
        return cast(StartResponse, closing_start_response(start_response, environ))

    def _wait_for_drain_delay(self) -> None:
        # Blocks one server thread until the delay is over (bounded: see drain_delay_left).
        while (left := self.lifecycle.drain_delay_left()) > 0:
            time.sleep(min(left, WAIT_INTERVAL))


def _str_headers(reply: Reply, notice: tuple[tuple[bytes, bytes], ...] = ()) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in reply.headers(notice=notice)]


class _Noticing:
    """``start_response`` that adds the drain notice (graceful._control.drain_notice) to the app's
    headers, computed when the response starts. End-to-end headers (RFC 9110 7.6.1): unlike
    ``Connection: close``, every WSGI server passes them on as they are (PEP 3333 forbids
    applications only hop-by-hop ones)."""

    __slots__ = ("_lifecycle", "_start_response")

    def __init__(self, start_response: Any, lifecycle: Lifecycle) -> None:
        self._start_response = start_response
        self._lifecycle = lifecycle

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        notice = [
            (name.decode("latin-1"), text.decode("latin-1")) for name, text in drain_notice(self._lifecycle)
        ]
        return self._start_response(status, [*headers, *notice], exc_info)


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

    __slots__ = ("_counts", "_result")

    def __init__(self, result: Iterable[bytes], counts: list[int]) -> None:
        self._result = result
        self._counts: list[int] | None = counts

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        counts = self._counts
        if counts is None:
            return  # closed before
        self._counts = None
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            counts[0] -= 1  # atomic with the GIL: see _GIL_MAKES_ADD_ATOMIC


class _CountedList(list[bytes]):
    """A list body whose ``close()`` ends the request's count, exactly once (see ``_Counted``)."""

    __slots__ = ("_counts",)
    _counts: list[int] | None

    def close(self) -> None:
        counts = self._counts
        if counts is not None:
            self._counts = None
            counts[0] -= 1  # atomic with the GIL: see _GIL_MAKES_ADD_ATOMIC


class _Finish:
    """Ends one request, once: its count (under the lock, if any), then its admission place."""

    __slots__ = ("_admission", "_counts", "_lock")

    def __init__(
        self, counts: list[int], lock: threading.Lock | None, admission: ThreadAdmissionControl | None
    ) -> None:
        self._counts: list[int] | None = counts
        self._lock = lock
        self._admission = admission

    def __call__(self) -> None:
        counts = self._counts
        if counts is None:
            return  # finished before
        self._counts = None
        _add(counts, -1, self._lock)
        if self._admission is not None:
            self._admission.release()


class _Guarded:
    """The app's body on the guarded path: ``close()`` closes it, then finishes the request."""

    __slots__ = ("_finish", "_result")

    def __init__(self, result: Iterable[bytes], finish: _Finish) -> None:
        self._result = result
        self._finish = finish

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()


def _add(counts: list[int], amount: int, lock: threading.Lock | None) -> None:
    if lock is None:
        counts[0] += amount
        return
    with lock:
        counts[0] += amount


class _EveryPath:
    """A stand-in path set that contains every path (see ``_special_paths``)."""

    def __contains__(self, path: object) -> bool:
        return True


_EVERY_PATH = _EveryPath()


def _local_address(environ: Environ) -> str | None:
    """The connection's local address, or None where the server does not expose it.

    Not SERVER_NAME (PEP 3333 takes it from the Host header or the server's name: gunicorn puts the
    listener's address there, 0.0.0.0 when bound to all, or the Host header on a UNIX socket;
    waitress "waitress.invalid"; wsgiref socket.getfqdn()), nor SERVER_ADDR, which those servers do
    not set. gunicorn hands the connection's socket over as ``gunicorn.socket``: its getsockname()
    is the truth. A socket that cannot say gives "" (not loopback: refused, never trusted).
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None
    try:
        name = sock.getsockname()
    except (OSError, AttributeError):
        return ""
    return str(name[0]) if isinstance(name, tuple) else ""


def _is_file_wrapper(result: object, environ: Environ) -> bool:
    file_wrapper = environ.get("wsgi.file_wrapper")
    return file_wrapper is not None and isinstance(file_wrapper, type) and isinstance(result, file_wrapper)


def _hook_close(result: Any, finish: Callable[[], None]) -> bool:
    """Make the file wrapper's ``close()`` also ``finish()`` (once); False if it cannot be set."""
    original = getattr(result, "close", None)

    def close() -> None:
        try:
            if original is not None:
                original()
        finally:
            finish()  # does its work once, however often close() is called

    try:
        result.close = close
    except AttributeError:  # __slots__ or a read-only attribute: wrap it instead
        return False
    return True


def find_middleware(
    app: Any, depth: int = 16, *, lifecycle: Lifecycle | None = None
) -> GracefulMiddleware | None:
    """The WSGI GracefulMiddleware wrapping ``app``: found in its chain of wrappers (``.app``, Flask's
    ``.wsgi_app``, WhiteNoise's ``.application``, ``__wrapped__``), else, given ``lifecycle``, the one
    built on it (see ``Lifecycle.middleware_for``)."""
    if lifecycle is None:
        return find_wrapped(app, GracefulMiddleware, depth)
    return lifecycle.middleware_for(app, GracefulMiddleware, depth)
