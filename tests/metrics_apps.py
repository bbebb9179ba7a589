"""Not tests: the WSGI app tests/test_metrics_gunicorn.py serves with real gunicorn workers.

The app counts its own in-flight requests, independently of graceful: each held request is a
file ``<pid>-<n>`` in ``GRACEFUL_TEST_HOLD_DIR`` from the moment the app starts it until it
returns, so the test knows the true total (and per worker) from outside.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

_numbers = itertools.count()
HOLD_LIMIT = 30.0  # seconds a held request waits for the release file at most


def app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """/hold: stay in flight until ``<hold dir>/release`` exists; /collector: graceful's series
    through a GracefulCollector in a private registry (as a user's own /metrics serves them)."""
    path = env.get("PATH_INFO", "")
    if path == "/hold":
        hold_dir = Path(os.environ["GRACEFUL_TEST_HOLD_DIR"])
        marker = hold_dir / f"{os.getpid()}-{next(_numbers)}"
        marker.touch()
        try:
            deadline = time.monotonic() + HOLD_LIMIT
            while not (hold_dir / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            marker.unlink()
        body = b"released\n"
    elif path == "/collector":
        from prometheus_client.exposition import generate_latest
        from prometheus_client.registry import CollectorRegistry

        from graceful.metrics import GracefulCollector

        registry = CollectorRegistry()
        registry.register(GracefulCollector())  # the worker's lifecycle: get_lifecycle()
        body = generate_latest(registry)
    else:
        body = f"{path} from {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
