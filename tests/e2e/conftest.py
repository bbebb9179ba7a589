"""Fixtures for the rollout tests: which balancer each runs behind, and what the machine must have.

Every rollout test takes a ``balancer`` argument and runs behind each of ``BALANCERS`` (the module
mark ``every_balancer`` of test_rollout.py). By default the full set runs behind HAProxy, and the scenarios marked
``core_scenario`` behind nginx and Envoy too; the other combinations carry the ``extra_balancers``
mark, which pyproject's addopts deselects (``-m extra_balancers`` runs them, ``-m e2e`` everything;
docs/testing.md). Each run also carries its balancer's name as a mark: ``-m nginx``.

Skip only where a piece cannot be had. CI installs HAProxy and nginx (bin/setup) and runs as root,
so there these tests must run: with ``CI`` set in the environment a missing piece fails the test
instead of skipping it.
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.cluster import BALANCERS, OTHER_BALANCERS, missing_requirements


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: it must see the marks added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        balancer = callspec.params.get("balancer") if callspec is not None else None
        if balancer not in (None, "haproxy") and item.get_closest_marker("core_scenario") is None:
            item.add_marker(pytest.mark.extra_balancers)


def _balancer_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "balancer" in callspec.params:
        return str(callspec.params["balancer"])
    # A test of one balancer alone (test_nginx.py) says which by its mark (kube-proxy: kube_proxy).
    # Its own mark first: a module-wide `haproxy` mark may sit beside it.
    names = (*OTHER_BALANCERS, *BALANCERS)
    return next((name for name in names if item.get_closest_marker(name.replace("-", "_"))), "haproxy")


@pytest.fixture(autouse=True)
def e2e_requirements(request: pytest.FixtureRequest) -> None:
    """Skip, naming what is missing, when the machine cannot host the harness (fail under CI)."""
    balancer = _balancer_of(request.node)
    missing = missing_requirements(balancer)
    if not missing:
        return
    reason = f"rollout harness behind {balancer} needs {balancer}, unshare and root: " + "; ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI must provide them: see bin/setup)")
    pytest.skip(reason)
