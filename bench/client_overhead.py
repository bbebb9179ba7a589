"""Per-request cost of graceful.client's ``Transport()`` against a bare ``httpx.HTTPTransport()``.

    python bench/client_overhead.py [--requests 2000] [--rounds 5]

A real uvicorn server (this script, run as a subprocess on 127.0.0.1) answers every GET with 200
"ok". Each variant is one ``httpx.Client`` making keep-alive GETs; the variants run interleaved,
round after round, and the median round is reported (the machine is shared and noisy: the ratio
from one run is what counts). The wrapper's own work is also measured without a network: a
``Transport(httpx.MockTransport(...))`` against the ``MockTransport`` alone, called directly.

Target (the issue): a request through ``Transport()`` costs at most 1.05x one through a bare
``httpx.HTTPTransport()``. Printed, not asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench._local_server import LOCALHOST, free_port, start_server, stop_server
from graceful.client import Transport

TARGET = 1.05
WARMUP = 500

Scope = MutableMapping[str, Any]
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2")]


async def app(scope: Scope, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"ok"})


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=LOCALHOST, port=port, log_level="warning", access_log=False, lifespan="off")


def start_bench_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    base = f"http://{LOCALHOST}:{port}"
    return start_server([sys.executable, __file__, "--serve", str(port)], base), base


def time_client(client: httpx.Client, url: str, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        client.get(url).raise_for_status()
    return (time.perf_counter() - started) / requests


def time_transport(transport: httpx.BaseTransport, request: httpx.Request, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        transport.handle_request(request).close()
    return (time.perf_counter() - started) / calls


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"ok")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="GETs per variant per round (2000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--mock-calls", type=int, default=50_000, help="direct calls per round (50000)")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return 0
    if args.requests < 100 or args.rounds < 1 or args.mock_calls < 1000:
        parser.error("--requests must be >= 100, --rounds >= 1, --mock-calls >= 1000")

    network: dict[str, list[float]] = {"httpx.HTTPTransport()": [], "Transport()": []}
    mock: dict[str, list[float]] = {"MockTransport alone": [], "Transport(MockTransport)": []}
    process, url = start_bench_server()
    try:
        clients = {
            "httpx.HTTPTransport()": httpx.Client(transport=httpx.HTTPTransport()),
            "Transport()": httpx.Client(transport=Transport()),
        }
        inner = httpx.MockTransport(ok)
        transports: dict[str, httpx.BaseTransport] = {
            "MockTransport alone": inner,
            "Transport(MockTransport)": Transport(inner),
        }
        request = httpx.Request("GET", url)
        for client in clients.values():
            time_client(client, url, WARMUP)
        for transport in transports.values():
            time_transport(transport, request, 1000)
        for number in range(args.rounds):
            order = list(clients) if number % 2 == 0 else list(reversed(clients))  # alternate who goes first
            for name in order:
                network[name].append(time_client(clients[name], url, args.requests))
            for name in transports if number % 2 == 0 else reversed(transports):
                mock[name].append(time_transport(transports[name], request, args.mock_calls))
        for client in clients.values():
            client.close()
    finally:
        stop_server(process)

    print(
        f"python {sys.version.split()[0]}, httpx {httpx.__version__}, {args.rounds} interleaved rounds; "
        f"median round (min in brackets)"
    )
    print(f"keep-alive GETs to a local uvicorn, {args.requests} per variant per round, one client each:")
    bare = statistics.median(network["httpx.HTTPTransport()"])
    for name, times in network.items():
        print(f"  {name:<28}{statistics.median(times) * 1e6:>9.1f} us/request  [{min(times) * 1e6:.1f}]")
    ratio = statistics.median(network["Transport()"]) / bare
    ratio_min = min(network["Transport()"]) / min(network["httpx.HTTPTransport()"])
    rounds = [g / b for g, b in zip(network["Transport()"], network["httpx.HTTPTransport()"], strict=True)]
    print(f"  ratio per round: {' '.join(f'{r:.3f}' for r in rounds)}")
    print(f"no network, transport.handle_request(request) called directly, {args.mock_calls} per round:")
    for name, times in mock.items():
        print(f"  {name:<28}{statistics.median(times) * 1e6:>9.2f} us/call  [{min(times) * 1e6:.2f}]")
    added = statistics.median(mock["Transport(MockTransport)"]) - statistics.median(
        mock["MockTransport alone"]
    )
    print(
        f"  the wrapper's own work: {added * 1e6:.2f} us/call ({added / bare * 100:.1f}% of a bare request)"
    )
    verdict = "met" if ratio <= TARGET else "NOT MET"
    print(
        f"Transport() / httpx.HTTPTransport(): {ratio:.3f}x median, {ratio_min:.3f}x min  "
        f"(target <= {TARGET:g}x: {verdict})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
