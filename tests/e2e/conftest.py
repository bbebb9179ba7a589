"""Fixtures for the rollout tests: skip only where HAProxy, unshare or root cannot be had.

CI installs HAProxy (bin/setup) and runs as root, so there these tests must run: with ``CI`` set
in the environment a missing piece fails the test instead of skipping it.
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.cluster import missing_requirements


@pytest.fixture(autouse=True)
def e2e_requirements() -> None:
    """Skip, naming what is missing, when the machine cannot host the harness (fail under CI)."""
    missing = missing_requirements()
    if missing:
        reason = "rollout harness needs haproxy, unshare and root: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI must provide them: see bin/setup)")
        pytest.skip(reason)
