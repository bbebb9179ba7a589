"""Load clients for a rollout, and the outcome counting every report is built on.

Every client talks to the balancer's frontend on 127.0.0.1 only. Each worker loop is bounded three
ways: the stop event, a maximum number of iterations, and a deadline. ``graceful verify`` runs the
HTTP clients here (keep-alive, a new connection per request, keep-alive clients that idle); the
project's tests add streams, long requests, websockets and wrk (tests/e2e/load.py).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

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

CLIENT_TIMEOUT = 5.0
MAX_SAMPLES = 40
SAMPLES_PER_KIND = 3


@dataclass(frozen=True)
class HttpLoadConfig:
    """The HTTP clients of a rollout's load: how many of each kind, what they ask, how fast."""

    keepalive: int = 2
    newconn: int = 2
    idle: int = 2
    path: str = "/"
    method: str = "GET"
    #: Requests per second over all clients, or None for a closed loop (each client as fast as
    #: its answers come, with ``fast_pause`` between requests).
    rate: float | None = None
    fast_pause: float = 0.005
    # Idle gaps stay below a typical drain delay (so an idle client still sees `Connection: close`
    # while draining) and below uvicorn's 5 s keep-alive timeout (so the server never closes it idle).
    idle_gap: tuple[float, float] = (1.0, 2.5)
    max_iterations: int = 200_000
    max_seconds: float = 300.0

    def http_counts(self) -> dict[str, int]:
        return {"keepalive": self.keepalive, "newconn": self.newconn, "idle": self.idle}


@dataclass
class LoadResult:
    """What the clients saw: outcomes per (client kind, outcome), samples of failures, latencies."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    ws_going_away: int = 0  # server closes with 1001: clean, the client reconnects
    samples: list[str] = field(default_factory=list)
    longest: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    wrk: Any = None  # the tests' wrk totals (tests/e2e/wrk.py), when wrk ran

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


class HttpLoad:
    """Runs the HTTP client kinds in their own threads against ``http://host:port`` until ``stop()``.

    Subclasses add client kinds by extending ``workers()`` (and ``counts()``).
    """

    def __init__(self, host: str, port: int, config: HttpLoadConfig | None = None) -> None:
        self.base_url = f"http://{host}:{port}"
        self.http_config = config or HttpLoadConfig()
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._deadline = 0.0
        self._next_due = 0.0  # the rate limit's schedule, shared by every client

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
            and iteration < self.http_config.max_iterations
            and time.monotonic() < self._deadline
        )

    @property
    def started(self) -> float:
        """When the load began (monotonic): the zero of the samples' ``t=``."""
        return self._started

    def counts(self) -> dict[str, int]:
        return self.http_config.http_counts()

    def workers(self) -> dict[str, Callable[[str], None]]:
        return {"keepalive": self._keepalive, "newconn": self._newconn, "idle": self._idle}

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._started = time.monotonic()
        self._deadline = self._started + self.http_config.max_seconds
        self._next_due = self._started
        workers = self.workers()
        for kind, count in self.counts().items():
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
        self.result.seconds = time.monotonic() - self._started
        return self.result

    def _guarded(self, kind: str, worker: Callable[[str], None]) -> None:
        # A bug in a client must show up in the report, not vanish with its thread.
        try:
            worker(kind)
        except Exception as exc:  # pragma: no cover - reported, not expected
            self.record(kind, OTHER, f"client crashed: {exc!r}")

    # -- HTTP clients ----------------------------------------------------------------------------

    def _client(self, **kwargs: object) -> httpx.Client:
        # trust_env=False: a proxy from the environment must never see loopback traffic.
        return httpx.Client(base_url=self.base_url, timeout=CLIENT_TIMEOUT, trust_env=False, **kwargs)  # type: ignore[arg-type]

    def _pace(self) -> None:
        """With a rate: wait for this request's turn on the shared schedule (the stop event ends it)."""
        rate = self.http_config.rate
        if rate is None:
            return
        with self._lock:
            due = max(self._next_due, time.monotonic())
            self._next_due = due + 1.0 / rate
        self._stop.wait(max(0.0, due - time.monotonic()))

    def _get(self, client: httpx.Client, kind: str, path: str | None = None) -> None:
        self._pace()
        began = time.monotonic()
        try:
            response = client.request(self.http_config.method, path or self.http_config.path)
        except Exception as exc:  # counted by kind; the client goes on with its next request
            self.record(kind, classify(exc), repr(exc))
            return
        outcome = OK if 200 <= response.status_code < 300 else STATUS
        self.record(kind, outcome, f"HTTP {response.status_code}", time.monotonic() - began)

    def _between(self) -> None:
        if self.http_config.rate is None:
            self._stop.wait(self.http_config.fast_pause)

    def _keepalive(self, kind: str) -> None:
        with self._client() as client:
            iteration = 0
            while self._running(iteration):
                iteration += 1
                self._get(client, kind)
                self._between()

    def _newconn(self, kind: str) -> None:
        # `Connection: close`: every request opens its own TCP connection through the balancer.
        with self._client(headers={"connection": "close"}) as client:
            iteration = 0
            while self._running(iteration):
                iteration += 1
                self._get(client, kind)
                self._between()

    def _idle(self, kind: str) -> None:
        low, high = self.http_config.idle_gap
        rng = random.Random()
        with self._client() as client:
            iteration = 0
            while self._running(iteration):
                iteration += 1
                self._get(client, kind)
                self._stop.wait(rng.uniform(low, high))


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
