"""Client-side balancing: the caller as its own load balancer over a set of endpoints.

``Transport(endpoints=...)`` sends each attempt to one endpoint of a live set (graceful.client's
``_sources``: a list, DNS, a file, a registry callable), chosen by a weighted picker, and keeps a
view of each endpoint that the pickers honour:

- **draining**: the endpoint answered with graceful's drain notice (``Graceful-Drain``): no new
  request goes to it; requests already sent finish. It comes back only when the resolver no
  longer lists it (then it is forgotten) or when, after the drain it announced, its readiness
  path answers 200 without the notice (a pod restarted on the same address), probed in the
  background;
- **ejected**: passive outlier detection (Envoy's): ``consecutive_connect_failures`` connect
  failures or ``consecutive_5xx`` 5xx answers in a row eject it for ``base_ejection`` x
  ``ejection_multiplier`` ** (ejections - 1), at most ``max_ejection``; never more than
  ``max_ejection_percent`` of the set at once;
- **warming**: it joined the set after the transport's first resolution, so its weight ramps by
  the server's own slow-start curve (``graceful._warmup.warmup_share``);
- **ready**: the rest.

A retry or a hedge goes to an endpoint the call has not tried yet when one is available.
Everything here is synchronous and guarded by one lock; I/O (the readiness probes) runs on daemon
threads so the async transport uses the same balancer.
"""

from __future__ import annotations

import dataclasses
import enum
import http.client
import logging
import math
import random as random_module
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence

import httpx

from graceful._settings import SettingsError, _check_number, _check_whole
from graceful._warmup import warmup_share
from graceful._wire import DRAIN_HEADER, SHED_HEADER, SHED_VALUE
from graceful.client._sources import Address, EndpointSource
from graceful.client._stats import Stats

logger = logging.getLogger("graceful.client")

#: What ``Transport(endpoints=...)`` takes: "host:port" strings, one "dns:///name:port" or
#: "file:///path" URL, a callable returning addresses (a registry), or a ready source.
Endpoints = str | Sequence[str] | Callable[[], Iterable["str | Address"]] | EndpointSource

PICKERS = ("round_robin", "least_request", "pick_first")
#: What counts as a connection failure for outlier detection: refused, connect timeout, and a
#: connection reset or closed before any byte of the response.
CONNECTION_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.RemoteProtocolError)
#: How often a draining endpoint's readiness is probed once its announced drain is over, and for
#: how long at most (a pod that never comes back is dropped by the resolver, not by probing).
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 1.0
PROBE_GIVE_UP = 600.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutlierPolicy:
    """Passive outlier ejection, Envoy's ``outlier_detection`` with its defaults."""

    #: Connection failures in a row (refused, connect timeout, reset or closed before a response).
    consecutive_connect_failures: int = 5
    #: 5xx responses in a row (graceful's shed 503 does not count: it is "not now", not "broken").
    consecutive_5xx: int = 5
    base_ejection: float = 30.0
    ejection_multiplier: float = 2.0
    max_ejection: float = 300.0
    #: At most this share of the set is ejected at once (with 3 endpoints and 50 %: one).
    max_ejection_percent: float = 50.0

    def __post_init__(self) -> None:
        _check_whole("consecutive_connect_failures", self.consecutive_connect_failures, 1, 1000)
        _check_whole("consecutive_5xx", self.consecutive_5xx, 1, 1000)
        _check_number("base_ejection", self.base_ejection, 0.001, 3600, "seconds")
        _check_number("ejection_multiplier", self.ejection_multiplier, 1, 10)
        _check_number("max_ejection", self.max_ejection, 0.001, 86400, "seconds")
        _check_number("max_ejection_percent", self.max_ejection_percent, 0, 100, "percent")
        if self.max_ejection < self.base_ejection:
            raise SettingsError(
                field="max_ejection",
                message=f"max_ejection={self.max_ejection!r} is out of range; allowed: at least "
                f"base_ejection ({self.base_ejection!r}) up to 86400 seconds",
            )

    def ejection_time(self, ejections: int) -> float:
        """Seconds the ``ejections``-th ejection in a row lasts."""
        return min(self.base_ejection * self.ejection_multiplier ** max(ejections - 1, 0), self.max_ejection)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SlowStart:
    """The weight ramp of an endpoint that joins: ``max(min_share, (t / window) ** curve)``.

    The curve of the server's own warm-up (docs/warmup.md): 1 is linear (HAProxy ``slowstart``,
    Dubbo), 2 is Sermant's default; Envoy's ``aggression`` a is curve 1/a.
    """

    window: float = 10.0
    curve: float = 1.0
    min_share: float = 0.1

    def __post_init__(self) -> None:
        _check_number("window", self.window, 0.001, 3600, "seconds")
        _check_number("curve", self.curve, 0.1, 10)
        _check_number("min_share", self.min_share, 0.0, 1.0)

    def share(self, age: float) -> float:
        return warmup_share(age, window=self.window, curve=self.curve, min_share=self.min_share)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BalancePolicy:
    """How ``Transport(endpoints=...)`` spreads requests and judges endpoints."""

    #: "round_robin" (smooth weighted round robin), "least_request" (power of two choices over
    #: in-flight counts, Envoy's default) or "pick_first" (gRPC's: one endpoint until it fails).
    picker: str = "round_robin"
    #: Seconds between resolutions of a DNS name, a registry callable, a file's mtime check.
    refresh: float = 5.0
    #: Probed on a draining endpoint after its announced drain: 200 without the notice = back.
    readiness_path: str = "/healthz/ready"
    outlier: OutlierPolicy | None = OutlierPolicy()
    slow_start: SlowStart | None = SlowStart()

    def __post_init__(self) -> None:
        if self.picker not in PICKERS:
            raise SettingsError(
                field="picker", message=f"picker={self.picker!r} is unknown; allowed: {', '.join(PICKERS)}"
            )
        _check_number("refresh", self.refresh, 0.01, 3600, "seconds")
        if not self.readiness_path.startswith("/"):
            raise SettingsError(
                field="readiness_path",
                message=f"readiness_path={self.readiness_path!r} is out of range; "
                "allowed: a path starting with /",
            )


class State(enum.Enum):
    READY = "ready"
    WARMING = "warming"
    DRAINING = "draining"
    EJECTED = "ejected"


@dataclasses.dataclass(frozen=True)
class EndpointView:
    """One endpoint as ``Transport.endpoints()`` shows it (for logs and metrics)."""

    address: str
    state: str
    weight: float
    in_flight: int
    requests: int
    failures: int
    ejections: int


@dataclasses.dataclass(eq=False)
class Endpoint:
    """What the balancer knows of one address. Mutated only under ``Balancer._lock``."""

    address: Address
    joined_at: float
    warm_from_start: bool
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    connect_failures_in_a_row: int = 0
    errors_5xx_in_a_row: int = 0
    ejections: int = 0
    ejected_until: float | None = None
    last_unejected_at: float | None = None
    draining_since: float | None = None
    drain_left: float = 0.0  # the seconds the notice announced
    listed: bool = True  # still in the resolver's set
    current_weight: float = 0.0  # smooth weighted round robin's running value
    probing: bool = False

    def weight(self, slow_start: SlowStart | None, now: float) -> float:
        if self.warm_from_start or slow_start is None:
            return 1.0
        return slow_start.share(now - self.joined_at)

    def state(self, slow_start: SlowStart | None, now: float) -> State:
        if self.draining_since is not None:
            return State.DRAINING
        if self.ejected_until is not None and now < self.ejected_until:
            return State.EJECTED
        return State.WARMING if self.weight(slow_start, now) < 1.0 else State.READY


@dataclasses.dataclass(eq=False)
class Pick:
    """One attempt's endpoint: routes the request there and reports what came back."""

    balancer: Balancer
    endpoint: Endpoint
    _done: bool = False

    def route(self, request: httpx.Request) -> httpx.Request:
        """The request with the endpoint's address in its URL; Host, path and query kept."""
        address = self.endpoint.address
        self.balancer._scheme = request.url.scheme  # the readiness probes speak it too
        url = request.url.copy_with(host=address.host, port=address.port)
        extensions = dict(request.extensions)
        if request.url.scheme == "https":
            # TLS still checks the name the caller asked for, not the endpoint's address.
            extensions.setdefault("sni_hostname", request.url.host)
        return httpx.Request(
            request.method, url, headers=request.headers, stream=request.stream, extensions=extensions
        )

    def answered(self, response: httpx.Response) -> httpx.Response:
        """Judge the response's headers; the endpoint's in-flight count drops when its body closes."""
        self.balancer._observe_response(self.endpoint, response)
        response.stream = _ClosingStream(response.stream, self.finish)
        return response

    def failed(self, exc: BaseException) -> None:
        self.balancer._observe_error(self.endpoint, exc)
        self.finish()

    def finish(self) -> None:
        if not self._done:
            self._done = True
            self.balancer._release(self.endpoint)


class Balancer:
    """A live endpoint set from a source, the endpoints' states, and the picker over them."""

    def __init__(
        self,
        source: EndpointSource,
        policy: BalancePolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random_module.random,
        stats: Stats | None = None,
    ) -> None:
        self.source = source
        self.stats = stats if stats is not None else Stats()
        self.policy = policy
        self._clock = clock
        self._random = random
        self._lock = threading.Lock()
        self._endpoints: dict[Address, Endpoint] = {}
        self._listed: tuple[Address, ...] | None = None
        self._resolved_once = False
        self._sticky: Address | None = None  # pick_first's endpoint
        self._closed = threading.Event()
        self._scheme = "http"

    # -- the set ----------------------------------------------------------------------------------

    def needs_first_resolution(self) -> bool:
        return not self._resolved_once and self.source.current() is None

    def _sync_set(self, now: float) -> None:
        listed = self.source.current()
        if listed is None or listed == self._listed:
            return
        first = not self._resolved_once
        self._resolved_once = True
        self._listed = listed
        for address in listed:
            endpoint = self._endpoints.get(address)
            if endpoint is None:
                self._endpoints[address] = Endpoint(address, joined_at=now, warm_from_start=first)
            else:
                endpoint.listed = True
        for address in list(self._endpoints):
            if address not in listed:
                # Forgotten: a request already sent to it still finishes (its Pick holds it).
                self._endpoints.pop(address).listed = False
        if self._sticky is not None and self._sticky not in self._endpoints:
            self._sticky = None

    # -- choosing ---------------------------------------------------------------------------------

    def pick(self, avoid: Sequence[Address] = ()) -> Pick:
        """The endpoint for the next attempt; ``avoid`` (endpoints this call tried) when possible.

        Candidates are the ready and warming endpoints; when there are none, the draining ones
        (they still serve while they drain), then every endpoint (Envoy's panic mode: better a
        doubtful endpoint than no attempt). Raises ``httpx.ConnectError`` when the set is empty.
        """
        with self._lock:
            now = self._clock()
            self._sync_set(now)
            endpoints = list(self._endpoints.values())
            if not endpoints:
                raise httpx.ConnectError(f"no endpoints: {self.source.description} resolved to none (yet)")
            slow_start = self.policy.slow_start
            states = {id(e): e.state(slow_start, now) for e in endpoints}
            for endpoint in endpoints:
                if endpoint.ejected_until is not None and states[id(endpoint)] is not State.EJECTED:
                    endpoint.ejected_until = None  # the ejection time is over: back, counters fresh
                    endpoint.last_unejected_at = now
                    endpoint.connect_failures_in_a_row = endpoint.errors_5xx_in_a_row = 0
            usable = [e for e in endpoints if states[id(e)] in (State.READY, State.WARMING)]
            candidates = usable or [e for e in endpoints if states[id(e)] is State.DRAINING] or endpoints
            fresh = [e for e in candidates if e.address not in avoid]
            chosen = self._choose(fresh or candidates, now)
            chosen.in_flight += 1
            chosen.requests += 1
            return Pick(self, chosen)

    def _choose(self, candidates: list[Endpoint], now: float) -> Endpoint:
        picker = self.policy.picker
        if len(candidates) == 1:
            return candidates[0]
        weights = [e.weight(self.policy.slow_start, now) for e in candidates]
        if picker == "pick_first":
            by_address = {e.address: e for e in candidates}
            sticky = self._sticky if self._sticky in by_address else min(by_address)
            self._sticky = sticky  # gRPC's pick_first: stay on it until it cannot be used
            return by_address[sticky]
        if picker == "least_request":
            first = self._weighted_random(candidates, weights)
            others = [(e, w) for e, w in zip(candidates, weights, strict=True) if e is not first]
            second = self._weighted_random([e for e, _ in others], [w for _, w in others])
            # Envoy's weighted least request: weight / (active requests + 1).
            return max(
                (first, second), key=lambda e: e.weight(self.policy.slow_start, now) / (e.in_flight + 1)
            )
        # Smooth weighted round robin (nginx): deterministic, proportional to the weights.
        total = sum(weights)
        for endpoint, weight in zip(candidates, weights, strict=True):
            endpoint.current_weight += weight
        chosen = max(candidates, key=lambda e: e.current_weight)
        chosen.current_weight -= total
        return chosen

    def _weighted_random(self, candidates: list[Endpoint], weights: list[float]) -> Endpoint:
        point = self._random() * sum(weights)
        for endpoint, weight in zip(candidates, weights, strict=True):
            point -= weight
            if point < 0:
                return endpoint
        return candidates[-1]

    # -- what came back ---------------------------------------------------------------------------

    def _release(self, endpoint: Endpoint) -> None:
        with self._lock:
            endpoint.in_flight -= 1

    def _observe_response(self, endpoint: Endpoint, response: httpx.Response) -> None:
        notice = response.headers.get(DRAIN_HEADER)
        with self._lock:
            now = self._clock()
            if notice is not None and endpoint.draining_since is None:
                endpoint.draining_since = now
                endpoint.drain_left = _seconds(notice)
                logger.info(
                    "graceful.client: %s announced its drain (%s: %s): no new requests to it",
                    endpoint.address,
                    DRAIN_HEADER,
                    notice,
                )
                self._start_probe(endpoint)
            status = response.status_code
            shed = status == 503 and response.headers.get(SHED_HEADER) == SHED_VALUE
            if status >= 500 and not shed:
                endpoint.failures += 1
                endpoint.errors_5xx_in_a_row += 1
                self._maybe_eject(endpoint, now, f"{endpoint.errors_5xx_in_a_row} 5xx responses in a row")
            elif not shed:
                endpoint.errors_5xx_in_a_row = endpoint.connect_failures_in_a_row = 0

    def _observe_error(self, endpoint: Endpoint, exc: BaseException) -> None:
        if not isinstance(
            exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.RemoteProtocolError)
        ):
            return  # a read timeout, a cancelled hedge, a local bug: not the endpoint's fault (yet)
        with self._lock:
            endpoint.failures += 1
            endpoint.connect_failures_in_a_row += 1
            self._maybe_eject(
                endpoint, self._clock(), f"{endpoint.connect_failures_in_a_row} connection failures in a row"
            )

    def _maybe_eject(self, endpoint: Endpoint, now: float, why: str) -> None:
        outlier = self.policy.outlier
        if outlier is None or (endpoint.ejected_until is not None and now < endpoint.ejected_until):
            return
        if (
            endpoint.connect_failures_in_a_row < outlier.consecutive_connect_failures
            and endpoint.errors_5xx_in_a_row < outlier.consecutive_5xx
        ):
            return
        total = len(self._endpoints)
        ejected = sum(
            1 for e in self._endpoints.values() if e.ejected_until is not None and now < e.ejected_until
        )
        if ejected + 1 > math.floor(total * outlier.max_ejection_percent / 100 + 1e-9):
            return  # the cap: at most max_ejection_percent of the set
        # Envoy's multiplier decays by one for each base_ejection the endpoint stayed in since.
        if endpoint.last_unejected_at is not None:
            healthy_for = now - endpoint.last_unejected_at
            endpoint.ejections = max(0, endpoint.ejections - int(healthy_for // outlier.base_ejection))
        endpoint.ejections += 1
        seconds = outlier.ejection_time(endpoint.ejections)
        endpoint.ejected_until = now + seconds
        self.stats.count("ejections")
        logger.warning(
            "graceful.client: ejected %s for %g s (%s; ejection %d)",
            endpoint.address,
            seconds,
            why,
            endpoint.ejections,
        )

    # -- draining endpoints that come back --------------------------------------------------------

    def _start_probe(self, endpoint: Endpoint) -> None:
        if endpoint.probing or self._closed.is_set():
            return
        endpoint.probing = True
        thread = threading.Thread(
            target=self._probe, args=(endpoint,), name=f"graceful-probe-{endpoint.address}", daemon=True
        )
        thread.start()

    def _probe(self, endpoint: Endpoint) -> None:
        """After the announced drain: GET the readiness path until it answers 200 without the notice."""
        try:
            if self._closed.wait(endpoint.drain_left + PROBE_INTERVAL):
                return
            for _ in range(int(PROBE_GIVE_UP / PROBE_INTERVAL)):
                if not endpoint.listed or self._closed.is_set():
                    return
                if self._ready_again(endpoint.address):
                    with self._lock:
                        endpoint.draining_since = None
                        # A restarted process is cold: it warms like a newcomer.
                        endpoint.joined_at = self._clock()
                        endpoint.warm_from_start = False
                        endpoint.connect_failures_in_a_row = endpoint.errors_5xx_in_a_row = 0
                    logger.info("graceful.client: %s is ready again after its drain", endpoint.address)
                    return
                if self._closed.wait(PROBE_INTERVAL):
                    return
        finally:
            endpoint.probing = False

    def _ready_again(self, address: Address) -> bool:
        connection: http.client.HTTPConnection
        if self._scheme == "https":
            connection = http.client.HTTPSConnection(
                address.host, address.port, timeout=PROBE_TIMEOUT, context=ssl.create_default_context()
            )
        else:
            connection = http.client.HTTPConnection(address.host, address.port, timeout=PROBE_TIMEOUT)
        try:
            connection.request("GET", self.policy.readiness_path, headers={"connection": "close"})
            response = connection.getresponse()
            response.read()
            return response.status == 200 and response.getheader(DRAIN_HEADER) is None
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    # -- the view ---------------------------------------------------------------------------------

    def view(self) -> list[EndpointView]:
        with self._lock:
            now = self._clock()
            self._sync_set(now)
            return [
                EndpointView(
                    address=str(e.address),
                    state=e.state(self.policy.slow_start, now).value,
                    weight=round(e.weight(self.policy.slow_start, now), 4),
                    in_flight=e.in_flight,
                    requests=e.requests,
                    failures=e.failures,
                    ejections=e.ejections,
                )
                for e in sorted(self._endpoints.values(), key=lambda e: e.address)
            ]

    def close(self) -> None:
        self._closed.set()
        self.source.close()


def _seconds(notice: str) -> float:
    """The drain notice's seconds (a non-negative number); an unreadable one counts as 0."""
    try:
        value = float(notice.strip())
    except ValueError:
        return 0.0
    return min(max(value, 0.0), 3600.0) if math.isfinite(value) else 0.0


class _ClosingStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that tells the balancer when it is closed (the request is over)."""

    def __init__(
        self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, on_close: Callable[[], None]
    ) -> None:
        self._stream = stream
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        assert isinstance(self._stream, httpx.SyncByteStream)
        yield from self._stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._stream, httpx.AsyncByteStream)
        async for chunk in self._stream:
            yield chunk

    def close(self) -> None:
        try:
            if isinstance(self._stream, httpx.SyncByteStream):
                self._stream.close()
        finally:
            self._on_close()

    async def aclose(self) -> None:
        try:
            if isinstance(self._stream, httpx.AsyncByteStream):
                await self._stream.aclose()
        finally:
            self._on_close()
