"""Fixtures for the rollout tests: skip only where HAProxy, unshare or root cannot be had.

CI installs HAProxy (`apt-get install -y haproxy wrk`) and runs as root, so there these tests run.
"""

from __future__ import annotations

import pytest

from tests.e2e.cluster import missing_requirements


@pytest.fixture(autouse=True)
def e2e_requirements() -> None:
    """Skip, naming what is missing, when the machine cannot host the harness."""
    missing = missing_requirements()
    if missing:
        pytest.skip("rollout harness needs haproxy, unshare and root: " + "; ".join(missing))
