"""The drain notice on the wire (issue 12), from real servers: while the instance drains, every
response (the app's, the probes', a shed 503) carries ``graceful-drain: <seconds of drain delay
left>``, and with ``envoy_immediate_fail`` also ``x-envoy-immediate-health-check-fail: true``;
while it serves, neither.

In-process servers (uvicorn, waitress, wsgiref, werkzeug in a thread) run on a fake clock, so the
count-down is exact; the black-box runs (``python -m graceful.uvicorn`` and gunicorn's ThreadWorker
on SIGTERM) use the real one.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from graceful import Lifecycle, Settings
from graceful._wire import DRAIN_HEADER, ENVOY_IMMEDIATE_FAIL_HEADER
from graceful.asgi import GracefulMiddleware as AsgiMiddleware
from graceful.wsgi import GracefulMiddleware as WsgiMiddleware
from tests.apps import starlette_app
from tests.conftest import free_port
from tests.server_process import ROOT, ServerProcess, wait_for
from tests.test_wsgi_servers import SERVERS, hello, waitress_server

pytestmark = pytest.mark.timeout(60)

DRAIN_DELAY = 30.0
START = 1000.0
#: (seconds since the drain began, the header expected then): rounded up, 0 from the delay's end.
COUNTDOWN = [(0.0, 30), (0.5, 30), (10.2, 20), (29.9, 1), (30.0, 0), (45.0, 0)]


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def make_lifecycle(clock: FakeClock, **settings: Any) -> Lifecycle:
    return Lifecycle(
        Settings(drain_delay=DRAIN_DELAY, drain_timeout=60, chain_server_signals=False, **settings),
        clock=clock,
    )


def notice(response: httpx.Response) -> tuple[list[str], list[str]]:
    """The response's graceful-drain and Envoy immediate-fail values (each header's every copy)."""
    return response.headers.get_list(DRAIN_HEADER), response.headers.get_list(ENVOY_IMMEDIATE_FAIL_HEADER)


def get(url: str) -> httpx.Response:
    # A new connection each time: while draining the server closes every one after its response.
    return httpx.get(url, timeout=5, trust_env=False)


@contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """A real uvicorn (h11, lifespan on) in a thread on 127.0.0.1; yields its URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, "uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def assert_countdown(url: str, lifecycle: Lifecycle, clock: FakeClock, envoy: bool) -> None:
    """No notice while serving; from the drain on, the same whole seconds left on the app's
    response and on readiness' 503, counting down to 0, and 0 still once the server stops."""
    for path in ("/ok", "/healthz/ready", "/healthz/live"):
        response = get(url + path)
        assert response.status_code == 200, path
        assert notice(response) == ([], []), path
    lifecycle.begin_drain("test")
    envoy_value = ["true"] if envoy else []
    for elapsed, expected in COUNTDOWN:
        clock.now = START + elapsed
        app, ready = get(url + "/ok"), get(url + "/healthz/ready")
        assert (app.status_code, ready.status_code) == (200, 503), elapsed
        assert notice(app) == ([str(expected)], envoy_value), elapsed
        assert notice(ready) == ([str(expected)], envoy_value), elapsed
    clock.now = START + 1.0
    lifecycle.begin_stop()  # the delay was cut short (a second SIGTERM): nothing left of it
    assert notice(get(url + "/ok")) == (["0"], envoy_value)


@pytest.mark.parametrize("envoy", [False, True], ids=["plain", "envoy_immediate_fail"])
def test_asgi_notice_counts_down_while_draining(envoy: bool) -> None:
    """uvicorn: no notice while serving; graceful-drain counts down on every response while
    draining; Envoy's header only with the setting on."""
    clock = FakeClock()
    lifecycle = make_lifecycle(clock, envoy_immediate_fail=envoy)
    try:
        with uvicorn_server(AsgiMiddleware(starlette_app, lifecycle=lifecycle)) as url:
            assert_countdown(url, lifecycle, clock, envoy)
    finally:
        lifecycle.close()


def test_a_process_stopping_alone_closes_connections_without_a_notice() -> None:
    """uvicorn's linger (max_requests, TTOU: this process stops, the instance serves on) sends
    Connection: close, but no drain notice: the instance is not draining."""
    clock = FakeClock()
    lifecycle = make_lifecycle(clock, envoy_immediate_fail=True)
    try:
        with uvicorn_server(AsgiMiddleware(starlette_app, lifecycle=lifecycle)) as url:
            assert get(url + "/healthz/ready").status_code == 200
            lifecycle.terminating[0] = True  # what graceful.uvicorn.linger sets
            response = get(url + "/ok")
            assert response.headers["connection"] == "close"
            assert notice(response) == ([], [])
    finally:
        lifecycle.close()


@pytest.mark.parametrize("envoy", [False, True], ids=["plain", "envoy_immediate_fail"])
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_wsgi_notice_counts_down_while_draining(server: str, envoy: bool) -> None:
    """waitress, wsgiref and werkzeug (which treat an app's Connection header three different
    ways) all pass the notice on, on the app's responses and on readiness' 503."""
    clock = FakeClock()
    lifecycle = make_lifecycle(clock, envoy_immediate_fail=envoy)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return hello(environ, start_response)  # any path: "/ok" included

    try:
        with SERVERS[server](WsgiMiddleware(app, lifecycle=lifecycle)) as port:
            assert_countdown(f"http://127.0.0.1:{port}", lifecycle, clock, envoy)
    finally:
        lifecycle.close()


def test_asgi_shed_reply_while_draining_carries_the_notice() -> None:
    """A request over max_concurrency during the drain is shed with 503 + graceful-shed, and the
    notice, like every other response."""
    clock = FakeClock()
    lifecycle = make_lifecycle(clock, envoy_immediate_fail=True, max_concurrency=1, queue_size=0)
    try:
        with uvicorn_server(AsgiMiddleware(starlette_app, lifecycle=lifecycle)) as url:
            assert get(url + "/healthz/ready").status_code == 200
            lifecycle.begin_drain("test")
            clock.now = START + 12.5
            with httpx.Client(timeout=10, trust_env=False) as holder:
                held = threading.Thread(target=holder.get, args=(url + "/hang?seconds=1",), daemon=True)
                held.start()
                wait_for(lambda: lifecycle.local_in_flight == 1, 5, "the held request to start")
                shed = get(url + "/ok")
                held.join(10)
            assert shed.status_code == 503 and shed.headers["graceful-shed"] == "1"
            assert notice(shed) == (["18"], ["true"])
    finally:
        lifecycle.close()


def test_wsgi_shed_reply_while_draining_carries_the_notice() -> None:
    """The same under waitress: the shed 503 of the drain says how long the instance still serves."""
    clock = FakeClock()
    lifecycle = make_lifecycle(clock, max_concurrency=1, queue_size=0)
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") == "/hold":
            release.wait(10)
        return hello(environ, start_response)

    try:
        with waitress_server(WsgiMiddleware(app, lifecycle=lifecycle)) as port:
            url = f"http://127.0.0.1:{port}"
            assert get(url + "/healthz/ready").status_code == 200
            lifecycle.begin_drain("test")
            clock.now = START + 0.25
            held = threading.Thread(target=get, args=(url + "/hold",), daemon=True)
            held.start()
            wait_for(lambda: lifecycle.local_in_flight == 1, 5, "the held request to start")
            shed = get(url + "/ok")
            release.set()
            held.join(10)
            assert shed.status_code == 503 and shed.headers["graceful-shed"] == "1"
            assert notice(shed) == (["30"], [])
    finally:
        release.set()
        lifecycle.close()


# -- black box: real processes, real SIGTERM, real clock ------------------------------------------

GRACEFUL_UVICORN = [
    "{python}", "-m", "graceful.uvicorn", "examples.starlette_app:app", "--port", "{port}",
    "--host", "127.0.0.1",
]  # fmt: skip
GUNICORN_THREADS = [
    "{python}", "-m", "gunicorn", "-k", "graceful.gunicorn.ThreadWorker", "-w", "1", "--threads", "4",
    "-b", "127.0.0.1:{port}", "--no-control-socket", "tests.test_wsgi_apps:app",
]  # fmt: skip


@pytest.mark.parametrize("argv", [GRACEFUL_UVICORN, GUNICORN_THREADS], ids=["graceful.uvicorn", "gunicorn"])
def test_sigterm_notice_counts_down_in_real_time(argv: list[str], started: list[ServerProcess]) -> None:
    """After SIGTERM with a 3 s delay: every response carries graceful-drain, starting at 3 and
    never growing, down to 1 or less before the server stops; Envoy's header from the env setting."""
    server = ServerProcess(argv, {"GRACEFUL_DRAIN_DELAY": "3", "GRACEFUL_ENVOY_IMMEDIATE_FAIL": "1"})
    started.append(server)
    server.wait_ready()
    assert notice(server.get("/")) == ([], [])
    sent = server.signal()
    wait_for(lambda: server.status("/healthz/ready") == 503, 5, "readiness to fail")
    seen: list[int] = []
    for _ in range(200):  # bounded: the drain delay is 3 s, each round ~50 ms
        if time.monotonic() - sent > 2.5:
            break
        app, ready = server.get("/"), server.get("/healthz/ready")
        assert (app.status_code, ready.status_code) == (200, 503)
        for response in (app, ready):
            drain, envoy = notice(response)
            assert envoy == ["true"] and len(drain) == 1
            seen.append(int(drain[0]))
        time.sleep(0.05)
    assert seen[0] == 3, seen
    assert seen == sorted(seen, reverse=True), seen  # never growing
    assert seen[-1] <= 1 and min(seen) >= 0, seen
    assert server.wait_exit(15) == 0


def test_bad_envoy_immediate_fail_fails_at_startup() -> None:
    """GRACEFUL_ENVOY_IMMEDIATE_FAIL=maybe stops graceful.uvicorn before it serves, naming it."""
    command = [arg.format(port="0", python=sys.executable) for arg in GRACEFUL_UVICORN]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env={"GRACEFUL_ENVOY_IMMEDIATE_FAIL": "maybe", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "GRACEFUL_ENVOY_IMMEDIATE_FAIL='maybe' is not a boolean; allowed: True or False" in result.stderr
