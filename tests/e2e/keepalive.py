"""Steady state behind nginx's upstream keep-alive pool: who closes an idle connection first.

A pool (nginx ``upstream { keepalive N; }``, Envoy, an ALB) reuses its idle connections to a server
until its own idle timeout. A server whose keep-alive timeout is shorter closes them first, and a
request the pool sends on one at that moment is lost: nginx answers 502 ("upstream prematurely
closed connection" / "Connection reset by peer"), and with ``proxy_next_upstream off`` it does not
retry. The window is the time the server's FIN takes to reach nginx and be noticed (tens of
microseconds), so random traffic hits it seldom; these clients aim at it instead.

``IdleProxy``: nginx (one process, ``master_process off``, so PR_SET_PDEATHSIG reaches all of it)
with one upstream pool per client, every pool to the same server (``keepalive 1``,
``keepalive_timeout`` longer than the server's): each client's connection is idle exactly for the
client's own gaps. ``run_idle_clients``: each client sends a request, waits a gap, sends the next;
the gaps sweep a few milliseconds around the instants given (the stock server's keep-alive timeout,
nginx's own timeout), so some requests reach the server just as its timer closes the connection.
Clients talk to nginx with ``Connection: close``: only the nginx-to-server side keeps connections.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.e2e.cluster import LOCALHOST, _die_with_parent, _tail, _wait_until, free_port
from tests.e2e.nginx import temp_paths

#: nginx's own idle timeout for its upstream connections (its default, ALB's default too).
UPSTREAM_KEEPALIVE_TIMEOUT = 60


class IdleProxy:
    """nginx with ``pools`` upstream keep-alive pools, all to ``127.0.0.1:server_port``."""

    def __init__(
        self, workdir: Path, server_port: int, pools: int, keepalive_timeout: int = UPSTREAM_KEEPALIVE_TIMEOUT
    ) -> None:
        self.workdir = workdir
        self.server_port = server_port
        self.pools = pools
        self.keepalive_timeout = keepalive_timeout
        self.config_path = workdir / "nginx.conf"
        self.log_path = workdir / "nginx.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        work = self.workdir
        upstreams = "\n".join(
            f"""    upstream pool{number} {{
        server {LOCALHOST}:{self.server_port} max_fails=0;
        keepalive 1;
        keepalive_timeout {self.keepalive_timeout}s;
    }}"""
            for number in range(self.pools)
        )
        locations = "\n".join(
            f"""        location /pool{number}/ {{
            proxy_pass http://pool{number}/;
        }}"""
            for number in range(self.pools)
        )
        return f"""daemon off;
master_process off;
pid {work}/nginx.pid;
error_log {self.log_path} notice;
events {{
    worker_connections 1024;
}}
http {{
{temp_paths(work)}
    access_log off;
{upstreams}
    server {{
        listen {LOCALHOST}:{self.port};
        # No keep-alive towards the clients: only the pools to the server are measured.
        keepalive_timeout 0;
        # Without an empty Connection header nginx sends "close" and the pool never fills.
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        # No retry: a request lost on a pooled connection reaches the client as a 502.
        proxy_next_upstream off;
        proxy_connect_timeout 1s;
        proxy_read_timeout 10s;
{locations}
    }}
}}
"""

    def start(self, attempts: int = 3) -> None:
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):  # a free port can be taken before nginx binds it
            self.port = free_port()
            self.config_path.write_text(self.config_text())
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    ["nginx", "-p", str(self.workdir), "-c", str(self.config_path), "-e", str(self.log_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )
            if _wait_until(self._answers, timeout=5.0, interval=0.05) and self.process.poll() is None:
                return
            self.stop()
        raise RuntimeError(f"nginx did not start; log:\n{_tail(self.log_path)}")

    def _answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return True  # ends the wait; start() looks again
        try:
            httpx.get(f"http://{LOCALHOST}:{self.port}/pool0/fast", timeout=1.0, trust_env=False)
        except httpx.HTTPError:
            return False
        return True

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def error_tail(self, lines: int = 10) -> str:
        return _tail(self.log_path, lines)


@dataclass
class IdleResult:
    outcomes: Counter[str] = field(default_factory=Counter)  # "ok", "502", "status 503", "error ..."
    samples: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failures(self) -> int:
        return self.requests - self.outcomes["ok"]


def run_idle_clients(
    proxy: IdleProxy,
    *,
    seconds: float,
    aims: Sequence[float],
    sweep: tuple[float, float] = (-0.004, 0.002),
    seed: int = 0,
) -> IdleResult:
    """One client per pool for ``seconds``; each gap is one of ``aims`` plus a random offset in
    ``sweep`` (seconds), measured from the response to the next request. Bounded in time and count."""
    result = IdleResult()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    shortest = max(0.05, min(aims) + sweep[0])

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        url = f"http://{LOCALHOST}:{proxy.port}/pool{number}/fast"
        # Spread the clients' first requests so they do not all wake at once.
        time.sleep(rng.uniform(0, min(1.0, shortest)))
        with httpx.Client(timeout=10.0, trust_env=False, headers={"connection": "close"}) as http:
            for _ in range(int(seconds / shortest) + 2):
                try:
                    response = http.get(url)
                    outcome = "ok" if response.status_code == 200 else f"status {response.status_code}"
                except httpx.HTTPError as exc:
                    outcome = f"error {type(exc).__name__}"
                with lock:
                    result.outcomes[outcome] += 1
                    if outcome != "ok" and len(result.samples) < 10:
                        result.samples.append(f"pool{number}: {outcome}")
                gap = rng.choice(aims) + rng.uniform(*sweep)
                if time.monotonic() + gap > stop_at:
                    return
                time.sleep(gap)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(proxy.pools)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return result
