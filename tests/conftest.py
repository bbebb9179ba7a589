"""Shared fixtures: a fresh lifecycle per test, free ports, and the anyio backend."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

import graceful
from graceful import Lifecycle, Settings

if TYPE_CHECKING:  # tests.server_process imports this module (free_port)
    from tests.server_process import ServerProcess


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def runs() -> Iterator[list[Any]]:
    """graceful-run processes a test started (tests.test_supervisor.Run): killed if still running."""
    made: list[Any] = []
    yield made
    for run in made:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait(5)


@pytest.fixture
def started() -> Iterator[list[ServerProcess]]:
    """Server processes a test starts; each closed (bounded, its whole process group) at the end."""
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        server.close()


@pytest.fixture
def lifecycle() -> Iterator[Lifecycle]:
    """A private lifecycle on its own anonymous board, set as the process default for the test."""
    made = Lifecycle(Settings(drain_delay=0.3, drain_timeout=2.0))
    graceful.set_lifecycle(made)
    try:
        yield made
    finally:
        graceful.set_lifecycle(None)
        made.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def agent_says(port: int) -> str:
    """The HAProxy agent responder's one-line answer on 127.0.0.1:``port``; "" while it is not listening.

    Servers bind the agent on a background loop, so a first HTTP answer can come before it listens.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            return sock.recv(100).decode().strip()
    except ConnectionRefusedError:
        return ""
