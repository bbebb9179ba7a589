"""Example service: fast, slow, streamed and websocket routes behind GracefulMiddleware.

Run it with the full drain (single process, no supervisor):

    python -m graceful.uvicorn examples.starlette_app:app --host 127.0.0.1 --port 8000

then, in another terminal: ``curl -s localhost:8000/healthz`` and ``kill -TERM <pid>``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from graceful import get_lifecycle
from graceful.asgi import GracefulMiddleware

POD = os.environ.get("POD_NAME", str(os.getpid()))


async def fast(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"fast from {POD}\n")


async def slow(request: Request) -> PlainTextResponse:
    """A long request: ``/slow?seconds=1.5``."""
    seconds = min(float(request.query_params.get("seconds", "1.5")), 30.0)
    await asyncio.sleep(seconds)
    return PlainTextResponse(f"slow {seconds:g}s from {POD}\n")


async def stream(request: Request) -> StreamingResponse:
    """A streamed body: ``/stream?chunks=10&interval=0.1``, one numbered line per chunk."""
    chunks = min(int(request.query_params.get("chunks", "10")), 1000)
    interval = min(float(request.query_params.get("interval", "0.1")), 5.0)

    async def lines() -> AsyncIterator[bytes]:
        for number in range(chunks):
            yield f"{number}\n".encode()
            await asyncio.sleep(interval)
        yield b"end\n"

    return StreamingResponse(lines(), media_type="text/plain")


async def info(request: Request) -> JSONResponse:
    return JSONResponse({"pod": POD, "pid": os.getpid()})


async def echo(websocket: WebSocket) -> None:
    """Echo messages until the client closes, or until the instance drains: then close with 1001
    (Going Away, RFC 6455 7.4.1) so the client reconnects elsewhere instead of being cut."""
    await websocket.accept()
    draining = get_lifecycle().draining_event()
    going_away = asyncio.ensure_future(draining.wait())
    try:
        while True:
            receiving = asyncio.ensure_future(websocket.receive_text())
            done, _ = await asyncio.wait({receiving, going_away}, return_when=asyncio.FIRST_COMPLETED)
            if receiving not in done:
                receiving.cancel()
                await websocket.close(code=1001, reason="server draining")
                return
            await websocket.send_text(receiving.result())
    except WebSocketDisconnect:
        pass
    finally:
        going_away.cancel()


routes = [
    Route("/", info),
    Route("/fast", fast),
    Route("/slow", slow),
    Route("/stream", stream),
    WebSocketRoute("/ws", echo),
]

app = GracefulMiddleware(Starlette(routes=routes))
