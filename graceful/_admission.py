"""Admission control: a concurrency cap that ramps during warm-up, with a short FIFO queue before shedding.

The decisions are the pure functions of ``graceful._warmup``; this module only keeps the counts and
the queue: of one process's event loop (``AdmissionControl``, ASGI), or of the threads of a threaded
server (``ThreadAdmissionControl``, WSGI), where waiting blocks the server thread.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Sized

from graceful._events import log_event
from graceful._lifecycle import Lifecycle
from graceful._phase import Phase
from graceful._settings import Settings
from graceful._warmup import Admission, admission, concurrency_cap, retry_after_seconds, warmup_share

#: Shedding "ends" after this many seconds without a shed request: one shed_began and one
#: shed_ended per episode, with the count in between, however many 503s it took (issue 13).
SHED_QUIET = 1.0


class AdmissionBase(abc.ABC):
    """The cap, the counts and the figures, whatever a waiter is.

    The cap is ``concurrency_cap(share(t), max_concurrency)``. Subclasses add ``acquire`` (a
    coroutine, or a blocking call), ``release`` and ``wake``.
    """

    #: The waiters, oldest first; each kind keeps its own.
    _queue: Sized

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
        #: The shedding episode in progress: (when it began, ``shed`` then), or None.
        self._shedding: tuple[float, int] | None = None
        self._last_shed_at = 0.0

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

    @abc.abstractmethod
    def release(self) -> None:
        """A request that was let in has finished: free its place for the oldest waiter."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Give free places to waiters, oldest first (after a release, and as the cap ramps up)."""

    # -- counts and figures --------------------------------------------------------------------------

    def _decide(self, cap: int) -> Admission:
        """Admit (counted as running), shed (counted as shed) or queue this request."""
        decision = admission(
            in_flight=self.running, cap=cap, queued=len(self._queue), queue_size=self.settings.queue_size
        )
        if decision is Admission.ADMIT:
            self._enter()
        elif decision is Admission.SHED:
            self._count_shed()
        return decision

    def _count_shed(self) -> None:
        """One more request shed; the first of an episode logs ``shed_began``."""
        # This process's figure (/healthz "admission") and the board's, which sums over processes
        # (graceful_shed_total).
        self.shed += 1
        self.lifecycle.request_shed()
        now = self._last_shed_at = self.lifecycle.clock()
        if self._shedding is None:
            self._shedding = (now, self.shed - 1)
            log_event(
                logging.WARNING,
                "shed_began",
                f"graceful: shedding load: {self.running} running (cap {self.cap()}), "
                f"{len(self._queue)} queued; answering 503 with Retry-After",
                running=self.running,
                cap=self.cap(),
                queued=len(self._queue),
            )

    def settle_shedding(self) -> None:
        """End the shedding episode after ``SHED_QUIET`` s without a shed (the runtime's watcher
        calls it every tick): one ``shed_ended`` with how many were shed and for how long."""
        episode = self._shedding
        if episode is None:
            return
        now = self.lifecycle.clock()
        if now - self._last_shed_at < SHED_QUIET:
            return
        began, before = episode
        self._shedding = None
        count, seconds = self.shed - before, self._last_shed_at - began
        log_event(
            logging.INFO,
            "shed_ended",
            f"graceful: shedding ended: {count} requests shed in {seconds:.2f} s",
            shed=count,
            seconds=round(seconds, 3),
        )

    def _enter(self) -> None:
        self.running += 1
        if self.running > self.highest_running:
            self.highest_running = self.running

    def retry_after(self) -> int:
        return retry_after_seconds(self.settings.retry_after, self.settings.retry_after_jitter, self.random())

    def snapshot(self) -> dict[str, float | int]:
        return {
            "share": round(self.share(), 4),
            "cap": self.cap(),
            "running": self.running,
            "queued": self.queued,
            "shed": self.shed,
            "highest_running": self.highest_running,
        }


class AdmissionControl(AdmissionBase):
    """Admission on one event loop: a waiter is a future, settled by ``wake`` or by its timeout."""

    def __init__(
        self, settings: Settings, lifecycle: Lifecycle, *, random_source: Callable[[], float] = random.random
    ) -> None:
        super().__init__(settings, lifecycle, random_source=random_source)
        self._queue: deque[asyncio.Future[bool]] = deque()

    async def acquire(self) -> bool:
        """Wait for a place. True: run the request (call ``release`` after). False: shed it."""
        decision = self._decide(self.cap())
        if decision is not Admission.QUEUE:
            return decision is Admission.ADMIT
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
            self._count_shed()
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

    def _forget(self, place: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):  # already taken off by wake()
            self._queue.remove(place)


def _settle(place: asyncio.Future[bool], value: bool) -> None:
    if not place.done():
        place.set_result(value)


class ThreadAdmissionControl(AdmissionBase):
    """Admission for a threaded server: ``acquire`` blocks the calling thread while it waits.

    One lock guards the counts and the queue. Whether a waiter got a place is decided only under
    that lock (``_Waiter.admitted``), so a place given just as the waiter's timeout fires is kept,
    never lost nor counted twice.
    """

    def __init__(
        self, settings: Settings, lifecycle: Lifecycle, *, random_source: Callable[[], float] = random.random
    ) -> None:
        super().__init__(settings, lifecycle, random_source=random_source)
        self._queue: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Wait for a place. True: run the request (call ``release`` after). False: shed it."""
        cap = self.cap()  # outside the lock: it reads the board and the clock
        with self._lock:
            decision = self._decide(cap)
            if decision is not Admission.QUEUE:
                return decision is Admission.ADMIT
            waiter = _Waiter()
            self._queue.append(waiter)
            self._give_places(cap)  # the cap may have grown since the last release: serve the oldest now
        try:
            if waiter.place.acquire(timeout=self.settings.queue_timeout):
                return True
        except BaseException:
            # A signal handler raised in this thread while it waited: hand back a place given meanwhile.
            if self._withdraw(waiter, timed_out=False):
                self.release()
            raise
        return self._withdraw(waiter, timed_out=True)

    def release(self) -> None:
        with self._lock:
            self.running -= 1
            if self._queue:
                self._give_places(self.cap())

    def wake(self) -> None:
        """Give free places to waiters, oldest first (the watcher calls it as the cap ramps up)."""
        if not self._queue:
            # Unlocked look: a thread that queues right after serves the queue itself (see acquire).
            return
        cap = self.cap()
        with self._lock:
            self._give_places(cap)

    def snapshot(self) -> dict[str, float | int]:
        with self._lock:  # figures of one moment
            return super().snapshot()

    def _give_places(self, cap: int) -> None:
        """With the lock held: let waiters in, oldest first, while there is room under ``cap``."""
        queue = self._queue
        while queue and self.running < cap:
            waiter = queue.popleft()
            waiter.admitted = True
            self._enter()
            waiter.place.release()

    def _withdraw(self, waiter: _Waiter, *, timed_out: bool) -> bool:
        """A waiter stops waiting: True if it was given a place first (it keeps it), else it leaves.

        Called without the lock: the place may be given between the end of the wait and this call.
        """
        with self._lock:
            if waiter.admitted:
                return True
            self._queue.remove(waiter)  # still there: only _give_places takes waiters off, and it admits them
            if timed_out:
                self._count_shed()
            return False


class _Waiter:
    """One queued thread. ``place`` is a lock taken at creation and released to give the place:
    the lightest thing a thread can block on with a timeout (an Event adds a Condition)."""

    __slots__ = ("admitted", "place")

    def __init__(self) -> None:
        self.admitted = False
        self.place = threading.Lock()
        self.place.acquire()
