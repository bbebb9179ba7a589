"""Acceptance (issue 13): gunicorn -w 3, requests held open in the app; /healthz/metrics reports the
instance's exact in-flight total, as the app itself counts it, from any worker."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server_process import ServerProcess, wait_for

pytestmark = pytest.mark.timeout(90)

WORKERS = 3
HELD = 7  # more than one worker's 4 threads can hold: at least two workers are busy


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    argv = [
        "{python}", "-m", "gunicorn",
        "-k", "graceful.gunicorn.ThreadWorker", "-w", str(WORKERS), "--threads", "4",
        # A worker whose 4 threads are busy stops accepting (gthread queues past its threads up to
        # worker_connections), so a scrape always lands on a worker that can answer it.
        "--worker-connections", "4",
        "-b", "127.0.0.1:{port}", "--no-control-socket",
        "tests.metrics_apps:app",
    ]  # fmt: skip
    running = ServerProcess(argv, env={"GRACEFUL_DRAIN_DELAY": "0", "GRACEFUL_TEST_HOLD_DIR": str(tmp_path)})
    try:
        running.wait_ready()
        yield running
    finally:
        (tmp_path / "release").touch()
        running.close()


def held_by_the_app(hold_dir: Path) -> collections.Counter[str]:
    """The app's own count: held requests per worker pid."""
    return collections.Counter(p.name.split("-")[0] for p in hold_dir.iterdir() if p.name != "release")


def test_in_flight_total_equals_what_the_app_counts(server: ServerProcess, tmp_path: Path) -> None:
    """With HELD requests held in the app across the workers, graceful_in_flight_requests is exactly
    that total, graceful_processes is 3, and a GracefulCollector in a worker yields the same."""
    statuses: list[int] = []

    def hold() -> None:
        statuses.append(httpx.get(server.url + "/hold", timeout=40).status_code)

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(HELD)]
    for thread in threads:
        thread.start()
    wait_for(lambda: sum(held_by_the_app(tmp_path).values()) == HELD, 10, f"{HELD} requests held in the app")
    per_worker = held_by_the_app(tmp_path)
    assert len(per_worker) >= 2, per_worker  # the total spans workers: one could hold only 4

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        reply = httpx.get(server.url + "/healthz/metrics", headers={"connection": "close"}, timeout=5)
        assert reply.status_code == 200
        return samples(reply.text)

    # Each worker flushes its count to the board every 50 ms: wait (bounded) for the last tick.
    wait_for(lambda: scrape()[("graceful_in_flight_requests", ())] == HELD, 5, "the board to show every hold")
    found = scrape()
    assert found[("graceful_in_flight_requests", ())] == sum(held_by_the_app(tmp_path).values()) == HELD
    assert found[("graceful_processes", ())] == WORKERS
    assert found[("graceful_phase", (("phase", "ready"),))] == 1
    assert found[("graceful_drain_started_timestamp_seconds", ())] == 0

    # The collector, registered in a private registry inside a worker, as a user's /metrics does.
    # Its own request is in flight (and counted) while it collects: one more than the held ones.
    collected = samples(httpx.get(server.url + "/collector", headers={"connection": "close"}, timeout=5).text)
    assert collected[("graceful_in_flight_requests", ())] == HELD + 1
    assert collected[("graceful_processes", ())] == WORKERS
    assert collected[("graceful_requests_total", ())] >= found[("graceful_requests_total", ())] >= HELD
    assert {key for key in collected} == {key for key in found}
    for key in found:
        if key[0] not in ("graceful_in_flight_requests", "graceful_requests_total"):
            assert collected[key] == found[key], key

    (tmp_path / "release").touch()
    for thread in threads:
        thread.join(40)
    assert statuses == [200] * HELD
    wait_for(lambda: scrape()[("graceful_in_flight_requests", ())] == 0, 5, "nothing in flight")
