"""``graceful verify`` run as a user runs it, on real servers behind a real HAProxy (issue 15).

- plain uvicorn (its listener closes at SIGTERM): losses, diagnosed as the listener closed during
  the lag, exit 1;
- the same app under graceful-run with graceful's middleware (python -m graceful.uvicorn): nothing
  lost, no SIGKILL, exit 0;
- ``sh -c 'uvicorn ...'`` (sh is PID 1 and keeps SIGTERM to itself): SIGKILLed at the grace
  period, diagnosed as SIGTERM not reaching the server, exit 1;
- as a non-root user (nobody): process groups instead of PID namespaces, still exit 0.

The app is tests/e2e/record_app.py (plain Starlette: /fast, /healthz/ready).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.e2e.cluster import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.haproxy, pytest.mark.timeout(180)]

APP = "tests.e2e.record_app:app"
RUN_SECONDS = 120  # one verify run: 2 instances replaced with a 2 s lag takes 10-20 s


def verify(
    *argv: str, env: dict[str, str] | None = None, user: list[str] | None = None
) -> tuple[int, dict, str]:
    """Run ``graceful verify --json ARGV``; its exit status, its JSON report and its stderr."""
    command = [
        *(user or []),
        sys.executable,
        "-m",
        "graceful._cli",
        "verify",
        "--json",
        "--url-path",
        "/fast",
        *argv,
    ]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_SECONDS
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = {}
    return result.returncode, report, result.stderr


def _skip_or_fail(reason: str) -> None:
    """Skip where the piece cannot be had; under CI (which must provide it) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI must provide it)")
    pytest.skip(reason)


def kinds(report: dict) -> list[str]:
    return [diagnosis["kind"] for diagnosis in report.get("diagnoses", [])]


def test_plain_uvicorn_loses_requests_and_is_told_why() -> None:
    status, report, stderr = verify("--", "uvicorn", APP, "--port", "$PORT")
    assert status == 1, (report, stderr)
    assert report["failed"] > 0 and report["sigkilled"] == 0, report
    assert "refused or closed on a new connection" in kinds(report), report
    refused = next(d for d in report["diagnoses"] if d["kind"] == "refused or closed on a new connection")
    assert "listener closed at SIGTERM" in refused["cause"] and "graceful-run" in refused["fix"]
    assert report["isolation"] == "pid-namespace" and "PID 1 of its own PID namespace" in stderr


def test_graceful_run_with_the_middleware_loses_nothing() -> None:
    env = {**os.environ, "GRACEFUL_DRAIN_DELAY": "3"}
    status, report, stderr = verify(
        "--", "graceful-run", "--", "python", "-m", "graceful.uvicorn", APP, "--port", "$PORT", env=env
    )
    assert status == 0, (report, stderr)
    assert report["ok"] and report["failed"] == 0 and report["requests"] > 500, report
    # The user's GRACEFUL_* settings reach the instances: they drained 3 s, not the default 5.
    assert all(2.9 < pod["term_to_exit"] < 4.5 and not pod["sigkilled"] for pod in report["pods"]), report


def test_a_shell_wrapper_is_diagnosed_as_sigterm_not_reaching_the_server() -> None:
    status, report, stderr = verify("--grace", "4", "--", "sh", "-c", f"uvicorn {APP} --port $PORT")
    assert status == 1, (report, stderr)
    assert report["sigkilled"] == 2 and "sigkill" in kinds(report), report
    killed = next(d for d in report["diagnoses"] if d["kind"] == "sigkill")
    assert "shell wrapper" in killed["cause"] and "graceful-run" in killed["fix"]


def test_without_root_it_runs_process_groups() -> None:
    """As nobody: no PID namespaces, so each instance is a process group; the graceful app still
    loses nothing. nobody runs Debian's python3 (this interpreter may live where nobody cannot
    reach, such as /root/.pyenv) with this virtualenv's packages."""
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None or system_python is None:
        _skip_or_fail("needs root (to become nobody), setpriv and /usr/bin/python3")
    version = subprocess.run(
        [system_python, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    if version != str(sys.version_info[:2]):
        pytest.skip(
            f"/usr/bin/python3 is {version}, this virtualenv's packages are for {sys.version_info[:2]}"
        )
    site = sysconfig.get_paths()["purelib"]
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), site]),
        "HOME": "/tmp",
        "GRACEFUL_DRAIN_DELAY": "3",
    }
    command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--", system_python]
    result = subprocess.run(
        [*command, "-m", "graceful._cli", "verify", "--json", "--url-path", "/fast", "--",
         "python3", "-m", "graceful.supervisor", "--", "python3", "-m", "graceful.uvicorn", APP, "--port", "$PORT"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_SECONDS,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert report["isolation"] == "process-group" and report["ok"], report
    assert "process group of its own (not root" in result.stderr
    # Nothing left behind: graceful-run's child sits in a process group of its own, and the
    # replacements still running at the end are killed by session, not by group.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _left_behind():
        time.sleep(0.1)
    assert not _left_behind(), _left_behind()


def _left_behind() -> list[str]:
    found = subprocess.run(
        ["pgrep", "-u", "nobody", "-af", f"graceful.uvicorn {APP}"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return found.stdout.splitlines()


def test_a_missing_haproxy_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # python, but no haproxy
    status, _, stderr = verify("--", "uvicorn", APP, "--port", "$PORT", env=env)
    assert status == 2 and "haproxy is not installed" in stderr and "apt-get install haproxy" in stderr


def test_a_service_without_a_readiness_path_falls_back_and_pid_1_ignoring_sigterm_is_found() -> None:
    """python -m http.server: /healthz/ready is a 404 (readiness falls back, with a warning), and as
    PID 1 of its namespace Python has no default SIGTERM action: the rollout ends in SIGKILLs."""
    status, report, stderr = verify(
        "--grace", "3", "--url-path", "/", "--", "python", "-m", "http.server", "$PORT", "--bind", "127.0.0.1"
    )
    assert status == 1, (report, stderr)
    assert report["readiness"].startswith("tcp") and "answered 404: readiness fell back" in stderr
    assert report["sigkilled"] == 2 and "sigkill" in kinds(report), report
