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


class SettingsError(ValueError):
    """A setting has a value outside its allowed range. The message names field, value and range."""


def _check_seconds(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(f"{field}={value!r} is not a number of seconds; allowed: 0 to {MAX_SECONDS:g}")
    if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
        raise SettingsError(f"{field}={value!r} is out of range; allowed: 0 to {MAX_SECONDS:g} seconds")


def _check_path(field: str, value: object) -> None:
    if not isinstance(value, str) or not value.startswith("/") or len(value) < 2 or value.endswith("/"):
        raise SettingsError(
            f"{field}={value!r} is not a usable URL path; allowed: starts with '/', "
            "at least one more character, no trailing '/'"
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
    drain_timeout: float = 25.0
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

    def __post_init__(self) -> None:
        _check_seconds("drain_delay", self.drain_delay)
        _check_seconds("drain_timeout", self.drain_timeout)
        _check_path("health_path", self.health_path)
        _check_path("shutdown_path", self.shutdown_path)
        if self.shutdown_path == self.health_path or self.shutdown_path.startswith(self.health_path + "/"):
            raise SettingsError(
                f"shutdown_path={self.shutdown_path!r} overlaps health_path={self.health_path!r}; "
                "allowed: a path outside the probe prefix"
            )
        if self.shutdown_token is not None and (
            not isinstance(self.shutdown_token, str) or len(self.shutdown_token) < 16
        ):
            raise SettingsError("shutdown_token is too short; allowed: a string of at least 16 characters")
        for name in ("shutdown_trust_loopback", "shutdown_allow_get", "log_probes", "chain_server_signals"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise SettingsError(f"{name}={value!r} is not a boolean; allowed: True or False")

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
        for field in dataclasses.fields(cls):
            variable = ENV_PREFIX + field.name.upper()
            if variable in environ:
                values[field.name] = _parse_env(variable, field, environ[variable])
        values.update(overrides)
        return cls(**values)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_env(variable: str, field: dataclasses.Field[Any], raw: str) -> Any:
    """Turn one environment string into the field's type, naming the variable when it cannot."""
    kind = str(field.type)
    text = raw.strip()
    if kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise SettingsError(
                f"{variable}={raw!r} is not a number of seconds; allowed: 0 to {MAX_SECONDS:g}"
            ) from None
        if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
            raise SettingsError(f"{variable}={raw!r} is out of range; allowed: 0 to {MAX_SECONDS:g} seconds")
        return value
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise SettingsError(f"{variable}={raw!r} is not a boolean; allowed: 1/0, true/false, yes/no, on/off")
    if kind == "str | None":
        return text or None
    return text
