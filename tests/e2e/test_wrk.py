"""The wrk client of the harness counts what wrk counts: a test server that fails on purpose."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.e2e.wrk import Wrk, parse

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def failing_server() -> Iterator[int]:
    """127.0.0.1 server: answers 200, then 503, then closes a connection without an answer, in turn
    (one request per connection: every answer says Connection: close)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        turn = 0
        for _ in range(100_000):
            if stop.is_set():
                return
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    turn += 1
                    if turn % 3 == 1:
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                    elif turn % 3 == 2:
                        conn.sendall(b"HTTP/1.1 503 No\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno")
                except OSError:
                    pass  # the third closes without an answer

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (installed by bin/setup)")
def test_wrk_counts_non_2xx_and_cut_connections(failing_server: int) -> None:
    """wrk's totals come back as numbers: 503s as non2xx, connections closed without an answer as read errors."""
    wrk = Wrk(f"http://127.0.0.1:{failing_server}/", connections=2, max_seconds=20)
    wrk.start()
    time.sleep(1.5)  # wrk runs until stopped; how long does not matter to the counts' kinds
    result = wrk.stop()
    assert result.parsed, result.output
    assert result.requests > 0 and result.errors["non2xx"] > 0, result.output
    assert result.errors["read"] > 0, result.output
    assert result.ok == result.requests - result.errors["non2xx"] > 0


def test_parse_reads_wrks_summary() -> None:
    """The summary lines wrk prints (sections it leaves out count as zero)."""
    text = """Running 2s test @ http://127.0.0.1:1/
  1644 requests in 2.00s, 2.51MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:    821.40
"""
    result = parse(text)
    assert result.parsed and result.requests == 1644
    assert result.errors == {"connect": 1, "read": 2, "write": 3, "timeout": 4, "non2xx": 5}
    assert parse("  10 requests in 1.00s, 1KB read\n").failures == 0
    assert not parse("unable to connect").parsed
