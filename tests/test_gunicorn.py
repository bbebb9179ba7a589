"""Real gunicorn processes with graceful's worker classes, real signals, 127.0.0.1 only.

The master owns the drain clock: SIGTERM fails readiness at once in every worker, everything is
served for the drain delay, then gunicorn's own graceful stop runs. Every wait is bounded.
"""

from __future__ import annotations

import gc
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from graceful import Lifecycle, Phase, asgi, wsgi
from graceful.gunicorn import _wrap_asgi, _wrap_wsgi
from tests.conftest import agent_says, free_port
from tests.server_process import ServerProcess, wait_for

pytestmark = pytest.mark.timeout(60)

WORKERS = {
    "thread": (
        ["-k", "graceful.gunicorn.ThreadWorker", "-w", "2", "--threads", "4"],
        "tests.test_wsgi_apps:app",
    ),
    "uvicorn": (["-k", "graceful.gunicorn.UvicornWorker", "-w", "2"], "examples.starlette_app:app"),
    "single": (["-k", "graceful.gunicorn.SingleThreadWorker", "-w", "2"], "tests.test_wsgi_apps:app"),
}
DELAY = 1.5


def gunicorn_argv(kind: str, *extra: str, bind: str = "127.0.0.1:{port}") -> list[str]:
    options, app = WORKERS[kind]
    # --no-control-socket: every gunicorn would otherwise share ~/.gunicorn/gunicorn.ctl.
    return ["{python}", "-m", "gunicorn", *options, "-b", bind, "--no-control-socket", *extra, app]


def start(
    servers: list[ServerProcess], kind: str, *extra: str, delay: float = DELAY, **env: str
) -> ServerProcess:
    server = ServerProcess(gunicorn_argv(kind, *extra), env={"GRACEFUL_DRAIN_DELAY": f"{delay:g}", **env})
    servers.append(server)
    server.wait_ready()
    return server


def health(server: ServerProcess) -> dict[str, object]:
    return json.loads(server.get("/healthz").text)  # type: ignore[no-any-return]


def fresh_get(server: ServerProcess, path: str, timeout: float = 5.0) -> httpx.Response:
    """A request on a new connection, as a balancer's new client makes."""
    return httpx.get(server.url + path, timeout=timeout, headers={"connection": "close"})


class Background:
    """One request in a thread; ``result`` is the status code or the exception's class name."""

    def __init__(self, server: ServerProcess, path: str) -> None:
        self.result: int | str | None = None
        self.thread = threading.Thread(target=self._run, args=(server, path), daemon=True)
        self.thread.start()

    def _run(self, server: ServerProcess, path: str) -> None:
        try:
            self.result = fresh_get(server, path, timeout=30).status_code
        except httpx.HTTPError as exc:
            self.result = type(exc).__name__

    def join(self, timeout: float = 30.0) -> int | str | None:
        self.thread.join(timeout)
        return self.result


@pytest.mark.parametrize("kind", ["thread", "uvicorn", "single"])
def test_sigterm_drains_in_the_master_then_stops(started: list[ServerProcess], kind: str) -> None:
    """SIGTERM to the master: readiness 503 at once, new connections served through the delay, in-flight work finishes, exit 0."""
    server = start(started, kind)
    slow = Background(server, "/slow?seconds=2.5")
    wait_for(lambda: health(server)["in_flight"] == 1, 5, "the slow request to be in flight")
    sent = server.signal(signal.SIGTERM)
    unready = wait_for(lambda: server.status("/healthz/ready") == 503, 2, "readiness to fail")
    assert unready < 0.5
    # Still serving on new connections during the delay, asking clients to go elsewhere.
    while time.monotonic() - sent < DELAY - 0.4:
        response = fresh_get(server, "/fast")
        assert response.status_code == 200
        assert response.headers["connection"] == "close"
        time.sleep(0.1)
    assert server.wait_exit(10) == 0
    took = time.monotonic() - sent
    assert slow.join() == 200
    assert DELAY <= took < DELAY + 2.5 + 2.0, took
    assert "SIGKILL" not in server.output()


def test_second_sigterm_skips_the_rest_of_the_delay(started: list[ServerProcess]) -> None:
    """A second SIGTERM during a long delay stops at once."""
    server = start(started, "thread", delay=30)
    server.signal(signal.SIGTERM)
    wait_for(lambda: server.status("/healthz/ready") == 503, 2, "readiness to fail")
    sent = server.signal(signal.SIGTERM)
    assert server.wait_exit(10) == 0
    assert time.monotonic() - sent < 3


@pytest.mark.parametrize("kind", ["thread", "uvicorn"])
def test_shutdown_in_one_worker_drains_the_whole_instance(started: list[ServerProcess], kind: str) -> None:
    """POST /shutdown in any worker fails readiness in all of them; the master notices and stops after the delay."""
    server = start(started, kind)
    posted = time.monotonic()
    assert httpx.post(server.url + "/shutdown", timeout=5).status_code == 202
    # Readiness on new connections (spread over both workers) is 503 everywhere.
    assert {fresh_get(server, "/healthz/ready").status_code for _ in range(10)} == {503}
    assert server.wait_exit(10) == 0
    assert DELAY <= time.monotonic() - posted < DELAY + 3


@pytest.mark.parametrize(
    ("kind", "signum"), [("uvicorn", signal.SIGQUIT), ("uvicorn", signal.SIGINT), ("thread", signal.SIGQUIT)]
)
def test_int_and_quit_exit_quickly(started: list[ServerProcess], kind: str, signum: signal.Signals) -> None:
    """INT/QUIT stop at once even with a long request in flight: no wait for graceful_timeout and no SIGKILL (uvicorn-worker #2)."""
    server = start(started, kind, "--graceful-timeout", "20")
    Background(server, "/slow?seconds=15")
    wait_for(lambda: health(server)["in_flight"] == 1, 5, "the slow request to be in flight")
    sent = server.signal(signum)
    server.wait_exit(10)
    assert time.monotonic() - sent < 4
    assert "SIGKILL" not in server.output()


@pytest.mark.parametrize("kind", ["thread", "uvicorn"])
def test_hup_reload_under_load_keeps_readiness_and_loses_nothing(
    started: list[ServerProcess], kind: str
) -> None:
    """SIGHUP replaces every worker: readiness stays 200 and no request fails meanwhile."""
    server = start(started, kind)
    old_pids = {entry["pid"] for entry in health(server)["per_process"]}  # type: ignore[attr-defined]
    stop = threading.Event()
    failures: list[str] = []
    counts = {"ok": 0, "ready": 0}

    def load(path: str, key: str) -> None:
        for _ in range(2000):
            if stop.is_set():
                return
            try:
                status = fresh_get(server, path).status_code
            except httpx.HTTPError as exc:
                failures.append(f"{path}: {exc!r}")
                continue
            if status != 200:
                failures.append(f"{path}: HTTP {status}")
            else:
                counts[key] += 1

    threads = [
        threading.Thread(target=load, args=args, daemon=True)
        for args in [("/fast", "ok"), ("/fast", "ok"), ("/healthz/ready", "ready")]
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    server.signal(signal.SIGHUP)

    def replaced() -> bool:
        pids = {entry["pid"] for entry in health(server)["per_process"]}  # type: ignore[attr-defined]
        return len(pids) == 2 and not pids & old_pids

    wait_for(replaced, 20, "every worker to be replaced")
    time.sleep(1.0)  # load on the new workers too
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not failures, failures[:5]
    assert counts["ok"] >= 10 and counts["ready"] >= 5, counts
    assert health(server)["phase"] == "ready"


@pytest.mark.parametrize("kind", ["thread", "uvicorn"])
def test_max_requests_recycling_does_not_flip_readiness(started: list[ServerProcess], kind: str) -> None:
    """Workers that exit after --max-requests are replaced without the instance ever leaving READY."""
    server = start(started, kind, "--max-requests", "5")
    first = {entry["pid"] for entry in health(server)["per_process"]}  # type: ignore[attr-defined]
    for _ in range(30):
        assert fresh_get(server, "/fast").status_code == 200
        assert server.status("/healthz/ready") == 200

    def recycled() -> bool:
        pids = {entry["pid"] for entry in health(server)["per_process"]}  # type: ignore[attr-defined]
        return bool(pids - first)

    wait_for(recycled, 10, "a worker to be recycled")
    assert health(server)["phase"] == "ready"


def test_ttou_does_not_flip_readiness(started: list[ServerProcess]) -> None:
    """Scaling down with TTOU ends a worker, and the instance stays ready."""
    server = start(started, "uvicorn")
    server.signal(signal.SIGTTOU)
    wait_for(lambda: health(server)["processes"] == 1, 10, "one worker to be left")
    assert server.status("/healthz/ready") == 200 and health(server)["phase"] == "ready"


def test_sigkilled_worker_in_flight_count_is_freed_at_reap(started: list[ServerProcess]) -> None:
    """A worker SIGKILLed with requests in flight: the total drops to the survivors' true count once the master reaps it."""
    # 8 threads a worker: even with all four slow requests on one worker, /healthz finds a thread.
    server = start(started, "thread", "--threads", "8")
    slow = [Background(server, "/slow?seconds=4") for _ in range(4)]
    wait_for(lambda: health(server)["in_flight"] == 4, 5, "four requests in flight")
    per_process = health(server)["per_process"]
    victim = max(per_process, key=lambda entry: entry["in_flight"])  # type: ignore[arg-type, return-value, call-overload]
    survivors = sum(entry["in_flight"] for entry in per_process if entry is not victim)  # type: ignore[attr-defined, misc]
    import os

    os.kill(victim["pid"], signal.SIGKILL)  # type: ignore[call-overload]

    def freed() -> bool:
        figures = health(server)
        pids = {entry["pid"] for entry in figures["per_process"]}  # type: ignore[attr-defined]
        return victim["pid"] not in pids and figures["in_flight"] == survivors  # type: ignore[call-overload]

    wait_for(freed, 3, "the killed worker's slot to be freed")
    assert sum(result == 200 for result in (request.join() for request in slow)) == survivors


def test_unix_socket_keeps_serving_through_the_delay(started: list[ServerProcess], tmp_path: Path) -> None:
    """Bound to a UNIX socket, the master neither closes nor unlinks it until the drain delay is over."""
    path = tmp_path / "app.sock"
    server = ServerProcess(
        gunicorn_argv("thread", bind=f"unix:{path}"), env={"GRACEFUL_DRAIN_DELAY": f"{DELAY:g}"}
    )
    started.append(server)
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://app", timeout=5)
    with client:

        def ready() -> bool:
            try:
                return client.get("/healthz/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 15, "the UNIX socket to answer")
        sent = server.signal(signal.SIGTERM)
        wait_for(lambda: client.get("/healthz/ready").status_code == 503, 2, "readiness to fail")
        served = 0
        while time.monotonic() - sent < DELAY - 0.4:
            assert path.exists()
            assert client.get("/fast", headers={"connection": "close"}).status_code == 200
            served += 1
            time.sleep(0.1)
    assert served >= 5
    assert server.wait_exit(10) == 0
    assert not path.exists()  # unlinked by gunicorn's own stop, after the delay


def test_under_graceful_run_the_master_adds_no_second_delay(started: list[ServerProcess]) -> None:
    """With GRACEFUL_STATE from the supervisor, the supervisor owns the clock: one delay in all, then a prompt stop."""
    argv = [
        "{python}",
        "-m",
        "graceful.supervisor",
        "--drain-delay",
        f"{DELAY:g}",
        "--",
        *gunicorn_argv("uvicorn"),
    ]
    server = ServerProcess(argv, env={"GRACEFUL_DRAIN_DELAY": f"{DELAY:g}"})
    started.append(server)
    server.wait_ready()
    assert "supervisor owns the drain clock" in server.output()
    sent = server.signal(signal.SIGTERM)
    wait_for(lambda: server.status("/healthz/ready") == 503, 2, "readiness to fail")
    assert fresh_get(server, "/fast").status_code == 200
    assert server.wait_exit(10) == 0
    assert DELAY <= time.monotonic() - sent < DELAY + 2  # not two delays


@pytest.mark.parametrize("kind", ["thread", "uvicorn"])
def test_app_is_wrapped_once(started: list[ServerProcess], kind: str) -> None:
    """A plain WSGI app gets the middleware from the worker class; an already wrapped ASGI app is not wrapped twice."""
    server = start(started, kind)
    before = health(server)["requests"]
    for _ in range(4):
        assert fresh_get(server, "/fast").status_code == 200
    # Counted once each: another worker's figures reach the board within its watcher's 50 ms tick.
    expected = before + 4  # type: ignore[operator]
    wait_for(lambda: health(server)["requests"] == expected, 2, "four more requests on the board")
    time.sleep(0.2)  # four ticks more: nothing may be counted twice
    assert health(server)["requests"] == expected


# -- the worker finds the app's own middleware (in-process) -------------------------------------------


class KeepsApplication:
    """A wrapper that keeps the app as ``application``, as whitenoise.WhiteNoise does."""

    def __init__(self, application: Any) -> None:
        self.application = application

    def __call__(self, *args: Any) -> Any:
        return self.application(*args)


def wsgi_hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"hello"]


def test_wsgi_worker_starts_the_apps_own_middleware_instead_of_stacking_one(lifecycle: Lifecycle) -> None:
    """Behind WhiteNoise or a closure, the user's middleware is the one started: its startup check
    holds the gate, and a request is counted once (a second middleware in front counted it twice and
    opened the gate at once)."""
    lifecycle.settings = lifecycle.settings.replace(check_interval=0.05)
    db_up = threading.Event()
    inner = wsgi.GracefulMiddleware(wsgi_hello, lifecycle=lifecycle)
    inner.add_check("db", db_up.is_set, kind="startup")

    def closure(environ: dict[str, Any], start_response: Any) -> Any:
        return inner(environ, start_response)

    try:
        for app in (KeepsApplication(inner), closure):
            assert _wrap_wsgi(app) is app
        assert lifecycle.phase is Phase.STARTING
        body = closure({"PATH_INFO": "/x", "REQUEST_METHOD": "GET"}, lambda *args: None)
        assert (lifecycle.in_flight, lifecycle.snapshot()["requests"]) == (1, 1)
        body.close()
        assert lifecycle.in_flight == 0
        db_up.set()
        wait_for(lambda: lifecycle.phase is Phase.READY, 5, "the user's check to open the gate")
    finally:
        inner.stop()


def test_uvicorn_worker_does_not_stack_a_second_asgi_middleware(lifecycle: Lifecycle) -> None:
    """The ASGI worker finds the app's middleware the same ways; a plain app is wrapped."""

    def wrapped_already() -> None:
        inner = asgi.GracefulMiddleware(KeepsApplication(None), lifecycle=lifecycle)

        async def closure(*args: Any) -> None:
            await inner(*args)

        for app in (KeepsApplication(inner), closure):
            assert _wrap_asgi(app) is app

    wrapped_already()
    gc.collect()  # that middleware is gone: nothing is registered on the lifecycle any more
    plain = KeepsApplication(None)
    wrapped = _wrap_asgi(plain)
    assert isinstance(wrapped, asgi.GracefulMiddleware) and wrapped.app is plain


# -- warm-up and admission in the WSGI workers ---------------------------------------------------------


def test_wsgi_worker_starts_its_background_work_without_a_first_request(started: list[ServerProcess]) -> None:
    """The worker starts the gate, warm-up and agent when it has loaded the app: HAProxy's agent
    check is answered ("up NN%") before any HTTP request reached the instance."""
    agent_port = free_port()
    env = {
        "GRACEFUL_DRAIN_DELAY": "0.5",
        "GRACEFUL_MAX_CONCURRENCY": "4",
        "GRACEFUL_WARMUP_WINDOW": "30",
        "GRACEFUL_AGENT_PORT": str(agent_port),
    }
    server = ServerProcess(gunicorn_argv("thread"), env=env)
    started.append(server)
    wait_for(lambda: agent_says(agent_port).startswith("up "), 15, "the agent, before any request")
    server.wait_ready()
    assert health(server)["phase"] == "warming"


def test_wsgi_worker_caps_concurrency_across_its_threads(started: list[ServerProcess]) -> None:
    """GRACEFUL_MAX_CONCURRENCY=2 in one worker with 4 threads: 6 slow requests at once all succeed,
    and never more than 2 run in the app at once."""
    server = start(
        started, "thread", "-w", "1", delay=0.5, GRACEFUL_MAX_CONCURRENCY="2", GRACEFUL_QUEUE_TIMEOUT="10"
    )
    results: list[int | str] = []

    def fetch() -> None:
        try:
            results.append(fresh_get(server, "/slow?seconds=0.4", timeout=20).status_code)
        except httpx.HTTPError as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [200] * 6
    admission = health(server)["admission"]
    assert isinstance(admission, dict) and admission["highest_running"] == 2, admission
