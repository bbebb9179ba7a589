"""Startup gate, checks, slow-start admission and the agent responder, on a real uvicorn server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from graceful import Lifecycle, Phase, Settings
from graceful._admission import AdmissionControl
from graceful.asgi import GracefulMiddleware
from tests.conftest import agent_says, free_port
from tests.server_process import wait_for


class RecordingApp:
    """Sleeps ``?seconds`` and records the order in which requests (``?n``) started running."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.running = 0
        self.highest = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        query = dict(part.split("=") for part in scope["query_string"].decode().split("&") if "=" in part)
        self.started.append(int(query.get("n", "-1")))
        self.running += 1
        self.highest = max(self.highest, self.running)
        try:
            await asyncio.sleep(float(query.get("seconds", "0")))
        finally:
            self.running -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})


class ArrivalRecorder:
    """Outermost layer: records the order requests (``?n``) reach the server, just before admission.

    No await lies between this record and the middleware's admission decision, so it is the
    arrival order the FIFO queue must keep (the clients' own start order is not, on a busy machine).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.arrived: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/work":
            query = dict(part.split("=") for part in scope["query_string"].decode().split("&") if "=" in part)
            self.arrived.append(int(query.get("n", "-1")))
        await self.app(scope, receive, send)


class Server:
    def __init__(
        self, middleware: GracefulMiddleware, app: RecordingApp | None, port: int, recorder: ArrivalRecorder
    ) -> None:
        self.middleware, self.app, self.port, self.recorder = middleware, app, port, recorder
        self.url = f"http://127.0.0.1:{port}"
        self.lifecycle = middleware.lifecycle

    def status(self, path: str) -> int:
        return httpx.get(self.url + path, timeout=5).status_code


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """Start a real uvicorn (in a thread) around a RecordingApp with the given settings and checks."""
    started: list[tuple[uvicorn.Server, threading.Thread, Lifecycle]] = []

    def start(checks: tuple[tuple[str, Callable[[], Any], str, bool], ...] = (), **settings: Any) -> Server:
        lifecycle = Lifecycle(Settings(chain_server_signals=False, **settings))
        app = RecordingApp()
        middleware = GracefulMiddleware(app, lifecycle=lifecycle)
        for name, func, kind, critical in checks:
            middleware.add_check(name, func, kind=kind, critical=critical)  # type: ignore[arg-type]
        port = free_port()
        recorder = ArrivalRecorder(middleware)
        config = uvicorn.Config(recorder, host="127.0.0.1", port=port, lifespan="on", log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread, lifecycle))
        wait_for(lambda: server.started, 10, "uvicorn to start")
        return Server(middleware, app, port, recorder)

    yield start
    for server, thread, lifecycle in started:
        server.should_exit = True
        thread.join(10)
        lifecycle.close()


# -- the startup gate -----------------------------------------------------------------------------


def test_readiness_waits_for_a_failing_startup_check(serve: Callable[..., Server]) -> None:
    """Readiness and the startup probe stay 503 until the startup check passes, then turn 200."""
    database_up = threading.Event()
    server = serve(checks=(("database", lambda: database_up.is_set(), "startup", True),), check_interval=0.1)
    for _ in range(3):
        assert server.status("/healthz/ready") == 503
        assert server.status("/healthz/startup") == 503
        assert server.status("/healthz/live") == 200
    database_up.set()
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "readiness after the check passed")
    assert server.status("/healthz/startup") == 200


def test_minimum_startup_delay(serve: Callable[..., Server]) -> None:
    """With startup_min_delay, readiness opens no earlier than the delay after the server started."""
    delay = 1.5
    started = time.monotonic()
    server = serve(startup_min_delay=delay)
    asked = time.monotonic()
    answer = server.status("/healthz/ready")
    if asked - started < delay - 0.5:  # asked well inside the delay (a very busy machine may not)
        assert answer == 503
    wait_for(lambda: server.status("/healthz/ready") == 200, 10, "readiness after the delay")
    opened = time.monotonic()
    assert opened - started >= delay
    assert server.lifecycle.board.phase_changed_at - server.lifecycle.board.created_at >= delay - 0.05


def test_critical_readiness_check_flips_readiness_within_one_interval(serve: Callable[..., Server]) -> None:
    """A failing critical readiness check fails readiness by its next run (so within one interval);
    passing again restores it."""
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
    # Counted in check runs, not seconds (a busy machine stretches seconds): the run in progress
    # when the dependency failed may still have seen it healthy; the one after it must not pass.
    failing_runs = [run for run in runs[runs_before:] if not run]
    assert len(runs) - runs_before <= 2 and failing_runs, (runs_before, runs)
    assert server.status("/healthz/live") == 200, "a readiness check never fails liveness"
    healthy.set()
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "readiness to come back")


def test_non_critical_check_shows_but_does_not_fail_readiness(serve: Callable[..., Server]) -> None:
    """A weak dependency failing is visible in /healthz detail (to trusted callers) but readiness stays 200."""

    def search_down() -> bool:
        raise ConnectionError("search is down")

    server = serve(checks=(("search", search_down, "readiness", False),), check_interval=0.1)
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "ready")
    wait_for(
        lambda: httpx.get(server.url + "/healthz").json()["checks"]["search"]["ok"] is False, 5, "a result"
    )
    detail = httpx.get(server.url + "/healthz").json()
    assert detail["ready"] is True
    assert detail["checks"]["search"] == {
        "kind": "readiness",
        "critical": False,
        "ok": False,
        "error": "ConnectionError: search is down",
        "seconds": detail["checks"]["search"]["seconds"],
    }


@pytest.mark.anyio
async def test_check_detail_is_for_trusted_callers_only() -> None:
    """A caller that may not call /shutdown does not see check names or errors in /healthz."""
    lifecycle = Lifecycle(Settings())
    middleware = GracefulMiddleware(RecordingApp(), lifecycle=lifecycle)
    middleware.add_check("secret-db", lambda: False, kind="readiness", critical=False)
    transport = httpx.ASGITransport(app=middleware, client=("10.9.8.7", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        body = (await client.get("/healthz")).json()
    assert "checks" not in body and "secret-db" not in str(body)
    lifecycle.close()


# -- admission --------------------------------------------------------------------------------------


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


def test_cap_holds_and_queued_requests_run_in_order_of_arrival(serve: Callable[..., Server]) -> None:
    """With a cap of 2, 10 concurrent requests never run more than 2 at once, and start in arrival order."""
    server = serve(max_concurrency=2, queue_size=50, queue_timeout=10)
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "ready")
    responses = concurrent_get(server.url, [f"/work?n={n}&seconds=0.2" for n in range(10)], spacing=0.03)
    assert [r.status_code for r in responses] == [200] * 10
    assert server.app is not None and server.app.highest == 2
    assert sorted(server.recorder.arrived) == list(range(10))
    assert server.app.started == server.recorder.arrived, "queued requests ran out of order of arrival"


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
        # The app never saw it: graceful.client retries it whatever the method.
        assert response.headers["graceful-shed"] == "1"
    assert httpx.get(server.url + "/healthz").json()["admission"]["shed"] == 4


def test_queue_timeout_bounds_the_wait(serve: Callable[..., Server]) -> None:
    """A queued request waits at most the queue timeout, then is shed; nothing waits longer."""
    server = serve(max_concurrency=1, queue_size=10, queue_timeout=0.3)
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "ready")
    blocker = threading.Thread(target=lambda: httpx.get(server.url + "/work?n=0&seconds=2", timeout=10))
    blocker.start()
    wait_for(lambda: server.app is not None and server.app.running == 1, 5, "the blocking request")
    started = time.monotonic()
    response = httpx.get(server.url + "/work?n=1", timeout=10)
    waited = time.monotonic() - started
    blocker.join(10)
    assert response.status_code == 503
    assert 0.3 <= waited < 1.5, waited


def test_probes_and_shutdown_are_never_queued(serve: Callable[..., Server]) -> None:
    """With every place taken and the queue full, probes still answer at once."""
    server = serve(max_concurrency=1, queue_size=0, queue_timeout=5)
    wait_for(lambda: server.status("/healthz/ready") == 200, 5, "ready")
    # The blocker outlives the assertions below even on a very busy machine.
    blocker = threading.Thread(target=lambda: httpx.get(server.url + "/work?n=0&seconds=4", timeout=10))
    blocker.start()
    wait_for(lambda: server.app is not None and server.app.running == 1, 5, "the blocking request")
    assert server.status("/work?n=1") == 503
    assert server.status("/healthz/ready") == 200
    assert server.status("/healthz/live") == 200
    blocker.join(10)


def test_in_flight_never_exceeds_the_ramping_cap(serve: Callable[..., Server]) -> None:
    """During a warm-up window under load, the requests running never exceed the cap of that moment,
    the cap grows, and the instance turns READY when the window is over."""
    server = serve(
        max_concurrency=8, warmup_window=5, warmup_min_share=0.125, queue_size=100, queue_timeout=10
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
    responses = concurrent_get(server.url, [f"/work?n={n}&seconds=0.15" for n in range(40)], spacing=0.02)
    stop.set()
    sampler.join(10)
    assert all(r.status_code == 200 for r in responses)
    assert all(running <= cap for running, cap in samples), max(samples, key=lambda s: s[0] - s[1])
    caps = [cap for _, cap in samples]
    assert caps[0] < caps[-1], "the cap ramped up"
    wait_for(lambda: server.lifecycle.phase is Phase.READY, 10, "READY at the end of the window")
    assert admission.cap() == 8


def test_share_ramps_with_the_documented_curve() -> None:
    """The cap follows share(t) = max(min_share, (t / window) ** curve) from the moment WARMING began."""
    clock = [1000.0]
    lifecycle = Lifecycle(
        Settings(max_concurrency=10, warmup_window=10, warmup_curve=2, warmup_min_share=0.1),
        clock=lambda: clock[0],
    )
    admission = AdmissionControl(lifecycle.settings, lifecycle)
    lifecycle.move_to(Phase.WARMING)
    expected = {0: (0.1, 1), 2: (0.1, 1), 5: (0.25, 3), 8: (0.64, 7), 10: (1.0, 10)}
    for elapsed, (share, cap) in expected.items():
        clock[0] = 1000.0 + elapsed
        assert admission.share() == pytest.approx(share) and admission.cap() == cap, elapsed
    lifecycle.close()


# -- the agent-check responder -----------------------------------------------------------------------


def test_agent_reports_warming_ready_and_drain(serve: Callable[..., Server]) -> None:
    """HAProxy's agent-check reads 'up NN%' while warming, 'ready 100%' when warm, 'drain' when draining."""
    port = free_port()
    server = serve(max_concurrency=10, warmup_window=1.0, warmup_min_share=0.2, agent_port=port)
    wait_for(lambda: agent_says(port).startswith("up "), 5, "the agent to answer while warming")
    percent = int(agent_says(port).removeprefix("up ").removesuffix("%"))
    assert 20 <= percent <= 100
    wait_for(lambda: agent_says(port) == "ready 100%", 5, "ready after the window")
    server.lifecycle.begin_drain("test")
    assert agent_says(port) == "drain"
