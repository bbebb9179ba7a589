"""A Starlette app with one route per way a request can end, for the in-flight tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


async def hang(request: Request) -> PlainTextResponse:
    await asyncio.sleep(float(request.query_params.get("seconds", "30")))
    return PlainTextResponse("done")


async def stream(request: Request) -> StreamingResponse:
    chunks = int(request.query_params.get("chunks", "5"))
    interval = float(request.query_params.get("interval", "0.05"))

    async def body() -> AsyncIterator[bytes]:
        for number in range(chunks):
            yield f"{number}\n".encode()
            await asyncio.sleep(interval)

    return StreamingResponse(body(), media_type="text/plain")


async def background(request: Request) -> PlainTextResponse:
    return PlainTextResponse("queued", background=BackgroundTask(asyncio.sleep, 0.3))


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


routes = [
    Route("/ok", ok),
    Route("/boom", boom),
    Route("/hang", hang),
    Route("/stream", stream),
    Route("/background", background),
    WebSocketRoute("/ws", echo),
]
starlette_app = Starlette(routes=routes)
