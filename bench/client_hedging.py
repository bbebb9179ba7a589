"""Hedged requests against a server with a slow tail: what graceful.client's HedgePolicy buys.

    python bench/client_hedging.py [--requests 2000] [--rate 100] [--max-attempts 2] [--no-async]

A real uvicorn server (this script, run as a subprocess on 127.0.0.1) answers ``GET /work``: each
request is slow (``--slow`` s, default 1 s) with probability ``--slow-fraction`` (5 %), drawn per
request on the server from a seeded RNG, else it takes ``--fast`` (2 ms). A hedge is a new request
and has the same 5 % chance of being slow. ``GET /count`` returns how many /work requests the
server has received (cancelled hedges included), so the extra load is measured on the server:
server requests / client requests - 1.

The load is open loop: requests start at ``--rate`` per second whatever the answers do, so the
hedged and the unhedged phases offer the server the same load (a closed loop would let the hedged
phase run several times faster, and its own load would stretch the fast requests past the delay).
Latency counts from when a request was due.

Phases, in one run and against the same server:
  1. ``httpx.Client(transport=Transport())`` on a pool of ``--threads`` threads: no hedging.
  2. The same with ``Transport(hedge=HedgePolicy(delay=p95 of phase 1))``.
  3. ``httpx.AsyncClient(transport=AsyncTransport(...))``, one task per request (skip with
     ``--no-async``), unhedged and hedged at its own p95.

Target (the issue, after The Tail at Scale: 1,800 ms -> 74 ms p99.9 for 2 % more requests): p99 at
least 10x lower with hedging, for at most 10 % extra requests. Printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench._local_server import LOCALHOST, free_port, start_server, stop_server
from graceful.client import AsyncTransport, HedgePolicy, Transport

TARGET_RATIO = 10.0
TARGET_EXTRA = 0.10
WARMUP = 16  # requests that open connections before a phase; not counted
CLIENT_TIMEOUT = 10.0
# A p95 inside the slow mode (more than 5 % of phase 1's requests drew slow) would make the hedge
# fire only after the slow ones are nearly done: then the delay is this quantile of the fast ones.
FALLBACK_QUANTILE = 0.99

Scope = MutableMapping[str, Any]


# -- the server (run as `client_hedging.py --serve PORT`) ---------------------------------------------


def make_app(seed: int, slow_fraction: float, slow: float, fast: float) -> Any:
    rng = random.Random(seed)
    counted = {"work": 0}

    async def app(scope: Scope, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/work":
            counted["work"] += 1
            await asyncio.sleep(slow if rng.random() < slow_fraction else fast)
            body = b"ok"
        elif scope["path"] == "/count":
            body = str(counted["work"]).encode()
        else:
            body = b"ready"
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def serve(port: int, seed: int, slow_fraction: float, slow: float, fast: float) -> None:
    import uvicorn

    app = make_app(seed, slow_fraction, slow, fast)
    uvicorn.run(app, host=LOCALHOST, port=port, log_level="warning", access_log=False, lifespan="on")


def start_bench_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, __file__, "--serve", str(port), "--seed", str(args.seed)]
    command += [
        "--slow-fraction",
        str(args.slow_fraction),
        "--slow",
        str(args.slow),
        "--fast",
        str(args.fast),
    ]
    base = f"http://{LOCALHOST}:{port}"
    return start_server(command, f"{base}/ready"), base


def server_count(base: str) -> int:
    return int(httpx.get(f"{base}/count", timeout=5).text)


# -- the clients ----------------------------------------------------------------------------------


def run_sync(
    base: str, requests: int, rate: float, threads: int, make_transport: Callable[[], httpx.BaseTransport]
) -> list[float]:
    """``requests`` GETs started at ``rate`` per second (open loop) on a pool of ``threads``.

    Each latency runs from the moment the request was due, not from when a thread took it: a
    saturated pool shows up as latency instead of hiding as a lower rate (coordinated omission).
    """
    limits = httpx.Limits(max_connections=2 * threads, max_keepalive_connections=2 * threads)
    transport = make_transport()
    client = httpx.Client(transport=transport, timeout=CLIENT_TIMEOUT, limits=limits)
    with client, ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(WARMUP):  # connections opened; not counted (see phase())
            pool.submit(client.get, f"{base}/ready").result(timeout=CLIENT_TIMEOUT)

        def one(due: float) -> float:
            response = client.get(f"{base}/work")
            response.raise_for_status()
            return time.perf_counter() - due

        futures = []
        start = time.perf_counter()
        for number in range(requests):
            due = start + number / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            futures.append(pool.submit(one, due))
        return [future.result(timeout=600) for future in futures]


async def run_async_phase(
    base: str, requests: int, rate: float, transport: httpx.AsyncBaseTransport
) -> list[float]:
    """As ``run_sync``, with one task per request on one event loop."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(transport=transport, timeout=CLIENT_TIMEOUT, limits=limits) as client:
        await asyncio.gather(*(client.get(f"{base}/ready") for _ in range(WARMUP)))

        async def one(due: float) -> float:
            response = await client.get(f"{base}/work")
            response.raise_for_status()
            return time.perf_counter() - due

        tasks = []
        start = time.perf_counter()
        for number in range(requests):
            due = start + number / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(due)))
        return list(await asyncio.wait_for(asyncio.gather(*tasks), timeout=600))


def run_async(base: str, requests: int, rate: float, hedge: HedgePolicy | None) -> list[float]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    transport = AsyncTransport(httpx.AsyncHTTPTransport(limits=limits), hedge=hedge)
    return asyncio.run(run_async_phase(base, requests, rate, transport))


# -- figures --------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile: the smallest value with at least q of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def phase(
    base: str, requests: int, run: Callable[[], list[float]], settle: float
) -> tuple[list[float], float, float]:
    """Run one phase; its latencies, the extra load (server requests / client requests - 1), seconds."""
    before = server_count(base)
    started = time.monotonic()
    latencies = run()
    took = time.monotonic() - started
    time.sleep(settle)  # abandoned attempts are counted when they arrive: let the last ones arrive
    seen = server_count(base) - before
    if len(latencies) != requests:
        raise SystemExit(f"{len(latencies)} latencies for {requests} requests")
    return latencies, seen / requests - 1, took


def row(name: str, latencies: list[float], extra: float, took: float) -> str:
    figures = "".join(f"{quantile(latencies, q) * 1000:>10.1f}" for q in (0.5, 0.95, 0.99, 0.999))
    return f"{name:<44}{figures}{extra * 100:>9.1f}%{len(latencies) / took:>8.0f}"


def verdict(label: str, base: list[float], hedged: list[float], extra: float) -> str:
    ratio = quantile(base, 0.99) / quantile(hedged, 0.99)
    ratio_999 = quantile(base, 0.999) / quantile(hedged, 0.999)
    met = ratio >= TARGET_RATIO and extra <= TARGET_EXTRA
    return (
        f"{label}: p99 {ratio:.1f}x lower (p99.9 {ratio_999:.1f}x), extra load {extra * 100:.1f}% "
        f"(target p99 >= {TARGET_RATIO:g}x lower with <= {TARGET_EXTRA * 100:g}% extra: "
        f"{'met' if met else 'NOT MET'})"
    )


def hedge_delay(latencies: list[float], slow: float) -> tuple[float, str]:
    """The p95 of an unhedged run (The Tail at Scale); if that is a slow request, p99 of the fast ones."""
    delay = quantile(latencies, 0.95)
    if delay < slow / 2:
        return delay, "p95 of the unhedged run"
    fast = [latency for latency in latencies if latency < slow / 2]
    fallback = quantile(fast, FALLBACK_QUANTILE)
    return fallback, (
        f"p{FALLBACK_QUANTILE * 100:g} of the unhedged run's fast requests "
        f"(its p95 fell in the slow mode: {len(latencies) - len(fast)} of {len(latencies)} were slow)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per phase (default 2000)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests started per second (100)")
    parser.add_argument("--threads", type=int, default=64, help="sync client's thread pool (default 64)")
    parser.add_argument("--max-attempts", type=int, default=2, help="HedgePolicy.max_attempts (default 2)")
    parser.add_argument("--slow-fraction", type=float, default=0.05, help="share of slow requests (0.05)")
    parser.add_argument("--slow", type=float, default=1.0, help="seconds a slow request takes (1.0)")
    parser.add_argument("--fast", type=float, default=0.002, help="seconds the others take (0.002)")
    parser.add_argument("--seed", type=int, default=1, help="the server's RNG seed (default 1)")
    parser.add_argument("--no-async", action="store_true", help="skip the AsyncTransport phases")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.seed, args.slow_fraction, args.slow, args.fast)
        return 0
    if args.requests < 100 or args.threads < 1 or not 2 <= args.max_attempts <= 10 or not args.rate > 0:
        parser.error("--requests must be >= 100, --rate > 0, --threads >= 1, --max-attempts from 2 to 10")

    process, base = start_bench_server(args)
    try:
        n, rate, t = args.requests, args.rate, args.threads
        settle = args.slow + 0.2
        plain, plain_extra, plain_took = phase(base, n, lambda: run_sync(base, n, rate, t, Transport), settle)
        delay, note = hedge_delay(plain, args.slow)
        policy = HedgePolicy(delay=delay, max_attempts=args.max_attempts)
        hedged, hedged_extra, hedged_took = phase(
            base, n, lambda: run_sync(base, n, rate, t, lambda: Transport(hedge=policy)), settle
        )
        rows = [
            row("Transport(), no hedging", plain, plain_extra, plain_took),
            row(f"Transport(hedge=..., max_attempts={args.max_attempts})", hedged, hedged_extra, hedged_took),
        ]
        verdicts = [verdict("sync", plain, hedged, hedged_extra)]
        if not args.no_async:
            aplain, aplain_extra, aplain_took = phase(base, n, lambda: run_async(base, n, rate, None), settle)
            # The async client's latencies differ (one event loop): its hedge delay is its own p95.
            adelay, anote = hedge_delay(aplain, args.slow)
            apolicy = HedgePolicy(delay=adelay, max_attempts=args.max_attempts)
            ahedged, ahedged_extra, ahedged_took = phase(
                base, n, lambda: run_async(base, n, rate, apolicy), settle
            )
            rows.append(row("AsyncTransport(), no hedging", aplain, aplain_extra, aplain_took))
            rows.append(
                row(
                    f"AsyncTransport(hedge=..., max_attempts={args.max_attempts})",
                    ahedged,
                    ahedged_extra,
                    ahedged_took,
                )
            )
            verdicts.append(verdict("async", aplain, ahedged, ahedged_extra))
    finally:
        stop_server(process)

    print(
        f"python {sys.version.split()[0]}, httpx {httpx.__version__}, {n} requests per phase, "
        f"{rate:g} started per second (open loop); server: {args.slow_fraction * 100:g}% of requests take "
        f"{args.slow * 1000:g} ms, the rest {args.fast * 1000:g} ms (seed {args.seed})"
    )
    print(f"hedge delay {delay * 1000:.2f} ms = {note}; HedgePolicy(max_attempts={args.max_attempts})")
    if not args.no_async:
        print(f"async hedge delay {adelay * 1000:.2f} ms = {anote.replace('unhedged', 'unhedged async')}")
    print(
        f"{'variant (latency in ms)':<44}{'p50':>10}{'p95':>10}{'p99':>10}{'p99.9':>10}"
        f"{'extra':>10}{'req/s':>8}"
    )
    for line in rows:
        print(line)
    for line in verdicts:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
