"""graceful-run as a drop-in for dumb-init and tini, black box: the cases of dumb-init's own suite
that a drop-in must pass (see docs/supervisor.md, "dumb-init's test suite"), with real processes
and real signals. Each ``read line`` in a child's shell waits for ``Run.release``."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import termios
import time
from pathlib import Path

from tests.server_process import wait_for
from tests.test_supervisor import CHILD, ROOT, SUPERVISOR, Run, pytestmark, start  # noqa: F401 (the skip mark)

HELPER = " ".join(CHILD)


def state(pid: int) -> str:
    """The process state letter from /proc/PID/stat (``T``: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def signals_of(run: Run, pid: int) -> list[int]:
    return [int(number) for number in re.findall(rf"^{pid} (\d+) ", run.out(), re.M)]


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_survivors_get_term_alone_when_the_child_exits(runs: list[Run], tmp_path: Path) -> None:
    """The main child exits: the rest of its group gets SIGTERM first, and no SIGCONT it does not need.

    dumb-init's test_all_processes_receive_term_on_exit_if_setsid: the first signal a survivor sees
    is TERM. This one ignores TERM, so it also shows the SIGKILL at the cleanup timeout.
    """
    run = start(
        runs,
        tmp_path,
        ["--cleanup-timeout", "0.5", "sh", "-c", f"{HELPER} --ignore-term & read line"],
        stdin=subprocess.PIPE,
    )
    (helper,) = run.ready_pids(1)
    run.release()
    assert run.wait() == 0
    assert signals_of(run, helper) == [signal.SIGTERM]
    assert "sending SIGKILL" in run.err()


def test_a_stopped_survivor_is_continued_so_it_can_act_on_term(runs: list[Run], tmp_path: Path) -> None:
    """A stopped member of the group gets SIGCONT after the TERM: it exits on TERM, not at the timeout."""
    run = start(
        runs,
        tmp_path,
        ["--cleanup-timeout", "5", "sh", "-c", f"{HELPER} & read line"],
        namespace=False,  # the helper's pid as the host sees it, to stop it from here
        stdin=subprocess.PIPE,
    )
    (helper,) = run.ready_pids(1)
    try:
        os.kill(helper, signal.SIGSTOP)
        wait_for(lambda: state(helper) == "T", 5, "the helper to stop")
        run.release()
        released = os.times().elapsed
        assert run.wait() == 0
        assert os.times().elapsed - released < 3  # well before the 5 s cleanup timeout
        assert signals_of(run, helper)[0] == signal.SIGTERM
        assert "sending SIGKILL" not in run.err()
    finally:
        kill_quietly(helper)


def test_dumb_init_setsid_0_is_single_child_mode(runs: list[Run], tmp_path: Path) -> None:
    """DUMB_INIT_SETSID=0 is -c: no new session, and when the child exits the rest is left alone
    (dumb-init's test_processes_dont_receive_term_on_exit_if_no_setsid)."""
    run = start(
        runs,
        tmp_path,
        ["sh", "-c", f"{HELPER} & echo shell $$ $(cut -d' ' -f6 /proc/$$/stat); read line"],
        namespace=False,
        env={"DUMB_INIT_SETSID": "0"},
        stdin=subprocess.PIPE,
    )
    (helper,) = run.ready_pids(1)
    shell, session = (int(word) for word in run.wait_out(r"^shell (\d+ \d+)$")[0].split())
    try:
        assert session != shell  # not a session leader: no setsid
        run.release()
        assert run.wait() == 0
        os.kill(helper, signal.SIGHUP)  # the helper outlived us; a signal it does get proves the rest
        wait_for(lambda: signals_of(run, helper) != [], 5, "the helper's SIGHUP")
        assert signals_of(run, helper) == [signal.SIGHUP]
    finally:
        kill_quietly(helper)


def test_dash_g_wins_over_dumb_init_setsid_0(runs: list[Run], tmp_path: Path) -> None:
    """A flag wins over the environment: -g signals the whole group although DUMB_INIT_SETSID=0."""
    run = start(
        runs, tmp_path, ["-g", "--drain-delay", "0", *CHILD, "--group", "1"], env={"DUMB_INIT_SETSID": "0"}
    )
    pids = set(run.ready_pids(2))
    run.kill(signal.SIGUSR1)
    assert {int(pid) for pid in run.wait_out(rf"^(\d+) {int(signal.SIGUSR1)} ", count=2)} == pids
    run.kill(signal.SIGTERM)
    assert run.wait() == 0


def test_tini_subreaper_reaps_orphans_when_not_pid1(runs: list[Run], tmp_path: Path) -> None:
    """TINI_SUBREAPER (any value, even empty: tini's parse_env) makes graceful-run reap as tini -s."""
    run = start(
        runs,
        tmp_path,
        ["-vvv", "--drain-delay", "0", *CHILD, "--orphans", "20"],
        namespace=False,
        env={"TINI_SUBREAPER": ""},
    )
    run.ready_pids(1)
    wait_for(lambda: run.err().count("reaped orphan") >= 20, 10, "20 orphans reaped by graceful-run")
    run.kill(signal.SIGTERM)
    assert run.wait() == 0


def test_supervisor_keeps_no_hold_on_its_start_directory(runs: list[Run], tmp_path: Path) -> None:
    """The child starts where graceful-run was started; graceful-run itself moves to / (dumb-init's
    cwd_test: the start directory's file system can then be unmounted)."""
    run = start(
        runs,
        tmp_path,
        ["sh", "-c", "readlink /proc/$$/cwd; read line"],
        namespace=False,
        stdin=subprocess.PIPE,
    )
    wait_for(lambda: run.out() != "", 5, "the child's directory")
    assert run.out().splitlines() == [str(ROOT)]
    supervisor = Path(f"/proc/{run.host_pid}/cwd")
    wait_for(lambda: os.readlink(supervisor) == "/", 5, f"graceful-run in /, not {os.readlink(supervisor)}")
    run.release()
    assert run.wait() == 0


def on_a_terminal(argv: list[str], typed: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Run graceful-run as the session leader of a new pty (``docker run -it``); returns its exit
    status and everything it and its child wrote there."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the forked test process becomes graceful-run at once
        os.execvpe(SUPERVISOR[0], [*SUPERVISOR, *argv], {**os.environ, "PYTHONUNBUFFERED": "1"})
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~termios.ECHO  # what the shell prints, not what we typed
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    os.write(fd, typed)
    output, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side is closed (pty(7))
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(fd)
    while time.monotonic() < deadline + 5:  # the terminal closes a moment before the exit
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), output
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"still running after {timeout}s: {output!r}")


def test_child_gets_the_terminal_and_job_control(tmp_path: Path) -> None:
    """Leading the terminal's session, graceful-run hands the terminal to the child's new session:
    an interactive shell has job control (dumb-init's test_child_gets_controlling_tty_if_we_had_one)."""
    status, output = on_a_terminal(["bash", "--norc", "-m"], b'echo "flags are: [[$-]]"\nexit 0\n')
    assert status == 0, output
    flags = re.search(rb"flags are: \[\[([a-zA-Z]+)\]\]", output)
    assert flags is not None and b"m" in flags.group(1), output


def test_terminal_hand_off_signals_are_not_forwarded(tmp_path: Path) -> None:
    """Giving up the terminal sends SIGHUP and SIGCONT to our own group; neither reaches the child,
    which would die of the HUP (dumb-init #136); a SIGHUP sent later is forwarded as usual."""
    status, output = on_a_terminal(["-vv", "sh", "-c", "sleep 0.3; echo alive"], b"")
    assert status == 0, output
    assert b"alive" in output and b"handing the terminal to the child" in output
    assert b"forwarding SIGHUP" not in output and b"forwarding SIGCONT" not in output
