"""ASGI middleware: probes, /shutdown, in-flight counting, ``Connection: close`` while draining.

    app = GracefulMiddleware(app)            # settings from GRACEFUL_* environment variables
    app = GracefulMiddleware(app, drain_delay=10)

A plain ASGI class (no BaseHTTPMiddleware): scopes it does not handle pass straight through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from graceful._board import REQUEST_STARTED
from graceful._chain import chain_server_signals
from graceful._control import ControlPlane, Request
from graceful._lifecycle import Lifecycle, get_lifecycle
from graceful._logging import install_probe_log_filter
from graceful._phase import Phase
from graceful._settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("graceful")

# How often the board is read for changes made by other processes (supervisor, gunicorn master,
# sibling workers): well inside a readiness probe period, cheap enough to ignore.
WATCH_INTERVAL = 0.05
_CONNECTION = b"connection"
_CLOSE_HEADER = (b"connection", b"close")


class GracefulMiddleware:
    """Wrap an ASGI app so that a rolling deployment loses none of its requests.

    Settings come, in order of precedence, from keyword arguments, ``settings``, then ``GRACEFUL_*``
    environment variables. All middlewares of a process share one lifecycle (``get_lifecycle``).
    """

    def __init__(
        self,
        app: ASGIApp,
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
        # Until the server has started, every path is "special": the first request then opens the
        # gate (servers without lifespan) and this becomes the probe and shutdown paths. One set
        # lookup on the hot path instead of two checks.
        self._special_paths: frozenset[str] | _EveryPath = _EVERY_PATH
        self._terminating = lifecycle.terminating
        self._traffic_cell = lifecycle.traffic_cell  # a list updated in place after a fork
        self._watcher: asyncio.Task[None] | None = None
        self._stop_server: Callable[[], None] | None = None
        if not lifecycle.settings.log_probes:
            install_probe_log_filter(lifecycle.settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The hot path (ordinary HTTP) is written out here, with no extra coroutine frame, no method
        # calls and one shared-memory read per response: see bench/overhead.py for what it costs.
        if scope["type"] != "http":
            await self._serve_other(scope, receive, send)
            return
        if scope["path"] in self._special_paths:
            await self._serve_special(scope, receive, send)
            return

        def send_closing_when_draining(
            message: Message, send: Send = send, terminating: list[bool] = self._terminating
        ) -> Awaitable[None]:
            # Decided when the response starts, not when the request came in: a response that
            # begins during the drain tells the client to take its next request elsewhere.
            # A plain function returning send's awaitable: no coroutine frame per message;
            # default arguments instead of closure cells: cheaper to make and to read.
            if terminating[0] and message["type"] == "http.response.start":
                message = _with_connection_close(message)
            return send(message)

        # The request counts until the app returns: after the whole body was sent, a streamed body
        # included, and after background tasks ran (Starlette runs them before returning).
        counters, traffic = self._traffic_cell
        counters[traffic] += REQUEST_STARTED  # one more in flight, one more served
        try:
            await self.app(scope, receive, send_closing_when_draining)
        finally:
            counters[traffic] -= 1

    async def _serve_special(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._watcher is None:
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
        if self._watcher is None:
            self._on_server_started()
        # A websocket is in flight from connect to close: the server must not stop under it.
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
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query=(scope.get("query_string") or b"").decode("latin-1"),
            authorization=authorization.decode("latin-1") if authorization else None,
            client_host=client[0] if client else None,
        )
        reply = self.control.answer(request)
        if reply.wait_for_drain:
            await self._wait_for_drain_delay()
        close = self.lifecycle.phase.is_terminating
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": reply.headers(close=close),
            }
        )
        await send({"type": "http.response.body", "body": b"" if request.method == "HEAD" else reply.body})

    async def _wait_for_drain_delay(self) -> None:
        # Bounded: the deadline is at most drain_delay away, and a second signal ends it early.
        lifecycle = self.lifecycle
        deadline = lifecycle.drain_deadline()
        while deadline is not None and lifecycle.phase is Phase.DRAINING:
            remaining = deadline - lifecycle.clock()
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, WATCH_INTERVAL))

    # -- lifespan --------------------------------------------------------------------------------

    async def _serve_lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_watching_startup(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._on_server_started()
            await send(message)

        try:
            await self.app(scope, receive, send_watching_startup)
        finally:
            await self._stop_watching()

    def _on_server_started(self) -> None:
        """The server is up (lifespan startup done, or the first request arrived): open the gate."""
        if self._watcher is not None:
            return
        self._special_paths = self.control.paths
        loop = asyncio.get_running_loop()
        self.lifecycle.open_gate()
        self._stop_server = chain_server_signals(self.lifecycle, loop)
        self._watcher = loop.create_task(self._watch(), name="graceful-board-watcher")

    async def _watch(self) -> None:
        """Notice phase changes other processes make; end the drain delay when we own the clock."""
        lifecycle = self.lifecycle
        while True:
            phase = lifecycle.poll()
            if self._stop_server is not None and phase is Phase.DRAINING and lifecycle.drain_delay_over():
                stop, self._stop_server = self._stop_server, None
                stop()
            if phase is Phase.STOPPED:
                return
            await asyncio.sleep(WATCH_INTERVAL)

    async def _stop_watching(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


class _EveryPath:
    """A stand-in path set that contains every path (see ``_special_paths``)."""

    def __contains__(self, path: object) -> bool:
        return True


_EVERY_PATH = _EveryPath()


def _with_connection_close(message: Message) -> Message:
    """A copy of a response-start message whose headers say ``Connection: close`` (RFC 9112 9.6)."""
    headers = message.get("headers") or ()
    for name, _ in headers:
        if name.lower() == _CONNECTION:  # the app set one: replace it
            headers = [(name, value) for name, value in headers if name.lower() != _CONNECTION]
            break
    return {**message, "headers": [*headers, _CLOSE_HEADER]}
