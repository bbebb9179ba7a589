"""Start a real server process on 127.0.0.1 and wait for it, with every wait bounded."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; returns the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ServerProcess:
    """A server started from argv with ``{port}`` filled in; output captured for diagnostics."""

    def __init__(
        self, argv: list[str], env: dict[str, str] | None = None, *, ready_path: str = "/healthz/ready"
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"graceful-test-{self.port}.log"
        self.log = self.log_path.open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("GRACEFUL_STATE", None)
        self.process = subprocess.Popen(
            [arg.format(port=self.port, python=sys.executable) for arg in argv],
            cwd=ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            # Its own process group, so close() reaches what it forked too: killing only a gunicorn
            # master left its workers running, orphaned, after the test (see close).
            start_new_session=True,
        )
        self.ready_path = ready_path

    def get(self, path: str, timeout: float = 2.0) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout)

    def status(self, path: str) -> int | None:
        try:
            return self.get(path, timeout=1.0).status_code
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 15.0) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early ({self.process.returncode}):\n{self.output()}")
            return self.status(self.ready_path) == 200

        wait_for(ready, timeout, f"{self.ready_path} to answer 200")

    def signal(self, signum: int = signal.SIGTERM) -> float:
        """Send a signal; returns the monotonic time just before it was sent."""
        sent = time.monotonic()
        self.process.send_signal(signum)
        return sent

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running after {timeout}s:\n{self.output()}") from None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        # The whole group, also when the server itself has exited: a worker it forked may not have.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()
        self.log_path.unlink(missing_ok=True)
