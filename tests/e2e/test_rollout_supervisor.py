"""Acceptance (issue 3): rollouts with graceful-run as the pod's PID 1 lose no request."""

from __future__ import annotations

import shlex
import sys

import pytest

from tests.e2e.cluster import APP, LOCALHOST, REPO_ROOT, PodSpec, Scenario, run_rollout
from tests.e2e.load import LoadConfig
from tests.e2e.test_rollout import DRAIN_DELAY, GRACE, LAG, SLOW_SECONDS, assert_lossless, every_balancer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120), every_balancer]

GRACEFUL_RUN = [
    str(REPO_ROOT / "bin" / "graceful-run"),
    "--drain-delay",
    f"{DRAIN_DELAY:g}",
    "--drain-timeout",
    "20",
]
UVICORN = [sys.executable, "-m", "uvicorn", APP, "--host", LOCALHOST, "--port", "{port}"]
# graceful-run finds this interpreter (with graceful and uvicorn installed) through GRACEFUL_PYTHON.
ENV = {"GRACEFUL_PYTHON": sys.executable}
# Plain uvicorn re-raises SIGTERM after its graceful shutdown, so it dies "of" SIGTERM and
# graceful-run reports 128 + 15, as tini would: the status of a clean stop of that server.
UVICORN_STOPPED = 143


def rollout(name: str, argv: list[str], balancer: str) -> None:
    scenario = Scenario(
        name=name,
        spec=PodSpec(argv=argv, env=ENV),
        lag=LAG,
        grace=GRACE,
        drain_delay=DRAIN_DELAY,
        load=LoadConfig(slow_seconds=SLOW_SECONDS),
        balancer=balancer,
    )
    assert_lossless(run_rollout(scenario), exit_statuses=(UVICORN_STOPPED,))


@pytest.mark.core_scenario
def test_rollout_graceful_run_uvicorn_loses_nothing(balancer: str) -> None:
    """`graceful-run -- uvicorn app` as PID 1: the supervisor's drain clock makes the rollout lossless."""
    rollout("graceful-run-uvicorn", [*GRACEFUL_RUN, "--", *UVICORN], balancer)


def test_rollout_graceful_run_shell_wrapper_loses_nothing(balancer: str) -> None:
    """`graceful-run -- sh -c 'prepare; uvicorn app'` (no exec): the group still drains, nothing is lost."""
    script = "echo preparing; " + shlex.join(UVICORN)  # no exec: sh stays the child, uvicorn its child
    rollout("graceful-run-sh-c", [*GRACEFUL_RUN, "--", "sh", "-c", script], balancer)
