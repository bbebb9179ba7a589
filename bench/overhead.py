"""In-process cost per request of GracefulMiddleware, as a multiple of a do-nothing passthrough.

    python bench/overhead.py [--requests N] [--rounds R]

Each variant wraps the same minimal ASGI app and is called directly (no server, no sockets), so
only the middleware's own work differs. Variants run interleaved, round after round, and the
median round is reported: the machine is shared and noisy, ratios from one run are what count.

Two figures per variant:
  per-request ratio  time(variant + app) / time(passthrough + app): what a request costs through
                     each middleware around the same do-nothing app (the app here is as cheap as
                     an ASGI app gets, so this is the least flattering case of this measure)
  added ratio        (time(variant + app) - time(app)) / (time(passthrough + app) - time(app)):
                     the middleware's own work against the passthrough's own work (stricter)
Target (issue 2): a request through the middleware costs at most 4x one through a passthrough,
in either phase. The added ratio is printed beside it so the stricter figure is never hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from graceful import Lifecycle, Settings
from graceful.asgi import GracefulMiddleware

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
TARGET = 4.0

START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
BODY = {"type": "http.response.body", "body": b"hello"}


async def app(scope: Scope, receive: Any, send: Any) -> None:
    await send(START)
    await send(BODY)


class Passthrough:
    """The do-nothing pure-ASGI middleware every measurement is compared with."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    return None


def scope() -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/orders/42",
        "raw_path": b"/orders/42",
        "query_string": b"",
        "headers": [(b"host", b"example"), (b"accept", b"*/*")],
        "client": ("10.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


async def time_per_request(target: ASGIApp, requests: int) -> float:
    the_scope = scope()
    started = time.perf_counter()
    for _ in range(requests):
        await target(the_scope, receive, send)
    return (time.perf_counter() - started) / requests


async def measure(requests: int, rounds: int) -> dict[str, list[float]]:
    ready = Lifecycle(Settings(chain_server_signals=False))
    ready.open_gate()
    draining = Lifecycle(Settings(chain_server_signals=False))
    draining.open_gate()
    draining.begin_drain("benchmark")
    variants: dict[str, ASGIApp] = {
        "app alone": app,
        "passthrough": Passthrough(app),
        "graceful (ready)": GracefulMiddleware(app, lifecycle=ready),
        "graceful (draining)": GracefulMiddleware(app, lifecycle=draining),
    }
    for target in variants.values():  # warm up: first calls start the watcher, fill caches
        await time_per_request(target, 2000)
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, target in variants.items():
            results[name].append(await time_per_request(target, requests))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000, help="requests per round (default 50000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    args = parser.parse_args()
    if args.requests < 1000 or args.rounds < 1:
        parser.error("--requests must be >= 1000 and --rounds >= 1")

    results = asyncio.run(measure(args.requests, args.rounds))
    median = {name: statistics.median(times) for name, times in results.items()}
    bare, passthrough = median["app alone"], median["passthrough"]
    passthrough_cost = passthrough - bare
    print(f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.requests} requests, median round")
    print(f"{'variant':<22}{'us/request':>12}{'per-request ratio':>19}{'added ratio':>13}")
    worst = 0.0
    for name, value in median.items():
        total = value / passthrough
        added = (value - bare) / passthrough_cost if name != "app alone" else float("nan")
        if name.startswith("graceful"):
            worst = max(worst, total)
        print(f"{name:<22}{value * 1e6:>12.3f}{total:>19.2f}{added:>13.2f}")
    verdict = "ok" if worst <= TARGET else "OVER TARGET"
    print(f"per-request cost vs passthrough, worst phase: {worst:.2f}x  (target <= {TARGET:g}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
