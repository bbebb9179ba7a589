"""ASGI middleware: probes, /shutdown, in-flight counting, ``Connection: close`` and the drain
notice (``graceful-drain``) while draining.

    app = GracefulMiddleware(app)            # settings from GRACEFUL_* environment variables
    app = GracefulMiddleware(app, drain_delay=10)

A plain ASGI class (no BaseHTTPMiddleware): scopes it does not handle pass straight through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from graceful._admission import AdmissionControl
from graceful._board import REQUEST_STARTED
from graceful._checks import Check, CheckKind, Checks
from graceful._control import ControlPlane, Request, drain_notice, shed_reply
from graceful._lifecycle import Lifecycle, lifecycle_for
from graceful._logging import install_probe_log_filter
from graceful._policies import is_forwarded
from graceful._runtime import WATCH_INTERVAL, AsyncRuntime
from graceful._settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CONNECTION = b"connection"
_CLOSE_HEADER = (b"connection", b"close")


class GracefulMiddleware:
    """Wrap an ASGI app so that a rolling deployment loses none of its requests.

    Settings come, in order of precedence, from keyword arguments, ``settings``, then ``GRACEFUL_*``
    environment variables. All middlewares of a process share one lifecycle (``get_lifecycle``).
    Everything that depends on the settings is set up when the server has started, so settings
    replaced before then (``graceful.uvicorn.run(settings=...)``) take effect.
    """

    def __init__(
        self,
        app: ASGIApp,
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
        self._terminating = lifecycle.terminating
        self._traffic_cell = lifecycle.traffic_cell  # a list updated in place after a fork
        # Until the server has started, every path is "special": the first request then starts the
        # runtime (servers without lifespan) and this becomes the probe and shutdown paths. One set
        # lookup on the hot path instead of two checks.
        self._special_paths: frozenset[str] | _EveryPath = _EVERY_PATH
        self._runtime: AsyncRuntime | None = None
        self._admission: AdmissionControl | None = None
        self.control = ControlPlane(lifecycle, self.checks)
        # So a server finds it however the app wraps it, and wraps no second one in front of it
        # (Lifecycle.middleware_for, graceful.gunicorn.UvicornWorker).
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The hot path (ordinary HTTP) is written out here, with no extra coroutine frame, no method
        # calls and one shared-memory add each way: see bench/overhead.py for what it costs.
        if scope["type"] != "http":
            await self._serve_other(scope, receive, send)
            return
        if scope["path"] in self._special_paths:
            await self._serve_special(scope, receive, send)
            return
        if self._terminating[0]:
            self.lifecycle.note_arrival(scope.get("client"))  # the drain report's last arrival
        admission = self._admission
        if admission is not None and not await admission.acquire():
            await _shed(send, admission.retry_after(), drain_notice(self.lifecycle))
            return

        def send_closing_when_draining(
            message: Message,
            send: Send = send,
            terminating: list[bool] = self._terminating,
            lifecycle: Lifecycle = self.lifecycle,
        ) -> Awaitable[None]:
            # Decided when the response starts, not when the request came in: a response that
            # begins during the drain tells the client to take its next request elsewhere, and
            # how long this instance still serves (drain_notice: nothing when only this process
            # stops, as in linger after max_requests, while the instance serves on).
            # A plain function returning send's awaitable: no coroutine frame per message;
            # default arguments instead of closure cells: cheaper to make and to read.
            if terminating[0] and message["type"] == "http.response.start":
                message = _with_connection_close(message, drain_notice(lifecycle))
            return send(message)

        # The request counts until the app returns: after the whole body was sent, a streamed body
        # included, and after background tasks ran (Starlette runs them before returning).
        counters, traffic = self._traffic_cell
        counters[traffic] += REQUEST_STARTED  # one more in flight, one more served
        try:
            await self.app(scope, receive, send_closing_when_draining)
        finally:
            counters[traffic] -= 1
            if admission is not None:
                admission.release()

    async def _serve_special(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._runtime is None:
            self._on_server_started()
        if scope["path"] in self.control.paths:
            await self._answer_control(scope, receive, send)
        else:
            await self(scope, receive, send)

    async def _serve_other(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._serve_websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._serve_lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _serve_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        lifecycle = self.lifecycle
        if self._runtime is None:
            self._on_server_started()
        # A websocket is in flight from connect to close: the server must not stop under it. It is
        # not subject to admission: it would hold a place for its whole life.
        lifecycle.request_started()
        lifecycle.websocket_opened()
        try:
            await self.app(scope, receive, send)
        finally:
            lifecycle.websocket_closed()
            lifecycle.request_finished()

    # -- probes and /shutdown --------------------------------------------------------------------

    async def _answer_control(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or ())
        authorization = headers.get(b"authorization")
        client = scope.get("client")
        # scope["server"] is the connection's local address under uvicorn, hypercorn and daphne
        # (the accepted socket's getsockname(), not the listener's), (path, None) on a UNIX socket.
        server = scope.get("server")
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query=(scope.get("query_string") or b"").decode("latin-1"),
            authorization=authorization.decode("latin-1") if authorization else None,
            client_host=client[0] if client else None,
            server_host=str(server[0]) if server else None,
            forwarded=is_forwarded(name.decode("latin-1") for name in headers),
        )
        reply = self.control.answer(request)
        if reply.wait_for_drain:
            await self._wait_for_drain_delay()
        close = self.lifecycle.phase.is_terminating
        notice = drain_notice(self.lifecycle) if close else ()
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": reply.headers(close=close, notice=notice),
            }
        )
        await send({"type": "http.response.body", "body": b"" if request.method == "HEAD" else reply.body})

    async def _wait_for_drain_delay(self) -> None:
        # Until the delay is over (bounded: see drain_delay_left).
        while (left := self.lifecycle.drain_delay_left()) > 0:
            await asyncio.sleep(min(left, WATCH_INTERVAL))

    # -- lifespan --------------------------------------------------------------------------------

    async def _serve_lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_watching_startup(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._on_server_started()
            await send(message)

        try:
            await self.app(scope, receive, send_watching_startup)
        finally:
            runtime, self._runtime = self._runtime, None
            if runtime is not None:
                await runtime.stop()

    def _on_server_started(self) -> None:
        """The server is up (lifespan startup done, or the first request arrived): set up and start."""
        if self._runtime is not None:
            return
        lifecycle = self.lifecycle
        settings = lifecycle.settings
        self.checks.default_timeout = settings.check_timeout
        if settings.max_concurrency is not None:
            self._admission = AdmissionControl(settings, lifecycle)
        self.control = ControlPlane(lifecycle, self.checks, self._admission)
        self._special_paths = self.control.paths
        if not settings.log_probes:
            install_probe_log_filter(settings)
        self._runtime = AsyncRuntime(lifecycle, self.checks, self._admission)
        self._runtime.start()


async def _shed(send: Send, retry_after: int, notice: tuple[tuple[bytes, bytes], ...]) -> None:
    """503 for a request over the cap: retry later, on a new connection (likely another instance)."""
    reply = shed_reply(retry_after)
    headers = reply.headers(close=True, notice=notice)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


class _EveryPath:
    """A stand-in path set that contains every path (see ``_special_paths``)."""

    def __contains__(self, path: object) -> bool:
        return True


_EVERY_PATH = _EveryPath()


def _with_connection_close(message: Message, notice: tuple[tuple[bytes, bytes], ...] = ()) -> Message:
    """A copy of a response-start message whose headers say ``Connection: close`` (RFC 9112 9.6),
    with the drain notice (graceful._control.drain_notice) added."""
    headers = message.get("headers") or ()
    for name, _ in headers:
        if name.lower() == _CONNECTION:  # the app set one: replace it
            headers = [(name, value) for name, value in headers if name.lower() != _CONNECTION]
            break
    return {**message, "headers": [*headers, _CLOSE_HEADER, *notice]}
