"""graceful-run's board file across a SIGKILL, black box: real supervisors as PID 1 of their own PID
namespaces sharing one state directory, as the containers of a pod share /dev/shm."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.test_supervisor import CHILD, Run, pytestmark, start  # noqa: F401 (the skip mark)

# Prints the board path it was given, waits for the test, then opens the board by that path late
# (as a server started by a slow start script would), and goes on as the signal-printing child.
LATE_OPENER = (
    'echo "state $GRACEFUL_STATE"; read line; '
    f"{sys.executable} -c 'import os; from graceful._board import StateBoard; "
    'print("attached", StateBoard.attach(os.environ["GRACEFUL_STATE"]).phase.name, flush=True)\'; '
    f"exec {' '.join(CHILD)}"
)


def board_of(run: Run) -> Path:
    return Path(run.wait_out(r"^state (\S+)$")[0])


def test_sigkilled_run_leaves_no_file_behind_at_the_next_start(runs: list[Run], tmp_path: Path) -> None:
    """A restart removes the board a SIGKILLed run left; a live sibling's board (also PID 1) stays,
    and a process of that sibling can still open it by path after the sweep; a board of a version
    before the lock is left alone (a live one would look the same)."""
    shm = tmp_path / "shm"
    shm.mkdir()
    options = ["--state-dir", str(shm), "--drain-delay", "0", "sh", "-c", LATE_OPENER]
    killed = start(runs, tmp_path / "killed", options, stdin=subprocess.PIPE)
    sibling = start(runs, tmp_path / "sibling", options, stdin=subprocess.PIPE)
    stale, live = board_of(killed), board_of(sibling)
    assert stale.name.startswith("graceful-run-1-") and live.name.startswith("graceful-run-1-")

    killed.kill(signal.SIGKILL)  # PID 1 of its namespace: the kernel takes the rest with it
    killed.wait()
    assert stale.exists()  # what a SIGKILL leaves: nobody could remove it

    older = shm / "graceful-run-1-0badf00d.board"  # an earlier version's: no lock, maybe live
    older.write_bytes(b"")
    restarted = start(runs, tmp_path / "restarted", options, stdin=subprocess.PIPE)
    fresh = board_of(restarted)
    assert not stale.exists()
    assert fresh != stale and fresh.exists() and live.exists() and older.exists()
    assert "removed 1 state board file(s) left by killed runs" in restarted.err()

    for run in (sibling, restarted):
        run.release()  # the sibling's late open comes after the restart's sweep
        assert run.wait_out(r"^attached (\w+)$") == ["STARTING"]
        run.ready_pids(1)
        run.kill(signal.SIGTERM)
        assert run.wait() == 0
    assert sorted(shm.iterdir()) == [older]  # a normal exit removes its own
