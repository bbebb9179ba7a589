"""HAProxy agent-check responder: tells the balancer this instance's state and warm-up weight.

HAProxy connects to ``agent-port`` every ``agent-inter``, reads one line and closes (HAProxy
configuration manual, 5.2 ``agent-check``). The line comes from ``graceful._warmup.agent_reply``:
``up NN%`` while warming (HAProxy scales the server's weight), ``ready 100%`` when warm, ``drain``
while draining, ``down`` before the gate opens.

    backend app
        server s1 10.0.0.5:8000 check agent-check agent-port 9777 agent-inter 1s weight 100

Several worker processes may run a responder on the same port (SO_REUSEPORT): they all read the
same state board, so whichever answers says the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

logger = logging.getLogger("graceful")


async def start_agent(reply: Callable[[], str], *, host: str, port: int) -> asyncio.base_events.Server:
    """Answer agent checks on ``host:port`` with ``reply()``; returns the server (close it to stop)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # HAProxy may send an ``agent-send`` string first; the reply does not depend on it.
            writer.write(reply().encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, host, port, reuse_port=True)
    logger.info("graceful: HAProxy agent-check responder on %s:%d", host, port)
    return server
