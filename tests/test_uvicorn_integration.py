"""python -m graceful.uvicorn, and plain uvicorn with only the middleware, as real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.server_process import ROOT, ServerProcess, wait_for

GRACEFUL_UVICORN = [
    "{python}",
    "-m",
    "graceful.uvicorn",
    "examples.starlette_app:app",
    "--port",
    "{port}",
    "--host",
    "127.0.0.1",
]
PLAIN_UVICORN = [
    "{python}",
    "-m",
    "uvicorn",
    "examples.starlette_app:app",
    "--port",
    "{port}",
    "--host",
    "127.0.0.1",
]


@pytest.fixture
def start() -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    def make(argv: list[str], env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(argv, env)
        started.append(server)
        server.wait_ready()
        return server

    yield make  # type: ignore[misc]
    for server in started:
        server.close()


def signal_and_time_503(server: ServerProcess, signum: int = signal.SIGTERM) -> float:
    """Send ``signum``; seconds until the first readiness answer that is 503 (polled back to back).

    The polling client is made and connected before the signal, so its set-up is not measured.
    """
    with httpx.Client(base_url=server.url, timeout=1.0) as client:
        assert client.get("/healthz/ready").status_code == 200
        sent = server.signal(signum)
        deadline = sent + 5.0
        while time.monotonic() < deadline:
            if client.get("/healthz/ready").status_code == 503:
                return time.monotonic() - sent
    raise AssertionError("readiness never turned 503")


@pytest.mark.parametrize(
    "argv", [GRACEFUL_UVICORN, PLAIN_UVICORN], ids=["graceful.uvicorn", "plain-uvicorn-chained"]
)
def test_sigterm_drains_then_stops(start, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    """On SIGTERM readiness turns 503 within 50 ms, liveness and routes stay 200 through the delay,
    a request in flight when the listener closes still completes, and the process exits 0."""
    server = start(argv, {"GRACEFUL_DRAIN_DELAY": "1.5"})
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        assert client.get("/fast").status_code == 200
        sent = time.monotonic()
        assert signal_and_time_503(server) < 0.05
        assert client.get("/healthz/live").status_code == 200
        fast = client.get("/fast")
        assert fast.status_code == 200 and fast.headers["connection"] == "close"
        # A long request begun in the delay outlives it: the stop waits for it.
        slow_result: list[int] = []
        slow = threading.Thread(
            target=lambda: slow_result.append(client.get("/slow?seconds=1.5").status_code)
        )
        slow.start()
        while time.monotonic() - sent < 1.2:
            assert client.get("/fast").status_code == 200, "still served during the delay"
            time.sleep(0.05)
        wait_for(lambda: server.status("/fast") is None, 3.0, "the listener to close after the delay")
        slow.join(5)
        assert slow_result == [200]
    status = server.wait_exit(5)
    elapsed = time.monotonic() - sent
    expected_status = 0 if argv is GRACEFUL_UVICORN else -signal.SIGTERM  # plain uvicorn re-raises
    assert status == expected_status, server.output()
    assert 1.5 <= elapsed < 1.5 + 1.5 + 1.5, elapsed


def test_second_sigterm_skips_the_rest_of_the_delay(start) -> None:  # type: ignore[no-untyped-def]
    """A second SIGTERM during a long delay stops the server at once."""
    server = start(GRACEFUL_UVICORN, {"GRACEFUL_DRAIN_DELAY": "60"})
    sent = time.monotonic()
    signal_and_time_503(server)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(5) == 0
    assert time.monotonic() - sent < 5


def test_sigint_stops_without_the_delay(start) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C (SIGINT) in a terminal stops at once, still finishing in-flight work."""
    server = start(GRACEFUL_UVICORN, {"GRACEFUL_DRAIN_DELAY": "60"})
    sent = server.signal(signal.SIGINT)
    assert server.wait_exit(5) == 0
    assert time.monotonic() - sent < 5


def test_drain_timeout_bounds_the_stop(start) -> None:  # type: ignore[no-untyped-def]
    """A request longer than the drain timeout is cut so the process exits on time."""
    server = start(GRACEFUL_UVICORN, {"GRACEFUL_DRAIN_DELAY": "0.5", "GRACEFUL_DRAIN_TIMEOUT": "1"})
    hung = threading.Thread(target=lambda: server.status("/slow?seconds=30"), daemon=True)
    hung.start()
    wait_for(lambda: server.get("/healthz").json()["in_flight"] == 1, 5, "the slow request to start")
    sent = server.signal(signal.SIGTERM)
    server.wait_exit(10)
    assert time.monotonic() - sent < 0.5 + 1 + 2


def test_shutdown_endpoint_drains_like_sigterm(start) -> None:  # type: ignore[no-untyped-def]
    """POST /shutdown from loopback starts the same drain: readiness 503, served, exit after the delay."""
    server = start(GRACEFUL_UVICORN, {"GRACEFUL_DRAIN_DELAY": "1"})
    started = time.monotonic()
    response = httpx.post(server.url + "/shutdown", timeout=5)
    assert response.status_code == 202 and response.json()["drain_started"] is True
    assert server.status("/healthz/ready") == 503
    assert server.status("/fast") == 200
    assert server.wait_exit(6) == 0
    assert time.monotonic() - started >= 1.0


def test_shutdown_refused_changes_nothing(start) -> None:  # type: ignore[no-untyped-def]
    """With loopback trust off and a token set, a caller without the token is refused; ready stays 200."""
    token = "0123456789abcdef-token"
    server = start(
        GRACEFUL_UVICORN,
        {
            "GRACEFUL_SHUTDOWN_TOKEN": token,
            "GRACEFUL_SHUTDOWN_TRUST_LOOPBACK": "0",
            "GRACEFUL_DRAIN_DELAY": "0.5",
        },
    )
    assert httpx.post(server.url + "/shutdown", timeout=5).status_code == 403
    assert (
        httpx.post(server.url + "/shutdown", headers={"authorization": "Bearer nope"}, timeout=5).status_code
        == 403
    )
    assert server.status("/healthz/ready") == 200
    assert server.get("/healthz").json()["phase"] == "ready"
    ok = httpx.post(server.url + "/shutdown", headers={"authorization": f"Bearer {token}"}, timeout=5)
    assert ok.status_code == 202
    assert server.wait_exit(6) == 0


def test_probes_are_not_in_the_access_log(start) -> None:  # type: ignore[no-untyped-def]
    """Probe requests stay out of uvicorn's access log; ordinary requests are logged."""
    server = start(GRACEFUL_UVICORN, {"GRACEFUL_DRAIN_DELAY": "0"})
    for _ in range(3):
        server.get("/healthz/ready")
        server.get("/healthz/live")
    server.get("/fast")
    server.signal(signal.SIGTERM)
    server.wait_exit(5)
    output = server.output()
    assert '"GET /fast HTTP/1.1" 200' in output
    assert "/healthz" not in output


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "GRACEFUL_DRAIN_DELAY='abc' is not a number of seconds; allowed: 0 to 3600"),
        ("-1", "GRACEFUL_DRAIN_DELAY='-1' is out of range; allowed: 0 to 3600 seconds"),
    ],
)
@pytest.mark.parametrize("argv", [GRACEFUL_UVICORN, PLAIN_UVICORN], ids=["graceful.uvicorn", "plain-uvicorn"])
def test_bad_drain_delay_fails_at_startup(argv: list[str], value: str, message: str) -> None:
    """A bad GRACEFUL_DRAIN_DELAY stops the server from starting, naming the variable and range."""
    command = [arg.format(port="0", python=sys.executable) for arg in argv]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env={"GRACEFUL_DRAIN_DELAY": value, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert message in result.stderr
    if argv is GRACEFUL_UVICORN:
        assert result.returncode == 2 and "usage:" in result.stderr


def test_bad_command_line_exits_2_with_usage() -> None:
    """A missing option value is a usage error: exit 2 and the usage line."""
    result = subprocess.run(
        [sys.executable, "-m", "graceful.uvicorn", "examples.starlette_app:app", "--drain-delay"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--drain-delay needs a value" in result.stderr and "usage:" in result.stderr


@pytest.mark.parametrize("option", ["--workers=2", "--reload"])
def test_multiprocess_options_are_refused(option: str) -> None:
    """--workers and --reload would bypass the drain: refused with exit 2 and usage."""
    result = subprocess.run(
        [sys.executable, "-m", "graceful.uvicorn", "examples.starlette_app:app", option],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "not supported" in result.stderr and "usage:" in result.stderr


def test_run_refuses_workers() -> None:
    """graceful.uvicorn.run serves one process and says so."""
    from graceful.uvicorn import run

    with pytest.raises(ValueError, match="one process"):
        run("examples.starlette_app:app", workers=2)
