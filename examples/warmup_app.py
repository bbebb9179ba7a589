"""Example service whose cold requests cost ~10x a warm one, for bench/warmup.py.

    GRACEFUL_WARMUP_WINDOW=10 GRACEFUL_MAX_CONCURRENCY=4 \\
        python -m graceful.uvicorn examples.warmup_app:app --host 127.0.0.1 --port 8000

``GET /work?key=N`` answers from a per-process cache. A miss computes the value with pure-Python
hashing that holds the GIL (``WARMUP_APP_COLD_ROUNDS``: ~20 ms), as a cold Python process does when
it fills caches, compiles templates or builds lookup tables; a hit does a little of the same work
(``WARMUP_APP_WARM_ROUNDS``: ~1.5 ms, so a cold request costs ~10x a warm one once the server's own
per-request work is counted). The work runs in a thread pool, as Starlette and FastAPI run ``def``
endpoints. Keys run over ``WARMUP_APP_KEYS`` values (300), so a new process needs a few hundred
requests to warm: after n requests a share ``exp(-n / 300)`` of them still misses.

Graceful settings come from the ``GRACEFUL_*`` environment (window, max concurrency, queue
timeout, agent port, drain delay...). Outside the middleware a thin probe wraps the app:

- it stamps each request's arrival, so the app can tell how long the middleware's admission
  queue held it (and how long a shed request waited before its 503);
- it tags every response with ``x-pod`` (which instance served it, shed 503s included);
- it answers ``GET /stats`` itself (never queued or shed): cache size, cold/warm counts and mean
  service times, the most requests the app ever ran at once, the longest queue waits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from graceful.asgi import GracefulMiddleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

POD = os.environ.get("POD_NAME", str(os.getpid()))
KEYS = int(os.environ.get("WARMUP_APP_KEYS", "300"))
COLD_ROUNDS = int(os.environ.get("WARMUP_APP_COLD_ROUNDS", "25000"))  # ~20 ms on the bench machine
WARM_ROUNDS = int(os.environ.get("WARMUP_APP_WARM_ROUNDS", "2000"))  # ~1.5 ms
# Sync work runs in a thread pool, as Starlette/FastAPI run `def` endpoints (anyio's 40 threads):
# the event loop stays free to accept and dispatch, so concurrent requests reach the middleware,
# where the cap and its queue can see them. (Run in the event loop instead, the work would queue
# up in the socket backlog and the loop's ready queue, before any ASGI middleware sees it.)
# WARMUP_APP_THREADS=0 runs the work in the event loop, to see that case.
THREADS = int(os.environ.get("WARMUP_APP_THREADS", "40"))
POOL = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="work") if THREADS > 0 else None
SALT = POD.encode()
ARRIVED = "warmup_app.arrived"  # scope key: perf_counter() when the request reached the probe

_cache: dict[int, bytes] = {}


class Stats:
    """What this process did: read by the bench through ``GET /stats``."""

    def __init__(self) -> None:
        self.running = 0
        self.max_running = 0
        self.cold = 0
        self.warm = 0
        self.cold_seconds = 0.0
        self.warm_seconds = 0.0
        self.max_admitted_wait = 0.0  # arrival -> the app starts (time spent in the admission queue)
        self.max_shed_wait = 0.0  # arrival -> a 503 from the middleware starts
        self.max_service = 0.0  # the longest time one request spent in the app
        self.shed = 0
        self.over_cap = 0  # requests that found the app running more than the middleware's cap

    def as_dict(self) -> dict[str, Any]:
        return {
            "pod": POD,
            "cache": len(_cache),
            "keys": KEYS,
            "cold": self.cold,
            "warm": self.warm,
            "cold_ms": round(1000 * self.cold_seconds / self.cold, 3) if self.cold else None,
            "warm_ms": round(1000 * self.warm_seconds / self.warm, 3) if self.warm else None,
            "max_running": self.max_running,
            "max_admitted_wait": round(self.max_admitted_wait, 4),
            "max_shed_wait": round(self.max_shed_wait, 4),
            "max_service": round(self.max_service, 4),
            "shed": self.shed,
            "over_cap": self.over_cap,
        }


STATS = Stats()


def _spin(seed: bytes, rounds: int) -> bytes:
    """Pure-Python CPU work that holds the GIL, like most of what makes a Python process cold
    (imports, template compilation, building lookup tables): one SHA-256 of 32 bytes per round."""
    digest = seed
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest


def _value(key: int) -> tuple[bytes, bool, float]:
    """(digest, was it cold, seconds) for ``key``: a miss fills the cache (10x the work of a hit)."""
    began = time.perf_counter()
    cached = _cache.get(key)
    cold = cached is None
    if cached is None:  # two threads may both miss the same key: a small stampede, as in real caches
        cached = _cache[key] = _spin(key.to_bytes(8, "big") + SALT, COLD_ROUNDS)
    return _spin(cached, WARM_ROUNDS), cold, time.perf_counter() - began


async def _respond(send: Send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def work_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The service itself (inside GracefulMiddleware): ``/work?key=N``."""
    if scope["type"] != "http":
        return  # lifespan: nothing to set up (GracefulMiddleware answers it)
    began = time.perf_counter()
    stats = STATS
    arrived = scope.get(ARRIVED)
    if arrived is not None:
        stats.max_admitted_wait = max(stats.max_admitted_wait, began - arrived)
    if scope["path"] != "/work":
        await _respond(send, 404, b"not found\n")
        return
    stats.running += 1
    stats.max_running = max(stats.max_running, stats.running)
    # The app's own count against the middleware's cap of this moment: the cap must hold.
    admission = app.app.control.admission
    if admission is not None and stats.running > admission.cap():
        stats.over_cap += 1
    try:
        query = (scope.get("query_string") or b"").decode("latin-1")
        fields = dict(part.partition("=")[::2] for part in query.split("&") if part)
        try:
            key = int(fields.get("key", "0")) % KEYS
        except ValueError:
            await _respond(send, 400, b"key must be an integer\n")
            return
        if POOL is None:
            digest, cold, spent = _value(key)  # blocks the event loop: nothing else runs meanwhile
        else:
            digest, cold, spent = await asyncio.get_running_loop().run_in_executor(POOL, _value, key)
        stats.max_service = max(stats.max_service, spent)
        if cold:
            stats.cold += 1
            stats.cold_seconds += spent
        else:
            stats.warm += 1
            stats.warm_seconds += spent
        await _respond(send, 200, f"{POD} {key} {'cold' if cold else 'warm'} {digest.hex()[:16]}\n".encode())
    finally:
        stats.running -= 1


class Probe:
    """Outside the middleware: arrival stamps, ``x-pod`` on every response, and ``GET /stats``."""

    def __init__(self, app: GracefulMiddleware) -> None:
        self.app = app  # graceful.uvicorn finds the middleware through ``.app``

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)  # add_check, lifecycle ... as on the middleware itself

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/stats":
            await _respond(send, 200, json.dumps(STATS.as_dict()).encode(), b"application/json")
            return
        arrived = time.perf_counter()
        scope[ARRIVED] = arrived
        pod_header = (b"x-pod", POD.encode())

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] == 503 and scope["path"] == "/work":
                    STATS.shed += 1  # the app never saw it: the middleware shed it
                    STATS.max_shed_wait = max(STATS.max_shed_wait, time.perf_counter() - arrived)
                message = {**message, "headers": [*message.get("headers", ()), pod_header]}
            await send(message)

        await self.app(scope, receive, tagged)


app = Probe(GracefulMiddleware(work_app))
