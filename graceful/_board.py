"""The state board: a small fixed-layout shared memory map that every process of an instance reads.

It holds the phase, a few timestamps, and one slot per server process (its pid, in-flight count,
counters). Each process writes only its own slot, so counters need no cross-process lock; phase
changes take a POSIX record lock on the board's file so two processes cannot race a transition.

Layout (native byte order; the board never leaves the machine):

    bytes 0..127    header, 16 x int64   (see _H_*)
    bytes 128..255  times, 16 x float64  (time.monotonic(), CLOCK_MONOTONIC: the same clock in every
                                          process of the machine, so deadlines can be shared)
    bytes 256..     slots, N x 8 x int64 (see _S_*)

Where the file lives:
- under ``graceful-run``: a file on tmpfs the supervisor creates; its path is in ``GRACEFUL_STATE``;
- otherwise: an unlinked temporary file (in /dev/shm where it exists), so the map is shared with
  processes forked later (gunicorn workers) and disappears with the last of them.
"""

from __future__ import annotations

# Imports are kept to what the supervisor can afford at every container start (bench/supervisor.py):
# no contextlib, dataclasses or tempfile at import time (~20 ms and ~3 MB together), and _thread's
# lock instead of the threading module.
import _thread
import fcntl
import mmap
import os

from graceful._phase import Phase, can_move

MAGIC = 0x4C55464543415247  # b"GRACEFUL" read as a little-endian int64
VERSION = 1

HEADER_INTS = 16
TIMES = 16
SLOT_INTS = 8
DEFAULT_SLOTS = 64
MAX_SLOTS = 4096

# header ints
_H_MAGIC, _H_VERSION, _H_SLOTS, _H_PHASE, _H_OWNER_PID, _H_DRAINS = range(6)
# times
_T_CREATED, _T_PHASE_CHANGED, _T_DRAIN_STARTED, _T_STOP_STARTED, _T_STARTED, _T_DRAIN_DELAY = range(6)
# slot ints
_S_PID, _S_TRAFFIC, _S_WEBSOCKETS, _S_SHED = range(4)

# A slot's in-flight count and request total share one int64, so the hot path counts a request
# with a single add: ``traffic += REQUEST_STARTED`` at the start, ``traffic -= 1`` at the end.
# Low 20 bits: in flight (a process never holds a million requests at once); the rest: total.
REQUEST_UNIT = 1 << 20
IN_FLIGHT_MASK = REQUEST_UNIT - 1
REQUEST_STARTED = REQUEST_UNIT + 1

_TERMINATING = int(Phase.DRAINING)
#: ``phase_cell`` value from which the instance is terminating (DRAINING or later).
TERMINATING_PHASE = _TERMINATING

_HEADER_BYTES = HEADER_INTS * 8
_TIMES_BYTES = TIMES * 8
_SLOT_BYTES = SLOT_INTS * 8


class BoardError(RuntimeError):
    """The board file is missing, too small, or not a graceful state board."""


def board_size(slots: int) -> int:
    return _HEADER_BYTES + _TIMES_BYTES + slots * _SLOT_BYTES


def _default_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class SlotView:
    """One process's figures, as read from its slot (a plain class: see the imports)."""

    __slots__ = ("in_flight", "index", "pid", "requests", "shed", "websockets")

    def __init__(
        self, *, index: int, pid: int, in_flight: int, requests: int, websockets: int, shed: int
    ) -> None:
        self.index, self.pid, self.in_flight = index, pid, in_flight
        self.requests, self.websockets, self.shed = requests, websockets, shed

    def _fields(self) -> tuple[int, ...]:
        return (self.index, self.pid, self.in_flight, self.requests, self.websockets, self.shed)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlotView) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"SlotView(index={self.index}, pid={self.pid}, in_flight={self.in_flight}, "
            f"requests={self.requests}, websockets={self.websockets}, shed={self.shed})"
        )


class _BoardLock:
    """Excludes other threads (a lock) and other processes (a POSIX record lock on the board file)."""

    __slots__ = ("_fd", "_thread_lock")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        # POSIX record locks exclude other processes but not other threads of this one.
        self._thread_lock = _thread.allocate_lock()

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def reset_in_child(self) -> None:
        """In a forked child: a fresh thread lock. Another thread of the parent may have held it
        at the fork, and it does not live on to release it; the record lock is not inherited."""
        self._thread_lock = _thread.allocate_lock()


class StateBoard:
    """Shared phase, timestamps and per-process slots. Use ``create`` or ``attach``, not the constructor."""

    def __init__(self, fd: int, path: str | None, *, owns_file: bool) -> None:
        self._fd = fd
        self.path = path
        self._owns_file = owns_file
        size = os.fstat(fd).st_size
        if size < board_size(1):
            raise BoardError(f"state board {path or '<anonymous>'} is {size} bytes, too small to be one")
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        view = memoryview(self._map)
        self._header = view[:_HEADER_BYTES].cast("q")
        self._times = view[_HEADER_BYTES : _HEADER_BYTES + _TIMES_BYTES].cast("d")
        if self._header[_H_MAGIC] != MAGIC:
            self._release(close_fd=False)  # the caller owns the fd until we succeed
            raise BoardError(f"{path} is not a graceful state board (bad magic number)")
        if self._header[_H_VERSION] != VERSION:
            version = self._header[_H_VERSION]
            self._release(close_fd=False)  # the caller owns the fd until we succeed
            raise BoardError(
                f"state board {path} has layout version {version}; this graceful reads {VERSION}"
            )
        self.slots = int(self._header[_H_SLOTS])
        if size < board_size(self.slots):
            self._release(close_fd=False)  # the caller owns the fd until we succeed
            raise BoardError(f"state board {path} is truncated: {size} bytes for {self.slots} slots")
        self._slot_ints = view[_HEADER_BYTES + _TIMES_BYTES : board_size(self.slots)].cast("q")
        self._lock = _BoardLock(fd)

    # -- creation ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls, path: str | None = None, *, slots: int = DEFAULT_SLOTS, now: float, directory: str | None = None
    ) -> StateBoard:
        """Create a new board. ``path=None`` makes an anonymous one (unlinked file, shared across fork)."""
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots={slots!r} is out of range; allowed: 1 to {MAX_SLOTS}")
        if path is None:
            import tempfile  # only here: the supervisor always names its file

            fd, tmp = tempfile.mkstemp(prefix="graceful-", suffix=".board", dir=directory or _default_dir())
            os.unlink(tmp)
        else:
            # O_EXCL: never adopt a stale file of an earlier run by accident.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, board_size(slots))
        with mmap.mmap(fd, board_size(slots), mmap.MAP_SHARED) as raw, memoryview(raw) as view:
            header = view[:_HEADER_BYTES].cast("q")
            times = view[_HEADER_BYTES : _HEADER_BYTES + _TIMES_BYTES].cast("d")
            header[_H_VERSION] = VERSION
            header[_H_SLOTS] = slots
            header[_H_PHASE] = int(Phase.STARTING)
            times[_T_CREATED] = now
            times[_T_PHASE_CHANGED] = now
            times[_T_DRAIN_DELAY] = -1.0
            header[_H_MAGIC] = MAGIC  # last: a reader that sees the magic sees a whole header
            header.release()
            times.release()
        return cls(fd, path, owns_file=path is not None)

    @classmethod
    def attach(cls, path: str) -> StateBoard:
        """Open a board another process created (the supervisor's, from ``GRACEFUL_STATE``)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise BoardError(
                f"cannot open state board {path!r} (from GRACEFUL_STATE): {exc.strerror}"
            ) from exc
        try:
            return cls(fd, path, owns_file=False)
        except BaseException:
            os.close(fd)
            raise

    def reset_in_child(self) -> None:
        """In a forked child, before any use: locks another thread of the parent held stay held."""
        self._lock.reset_in_child()

    def close(self) -> None:
        """Unmap and close; the creator of a named board also removes its file."""
        self._release()
        if self._owns_file and self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def _release(self, *, close_fd: bool = True) -> None:
        for view_name in ("_slot_ints", "_times", "_header"):
            view = self.__dict__.pop(view_name, None)
            if view is not None:
                view.release()
        try:
            self._map.close()
        except Exception:  # a view still exported elsewhere: the map goes with the process
            pass
        if close_fd:
            try:
                os.close(self._fd)
            except OSError:
                pass

    # -- phase ---------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return Phase(self._header[_H_PHASE])

    def move_to(self, target: Phase, *, now: float) -> Phase | None:
        """Move to ``target`` if allowed from the current phase. Returns the phase left, or None.

        Returns None (and changes nothing) when the move is not allowed: in particular when another
        process already moved past ``target``. Entering DRAINING counts a drain and stamps its start;
        entering STOPPING stamps the stop.
        """
        with self._lock:
            current = Phase(self._header[_H_PHASE])
            if not can_move(current, target):
                return None
            if target is Phase.DRAINING:
                self._header[_H_DRAINS] += 1
                self._times[_T_DRAIN_STARTED] = now
            if target is Phase.STOPPING:
                self._times[_T_STOP_STARTED] = now
                if current < Phase.DRAINING:  # the drain delay was skipped
                    self._header[_H_DRAINS] += 1
                    self._times[_T_DRAIN_STARTED] = now
            if current is Phase.STARTING:
                self._times[_T_STARTED] = now
            self._times[_T_PHASE_CHANGED] = now
            self._header[_H_PHASE] = int(target)
            return current

    @property
    def phase_cell(self) -> tuple[memoryview, int]:
        """``(ints, index)``: ``ints[index]`` is the phase as an int, for hot paths that read it inline."""
        return self._header, _H_PHASE

    @property
    def is_terminating(self) -> bool:
        """``phase.is_terminating`` with one shared-memory read and no enum: for per-request checks."""
        return bool(self._header[_H_PHASE] >= _TERMINATING)

    @property
    def created_at(self) -> float:
        return float(self._times[_T_CREATED])

    @property
    def phase_changed_at(self) -> float:
        return float(self._times[_T_PHASE_CHANGED])

    @property
    def drain_started_at(self) -> float | None:
        """When termination began (monotonic seconds), or None if it has not."""
        return float(self._times[_T_DRAIN_STARTED]) if self._header[_H_DRAINS] else None

    @property
    def drains(self) -> int:
        """How many times a drain was started: 0 or 1 in a healthy life."""
        return int(self._header[_H_DRAINS])

    @property
    def owner_pid(self) -> int:
        """Pid of the process that owns the drain clock (0: none registered)."""
        return int(self._header[_H_OWNER_PID])

    @property
    def drain_delay(self) -> float | None:
        """The drain delay of the clock owner, so every process computes the same deadline."""
        delay = float(self._times[_T_DRAIN_DELAY])
        return None if delay < 0 else delay

    def claim_drain_clock(self, pid: int, drain_delay: float) -> None:
        """Record ``pid`` as the drain-clock owner and publish its drain delay."""
        self._times[_T_DRAIN_DELAY] = drain_delay
        self._header[_H_OWNER_PID] = pid

    # -- slots ---------------------------------------------------------------------------------

    def claim_slot(self, pid: int) -> int:
        """Take a free slot (or one whose process is gone) for ``pid`` and zero it. Returns its index."""
        with self._lock:
            for index in range(self.slots):
                holder = self._slot_ints[index * SLOT_INTS + _S_PID]
                if holder == 0 or holder == pid or not _pid_alive(holder):
                    self._zero_slot(index)
                    self._slot_ints[index * SLOT_INTS + _S_PID] = pid
                    return index
        raise BoardError(f"state board has no free slot for pid {pid}: all {self.slots} are held")

    def release_slot(self, index: int) -> None:
        """Free a slot (its process exited, or a master reaped it)."""
        with self._lock:
            self._zero_slot(index)

    def reserve_slot(self, holder: int) -> int:
        """Take a free slot for a process about to be forked, held by ``holder`` (the parent) meanwhile.

        A gunicorn master gives each worker its slot this way: the slot index is known to the master
        before the fork, so the master can free exactly that slot when it reaps the worker.
        """
        with self._lock:
            for index in range(self.slots):
                pid = self._slot_ints[index * SLOT_INTS + _S_PID]
                if pid == 0 or not _pid_alive(pid):
                    self._zero_slot(index)
                    self._slot_ints[index * SLOT_INTS + _S_PID] = holder
                    return index
        raise BoardError(f"state board has no free slot to reserve: all {self.slots} are held")

    def adopt_slot(self, index: int, pid: int) -> None:
        """The forked child takes the slot its parent reserved for it (see ``reserve_slot``)."""
        base = self.slot_offset(index)
        with self._lock:
            self._zero_slot(index)
            self._slot_ints[base + _S_PID] = pid

    def release_slot_held_by(self, index: int, pids: tuple[int, ...]) -> bool:
        """Free slot ``index`` if one of ``pids`` holds it (a reaped worker, or its parent's
        reservation when the child died before adopting it). False if someone else holds it."""
        base = self.slot_offset(index)
        with self._lock:
            if self._slot_ints[base + _S_PID] not in pids:
                return False
            self._zero_slot(index)
            return True

    def _zero_slot(self, index: int) -> None:
        base = index * SLOT_INTS
        for offset in range(SLOT_INTS):
            self._slot_ints[base + offset] = 0

    def slot_offset(self, index: int) -> int:
        """Index of the slot's first int in ``slot_ints`` (for hot paths that write counters directly)."""
        if not 0 <= index < self.slots:
            raise IndexError(f"slot {index} out of range 0..{self.slots - 1}")
        return index * SLOT_INTS

    @property
    def slot_ints(self) -> memoryview:
        """The raw int64 view of all slots. Write only your own slot."""
        return self._slot_ints

    def read_slots(self) -> list[SlotView]:
        """Every held slot whose process still exists."""
        found = []
        for index in range(self.slots):
            base = index * SLOT_INTS
            pid = self._slot_ints[base + _S_PID]
            if pid and _pid_alive(pid):
                found.append(
                    SlotView(
                        index=index,
                        pid=int(pid),
                        in_flight=int(self._slot_ints[base + _S_TRAFFIC]) & IN_FLIGHT_MASK,
                        requests=int(self._slot_ints[base + _S_TRAFFIC]) >> 20,
                        websockets=int(self._slot_ints[base + _S_WEBSOCKETS]),
                        shed=int(self._slot_ints[base + _S_SHED]),
                    )
                )
        return found


# Offsets of a slot's fields, for writers that hold a slot (see Lifecycle).
SLOT_PID, SLOT_TRAFFIC, SLOT_WEBSOCKETS, SLOT_SHED = _S_PID, _S_TRAFFIC, _S_WEBSOCKETS, _S_SHED
# While draining, each process stamps its slot with the arrival of its latest request (any) and of
# its latest request on a connection made after the drain began ("new"), in whole microseconds of
# time.monotonic() (0: none): the drain report's measured propagation lag (issue 13). Slots 6 and 7,
# leaving 4 and 5 free for counters.
SLOT_LAST_NEW, SLOT_LAST_REQUEST = 6, 7
ARRIVAL_UNIT = 1_000_000


def last_arrivals(board: StateBoard) -> tuple[float | None, float | None]:
    """``(last new arrival, last request)`` of every live slot on the board, monotonic seconds."""
    ints = board.slot_ints
    newest = latest = 0
    for slot in board.read_slots():
        base = board.slot_offset(slot.index)
        newest = max(newest, int(ints[base + SLOT_LAST_NEW]))
        latest = max(latest, int(ints[base + SLOT_LAST_REQUEST]))
    return (newest / ARRIVAL_UNIT if newest else None, latest / ARRIVAL_UNIT if latest else None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
