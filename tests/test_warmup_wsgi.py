"""Startup gate, checks, slow-start admission and the agent, for the WSGI middleware on a real server.

The WSGI twin of tests/test_warmup.py: the same promises, kept by a background thread (checks,
gate, watcher, agent) and by admission that blocks server threads. The server is waitress (a
threaded WSGI server, as gunicorn's gthread is), in this process, bound to 127.0.0.1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import waitress

from graceful import Lifecycle, Phase, Settings
from graceful.wsgi import GracefulMiddleware
from tests.conftest import agent_says, free_port
from tests.server_process import wait_for
from tests.test_wsgi_servers import stop_waitress

THREADS = 24  # more than any test sends at once: queued requests each hold a server thread


class RecordingApp:
    """Sleeps ``?seconds``; records how many requests run at once (``highest``)."""

    def __init__(self) -> None:
        self.running = 0
        self.highest = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        with self._lock:
            self.running += 1
            self.highest = max(self.highest, self.running)
        try:
            time.sleep(float(query.get("seconds", ["0"])[0]))
        finally:
            with self._lock:
                self.running -= 1
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"done"]


class Server:
    def __init__(self, middleware: GracefulMiddleware, app: RecordingApp, port: int) -> None:
        self.middleware, self.app, self.port = middleware, app, port
        self.url = f"http://127.0.0.1:{port}"
        self.lifecycle = middleware.lifecycle

    def status(self, path: str) -> int:
        return httpx.get(self.url + path, timeout=5).status_code


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """Start waitress (in a thread) around a RecordingApp with the given settings and checks."""
    started: list[tuple[Any, threading.Thread, GracefulMiddleware]] = []

    def start(checks: tuple[tuple[str, Callable[[], Any], str, bool], ...] = (), **settings: Any) -> Server:
        lifecycle = Lifecycle(Settings(**settings))
        app = RecordingApp()
        middleware = GracefulMiddleware(app, lifecycle=lifecycle)
        for name, func, kind, critical in checks:
            middleware.add_check(name, func, kind=kind, critical=critical)  # type: ignore[arg-type]
        server = waitress.create_server(middleware, host="127.0.0.1", port=0, threads=THREADS)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread, middleware))
        return Server(middleware, app, server.effective_port)

    yield start
    for server, thread, middleware in started:
        stop_waitress(server, thread)
        middleware.stop()
        middleware.lifecycle.close()


def concurrent_get(url: str, paths: list[str], spacing: float = 0.0) -> list[httpx.Response]:
    """GET every path at once from its own connection, starting them ``spacing`` seconds apart."""
    results: list[httpx.Response | None] = [None] * len(paths)

    def fetch(index: int, path: str) -> None:
        with httpx.Client(timeout=15) as client:
            results[index] = client.get(url + path)

    threads = [threading.Thread(target=fetch, args=(i, p)) for i, p in enumerate(paths)]
    for thread in threads:
        thread.start()
        if spacing:
            time.sleep(spacing)  # only orders the arrivals; nothing is asserted about time
    for thread in threads:
        thread.join(30)
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


# -- the startup gate and the checks ----------------------------------------------------------------


def test_readiness_waits_for_a_failing_startup_check(serve: Callable[..., Server]) -> None:
    """Readiness and the startup probe stay 503 until the startup check passes, then turn 200."""
    database_up = threading.Event()
    server = serve(checks=(("database", database_up.is_set, "startup", True),), check_interval=0.1)
    for _ in range(3):
        assert server.status("/healthz/ready") == 503
        assert server.status("/healthz/startup") == 503
        assert server.status("/healthz/live") == 200
    database_up.set()
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "readiness after the check passed")
    assert server.status("/healthz/startup") == 200


def test_critical_readiness_check_flips_readiness(serve: Callable[..., Server]) -> None:
    """A failing critical readiness check fails readiness by its next runs; passing again restores it."""
    healthy = threading.Event()
    healthy.set()
    runs: list[bool] = []

    def cache() -> bool:
        runs.append(healthy.is_set())
        return healthy.is_set()

    server = serve(checks=(("cache", cache, "readiness", True),), check_interval=0.3)
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "ready")
    healthy.clear()
    runs_before = len(runs)
    wait_for(lambda: server.status("/healthz/ready") == 503, 10, "readiness to fail")
    assert len(runs) - runs_before <= 2 and not all(runs[runs_before:]), (runs_before, runs)
    assert server.status("/healthz/live") == 200, "a readiness check never fails liveness"
    healthy.set()
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "readiness to come back")


def test_non_critical_check_shows_but_does_not_fail_readiness(serve: Callable[..., Server]) -> None:
    """A weak dependency failing is visible in /healthz detail (to a loopback caller), readiness stays 200."""

    def search_down() -> bool:
        raise ConnectionError("search is down")

    server = serve(checks=(("search", search_down, "readiness", False),), check_interval=0.1)
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "ready")
    wait_for(
        lambda: httpx.get(server.url + "/healthz").json()["checks"]["search"]["ok"] is False, 5, "a result"
    )
    detail = httpx.get(server.url + "/healthz").json()
    assert detail["ready"] is True
    assert detail["checks"]["search"]["error"] == "ConnectionError: search is down"


# -- admission --------------------------------------------------------------------------------------


def test_cap_holds_across_server_threads(serve: Callable[..., Server]) -> None:
    """With a cap of 2, 10 concurrent requests on 24 server threads never run more than 2 at once."""
    server = serve(max_concurrency=2, queue_size=50, queue_timeout=10)
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "ready")
    responses = concurrent_get(server.url, [f"/work?n={n}&seconds=0.2" for n in range(10)], spacing=0.02)
    assert [r.status_code for r in responses] == [200] * 10
    assert server.app.highest == 2
    # The server calls close() on each body just after sending it: the count ends then.
    wait_for(lambda: server.lifecycle.in_flight == 0, 5, "every request's count to end")


def test_full_queue_sheds_with_retry_after_and_connection_close(serve: Callable[..., Server]) -> None:
    """Past the cap and a full queue, requests get 503 with a whole-second Retry-After and Connection: close."""
    server = serve(max_concurrency=1, queue_size=1, queue_timeout=10, retry_after=1, retry_after_jitter=2)
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "ready")
    # Long enough that all six arrive while the first still runs, even on a busy machine.
    responses = concurrent_get(server.url, [f"/work?n={n}&seconds=2" for n in range(6)], spacing=0.02)
    ok = [r for r in responses if r.status_code == 200]
    shed = [r for r in responses if r.status_code == 503]
    assert len(ok) == 2 and len(shed) == 4, [r.status_code for r in responses]
    for response in shed:
        assert response.headers["connection"] == "close"
        assert 1 <= int(response.headers["retry-after"]) <= 3
        assert response.text == "overloaded, retry later\n"
        assert response.headers["graceful-shed"] == "1"
    assert httpx.get(server.url + "/healthz").json()["admission"]["shed"] == 4
    wait_for(lambda: server.lifecycle.in_flight == 0, 5, "every request's count to end")


def test_queue_timeout_bounds_the_wait(serve: Callable[..., Server]) -> None:
    """A queued request waits at most the queue timeout, then is shed."""
    server = serve(max_concurrency=1, queue_size=10, queue_timeout=0.3)
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "ready")
    blocker = threading.Thread(target=lambda: httpx.get(server.url + "/work?n=0&seconds=2", timeout=10))
    blocker.start()
    wait_for(lambda: server.app.running == 1, 5, "the blocking request")
    started = time.monotonic()
    response = httpx.get(server.url + "/work?n=1", timeout=10)
    waited = time.monotonic() - started
    blocker.join(10)
    assert response.status_code == 503
    assert 0.3 <= waited < 1.5, waited


def test_probes_are_never_queued(serve: Callable[..., Server]) -> None:
    """With every place taken and no queue, probes still answer at once."""
    server = serve(max_concurrency=1, queue_size=0, queue_timeout=5)
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "ready")
    blocker = threading.Thread(target=lambda: httpx.get(server.url + "/work?n=0&seconds=4", timeout=10))
    blocker.start()
    wait_for(lambda: server.app.running == 1, 5, "the blocking request")
    assert server.status("/work?n=1") == 503
    assert server.status("/healthz/ready") == 200
    assert server.status("/healthz/live") == 200
    blocker.join(10)


def test_in_flight_never_exceeds_the_ramping_cap(serve: Callable[..., Server]) -> None:
    """During a warm-up window under load, running requests never exceed the cap of that moment,
    the cap grows, and the instance turns READY when the window is over."""
    server = serve(
        max_concurrency=8, warmup_window=4, warmup_min_share=0.125, queue_size=100, queue_timeout=10
    )
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "ready (warming)")
    admission = server.middleware._admission
    assert admission is not None
    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        for _ in range(20_000):  # bounded; ends with the load
            if stop.wait(0.002):
                return
            running = admission.running  # read before the cap: the cap never shrinks while warming
            samples.append((running, admission.cap()))

    sampler = threading.Thread(target=sample)
    sampler.start()
    responses = concurrent_get(server.url, [f"/work?n={n}&seconds=0.15" for n in range(20)], spacing=0.03)
    stop.set()
    sampler.join(10)
    assert all(r.status_code == 200 for r in responses)
    assert all(running <= cap for running, cap in samples), max(samples, key=lambda s: s[0] - s[1])
    caps = [cap for _, cap in samples]
    assert caps[0] < caps[-1], "the cap ramped up"
    wait_for(lambda: server.lifecycle.phase is Phase.READY, 10, "READY at the end of the window")
    assert admission.cap() == 8


# -- the agent-check responder -----------------------------------------------------------------------


def test_agent_reports_warming_ready_and_drain(serve: Callable[..., Server]) -> None:
    """HAProxy's agent-check reads 'up NN%' while warming, 'ready 100%' when warm, 'drain' when draining."""
    port = free_port()
    server = serve(max_concurrency=10, warmup_window=1.0, warmup_min_share=0.2, agent_port=port)
    assert server.status("/healthz/live") == 200  # the first request: the server has started
    wait_for(lambda: agent_says(port).startswith("up "), 5, "the agent to answer while warming")
    wait_for(lambda: agent_says(port) == "ready 100%", 5, "ready after the window")
    server.lifecycle.begin_drain("test")
    wait_for(lambda: agent_says(port) == "drain", 5, "drain")
