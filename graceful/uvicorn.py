"""Run any ASGI app on uvicorn, single process, with the full drain. No supervisor needed.

    python -m graceful.uvicorn [--drain-delay S] [--drain-timeout S] APP [every uvicorn option]
    graceful.uvicorn.run(app, host="0.0.0.0", port=8000)

On SIGTERM:
  1. readiness fails at once (the phase moves to DRAINING), every request is still served, and
     responses carry ``Connection: close`` so keep-alive clients move to other instances;
  2. after ``drain_delay`` uvicorn's own shutdown runs: it closes the listeners and waits for
     in-flight requests, bounded by ``drain_timeout`` (uvicorn's ``timeout_graceful_shutdown``);
  3. the process exits 0.
A second SIGTERM, or SIGINT (Ctrl-C), skips what is left of the delay; a second SIGINT during the
stop cuts in-flight work (uvicorn's "force exit"). Under ``graceful-run`` (``GRACEFUL_STATE`` set)
the supervisor owns the drain clock and SIGTERM stops at once: there is no second delay.

Idle keep-alive connections stay open for ``keep_alive`` (75 s), not uvicorn's 5 s, unless
uvicorn's own ``--timeout-keep-alive`` is given: see ``Settings.keep_alive``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Sequence
from types import FrameType
from typing import Any

import uvicorn

from graceful._events import install_stderr_handler
from graceful._lifecycle import Lifecycle, find_wrapped, get_lifecycle
from graceful._phase import Phase
from graceful._settings import Settings, SettingsError
from graceful.asgi import GracefulMiddleware

__all__ = ["GracefulServer", "main", "run"]


#: uvicorn's own default keep-alive timeout (5 s in uvicorn 0.30-0.54).
UVICORN_KEEP_ALIVE = inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default


class GracefulServer(uvicorn.Server):
    """uvicorn's Server with the drain clock in front of its shutdown.

    ``keep_alive_given``: whether the user chose uvicorn's ``timeout_keep_alive`` (then it is kept);
    otherwise graceful's ``keep_alive`` replaces it. ``None``: chosen if it is not uvicorn's default.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        settings: Settings | None = None,
        keep_alive_given: bool | None = None,
    ) -> None:
        super().__init__(config)
        self._settings = settings
        if keep_alive_given is None:
            keep_alive_given = config.timeout_keep_alive != UVICORN_KEEP_ALIVE
        self._keep_alive_given = keep_alive_given
        self.lifecycle: Lifecycle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owns_clock = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        if not config.loaded:
            config.load()  # imports the app, which may build the middleware and its lifecycle
        lifecycle = self.lifecycle = self._adopt_middleware(config)
        install_stderr_handler(lifecycle.settings.log_format)
        track_drain(self, lifecycle)
        if config.timeout_graceful_shutdown is None:
            config.timeout_graceful_shutdown = lifecycle.settings.drain_timeout  # type: ignore[assignment]
        if not self._keep_alive_given:
            # Read by each connection when it is made, so setting it before serving covers all.
            config.timeout_keep_alive = lifecycle.settings.keep_alive  # type: ignore[assignment]
        # The outermost component that knows about graceful owns the clock: the supervisor if there
        # is one (it published a board through GRACEFUL_STATE), else this server.
        self._owns_clock = not lifecycle.external
        if self._owns_clock:
            lifecycle.claim_drain_clock()
        self._loop = asyncio.get_running_loop()
        try:
            await super().serve(sockets)
        finally:
            lifecycle.begin_stop()
            lifecycle.mark_stopped()

    def _adopt_middleware(self, config: uvicorn.Config) -> Lifecycle:
        # uvicorn's own wrappers (proxy headers, message logger) keep the app in ``.app``.
        middleware = find_wrapped(config.loaded_app, GracefulMiddleware)
        if middleware is None:
            # The app is not wrapped: wrap it, outermost, so /shutdown sees the real peer address.
            lifecycle = get_lifecycle()
            if self._settings is not None:
                lifecycle.settings = self._settings
            config.loaded_app = GracefulMiddleware(config.loaded_app, lifecycle=lifecycle)
            return lifecycle
        if self._settings is not None:
            middleware.lifecycle.settings = self._settings
        return middleware.lifecycle

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        lifecycle, loop = self.lifecycle, self._loop
        if lifecycle is None or loop is None:  # signal before serve() set up: uvicorn's behaviour
            super().handle_exit(sig, frame)
            return
        if (
            self._owns_clock
            and sig == signal.SIGTERM
            and lifecycle.phase < Phase.DRAINING
            and lifecycle.settings.drain_delay > 0
        ):
            # 1. Start the drain; on_tick ends it when the delay is over. Via the loop's self-pipe,
            #    because this runs in a signal handler between two bytecodes of the main thread.
            loop.call_soon_threadsafe(lifecycle.begin_drain, "SIGTERM")
            return
        # A second signal, SIGINT, no delay, or the supervisor's forwarded SIGTERM: stop now.
        # Unlike uvicorn we do not re-raise the signal after the stop: a drained exit is status 0.
        loop.call_soon_threadsafe(lifecycle.begin_stop)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        lifecycle = self.lifecycle
        if self.force_exit or lifecycle is None:
            await super().shutdown(sockets)
            return
        await linger(self, lifecycle)
        await watch_drain(self, lifecycle, super().shutdown(sockets))

    async def on_tick(self, counter: int) -> bool:
        lifecycle = self.lifecycle
        if lifecycle is not None:
            phase = lifecycle.poll()
            # 2. The delay is over (whoever started the drain: SIGTERM or /shutdown): stop serving.
            if self._owns_clock and phase is Phase.DRAINING and lifecycle.drain_delay_over():
                lifecycle.begin_stop()
                phase = Phase.STOPPING
            if phase >= Phase.STOPPING:
                self.should_exit = True
        return await super().on_tick(counter)


def track_drain(server: uvicorn.Server, lifecycle: Lifecycle) -> None:
    """When the drain begins, note the peers of the connections open then (``pre_drain_peers``):
    a request from any other peer came on a new connection, so the balancer still sent it here."""

    def on_phase(old: Phase, new: Phase) -> None:
        if new.is_terminating and not old.is_terminating:
            peers = (getattr(connection, "client", None) for connection in server.server_state.connections)
            lifecycle.pre_drain_peers = frozenset(tuple(peer) for peer in peers if peer)

    lifecycle.add_listener(on_phase)


async def watch_drain(server: uvicorn.Server, lifecycle: Lifecycle, shutdown: Awaitable[None]) -> None:
    """Run uvicorn's shutdown (it waits for in-flight work, bounded by ``timeout_graceful_shutdown``,
    then cancels the rest) and tell the lifecycle how it went: the drain finished, and how many
    requests the timeout cut (those still in flight when it ran out)."""
    loop = asyncio.get_running_loop()
    timeout = server.config.timeout_graceful_shutdown
    began = loop.time()
    seen = [lifecycle.local_in_flight]

    async def watch() -> None:
        while seen[0] > 0:  # bounded: the shutdown ends within the timeout, then this is cancelled
            await asyncio.sleep(0.02)
            seen[0] = lifecycle.local_in_flight

    watcher = loop.create_task(watch())
    try:
        await shutdown
    finally:
        watcher.cancel()
        timed_out = timeout is not None and loop.time() - began >= float(timeout) - 0.01
        lifecycle.note_drain_finished(cut=seen[0] if timed_out else 0)


#: Longest a stopping server waits for a request on a connection between two requests (see linger).
LINGER = 1.0


async def linger(server: uvicorn.Server, lifecycle: Lifecycle) -> None:
    """Let connections between two requests send one more before uvicorn closes them.

    uvicorn's shutdown closes every connection that is not inside a request at once
    (``H11Protocol.shutdown``): a request already on its way on a just-accepted or kept-alive
    connection is then cut ("server disconnected"), since nothing can answer it. gunicorn's gthread
    lingers for the same reason (gunicorn/workers/gthread.py ``STOP_KEEPALIVE_LINGER``). So:
    1. stop accepting (under gunicorn, the other workers share the listening socket and take new
       ones);
    2. wait, bounded, until no connection is between requests: one that sends meanwhile is
       answered with ``Connection: close`` and closes itself. Set here, not only by the phase:
       a stop no signal began (uvicorn's ``limit_max_requests``; a gunicorn worker's HUP reload,
       ``max_requests`` or TTOU) leaves the phase alone, and without it the answered connection
       went back to idle and was closed at the end of the wait, racing its next request.
    What is still idle after that has been idle through the drain delay and this wait; closing it
    still races a request sent at that very moment, which only a client can make safe (retrying
    a request on a reused connection that closed before any response, RFC 9110 9.2.2).
    """
    lifecycle.terminating[0] = True  # this process's responses carry Connection: close from now on
    for listener in server.servers:
        listener.close()
    lifecycle.note_listener_closed()  # a no-op when no drain began (max_requests, a HUP reload)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(LINGER, float(server.config.timeout_keep_alive))
    while loop.time() < deadline and any(
        _between_requests(connection) for connection in server.server_state.connections
    ):
        await asyncio.sleep(0.05)


def _between_requests(connection: Any) -> bool:
    """An HTTP connection of uvicorn's (h11 or httptools) that is not inside a request now."""
    cycle: Any = getattr(connection, "cycle", _NOT_HTTP)
    if cycle is _NOT_HTTP:
        return False  # a websocket: uvicorn's own shutdown closes it (1012)
    return cycle is None or bool(cycle.response_complete)


_NOT_HTTP = object()


def run(app: Any, *, settings: Settings | None = None, **uvicorn_options: Any) -> None:
    """Like ``uvicorn.run`` (single process), with the drain. ``settings`` default to ``GRACEFUL_*``."""
    if uvicorn_options.get("workers", 1) not in (None, 1) or uvicorn_options.get("reload"):
        raise ValueError("graceful.uvicorn.run serves one process; for workers use the gunicorn integration")
    config = uvicorn.Config(app, **uvicorn_options)
    server = GracefulServer(
        config, settings=settings, keep_alive_given="timeout_keep_alive" in uvicorn_options
    )
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE


_OWN_OPTIONS = {"--drain-delay": "GRACEFUL_DRAIN_DELAY", "--drain-timeout": "GRACEFUL_DRAIN_TIMEOUT"}
USAGE = (
    "usage: python -m graceful.uvicorn [--drain-delay SECONDS] [--drain-timeout SECONDS] "
    "APP [uvicorn options...]\n"
    "       (see `uvicorn --help` for its options; --workers and --reload are not supported)"
)


def _split_own_options(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Take our options out of argv (anywhere, ``--opt V`` or ``--opt=V``); the rest is uvicorn's."""
    own: dict[str, str] = {}
    rest: list[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        name, has_value, value = item.partition("=")
        if name in _OWN_OPTIONS:
            if not has_value:
                if index + 1 >= len(items):
                    raise SettingsError(f"{name} needs a value in seconds")
                index += 1
                value = items[index]
            own[_OWN_OPTIONS[name]] = value
        else:
            rest.append(item)
        index += 1
    return own, rest


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m graceful.uvicorn`` and ``graceful-uvicorn``."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        own, rest = _split_own_options(args)
        # Our flags act as environment variables: keyword arguments in the app's code still win.
        os.environ.update(own)
        Settings.from_env()  # fail now, naming the variable, not after the app was imported
    except SettingsError as exc:
        print(f"graceful.uvicorn: {exc}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    if any(arg == "--reload" or arg.startswith(("--workers", "--reload")) for arg in rest):
        print(f"graceful.uvicorn: --workers and --reload are not supported\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    # uvicorn.main.run builds `Server(config=config)` from its module namespace: swap in ours and
    # keep every one of uvicorn's command-line options for free.
    # (`uvicorn.main` the attribute is the click command; the module must be looked up by name.)
    uvicorn_main_module = importlib.import_module("uvicorn.main")
    # uvicorn's CLI also reads UVICORN_<OPTION> (click's auto_envvar_prefix).
    keep_alive_given = "UVICORN_TIMEOUT_KEEP_ALIVE" in os.environ or any(
        arg.partition("=")[0] == "--timeout-keep-alive" for arg in rest
    )
    server_class = functools.partial(GracefulServer, keep_alive_given=keep_alive_given)
    uvicorn_main_module.Server = server_class  # type: ignore[attr-defined]
    uvicorn_main_module.main.main(args=rest, prog_name="python -m graceful.uvicorn")


if __name__ == "__main__":
    main()
