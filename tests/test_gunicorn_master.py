"""The master side in-process: graceful_timeout mapping, worker class names, slots given before fork."""

from __future__ import annotations

import logging
import os
import sys

import pytest
from gunicorn.config import Config

from graceful import Lifecycle, Settings, get_lifecycle, set_lifecycle
from graceful._gunicorn_master import map_graceful_timeout, prepare_master


@pytest.fixture
def lifecycle() -> Lifecycle:
    """A private lifecycle on its own board with a fractional drain timeout."""
    return Lifecycle(Settings(drain_delay=1.0, drain_timeout=12.5))


def test_graceful_timeout_defaults_to_drain_timeout(lifecycle: Lifecycle) -> None:
    """Left at gunicorn's default, graceful_timeout becomes drain_timeout (rounded up to whole seconds)."""
    cfg = Config()
    map_graceful_timeout(cfg, lifecycle, logging.getLogger("test"))
    assert cfg.graceful_timeout == 13


def test_explicit_graceful_timeout_wins(lifecycle: Lifecycle) -> None:
    """A graceful_timeout the user set is kept as it is."""
    cfg = Config()
    cfg.set("graceful_timeout", 7)
    map_graceful_timeout(cfg, lifecycle, logging.getLogger("test"))
    assert cfg.graceful_timeout == 7


@pytest.mark.parametrize("name", ["ThreadWorker", "SingleThreadWorker", "UvicornWorker"])
def test_threads_do_not_swap_our_worker_classes_for_gthread(name: str) -> None:
    """gunicorn replaces a class path ending in 'SyncWorker' by its gthread when threads > 1; ours keep their names."""
    cfg = Config()
    cfg.set("worker_class", f"graceful.gunicorn.{name}")
    cfg.set("threads", 4)
    assert cfg.worker_class_str == f"graceful.gunicorn.{name}"
    assert cfg.worker_class.__module__ == "graceful.gunicorn"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_adopts_the_slot_its_parent_reserved(lifecycle: Lifecycle) -> None:
    """The slot reserved before fork is the one the child counts in, and the parent can free it after reaping."""
    reserved = lifecycle.reserve_child_slot()
    assert reserved != lifecycle.slot
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the slot it took, then leave without running pytest's cleanup
        try:
            os.write(write, str(lifecycle.slot).encode())
        finally:
            sys.stdout.flush()
            os._exit(0)
    os.close(write)
    child_slot = int(os.read(read, 64).decode())
    os.close(read)
    assert child_slot == reserved
    os.waitpid(pid, 0)
    assert lifecycle.board.release_slot_held_by(reserved, (pid, os.getpid()))
    assert not lifecycle.board.release_slot_held_by(lifecycle.slot, (pid,))  # not the child's: kept
    assert [slot.pid for slot in lifecycle.board.read_slots()] == [os.getpid()]


def test_prepare_master_makes_a_board_sized_for_a_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a supervisor the master makes the process's board with room for twice the workers, and owns the clock."""
    monkeypatch.delenv("GRACEFUL_STATE", raising=False)
    set_lifecycle(None)
    cfg = Config()
    cfg.set("workers", 40)
    made = prepare_master(cfg, logging.getLogger("test"))
    try:
        assert get_lifecycle() is made and not made.external
        assert made.board.slots >= 88
        assert made.board.owner_pid == os.getpid()
        assert cfg.graceful_timeout == 23  # drain_timeout's default
    finally:
        set_lifecycle(None)
        made.close()
