"""The drain clock in the gunicorn master (arbiter), installed from a worker class's ``check_config``.

Why the master: on SIGTERM gunicorn's arbiter closes (and for UNIX sockets unlinks) its listeners in
``Arbiter.stop()`` before it even signals the workers, so no delay inside a worker can keep the
socket open (gunicorn #2884 asked for a delay on SIGTERM; #3397 for draining queued connections).

What is changed, on the arbiter *instance* (so a HUP reload, which rebuilds ``arbiter.cfg``, keeps
it): ``handle_term`` starts the drain instead of stopping; ``wait_for_signals`` wakes every 50 ms
and ends the delay; ``stop`` moves the phase; ``spawn_worker`` gives each worker its board slot and
``reap_workers`` frees it, so a SIGKILLed worker's in-flight count cannot stick.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from typing import Any

from graceful._board import DEFAULT_SLOTS, MAX_SLOTS, BoardError
from graceful._events import json_handlers_like
from graceful._lifecycle import Lifecycle, peek_lifecycle, set_lifecycle
from graceful._phase import Phase
from graceful._settings import Settings

logger = logging.getLogger("graceful")

#: How often the arbiter looks at the board (a /shutdown in a worker, the end of the delay).
TICK = 0.05
_INSTALLED = "_graceful_master"


def prepare_master(cfg: Any, log: Any) -> Lifecycle:
    """Runs in ``Worker.check_config`` (in the arbiter, before any fork): make the shared board.

    The lifecycle made here is the process default; workers inherit it across fork (each takes its
    own slot), so the middleware in every worker reads and writes the same board.
    """
    # GRACEFUL_LOG_FORMAT read here (entry point); the lifecycle may not exist yet.
    route_logs_to_gunicorn(log, log_format=Settings.from_env().log_format)
    # One slot per worker, twice over: a HUP reload starts every new worker before the old ones
    # leave. (With preload_app the app may have made the lifecycle already: it is kept.)
    needed = max(DEFAULT_SLOTS, 2 * int(cfg.workers) + 8)
    lifecycle = peek_lifecycle()
    if lifecycle is None:
        lifecycle = Lifecycle.from_env(slots=min(needed, MAX_SLOTS))
        set_lifecycle(lifecycle)
    if lifecycle.board.slots < needed:
        log.warning(
            "graceful: the state board has %d slots; %d workers need up to %d during a reload",
            lifecycle.board.slots,
            cfg.workers,
            needed,
        )
    lifecycle.per_process_health = True
    map_graceful_timeout(cfg, lifecycle, log)
    if lifecycle.external:
        log.info("graceful: GRACEFUL_STATE is set: the supervisor owns the drain clock, no delay here")
    else:
        lifecycle.claim_drain_clock()
        log.info("graceful: SIGTERM drains for %.1f s before gunicorn stops", lifecycle.settings.drain_delay)
    # when_ready runs in the arbiter right after check_config and is given the arbiter itself.
    user_when_ready = cfg.when_ready

    def when_ready(arbiter: Any) -> None:
        install(arbiter, lifecycle)
        user_when_ready(arbiter)

    cfg.set("when_ready", when_ready)
    return lifecycle


def route_logs_to_gunicorn(log: Any, *, log_format: str = "text") -> None:
    """Write graceful's log lines through gunicorn's error log (its format, file and level), as the
    uvicorn worker does for uvicorn's loggers; unless the application configured them already.

    ``log_format="json"``: to the same streams, one JSON object a line (graceful._events).
    """
    graceful_logger = logging.getLogger("graceful")
    error_log = getattr(log, "error_log", None)
    if graceful_logger.handlers or error_log is None:
        return
    handlers = list(error_log.handlers)
    graceful_logger.handlers = json_handlers_like(handlers) if log_format == "json" else handlers
    graceful_logger.setLevel(error_log.level)
    graceful_logger.propagate = False


def map_graceful_timeout(cfg: Any, lifecycle: Lifecycle, log: Any) -> None:
    """gunicorn's graceful_timeout bounds in-flight work after the listeners close, as drain_timeout
    does: when the user left it at gunicorn's default, drain_timeout is used; an explicit one wins."""
    setting = cfg.settings["graceful_timeout"]
    if setting.value == setting.default:
        # gunicorn takes whole seconds here; round up so no in-flight second is lost.
        cfg.set("graceful_timeout", math.ceil(lifecycle.settings.drain_timeout))
    elif setting.value != lifecycle.settings.drain_timeout:
        log.info(
            "graceful: gunicorn graceful_timeout=%s bounds in-flight work (drain_timeout=%s is not used)",
            setting.value,
            lifecycle.settings.drain_timeout,
        )


def install(arbiter: Any, lifecycle: Lifecycle) -> None:
    """Put the drain clock and the slot bookkeeping on ``arbiter`` (once)."""
    if getattr(arbiter, _INSTALLED, None) is not None:
        return
    master = _Master(arbiter, lifecycle)
    setattr(arbiter, _INSTALLED, master)
    arbiter.handle_term = master.handle_term
    arbiter.wait_for_signals = master.wait_for_signals
    arbiter.stop = master.stop
    arbiter.spawn_worker = master.spawn_worker
    arbiter.reap_workers = master.reap_workers
    arbiter.setup = master.setup
    # The master serves nothing: its own slot goes back, so /healthz counts workers only.
    lifecycle.close()


class _Master:
    """The arbiter's side of graceful: drain clock owner unless a supervisor is (``external``)."""

    def __init__(self, arbiter: Any, lifecycle: Lifecycle) -> None:
        self.arbiter = arbiter
        self.lifecycle = lifecycle
        self.owns_clock = not lifecycle.external
        self.slots: dict[int, int] = {}  # worker pid -> board slot it was given
        self._handle_term = arbiter.handle_term
        self._wait_for_signals = arbiter.wait_for_signals
        self._stop = arbiter.stop
        self._spawn_worker = arbiter.spawn_worker
        self._reap_workers = arbiter.reap_workers
        self._setup = arbiter.setup

    # -- signals and the clock -------------------------------------------------------------------

    def handle_term(self) -> None:
        lifecycle = self.lifecycle
        if self.owns_clock and lifecycle.phase < Phase.DRAINING and lifecycle.drain_delay > 0:
            # 1. Readiness fails in every worker at once (they read the board); the arbiter and its
            #    workers keep serving, listeners open, until the delay is over (see tick).
            lifecycle.begin_drain("SIGTERM to the gunicorn master")
            return
        # A second SIGTERM, no delay, or the supervisor's SIGTERM once its delay is over: stop now.
        self._handle_term()

    def wait_for_signals(self, timeout: float = 1.0) -> list[int]:
        signals: list[int] = self._wait_for_signals(timeout=min(timeout, TICK))
        if not signals:  # signals first (a SIGINT now must win over the graceful stop)
            self.tick()
        return signals

    def tick(self) -> None:
        """Notice a drain another process started (/shutdown); end the delay when it is over."""
        lifecycle = self.lifecycle
        phase = lifecycle.poll()
        if self.owns_clock and phase is Phase.DRAINING and lifecycle.drain_delay_over():
            # 2. The delay is over: gunicorn's own graceful stop (close listeners, SIGTERM the
            #    workers, wait graceful_timeout) runs from the main loop's StopIteration.
            logger.info("graceful: drain delay over, stopping gunicorn")
            raise StopIteration

    def stop(self, graceful: bool = True) -> None:
        lifecycle = self.lifecycle
        lifecycle.begin_stop()
        try:
            self._stop(graceful)
        finally:
            lifecycle.mark_stopped()

    def setup(self, app: Any) -> None:
        # A HUP reload rebuilds the config from scratch: apply the timeout mapping again.
        self._setup(app)
        map_graceful_timeout(self.arbiter.cfg, self.lifecycle, self.arbiter.log)

    # -- slots: given before fork, freed at reap -------------------------------------------------

    def spawn_worker(self) -> int | None:
        self.stop_background_work()
        try:
            slot: int | None = self.lifecycle.reserve_child_slot()
        except BoardError as exc:  # more workers than slots (TTIN): serve anyway, uncounted
            logger.error("graceful: %s; this worker's requests are not counted on the board", exc)
            slot = None
        try:
            pid: int | None = self._spawn_worker()  # in the child this never returns
        except BaseException:
            if slot is not None:
                self.lifecycle.board.release_slot_held_by(slot, (os.getpid(),))
            raise
        if pid and slot is not None:
            self.slots[pid] = slot
        return pid

    def stop_background_work(self) -> None:
        """Stop WSGI middleware background threads running in the arbiter, before each fork.

        The arbiter serves nothing, but an app that makes a request through itself while it loads
        (``--preload`` and a warm-up with Flask's ``test_client()``) starts the middleware's
        background thread here: it would run the checks and open the shared startup gate before any
        worker serves, and a thread holding a lock at the fork leaves it held in the child. A no-op
        once stopped; each worker starts its own (``GracefulMiddleware.reset_after_fork``).
        """
        from graceful.wsgi import GracefulMiddleware

        for middleware in self.lifecycle.middlewares(GracefulMiddleware):
            middleware.stop()

    def reap_workers(self) -> None:
        try:
            self._reap_workers()
        finally:
            self.free_slots()

    def free_slots(self) -> None:
        """Free the slot of every worker the arbiter no longer has (reaped, or lost by kill_worker)."""
        live = self.arbiter.WORKERS
        board = self.lifecycle.board
        master = os.getpid()
        for pid in [pid for pid in self.slots if pid not in live]:
            board.release_slot_held_by(self.slots.pop(pid), (pid, master))


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
