"""Load clients for the rollout harness, and the outcome counting every report is built on.

Every client talks to the balancer's frontend on 127.0.0.1 only. Each worker loop is bounded three
ways: the stop event, a maximum number of iterations, and a deadline.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.e2e.wrk import Wrk, WrkResult

# Outcome kinds. "ok" is a 2xx (or an echoed websocket message); everything else is a failure.
OK = "ok"
STATUS = "other_status"
CONNECT = "connect_error"
RESET = "reset"
TIMEOUT = "timeout"
TRUNCATED = "truncated"
WS_ABNORMAL = "ws_abnormal"
OTHER = "other_error"
FAILURE_KINDS = (STATUS, CONNECT, RESET, TIMEOUT, TRUNCATED, WS_ABNORMAL, OTHER)

# Client kinds, in report order.
CLIENT_KINDS = ("keepalive", "newconn", "slow", "stream", "websocket", "idle")

CLIENT_TIMEOUT = 5.0
MAX_SAMPLES = 40
SAMPLES_PER_KIND = 3


@dataclass(frozen=True)
class LoadConfig:
    """How many clients of each kind, and how they pace themselves."""

    keepalive: int = 2
    newconn: int = 2
    slow: int = 2
    stream: int = 1
    websocket: int = 2
    idle: int = 2
    slow_seconds: float = 1.5
    stream_chunks: int = 10
    stream_interval: float = 0.1
    # A short pause between fast requests keeps 2 cores shared by HAProxy, 3 servers and these
    # threads from saturating, so timing assertions measure the drain rather than CPU starvation.
    fast_pause: float = 0.005
    # Idle gaps stay below the drain delay (so an idle client still sees `Connection: close` while
    # draining) and below uvicorn's 5 s keep-alive timeout (so the server never closes it idle).
    idle_gap: tuple[float, float] = (1.0, 2.5)
    ws_message_interval: float = 0.2
    ws_reconnect_pause: float = 0.1
    # `wrk` connections (0: no wrk) hammering /fast with keep-alive, no pause: raw throughput, so a
    # rare race shows up in a count that means something (tests/e2e/wrk.py).
    wrk: int = 0
    max_iterations: int = 200_000
    max_seconds: float = 300.0

    def counts(self) -> dict[str, int]:
        return {kind: getattr(self, kind) for kind in CLIENT_KINDS}


@dataclass
class LoadResult:
    """What the clients saw: outcomes per (client kind, outcome), samples of failures, latencies."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    ws_going_away: int = 0  # server closes with 1001: clean, the client reconnects
    samples: list[str] = field(default_factory=list)
    longest: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    wrk: WrkResult | None = None  # wrk's own totals, errors by wrk's kinds (also in ``outcomes``)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failures(self) -> int:
        return sum(count for (_, outcome), count in self.outcomes.items() if outcome != OK)

    def by_outcome(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for (_, outcome), count in self.outcomes.items():
            totals[outcome] += count
        return totals

    def by_client(self, outcome: str | None = None) -> Counter[str]:
        totals: Counter[str] = Counter()
        for (client, kind), count in self.outcomes.items():
            if outcome is None or kind == outcome:
                totals[client] += count
        return totals

    def failures_text(self) -> str:
        counts = self.by_outcome()
        parts = [f"{kind}={counts[kind]}" for kind in FAILURE_KINDS if counts[kind]]
        return ", ".join(parts) if parts else "0"


class Load:
    """Runs every client kind in its own threads against ``base_url`` until ``stop()``."""

    def __init__(self, host: str, port: int, config: LoadConfig | None = None) -> None:
        self.base_url = f"http://{host}:{port}"
        self.ws_url = f"ws://{host}:{port}/ws"
        self.config = config or LoadConfig()
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._deadline = 0.0
        self._wrk: Wrk | None = None

    # -- bookkeeping -----------------------------------------------------------------------------

    def record(self, client: str, outcome: str, detail: str = "", seconds: float | None = None) -> None:
        with self._lock:
            self.result.outcomes[(client, outcome)] += 1
            # A few samples of every (client, outcome), so a rare kind is not crowded out.
            seen = self.result.outcomes[(client, outcome)]
            if outcome != OK and seen <= SAMPLES_PER_KIND and len(self.result.samples) < MAX_SAMPLES:
                stamp = time.monotonic() - self._started
                self.result.samples.append(f"t={stamp:6.2f}s {client}: {outcome}: {detail}")
            if seconds is not None and seconds > self.result.longest.get(client, 0.0):
                self.result.longest[client] = seconds

    def _running(self, iteration: int) -> bool:
        return (
            not self._stop.is_set()
            and iteration < self.config.max_iterations
            and time.monotonic() < self._deadline
        )

    @property
    def started(self) -> float:
        """When the load began (monotonic): the zero of the samples' ``t=``."""
        return self._started

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._started = time.monotonic()
        self._deadline = self._started + self.config.max_seconds
        workers: dict[str, Callable[[str], None]] = {
            "keepalive": self._keepalive,
            "newconn": self._newconn,
            "slow": self._slow,
            "stream": self._stream,
            "websocket": self._websocket,
            "idle": self._idle,
        }
        if self.config.wrk > 0:
            self._wrk = Wrk(
                f"{self.base_url}/fast", connections=self.config.wrk, max_seconds=self.config.max_seconds
            )
            self._wrk.start()
        for kind, count in self.config.counts().items():
            for number in range(count):
                thread = threading.Thread(
                    target=self._guarded,
                    args=(kind, workers[kind]),
                    name=f"load-{kind}-{number}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()

    def stop(self, timeout: float = 15.0) -> LoadResult:
        """Stop every client and wait (bounded) for its current request to end."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if stuck:
            self.record("harness", OTHER, f"clients still running after stop: {stuck}")
        if self._wrk is not None:
            self._record_wrk(self._wrk.stop())
        self.result.seconds = time.monotonic() - self._started
        return self.result

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

    def _guarded(self, kind: str, worker: Callable[[str], None]) -> None:
        # A bug in a client must show up in the report, not vanish with its thread.
        try:
            worker(kind)
        except Exception as exc:  # pragma: no cover - reported, not expected
            self.record(kind, OTHER, f"client crashed: {exc!r}")

    # -- HTTP clients ----------------------------------------------------------------------------

    def _client(self, **kwargs: object) -> httpx.Client:
        # trust_env=False: a proxy from the environment must never see loopback test traffic.
        return httpx.Client(base_url=self.base_url, timeout=CLIENT_TIMEOUT, trust_env=False, **kwargs)  # type: ignore[arg-type]

    def _get(self, client: httpx.Client, kind: str, path: str) -> None:
        began = time.monotonic()
        try:
            response = client.get(path)
        except Exception as exc:  # counted by kind; the client goes on with its next request
            self.record(kind, classify(exc), repr(exc))
            return
        outcome = OK if 200 <= response.status_code < 300 else STATUS
        self.record(kind, outcome, f"HTTP {response.status_code}", time.monotonic() - began)

    def _keepalive(self, kind: str) -> None:
        with self._client() as client:
            iteration = 0
            while self._running(iteration):
                iteration += 1
                self._get(client, kind, "/fast")
                self._stop.wait(self.config.fast_pause)

    def _newconn(self, kind: str) -> None:
        # `Connection: close`: every request opens its own TCP connection through the balancer.
        with self._client(headers={"connection": "close"}) as client:
            iteration = 0
            while self._running(iteration):
                iteration += 1
                self._get(client, kind, "/fast")
                self._stop.wait(self.config.fast_pause)

    def _slow(self, kind: str) -> None:
        with self._client() as client:
            iteration = 0
            while self._running(iteration):
                iteration += 1
                self._get(client, kind, f"/slow?seconds={self.config.slow_seconds:g}")

    def _idle(self, kind: str) -> None:
        low, high = self.config.idle_gap
        rng = random.Random()
        with self._client() as client:
            iteration = 0
            while self._running(iteration):
                iteration += 1
                self._get(client, kind, "/fast")
                self._stop.wait(rng.uniform(low, high))

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


# wrk's error kinds as the harness's outcomes: a failed read is a reset or a server disconnect.
WRK_OUTCOMES = {"connect": CONNECT, "read": RESET, "write": RESET, "timeout": TIMEOUT, "non2xx": STATUS}


def classify(exc: BaseException) -> str:
    """The outcome kind of an httpx error."""
    if isinstance(exc, httpx.TimeoutException):
        return TIMEOUT
    if isinstance(exc, httpx.ConnectError):
        return CONNECT
    # The balancer accepted the connection but the server refused it (or closed it under us):
    # HAProxy closes the client side, which the client sees as a disconnect or a reset.
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return RESET
    return OTHER


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
