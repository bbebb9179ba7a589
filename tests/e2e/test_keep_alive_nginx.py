"""Steady state behind nginx's upstream pool (keepalive_timeout 60 s): graceful's keep_alive loses
nothing where a stock server's shorter keep-alive timeout produces 502s.

uvicorn closes an idle connection after 5 s, nginx keeps it in its pool for 60 s: a request nginx
sends on it just as uvicorn closes it is lost (a 502, no retry with ``proxy_next_upstream off``).
graceful's integrations keep idle connections for ``keep_alive`` (75 s), longer than the pool, so
nginx always closes first. The clients aim their idle gaps at the instants where a close happens
(tests/e2e/keepalive.py): the stock server's 5 s, and nginx's own 60 s in the long run.

The long run is opt-in (``soak`` marker, excluded by default)::

    .venv/bin/python -m pytest tests/e2e/test_keep_alive_nginx.py -m soak -s
    GRACEFUL_SOAK_MINUTES=3 .venv/bin/python -m pytest tests/e2e/test_keep_alive_nginx.py -m soak -s
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.keepalive import UPSTREAM_KEEPALIVE_TIMEOUT, IdleProxy, IdleResult, run_idle_clients
from tests.server_process import ServerProcess

APP = "examples.starlette_app:app"
STOCK_UVICORN = ["{python}", "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", "{port}"]
GRACEFUL_UVICORN = ["{python}", "-m", "graceful.uvicorn", APP, "--host", "127.0.0.1", "--port", "{port}"]
GUNICORN = ["{python}", "-m", "gunicorn", "-b", "127.0.0.1:{port}", "--no-control-socket", "-w", "1"]
GRACEFUL_GUNICORN_UVICORN = [*GUNICORN, "-k", "graceful.gunicorn.UvicornWorker", APP]
GRACEFUL_GUNICORN_THREAD = [
    *GUNICORN, "-k", "graceful.gunicorn.ThreadWorker", "--threads", "4", "examples.flask_app:app",
]  # fmt: skip
STOCK_UVICORN_KEEP_ALIVE = 5.0
POOLS = 20  # clients, each with its own pool connection


@pytest.fixture(autouse=True)
def needs_nginx() -> None:
    if shutil.which("nginx") is None:
        reason = "the keep-alive tests need nginx (Debian package nginx, installed by bin/setup)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


class Setup:
    """A server (defaults only: no keep-alive option given) behind its own IdleProxy."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        # No chained signals for stock uvicorn: it is the baseline as shipped.
        self.server = ServerProcess(argv, {"GRACEFUL_CHAIN_SERVER_SIGNALS": "0", "GRACEFUL_DRAIN_DELAY": "0"})
        self.server.wait_ready()
        self.proxy = IdleProxy(workdir / name, self.server.port, POOLS)
        self.proxy.start()
        self.result = IdleResult()

    def run(self, seconds: float, aims: list[float]) -> None:
        self.result = run_idle_clients(self.proxy, seconds=seconds, aims=aims)

    def close(self) -> None:
        self.proxy.stop()
        self.server.close()

    def summary(self) -> str:
        outcomes = ", ".join(f"{kind}={count}" for kind, count in sorted(self.result.outcomes.items()))
        return (
            f"{self.name}: {self.result.requests} requests: {outcomes}\n  nginx: {self.proxy.error_tail(3)}"
        )


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="graceful-keepalive-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_side_by_side(
    workdir: Path, shapes: dict[str, tuple[list[str], list[float]]], seconds: float
) -> dict[str, Setup]:
    """Every shape at once (idle traffic costs little CPU), each with its own nginx and clients."""
    setups: dict[str, Setup] = {}
    try:
        for name, (argv, _aims) in shapes.items():
            setups[name] = Setup(name, argv, workdir)
        threads = [
            threading.Thread(target=setups[name].run, args=(seconds, aims), daemon=True)
            for name, (_argv, aims) in shapes.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 60)
        for setup in setups.values():
            print(setup.summary())
        return setups
    finally:
        for setup in setups.values():
            setup.close()


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_stock_keep_alive_gets_502s_behind_nginx_and_graceful_none(workdir: Path) -> None:
    """Idle gaps at uvicorn's 5 s keep-alive timeout: stock uvicorn gets 502s through nginx's pool
    within 40 s (the test can tell), `python -m graceful.uvicorn` with its defaults none."""
    aims = [STOCK_UVICORN_KEEP_ALIVE]
    setups = run_side_by_side(
        workdir, {"stock-uvicorn": (STOCK_UVICORN, aims), "graceful-uvicorn": (GRACEFUL_UVICORN, aims)}, 40
    )
    stock, graceful = setups["stock-uvicorn"].result, setups["graceful-uvicorn"].result
    assert graceful.requests >= POOLS * 5 and graceful.failures == 0, setups["graceful-uvicorn"].summary()
    assert stock.outcomes["status 502"] > 0, (
        f"the stock baseline lost nothing: {setups['stock-uvicorn'].summary()}"
    )


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_idle_heavy_traffic_for_ten_minutes_loses_nothing_behind_nginx(workdir: Path) -> None:
    """10 minutes (GRACEFUL_SOAK_MINUTES) of idle clients through nginx (pool idle timeout 60 s):
    graceful's uvicorn and gunicorn integrations with their defaults lose nothing, with gaps at the
    stock 5 s and at nginx's own 60 s close; stock uvicorn beside them gets 502s."""
    seconds = float(os.environ.get("GRACEFUL_SOAK_MINUTES", "10")) * 60
    aims = [STOCK_UVICORN_KEEP_ALIVE, float(UPSTREAM_KEEPALIVE_TIMEOUT)]
    graceful_shapes = {
        "graceful-uvicorn": (GRACEFUL_UVICORN, aims),
        "graceful-gunicorn-uvicorn": (GRACEFUL_GUNICORN_UVICORN, aims),
        "graceful-gunicorn-thread": (GRACEFUL_GUNICORN_THREAD, aims),
    }
    setups = run_side_by_side(
        workdir, {"stock-uvicorn": (STOCK_UVICORN, [STOCK_UVICORN_KEEP_ALIVE]), **graceful_shapes}, seconds
    )
    for name in graceful_shapes:
        result = setups[name].result
        assert result.requests >= POOLS * 5 and result.failures == 0, setups[name].summary()
    assert setups["stock-uvicorn"].result.outcomes["status 502"] > 0, setups["stock-uvicorn"].summary()
