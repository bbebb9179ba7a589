"""The runtime's board watcher outlives its errors: it logs them (each at most once a minute) and goes on."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from graceful import Lifecycle, Phase, Settings
from graceful._board import REQUEST_STARTED
from graceful._checks import Checks
from graceful._runtime import AsyncRuntime, BackgroundRuntime
from tests.server_process import wait_for


class Records(logging.Handler):
    """The records of the "graceful" logger (a handler of its own: another test may stop propagation)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def errors() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("graceful")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def warming() -> Iterator[Lifecycle]:
    """A lifecycle with a warm-up window, so the watcher has a phase move to make."""
    lifecycle = Lifecycle(Settings(warmup_window=0.2, max_concurrency=4))
    try:
        yield lifecycle
    finally:
        lifecycle.close()


def start_runtime(lifecycle: Lifecycle) -> BackgroundRuntime:
    checks = Checks(default_timeout=1.0, clock=lifecycle.clock)
    runtime = BackgroundRuntime(AsyncRuntime(lifecycle, checks, None))
    runtime.start()
    return runtime


def test_the_watcher_goes_on_after_a_failed_tick(
    warming: Lifecycle, errors: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush that raises once is logged; later ticks still flush counts and end the warm-up."""
    flush = warming.flush_traffic
    failures: list[OSError] = []

    def flush_failing_once() -> None:
        if not failures:
            failures.append(OSError(5, "Input/output error"))
            raise failures[0]
        flush()

    monkeypatch.setattr(warming, "flush_traffic", flush_failing_once)
    runtime = start_runtime(warming)
    try:
        wait_for(lambda: bool(failures), 5, "the failing flush")
        warming.local_traffic[0] += REQUEST_STARTED  # what a WSGI thread counts inline
        wait_for(lambda: warming.local_traffic[0] == 0, 5, "the count to be flushed to the board")
        wait_for(lambda: warming.phase is Phase.READY, 5, "the warm-up to end")
    finally:
        runtime.stop()
    [slot] = [view for view in warming.board.read_slots() if view.index == warming.slot]
    assert (slot.in_flight, slot.requests) == (1, 1)
    [record] = errors.records
    assert "the board watcher failed" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is failures[0]


def test_a_persistent_error_is_logged_once(
    warming: Lifecycle, errors: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same error on every tick is logged once, not 20 times a second; a different one is logged too."""
    calls: list[int] = []

    def poll_failing() -> Phase:
        calls.append(1)
        raise OSError(37, "No locks available") if len(calls) < 10 else RuntimeError("board torn")

    monkeypatch.setattr(warming, "poll", poll_failing)
    runtime = start_runtime(warming)
    try:
        wait_for(lambda: len(calls) >= 15, 5, "15 ticks of the watcher")
    finally:
        runtime.stop()
    assert [record.getMessage().rpartition(": ")[2] for record in errors.records] == [
        "[Errno 37] No locks available",
        "board torn",
    ]
