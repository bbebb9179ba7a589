"""A plain Starlette app, no graceful anywhere: the "plain uvicorn" pods of the client's rollout test.

``POST /record`` appends the request id it executes (header ``x-request-id``) to the file named by
``RECORD_PATH``, one ``<id> <pod>`` line per execution, in one ``write`` to a file opened with
``O_APPEND``: every pod of a run appends to the same file, and a line is never interleaved with
another pod's. The record is written by the server when it executes the request, so a POST that
ran twice shows up twice whatever the client saw.

With ``ARRIVALS_PATH`` set, ``GET /fast`` also appends ``<monotonic seconds> <pod>`` when it
runs: CLOCK_MONOTONIC is one clock for every process of the machine, so the test compares these
arrivals with what its clients saw (when a drain notice came back, say). Every answer names its
pod in ``x-pod``.
"""

from __future__ import annotations

import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

POD = os.environ.get("POD_NAME", str(os.getpid()))
RECORD_PATH = os.environ.get("RECORD_PATH", "")
ARRIVALS_PATH = os.environ.get("ARRIVALS_PATH", "")


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def fast(request: Request) -> PlainTextResponse:
    if ARRIVALS_PATH:
        _append(ARRIVALS_PATH, f"{time.monotonic():.6f} {POD}\n")
    return PlainTextResponse(f"fast from {POD}\n", headers={"x-pod": POD})


async def ready(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ready\n")


async def record(request: Request) -> PlainTextResponse:
    request_id = request.headers.get("x-request-id", "")
    await request.body()
    if not request_id or not RECORD_PATH:
        return PlainTextResponse("x-request-id header and RECORD_PATH are required\n", status_code=400)
    _append(RECORD_PATH, f"{request_id} {POD}\n")
    return PlainTextResponse(f"{request_id}\n", headers={"x-pod": POD})


app = Starlette(
    routes=[
        Route("/fast", fast),
        Route("/healthz/ready", ready),
        Route("/record", record, methods=["POST"]),
    ]
)
