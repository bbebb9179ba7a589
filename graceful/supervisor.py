"""graceful-run: the PID-1 supervisor. Spawn, forward signals, reap zombies, own the drain clock.

    graceful-run [OPTIONS] [--] COMMAND [ARGS...]        (also: python -m graceful.supervisor)

On the drain signal (SIGTERM):
  1. the state board moves to DRAINING at once: the app's readiness fails within milliseconds,
     and everything is still served;
  2. after ``--drain-delay`` the board moves to STOPPING and SIGTERM goes to the child's group;
  3. after ``--drain-timeout`` whatever is left gets SIGKILL;
  4. graceful-run exits with the child's status (128+N if it died of signal N).
A ``/shutdown`` call inside the app writes DRAINING to the board; the wait loop reads the board every
``--poll-interval`` and runs the same steps from the drain's start. A second SIGTERM during the
delay forwards at once. SIGINT (Ctrl-C in a terminal) means "stop now": it is forwarded at once,
skips the delay, and the drain timeout still bounds the stop; a second Ctrl-C is forwarded again
(uvicorn's "force exit"). Every other signal is forwarded at once, after ``-r`` rewrites.

This module imports nothing of the web stack (no asyncio, no logging): its start-up is a product figure.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from graceful._board import StateBoard, last_arrivals
from graceful._board_file import board_directory, create_board, sweep_stale
from graceful._phase import Phase
from graceful._process import (
    SpawnError,
    release_terminal,
    set_parent_death_signal,
    set_subreaper,
    spawn,
    spawn_with_terminal,
    stopped_in_group,
)
from graceful._signals import (
    JOB_CONTROL_STOPS,
    exit_status,
    forward_deadline,
    forwardable_signals,
    kill_deadline,
    rewrite,
    rewrite_table,
    signal_name,
    wait_timeout,
)
from graceful._supervisor_cli import USAGE, Exit, Options, UsageError, parse_args

# graceful._lifecycle.STATE_ENV; not imported from there: that module pulls in asyncio.
STATE_ENV = "GRACEFUL_STATE"
# After SIGKILL, how long the group may take to disappear before we stop waiting (bounded loops).
KILL_GRACE = 2.0


class Log:
    """One-line messages on stderr. 0: nothing, 1: errors and drain steps, 2: signals, 3: reaping.

    ``log_format="json"``: one JSON object per line with the fields of graceful._events'
    JsonFormatter (ts, level, logger, message, event, pid, then the event's figures); ``json`` is
    imported only then, as the logging module never is (start-up time).
    """

    def __init__(self, verbosity: int, log_format: str = "text") -> None:
        self.verbosity = verbosity
        self.json = log_format == "json"

    def __call__(self, level: int, message: str) -> None:
        self.event(level, None, message)

    def event(
        self, level: int, event: str | None, message: str, severity: str | None = None, **fields: object
    ) -> None:
        """Write ``message`` (as JSON with ``event`` and ``fields`` in JSON mode) if ``level`` is shown."""
        if level > self.verbosity:
            return
        if self.json:
            from graceful._jsonline import event_line, utc_timestamp  # late: start-up time

            now = time.time()
            line = event_line(
                {
                    "ts": utc_timestamp(now),
                    "level": severity or ("ERROR" if level == 0 else "INFO"),
                    "logger": "graceful.supervisor",
                    "message": f"graceful-run: {message}",
                    "event": event,
                    "pid": os.getpid(),
                    **fields,
                }
            )
        else:
            line = f"graceful-run: {message}"
        try:
            os.write(2, (line + "\n").encode(errors="replace"))
        except OSError:  # stderr closed or a broken pipe: never die of a log line
            pass


class Supervisor:
    """The wait loop around one child: signals in, signals out, zombies reaped, deadlines kept."""

    def __init__(self, options: Options, board: StateBoard, child: int, log: Log) -> None:
        self.options = options
        self.board = board
        self.child = child
        self.log = log
        self.rewrites = rewrite_table(options.rewrites, single_child=options.single_child)
        self.waited = forwardable_signals() | {signal.SIGCHLD}
        self.child_status: int | None = None
        self.seen_phase = board.phase
        self.forwarded_at: float | None = None  # when the stop signal went to the child
        self.kill_at: float | None = None
        self.reaped = 0
        #: The drain's figures for the supervisor's drain report (see ``report_drain``).
        self.drain: dict[str, object] = {}

    def run(self) -> int:
        """Supervise until the child exits; clean up its group; return graceful-run's exit status."""
        while self.child_status is None:
            now = time.monotonic()
            timeout = wait_timeout(now, self._deadlines(), self._poll_interval())
            info = signal.sigtimedwait(self.waited, timeout) if timeout is not None else None
            if info is None and timeout is None:
                info = signal.sigwaitinfo(self.waited)
            if info is not None:
                self.on_signal(info.si_signo)
            self.tick(time.monotonic())
        exited_at = time.monotonic()
        status = exit_status(self.child_status, self.options.expect_exit)
        self.log.event(
            1 if self.drain else 2,
            "child_exited",
            f"child {self.child} exited with wait status {self.child_status:#x} (exit status {status})",
            child=self.child,
            wait_status=self.child_status,
            exit_status=status,
        )
        if not self.options.single_child:
            self.cleanup_group()
        self.report_drain(exited_at, status)
        return status

    def _deadlines(self) -> list[float | None]:
        started = self.board.drain_started_at
        forward_at = None
        if self.forwarded_at is None and started is not None:
            forward_at = forward_deadline(started, self.options.drain_delay)
        return [forward_at, self.kill_at]

    def _poll_interval(self) -> float | None:
        # Poll the board only while a /shutdown in the app could still start a drain we must run.
        return self.options.poll_interval if self.forwarded_at is None else None

    def on_signal(self, signum: int) -> None:
        """One signal taken from the queue: reap, start or hurry the drain, or forward it."""
        now = time.monotonic()
        if signum == signal.SIGCHLD:
            self.reap_zombies()
        elif signum == self.options.drain_signal and self.forwarded_at is None:
            if self.board.phase < Phase.DRAINING and self.options.drain_delay > 0:
                self.begin_drain(now, signal_name(signum))
            else:  # drain delay 0, or a second drain signal during the delay: forward at once
                self.stop(now, signum)
        elif signum == signal.SIGINT and self.forwarded_at is None:
            self.stop(now, signum)  # Ctrl-C: stop now, no delay; the drain timeout still applies
        else:
            self.forward_signal(signum)

    def begin_drain(self, now: float, reason: str) -> None:
        # 1. Readiness fails from this instant: the middleware reads the phase on every probe.
        self.board.move_to(Phase.DRAINING, now=now)
        self.seen_phase = Phase.DRAINING
        self.note_drain_began(reason)
        self.log.event(
            1,
            "drain_started",
            f"draining (got {reason}): readiness fails now; "
            f"{signal_name(self.options.drain_signal)} follows in {self.options.drain_delay:g} s",
            "WARNING",
            reason=reason,
            drain_delay=self.options.drain_delay,
        )

    def note_drain_began(self, reason: str) -> None:
        self.drain = {"reason": reason, "requests_at_start": self.board_requests()}

    def board_requests(self) -> int:
        return sum(slot.requests for slot in self.board.read_slots())

    def board_in_flight(self) -> int:
        return sum(slot.in_flight for slot in self.board.read_slots())

    def tick(self, now: float) -> None:
        """Read the board and the clock: a drain started by the app, a delay over, a timeout hit."""
        phase = self.board.phase
        if phase is not self.seen_phase:
            if phase is Phase.DRAINING:
                reason = "started in the app, e.g. /shutdown"
                self.note_drain_began(reason)
                self.log.event(
                    1,
                    "drain_started",
                    f"draining ({reason}): "
                    f"{signal_name(self.options.drain_signal)} follows at the delay's end",
                    "WARNING",
                    reason=reason,
                    drain_delay=self.options.drain_delay,
                )
            self.seen_phase = phase
        started = self.board.drain_started_at
        delay_over = started is not None and now >= forward_deadline(started, self.options.drain_delay)
        if self.forwarded_at is None and (phase >= Phase.STOPPING or delay_over):
            self.stop(now, self.options.drain_signal)  # 2. the delay is over
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None  # 3. the drain timeout is over
            in_flight = self.board_in_flight()
            self.drain["cut"] = in_flight
            self.log.event(
                1,
                "sigkill_sent",
                f"drain timeout ({self.options.drain_timeout:g} s) over: sending SIGKILL "
                f"({in_flight} requests in flight)",
                "WARNING",
                drain_timeout=self.options.drain_timeout,
                in_flight=in_flight,
            )
            self.send(signal.SIGKILL)

    def stop(self, now: float, signum: int) -> None:
        """End the drain delay: STOPPING on the board, the signal forwarded, the kill clock started."""
        self.board.move_to(Phase.STOPPING, now=now)
        self.seen_phase = self.board.phase
        self.forwarded_at = now
        self.kill_at = kill_deadline(now, self.options.drain_timeout)
        sent = signal_name(rewrite(signum, self.rewrites))
        started = self.board.drain_started_at
        if started is not None:
            # The figures of the drain delay, before the child's processes stop and free their slots.
            if not self.drain:
                self.note_drain_began(f"{signal_name(signum)}, no drain delay")
            self.drain.update(
                started_at=started,
                stop_at=now,
                requests_at_stop=self.board_requests(),
                in_flight_at_close=self.board_in_flight(),
                arrivals=last_arrivals(self.board),
            )
        self.log.event(
            1,
            "signal_forwarded",
            f"stopping: forwarding {sent}, SIGKILL in {self.options.drain_timeout:g} s if still running",
            signal=sent,
            drain_timeout=self.options.drain_timeout,
            seconds_since_drain=None if started is None else round(now - started, 3),
        )
        self.forward_signal(signum)

    def report_drain(self, exited_at: float, status: int) -> None:
        """The supervisor's ``drain_report``: the instance's figures, read from the board."""
        drain = self.drain
        if "stop_at" not in drain:
            return
        from graceful._policies import drain_delay_advice, drain_report_message

        started, stop_at = float(drain["started_at"]), float(drain["stop_at"])  # type: ignore[arg-type]
        arrivals: tuple[float | None, float | None] = drain["arrivals"]  # type: ignore[assignment]
        newest, latest = arrivals
        last_new = None if newest is None or newest < started else round(newest - started, 3)
        last_request = None if latest is None or latest < started else round(latest - started, 3)
        delay = self.options.drain_delay
        too_short, fraction, suggested = drain_delay_advice(last_new, delay)
        figures: dict[str, object] = {
            "reason": drain["reason"],
            "drain_delay": delay,
            "requests_during_delay": int(drain["requests_at_stop"]) - int(drain["requests_at_start"]),  # type: ignore[call-overload]
            "last_arrival_seconds": last_new,
            "last_request_seconds": last_request,
            "in_flight_at_close": drain["in_flight_at_close"],
            "finish_seconds": round(exited_at - stop_at, 3),
            "cut": drain.get("cut", 0),
            "too_short": too_short,
            "last_arrival_fraction": None if fraction is None else round(fraction, 3),
            "suggested_drain_delay": suggested,
            "exit_status": status,
            "scope": "instance",
        }
        warn = too_short or bool(figures["cut"])
        message = drain_report_message(figures).removeprefix("graceful: ")
        self.log.event(1, "drain_report", message, "WARNING" if warn else "INFO", **figures)

    def forward_signal(self, signum: int) -> None:
        """Send ``signum`` on after rewriting (0: dropped); job-control stops suspend us too."""
        target = rewrite(signum, self.rewrites)
        if target == 0:
            self.log(2, f"dropped {signal_name(signum)} (rewritten to 0)")
            return
        self.log(2, f"forwarding {signal_name(signum)} as {signal_name(target)}")
        self.send(target)
        # dumb-init: after passing a terminal stop on, stop ourselves too, so the shell's job control
        # sees the job as suspended. PID 1 cannot be stopped from inside its namespace: skip there.
        if signum in JOB_CONTROL_STOPS and os.getpid() != 1:
            os.kill(os.getpid(), signal.SIGSTOP)

    def send(self, signum: int) -> None:
        """To the child's process group (the default), or to the child alone (--single-child)."""
        try:
            if self.options.single_child:
                os.kill(self.child, signum)
            else:
                os.killpg(self.child, signum)  # setsid made the child its group's leader: pgid = pid
        except ProcessLookupError:  # already gone; its SIGCHLD is on its way
            pass

    def reap_zombies(self) -> None:
        """Collect every child that has exited: ours, and orphans the kernel gave us as PID 1/subreaper.

        Standard signals do not queue (signal(7)): one SIGCHLD may stand for many exits, so wait
        until there is nothing left to collect.
        """
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.child_status = status
            else:
                self.reaped += 1
                self.log(3, f"reaped orphan {pid}")

    def group_alive(self) -> bool:
        try:
            os.killpg(self.child, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def cleanup_group(self) -> None:
        """Nobody left behind: TERM what remains of the child's group, then KILL it at the deadline.

        tini and dumb-init exit when the main child exits and leave the rest to the kernel (which
        kills a PID namespace's processes only when its PID 1 exits); daemons double-forked by a
        start script would otherwise be cut without a TERM, or outlive us when we are not PID 1.
        ``--leave-survivors`` does what dumb-init does: TERM, then exit at once.
        """
        self.reap_zombies()
        if not self.group_alive():
            return
        leave = self.options.leave_survivors
        if self.kill_at is not None and not leave:
            # A stop is in progress and the group already got the stop signal: the main child may be
            # a wrapper (`sh -c "...; uvicorn"`) that died of it at once while the server is still
            # finishing in-flight requests. They get what is left of the drain timeout, not less.
            self.log(1, "child exited during the stop; the rest of its group has until the drain timeout")
            if self._wait_group_gone(self.kill_at):
                return
        else:
            grace = self.options.cleanup_timeout
            term = rewrite(signal.SIGTERM, self.rewrites)  # dumb-init: its -r applies here too
            then = "and leaving it (--leave-survivors)" if leave else f"(SIGKILL in {grace:g} s)"
            self.log(1, f"child exited; sending {signal_name(term)} to the rest of its group {then}")
            if term:
                self.send(term)
                self.continue_stopped()
            if leave or self._wait_group_gone(time.monotonic() + grace):
                return
        self.log(1, "group still running after the cleanup timeout: sending SIGKILL")
        self.send(signal.SIGKILL)
        self._wait_group_gone(time.monotonic() + KILL_GRACE)

    def continue_stopped(self) -> None:
        """SIGCONT to the members of the group that are stopped, and to no other.

        A stopped process keeps the TERM pending until it is continued (signal(7)); once continued,
        the kernel delivers pending standard signals lowest number first, so it sees TERM before
        CONT. A running one has no use for CONT, and sending it to all would hand every handler a
        CONT right behind the TERM: dumb-init sends TERM alone on this path (dumb-init.c,
        handle_signal, "send SIGTERM to any remaining children"), and its test suite checks that the
        first signal a survivor sees is TERM. A process stopped after this look gets SIGKILL at the
        cleanup timeout, which works on stopped processes too.
        """
        for pid in stopped_in_group(self.child):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def _wait_group_gone(self, deadline: float) -> bool:
        chld = {signal.SIGCHLD}
        while self.group_alive():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Members may not be our children (we are not PID 1 and not a subreaper): poll as well.
            signal.sigtimedwait(chld, min(remaining, 0.05))
            self.reap_zombies()
        return True


def run(options: Options) -> int:
    """Set up (signals, reaper, board), spawn, supervise; returns the exit status."""
    log = Log(options.verbosity, options.log_format)
    parent = os.getppid()
    # SIGCHLD ignored (inherited) would make the kernel reap for us and hide the child's status
    # (waitpid(2), "POSIX.1-2001 specifies that if the disposition of SIGCHLD is set to SIG_IGN").
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Block before spawning: a signal that arrives before the loop waits stays pending, not lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, forwardable_signals() | {signal.SIGCHLD})
    if os.getpid() != 1 and options.subreaper and not set_subreaper():
        log(1, "warning: cannot become a subreaper; orphans go to PID 1")
    if options.pdeath_signal:
        set_parent_death_signal(options.pdeath_signal, parent)
    directory = board_directory(options.state_dir)
    removed = sweep_stale(directory)
    if removed:
        log(1, f"removed {len(removed)} state board file(s) left by killed runs in {directory}")
    try:
        board, hold = create_board(directory, time.monotonic())
    except OSError as exc:
        log(0, f"cannot create the state board in {directory}: {exc.strerror or exc}")
        return 1
    try:
        # Every process computes the same deadline from the board (graceful._lifecycle.drain_delay).
        board.claim_drain_clock(os.getpid(), options.drain_delay)
        env = dict(os.environ)
        env[STATE_ENV] = str(board.path)
        try:
            if not options.single_child and release_terminal():
                log(2, "handing the terminal to the child (its hand-off SIGHUP and SIGCONT dropped)")
                child = spawn_with_terminal(options.command, env)
            else:
                child = spawn(options.command, env, new_session=not options.single_child)
        except SpawnError as exc:
            log(0, str(exc))
            return exc.status
        # As dumb-init: keep no hold on the start directory, so its file system can be unmounted;
        # the child keeps its own. First thing after the spawn (posix_spawn has no chdir action
        # for the child, so we cannot move before it). Every path we use from here is absolute.
        try:  # not contextlib.suppress: contextlib is a measurable part of a cold start
            os.chdir("/")
        except OSError:
            pass
        log(2, f"started {options.command[0]!r} as pid {child}")
        return Supervisor(options, board, child, log).run()
    finally:
        board.close()
        os.close(hold)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``graceful-run``: exit 2 with the usage on a bad call."""
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except Exit as done:
        sys.stdout.write(done.text)
        return 0
    except UsageError as exc:
        sys.stderr.write(f"graceful-run: {exc}\n{USAGE}")
        return 2
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
