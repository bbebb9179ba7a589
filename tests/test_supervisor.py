"""graceful-run, black box: real processes as PID 1 of their own PID namespace, real signals."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.server_process import wait_for

ROOT = Path(__file__).resolve().parent.parent
CHILD = [sys.executable, str(ROOT / "tests" / "supervisor_child.py")]
SUPERVISOR = [sys.executable, "-m", "graceful.supervisor"]
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)"
)


class Run:
    """graceful-run started (by default inside ``unshare``), with its output in files."""

    def __init__(
        self,
        tmp: Path,
        argv: list[str],
        *,
        namespace: bool = True,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
        stdin: int | None = None,
    ):
        tmp.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = tmp / "out.txt", tmp / "err.txt"
        environ = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for inherited in ("GRACEFUL_STATE", "DUMB_INIT_SETSID", "TINI_SUBREAPER"):
            environ.pop(inherited, None)
        environ.update(env or {})
        outer = (UNSHARE if namespace else []) + (prefix or [])
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                [*outer, *SUPERVISOR, *argv], cwd=ROOT, env=environ, stdout=out, stderr=err, stdin=stdin
            )
        self.host_pid = self.process.pid  # without a namespace: the supervisor (or tini) itself
        if outer:
            self.host_pid = self._first_child(self.process.pid)  # unshare's child: PID 1 inside

    def _first_child(self, pid: int) -> int:
        children = Path(f"/proc/{pid}/task/{pid}/children")
        wait_for(lambda: children.read_text().split() != [], 5, f"a child of {pid}")
        return int(children.read_text().split()[0])

    def kill(self, signum: int) -> float:
        sent = time.monotonic()
        os.kill(self.host_pid, signum)
        return sent

    def out(self) -> str:
        return self.out_path.read_text()

    def err(self) -> str:
        return self.err_path.read_text()

    def wait_out(self, pattern: str, timeout: float = 5.0, count: int = 1) -> list[str]:
        wait_for(
            lambda: len(re.findall(pattern, self.out(), re.M)) >= count,
            timeout,
            f"{count} x {pattern!r} in output:\n{self.out()}\n{self.err()}",
        )
        return re.findall(pattern, self.out(), re.M)

    def ready_pids(self, count: int) -> list[int]:
        return [int(pid) for pid in self.wait_out(r"^ready (\d+)", count=count)]

    def release(self) -> None:
        """Send a line to the child's stdin (a ``read`` in its shell returns) and close it."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.close()

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"still running after {timeout}s:\n{self.out()}\n{self.err()}") from None


def start(runs: list[Run], tmp_path: Path, argv: list[str], **kwargs: object) -> Run:
    run = Run(tmp_path, argv, **kwargs)  # type: ignore[arg-type]
    runs.append(run)
    return run


def signal_lines(run: Run, signum: int, count: int) -> set[int]:
    return {int(pid) for pid in run.wait_out(rf"^(\d+) {signum} ", count=count)}


def test_every_catchable_signal_reaches_the_whole_group(runs: list[Run], tmp_path: Path) -> None:
    """Each of 1..31 (but CHLD/KILL/STOP) and every real-time signal reaches the child and its group."""
    run = start(
        runs, tmp_path, ["-r", "TSTP:TSTP", "-r", "TTIN:TTIN", "-r", "TTOU:TTOU", *CHILD, "--group", "2"]
    )
    pids = set(run.ready_pids(3))
    special = {signal.SIGTERM, signal.SIGINT}
    for signum in sorted(set(range(1, 32)) - {9, 17, 19} - special) + list(
        range(signal.SIGRTMIN, signal.SIGRTMAX + 1)
    ):
        run.kill(signum)
        assert signal_lines(run, signum, 3) == pids, signal.strsignal(signum)
    run.kill(signal.SIGINT)  # Ctrl-C: forwarded at once, the helpers exit 130 on it
    assert signal_lines(run, signal.SIGINT, 3) == pids
    assert run.wait() == 130


def test_single_child_signals_only_the_child(runs: list[Run], tmp_path: Path) -> None:
    """With -c only the child itself gets the signal, not the rest of its group."""
    run = start(runs, tmp_path, ["-c", "--drain-delay", "0", *CHILD, "--group", "1"])
    run.ready_pids(2)
    (main_pid,) = [int(pid) for pid in run.wait_out(r"^ready (\d+) \d+ 1$")]  # the one PID 1 started
    run.kill(signal.SIGUSR1)
    assert signal_lines(run, signal.SIGUSR1, 1) == {main_pid}
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    assert len(run.wait_out(rf"^\d+ {int(signal.SIGUSR1)} ")) == 1


def test_rewrites_apply_and_dropped_signals_stay_dropped(runs: list[Run], tmp_path: Path) -> None:
    """-r USR1:USR2 sends USR2 instead; -r HUP:0 drops HUP (a later WINCH proves it was not just late)."""
    run = start(runs, tmp_path, ["-r", "USR1:USR2", "-r", "HUP:0", *CHILD])
    (pid,) = run.ready_pids(1)
    run.kill(signal.SIGUSR1)
    assert signal_lines(run, signal.SIGUSR2, 1) == {pid}
    run.kill(signal.SIGHUP)
    run.kill(signal.SIGWINCH)
    signal_lines(run, signal.SIGWINCH, 1)
    assert not re.search(rf"^\d+ ({int(signal.SIGHUP)}|{int(signal.SIGUSR1)}) ", run.out(), re.M)


def test_terminal_stop_becomes_sigstop_in_group_mode(runs: list[Run], tmp_path: Path) -> None:
    """SIGTSTP is rewritten to SIGSTOP (the child's group is orphaned, a plain TSTP would be discarded)."""
    run = start(runs, tmp_path, [*CHILD])
    run.ready_pids(1)
    pid = run._first_child(run.host_pid)  # the child's pid on the host
    run.kill(signal.SIGTSTP)
    wait_for(
        lambda: Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "T", 5, "child stopped"
    )
    run.kill(signal.SIGCONT)
    signal_lines(run, signal.SIGCONT, 1)


@pytest.mark.parametrize(
    ("script", "status"),
    [("exit 0", 0), ("exit 1", 1), ("exit 255", 255), ("kill -KILL $$", 137), ("kill -SEGV $$", 139)],
)
def test_exit_status_as_pid1(runs: list[Run], tmp_path: Path, script: str, status: int) -> None:
    """PID 1 exits with the child's code, or 128+N when the child died of signal N."""
    assert start(runs, tmp_path, ["sh", "-c", script]).wait() == status


def test_every_exit_code_passes_through(tmp_path: Path) -> None:
    """All of 0..255 come back unchanged (bin/graceful-run, eight at a time); -e remaps to 0."""
    script = ROOT / "bin" / "graceful-run"
    env = {**os.environ, "GRACEFUL_PYTHON": sys.executable}  # not a pyenv shim: a shell script
    for start_code in range(0, 256, 8):
        batch = [
            subprocess.Popen([str(script), "sh", "-c", f"exit {code}"], env=env)
            for code in range(start_code, start_code + 8)
        ]
        assert [p.wait(10) for p in batch] == list(range(start_code, start_code + 8))
    assert (
        subprocess.run(
            [str(script), "-e", "3", "-e", "143", "sh", "-c", "kill $$"], env=env, timeout=10
        ).returncode
        == 0
    )


@pytest.mark.parametrize(
    ("command", "mode", "status", "message"),
    [
        ("no-such-command-xyz", None, 127, "cannot run 'no-such-command-xyz': No such file or directory"),
        ("{tmp}/plain", 0o644, 126, "cannot run '{tmp}/plain': Permission denied"),
        ("{tmp}/garbage", 0o755, 126, "cannot run '{tmp}/garbage': Exec format error"),
    ],
)
def test_exec_failures(
    runs: list[Run], tmp_path: Path, command: str, mode: int | None, status: int, message: str
) -> None:
    """A command not found exits 127, one not executable 126, with one line naming it."""
    command, message = command.format(tmp=tmp_path), message.format(tmp=tmp_path)
    if mode is not None:
        Path(command).write_bytes(b"\x00\x01 not a program")
        os.chmod(command, mode)
    run = start(runs, tmp_path, [command])
    assert run.wait() == status
    assert run.err().strip().splitlines() == [f"graceful-run: {message}"]


def test_bad_call_exits_2_with_usage(tmp_path: Path) -> None:
    """An unknown option or a bad value exits 2 and prints the usage."""
    done = subprocess.run(
        [*SUPERVISOR, "--drain-delay", "lots", "true"], cwd=ROOT, capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 2
    assert done.stderr.startswith("graceful-run: --drain-delay='lots' is not a number of seconds")
    assert "usage: graceful-run" in done.stderr


def test_child_starts_with_clean_signal_state(runs: list[Run], tmp_path: Path) -> None:
    """No blocked signal and no ignored one (Python ignores PIPE and XFSZ) reaches the child."""
    run = start(runs, tmp_path, ["sh", "-c", "grep -E '^Sig(Blk|Ign)' /proc/self/status"])
    assert run.wait() == 0
    masks = dict(line.split(":\t") for line in run.out().splitlines())
    assert int(masks["SigBlk"], 16) == 0
    assert int(masks["SigIgn"], 16) & ((1 << 31) - 1) == 0  # 1..31; 32/33 belong to glibc


def test_thousand_orphans_are_reaped(runs: list[Run], tmp_path: Path) -> None:
    """1,000 orphans reparented to PID 1 are all reaped; none is left a zombie."""
    run = start(runs, tmp_path, ["-vvv", "--drain-delay", "0", *CHILD, "--orphans", "1000"])
    run.ready_pids(1)
    wait_for(lambda: run.err().count("reaped orphan") >= 1000, 20, "1000 orphans (and their parent) reaped")
    children = Path(f"/proc/{run.host_pid}/task/{run.host_pid}/children").read_text().split()
    assert len(children) == 1  # only the main child is left
    run.kill(signal.SIGTERM)
    assert run.wait() == 0


def test_group_mode_leaves_nobody_behind(runs: list[Run], tmp_path: Path) -> None:
    """When the child exits, a TERM-ignoring daemon of its group is killed (not PID 1: as a subreaper)."""
    run = start(
        runs,
        tmp_path,
        ["--cleanup-timeout", "0.5", "sh", "-c", f"{' '.join(CHILD)} --daemon --exit 0 & wait"],
        namespace=False,
    )
    daemon = int(run.wait_out(r"^daemon (\d+)")[0])
    started = time.monotonic()
    assert run.wait() == 0
    assert time.monotonic() - started < 5
    assert (
        not Path(f"/proc/{daemon}").exists()
        or "Z" in Path(f"/proc/{daemon}/stat").read_text().split(")")[1][:3]
    )
    assert "sending SIGKILL" in run.err()


def test_term_ignoring_child_is_killed_at_the_timeout(runs: list[Run], tmp_path: Path) -> None:
    """SIGTERM goes on at the delay's end, SIGKILL only at the timeout; the status says KILL."""
    run = start(runs, tmp_path, ["--drain-delay", "0.3", "--drain-timeout", "0.7", *CHILD, "--ignore-term"])
    run.ready_pids(1)
    sent = run.kill(signal.SIGTERM)
    assert run.wait() == 137
    ended = time.monotonic()
    (got,) = run.wait_out(rf"^\d+ {int(signal.SIGTERM)} ([\d.]+)")
    assert 0.3 <= float(got) - sent < 0.3 + 0.2
    assert 1.0 <= ended - sent < 1.0 + 1.0


def test_second_term_during_the_delay_forwards_at_once(runs: list[Run], tmp_path: Path) -> None:
    """A second SIGTERM cuts the delay short."""
    run = start(runs, tmp_path, ["--drain-delay", "30", *CHILD])
    run.ready_pids(1)
    run.kill(signal.SIGTERM)
    wait_for(lambda: "draining" in run.err(), 5, "the drain to start")
    sent = run.kill(signal.SIGTERM)
    assert run.wait() == 0
    assert time.monotonic() - sent < 2


class App:
    """The example app on uvicorn under graceful-run in a PID namespace."""

    def __init__(self, runs: list[Run], tmp_path: Path, *options: str, prefix: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            *options,
            sys.executable,
            "-m",
            "graceful.uvicorn",
            "examples.starlette_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.run = start(runs, tmp_path, argv, prefix=prefix)
        self.client = httpx.Client(timeout=2.0)
        wait_for(lambda: self.status("/healthz/ready") == 200, 20, "the app to be ready")

    def status(self, path: str, method: str = "GET") -> int | None:
        try:
            return self.client.request(method, self.url + path).status_code
        except httpx.TransportError:
            return None


def test_drain_sequence_with_uvicorn(runs: list[Run], tmp_path: Path) -> None:
    """Readiness fails within 50 ms of SIGTERM, requests are served through the delay, then it stops."""
    app = App(runs, tmp_path, "--drain-delay", "1", "--drain-timeout", "5")
    sent = app.run.kill(signal.SIGTERM)
    took = wait_for(lambda: app.status("/healthz/ready") == 503, 1, "readiness to fail")
    assert took < 0.05
    served = 0
    while time.monotonic() - sent < 0.8:  # bounded by the delay itself
        assert app.status("/fast") == 200
        served += 1
    assert served > 5
    wait_for(lambda: app.status("/fast") is None, 3, "the listener to close")
    assert time.monotonic() - sent >= 1.0
    assert app.run.wait() == 0
    assert "stopping: forwarding SIGTERM" in app.run.err()


def test_shutdown_endpoint_starts_the_drain_in_the_supervisor(runs: list[Run], tmp_path: Path) -> None:
    """POST /shutdown in the app makes the supervisor run the same drain and forward SIGTERM."""
    app = App(runs, tmp_path, "--drain-delay", "0.5", "--drain-timeout", "5")
    called = time.monotonic()
    assert app.status("/shutdown", "POST") in (200, 202)
    assert app.status("/healthz/ready") == 503
    assert app.status("/fast") == 200
    assert app.run.wait() == 0
    assert time.monotonic() - called >= 0.5
    assert "started in the app" in app.run.err()
    assert "stopping: forwarding SIGTERM" in app.run.err()


@pytest.mark.skipif(shutil.which("tini") is None, reason="needs tini")
def test_under_tini_as_subreaper(runs: list[Run], tmp_path: Path) -> None:
    """Under tini (PID 1) graceful-run forwards, reaps orphans as a subreaper, and drains."""
    run = start(
        runs,
        tmp_path,
        ["-vvv", "--drain-delay", "0.2", *CHILD, "--orphans", "50", "--group", "1"],
        prefix=["tini", "-s", "--"],
    )
    supervisor = run._first_child(run.host_pid)
    pids = set(run.ready_pids(2))
    wait_for(lambda: run.err().count("reaped orphan") >= 50, 10, "orphans reaped by graceful-run, not tini")
    run.kill(signal.SIGUSR1)  # to tini, which passes it to graceful-run, which passes it to the group
    assert signal_lines(run, signal.SIGUSR1, 2) == pids
    assert supervisor != run.host_pid
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    assert "draining (got SIGTERM)" in run.err()
