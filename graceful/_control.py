"""Probes and /shutdown, independent of ASGI or WSGI: adapters translate a request in and a Reply out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from graceful._checks import Checks
from graceful._lifecycle import Lifecycle
from graceful._phase import Phase
from graceful._policies import may_shutdown, query_flag
from graceful._wire import DRAIN_HEADER, ENVOY_IMMEDIATE_FAIL_HEADER, SHED_HEADER, SHED_VALUE
from graceful.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from graceful.metrics import render, snapshot

if TYPE_CHECKING:
    from graceful._admission import AdmissionBase

PLAIN = b"text/plain; charset=utf-8"
JSON = b"application/json"
_METRICS_CONTENT_TYPE = METRICS_CONTENT_TYPE.encode()


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: bytes = PLAIN
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()
    #: /shutdown?wait=1: hold the reply until the drain delay is over.
    wait_for_drain: bool = False

    def headers(
        self, *, head: bool = False, close: bool = False, notice: tuple[tuple[bytes, bytes], ...] = ()
    ) -> list[tuple[bytes, bytes]]:
        """The response's headers; ``notice``: the drain notice (``drain_notice``) to add."""
        headers = [
            (b"content-type", self.content_type),
            (b"content-length", str(len(self.body)).encode()),
            # Probe answers describe this instant; a cache in between must not replay them.
            (b"cache-control", b"no-store"),
            *self.extra_headers,
            *notice,
        ]
        if close:
            headers.append((b"connection", b"close"))
        return headers


def drain_notice(lifecycle: Lifecycle) -> tuple[tuple[bytes, bytes], ...]:
    """Headers every response carries while the instance drains; none while it serves.

    ``graceful-drain: <seconds of drain delay left>`` (graceful._wire.DRAIN_HEADER), and with
    ``envoy_immediate_fail`` Envoy's ``x-envoy-immediate-health-check-fail: true``: an Envoy that
    health-checks the instance actively fails the host on the first such response (Envoy's router
    filter docs) rather than at its next check. Both are end-to-end headers (RFC 9110 7.6.1), so
    every server passes them on, unlike ``Connection: close``.
    """
    seconds = lifecycle.drain_notice_seconds()
    if seconds is None:
        return ()
    notice = (DRAIN_HEADER.encode(), str(seconds).encode())
    if lifecycle.settings.envoy_immediate_fail:
        return (notice, _ENVOY_FAIL)
    return (notice,)


_ENVOY_FAIL = (ENVOY_IMMEDIATE_FAIL_HEADER.encode(), b"true")


def shed_reply(retry_after: int) -> Reply:
    """503 for a request over the admission cap: retry later (RFC 9110 10.2.3), likely elsewhere.

    Adapters send it with ``Connection: close``, so the retry takes a new connection, which a
    balancer may give to another instance. The ``graceful-shed`` header tells a client that the
    application never saw the request, so retrying it is safe for any method.
    """
    retry = (b"retry-after", str(retry_after).encode())
    shed = (SHED_HEADER.encode(), SHED_VALUE.encode())
    return Reply(503, b"overloaded, retry later\n", extra_headers=(retry, shed))


@dataclass
class Request:
    """The few parts of a request the control plane looks at."""

    method: str
    path: str
    query: str = ""
    authorization: str | None = None
    client_host: str | None = None
    #: The connection's local address, where the server says (ASGI scope["server"], the socket under
    #: gunicorn); None where it does not (waitress, wsgiref put a name in SERVER_NAME).
    server_host: str | None = None
    #: The request carries a header a proxy adds (graceful._policies.is_forwarded).
    forwarded: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class ControlPlane:
    """Answers the probe and shutdown endpoints for one lifecycle."""

    def __init__(
        self, lifecycle: Lifecycle, checks: Checks | None = None, admission: AdmissionBase | None = None
    ) -> None:
        self.lifecycle = lifecycle
        self.checks = checks if checks is not None else Checks(default_timeout=1.0, clock=lifecycle.clock)
        self.admission = admission
        settings = lifecycle.settings
        self.health_path = settings.health_path
        self.shutdown_path = settings.shutdown_path
        self.metrics_path = settings.metrics_path
        self._probes = {
            settings.health_path: self._health,
            settings.live_path: self._live,
            settings.ready_path: self._ready,
            settings.startup_path: self._startup,
        }

        #: Every path answered here (a frozenset: one hash lookup on the hot path).
        self.paths = frozenset({*self._probes, self.shutdown_path, self.metrics_path})

    def handles(self, path: str) -> bool:
        return path in self.paths

    def is_probe(self, path: str) -> bool:
        return path in self._probes

    def answer(self, request: Request) -> Reply:
        if request.path == self.shutdown_path:
            return self._shutdown(request)
        if request.method not in ("GET", "HEAD"):
            return Reply(405, b"method not allowed\n", extra_headers=((b"allow", b"GET, HEAD"),))
        if request.path == self.health_path:
            return self._health(detail=self.trusted(request))
        if request.path == self.metrics_path:
            return self._metrics(request)
        return self._probes[request.path]()

    def trusted(self, request: Request) -> bool:
        """The one trust decision: who may drain, see check detail in /healthz, and read metrics.

        A direct caller on loopback (no proxy header, arrived on a loopback address), or the holder
        of the bearer token: graceful._policies.may_shutdown. Every privileged endpoint asks here.
        """
        settings = self.lifecycle.settings
        return may_shutdown(
            client_host=request.client_host,
            server_host=request.server_host,
            forwarded=request.forwarded,
            authorization=request.authorization,
            token=settings.shutdown_token,
            trust_loopback=settings.shutdown_trust_loopback,
        )

    # -- probes: tiny bodies, nothing sensitive --------------------------------------------------

    def _live(self) -> Reply:
        # Liveness is "the process answers" (and its critical liveness checks pass): it stays 200
        # through the whole drain, so the kubelet does not restart a pod that is shutting down.
        if not self.checks.passing("liveness"):
            return Reply(503, b"not live: a liveness check fails\n")
        return Reply(200, b"ok\n")

    def _ready(self) -> Reply:
        phase = self.lifecycle.phase
        if not phase.is_serving:
            return Reply(503, f"not ready: {phase.name.lower()}\n".encode())
        if not self.checks.passing("readiness"):
            return Reply(503, b"not ready: a readiness check fails\n")
        return Reply(200, b"ready\n")

    def _startup(self) -> Reply:
        if self.lifecycle.phase.is_started:
            return Reply(200, b"started\n")
        return Reply(503, b"starting\n")

    def _health(self, *, detail: bool = False) -> Reply:
        snapshot = self.lifecycle.snapshot()
        snapshot["ready"] = snapshot["ready"] and self.checks.passing("readiness")
        if self.admission is not None:
            snapshot["admission"] = self.admission.snapshot()
        if detail:  # check names and errors can reveal internals: trusted callers only
            snapshot["checks"] = self.checks.detail()
            if "drain" in snapshot:  # with what started it (a caller's address) and the delay in force
                snapshot["drain"] = self.lifecycle.drain_figures(instance=True)
        status = 200 if snapshot["ready"] else 503
        return Reply(status, json.dumps(snapshot).encode() + b"\n", JSON)

    # -- metrics -------------------------------------------------------------------------------------

    def _metrics(self, request: Request) -> Reply:
        """The Prometheus exposition of the whole instance (graceful.metrics), for trusted callers
        (the check names are internals, like the check detail), or anyone with ``metrics_public``."""
        if not (self.lifecycle.settings.metrics_public or self.trusted(request)):
            return Reply(403, b"forbidden\n")
        figures = snapshot(self.lifecycle, checks=self.checks)
        return Reply(200, render(figures), _METRICS_CONTENT_TYPE)

    # -- /shutdown -------------------------------------------------------------------------------

    def _shutdown(self, request: Request) -> Reply:
        settings = self.lifecycle.settings
        allowed_methods = ("POST", "GET") if settings.shutdown_allow_get else ("POST",)
        if request.method not in allowed_methods:
            return Reply(
                405, b"method not allowed\n", extra_headers=((b"allow", ", ".join(allowed_methods).encode()),)
            )
        if not self.trusted(request):
            # Nothing changes on a refusal; the body does not say which check failed.
            return Reply(403, b"forbidden\n")
        started = self.lifecycle.begin_drain(
            f"{request.method} {self.shutdown_path} from {request.client_host}"
        )
        phase = self.lifecycle.phase
        body = {
            "phase": phase.name.lower(),
            "drain_started": started,
            "drain_delay_seconds": self.lifecycle.drain_delay,
        }
        wait = query_flag(request.query, "wait") and phase <= Phase.DRAINING
        return Reply(202, json.dumps(body).encode() + b"\n", JSON, wait_for_drain=wait)
