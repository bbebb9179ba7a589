"""Drain delay under plain ``uvicorn app:app``: take over uvicorn's SIGTERM handler at lifespan startup.

uvicorn installs ``Server.handle_exit`` for SIGINT and SIGTERM with ``signal.signal`` before it
runs the lifespan startup (uvicorn/server.py ``capture_signals``), and on SIGTERM it closes its
listeners at once. Once the app's lifespan starts, the middleware can see that handler and put its
own in front: SIGTERM then starts the drain and uvicorn's handler runs only when the delay is over.

This is done only when it is certain to be right; otherwise one warning says why and what to use
instead (``python -m graceful.uvicorn``, ``graceful-run``, or the gunicorn worker classes).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from graceful._lifecycle import Lifecycle
from graceful._phase import Phase

logger = logging.getLogger("graceful")

Handler = Callable[[int, FrameType | None], Any]


def _uvicorn_server_of(handler: object) -> Any | None:
    """The uvicorn Server whose ``handle_exit`` is ``handler``, else None (no uvicorn import needed)."""
    server = getattr(handler, "__self__", None)
    if getattr(handler, "__name__", None) != "handle_exit" or server is None:
        return None
    module = type(server).__module__
    if not (module == "uvicorn" or module.startswith("uvicorn.")):
        return None
    if not hasattr(server, "should_exit") or not hasattr(server, "config"):
        return None
    return server


def chain_server_signals(lifecycle: Lifecycle, loop: asyncio.AbstractEventLoop) -> Callable[[], None] | None:
    """Own the drain clock in front of uvicorn's handler when that is safe.

    Returns the function that stops the server when the drain delay is over, or None when another
    component owns the clock (supervisor, ``graceful.uvicorn``, gunicorn master) or chaining is off.
    """
    if lifecycle.external or lifecycle.board.owner_pid:
        return None  # an outer component owns the drain clock; it must not get a second delay
    if not lifecycle.settings.chain_server_signals:
        return None
    if threading.current_thread() is not threading.main_thread():
        logger.warning(
            "graceful: the server runs outside the main thread, so SIGTERM cannot be intercepted; "
            "readiness and /shutdown work, but the drain delay needs graceful-run or "
            "python -m graceful.uvicorn"
        )
        return None
    if "gunicorn" in sys.modules:
        logger.warning(
            "graceful: running under gunicorn with a stock worker class: the gunicorn master closes the "
            "listeners on SIGTERM before any worker can delay it; use -k graceful.gunicorn.UvicornWorker "
            "or run gunicorn under graceful-run"
        )
        return None
    original = signal.getsignal(signal.SIGTERM)
    server = _uvicorn_server_of(original)
    if server is None:
        logger.warning(
            "graceful: SIGTERM is not handled by uvicorn here (handler %r), so the drain delay cannot be "
            "added from inside the app; readiness and /shutdown work, but run the server under "
            "graceful-run or python -m graceful.uvicorn for the delay",
            original,
        )
        return None
    original_handler: Handler = original  # type: ignore[assignment]
    if server.config.timeout_graceful_shutdown is None:
        # Without it uvicorn waits for in-flight work forever; our drain_timeout bounds it.
        server.config.timeout_graceful_shutdown = lifecycle.settings.drain_timeout

    def stop_server() -> None:
        lifecycle.begin_stop()
        original_handler(signal.SIGTERM, None)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread: hand the work to the event loop through
        # its thread-safe self-pipe instead of touching shared state here.
        first_term = signum == signal.SIGTERM and lifecycle.phase < Phase.DRAINING
        if first_term and lifecycle.settings.drain_delay > 0:
            loop.call_soon_threadsafe(lifecycle.begin_drain, "SIGTERM")
            return
        # SIGINT, a second SIGTERM, or no delay configured: stop now (uvicorn's own behaviour,
        # including "a second Ctrl-C forces the exit").
        loop.call_soon_threadsafe(lifecycle.begin_stop)
        original_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    lifecycle.claim_drain_clock()
    logger.info(
        "graceful: SIGTERM now drains for %.1f s before uvicorn stops", lifecycle.settings.drain_delay
    )
    return stop_server
