"""The lifecycle of one process: phase moves, drain-clock arithmetic, in-flight accounting, listeners.

The truth lives on the state board (shared with the supervisor or sibling workers); this object is
the process's handle on it. Nobody else keeps booleans about "am I shutting down".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from graceful._board import (
    ARRIVAL_UNIT,
    IN_FLIGHT_MASK,
    REQUEST_STARTED,
    REQUEST_UNIT,
    SLOT_LAST_NEW,
    SLOT_LAST_REQUEST,
    SLOT_SHED,
    SLOT_TRAFFIC,
    SLOT_WEBSOCKETS,
    StateBoard,
    last_arrivals,
)
from graceful._events import log_event
from graceful._phase import Phase
from graceful._policies import drain_delay_advice, drain_notice_seconds, drain_report_message
from graceful._settings import Settings

logger = logging.getLogger("graceful")

STATE_ENV = "GRACEFUL_STATE"

Clock = Callable[[], float]
Listener = Callable[[Phase, Phase], None]
M = TypeVar("M")

#: Where wrappers keep the app they wrap, in the order looked at: decorators made with
#: ``functools.wraps`` (``__wrapped__``; first, as ``wraps`` also copies the wrapped object's
#: ``__dict__``, so an ``app`` attribute there is the wrapped middleware's own inner app),
#: Werkzeug/Starlette-style middlewares (``app``), Flask (``wsgi_app``), WhiteNoise and Django's
#: static-files handlers (``application``).
WRAPPED_ATTRIBUTES = ("__wrapped__", "app", "wsgi_app", "application")


class Lifecycle:
    """One process's view of the instance lifecycle.

    ``external`` is True when the board belongs to an outer component (the supervisor, via
    ``GRACEFUL_STATE``): that component owns the drain clock, and inner ones add no second delay.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        board: StateBoard | None = None,
        external: bool = False,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self.clock = clock
        self.board = board if board is not None else StateBoard.create(now=clock())
        self.external = external
        self._listeners: list[Listener] = []
        self._seen_phase = self.board.phase
        #: ``terminating[0]``: a cache of "the board says DRAINING or later", for hot paths. Set on
        #: every phase change this process makes, and by ``poll`` (the middleware's watcher reads
        #: the board every 50 ms) when another process made it.
        self.terminating = [self._seen_phase.is_terminating]
        self._events: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}
        self._count_lock = threading.Lock()
        #: The lock the ``*_threadsafe`` counters take, for hot paths that count inline.
        self.count_lock = self._count_lock
        self._notify_lock = threading.Lock()
        self.traffic_cell: list[Any] = []
        #: ``local_traffic[0]``: traffic counted in this process (same packing as the board's slot)
        #: but not yet added to the board: a Python int is far cheaper to change than shared
        #: memory. ``flush_traffic`` moves it to the board; the runtime's watcher does every 50 ms,
        #: and every read in this process does first, so this process always sees exact figures
        #: and others see them at most one watcher tick late.
        self.local_traffic = [0]
        #: A slot a parent (the gunicorn master) reserved for the next forked child: see
        #: ``reserve_child_slot``. None: a forked child claims a free slot itself.
        self._child_slot: int | None = None
        #: Show each process's figures in ``snapshot`` (a multi-process server sets it).
        self.per_process_health = False
        #: The middlewares built on this lifecycle, oldest first (weakly: see ``middleware_for``).
        self._middlewares: list[weakref.ref[Any]] = []
        #: Peers ((host, port)) of the connections open when the drain began, from a server that
        #: knows them (graceful.uvicorn): a request from another peer came on a new connection.
        #: None: the server does not say, and every request counts as a new arrival.
        self.pre_drain_peers: frozenset[Any] | None = None
        #: This process's drain, for the drain report (see ``drain_figures``).
        self._drain: dict[str, Any] = {}
        self._claim_slot()
        os.register_at_fork(after_in_child=self._after_fork_in_child, after_in_parent=self._forget_child_slot)

    @classmethod
    def from_env(
        cls, settings: Settings | None = None, *, clock: Clock = time.monotonic, slots: int | None = None
    ) -> Lifecycle:
        """The entry-point constructor: settings from ``GRACEFUL_*``, board from ``GRACEFUL_STATE``.

        ``slots``: size of a board made here (a multi-process server needs one per process); an
        attached board keeps the size its creator gave it.
        """
        settings = settings if settings is not None else Settings.from_env()
        path = os.environ.get(STATE_ENV)
        if path:
            return cls(settings, board=StateBoard.attach(path), external=True, clock=clock)
        if slots is not None:
            return cls(settings, board=StateBoard.create(slots=slots, now=clock()), clock=clock)
        return cls(settings, clock=clock)

    def _after_fork_in_child(self) -> None:
        # Only the forking thread lives on in the child (fork(2)): a lock another thread held at
        # that moment stays held for ever. The WSGI runtime's thread takes the count lock every
        # 50 ms (flush_traffic), so a child forked then would hang on its first /healthz.
        self._count_lock = threading.Lock()
        self.count_lock = self._count_lock
        self._notify_lock = threading.Lock()
        self.board.reset_in_child()  # its phase lock, for the same reason
        self._claim_slot()
        # Then the middlewares (after the locks: they take the new count lock): their background
        # thread did not survive the fork, so they must start afresh in the child.
        for middleware in self.middlewares(object):
            reset = getattr(middleware, "reset_after_fork", None)
            if reset is not None:
                reset()

    def _claim_slot(self) -> None:
        # Called again in a forked child: the child must not count into its parent's slot.
        self.pid = os.getpid()
        given, self._child_slot = self._child_slot, None
        if given is None:
            self.slot = self.board.claim_slot(self.pid)
        else:
            self.board.adopt_slot(given, self.pid)
            self.slot = given
        self._slot_base = self.board.slot_offset(self.slot)
        self._slot_ints = self.board.slot_ints
        # For hot paths that count inline: ``counters, index = traffic_cell``, then
        # ``counters[index] += REQUEST_STARTED`` when a request starts and ``-= 1`` when it ends.
        # Changed in place after a fork, so holders of the list see the child's slot.
        self.traffic_cell[:] = [self._slot_ints, self._slot_base + SLOT_TRAFFIC]
        self.local_traffic[0] = 0  # in a child: what the parent had not flushed is the parent's
        self.closed = False  # a child serves from its own slot, even if its parent gave its up
        self._in_flight = 0
        self._requests = 0
        self._drain = {}
        #: ``[last new arrival, last request]`` while terminating (monotonic seconds; 0: none).
        self.arrivals = [0.0, 0.0]

    def close(self) -> None:
        """Give the slot back (the process is done serving)."""
        with self._count_lock:
            self.closed = True  # no flush may write into a slot that is no longer ours
        self.board.release_slot(self.slot)

    def flush_traffic(self) -> None:
        """Add the traffic counted in ``local_traffic`` to this process's slot on the board."""
        with self._count_lock:  # one flusher at a time; counting threads never wait for it
            if self.arrivals[1]:
                self._flush_arrivals()
            pending = self.local_traffic[0]
            if not pending or self.closed:
                return
            # Each of these two is one atomic step under the GIL (see graceful/wsgi.py): a request
            # counted between them stays in local_traffic for the next flush.
            self.local_traffic[0] -= pending
            self._slot_ints[self._slot_base + SLOT_TRAFFIC] += pending

    def reserve_child_slot(self) -> int:
        """Reserve the slot the next child forked from this process takes (the parent frees it later).

        Until the child adopts it the slot is held under this process's pid, so nobody else takes it.
        """
        self._child_slot = self.board.reserve_slot(os.getpid())
        return self._child_slot

    def _forget_child_slot(self) -> None:
        self._child_slot = None

    # -- middlewares ---------------------------------------------------------------------------

    def register_middleware(self, middleware: object) -> None:
        """Record a middleware built on this lifecycle (weakly), for ``middleware_for`` and forks.

        After a fork, each registered middleware that has a ``reset_after_fork()`` has it called in
        the child (after this lifecycle's own reset).
        """
        self._middlewares = [ref for ref in self._middlewares if ref() is not None]
        self._middlewares.append(weakref.ref(middleware))

    def middlewares(self, kind: type[M]) -> list[M]:
        """The live middlewares of class ``kind`` built on this lifecycle, oldest first."""
        live = (ref() for ref in self._middlewares)
        return [m for m in live if m is not None and isinstance(m, kind)]

    def middleware_for(self, app: object, kind: type[M], depth: int = 16) -> M | None:
        """The middleware of class ``kind`` that serves ``app``, if the app is wrapped already.

        1. The one found in the app's chain of wrappers (``WRAPPED_ATTRIBUTES``, ``depth`` deep):
           it is certainly on the request path.
        2. Else one built on this lifecycle: it is somewhere the walk cannot see (a closure, a
           wrapper keeping the app under another name). If several were built, the newest: an app
           factory run twice serves what it built last; the others start on their first request
           if they serve at all. Logged, as it is a guess.
        3. Else None: the app is not wrapped.
        """
        found = find_wrapped(app, kind, depth)
        if found is not None:
            return found
        built = self.middlewares(kind)
        if len(built) > 1:
            logger.warning(
                "graceful: %d %s.%s share this lifecycle and none is found in the app's wrappers; "
                "taking the one built last",
                len(built),
                kind.__module__,
                kind.__qualname__,
            )
        return built[-1] if built else None

    # -- phase ---------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self.board.phase

    @property
    def is_ready(self) -> bool:
        """Readiness: in rotation (WARMING or READY)."""
        return self.board.phase.is_serving

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(old, new)`` on every phase change this process makes or notices (``poll``)."""
        self._listeners.append(listener)

    def move_to(self, target: Phase) -> bool:
        """Move the shared phase to ``target``; False if not allowed now (e.g. already past it)."""
        left = self.board.move_to(target, now=self.clock())
        if left is None:
            return False
        moved: dict[str, Any] = {"from": left.name.lower(), "to": target.name.lower()}
        log_event(logging.INFO, "phase_changed", f"graceful: phase {left.name} -> {target.name}", **moved)
        self._notify()
        return True

    def open_gate(self) -> bool:
        """The server has started: leave STARTING."""
        return self.move_to(Phase.READY)

    def begin_drain(self, reason: str) -> bool:
        """Start termination: readiness fails from now on. Idempotent: True only the first time."""
        self._drain.setdefault("reason", reason)  # before the move: _notify records the start
        started = self.move_to(Phase.DRAINING)
        if started:
            log_event(
                logging.WARNING,
                "drain_started",
                f"graceful: draining ({reason}): readiness fails now, serving continues for "
                f"{self.drain_delay:.1f} s",
                reason=reason,
                drain_delay=self.drain_delay,
            )
        elif self.board.drain_started_at is None:
            self._drain.pop("reason", None)
        return started

    def begin_stop(self) -> bool:
        """The drain delay is over (or skipped): the server closes its listeners now."""
        moved = self.move_to(Phase.STOPPING)
        drain = self._drain
        if self.board.drain_started_at is not None and "stop_at" not in drain:
            # What the server does not tell (note_listener_closed), taken here; and the arrivals
            # of every process, before a master reaps its workers and their slots are zeroed.
            drain["stop_at"] = self.clock()
            drain.setdefault("requests_at_start", 0)
            drain["requests_at_stop"] = self._requests_counted()
            drain["in_flight_at_stop"] = self.in_flight if self.closed else self.local_in_flight
            drain["arrivals_at_stop"] = last_arrivals(self.board)
        return moved

    def mark_stopped(self) -> bool:
        if "closed_at" in self._drain:
            self.note_drain_finished(cut=self.local_in_flight)  # a no-op if the server said already
        self.report_drain()  # a no-op if done, or if no drain happened
        return self.move_to(Phase.STOPPED)

    def poll(self) -> Phase:
        """Read the shared phase and tell listeners if another process changed it."""
        self._notify()
        return self._seen_phase

    def _notify(self) -> None:
        # One call per observed change; a jump over several phases (another process moved twice
        # between two polls) is reported as one (old, new) pair.
        with self._notify_lock:
            old, current = self._seen_phase, self.board.phase
            if current == old:
                return
            self._seen_phase = current
        if current.is_terminating and not old.is_terminating:
            self.terminating[0] = True
            self._drain_began()
            self._set_drain_events()
        for listener in list(self._listeners):
            try:
                listener(old, current)
            except Exception:
                logger.exception("graceful: phase listener %r failed", listener)

    # -- drain clock ---------------------------------------------------------------------------

    def claim_drain_clock(self) -> None:
        """Record this process as the one that turns DRAINING into STOPPING, with its delay."""
        self.board.claim_drain_clock(self.pid, self.settings.drain_delay)

    @property
    def drain_delay(self) -> float:
        """The delay in force: the clock owner's (from the board) if one registered, else ours."""
        published = self.board.drain_delay
        return self.settings.drain_delay if published is None else published

    def drain_deadline(self) -> float | None:
        """When the drain delay ends (monotonic seconds), or None while not terminating."""
        started = self.board.drain_started_at
        return None if started is None else started + self.drain_delay

    def drain_delay_left(self) -> float:
        """Seconds until the drain delay ends; 0 when not DRAINING (not yet, or already stopping).

        ``/shutdown?wait=1`` sleeps in steps until this is 0: bounded, as the deadline is at most
        drain_delay away and a second signal (the phase moves on) ends it early.
        """
        deadline = self.drain_deadline()
        if deadline is None or self.board.phase is not Phase.DRAINING:
            return 0.0
        return max(0.0, deadline - self.clock())

    def drain_notice_seconds(self) -> int | None:
        """The ``Graceful-Drain`` value: whole seconds of drain delay left (rounded up), 0 once the
        delay is over or was skipped (STOPPING: in-flight work finishing); None while not terminating.
        """
        board = self.board
        phase = board.phase
        if not phase.is_terminating:
            return None
        if phase is not Phase.DRAINING:
            return 0
        return drain_notice_seconds(board.drain_started_at, self.drain_delay, self.clock())

    def drain_delay_over(self) -> bool:
        deadline = self.drain_deadline()
        return deadline is not None and self.clock() >= deadline

    def draining_event(self) -> asyncio.Event:
        """An event of the running loop that is set when termination begins.

        Long-lived handlers (websockets, server-sent events) await it to close politely (1001 Going
        Away, a final event) instead of being cut when the server stops.
        """
        loop = asyncio.get_running_loop()
        event = self._events.get(loop)
        if event is None:
            event = self._events[loop] = asyncio.Event()
            if self.board.phase.is_terminating:
                event.set()
        return event

    def _set_drain_events(self) -> None:
        for loop, event in list(self._events.items()):
            if loop.is_closed():
                del self._events[loop]
                continue
            # Always through the loop's self-pipe: this may run in a signal handler or another
            # thread, where touching the loop's internals directly is not safe.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    # -- the drain report (issue 13) ---------------------------------------------------------------
    # Figures of this process's drain, kept in ``_drain``; the arrivals live in this process's slot
    # (SLOT_LAST_*), so the supervisor and /healthz can read every process's.

    def note_arrival(self, peer: Any) -> None:
        """A request arrived while terminating (hot paths call this only then): note when.

        ``peer``: the request's client (host, port); it came on a new connection unless the server
        listed that peer in ``pre_drain_peers``. Kept in a list (cheap) and copied to the slot by
        ``flush_traffic``, as the traffic counts are.
        """
        now = self.clock()
        arrivals = self.arrivals
        arrivals[1] = now
        peers = self.pre_drain_peers
        if peers is None or (tuple(peer) if peer else None) not in peers:
            arrivals[0] = now

    def _flush_arrivals(self) -> None:
        newest, latest = self.arrivals
        if latest and not self.closed:
            ints, base = self._slot_ints, self._slot_base
            ints[base + SLOT_LAST_NEW] = int(newest * ARRIVAL_UNIT)
            ints[base + SLOT_LAST_REQUEST] = int(latest * ARRIVAL_UNIT)

    def _requests_counted(self) -> int:
        """Requests this process counted; every process's when it gave its slot up (a master)."""
        if self.closed:
            return sum(slot.requests for slot in self.board.read_slots())
        self.flush_traffic()
        return int(self._slot_ints[self._slot_base + SLOT_TRAFFIC]) // REQUEST_UNIT

    def _drain_began(self) -> None:
        drain = self._drain
        drain.setdefault("reason", "drain started by another process (supervisor, master or /shutdown)")
        drain["requests_at_start"] = self._requests_counted()

    def note_listener_closed(self) -> None:
        """The server closed its listeners: in-flight work finishes from now on (once per drain)."""
        drain = self._drain
        if "closed_at" in drain or self.board.drain_started_at is None:
            return
        now = self.clock()
        drain["closed_at"] = now
        drain["requests_at_close"] = self._requests_counted()
        drain["in_flight_at_close"] = self.local_in_flight
        started = self.board.drain_started_at
        log_event(
            logging.INFO,
            "listener_closed",
            f"graceful: listener closed {now - started:.2f} s after the drain began; "
            f"{drain['in_flight_at_close']} in flight",
            in_flight=drain["in_flight_at_close"],
            seconds_since_drain=round(now - started, 3),
        )

    def note_drain_finished(self, cut: int) -> None:
        """In-flight work is done (``cut``: how many the drain timeout cut): log it, then the report."""
        drain = self._drain
        if "finished_at" in drain or "closed_at" not in drain:
            return
        now = self.clock()
        drain["finished_at"], drain["cut"] = now, cut
        seconds = now - drain["closed_at"]
        log_event(
            logging.WARNING if cut else logging.INFO,
            "drain_finished",
            f"graceful: drain finished {seconds:.2f} s after the listener closed; {cut} cut",
            finish_seconds=round(seconds, 3),
            cut=cut,
        )
        self.report_drain()

    def drain_figures(self, *, instance: bool = False) -> dict[str, Any] | None:
        """The drain report's figures so far (None while not terminating).

        ``instance``: the arrivals of every process on the board, not only this one's.
        """
        board = self.board
        started = board.drain_started_at
        if started is None:
            return None
        drain = self._drain
        delay = self.drain_delay
        if instance or self.closed:
            newest, latest = last_arrivals(board)
            kept = drain.get("arrivals_at_stop", (None, None))
            newest, latest = (
                max((x for x in (now, then) if x is not None), default=None)
                for now, then in zip((newest, latest), kept, strict=True)
            )
        else:
            newest, latest = (stamp or None for stamp in self.arrivals)
        last_new = None if newest is None or newest < started else round(newest - started, 3)
        last_request = None if latest is None or latest < started else round(latest - started, 3)
        at_start = drain.get("requests_at_start", 0)  # 0: born during the drain (a new worker)
        at_close = drain.get("requests_at_close", drain.get("requests_at_stop"))
        if at_close is None:
            at_close = self._requests_counted()
        closed, finished = drain.get("closed_at", drain.get("stop_at")), drain.get("finished_at")
        too_short, fraction, suggested = drain_delay_advice(last_new, delay)
        return {
            "reason": drain.get("reason"),
            "drain_delay": delay,
            "requests_during_delay": None if at_start is None else at_close - at_start,
            "last_arrival_seconds": last_new,
            "last_request_seconds": last_request,
            "in_flight_at_close": drain.get("in_flight_at_close", drain.get("in_flight_at_stop")),
            "finish_seconds": None if closed is None or finished is None else round(finished - closed, 3),
            "cut": drain.get("cut"),
            "too_short": too_short,
            "last_arrival_fraction": None if fraction is None else round(fraction, 3),
            "suggested_drain_delay": suggested,
        }

    def report_drain(self, exit_status: int | None = None) -> dict[str, Any] | None:
        """Log the ``drain_report`` of this process, once; None if no drain happened or it was logged."""
        figures = self.drain_figures()
        if figures is None or self._drain.get("reported"):
            return None
        self._drain["reported"] = True
        figures["exit_status"] = exit_status
        figures["scope"] = "instance" if self.closed else "process"
        level = logging.WARNING if figures["too_short"] or figures["cut"] else logging.INFO
        log_event(level, "drain_report", drain_report_message(figures), **figures)
        return figures

    # -- in-flight accounting --------------------------------------------------------------------
    # One slot per process; only this process writes it. Threads of a WSGI server share the slot,
    # so the read-modify-write is under a lock; the asyncio path runs on one thread and skips it.

    def request_started(self) -> None:
        self._slot_ints[self._slot_base + SLOT_TRAFFIC] += REQUEST_STARTED

    def request_finished(self) -> None:
        self._slot_ints[self._slot_base + SLOT_TRAFFIC] -= 1

    def request_started_threadsafe(self) -> None:
        with self._count_lock:
            self.request_started()

    def request_finished_threadsafe(self) -> None:
        with self._count_lock:
            self.request_finished()

    def request_shed(self) -> None:
        """A request was answered 503 by admission control (never reached the app).

        Straight into this process's slot, under the count lock: shedding is the overloaded path,
        not the hot one, and threads of a WSGI server shed concurrently.
        """
        with self._count_lock:
            self._slot_ints[self._slot_base + SLOT_SHED] += 1

    def websocket_opened(self) -> None:
        self._slot_ints[self._slot_base + SLOT_WEBSOCKETS] += 1

    def websocket_closed(self) -> None:
        self._slot_ints[self._slot_base + SLOT_WEBSOCKETS] -= 1

    @property
    def in_flight(self) -> int:
        """In-flight requests (websockets included) across every process on the board."""
        self.flush_traffic()
        return sum(slot.in_flight for slot in self.board.read_slots())

    @property
    def local_in_flight(self) -> int:
        self.flush_traffic()
        return int(self._slot_ints[self._slot_base + SLOT_TRAFFIC]) & IN_FLIGHT_MASK

    def _public_drain_figures(self) -> dict[str, Any]:
        # Measured figures only: the reason names a caller's address, the delay is a setting (and
        # the suggestion gives it away): those are trusted detail (graceful._control).
        return _strip(self.drain_figures(instance=True))

    def snapshot(self) -> dict[str, Any]:
        """What ``GET /healthz`` shows. Nothing sensitive: no settings, tokens, paths or addresses."""
        now = self.clock()
        self.flush_traffic()
        board = self.board
        slots = board.read_slots()
        phase = board.phase
        drain_started = board.drain_started_at
        return {
            "phase": phase.name.lower(),
            "ready": phase.is_serving,
            "in_flight": sum(slot.in_flight for slot in slots),
            "websockets": sum(slot.websockets for slot in slots),
            "requests": sum(slot.requests for slot in slots),
            "processes": len(slots),
            "uptime_seconds": round(now - board.created_at, 3),
            "draining_seconds": None if drain_started is None else round(now - drain_started, 3),
            **({} if drain_started is None else {"drain": self._public_drain_figures()}),
            **(
                {
                    "per_process": [
                        {"pid": slot.pid, "in_flight": slot.in_flight, "requests": slot.requests}
                        for slot in slots
                    ]
                }
                if self.per_process_health
                else {}
            ),
        }


_PRIVATE_DRAIN_FIGURES = ("reason", "drain_delay", "suggested_drain_delay")


def _strip(figures: dict[str, Any] | None) -> dict[str, Any]:
    return {key: value for key, value in (figures or {}).items() if key not in _PRIVATE_DRAIN_FIGURES}


def find_wrapped(app: object, kind: type[M], depth: int = 16) -> M | None:
    """The instance of ``kind`` in a chain of wrappers (``WRAPPED_ATTRIBUTES``), at most ``depth`` deep."""
    for _ in range(depth):
        if isinstance(app, kind):
            return app
        for name in WRAPPED_ATTRIBUTES:
            inner = getattr(app, name, None)
            if inner is not None and inner is not app:
                app = inner
                break
        else:
            return None
    return None


_default: Lifecycle | None = None
_default_lock = threading.Lock()


def get_lifecycle() -> Lifecycle:
    """The process's lifecycle, made on first use from the environment (``GRACEFUL_*``)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Lifecycle.from_env()
        return _default


def peek_lifecycle() -> Lifecycle | None:
    """The process's lifecycle if one was made or set already, else None (nothing is created)."""
    with _default_lock:
        return _default


def lifecycle_for(
    settings: Settings | None, lifecycle: Lifecycle | None, overrides: dict[str, Any]
) -> Lifecycle:
    """The lifecycle a middleware uses: the one given, else the process's, with settings applied.

    Precedence: keyword ``overrides`` > ``settings`` > ``GRACEFUL_*`` environment variables.
    """
    if lifecycle is not None:
        if settings is not None or overrides:
            raise TypeError("pass either lifecycle= or settings, not both")
        return lifecycle
    lifecycle = get_lifecycle()
    if settings is not None or overrides:
        lifecycle.settings = (settings or Settings.from_env()).replace(**overrides)
    return lifecycle


def set_lifecycle(lifecycle: Lifecycle | None) -> None:
    """Replace the process's lifecycle (entry points that build their own; tests)."""
    global _default
    with _default_lock:
        _default = lifecycle
