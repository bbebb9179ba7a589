"""A child for graceful-run's black-box tests: prints every signal it receives, one flushed line each.

    python tests/supervisor_child.py [--group N] [--orphans N] [--daemon] [--ignore-term] [--exit N]
                                     [--times FILE]

Lines on stdout: ``ready <pid> <pgid> <ppid>``, then ``<pid> <signal number> <monotonic time>`` per signal.
--group N     fork N helpers that stay in the process group and print their signals too
--orphans N   fork N processes that outlive their parent, so PID 1 (or a subreaper) must reap them
--daemon      fork a helper that ignores SIGTERM and prints ``daemon <pid>`` (for "nobody left behind")
--ignore-term print SIGTERM but keep running (a child only SIGKILL stops)
--exit N      exit with status N right after start-up
--times FILE  append CLOCK_MONOTONIC ns per signal to FILE (forwarding-latency bench)
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

SKIP = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())  # one write(2) per line: lines of several processes never mix


def handle(signum: int, frame: FrameType | None) -> None:
    say(f"{os.getpid()} {signum} {time.monotonic():.6f}")
    if signum == signal.SIGTERM and not IGNORE_TERM:
        os._exit(0)
    if signum == signal.SIGINT:
        os._exit(130)


def install(times_fd: int | None) -> None:
    if times_fd is not None:

        def stamp(signum: int, frame: FrameType | None) -> None:
            os.write(times_fd, f"{time.clock_gettime_ns(time.CLOCK_MONOTONIC)}\n".encode())

        for sig in (signal.SIGUSR1,):
            signal.signal(sig, stamp)
        return
    for sig in signal.valid_signals():
        if sig not in SKIP:
            signal.signal(sig, handle)


def make_orphans(count: int) -> None:
    """Fork a parent that forks ``count`` children and exits: they are orphans when they exit."""
    if os.fork():
        os.wait()  # the middle process exits at once; its children become the reaper's
        return
    read_end, write_end = os.pipe()
    for _ in range(count):
        if os.fork() == 0:
            os.close(write_end)
            os.read(read_end, 1)  # EOF once the middle process has exited: orphaned, now exit
            os._exit(0)
    os._exit(0)


def wait_forever() -> None:
    deadline = time.monotonic() + 120  # bounded: a test that forgot us must not leave us behind
    while time.monotonic() < deadline:
        signal.pause() if hasattr(signal, "pause") else time.sleep(1)


def main(argv: list[str]) -> None:
    args = iter(argv)
    group = orphans = 0
    daemon = False
    times: str | None = None
    exit_code: int | None = None
    for arg in args:
        if arg == "--group":
            group = int(next(args))
        elif arg == "--orphans":
            orphans = int(next(args))
        elif arg == "--daemon":
            daemon = True
        elif arg == "--ignore-term":
            global IGNORE_TERM
            IGNORE_TERM = True
        elif arg == "--exit":
            exit_code = int(next(args))
        elif arg == "--times":
            times = next(args)
    if orphans:
        make_orphans(orphans)
        say(f"orphans {orphans}")
    if daemon and os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say(f"daemon {os.getpid()}")
        wait_forever()
        os._exit(0)
    if exit_code is not None:
        sys.exit(exit_code)
    times_fd = os.open(times, os.O_WRONLY | os.O_APPEND) if times else None  # a FIFO the bench reads
    install(times_fd)
    for _ in range(group):
        if os.fork() == 0:
            say(f"ready {os.getpid()} {os.getpgrp()} {os.getppid()}")
            wait_forever()
            os._exit(0)
    say(f"ready {os.getpid()} {os.getpgrp()} {os.getppid()}")
    wait_forever()


IGNORE_TERM = False

if __name__ == "__main__":
    main(sys.argv[1:])
