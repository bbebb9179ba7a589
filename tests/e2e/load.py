"""The tests' load: graceful.verify's HTTP clients plus streams, long requests, websockets and wrk.

The outcome kinds, the counting (``LoadResult``) and the keep-alive / new-connection / idle
clients are graceful.verify's own (one implementation for the product and the tests); this adds
the client kinds the project's test apps serve (/slow, /stream, /ws) and raw throughput with wrk.
Every client talks to the balancer's frontend on 127.0.0.1 only; every loop is bounded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect as ws_connect

from graceful.verify._load import (
    CLIENT_TIMEOUT,
    CONNECT,
    FAILURE_KINDS,
    OK,
    OTHER,
    RESET,
    STATUS,
    TIMEOUT,
    TRUNCATED,
    WS_ABNORMAL,
    HttpLoad,
    HttpLoadConfig,
    LoadResult,
    classify,
)
from tests.e2e.wrk import Wrk, WrkResult

__all__ = [
    "CLIENT_KINDS",
    "CONNECT",
    "FAILURE_KINDS",
    "OK",
    "OTHER",
    "RESET",
    "STATUS",
    "TIMEOUT",
    "TRUNCATED",
    "WS_ABNORMAL",
    "Load",
    "LoadConfig",
    "LoadResult",
    "classify",
    "classify_ws_open",
]

# Client kinds, in report order.
CLIENT_KINDS = ("keepalive", "newconn", "slow", "stream", "websocket", "idle")


@dataclass(frozen=True)
class LoadConfig(HttpLoadConfig):
    """How many clients of each kind, and how they pace themselves (the test apps' endpoints)."""

    path: str = "/fast"
    slow: int = 2
    stream: int = 1
    websocket: int = 2
    slow_seconds: float = 1.5
    stream_chunks: int = 10
    stream_interval: float = 0.1
    ws_message_interval: float = 0.2
    ws_reconnect_pause: float = 0.1
    # `wrk` connections (0: no wrk) hammering /fast with keep-alive, no pause: raw throughput, so a
    # rare race shows up in a count that means something (tests/e2e/wrk.py).
    wrk: int = 0

    def counts(self) -> dict[str, int]:
        return {kind: getattr(self, kind) for kind in CLIENT_KINDS}


class Load(HttpLoad):
    """Runs every client kind in its own threads against the balancer until ``stop()``."""

    def __init__(self, host: str, port: int, config: LoadConfig | None = None) -> None:
        self.config = config or LoadConfig()
        super().__init__(host, port, self.config)
        self.ws_url = f"ws://{host}:{port}/ws"
        self._wrk: Wrk | None = None

    def counts(self) -> dict[str, int]:
        return self.config.counts()

    def workers(self) -> dict[str, Callable[[str], None]]:
        return {**super().workers(), "slow": self._slow, "stream": self._stream, "websocket": self._websocket}

    def start(self) -> None:
        if self.config.wrk > 0:
            self._wrk = Wrk(
                f"{self.base_url}/fast", connections=self.config.wrk, max_seconds=self.config.max_seconds
            )
            self._wrk.start()
        super().start()

    def stop(self, timeout: float = 15.0) -> LoadResult:
        result = super().stop(timeout)
        if self._wrk is not None:
            self._record_wrk(self._wrk.stop())
        return result

    def _record_wrk(self, wrk: WrkResult) -> None:
        self.result.wrk = wrk
        if not wrk.parsed:
            self.record("wrk", OTHER, f"wrk printed no totals: {wrk.output[-300:]!r}")
            return
        with self._lock:
            self.result.outcomes[("wrk", OK)] += wrk.ok
        for kind, outcome in WRK_OUTCOMES.items():
            count = wrk.errors[kind]
            if count:
                with self._lock:
                    self.result.outcomes[("wrk", outcome)] += count - 1
                self.record("wrk", outcome, f"wrk counted {count} {kind} error(s)")

    def _slow(self, kind: str) -> None:
        with self._client() as client:
            iteration = 0
            while self._running(iteration):
                iteration += 1
                self._get(client, kind, f"/slow?seconds={self.config.slow_seconds:g}")

    def _stream(self, kind: str) -> None:
        chunks, interval = self.config.stream_chunks, self.config.stream_interval
        expected = "".join(f"{number}\n" for number in range(chunks)) + "end\n"
        with self._client() as client:
            iteration = 0
            while self._running(iteration):
                iteration += 1
                began = time.monotonic()
                got_headers = False
                try:
                    with client.stream("GET", f"/stream?chunks={chunks}&interval={interval:g}") as response:
                        got_headers = True
                        if not 200 <= response.status_code < 300:
                            self.record(kind, STATUS, f"HTTP {response.status_code}")
                            continue
                        body = b"".join(response.iter_bytes()).decode("utf-8", "replace")
                except Exception as exc:
                    # Cut after the headers arrived: the body is incomplete, whatever the exception.
                    self.record(kind, TRUNCATED if got_headers else classify(exc), repr(exc))
                    continue
                if body != expected:
                    self.record(kind, TRUNCATED, f"body ends with {body[-20:]!r} ({len(body)} chars)")
                    continue
                self.record(kind, OK, seconds=time.monotonic() - began)

    # -- websockets ------------------------------------------------------------------------------

    def _websocket(self, kind: str) -> None:
        config = self.config
        iteration = 0
        while self._running(iteration):
            iteration += 1
            try:
                connection = ws_connect(
                    self.ws_url,
                    open_timeout=CLIENT_TIMEOUT,
                    close_timeout=2.0,
                    proxy=None,
                    ping_interval=None,
                )
            except Exception as exc:  # every failed opening is counted; the client goes on
                self.record(kind, classify_ws_open(exc), repr(exc))
                self._stop.wait(config.ws_reconnect_pause)
                continue
            # A close that fails after the exchange ended loses nothing: suppressed, not counted.
            with contextlib.suppress(Exception), connection:
                while self._running(iteration):
                    iteration += 1
                    message = f"m{iteration}"
                    began = time.monotonic()
                    try:
                        connection.send(message)
                        reply = connection.recv(timeout=CLIENT_TIMEOUT)
                    except ConnectionClosed as exc:
                        received = exc.rcvd
                        if received is not None and received.code == 1001:
                            with self._lock:
                                self.result.ws_going_away += 1  # told to go away: a clean end
                        else:
                            self.record(kind, WS_ABNORMAL, f"closed: {exc!r}")
                        break
                    except TimeoutError as exc:
                        self.record(kind, TIMEOUT, repr(exc))
                        break
                    except Exception as exc:  # anything else ends this connection, counted
                        self.record(kind, WS_ABNORMAL, repr(exc))
                        break
                    if reply != message:
                        self.record(kind, WS_ABNORMAL, f"echo {reply!r} != {message!r}")
                        break
                    self.record(kind, OK, seconds=time.monotonic() - began)
                    self._stop.wait(config.ws_message_interval)
            self._stop.wait(config.ws_reconnect_pause)


WRK_OUTCOMES = {"connect": CONNECT, "read": RESET, "write": RESET, "timeout": TIMEOUT, "non2xx": STATUS}


def classify_ws_open(exc: BaseException) -> str:
    """The outcome kind of a failed websocket opening handshake."""
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return CONNECT
    if isinstance(exc, InvalidStatus):
        return STATUS
    if isinstance(exc, (OSError, InvalidHandshake, EOFError, ConnectionClosed)):
        return RESET  # closed during the handshake (EOF, reset, invalid message)
    return OTHER
