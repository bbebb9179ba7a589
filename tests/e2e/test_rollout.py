"""Acceptance: a rolling update behind a balancer with propagation lag loses no request.

Every rollout test runs behind each balancer (``every_balancer``): HAProxy as kube-proxy (L4), nginx
as an ingress that reloads on every endpoint change, Envoy as a sidecar with EDS. Which of these
combinations run by default: tests/e2e/conftest.py.
"""

from __future__ import annotations

import pytest

from tests.e2e.cluster import BALANCERS, RolloutReport, Scenario, graceful_spec, run_rollout
from tests.e2e.load import CLIENT_KINDS, LoadConfig

# Runs a test once behind each balancer, as its argument `balancer`, marked with the balancer's name.
every_balancer = pytest.mark.parametrize(
    "balancer", [pytest.param(name, id=name, marks=getattr(pytest.mark, name)) for name in BALANCERS]
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120), every_balancer]

DRAIN_DELAY = 3.0
LAG = 2.0  # below the drain delay: the balancer forgets the pod before it stops listening
GRACE = 30.0  # > drain delay + drain timeout would matter only if a request hung
SLOW_SECONDS = 1.5  # the longest request the clients make
MARGIN = 1.0


def assert_lossless(
    report: RolloutReport,
    *,
    pods: int = 2,
    exit_statuses: tuple[int, ...] = (0,),
    client_kinds: tuple[str, ...] = tuple(CLIENT_KINDS),
) -> None:
    """Zero failures of every kind, real traffic from every client kind, clean and prompt exits."""
    print(report.summary())  # the figures, visible with `pytest -s`
    details = report.details()
    assert not report.errors, f"harness errors\n{details}"
    failures = report.failure_counts()
    assert all(count == 0 for count in failures.values()), f"failed requests {failures}\n{details}"
    assert report.requests > 200, f"too few requests to mean anything\n{details}"
    ok_by_client = report.load.by_client("ok")
    idle = [kind for kind in client_kinds if ok_by_client[kind] == 0]
    assert not idle, f"client kinds that made no successful request: {idle}\n{details}"
    assert len(report.pods) == pods, f"expected {pods} deleted pods\n{details}"
    bound = DRAIN_DELAY + SLOW_SECONDS + MARGIN
    for pod in report.pods:
        assert not pod.sigkilled, f"{pod.name} was SIGKILLed\n{details}"
        assert pod.exit_status in exit_statuses, f"{pod.name} exited with {pod.exit_status}\n{details}"
        assert pod.term_to_exit is not None and pod.term_to_exit <= bound, (
            f"{pod.name} took {pod.term_to_exit} s from SIGTERM to exit (bound {bound} s)\n{details}"
        )


@pytest.mark.core_scenario
def test_rollout_graceful_uvicorn_loses_nothing(balancer: str) -> None:
    """A rollout of `python -m graceful.uvicorn` pods with a 3 s drain delay and 2 s propagation lag loses no request."""
    scenario = Scenario(
        name="graceful",
        spec=graceful_spec(DRAIN_DELAY),
        lag=LAG,
        grace=GRACE,
        drain_delay=DRAIN_DELAY,
        load=LoadConfig(slow_seconds=SLOW_SECONDS),
        balancer=balancer,
    )
    assert_lossless(run_rollout(scenario))


def test_rollout_graceful_uvicorn_with_http_prestop_loses_nothing(balancer: str) -> None:
    """With Kubernetes' httpGet preStop calling GET /shutdown?wait=1, the rollout still loses no request."""
    scenario = Scenario(
        name="graceful-prestop-http",
        spec=graceful_spec(
            DRAIN_DELAY, pre_stop=("http", "/shutdown?wait=1"), GRACEFUL_SHUTDOWN_ALLOW_GET="1"
        ),
        lag=LAG,
        grace=GRACE,
        drain_delay=DRAIN_DELAY,
        load=LoadConfig(slow_seconds=SLOW_SECONDS),
        balancer=balancer,
    )
    report = run_rollout(scenario)
    assert_lossless(report)
    for pod in report.pods:
        # The hook really drained: it was accepted and held for the drain delay before SIGTERM.
        held = pod.pre_stop_seconds or 0.0
        assert pod.pre_stop.endswith("-> 202") and held >= DRAIN_DELAY - 0.2, (
            f"{pod.name}: preStop {pod.pre_stop} held {held:.2f} s\n{report.details()}"
        )
