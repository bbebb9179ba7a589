"""Admission control: a concurrency cap that ramps during warm-up, with a short FIFO queue before shedding.

The decisions are the pure functions of ``graceful._warmup``; this module only keeps the counts and
the queue of one process's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable

from graceful._lifecycle import Lifecycle
from graceful._phase import Phase
from graceful._settings import Settings
from graceful._warmup import Admission, admission, concurrency_cap, retry_after_seconds, warmup_share


class AdmissionControl:
    """Caps the requests one process runs at once: ``concurrency_cap(share(t), max_concurrency)``."""

    def __init__(
        self, settings: Settings, lifecycle: Lifecycle, *, random_source: Callable[[], float] = random.random
    ) -> None:
        if settings.max_concurrency is None:
            raise ValueError("admission control needs max_concurrency")
        self.settings = settings
        self.max_concurrency: int = settings.max_concurrency
        self.lifecycle = lifecycle
        self.random = random_source
        self.running = 0
        self.shed = 0
        self.highest_running = 0
        self._queue: deque[asyncio.Future[bool]] = deque()

    # -- the ramp ----------------------------------------------------------------------------------

    def share(self) -> float:
        """The admitted share now: ramping while WARMING (from the moment WARMING began), else 1."""
        board = self.lifecycle.board
        if board.phase is not Phase.WARMING:
            return 1.0
        settings = self.settings
        return warmup_share(
            self.lifecycle.clock() - board.phase_changed_at,
            window=settings.warmup_window,
            curve=settings.warmup_curve,
            min_share=settings.warmup_min_share,
        )

    def cap(self) -> int:
        return concurrency_cap(self.share(), self.max_concurrency)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- entering and leaving ------------------------------------------------------------------------

    async def acquire(self) -> bool:
        """Wait for a place. True: run the request (call ``release`` after). False: shed it."""
        decision = admission(
            in_flight=self.running,
            cap=self.cap(),
            queued=len(self._queue),
            queue_size=self.settings.queue_size,
        )
        if decision is Admission.ADMIT:
            self._enter()
            return True
        if decision is Admission.SHED:
            self.shed += 1
            return False
        loop = asyncio.get_running_loop()
        place: asyncio.Future[bool] = loop.create_future()
        self._queue.append(place)
        self.wake()  # the cap may have grown since the last release: serve the oldest waiters now
        # Bounded wait: whichever comes first, a free place (wake) or the timeout, settles the future.
        expiry = loop.call_later(self.settings.queue_timeout, _settle, place, False)
        try:
            admitted = await place
        except asyncio.CancelledError:
            # The client went away while waiting. If a place had just been given, give it back.
            if place.done() and not place.cancelled() and place.result():
                self.release()
            raise
        finally:
            expiry.cancel()
            if not place.done() or place.cancelled() or not place.result():
                self._forget(place)
        if not admitted:
            self.shed += 1
        return admitted

    def release(self) -> None:
        self.running -= 1
        self.wake()

    def wake(self) -> None:
        """Give free places to waiters, oldest first (after a release, and as the cap ramps up)."""
        cap = self.cap()
        queue = self._queue
        while queue and self.running < cap:
            place = queue.popleft()
            if not place.done():
                self._enter()
                place.set_result(True)

    def _enter(self) -> None:
        self.running += 1
        if self.running > self.highest_running:
            self.highest_running = self.running

    def _forget(self, place: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):  # already taken off by wake()
            self._queue.remove(place)

    def retry_after(self) -> int:
        return retry_after_seconds(self.settings.retry_after, self.settings.retry_after_jitter, self.random())

    def snapshot(self) -> dict[str, float | int]:
        return {
            "share": round(self.share(), 4),
            "cap": self.cap(),
            "running": self.running,
            "queued": len(self._queue),
            "shed": self.shed,
            "highest_running": self.highest_running,
        }


def _settle(place: asyncio.Future[bool], value: bool) -> None:
    if not place.done():
        place.set_result(value)
