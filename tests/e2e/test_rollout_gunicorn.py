"""Acceptance (issue 4): gunicorn rollouts behind a balancer with propagation lag lose no request.

gunicorn itself is PID 1 of each pod (no supervisor), or the child of graceful-run. The WSGI pods
serve every client kind but websockets (a WSGI app cannot); the stream clients read a WSGI
generator body.
"""

from __future__ import annotations

import pytest

from tests.e2e.cluster import APP as ASGI_APP
from tests.e2e.cluster import (
    GUNICORN_THREAD,
    GUNICORN_UVICORN,
    WSGI_APP,
    Scenario,
    gunicorn_spec,
    run_rollout,
)
from tests.e2e.load import CLIENT_KINDS, LoadConfig
from tests.e2e.test_rollout import DRAIN_DELAY, GRACE, LAG, SLOW_SECONDS, assert_lossless, every_balancer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120), every_balancer]

WSGI_LOAD = LoadConfig(slow_seconds=SLOW_SECONDS, websocket=0)


# WSGI pods serve no websockets: every other client kind must still succeed.
WSGI_CLIENTS = tuple(kind for kind in CLIENT_KINDS if kind != "websocket")
# gunicorn as PID 1 runs behind every balancer by default, under graceful-run behind HAProxy only.
SUPERVISED = pytest.mark.parametrize(
    "supervised",
    [
        pytest.param(False, id="gunicorn-pid1", marks=pytest.mark.core_scenario),
        pytest.param(True, id="graceful-run"),
    ],
)


@SUPERVISED
def test_rollout_gunicorn_uvicorn_worker_loses_nothing(supervised: bool, balancer: str) -> None:
    """`gunicorn -k graceful.gunicorn.UvicornWorker -w 2` pods, 3 s drain delay, 2 s lag: no failed request, no SIGKILL."""
    scenario = Scenario(
        name="gunicorn-uvicorn" + ("-supervised" if supervised else ""),
        spec=gunicorn_spec(GUNICORN_UVICORN, ASGI_APP, drain_delay=DRAIN_DELAY, supervised=supervised),
        lag=LAG,
        grace=GRACE,
        drain_delay=DRAIN_DELAY,
        load=LoadConfig(slow_seconds=SLOW_SECONDS),
        balancer=balancer,
    )
    assert_lossless(run_rollout(scenario))


@SUPERVISED
def test_rollout_gunicorn_thread_worker_loses_nothing(supervised: bool, balancer: str) -> None:
    """`gunicorn -k graceful.gunicorn.ThreadWorker -w 2 --threads 4` (Flask) pods: no failed request, no SIGKILL."""
    scenario = Scenario(
        name="gunicorn-thread" + ("-supervised" if supervised else ""),
        spec=gunicorn_spec(GUNICORN_THREAD, WSGI_APP, drain_delay=DRAIN_DELAY, supervised=supervised),
        lag=LAG,
        grace=GRACE,
        drain_delay=DRAIN_DELAY,
        load=WSGI_LOAD,
        balancer=balancer,
    )
    assert_lossless(run_rollout(scenario), client_kinds=WSGI_CLIENTS)
