"""Dependency checks: startup checks gate readiness; readiness and liveness checks run in the background.

    middleware.add_check("database", ping_database, kind="readiness", timeout=1.0)
    middleware.add_check("search", ping_search, kind="readiness", critical=False)  # a weak dependency

A check passes when it returns anything but ``False`` without raising, within its timeout. Sync
checks run in a worker thread so a slow one never blocks the event loop. Readiness and liveness
checks run every ``check_interval`` seconds in the background, never on the request path: a probe
only reads their latest results. A non-critical check shows in ``/healthz`` detail but never fails
a probe.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger("graceful")

CheckKind = Literal["startup", "readiness", "liveness"]
KINDS: tuple[CheckKind, ...] = ("startup", "readiness", "liveness")


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    func: Callable[[], Any]
    kind: CheckKind = "readiness"
    timeout: float | None = None  # None: the settings' check_timeout
    critical: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"check {self.name!r}: kind={self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.timeout is not None and not 0 < self.timeout <= 3600:
            raise ValueError(
                f"check {self.name!r}: timeout={self.timeout!r}; allowed: more than 0, up to 3600 s"
            )


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    error: str | None
    seconds: float


class Checks:
    """The registered checks of one process and their latest results."""

    def __init__(self, *, default_timeout: float, clock: Callable[[], float]) -> None:
        self.default_timeout = default_timeout
        self.clock = clock
        self._checks: list[Check] = []
        self._results: dict[str, CheckResult] = {}

    def add(self, check: Check) -> None:
        if any(existing.name == check.name for existing in self._checks):
            raise ValueError(f"a check named {check.name!r} is already registered")
        self._checks.append(check)

    def of_kind(self, kind: CheckKind) -> list[Check]:
        return [check for check in self._checks if check.kind == kind]

    @property
    def has_startup_work(self) -> bool:
        """Whether opening the gate must wait for checks (startup, or critical readiness ones)."""
        return any(c.kind == "startup" or (c.kind == "readiness" and c.critical) for c in self._checks)

    async def run(self, check: Check) -> CheckResult:
        """Run one check, bounded by its timeout, and remember the result."""
        started = self.clock()
        timeout = check.timeout if check.timeout is not None else self.default_timeout
        try:
            if inspect.iscoroutinefunction(check.func):
                outcome = await asyncio.wait_for(check.func(), timeout)
            else:
                outcome = await asyncio.wait_for(asyncio.to_thread(check.func), timeout)
                if inspect.isawaitable(outcome):  # a sync callable that returned a coroutine
                    outcome = await asyncio.wait_for(outcome, timeout)
            ok, error = outcome is not False, None if outcome is not False else "returned False"
        except asyncio.TimeoutError:
            ok, error = False, f"timed out after {timeout:g} s"
        except Exception as exc:  # a failing dependency is a result, not a crash
            ok, error = False, f"{type(exc).__name__}: {exc}"
        result = CheckResult(ok, error, round(self.clock() - started, 4))
        previous = self._results.get(check.name)
        if previous is None or previous.ok != ok:
            log = logger.info if ok else logger.warning
            log("graceful: %s check %r %s", check.kind, check.name, "passes" if ok else f"fails: {error}")
        self._results[check.name] = result
        return result

    async def run_kind(self, kind: CheckKind) -> bool:
        """Run every check of a kind at once; True when every critical one passed."""
        checks = self.of_kind(kind)
        results = await asyncio.gather(*(self.run(check) for check in checks))
        return all(result.ok for check, result in zip(checks, results, strict=True) if check.critical)

    def passing(self, kind: CheckKind) -> bool:
        """Whether every critical check of a kind passed on its latest run (not yet run: passing)."""
        for check in self._checks:
            if check.kind == kind and check.critical:
                result = self._results.get(check.name)
                if result is not None and not result.ok:
                    return False
        return True

    def detail(self) -> dict[str, dict[str, Any]]:
        """Names, kinds and latest results: for trusted callers only (errors can reveal internals)."""
        detail = {}
        for check in self._checks:
            result = self._results.get(check.name)
            detail[check.name] = {
                "kind": check.kind,
                "critical": check.critical,
                "ok": None if result is None else result.ok,
                "error": None if result is None else result.error,
                "seconds": None if result is None else result.seconds,
            }
        return detail
