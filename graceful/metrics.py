"""Prometheus metrics of an instance, read from its state board (docs/observability.md).

    GET /healthz/metrics                         # served by both middlewares (``metrics_path``)

    from prometheus_client import REGISTRY       # or: into the registry your /metrics serves
    from graceful.metrics import GracefulCollector
    REGISTRY.register(GracefulCollector())       # the process's lifecycle (get_lifecycle())

Every figure comes from the board every process of the instance shares (gunicorn ``-w N``
workers, a supervisor's children), summed over its slots on read: any worker answers with the
instance's exact totals, with no ``PROMETHEUS_MULTIPROC_DIR``, and nothing is counted twice.

``snapshot`` reads; ``render`` is a pure function of a ``MetricsSnapshot``. It renders through
prometheus-client's own families and ``generate_latest`` when that is installed (the
``prometheus`` extra), else through a small stdlib writer of the same text format (0.0.4),
byte for byte. This module imports only the standard library; prometheus-client is imported when
first used.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from graceful._board import StateBoard
from graceful._checks import Checks
from graceful._lifecycle import Lifecycle, get_lifecycle
from graceful._phase import Phase
from graceful._settings import Settings
from graceful._warmup import warmup_share

__all__ = ["CONTENT_TYPE", "GracefulCollector", "MetricsSnapshot", "render", "snapshot", "transport_families"]

#: The text format's content type (what prometheus-client's ``generate_latest`` writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Clock = Callable[[], float]

# name (as exposed), type, help. A counter's family name is without ``_total`` (prometheus-client
# adds it); the table keeps the exposed name, so the two writers agree by construction.
_PHASE = (
    "graceful_phase",
    "gauge",
    "Lifecycle phase of the instance: 1 for the current phase, 0 for the others.",
)
_IN_FLIGHT = (
    "graceful_in_flight_requests",
    "gauge",
    "Requests (websockets included) in flight in all processes of the instance.",
)
_WEBSOCKETS = (
    "graceful_websockets_open",
    "gauge",
    "Websocket connections open in all processes of the instance.",
)
_REQUESTS = (
    "graceful_requests_total",
    "counter",
    "Requests (websockets included) that reached the app, in the processes now on the board.",
)
_SHED = (
    "graceful_shed_total",
    "counter",
    "Requests answered 503 by admission control (never reached the app), in the processes now on the board.",
)
_SHARE = (
    "graceful_warmup_share",
    "gauge",
    "Share of max_concurrency slow start admits now: 0 while starting, ramping while warming, then 1.",
)
_CHECK_UP = ("graceful_check_up", "gauge", "Latest result of each dependency check: 1 passed, 0 failed.")
_DRAIN_STARTED = (
    "graceful_drain_started_timestamp_seconds",
    "gauge",
    "Unix time the drain (termination) began; 0 before a drain.",
)
_PROCESSES = ("graceful_processes", "gauge", "Server processes on the state board of the instance.")

PHASES = tuple(phase.name.lower() for phase in Phase)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricsSnapshot:
    """The figures of one moment, as read from the board (plus this process's check results)."""

    phase: Phase
    in_flight: int
    websockets: int
    requests: int
    shed: int
    warmup_share: float
    #: Check name -> latest result; a check that has not run yet is left out.
    checks: Mapping[str, bool]
    #: Unix time the drain began, or None before a drain.
    drain_started: float | None
    processes: int


def snapshot(
    source: Lifecycle | StateBoard,
    *,
    checks: Checks | None = None,
    settings: Settings | None = None,
    clock: Clock | None = None,
    wall_clock: Clock = time.time,
) -> MetricsSnapshot:
    """Read the figures from a lifecycle's board (or a bare board) now.

    ``settings`` and ``clock`` default to the lifecycle's (a bare board: ``Settings()`` and
    ``time.monotonic``, the board's clock); they only shape ``warmup_share``. The board keeps
    monotonic times (the same clock in every process); the drain start is turned into Unix time
    with ``wall_clock`` here.
    """
    if isinstance(source, Lifecycle):
        source.flush_traffic()  # this process's figures exact; others at most one tick late
        board = source.board
        settings = settings if settings is not None else source.settings
        clock = clock if clock is not None else source.clock
    else:
        board = source
        settings = settings if settings is not None else Settings()
        clock = clock if clock is not None else time.monotonic
    now = clock()
    slots = board.read_slots()
    phase = board.phase
    started = board.drain_started_at
    return MetricsSnapshot(
        phase=phase,
        in_flight=sum(slot.in_flight for slot in slots),
        websockets=sum(slot.websockets for slot in slots),
        requests=sum(slot.requests for slot in slots),
        shed=sum(slot.shed for slot in slots),
        warmup_share=current_share(phase, now - board.phase_changed_at, settings),
        checks=_check_results(checks),
        drain_started=None if started is None else wall_clock() - (now - started),
        processes=len(slots),
    )


def current_share(phase: Phase, in_phase: float, settings: Settings) -> float:
    """0 while STARTING (the gate is closed), ``warmup_share`` of the time in WARMING, else 1."""
    if phase is Phase.STARTING:
        return 0.0
    if phase is not Phase.WARMING:
        return 1.0
    return warmup_share(
        in_phase,
        window=settings.warmup_window,
        curve=settings.warmup_curve,
        min_share=settings.warmup_min_share,
    )


def _check_results(checks: Checks | None) -> dict[str, bool]:
    if checks is None:
        return {}
    return {name: bool(entry["ok"]) for name, entry in checks.detail().items() if entry["ok"] is not None}


# -- families ----------------------------------------------------------------------------------------

# One family: (name, type, help, samples); a sample is (labels, value).
_Family = tuple[str, str, str, list[tuple[dict[str, str], float]]]


def _families(snap: MetricsSnapshot) -> list[_Family]:
    """The families in exposition order, independent of any library."""
    current = snap.phase.name.lower()

    def one(spec: tuple[str, str, str], value: float) -> _Family:
        return (*spec, [({}, value)])

    return [
        (*_PHASE, [({"phase": name}, 1.0 if name == current else 0.0) for name in PHASES]),
        one(_IN_FLIGHT, snap.in_flight),
        one(_WEBSOCKETS, snap.websockets),
        one(_REQUESTS, snap.requests),
        one(_SHED, snap.shed),
        one(_SHARE, snap.warmup_share),
        (*_CHECK_UP, [({"check": name}, 1.0 if ok else 0.0) for name, ok in sorted(snap.checks.items())]),
        one(_DRAIN_STARTED, 0.0 if snap.drain_started is None else snap.drain_started),
        one(_PROCESSES, snap.processes),
    ]


def _prometheus_families(families: list[_Family]) -> list[Any]:
    """The same families as prometheus-client objects (raises ImportError without it).

    ``graceful_phase`` is a gauge with a ``phase`` label, one sample per phase (kube-state-metrics'
    ``kube_pod_status_phase{phase=...}`` shape), not a ``StateSetMetricFamily``: that class names
    the state label after the metric (``graceful_phase{graceful_phase="draining"}``, as OpenMetrics
    requires of a stateset), and the text format writes a stateset as a gauge anyway.
    """
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    built: list[Any] = []
    for name, kind, help_text, samples in families:
        labels = sorted(samples[0][0]) if samples else (["check"] if name == _CHECK_UP[0] else [])
        if kind == "counter":
            family: Any = CounterMetricFamily(name.removesuffix("_total"), help_text, labels=labels)
        else:
            family = GaugeMetricFamily(name, help_text, labels=labels)
        for labels_of, value in samples:
            family.add_metric([labels_of[key] for key in sorted(labels_of)], value)
        built.append(family)
    return built


def _have_client() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def render(snap: MetricsSnapshot) -> bytes:
    """The exposition (text format 0.0.4; ``CONTENT_TYPE``): through prometheus-client when
    installed, else through the stdlib writer; both give the same bytes."""
    if not _have_client():
        return render_stdlib(snap)
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(_prometheus_families(_families(snap))))
    return generate_latest(registry)


class _Fixed:
    """A collector that yields families already built (for a private registry)."""

    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        return iter(self._families)


def render_stdlib(snap: MetricsSnapshot) -> bytes:
    """The stdlib writer: the text format as prometheus-client's ``generate_latest`` writes it."""
    return _write_text(_families(snap))


def _write_text(families: list[_Family]) -> bytes:
    lines: list[str] = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {_escape_help(help_text)}\n")
        lines.append(f"# TYPE {name} {kind}\n")
        for labels, value in samples:
            label_text = ",".join(f'{key}="{_escape_label(labels[key])}"' for key in sorted(labels))
            braces = f"{{{label_text}}}" if label_text else ""
            lines.append(f"{name}{braces} {_go_float(value)}\n")
    return "".join(lines).encode("utf-8")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(value: str) -> str:
    # The text format's label-value escapes: backslash, double quote, line feed.
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _go_float(value: float) -> str:
    """A float as Go's strconv writes it, which the text format follows (and prometheus-client)."""
    number = float(value)
    if number != number:
        return "NaN"
    if number in (float("inf"), float("-inf")):
        return "+Inf" if number > 0 else "-Inf"
    text = repr(number)
    dot = text.find(".")
    if number > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


# -- the collector ------------------------------------------------------------------------------------


class GracefulCollector:
    """graceful's series for a prometheus-client registry: ``REGISTRY.register(GracefulCollector())``.

    ``lifecycle_or_board``: the lifecycle to read (default: the process's, ``get_lifecycle()``,
    looked up at each scrape, so it may be registered before the server builds it), or a bare
    ``StateBoard`` (then ``settings`` shape the warm-up share). ``checks``: whose results become
    ``graceful_check_up``; default: those of the newest graceful middleware built on the
    lifecycle. ``transports``: graceful.client transports by name (the ``client`` label), whose
    counters and endpoint states become the ``graceful_client_*`` series; ``instance=False``
    leaves the server's series out (a process that is only a caller). Needs prometheus-client
    (the ``prometheus`` extra).
    """

    def __init__(
        self,
        lifecycle_or_board: Lifecycle | StateBoard | None = None,
        *,
        checks: Checks | None = None,
        settings: Settings | None = None,
        transports: Mapping[str, TransportLike] | None = None,
        instance: bool = True,
    ) -> None:
        if not _have_client():
            raise ImportError(
                "graceful.metrics.GracefulCollector needs prometheus-client: "
                "pip install 'graceful-rollout[prometheus]'"
            )
        self._source = lifecycle_or_board
        self._checks = checks
        self._settings = settings
        self._transports = dict(transports or {})
        self._instance = instance

    def collect(self) -> Iterator[Any]:
        families: list[_Family] = []
        if self._instance:
            source = self._source if self._source is not None else get_lifecycle()
            checks = self._checks
            if checks is None and isinstance(source, Lifecycle):
                checks = _middleware_checks(source)
            families += _families(snapshot(source, checks=checks, settings=self._settings))
        families += transport_families(self._transports)
        return iter(_prometheus_families(families))

    def describe(self) -> Iterator[Any]:
        """The families without samples: registering must not read (or create) the lifecycle."""
        empty = MetricsSnapshot(
            phase=Phase.STARTING,
            in_flight=0,
            websockets=0,
            requests=0,
            shed=0,
            warmup_share=0.0,
            checks={},
            drain_started=None,
            processes=0,
        )
        families = (_families(empty) if self._instance else []) + transport_families(self._transports)
        return iter(_prometheus_families(families))


def _middleware_checks(lifecycle: Lifecycle) -> Checks | None:
    """The checks of the newest middleware built on ``lifecycle`` (each runs the same set)."""
    for middleware in reversed(lifecycle.middlewares(object)):
        checks = getattr(middleware, "checks", None)
        if isinstance(checks, Checks):
            return checks
    return None


# -- the caller's side: graceful.client transports ------------------------------------------------


class TransportLike(Protocol):
    """What the collector reads of a graceful.client ``Transport`` or ``AsyncTransport``."""

    def stats(self) -> Any: ...
    def endpoints(self) -> list[Any]: ...


_CLIENT_COUNTERS = (
    ("calls", "graceful_client_calls_total", "Calls made through the transport."),
    (
        "failed_calls",
        "graceful_client_failed_calls_total",
        "Calls that ended on an error after every attempt.",
    ),
    ("attempts", "graceful_client_attempts_total", "Attempts sent (first ones, retries and hedges)."),
    (
        "transparent_retries",
        "graceful_client_transparent_retries_total",
        "Retries of attempts that failed before the app saw them (refused, shed): not in max_attempts.",
    ),
    ("hedges", "graceful_client_hedges_total", "Hedged attempts started."),
    (
        "budget_refusals",
        "graceful_client_budget_refusals_total",
        "Retries and hedges the retry budget refused.",
    ),
    ("ejections", "graceful_client_ejections_total", "Endpoints ejected by outlier detection."),
)
_CLIENT_RETRIES = (
    "graceful_client_retries_total",
    "counter",
    "Retries by the failure they followed (never_sent, no_response, timeout, status).",
)
_CLIENT_ENDPOINTS = (
    "graceful_client_endpoints",
    "gauge",
    "Endpoints of a balancing transport by state (ready, warming, draining, ejected).",
)
ENDPOINT_STATES = ("ready", "warming", "draining", "ejected")


def transport_families(transports: Mapping[str, TransportLike]) -> list[_Family]:
    """The ``graceful_client_*`` families of these transports, labelled ``client=<name>``."""
    if not transports:
        return []
    stats = {name: transport.stats() for name, transport in sorted(transports.items())}
    families: list[_Family] = [
        (
            metric,
            "counter",
            help_text,
            [({"client": name}, float(getattr(s, field))) for name, s in stats.items()],
        )
        for field, metric, help_text in _CLIENT_COUNTERS
    ]
    families.append(
        (
            *_CLIENT_RETRIES,
            [
                ({"client": name, "reason": reason}, float(count))
                for name, s in stats.items()
                for reason, count in sorted(s.retries.items())
            ],
        )
    )
    endpoint_samples = []
    for name, transport in sorted(transports.items()):
        states = [view.state for view in transport.endpoints()]
        endpoint_samples += [
            ({"client": name, "state": state}, float(states.count(state))) for state in ENDPOINT_STATES
        ]
    families.append((*_CLIENT_ENDPOINTS, endpoint_samples))
    return families
