"""In-process cost per request of the WSGI GracefulMiddleware, as a multiple of a do-nothing passthrough.

    python bench/overhead_wsgi.py [--requests N] [--rounds R]

The WSGI twin of bench/overhead.py, presented the same way. Each variant wraps the same minimal WSGI
app and is driven as a PEP 3333 server drives it (call, iterate the body, call ``close()``), with no
server and no sockets, so only the middleware's own work differs. Variants run interleaved, round
after round, and the median round is reported: the machine is shared and noisy.

While draining, how the middleware makes the server close the connection depends on the server
(graceful/_wsgi_close.py), so the draining phase is measured against two shapes of server, each
with its own passthrough row:
  plain      one start_response function for every request (uWSGI's shape); while draining,
             Connection: close is added by wrapping start_response, as for every server without
             a cheaper way (uWSGI, cheroot, bjoern...): the costliest way, against the cheapest
             passthrough, so the worst case
  gunicorn   start_response is a method of a new response object per request, as in gunicorn,
             and the middleware asks that object to close (force_close()); waitress is alike

Two figures per variant:
  per-request ratio  time(variant + app) / time(passthrough + app)
  added ratio        (time(variant + app) - time(app)) / (time(passthrough + app) - time(app))
                     the middleware's own work against the passthrough's own work (stricter)
Target (issue 4): a request through the middleware costs at most 4x one through a passthrough, in
either phase. The added ratio is printed beside it so the stricter figure is never hidden.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from graceful import Lifecycle, Settings
from graceful.wsgi import GracefulMiddleware

Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Any], Iterable[bytes]]
TARGET = 4.0

HEADERS = [("Content-Type", "text/plain")]
BODY = [b"hello"]


def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return BODY


class Passthrough:
    """The do-nothing WSGI middleware every measurement is compared with."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: Any) -> Iterable[bytes]:
        return self.app(environ, start_response)


def write(data: bytes) -> None:
    return None


def start_response(
    status: str, headers: list[tuple[str, str]], exc_info: Any = None
) -> Callable[[bytes], None]:
    return write


class GunicornLikeResponse:
    """The shape of gunicorn's ``Response``: made per request; ``start_response`` is its method."""

    __slots__ = ("headers", "must_close", "status")

    def __init__(self) -> None:
        self.must_close = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        self.status, self.headers = status, headers
        return write

    def force_close(self) -> None:
        self.must_close = True


def gunicorn_like_start_response() -> Any:
    """What gunicorn passes: the method of a response object made for this request."""
    return GunicornLikeResponse().start_response


def environ() -> Environ:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/orders/42",
        "QUERY_STRING": "",
        "SERVER_NAME": "example",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "10.0.0.1",
        "HTTP_HOST": "example",
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def time_per_request(
    target: WSGIApp, requests: int, make_start_response: Callable[[], Any] | None = None
) -> float:
    """What a server does per request: call, iterate, close (when the result has close()).

    ``make_start_response``: None for one start_response function for every request (uWSGI's
    shape; the loop is the same as for the ASGI benchmark), else what makes one per request. Two
    copies of the loop, so that neither shape pays for a branch or a call the other needs.
    """
    the_environ = environ()
    started = time.perf_counter()
    if make_start_response is None:
        for _ in range(requests):
            result = target(the_environ, start_response)
            for chunk in result:
                write(chunk)
            close = getattr(result, "close", None)
            if close is not None:
                close()
    else:
        for _ in range(requests):
            result = target(the_environ, make_start_response())
            for chunk in result:
                write(chunk)
            close = getattr(result, "close", None)
            if close is not None:
                close()
    return (time.perf_counter() - started) / requests


def measure(requests: int, rounds: int) -> dict[str, list[float]]:
    ready = Lifecycle(Settings())
    ready.open_gate()
    draining = Lifecycle(Settings())
    draining.open_gate()
    draining.begin_drain("benchmark")
    # name: (the WSGI callable, the server shape it is driven by)
    gunicorn = gunicorn_like_start_response
    variants: dict[str, tuple[WSGIApp, Callable[[], Any] | None]] = {
        "app alone": (app, None),
        "passthrough": (Passthrough(app), None),
        "graceful (ready)": (GracefulMiddleware(app, lifecycle=ready), None),
        "graceful (draining)": (GracefulMiddleware(app, lifecycle=draining), None),
        "gunicorn: app alone": (app, gunicorn),
        "gunicorn: passthrough": (Passthrough(app), gunicorn),
        "gunicorn: graceful (ready)": (GracefulMiddleware(app, lifecycle=ready), gunicorn),
        "gunicorn: graceful (draining)": (GracefulMiddleware(app, lifecycle=draining), gunicorn),
    }
    for target, server in variants.values():  # warm up: the first call opens the gate, fills caches
        time_per_request(target, 2000, server)
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (target, server) in variants.items():
            results[name].append(time_per_request(target, requests, server))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000, help="requests per round (default 50000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    args = parser.parse_args()
    if args.requests < 1000 or args.rounds < 1:
        parser.error("--requests must be >= 1000 and --rounds >= 1")

    results = measure(args.requests, args.rounds)
    median = {name: statistics.median(times) for name, times in results.items()}
    print(f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.requests} requests, median round")
    print(f"{'variant':<32}{'us/request':>12}{'per-request ratio':>19}{'added ratio':>13}")
    worst = 0.0
    for name, value in median.items():
        # each server shape against its own passthrough
        server = name.split(": ")[0] + ": " if ": " in name else ""
        bare, passthrough = median[server + "app alone"], median[server + "passthrough"]
        total = value / passthrough
        added = (value - bare) / (passthrough - bare) if not name.endswith("app alone") else float("nan")
        if "graceful" in name:
            worst = max(worst, total)
        print(f"{name:<32}{value * 1e6:>12.3f}{total:>19.2f}{added:>13.2f}")
    verdict = "ok" if worst <= TARGET else "OVER TARGET"
    print(f"per-request cost vs passthrough, worst phase and server: {worst:.2f}x", end="")
    print(f"  (target <= {TARGET:g}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
