"""The supervisor's board file: a new one per run, held while the run lives, and the files of
killed runs removed at the next start.

A run that ends normally removes its file. A SIGKILLed one (the kubelet at the end of the grace
period, the OOM killer) cannot, and a restarted container often finds the same /dev/shm: in a
Kubernetes pod it belongs to the pod's IPC namespace, shared by its containers and kept across
container restarts. Without a sweep, every restart would leave one more file.

Why not unlink the file as soon as the child is started: any process of the app may open the
board by the path in ``GRACEFUL_STATE`` at any time of its life (``StateBoard.attach``, called by
``Lifecycle.from_env`` wherever a server starts): a server that a start script runs after its
migrations, a second server of the same group, a gunicorn master re-executed by USR2. An early
unlink would turn each of those into "cannot open state board".

Which files are stale: the supervisor holds a shared ``flock(2)`` on its file for as long as it
runs, and the kernel drops it when the process dies, however it dies. A file nobody holds is what
a dead run left. Not the pid in the name: the containers of one pod share /dev/shm and each has its
own PID namespace in which graceful-run is PID 1, so ``graceful-run-1-*`` files of live siblings
sit side by side; a lock is taken on the file itself, across namespaces. ``flock`` locks do not
interact with the POSIX record locks the board takes for phase changes (flock(2), NOTES).
"""

from __future__ import annotations

import fcntl
import os

from graceful._board import StateBoard

PREFIX = "graceful-run-"
# ".held": made by a run that holds its file locked. Boards of earlier versions (plain ".board")
# carry no lock, so a live one could not be told from a stale one: the sweep leaves them alone.
SUFFIX = ".held.board"
# A sweep racing our creation can remove the fresh file before we hold it (see create_board).
_CREATE_ATTEMPTS = 5


def board_directory(state_dir: str | None) -> str:
    """``--state-dir``, else tmpfs (/dev/shm) so reading the phase never touches a disk, else $TMPDIR."""
    if state_dir is not None:
        return os.path.abspath(state_dir)  # absolute: the supervisor leaves its cwd after the spawn
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return os.path.abspath(os.environ.get("TMPDIR", "/tmp"))


def create_board(directory: str, now: float) -> tuple[StateBoard, int]:
    """A new board file in ``directory`` and the descriptor that holds it (close it after the board).

    The lock is taken after the file exists, so a sweep in another container may remove the file
    in between; the sweep unlinks only while it holds the lock exclusively, so once our shared lock
    is granted the link count tells whether the file is still there. If not, take a new name.
    """
    for _ in range(_CREATE_ATTEMPTS):
        path = os.path.join(directory, f"{PREFIX}{os.getpid()}-{os.urandom(4).hex()}{SUFFIX}")
        board = StateBoard.create(path, now=now)
        try:
            hold = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            board.close()
            continue
        fcntl.flock(hold, fcntl.LOCK_SH)
        if os.fstat(hold).st_nlink > 0:
            return board, hold
        os.close(hold)
        board.close()
    raise OSError(f"the state board in {directory} was removed {_CREATE_ATTEMPTS} times while created")


def sweep_stale(directory: str) -> list[str]:
    """Remove the board files in ``directory`` that no running supervisor holds; returns their paths."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        if not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, or not ours to open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live run's board (EWOULDBLOCK)
            os.close(fd)
            continue
        try:
            # Unlink only what we locked: the name must still be that file (not replaced meanwhile).
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


__all__ = ["PREFIX", "SUFFIX", "board_directory", "create_board", "sweep_stale"]
