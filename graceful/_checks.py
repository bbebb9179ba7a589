"""Dependency checks: startup checks gate readiness; readiness and liveness checks run in the background.

    middleware.add_check("database", ping_database, kind="readiness", timeout=1.0)
    middleware.add_check("search", ping_search, kind="readiness", critical=False)  # a weak dependency

A check passes when it returns anything but ``False`` without raising, within its timeout. Sync
checks run in a daemon thread so a slow one never blocks the event loop, nor the process's exit.
Readiness and liveness checks run every ``check_interval`` seconds in the background, never on the
request path: a probe only reads their latest results. A non-critical check shows in ``/healthz``
detail but never fails a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from graceful._events import log_event

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
        #: Per sync check, its run in progress (or last run): see ``_sync_run``.
        self._runs: dict[str, asyncio.Task[Any]] = {}

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
                # shield: a timeout abandons the run, it cannot stop a thread (see _sync_run)
                outcome = await asyncio.wait_for(asyncio.shield(self._sync_run(check, timeout)), timeout)
            ok, error = outcome is not False, None if outcome is not False else "returned False"
        except asyncio.TimeoutError:
            ok, error = False, f"timed out after {timeout:g} s"
        except Exception as exc:  # a failing dependency is a result, not a crash
            ok, error = False, f"{type(exc).__name__}: {exc}"
        result = CheckResult(ok, error, round(self.clock() - started, 4))
        previous = self._results.get(check.name)
        if previous is None or previous.ok != ok:
            was = None if previous is None else "up" if previous.ok else "down"
            log_event(
                logging.INFO if ok else logging.WARNING,
                "check_flipped",
                f"graceful: {check.kind} check {check.name!r} " + ("passes" if ok else f"fails: {error}"),
                log=logger,
                check=check.name,
                kind=check.kind,
                critical=check.critical,
                **{"from": was, "to": "up" if ok else "down"},
                error=error,
                seconds=result.seconds,
            )
        self._results[check.name] = result
        return result

    def _sync_run(self, check: Check, timeout: float) -> asyncio.Task[Any]:
        """The run of a sync check still in progress, else a new one in a new daemon thread.

        A thread cannot be stopped, so a check that hangs (a connect() to a dead host) would start
        one more thread every ``check_interval`` and pile them up. Instead a run that finds the
        previous run of the same check still going waits for that one, within its own timeout, and
        reports it as timed out if it is still stuck. Concurrent runs (the startup gate's and the
        background loop's) share one thread the same way.
        """
        loop = asyncio.get_running_loop()
        run = self._runs.get(check.name)
        # A run of another loop (one closed, or the parent's before a fork) is not waited for.
        if run is None or run.done() or run.get_loop() is not loop:
            name = f"graceful-check-{check.name}"
            run = loop.create_task(_call_sync(check.func, timeout, name), name=name)
            # A run nobody waits for any more must not log "exception was never retrieved".
            run.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._runs[check.name] = run
        return run

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


async def _call_sync(func: Callable[[], Any], timeout: float, name: str) -> Any:
    outcome = await _in_daemon_thread(func, name=name)
    if inspect.isawaitable(outcome):  # a sync callable that returned a coroutine
        outcome = await asyncio.wait_for(outcome, timeout)
    return outcome


def _in_daemon_thread(func: Callable[[], Any], *, name: str) -> asyncio.Future[Any]:
    """Call ``func`` in a new daemon thread; its result or exception arrives on the returned future.

    Not ``asyncio.to_thread``: the default executor's threads are not daemons, and
    ``concurrent.futures`` joins them at interpreter exit (its ``_python_exit``), so one check stuck
    in a connect() kept a WSGI worker alive after ``sys.exit`` until the check returned, or until
    gunicorn's SIGKILL. A daemon thread dies with the process.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()  # as to_thread does

    def settle(outcome: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled: nobody waits for this run any more
            return
        if error is None:
            future.set_result(outcome)
        else:
            future.set_exception(error)

    def work() -> None:
        outcome, error = None, None
        try:
            outcome = context.run(func)
        except BaseException as exc:  # delivered to the loop, which decides what it means
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future
