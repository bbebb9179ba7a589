"""ThreadAdmissionControl with real threads: the cap, FIFO order, shedding, timeouts, wake, stress.

No server and no sleeps to "see what happens": every wait is on a condition or an event, bounded in
time, and the assertions are on recorded orders and counts.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from graceful import Lifecycle, Phase, Settings
from graceful._admission import AdmissionControl, ThreadAdmissionControl
from tests.server_process import wait_for

BOUND = 10.0  # seconds: the most any wait in these tests may take before it fails


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(clock: Clock) -> Iterator[Callable[..., ThreadAdmissionControl]]:
    """Builds admission control on a private lifecycle (fake clock), closed after the test."""
    lifecycles: list[Lifecycle] = []

    def build(**settings: Any) -> ThreadAdmissionControl:
        lifecycle = Lifecycle(Settings(**settings), clock=clock)
        lifecycles.append(lifecycle)
        return ThreadAdmissionControl(lifecycle.settings, lifecycle)

    yield build
    for lifecycle in lifecycles:
        lifecycle.close()


class Request(threading.Thread):
    """A request on a server thread: acquire, record its start, hold the place until ``finish``."""

    def __init__(self, admission: ThreadAdmissionControl, n: int, started: list[int]) -> None:
        super().__init__(name=f"request-{n}", daemon=True)
        self.admission, self.n, self.started = admission, n, started
        self.admitted: bool | None = None
        self.running = threading.Event()
        self.finish = threading.Event()

    def run(self) -> None:
        self.admitted = self.admission.acquire()
        if not self.admitted:
            return
        self.started.append(self.n)  # list.append is atomic: the order places were taken
        self.running.set()
        try:
            self.finish.wait(BOUND)
        finally:
            self.admission.release()


def queue_in_order(admission: ThreadAdmissionControl, count: int, started: list[int]) -> list[Request]:
    """Start ``count`` requests, each only once the previous one is seen queued: a known arrival order."""
    requests = []
    for n in range(count):
        request = Request(admission, n, started)
        queued = queued_to_be(admission, admission.queued + 1)
        request.start()
        wait_for(queued, BOUND, f"request {n} queued")
        requests.append(request)
    return requests


def queued_to_be(admission: ThreadAdmissionControl, count: int) -> Callable[[], bool]:
    return lambda: admission.queued == count


def finish_all(requests: list[Request]) -> None:
    for request in requests:
        request.finish.set()
    for request in requests:
        request.join(BOUND)
        assert not request.is_alive(), request.name


def test_a_cap_of_two_never_runs_three_at_once(make: Callable[..., ThreadAdmissionControl]) -> None:
    """Twelve threads at once under a cap of 2: two run, ten wait, all run in the end, never three at once."""
    admission = make(max_concurrency=2, queue_size=100, queue_timeout=BOUND)
    guard = threading.Lock()
    running = [0]
    highest = [0]
    results: list[bool] = []
    gate = threading.Event()

    def request() -> None:
        admitted = admission.acquire()
        results.append(admitted)
        if not admitted:
            return
        with guard:
            running[0] += 1
            highest[0] = max(highest[0], running[0])
        gate.wait(BOUND)  # hold the place until all twelve have arrived
        with guard:
            running[0] -= 1
        admission.release()

    threads = [threading.Thread(target=request, daemon=True) for _ in range(12)]
    for thread in threads:
        thread.start()
    wait_for(lambda: admission.running == 2 and admission.queued == 10, BOUND, "2 running and 10 queued")
    gate.set()
    for thread in threads:
        thread.join(BOUND)
    assert results == [True] * 12
    assert highest[0] == 2 and admission.highest_running == 2
    assert (admission.running, admission.queued, admission.shed) == (0, 0, 0)


def test_queued_threads_start_in_arrival_order(make: Callable[..., ThreadAdmissionControl]) -> None:
    """Waiters get places oldest first, one per release."""
    admission = make(max_concurrency=1, queue_size=100, queue_timeout=BOUND)
    assert admission.acquire()  # the place is taken: everyone after this queues
    started: list[int] = []
    requests = queue_in_order(admission, 8, started)
    admission.release()
    for request in requests:  # each holds the only place until told to finish
        assert request.running.wait(BOUND), request.name
        assert started == list(range(request.n + 1))
        request.finish.set()
    finish_all(requests)
    assert started == list(range(8))
    assert all(request.admitted for request in requests)
    assert (admission.running, admission.queued, admission.shed) == (0, 0, 0)


def test_a_full_queue_sheds_at_once(make: Callable[..., ThreadAdmissionControl]) -> None:
    """With the queue full, a newcomer is refused without waiting, and counted as shed."""
    admission = make(max_concurrency=1, queue_size=2, queue_timeout=BOUND)
    assert admission.acquire()
    started: list[int] = []
    requests = queue_in_order(admission, 2, started)
    began = time.monotonic()
    assert admission.acquire() is False
    assert time.monotonic() - began < 1.0  # the queue timeout is BOUND: it did not wait
    assert (admission.running, admission.queued, admission.shed) == (1, 2, 1)
    admission.release()
    finish_all(requests)
    assert started == [0, 1]
    assert (admission.running, admission.queued, admission.shed) == (0, 0, 1)


def test_no_queue_sheds_at_once(make: Callable[..., ThreadAdmissionControl]) -> None:
    """queue_size=0: over the cap is shed at once."""
    admission = make(max_concurrency=1, queue_size=0, queue_timeout=BOUND)
    assert admission.acquire()
    assert admission.acquire() is False
    admission.release()
    assert (admission.running, admission.queued, admission.shed) == (0, 0, 1)


def test_queue_timeout_sheds_and_leaves_counts_exact(make: Callable[..., ThreadAdmissionControl]) -> None:
    """A waiter given no place returns False after queue_timeout (not much later), counted as shed."""
    admission = make(max_concurrency=1, queue_size=10, queue_timeout=0.2)
    assert admission.acquire()
    began = time.monotonic()
    assert admission.acquire() is False  # this thread queues behind itself, and times out
    waited = time.monotonic() - began
    assert 0.19 <= waited < 0.2 + 2.0
    assert (admission.running, admission.queued, admission.shed) == (1, 0, 1)
    admission.release()
    assert (admission.running, admission.queued, admission.shed) == (0, 0, 1)
    assert admission.acquire()  # the place freed by the release is free indeed
    admission.release()


def test_a_place_given_as_the_timeout_fires_is_kept(make: Callable[..., ThreadAdmissionControl]) -> None:
    """The race: the waiter's timeout fires, and before it can leave the queue a release gives it the
    place. It keeps the place (True), and running counts it once."""
    admission = make(max_concurrency=1, queue_size=10, queue_timeout=0.05)
    assert admission.acquire()
    started: list[int] = []
    (request,) = queue_in_order(admission, 1, started)
    with admission._lock:  # the waiter's timeout fires while releases are held off
        wait_for(lambda: innermost_function(request) == "_withdraw", BOUND, "the waiter past its timeout")
        admission.running -= 1  # the holder's release, done by hand: release() would need the lock
        admission._give_places(admission.cap())
    assert request.running.wait(BOUND)
    assert request.admitted is True
    assert (admission.running, admission.queued, admission.shed) == (1, 0, 0)
    finish_all([request])
    assert (admission.running, admission.queued, admission.shed) == (0, 0, 0)


def innermost_function(thread: threading.Thread) -> str | None:
    frame = sys._current_frames().get(thread.ident or -1)
    return frame.f_code.co_name if frame is not None else None


class Interrupted(Exception):
    pass


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_a_waiter_interrupted_by_a_signal_leaves_the_queue(
    make: Callable[..., ThreadAdmissionControl],
) -> None:
    """A signal handler that raises in a waiting thread: the exception goes through, the waiter
    leaves the queue, nothing is counted as running or shed."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread")
    admission = make(max_concurrency=1, queue_size=10, queue_timeout=BOUND)
    assert admission.acquire()

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    def send_when_queued() -> None:
        wait_for(lambda: admission.queued == 1, BOUND, "the main thread queued")
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    sender = threading.Thread(target=send_when_queued, daemon=True)
    try:
        sender.start()
        began = time.monotonic()
        with pytest.raises(Interrupted):
            admission.acquire()
        assert time.monotonic() - began < BOUND
    finally:
        sender.join(BOUND)
        signal.signal(signal.SIGUSR1, previous)
    assert (admission.running, admission.queued, admission.shed) == (1, 0, 0)
    admission.release()
    assert admission.running == 0


def test_wake_lets_waiters_in_as_the_cap_grows(
    make: Callable[..., ThreadAdmissionControl], clock: Clock
) -> None:
    """While warming, the cap grows with the clock; wake() (the watcher's call) gives the new places
    to waiters, oldest first, with no release at all."""
    admission = make(
        max_concurrency=4, warmup_window=10, warmup_min_share=0.25, queue_size=10, queue_timeout=BOUND
    )
    admission.lifecycle.move_to(Phase.WARMING)
    assert admission.cap() == 1
    assert admission.acquire()
    started: list[int] = []
    requests = queue_in_order(admission, 3, started)
    clock.now += 5  # share 0.5: cap 2
    assert admission.cap() == 2
    assert (admission.running, admission.queued) == (1, 3)  # nobody let in before wake
    admission.wake()
    assert requests[0].running.wait(BOUND)
    assert (admission.running, admission.queued) == (2, 2)
    clock.now += 2.5  # share 0.75: cap 3
    admission.wake()
    assert requests[1].running.wait(BOUND)
    assert (admission.running, admission.queued) == (3, 1)
    clock.now += 2.5  # the window is over: cap 4
    admission.wake()
    assert requests[2].running.wait(BOUND)
    assert started == [0, 1, 2]
    assert (admission.running, admission.queued, admission.highest_running) == (4, 0, 4)
    finish_all(requests)
    admission.release()
    assert (admission.running, admission.queued, admission.shed) == (0, 0, 0)


def test_a_newcomer_does_not_overtake_waiters(
    make: Callable[..., ThreadAdmissionControl], clock: Clock
) -> None:
    """The cap grew but no wake() ran yet: a newcomer queues behind the waiter, and its arrival gives
    the new place to that older waiter, not to itself."""
    admission = make(
        max_concurrency=2, warmup_window=10, warmup_min_share=0.5, queue_size=10, queue_timeout=BOUND
    )
    admission.lifecycle.move_to(Phase.WARMING)
    assert admission.acquire()  # cap 1: taken
    started: list[int] = []
    (older,) = queue_in_order(admission, 1, started)
    clock.now += 10  # cap 2: a free place, and a waiter
    newcomer = Request(admission, 1, started)
    newcomer.start()
    assert older.running.wait(BOUND)
    wait_for(lambda: admission.queued == 1, BOUND, "the newcomer queued")
    assert started == [0] and (admission.running, admission.queued) == (2, 1)
    older.finish.set()
    assert newcomer.running.wait(BOUND)
    assert started == [0, 1]
    finish_all([older, newcomer])
    admission.release()
    assert (admission.running, admission.queued, admission.shed) == (0, 0, 0)


def test_stress_ends_with_exact_counts(make: Callable[..., ThreadAdmissionControl]) -> None:
    """32 threads x 200 requests with a short queue and timeout, and a watcher calling wake():
    the cap holds throughout, and the counts end exact."""
    admission = make(max_concurrency=4, queue_size=8, queue_timeout=0.02)
    guard = threading.Lock()
    running = [0]
    highest = [0]
    refused = [0]
    done = threading.Event()

    def serve() -> None:
        for _ in range(200):
            if not admission.acquire():
                with guard:
                    refused[0] += 1
                continue
            with guard:
                running[0] += 1
                highest[0] = max(highest[0], running[0])
            time.sleep(0)  # let other threads run while this one holds its place
            with guard:
                running[0] -= 1
            admission.release()

    def watch() -> None:
        for _ in range(100_000):  # bounded; ends with the load
            if done.wait(0.001):
                return
            admission.wake()

    threads = [threading.Thread(target=serve, daemon=True) for _ in range(32)]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    done.set()
    watcher.join(BOUND)
    assert (admission.running, admission.queued) == (0, 0)
    assert highest[0] <= 4 and admission.highest_running <= 4
    assert admission.shed == refused[0]


def test_snapshot_has_the_keys_of_the_async_one(make: Callable[..., ThreadAdmissionControl]) -> None:
    """/healthz shows the same figures for a WSGI and an ASGI process."""
    admission = make(max_concurrency=3)
    assert admission.acquire()
    snapshot = admission.snapshot()
    assert snapshot == {"share": 1.0, "cap": 3, "running": 1, "queued": 0, "shed": 0, "highest_running": 1}
    assert snapshot.keys() == AdmissionControl(admission.settings, admission.lifecycle).snapshot().keys()
    admission.release()


def test_needs_max_concurrency(make: Callable[..., ThreadAdmissionControl]) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        make()
