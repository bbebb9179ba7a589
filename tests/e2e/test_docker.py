"""The example image in a real Docker: its containers replaced under the ROLLOUT.md load (issue 16).

The image is Dockerfile.example built on a base made with mmdebstrap (no registry pull) from a
host-built wheelhouse (the build container has no index). Each pod is a ``docker run --network
host`` container on its own port behind HAProxy; deletion is ``docker stop -t GRACE``, the
runtime's own SIGTERM and SIGKILL; exit codes come from ``docker inspect``. In one run:

- graceful-run as ENTRYPOINT (the image as shipped): 0 failed, no container SIGKILLed (exit code
  not 137), each stopped within drain delay + longest request + 1 s;
- the baselines, same image: plain uvicorn as the command (requests lost), a shell-form command
  (SIGKILLed at the grace period: 137), ``docker run --init`` with plain uvicorn (tini forwards
  SIGTERM: no SIGKILL, but uvicorn still closes its listener at once: requests lost).

And ``docker stop`` of a container whose app ignores SIGTERM: graceful-run SIGKILLs it at its own
drain timeout, well before Docker's, and exits 137 (128 + SIGKILL, docs/supervisor.md).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.docker import (
    DRAIN_DELAY,
    base_image,
    build_example,
    container_rollout,
    container_scenarios,
    dockerd,
    env,
    missing,
)

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    lacking = missing()
    if lacking:
        reason = "container tests need " + "; ".join(lacking)
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI must provide them: bin/setup)")
        pytest.skip(reason)
    with dockerd(tmp_path_factory.mktemp("dockerd")):
        yield build_example(base_image())


def test_the_example_image_loses_nothing_and_the_baselines_show_their_losses(
    image: str, tmp_path: Path
) -> None:
    runs = {
        name: container_rollout(tmp_path / name.replace(" ", "-"), args, grace=grace)
        for name, (_, args, grace) in container_scenarios(image).items()
    }
    report = "\n".join(f"{name}: {outcome.summary}" for name, outcome in runs.items())
    print(report)
    graceful = runs["graceful-run"]
    # The image as shipped: graceful-run as PID 1.
    assert graceful.requests > 300 and graceful.failed == 0, report
    assert all(code is not None and code != 137 for code in graceful.exit_codes), report
    bound = DRAIN_DELAY + graceful.longest + 1.0
    assert all(0 < seconds < bound for seconds in graceful.stop_seconds), f"bound {bound:.2f} s\n{report}"
    # The baselines, in the same run: losses (listener closed at SIGTERM) or kills.
    assert runs["uvicorn"].failed > 0 and 137 not in runs["uvicorn"].exit_codes, report
    assert runs["shell-form"].exit_codes == [137, 137], report
    assert runs["docker --init"].failed > 0 and 137 not in runs["docker --init"].exit_codes, report


def test_graceful_run_kills_an_app_that_ignores_sigterm_before_docker_does(
    image: str, tmp_path: Path
) -> None:
    name = f"graceful-e2e-ignore-{os.getpid()}"
    ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", "host",
         *env(drain_delay=0, drain_timeout=2), image, "python", "-c", ignore],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # graceful-run has started its child
        began = time.monotonic()
        subprocess.run(["docker", "stop", "-t", "20", name], check=True, capture_output=True, timeout=60)
        took = time.monotonic() - began
        code = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.ExitCode}}", name],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
    # graceful-run's drain timeout (2 s), not Docker's 20 s; its status: 128 + SIGKILL.
    assert 1.5 < took < 6.0, took
    assert code == "137", code
