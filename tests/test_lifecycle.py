"""The lifecycle: phase moves, listeners, the drain clock with an injected clock, in-flight counts."""

from __future__ import annotations

import asyncio

import pytest

from graceful import Lifecycle, Phase, Settings, StateBoard


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_drain_clock_arithmetic_with_a_fake_clock() -> None:
    """The drain delay ends exactly drain_delay seconds after the drain began, not a tick earlier."""
    clock = FakeClock()
    lifecycle = Lifecycle(Settings(drain_delay=3), clock=clock)
    assert lifecycle.drain_deadline() is None and not lifecycle.drain_delay_over()
    lifecycle.open_gate()
    clock.now = 110.0
    assert lifecycle.begin_drain("test")
    assert lifecycle.drain_deadline() == 113.0
    clock.now = 112.999
    assert not lifecycle.drain_delay_over()
    clock.now = 113.0
    assert lifecycle.drain_delay_over()
    lifecycle.close()


def test_begin_drain_is_idempotent_and_listeners_hear_each_change_once() -> None:
    """Two drain requests drain once; listeners get (old, new) per change."""
    lifecycle = Lifecycle(Settings())
    heard: list[tuple[Phase, Phase]] = []
    lifecycle.add_listener(lambda old, new: heard.append((old, new)))
    lifecycle.open_gate()
    assert lifecycle.begin_drain("first") is True
    assert lifecycle.begin_drain("second") is False
    assert lifecycle.board.drains == 1
    assert heard == [(Phase.STARTING, Phase.READY), (Phase.READY, Phase.DRAINING)]
    lifecycle.close()


def test_poll_reports_changes_made_by_another_process() -> None:
    """A change written to the board by someone else reaches listeners on the next poll."""
    board = StateBoard.create(slots=2, now=0.0)
    lifecycle = Lifecycle(Settings(), board=board)
    heard: list[tuple[Phase, Phase]] = []
    lifecycle.add_listener(lambda old, new: heard.append((old, new)))
    board.move_to(Phase.READY, now=1.0)  # "the other process"
    board.move_to(Phase.STOPPING, now=2.0)
    assert lifecycle.poll() is Phase.STOPPING
    assert heard == [(Phase.STARTING, Phase.STOPPING)]
    lifecycle.close()


def test_owner_publishes_its_drain_delay() -> None:
    """Every process computes the deadline with the clock owner's delay, not its own setting."""
    board = StateBoard.create(slots=2, now=0.0)
    owner = Lifecycle(Settings(drain_delay=7), board=board)
    reader = Lifecycle(Settings(drain_delay=1), board=board, external=True)
    assert reader.drain_delay == 1
    owner.claim_drain_clock()
    assert reader.drain_delay == 7 and board.owner_pid == owner.pid
    owner.close()
    reader.close()


@pytest.mark.anyio
async def test_draining_event_is_set_from_the_loop() -> None:
    """The event apps await for websockets/SSE is set when the drain begins, through the loop."""
    lifecycle = Lifecycle(Settings())
    event = lifecycle.draining_event()
    assert not event.is_set()
    lifecycle.begin_drain("test")
    await asyncio.wait_for(event.wait(), 1)
    assert lifecycle.draining_event() is event
    lifecycle.close()


def test_in_flight_counts_per_process_and_in_total() -> None:
    """request_started/finished move this process's slot; the total sums live slots."""
    lifecycle = Lifecycle(Settings())
    lifecycle.request_started()
    lifecycle.request_started()
    lifecycle.websocket_opened()
    assert lifecycle.local_in_flight == 2 and lifecycle.in_flight == 2
    lifecycle.request_finished()
    lifecycle.websocket_closed()
    snapshot = lifecycle.snapshot()
    assert snapshot["in_flight"] == 1 and snapshot["requests"] == 2 and snapshot["websockets"] == 0
    assert set(snapshot) == {
        "phase",
        "ready",
        "in_flight",
        "websockets",
        "requests",
        "processes",
        "uptime_seconds",
        "draining_seconds",
    }
    lifecycle.close()
