"""The state board: shared across processes, slots per process, clear errors on bad files."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from graceful import BoardError, Phase, StateBoard


def _child_counts(
    path: str,
    requests: int,
    ready: multiprocessing.synchronize.Event,
    go_on: multiprocessing.synchronize.Event,
) -> None:
    board = StateBoard.attach(path)
    slot = board.claim_slot(os.getpid())
    base = board.slot_offset(slot)
    board.slot_ints[base + 1] = requests  # in-flight
    ready.set()
    go_on.wait(10)


def test_attached_processes_see_one_phase_and_their_own_slots(tmp_path: Path) -> None:
    """A board created from a path is shared: a phase change in one process shows in another,
    each process counts in its own slot, and the slot of a process that exited is not counted."""
    path = str(tmp_path / "state")
    board = StateBoard.create(path, slots=4, now=1.0)
    context = multiprocessing.get_context("spawn")
    ready, go_on = context.Event(), context.Event()
    child = context.Process(target=_child_counts, args=(path, 3, ready, go_on))
    child.start()
    try:
        assert ready.wait(20), "child did not attach"
        slots = board.read_slots()
        assert [(s.pid, s.in_flight) for s in slots] == [(child.pid, 3)]
        other = StateBoard.attach(path)
        other.move_to(Phase.DRAINING, now=2.0)
        assert board.phase is Phase.DRAINING and board.drain_started_at == 2.0
        other.close()
    finally:
        go_on.set()
        child.join(10)
    assert board.read_slots() == []  # the child is gone: its count no longer counts
    board.close()
    assert not os.path.exists(path), "the creator removes the board file"


def test_slot_of_a_dead_process_is_reused(tmp_path: Path) -> None:
    """A slot whose holder died (SIGKILL, no cleanup) is given to the next claimant, zeroed."""
    board = StateBoard.create(str(tmp_path / "s"), slots=1, now=0.0)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    index = board.claim_slot(pid)  # as if the dead child had claimed it
    board.slot_ints[board.slot_offset(index) + 1] = 5
    assert board.claim_slot(os.getpid()) == index
    assert board.read_slots()[0].in_flight == 0
    with pytest.raises(BoardError, match="no free slot"):
        board.claim_slot(os.getpid() + 100000)
    board.close()


def test_anonymous_board_is_shared_across_fork() -> None:
    """A board made without a path (gunicorn's case) is shared with children forked later."""
    board = StateBoard.create(slots=2, now=0.0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        board.move_to(Phase.READY, now=1.0)
        os.write(write_end, b"x")
        os._exit(0)
    os.read(read_end, 1)
    os.waitpid(pid, 0)
    assert board.phase is Phase.READY
    board.close()


def test_create_refuses_to_adopt_an_existing_file(tmp_path: Path) -> None:
    """A stale board of an earlier run is never reused by accident."""
    path = tmp_path / "s"
    path.write_bytes(b"")
    with pytest.raises(FileExistsError):
        StateBoard.create(str(path), now=0.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "too small"), (b"\0" * 4096, "not a graceful state board")],
    ids=["empty", "zeros"],
)
def test_attach_rejects_what_is_not_a_board(tmp_path: Path, content: bytes, message: str) -> None:
    """GRACEFUL_STATE pointing at the wrong file fails with a message that says so."""
    path = tmp_path / "s"
    path.write_bytes(content)
    with pytest.raises(BoardError, match=message):
        StateBoard.attach(str(path))


def test_attach_missing_file_names_the_variable(tmp_path: Path) -> None:
    """A missing board names the path and where it came from."""
    with pytest.raises(BoardError, match="GRACEFUL_STATE"):
        StateBoard.attach(str(tmp_path / "missing"))


def test_skipping_the_drain_still_counts_one_drain() -> None:
    """STOPPING straight from READY (drain delay 0) stamps the drain start, once."""
    board = StateBoard.create(slots=1, now=0.0)
    board.move_to(Phase.READY, now=1.0)
    assert board.move_to(Phase.STOPPING, now=2.0) is Phase.READY
    assert board.drains == 1 and board.drain_started_at == 2.0
    assert board.move_to(Phase.DRAINING, now=3.0) is None
    board.close()
