"""The supervisor's system calls on processes: spawn the child, become a subreaper, the parent-death
signal, find the stopped members of a group. Standard library only, nothing imported at start-up
that PID 1 does not need (ctypes only for prctl)."""

from __future__ import annotations

import os
import signal

from graceful._signals import forwardable_signals, spawn_failure_status

# prctl(2) options, from <linux/prctl.h>.
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class SpawnError(Exception):
    """The command could not be run; ``status`` is 126 or 127 (POSIX shell conventions)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def spawn(command: list[str], env: dict[str, str], *, new_session: bool) -> int:
    """Start the child; returns its pid. It starts clean: no blocked signal, default dispositions.

    Python ignores SIGPIPE and SIGXFSZ at start-up, and the supervisor blocks every signal it waits
    for; ignored dispositions and the mask both survive execve(2), so a plain exec would hand them
    to the app (a Go or C server that never sees SIGPIPE; a shell whose `trap` cannot fire).
    posix_spawn resets both in the child before the exec (posix_spawnattr_setsigdefault/setsigmask).
    glibc's posix_spawn reports exec failures (ENOENT, EACCES) to the parent as an error.
    """
    try:
        return os.posix_spawnp(
            command[0],
            command,
            env,
            setsid=new_session,
            setsigmask=(),
            setsigdef=forwardable_signals() | {signal.SIGCHLD},
        )
    except OSError as exc:
        status = spawn_failure_status(exc.errno or 0)
        raise SpawnError(status, f"cannot run {command[0]!r}: {exc.strerror}") from None


def release_terminal() -> bool:
    """dumb-init's terminal hand-off, first half: give up our controlling terminal for the child.

    Only a session's leader can pass its terminal on (``docker run -it``: PID 1 leads the session
    with the terminal; a fresh pty): the child, leader of a new session, takes a terminal with
    TIOCSCTTY only if no other session holds it (tty_ioctl(4)). Run from a shell, graceful-run
    leads no session and the terminal stays the shell's: nothing to do, False.

    TIOCNOTTY by a session leader sends SIGHUP and SIGCONT to the terminal's foreground group,
    which is ours (tty_ioctl(4), TIOCNOTTY). They arrive blocked, so they are taken off the queue
    here, not forwarded: a SIGHUP passed on would end the child it is meant for (dumb-init #136,
    which ignores the first of each for the same reason).
    """
    try:
        if os.getsid(0) != os.getpid() or os.tcgetpgrp(0) < 0:
            return False
        import fcntl
        import termios  # only here: most containers have no terminal

        fcntl.ioctl(0, termios.TIOCNOTTY)
    except OSError:  # stdin is no terminal, or not our controlling one
        return False
    for hand_off in (signal.SIGHUP, signal.SIGCONT):
        signal.sigtimedwait({hand_off}, 0)
    return True


def spawn_with_terminal(command: list[str], env: dict[str, str]) -> int:
    """``spawn`` in a new session that takes stdin as its controlling terminal (after
    ``release_terminal``), so an interactive shell in it has job control, as under dumb-init.

    posix_spawn cannot run the ioctl in the child, so this forks; the child resets what posix_spawn
    would (dispositions, mask) and reports a failed exec through a close-on-exec pipe, as
    subprocess does. Only taken with a terminal: the cost of a fork never falls on a container.
    """
    import fcntl
    import termios

    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe work until exec, and never return
        try:
            os.close(read_end)
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            for signum in forwardable_signals() | {signal.SIGCHLD}:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            os.execvpe(command[0], command, env)
        except OSError as exc:
            os.write(write_end, (exc.errno or 0).to_bytes(4, "little"))
        finally:
            os._exit(127)
    os.close(write_end)
    failed = os.read(read_end, 4)
    os.close(read_end)
    if not failed:
        return pid
    os.waitpid(pid, 0)
    error = int.from_bytes(failed, "little")
    raise SpawnError(spawn_failure_status(error), f"cannot run {command[0]!r}: {os.strerror(error)}")


def set_subreaper() -> bool:
    """Adopt orphans of our descendants although we are not PID 1 (prctl(2), Linux >= 3.4).

    Under tini or ``docker run --init`` we are not PID 1: without this, orphans of the app go to
    tini, and "nobody left behind" in our group could not be checked (tini -s does the same).
    """
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_parent_death_signal(signum: int, parent: int) -> None:
    """tini's ``-p``: get ``signum`` when our parent dies; if it already died, send it now.

    The prctl setting only covers a death after the call (prctl(2), PR_SET_PDEATHSIG), hence the check.
    """
    _prctl(PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)


def _prctl(option: int, value: int) -> bool:
    import ctypes  # only here: ctypes costs ~1 MB, and PID 1 with no -p never needs it

    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0)) == 0


def stopped_in_group(pgid: int) -> list[int]:
    """Pids of process group ``pgid`` that are stopped (state ``T``), read from /proc (proc(5)).

    In /proc/PID/stat the command name is in parentheses and may itself hold ") ", so the fields
    are counted from the last ")": state, ppid, pgrp. No /proc (an odd sandbox): nobody is found.
    """
    found: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                text = stat.read()
        except OSError:  # exited meanwhile
            continue
        fields = text[text.rfind(b")") + 1 :].split()
        if len(fields) > 2 and fields[0] == b"T" and fields[2] == str(pgid).encode():
            found.append(int(name))
    return found


__all__ = [
    "SpawnError",
    "release_terminal",
    "set_parent_death_signal",
    "set_subreaper",
    "spawn",
    "spawn_with_terminal",
    "stopped_in_group",
]
