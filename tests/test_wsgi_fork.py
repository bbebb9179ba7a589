"""The WSGI middleware across a fork: one started in a parent starts afresh in the child.

With ``gunicorn --preload`` the app is loaded in the arbiter, and an app that warms itself up at
import (Flask's ``test_client()``) starts the middleware there; each worker is forked from it. Real
forks here: the child reports through a pipe and leaves with ``os._exit``; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from graceful import Lifecycle, Phase, Settings, StateBoard
from graceful.gunicorn import _wrap_wsgi
from graceful.wsgi import GracefulMiddleware
from tests import test_wsgi_apps
from tests.server_process import ServerProcess, wait_for

pytestmark = [
    pytest.mark.timeout(60),
    # Python 3.12+ warns on every fork of a multi-threaded process; forking one is the point here.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

CHILD_TIMEOUT = 10.0


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"hello"]


def request(app: Any, path: str = "/") -> Any:
    """Call the app as a server does, leaving the body open (the request stays in flight)."""
    return app({"PATH_INFO": path, "REQUEST_METHOD": "GET", "REMOTE_ADDR": "127.0.0.1"}, lambda *a: None)


def in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` in a forked child; its result comes back as JSON through a pipe, within CHILD_TIMEOUT."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(work()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    ready: list[int] = []
    try:
        ready, _, _ = select.select([read_end], [], [], CHILD_TIMEOUT)
        data = b""
        if ready:
            while chunk := os.read(read_end, 65536):
                data += chunk
    finally:
        os.close(read_end)
        if not ready:
            os.kill(pid, signal.SIGKILL)  # it hangs: that is the failure
        os.waitpid(pid, 0)
    assert ready, f"the child did not answer within {CHILD_TIMEOUT} s"
    assert data, "the child failed before answering"
    return json.loads(data)  # type: ignore[no-any-return]


def poll(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def lifecycle() -> Iterator[Lifecycle]:
    made = Lifecycle(Settings(check_interval=0.05))
    try:
        yield made
    finally:
        made.close()


@pytest.mark.parametrize("start", ["first request", "worker's server_started"])
def test_middleware_started_before_a_fork_starts_afresh_in_the_child(
    lifecycle: Lifecycle, start: str
) -> None:
    """Warmed up in the parent, the middleware runs its own background work in the child: the
    child's checks run there, and its in-flight count reaches its board slot without a read."""
    checked_in: list[int] = []

    def check() -> bool:
        checked_in.append(os.getpid())
        return True

    middleware = GracefulMiddleware(hello, lifecycle=lifecycle)
    middleware.add_check("pid", check)
    request(middleware, "/warm-up").close()  # e.g. Flask's test_client() at import
    assert middleware._runtime is not None

    def child() -> dict[str, Any]:
        if start == "first request":
            body = request(middleware, "/slow")
        else:
            _wrap_wsgi(middleware)  # what the gunicorn worker does after loading the app
            body = request(middleware, "/slow")
        # Nothing in this process reads the count: only the background thread moves it to the board.
        flushed = poll(
            lambda: any(s.pid == os.getpid() and s.in_flight == 1 for s in lifecycle.board.read_slots())
        )
        checked = poll(lambda: os.getpid() in checked_in)
        body.close()
        return {"flushed": flushed, "checked": checked, "in_flight": lifecycle.local_in_flight}

    try:
        assert in_child(child) == {"flushed": True, "checked": True, "in_flight": 0}
    finally:
        middleware.stop()


def test_fork_while_a_thread_holds_the_locks_leaves_the_child_usable(lifecycle: Lifecycle) -> None:
    """Forked while another thread holds the count lock (the runtime's flush takes it every 50 ms)
    and the middleware's start lock, the child still answers /healthz and starts its own work."""
    middleware = GracefulMiddleware(hello, lifecycle=lifecycle)
    request(middleware, "/warm-up").close()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        # The board's thread lock only: its record lock (lockf) is not inherited, and held here it
        # would rightly keep the child out.
        board_thread_lock = lifecycle.board._lock._thread_lock
        with lifecycle.count_lock, middleware._starting, lifecycle._notify_lock, board_thread_lock:
            held.set()
            release.wait(CHILD_TIMEOUT)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(5)

    def child() -> dict[str, Any]:
        served: list[bytes] = []
        body = request(middleware, "/healthz")
        served.extend(body)
        lifecycle.poll()
        lifecycle.board.claim_drain_clock(os.getpid(), 1.0)  # takes the board's lock
        return {"health": json.loads(b"".join(served))["phase"], "started": middleware._runtime is not None}

    try:
        assert in_child(child) == {"health": lifecycle.phase.name.lower(), "started": True}
    finally:
        release.set()
        holder.join(5)
        middleware.stop()


def test_the_parent_keeps_its_own_background_work(lifecycle: Lifecycle) -> None:
    """A fork resets the child only: the parent's middleware stays started with its thread."""
    middleware = GracefulMiddleware(hello, lifecycle=lifecycle)
    request(middleware, "/warm-up").close()
    runtime = middleware._runtime
    try:
        assert in_child(lambda: {"started": middleware._runtime is not None}) == {"started": False}
        assert middleware._runtime is runtime and runtime is not None and runtime._thread.is_alive()
        assert lifecycle.phase is Phase.READY
    finally:
        middleware.stop()


# -- a real gunicorn --preload -------------------------------------------------------------------------


def warmed_up_app() -> GracefulMiddleware:
    """gunicorn app factory (``tests.test_wsgi_fork:warmed_up_app()``): wraps the test app and makes a
    request through it at load time, as an app warming up with Flask's test_client() does. Its startup
    check passes only in a process other than the one that loaded it: with --preload, in a worker."""
    loaded_in = os.getpid()
    middleware = GracefulMiddleware(test_wsgi_apps.app)
    middleware.add_check("in-a-worker", lambda: os.getpid() != loaded_in, kind="startup")
    request(middleware, "/fast").close()
    return middleware


def test_gunicorn_preload_with_a_warm_up_request_runs_the_work_in_each_worker(tmp_path: Path) -> None:
    """Under gunicorn --preload, after a warm-up request in the arbiter: the workers' checks run (the
    gate opens) and a worker's in-flight count reaches the board (read here, from outside)."""
    # A named board the test reads directly: /healthz in a worker would flush that worker's own
    # count itself, and could not show whether its background thread does.
    path = str(tmp_path / "board")
    board = StateBoard.create(path, slots=16, now=time.monotonic())
    argv = [
        "env",
        f"GRACEFUL_STATE={path}",  # ServerProcess drops GRACEFUL_STATE from the environment
        "{python}",
        "-m",
        "gunicorn",
        "-k",
        "graceful.gunicorn.ThreadWorker",
        "-w",
        "2",
        "--threads",
        "2",
        "--preload",
        "-b",
        "127.0.0.1:{port}",
        "--no-control-socket",
        "tests.test_wsgi_fork:warmed_up_app()",
    ]
    server = ServerProcess(argv, env={"GRACEFUL_CHECK_INTERVAL": "0.2"})
    slow: threading.Thread | None = None
    try:
        server.wait_ready()  # the gate opened: a worker ran the startup check

        def slow_request() -> None:
            # Cut when the test ends (close() kills the server's whole process group): its outcome
            # is not what this test looks at, only its count while in flight.
            with contextlib.suppress(httpx.TransportError):
                httpx.get(server.url + "/slow?seconds=3", timeout=10)

        slow = threading.Thread(target=slow_request)
        slow.start()
        wait_for(
            lambda: sum(s.in_flight for s in board.read_slots()) == 1, 5, "the worker's count on the board"
        )
        assert json.loads(server.get("/healthz").text)["in_flight"] == 1
    finally:
        server.close()
        if slow is not None:
            slow.join(10)
        board.close()


def checked_in_the_arbiter_app() -> GracefulMiddleware:
    """gunicorn app factory: the test app with a startup check that passes everywhere and appends
    the pid it ran in to $GRACEFUL_TEST_CHECK_LOG, warmed up with a request at load time."""
    log = os.environ["GRACEFUL_TEST_CHECK_LOG"]

    def check() -> bool:
        with open(log, "a") as file:
            file.write(f"{os.getpid()}\n")
        return True

    middleware = GracefulMiddleware(test_wsgi_apps.app)
    middleware.add_check("records-its-pid", check)
    request(middleware, "/fast").close()
    return middleware


def test_gunicorn_preload_stops_the_arbiters_background_work(tmp_path: Path) -> None:
    """After a warm-up request in the arbiter (--preload), the arbiter's background thread is stopped
    before the workers are forked: the checks run in the workers only from then on."""
    log = tmp_path / "checks"
    log.touch()
    argv = [
        "{python}", "-m", "gunicorn", "-k", "graceful.gunicorn.ThreadWorker", "-w", "2", "--threads", "2",
        "--preload", "-b", "127.0.0.1:{port}", "--no-control-socket",
        "tests.test_wsgi_fork:checked_in_the_arbiter_app()",
    ]  # fmt: skip
    server = ServerProcess(argv, env={"GRACEFUL_CHECK_INTERVAL": "0.1", "GRACEFUL_TEST_CHECK_LOG": str(log)})
    arbiter = server.process.pid
    try:
        server.wait_ready()

        def pids() -> list[int]:
            return [int(line) for line in log.read_text().split()]

        # Ten runs in the workers take a second at 0.1 s intervals: a live arbiter thread would
        # have run its checks several times meanwhile.
        wait_for(lambda: sum(pid != arbiter for pid in pids()) >= 10, 10, "ten check runs in the workers")
        runs = pids()
        first_in_a_worker = next(index for index, pid in enumerate(runs) if pid != arbiter)
        assert arbiter not in runs[first_in_a_worker:], runs
    finally:
        server.close()
