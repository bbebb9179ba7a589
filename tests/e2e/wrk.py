"""`wrk` as one more load client: raw keep-alive throughput, its errors counted by kind.

wrk keeps every connection busy (the next request leaves as the response arrives), reconnects when
a response says ``Connection: close``, and on SIGINT stops and prints its totals (wrk.c installs a
SIGINT handler that ends the run early), so the harness runs it for as long as the rollout lasts.
What wrk counts (wrk.c): ``requests`` are complete responses, 2xx or not; ``Non-2xx or 3xx
responses`` are among them; socket errors are ``connect`` (connect failed), ``read`` (a read failed,
or the connection ended before the response was complete: a reset or a server disconnect), ``write``
and ``timeout`` (a request older than ``--timeout`` at one of its checks, every 2 s).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field

WRK_KINDS = ("connect", "read", "write", "timeout", "non2xx")

_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass
class WrkResult:
    """wrk's totals; ``errors`` by kind (see ``WRK_KINDS``); ``output`` when it could not be parsed."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WRK_KINDS, 0))
    output: str = ""
    parsed: bool = False

    @property
    def ok(self) -> int:
        return self.requests - self.errors["non2xx"]

    @property
    def failures(self) -> int:
        return sum(self.errors.values())


def parse(output: str) -> WrkResult:
    """wrk's printed summary as numbers (sections it leaves out when zero count as zero)."""
    result = WrkResult(output=output)
    requests = _REQUESTS.search(output)
    if requests is None:
        return result
    result.requests = int(requests.group(1))
    socket_errors = _SOCKET_ERRORS.search(output)
    if socket_errors is not None:
        for kind, value in zip(WRK_KINDS[:4], socket_errors.groups(), strict=True):
            result.errors[kind] = int(value)
    non_2xx = _NON_2XX.search(output)
    if non_2xx is not None:
        result.errors["non2xx"] = int(non_2xx.group(1))
    result.parsed = True
    return result


def _die_with_parent() -> None:
    # Between fork and exec: SIGKILL wrk when the thread that started it dies (prctl(2)), and give
    # it the CPU only when nothing else wants it: wrk never pauses, and starving the balancer, the
    # pods or the harness's endpoint timers would measure the machine, not the drain.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    os.nice(NICENESS)


#: wrk's nice(2) increment.
NICENESS = 10


class Wrk:
    """One wrk process against ``url`` until ``stop()`` (or ``max_seconds``)."""

    def __init__(
        self,
        url: str,
        *,
        connections: int,
        threads: int = 1,
        timeout: float = 5.0,
        max_seconds: float = 300.0,
    ) -> None:
        self.argv = [
            "wrk",
            f"-t{threads}",
            f"-c{max(connections, threads)}",
            f"-d{max(1, round(max_seconds))}s",
            f"--timeout={max(1, round(timeout))}s",
            url,
        ]
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            preexec_fn=_die_with_parent,
        )

    def stop(self, timeout: float = 10.0) -> WrkResult:
        process, self.process = self.process, None
        if process is None:
            return WrkResult()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # wrk ends the run and prints its totals
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate(timeout=5)
        return parse(output or "")
