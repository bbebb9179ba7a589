"""Background work of one process's event loop, started when the server has started.

An ASGI server runs it on its own loop; a WSGI server has none, so ``BackgroundRuntime`` runs it on
a loop in a daemon thread of its own.

1. the startup gate: run startup (and critical readiness) checks until they pass, wait the minimum
   delay, then leave STARTING (to WARMING when slow start is on, else READY);
2. the checks: readiness and liveness checks every ``check_interval``, off the request path;
3. the board watcher (every 50 ms): notice phase changes other processes made, end the warm-up
   window, let queued requests in as the cap ramps, and end the drain delay when this process owns
   the drain clock;
4. the HAProxy agent-check responder, when ``agent_port`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from graceful._admission import AdmissionBase
from graceful._agent import start_agent
from graceful._chain import chain_server_signals
from graceful._checks import Checks
from graceful._lifecycle import Lifecycle
from graceful._phase import Phase
from graceful._warmup import agent_reply

logger = logging.getLogger("graceful")

# How often the board is read for changes made by other processes (supervisor, gunicorn master,
# sibling workers): well inside a readiness probe period, cheap enough to ignore.
WATCH_INTERVAL = 0.05
# The watcher survives its errors, and logs each distinct one at most this often (seconds): a
# persistent one (a board file gone, a lockf that fails) would otherwise log 20 times a second.
WATCH_ERROR_LOG_INTERVAL = 60.0


class AsyncRuntime:
    def __init__(self, lifecycle: Lifecycle, checks: Checks, admission: AdmissionBase | None) -> None:
        self.lifecycle = lifecycle
        self.checks = checks
        self.admission = admission
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_server: Callable[[], None] | None = None
        self._watch_errors_logged: dict[str, float] = {}  # error text: when last logged

    def start(self, *, take_over_signals: bool = True) -> None:
        """Start on the running loop; ``take_over_signals``: plain uvicorn's SIGTERM (see _chain)."""
        loop = asyncio.get_running_loop()
        settings = self.lifecycle.settings
        if self.checks.has_startup_work or settings.startup_min_delay > 0:
            self._spawn(self._open_gate_when_ready(), "graceful-startup-gate")
        else:
            self.open_gate()
        if take_over_signals:
            self._stop_server = chain_server_signals(self.lifecycle, loop)
        self._spawn(self._watch(), "graceful-board-watcher")
        if self.checks.of_kind("readiness") or self.checks.of_kind("liveness"):
            self._spawn(self._run_checks(), "graceful-checks")
        if settings.agent_port is not None:
            self._spawn(self._serve_agent(settings.agent_host, settings.agent_port), "graceful-agent")

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(work, name=name))

    # -- 1. the startup gate -------------------------------------------------------------------------

    def open_gate(self) -> None:
        warm_up = self.lifecycle.settings.warmup_window > 0
        self.lifecycle.move_to(Phase.WARMING if warm_up else Phase.READY)

    async def _open_gate_when_ready(self) -> None:
        lifecycle, checks = self.lifecycle, self.checks
        settings = lifecycle.settings
        started = lifecycle.clock()
        # Until the checks pass (the orchestrator's startup probe decides how long that may take),
        # or until termination begins: a pod deleted while starting never opens.
        while not lifecycle.phase.is_terminating:
            if await checks.run_kind("startup") and await checks.run_kind("readiness"):
                break
            await asyncio.sleep(min(settings.check_interval, 1.0))
        else:
            return
        remaining = started + settings.startup_min_delay - lifecycle.clock()
        if remaining > 0:
            await asyncio.sleep(remaining)
        self.open_gate()

    # -- 2. the checks -------------------------------------------------------------------------------

    async def _run_checks(self) -> None:
        interval = self.lifecycle.settings.check_interval
        while self.lifecycle.phase < Phase.STOPPED:
            await asyncio.gather(self.checks.run_kind("readiness"), self.checks.run_kind("liveness"))
            await asyncio.sleep(interval)

    # -- 3. the board watcher ------------------------------------------------------------------------

    async def _watch(self) -> None:
        lifecycle, admission = self.lifecycle, self.admission
        window = lifecycle.settings.warmup_window
        while not lifecycle.closed:
            # One failed tick (an OSError from the board's lockf, a bug in a step) must not end
            # flushing counts, the warm-up's end and admission's wake-ups for good: log, try again.
            try:
                phase = lifecycle.poll()
                lifecycle.flush_traffic()  # what WSGI threads counted, for other processes to read
                if phase is Phase.WARMING and lifecycle.clock() - lifecycle.board.phase_changed_at >= window:
                    lifecycle.move_to(Phase.READY)  # any process may: the move is locked and idempotent
                if admission is not None:
                    admission.wake()
                    admission.settle_shedding()
                if self._stop_server is not None and phase is Phase.DRAINING and lifecycle.drain_delay_over():
                    stop, self._stop_server = self._stop_server, None
                    stop()
                if phase is Phase.STOPPED:
                    return
            except Exception as exc:
                self._log_watch_error(exc)
            await asyncio.sleep(WATCH_INTERVAL)

    def _log_watch_error(self, exc: Exception) -> None:
        """Log ``exc`` with its traceback, unless the same error was logged in the last minute."""
        text, now = f"{type(exc).__name__}: {exc}", self.lifecycle.clock()
        logged = self._watch_errors_logged
        last = logged.get(text)
        if last is not None and now - last < WATCH_ERROR_LOG_INTERVAL:
            return
        if len(logged) >= 32:  # errors whose text varies: keep the memory bounded
            logged.clear()
        logged[text] = now
        logger.error(
            "graceful: the board watcher failed; it goes on every %g s (this error is logged at most "
            "every %g s): %s",
            WATCH_INTERVAL,
            WATCH_ERROR_LOG_INTERVAL,
            text,
            exc_info=exc,
        )

    # -- 4. the agent-check responder ----------------------------------------------------------------

    async def _serve_agent(self, host: str, port: int) -> None:
        lifecycle, checks, admission = self.lifecycle, self.checks, self.admission

        def reply() -> str:
            phase = lifecycle.phase
            if phase.is_serving and not checks.passing("readiness"):
                return "down"  # as the readiness probe says
            return agent_reply(phase, admission.share() if admission is not None else 1.0)

        try:
            server = await start_agent(reply, host=host, port=port)
        except OSError as exc:
            logger.error("graceful: cannot start the HAProxy agent responder on %s:%d: %s", host, port, exc)
            return
        try:
            await asyncio.Event().wait()  # until cancelled at shutdown
        finally:
            server.close()


class BackgroundRuntime:
    """An ``AsyncRuntime`` on an event loop in a daemon thread: for WSGI servers, which have no loop.

    Started in the process that serves (a gunicorn worker starts it after the fork: threads do not
    survive one). The drain clock is never owned here: under gunicorn the arbiter owns it, under
    graceful-run the supervisor.
    """

    def __init__(self, runtime: AsyncRuntime) -> None:
        self.runtime = runtime
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="graceful-runtime", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        self._thread.start()
        if not self._started.wait(timeout):
            logger.error("graceful: the background runtime did not start within %g s", timeout)

    def stop(self, timeout: float = 5.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stopping.set)
            self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self.runtime.start(take_over_signals=False)
        self._started.set()
        try:
            # Until stop(), or until the lifecycle is closed (a test's, or an embedding's).
            while not self._stopping.is_set() and not self.runtime.lifecycle.closed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
        finally:
            await self.runtime.stop()
