"""Pure policies of the supervisor: signal names, rewriting, exit-status mapping, deadline arithmetic.

No I/O and no clock: every function here is a function of its arguments, tested as tables.
This module imports only ``signal`` and ``errno`` (the supervisor's start-up time and memory are part
of the product: no dataclasses, no typing at run time).
"""

from __future__ import annotations

import errno
import math
import signal

# The same bound as graceful._settings (MAX_SECONDS), kept here so the supervisor does not import
# dataclasses just to validate two numbers.
MAX_SECONDS = 3600.0

# Signals the kernel never lets a process catch, block or ignore (signal(7)), and SIGCHLD, which
# the supervisor consumes itself to reap.
UNFORWARDABLE = frozenset({signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD})

# Job-control stops. In group mode the child runs in its own session, so its process group is
# orphaned (its parent, the supervisor, is in another session) and the kernel discards TSTP, TTIN
# and TTOU whose action is "stop" (POSIX "orphaned process group"; kernel/signal.c get_signal).
# dumb-init rewrites them to SIGSTOP in setsid mode for that reason; so do we, unless -r says otherwise.
JOB_CONTROL_STOPS = frozenset({signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})


class PolicyError(ValueError):
    """A value outside its allowed range. The message names the field, the value and the range."""


def forwardable_signals() -> frozenset[int]:
    """Every signal the supervisor forwards: 1..31 except KILL/STOP/CHLD, and the real-time signals.

    ``signal.valid_signals()`` already leaves out the two real-time signals glibc keeps for itself
    (32 and 33, used by NPTL): a process cannot block or wait for those through libc.
    """
    return frozenset(int(sig) for sig in signal.valid_signals()) - UNFORWARDABLE


def signal_number(text: str, *, field: str) -> int:
    """Parse ``15``, ``TERM``, ``SIGTERM``, ``sigterm``, ``RTMIN+3`` or ``SIGRTMAX-1`` to a number."""
    raw = text.strip()
    if raw.isdigit():
        number = int(raw)
    else:
        name = raw.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        real_time = _real_time_number(name)
        member = getattr(signal, name, None)
        if real_time is not None:
            number = real_time
        elif isinstance(member, signal.Signals):
            number = int(member)
        else:
            raise PolicyError(f"{field}={text!r} is not a signal; allowed: a number or a name like TERM")
    if number not in signal.valid_signals():
        raise PolicyError(
            f"{field}={text!r} is not a valid signal; allowed: 1 to 31 and {int(signal.SIGRTMIN)} to "
            f"{int(signal.SIGRTMAX)}"
        )
    return number


def _real_time_number(name: str) -> int | None:
    for base, origin in (("SIGRTMIN", int(signal.SIGRTMIN)), ("SIGRTMAX", int(signal.SIGRTMAX))):
        if name == base:
            return origin
        if name.startswith(base) and name[len(base)] in "+-" and name[len(base) + 1 :].isdigit():
            offset = int(name[len(base) + 1 :])
            return origin + offset if name[len(base)] == "+" else origin - offset
    return None


def signal_name(number: int) -> str:
    """``SIGTERM`` for 15, ``SIGRTMIN+2`` for 36: for log lines."""
    if number == 0:
        return "nothing"
    if int(signal.SIGRTMIN) <= number <= int(signal.SIGRTMAX):
        offset = number - int(signal.SIGRTMIN)
        return "SIGRTMIN" if offset == 0 else f"SIGRTMIN+{offset}"
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def parse_rewrite(text: str, *, field: str = "--rewrite") -> tuple[int, int]:
    """dumb-init's ``-r S:R``: signal S is sent on as R; R=0 drops S (dumb-init README)."""
    source, colon, target = text.partition(":")
    if not colon:
        raise PolicyError(f"{field}={text!r} is not a rewrite; allowed: SIGNAL:SIGNAL, e.g. TERM:QUIT or 2:0")
    number = signal_number(source, field=field)
    if number in UNFORWARDABLE:
        raise PolicyError(f"{field}={text!r} rewrites {signal_name(number)}, which is never forwarded")
    if target.strip() == "0":
        return number, 0
    return number, signal_number(target, field=field)


def rewrite_table(rewrites: list[tuple[int, int]], *, single_child: bool) -> dict[int, int]:
    """The rewrite table in force: dumb-init's job-control defaults (group mode), then the user's."""
    table: dict[int, int] = {}
    if not single_child:
        table.update((int(sig), int(signal.SIGSTOP)) for sig in JOB_CONTROL_STOPS)
    table.update(rewrites)
    return table


def rewrite(signum: int, table: dict[int, int]) -> int:
    """The signal to send on for ``signum`` (0: drop it)."""
    return table.get(signum, signum)


def exit_status(wait_status: int, remapped_to_zero: frozenset[int]) -> int:
    """The supervisor's exit status for the child's wait status.

    The child's exit code; 128+N when it died of signal N (the shell convention, also tini's and
    dumb-init's); then tini's ``-e CODE``: a status listed there becomes 0.
    """
    code = os_waitstatus_to_exitcode(wait_status)
    status = code if code >= 0 else 128 - code
    return 0 if status in remapped_to_zero else status


def os_waitstatus_to_exitcode(wait_status: int) -> int:
    """``os.waitstatus_to_exitcode`` without importing os here (keeps this module pure)."""
    if wait_status & 0x7F == 0:  # WIFEXITED
        return (wait_status >> 8) & 0xFF
    return -(wait_status & 0x7F)  # WIFSIGNALED: -signal, as the os function returns it


def spawn_failure_status(error: int) -> int:
    """127 when the command was not found, 126 when found but not executable (POSIX shell, 2.8.2)."""
    return 127 if error in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG) else 126


def check_seconds(field: str, value: float) -> float:
    """graceful._settings' rule for durations: a finite number from 0 to MAX_SECONDS."""
    if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
        raise PolicyError(f"{field}={value!r} is out of range; allowed: 0 to {MAX_SECONDS:g} seconds")
    return value


def parse_seconds(field: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PolicyError(
            f"{field}={text!r} is not a number of seconds; allowed: 0 to {MAX_SECONDS:g}"
        ) from None
    return check_seconds(field, value)


def parse_exit_code(field: str, text: str) -> int:
    if not text.strip().isdigit() or not 0 <= int(text) <= 255:
        raise PolicyError(f"{field}={text!r} is not an exit status; allowed: 0 to 255")
    return int(text)


# -- deadline arithmetic -------------------------------------------------------------------------


def forward_deadline(drain_started_at: float, drain_delay: float) -> float:
    """When the drain signal goes to the child: the drain's start (on the board) plus the delay.

    Taken from the board's timestamp, not from when the supervisor noticed: a drain started by
    ``/shutdown`` in the app began when the app wrote the board, up to one poll interval earlier.
    """
    return drain_started_at + drain_delay


def kill_deadline(forwarded_at: float, drain_timeout: float) -> float:
    """When whatever is left gets SIGKILL: the drain timeout after the drain signal was forwarded."""
    return forwarded_at + drain_timeout


def wait_timeout(now: float, deadlines: list[float | None], poll_interval: float | None) -> float | None:
    """How long the wait loop may sleep: until the nearest deadline or the next board poll.

    None means "until a signal arrives". Never negative: a deadline already past means 0.
    """
    nearest = min((deadline for deadline in deadlines if deadline is not None), default=None)
    candidates = [x for x in (None if nearest is None else nearest - now, poll_interval) if x is not None]
    return max(0.0, min(candidates)) if candidates else None
