"""A benchmark's own server process on 127.0.0.1: started, waited for (bounded), stopped."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx

LOCALHOST = "127.0.0.1"
STARTUP_SECONDS = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def start_server(command: list[str], ready_url: str) -> subprocess.Popen[bytes]:
    """Run ``command`` and wait until ``ready_url`` answers 200 (at most STARTUP_SECONDS)."""
    process = subprocess.Popen(command)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode} before it answered")
        try:
            if httpx.get(ready_url, timeout=0.5).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"the server did not answer within {STARTUP_SECONDS:g} s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
