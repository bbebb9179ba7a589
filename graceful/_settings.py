"""Settings: one frozen, keyword-only dataclass; environment variables map onto its fields.

Environment variables are read only by entry points (``Settings.from_env``), never deep inside.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

ENV_PREFIX = "GRACEFUL_"
# Upper bound for every duration: an hour is longer than any sane termination grace period.
MAX_SECONDS = 3600.0
#: ``log_format`` values (graceful._events.LOG_FORMATS; not imported: that module pulls in logging).
LOG_FORMATS = ("text", "json")


class SettingsError(ValueError):
    """A setting has a value outside its allowed range. The message names field, value and range."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _check_seconds(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(
            field=field,
            message=f"{field}={value!r} is not a number of seconds; allowed: 0 to {MAX_SECONDS:g}",
        )
    if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
        raise SettingsError(
            field=field, message=f"{field}={value!r} is out of range; allowed: 0 to {MAX_SECONDS:g} seconds"
        )


def _check_number(field: str, value: object, low: float, high: float, unit: str = "") -> None:
    suffix = f" {unit}" if unit else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(
            field=field, message=f"{field}={value!r} is not a number; allowed: {low:g} to {high:g}{suffix}"
        )
    if not math.isfinite(value) or not low <= value <= high:
        raise SettingsError(
            field=field, message=f"{field}={value!r} is out of range; allowed: {low:g} to {high:g}{suffix}"
        )


def _check_whole(field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingsError(
            field=field,
            message=f"{field}={value!r} is out of range; allowed: a whole number from {low} to {high}",
        )


def _check_path(field: str, value: object) -> None:
    if not isinstance(value, str) or not value.startswith("/") or len(value) < 2 or value.endswith("/"):
        raise SettingsError(
            field=field,
            message=f"{field}={value!r} is not a usable URL path; allowed: starts with '/', "
            "at least one more character, no trailing '/'",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything graceful can be tuned with. Every field is also ``GRACEFUL_<FIELD>`` in the environment.

    Defaults suit a Kubernetes deployment with the default 30 s termination grace period:
    ``drain_delay + drain_timeout + 2 s <= terminationGracePeriodSeconds``.
    """

    #: Seconds between the start of termination (SIGTERM, /shutdown) and closing the listeners.
    #: Requests keep being served meanwhile; it must cover endpoint propagation (5-15 s in real
    #: clusters, 0 for local runs).
    drain_delay: float = 5.0
    #: Seconds in-flight requests get to finish after the listeners close; then they are cut.
    drain_timeout: float = 23.0
    #: Prefix of the probe endpoints: ``{health_path}``, ``/live``, ``/ready``, ``/startup`` below it.
    health_path: str = "/healthz"
    #: Path of the endpoint that starts the drain (a preStop hook or a VM's deregistration hook).
    shutdown_path: str = "/shutdown"
    #: Bearer token that authorises ``/shutdown`` from anywhere. Unset: only loopback callers may.
    shutdown_token: str | None = dataclasses.field(default=None, repr=False)
    #: Trust callers on loopback for ``/shutdown`` without a token. Turn off when a proxy on the same
    #: host (a service-mesh sidecar) forwards outside traffic from 127.0.0.1.
    shutdown_trust_loopback: bool = True
    #: Accept ``GET /shutdown`` as well as POST (Kubernetes' httpGet preStop hook can only GET).
    shutdown_allow_get: bool = False
    #: Write probe requests to the server's access log (off: probes every few seconds drown it).
    log_probes: bool = False
    #: Under plain ``uvicorn app:app``, let the middleware take over uvicorn's SIGTERM handler so the
    #: drain delay applies without ``graceful.uvicorn`` (see docs/uvicorn.md).
    chain_server_signals: bool = True
    #: While draining, every response also carries ``x-envoy-immediate-health-check-fail: true``:
    #: an Envoy that health-checks this instance actively takes it out of its rotation on the first
    #: such response, instead of at its next check (Envoy's router docs; issue 12).
    envoy_immediate_fail: bool = False
    #: Seconds an idle keep-alive connection stays open, applied by ``graceful.uvicorn`` and the
    #: gunicorn worker classes unless the server's own option is given (uvicorn's
    #: ``--timeout-keep-alive``, gunicorn's ``--keep-alive``). It must be longer than the idle
    #: timeout of whatever keeps a pool of connections to the server (AWS ALB 60 s, nginx upstream
    #: ``keepalive_timeout`` 60 s, Envoy ``idle_timeout`` 1 h: set that one lower), so the pool
    #: always closes first: a server closing an idle connection races the pool's next request on it
    #: (a 502). Stock servers close after 5 s (uvicorn) or 2 s (gunicorn).
    keep_alive: float = 75.0
    #: Path of the Prometheus metrics endpoint (docs/observability.md). Guarded like the check
    #: detail in ``{health_path}``: loopback callers or the ``shutdown_token``, unless public.
    metrics_path: str = "/healthz/metrics"
    #: Serve ``metrics_path`` to every caller (a scraper from another pod), without the token.
    #: The figures are counts and a phase; the check names are the one thing they reveal.
    metrics_public: bool = False

    # -- startup gate and checks (docs/warmup.md) --
    #: Seconds readiness stays failing after the server started, even when every startup check
    #: passed (delayed registration: let caches and pools fill before the balancer sends traffic).
    startup_min_delay: float = 0.0
    #: Seconds between two runs of the readiness and liveness checks (in the background).
    check_interval: float = 5.0
    #: Seconds a check may take before it counts as failed (a check can set its own).
    check_timeout: float = 2.0

    # -- slow start (docs/warmup.md) --
    #: Seconds of slow start after the gate opens (0: none). Needs ``max_concurrency``.
    warmup_window: float = 0.0
    #: Shape of the ramp: share(t) = max(min_share, (t / window) ** curve). 1 linear, 2 Sermant's.
    warmup_curve: float = 1.0
    #: Share admitted at the very start of the window (Envoy's min weight is 10%).
    warmup_min_share: float = 0.1
    #: Requests this process runs at once when warm; the warm-up cap ramps up to it. Unset: no cap.
    max_concurrency: int | None = None
    #: Requests that may wait for a place when the cap is reached; more are answered 503 at once.
    queue_size: int = 100
    #: Seconds a request may wait in that queue before it is answered 503.
    queue_timeout: float = 1.0
    #: ``Retry-After`` of a 503 is ``retry_after + retry_after_jitter * random()``, rounded up.
    retry_after: float = 1.0
    retry_after_jitter: float = 2.0
    #: TCP port (on ``agent_host``) of the HAProxy agent-check responder. Unset: no responder.
    agent_port: int | None = None
    agent_host: str = "127.0.0.1"
    #: How graceful's log records look: ``text`` (a message with the key figures) or ``json`` (one
    #: JSON object per line with every figure, for log pipelines; docs/observability.md).
    log_format: str = "text"

    def __post_init__(self) -> None:
        _check_seconds("drain_delay", self.drain_delay)
        _check_seconds("drain_timeout", self.drain_timeout)
        _check_path("health_path", self.health_path)
        _check_path("shutdown_path", self.shutdown_path)
        if self.shutdown_path == self.health_path or self.shutdown_path.startswith(self.health_path + "/"):
            raise SettingsError(
                f"shutdown_path={self.shutdown_path!r} overlaps health_path={self.health_path!r}; "
                "allowed: a path outside the probe prefix",
                field="shutdown_path",
            )
        _check_path("metrics_path", self.metrics_path)
        taken = {
            "health_path": self.health_path,
            "live_path": self.live_path,
            "ready_path": self.ready_path,
            "startup_path": self.startup_path,
            "shutdown_path": self.shutdown_path,
        }
        for name, path in taken.items():
            if self.metrics_path == path:
                raise SettingsError(
                    f"metrics_path={self.metrics_path!r} is the same path as {name}; "
                    "allowed: a path no other endpoint uses",
                    field="metrics_path",
                )
        if self.shutdown_token is not None and (
            not isinstance(self.shutdown_token, str) or len(self.shutdown_token) < 16
        ):
            raise SettingsError(
                "shutdown_token is too short; allowed: a string of at least 16 characters",
                field="shutdown_token",
            )
        _check_number("keep_alive", self.keep_alive, 1, MAX_SECONDS, "seconds")
        _check_seconds("startup_min_delay", self.startup_min_delay)
        _check_number("check_interval", self.check_interval, 0.05, MAX_SECONDS, "seconds")
        _check_number("check_timeout", self.check_timeout, 0.01, MAX_SECONDS, "seconds")
        _check_seconds("warmup_window", self.warmup_window)
        _check_number("warmup_curve", self.warmup_curve, 0.1, 10)
        _check_number("warmup_min_share", self.warmup_min_share, 0.0, 1.0)
        if self.max_concurrency is not None:
            _check_whole("max_concurrency", self.max_concurrency, 1, 1_000_000)
        _check_whole("queue_size", self.queue_size, 0, 1_000_000)
        _check_number("queue_timeout", self.queue_timeout, 0.0, 60.0, "seconds")
        _check_number("retry_after", self.retry_after, 0.0, MAX_SECONDS, "seconds")
        _check_number("retry_after_jitter", self.retry_after_jitter, 0.0, MAX_SECONDS, "seconds")
        if self.agent_port is not None:
            _check_whole("agent_port", self.agent_port, 1, 65535)
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(
                f"log_format={self.log_format!r} is not a log format; allowed: {' or '.join(LOG_FORMATS)}",
                field="log_format",
            )
        if self.warmup_window > 0 and self.max_concurrency is None:
            raise SettingsError(
                f"warmup_window={self.warmup_window!r} needs max_concurrency: slow start is enforced as a "
                "concurrency cap that ramps up to it; allowed: set max_concurrency, or warmup_window=0",
                field="warmup_window",
            )
        for name in (
            "shutdown_trust_loopback",
            "shutdown_allow_get",
            "log_probes",
            "chain_server_signals",
            "envoy_immediate_fail",
            "metrics_public",
        ):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise SettingsError(f"{name}={value!r} is not a boolean; allowed: True or False", field=name)

    @property
    def live_path(self) -> str:
        return self.health_path + "/live"

    @property
    def ready_path(self) -> str:
        return self.health_path + "/ready"

    @property
    def startup_path(self) -> str:
        return self.health_path + "/startup"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (and validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``GRACEFUL_*`` variables; keyword ``overrides`` win over the environment."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        from_environment: dict[str, str] = {}
        for field in dataclasses.fields(cls):
            variable = ENV_PREFIX + field.name.upper()
            if variable in environ and field.name not in overrides:
                values[field.name] = _parse_env(field, environ[variable])
                from_environment[field.name] = variable
        values.update(overrides)
        try:
            return cls(**values)
        except SettingsError as exc:
            name = exc.field
            if name is None or name not in from_environment:
                raise
            # Name what the user wrote: the variable and its text, not the field and parsed value.
            variable = from_environment[name]
            written = f"{variable}={environ[variable]!r}"
            message = str(exc)
            prefix = f"{name}={values[name]!r}"
            message = (
                written + message[len(prefix) :] if message.startswith(prefix) else f"{written}: {message}"
            )
            raise SettingsError(message, field=name) from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_env(field: dataclasses.Field[Any], raw: str) -> Any:
    """Turn one environment string into the field's type.

    Text that does not parse is passed on as it is, so the field's validator rejects it with the
    same message (field, value, allowed range) as a bad keyword argument would get.
    """
    kind = str(field.type)
    text = raw.strip()
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            return raw
    if kind in ("int", "int | None"):
        if not text and kind == "int | None":
            return None
        try:
            return int(text)
        except ValueError:
            return raw
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        return raw
    if kind == "str | None":
        return text or None
    return text
