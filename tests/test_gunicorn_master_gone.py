"""A worker whose gunicorn master is gone (SIGKILLed, OOM-killed) stops instead of serving orphaned.

gunicorn's own workers look at their parent pid (``is_parent_alive``); uvicorn's loop does not, so
graceful's UvicornWorker checks it itself. Real gunicorn, real SIGKILL, 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest

from tests.server_process import ServerProcess, wait_for
from tests.test_gunicorn import gunicorn_argv

pytestmark = pytest.mark.timeout(60)


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``, from /proc (field 4 of /proc/PID/stat is the ppid)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The command name (field 2) is in parentheses and may hold spaces: split after it.
            state, ppid = (entry / "stat").read_text().rpartition(")")[2].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (now init) has yet to reap it


@pytest.mark.parametrize("kind", ["uvicorn", "thread", "single"])
def test_workers_exit_when_the_master_is_sigkilled(kind: str) -> None:
    """SIGKILL the master: every worker is gone within a few seconds (--timeout 4: gunicorn's sync
    worker looks at its parent once per half timeout)."""
    server = ServerProcess(gunicorn_argv(kind, "--timeout", "4"), env={"GRACEFUL_DRAIN_DELAY": "0"})
    try:
        server.wait_ready()
        wait_for(lambda: len(children(server.process.pid)) == 2, 10, "both workers")
        workers = children(server.process.pid)
        server.signal(signal.SIGKILL)
        server.process.wait(5)
        wait_for(lambda: not any(alive(pid) for pid in workers), 10, f"workers {workers} to exit")
    finally:
        server.close()  # its process group: the workers too, if they outlived the master
