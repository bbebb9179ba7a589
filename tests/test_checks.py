"""Dependency checks: results, timeouts, and sync checks that hang (one thread each, never in the way of exit)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from graceful._checks import Check, Checks
from tests.server_process import ROOT


def check_threads(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == f"graceful-check-{name}"]


def run_once(func: Callable[[], Any], timeout: float = 1.0) -> tuple[bool, str | None]:
    checks = Checks(default_timeout=timeout, clock=time.monotonic)
    check = Check(name="dependency", func=func)
    checks.add(check)
    result = asyncio.run(checks.run(check))
    return result.ok, result.error


class Down(ConnectionError):
    pass


def refuse() -> None:
    raise Down("refused")


async def answer_async() -> bool:
    return True


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (lambda: None, (True, None)),
        (lambda: False, (False, "returned False")),
        (refuse, (False, "Down: refused")),
        (answer_async, (True, None)),
        (lambda: answer_async(), (True, None)),  # a sync callable that returns a coroutine
    ],
    ids=["none", "false", "raises", "async", "sync-returning-coroutine"],
)
def test_results(func: Callable[[], Any], expected: tuple[bool, str | None]) -> None:
    """A check passes unless it returns False or raises, sync or async."""
    assert run_once(func) == expected


def test_a_sync_check_over_its_timeout_fails() -> None:
    """A sync check that outlasts its timeout is reported as timed out, without waiting for it."""
    release = threading.Event()
    try:
        started = time.monotonic()
        assert run_once(lambda: release.wait(10), timeout=0.1) == (False, "timed out after 0.1 s")
        assert time.monotonic() - started < 5
    finally:
        release.set()


def test_a_hung_check_runs_in_one_thread_however_often_it_is_run() -> None:
    """While a run of a sync check is stuck, later runs wait for it (and time out) instead of piling up threads."""
    release = threading.Event()
    calls: list[float] = []

    def hang() -> bool:
        calls.append(time.monotonic())
        return release.wait(10)

    checks = Checks(default_timeout=0.05, clock=time.monotonic)
    check = Check(name="hang", func=hang)
    checks.add(check)

    async def main() -> list[str | None]:
        errors = []
        for _ in range(5):
            errors.append((await checks.run(check)).error)
            assert len(check_threads("hang")) == 1
        release.set()
        # The stuck run ends now; the next run is a new one, and passes.
        for _ in range(200):
            if not check_threads("hang"):
                break
            await asyncio.sleep(0.01)
        errors.append((await checks.run(check)).error)
        return errors

    try:
        errors = asyncio.run(main())
    finally:
        release.set()
    assert errors == ["timed out after 0.05 s"] * 5 + [None]
    assert len(calls) == 2


def test_concurrent_runs_of_a_check_share_one_call() -> None:
    """The startup gate and the background loop may run a check at once: it is called once for both."""
    release = threading.Event()
    calls: list[int] = []

    def slow() -> bool:
        calls.append(1)
        return release.wait(10)

    checks = Checks(default_timeout=5.0, clock=time.monotonic)
    check = Check(name="shared", func=slow)
    checks.add(check)

    async def main() -> list[bool]:
        both = asyncio.gather(checks.run(check), checks.run(check))
        await asyncio.sleep(0)  # both runs start in this turn of the loop
        release.set()
        return [result.ok for result in await both]

    try:
        assert asyncio.run(main()) == [True, True]
    finally:
        release.set()
    assert calls == [1]


def test_a_check_that_ends_after_its_loop_closed_raises_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stuck check's thread that ends after the event loop closed drops its result quietly."""
    release = threading.Event()
    thread_errors: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    assert run_once(lambda: release.wait(10), timeout=0.05) == (False, "timed out after 0.05 s")
    [thread] = check_threads("dependency")
    release.set()
    thread.join(5)
    assert not thread.is_alive()
    assert thread_errors == []


EXITING_WORKER = textwrap.dedent(
    """
    import sys, time
    from graceful import Lifecycle, Settings
    from graceful.wsgi import GracefulMiddleware

    middleware = GracefulMiddleware(lambda environ, start_response: [b""], lifecycle=Lifecycle(Settings(check_interval=0.2)))
    middleware.add_check("db", lambda: time.sleep(30), kind="readiness", timeout=0.2)  # a connect() to a dead host
    middleware.server_started()
    for _ in range(400):
        if middleware.checks.detail()["db"]["error"]:
            break
        time.sleep(0.025)
    print("db:", middleware.checks.detail()["db"]["error"], flush=True)
    sys.exit(0)  # what gunicorn's sync worker and waitress do on SIGTERM
    """
)


def test_a_hung_sync_check_does_not_hold_up_process_exit() -> None:
    """A WSGI process exits at once although a sync check is stuck for 30 s (it used to wait for it)."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", EXITING_WORKER], cwd=ROOT, capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"the process was still running after 15 s: {exc.stdout!r} {exc.stderr!r}"
        ) from None
    assert done.returncode == 0, done.stderr
    assert "db: timed out after 0.2 s" in done.stdout
    # Start-up, the first check run and exit take well under a second; a stuck check held it for 30 s.
    assert time.monotonic() - started < 10, done.stdout
