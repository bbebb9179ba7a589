"""graceful.wsgi.GracefulMiddleware at the WSGI boundary, called the way a PEP 3333 server calls it.

A tiny in-test "server" (``serve``) calls the app, iterates the result and always calls ``close()``,
or stops early as a server does when the client went away. Real gunicorn processes are driven in
test_gunicorn*.py.
"""

from __future__ import annotations

import functools
import gc
import io
import json
import sys
import threading
import wsgiref.util
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from graceful import Lifecycle, Phase, Settings
from graceful.wsgi import GracefulMiddleware, find_middleware

TOKEN = "a-long-enough-token-123"
Environ = dict[str, Any]


def environ(
    path: str = "/", method: str = "GET", query: str = "", host: str = "127.0.0.1", **extra: Any
) -> Environ:
    env: Environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REMOTE_ADDR": host,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
        "wsgi.file_wrapper": wsgiref.util.FileWrapper,
    }
    env.update(extra)
    return env


class Served:
    """What the server saw: status, headers, body, and whether close() was called."""

    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        self.status, self.headers = status, headers
        return lambda data: None

    @property
    def code(self) -> int:
        return int(self.status.split()[0])

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name), None)


def serve(app: Any, env: Environ, *, stop_after: int | None = None) -> Served:
    """Call ``app`` as a WSGI server does; ``stop_after`` chunks mimics a client that went away."""
    served = Served()
    result = app(env, served.start_response)
    try:
        for number, chunk in enumerate(result):
            if stop_after is not None and number >= stop_after:
                break
            served.body += chunk
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return served


def hello(env: Environ, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


@pytest.fixture
def lifecycle() -> Iterator[Lifecycle]:
    """A private lifecycle on its own board (not the process default)."""
    made = Lifecycle(Settings(drain_delay=0.2, drain_timeout=2.0))
    try:
        yield made
    finally:
        made.close()


def test_probes_follow_the_phase(lifecycle: Lifecycle) -> None:
    """live stays 200 throughout; ready is 200 in service and 503 from the first instant of the drain."""
    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    assert serve(app, environ("/healthz/ready")).code == 200  # the first request opens the gate
    assert serve(app, environ("/healthz/startup")).code == 200
    lifecycle.begin_drain("test")
    codes = [
        serve(app, environ(path)).code for path in ("/healthz/live", "/healthz/ready", "/healthz/startup")
    ]
    assert codes == [200, 503, 200]
    assert serve(app, environ("/")).body == b"hello"  # ordinary traffic is still served


def test_health_json_counts_and_probes_are_not_in_flight(lifecycle: Lifecycle) -> None:
    """/healthz answers JSON figures; probe requests are not counted as requests."""
    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    serve(app, environ("/"))
    served = serve(app, environ("/healthz"))
    figures = json.loads(served.body)
    assert served.code == 200 and served.header("content-type") == "application/json"
    assert figures["requests"] == 1 and figures["in_flight"] == 0 and figures["phase"] == "ready"


def test_head_probe_has_no_body(lifecycle: Lifecycle) -> None:
    """HEAD on a probe answers the status with an empty body."""
    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    served = serve(app, environ("/healthz/live", method="HEAD"))
    assert served.code == 200 and served.body == b""


@pytest.mark.parametrize(
    ("host", "authorization", "expected"),
    [
        ("127.0.0.1", None, 202),
        ("10.0.0.9", None, 403),
        ("10.0.0.9", f"Bearer {TOKEN}", 202),
        ("127.0.0.1", "Bearer wrong-token-of-length", 403),
        ("", None, 403),  # no REMOTE_ADDR (a UNIX socket): not loopback
    ],
)
def test_shutdown_is_authorised_from_remote_addr(
    lifecycle: Lifecycle, host: str, authorization: str | None, expected: int
) -> None:
    """POST /shutdown drains for loopback callers (REMOTE_ADDR) or the bearer token, else 403 and nothing changes."""
    lifecycle.settings = lifecycle.settings.replace(shutdown_token=TOKEN)
    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    extra = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    served = serve(app, environ("/shutdown", method="POST", host=host, **extra))
    assert served.code == expected
    assert lifecycle.phase.is_terminating is (expected == 202)


class _Socket:
    """Stands in for ``environ["gunicorn.socket"]``: only its getsockname() is read."""

    def __init__(self, name: object) -> None:
        self.name = name

    def getsockname(self) -> object:
        if isinstance(self.name, OSError):
            raise self.name
        return self.name


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, 202),  # curl on the pod's loopback (waitress, wsgiref: no local address, headers only)
        ({"gunicorn.socket": _Socket(("127.0.0.1", 8000))}, 202),
        (
            {"gunicorn.socket": _Socket(("10.1.2.3", 8000))},
            403,
        ),  # arrived on the pod IP (Istio's L4 passthrough)
        ({"gunicorn.socket": _Socket(OSError(9, "bad file descriptor"))}, 403),  # cannot say: refused
        ({"gunicorn.socket": _Socket("/run/app.sock")}, 403),
        ({"SERVER_NAME": "0.0.0.0", "SERVER_ADDR": "10.1.2.3"}, 202),  # neither is read
        ({"HTTP_X_FORWARDED_PROTO": "http", "HTTP_X_REQUEST_ID": "5b0c"}, 403),  # Envoy's defaults
        ({"HTTP_X_FORWARDED_FOR": "203.0.113.7"}, 403),
        ({"HTTP_X_REAL_IP": "203.0.113.7"}, 403),
        ({"HTTP_VIA": "1.1 proxy"}, 403),
        (
            {"PROXY_PROTOCOL": "PROXY4", "PROXY_ADDR": "127.0.0.1", "REMOTE_ADDR": "127.0.0.1"},
            403,
        ),  # gunicorn --proxy-protocol
    ],
)
def test_shutdown_from_loopback_through_a_proxy_is_refused(
    lifecycle: Lifecycle, extra: dict[str, Any], expected: int
) -> None:
    """A loopback REMOTE_ADDR is trusted only without proxy headers and, under gunicorn, on a loopback socket;
    refused requests change nothing and /healthz shows no check detail."""
    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    detail = serve(app, environ("/healthz", **extra))
    assert ("checks" in json.loads(detail.body)) is (expected == 202)
    assert serve(app, environ("/shutdown", method="POST", **extra)).code == expected
    assert lifecycle.phase.is_terminating is (expected == 202)


def test_shutdown_get_is_refused_unless_allowed(lifecycle: Lifecycle) -> None:
    """GET /shutdown is 405 by default (a stray GET must not drain) and 202 with shutdown_allow_get."""
    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    assert serve(app, environ("/shutdown")).code == 405 and not lifecycle.phase.is_terminating
    lifecycle.settings = lifecycle.settings.replace(shutdown_allow_get=True)
    assert serve(app, environ("/shutdown")).code == 202 and lifecycle.phase is Phase.DRAINING


def test_shutdown_wait_answers_when_the_delay_is_over(lifecycle: Lifecycle) -> None:
    """POST /shutdown?wait=1 holds the reply until the drain delay (0.2 s here) has passed."""
    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    served = serve(app, environ("/shutdown", method="POST", query="wait=1"))
    assert served.code == 202
    assert lifecycle.drain_delay_over()
    assert served.header("connection") == "close"


def test_connection_close_while_draining(lifecycle: Lifecycle) -> None:
    """Responses of the drain carry Connection: close, after a (forbidden) one the app set: a close
    option anywhere in the field makes the client close (RFC 9112 section 9.6)."""

    def keep_alive(env: Environ, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Connection", "keep-alive")])
        return [b"x"]

    app = GracefulMiddleware(keep_alive, lifecycle=lifecycle)
    assert serve(app, environ("/")).header("connection") == "keep-alive"
    lifecycle.begin_drain("test")
    served = serve(app, environ("/"))
    assert [value for name, value in served.headers if name.lower() == "connection"] == [
        "keep-alive",
        "close",
    ]


def test_gunicorn_response_is_asked_to_close_instead_of_a_header(lifecycle: Lifecycle) -> None:
    """Under gunicorn, which drops hop-by-hop headers from apps, the Response's force_close() is called."""

    class Response:
        def __init__(self) -> None:
            self.closed = False
            self.headers: list[tuple[str, str]] = []

        def force_close(self) -> None:
            self.closed = True

        def start_response(
            self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            self.headers = headers
            return lambda data: None

    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    lifecycle.begin_drain("test")
    response = Response()
    result = app(environ("/"), response.start_response)
    list(result)
    result.close()  # type: ignore[attr-defined]
    assert response.closed and all(name.lower() != "connection" for name, _ in response.headers)


def test_in_flight_until_close_for_a_streamed_body(lifecycle: Lifecycle) -> None:
    """A generator body counts from the call until the server closes it, not until the app returns."""
    seen: list[int] = []

    def stream(env: Environ, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        for number in range(3):
            seen.append(lifecycle.local_in_flight)
            yield str(number).encode()

    app = GracefulMiddleware(stream, lifecycle=lifecycle)
    result = app(environ("/"), Served().start_response)
    assert lifecycle.local_in_flight == 1
    assert b"".join(result) == b"012"
    assert lifecycle.local_in_flight == 1  # iterated to the end, but not closed yet
    result.close()  # type: ignore[attr-defined]
    assert seen == [1, 1, 1] and lifecycle.local_in_flight == 0
    result.close()  # type: ignore[attr-defined]  # a second close does not count twice
    assert lifecycle.local_in_flight == 0


def test_client_disconnect_mid_stream_ends_the_count(lifecycle: Lifecycle) -> None:
    """A server that stops iterating (client gone) and closes the body leaves the count exact."""
    closed: list[bool] = []

    def stream(env: Environ, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            for number in range(100):
                yield str(number).encode()
        finally:
            closed.append(True)

    app = GracefulMiddleware(stream, lifecycle=lifecycle)
    served = serve(app, environ("/"), stop_after=2)
    assert served.body == b"01" and closed == [True] and lifecycle.local_in_flight == 0


def test_exceptions_leave_the_count_exact(lifecycle: Lifecycle) -> None:
    """An app that raises when called, or while its body is iterated, is not left in flight."""

    def raises_at_call(env: Environ, start_response: Any) -> list[bytes]:
        raise RuntimeError("boom")

    def raises_in_body(env: Environ, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        raise RuntimeError("boom")

    for broken in (raises_at_call, raises_in_body):
        app = GracefulMiddleware(broken, lifecycle=lifecycle)
        with pytest.raises(RuntimeError):
            serve(app, environ("/"))
        assert lifecycle.local_in_flight == 0
    assert lifecycle.snapshot()["requests"] == 2


def test_file_wrapper_result_is_kept_and_counted_until_close(lifecycle: Lifecycle) -> None:
    """A wsgi.file_wrapper result stays the server's own type (sendfile path) and counts until close()."""
    files: list[io.BytesIO] = []

    def send_file(env: Environ, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        files.append(io.BytesIO(b"file body"))
        return env["wsgi.file_wrapper"](files[-1], 4)  # type: ignore[no-any-return]

    app = GracefulMiddleware(send_file, lifecycle=lifecycle)
    result = app(environ("/"), Served().start_response)
    assert isinstance(result, wsgiref.util.FileWrapper)
    assert b"".join(result) == b"file body" and lifecycle.local_in_flight == 1
    result.close()
    assert files[0].closed and lifecycle.local_in_flight == 0


def test_threads_count_exactly(lifecycle: Lifecycle) -> None:
    """Many threads serving at once, switching every microsecond, leave in-flight 0 and the request total exact."""
    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    per_thread, threads = 2000, 8
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # force thread switches as often as CPython allows
    try:
        run_threads(app, per_thread, threads)
    finally:
        sys.setswitchinterval(interval)
    assert lifecycle.local_in_flight == 0
    assert lifecycle.snapshot()["requests"] == per_thread * threads


def run_threads(app: GracefulMiddleware, per_thread: int, threads: int) -> None:

    def work() -> None:
        for _ in range(per_thread):
            serve(app, environ("/"))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)


def test_find_middleware_sees_flask_style_wiring(lifecycle: Lifecycle) -> None:
    """An app whose ``wsgi_app`` (Flask) or ``app`` attribute is the middleware counts as wrapped."""

    class FlaskLike:
        def __init__(self) -> None:
            self.wsgi_app: Any = hello

        def __call__(self, env: Environ, start_response: Any) -> Iterable[bytes]:
            return self.wsgi_app(env, start_response)  # type: ignore[no-any-return]

    flask_like = FlaskLike()
    assert find_middleware(flask_like) is None
    flask_like.wsgi_app = GracefulMiddleware(hello, lifecycle=lifecycle)
    assert find_middleware(flask_like) is flask_like.wsgi_app
    assert find_middleware(hello) is None


class WhiteNoiseLike:
    """A wrapper that keeps the app as ``application``, as whitenoise.WhiteNoise does."""

    def __init__(self, application: Any) -> None:
        self.application = application

    def __call__(self, env: Environ, start_response: Any) -> Iterable[bytes]:
        return self.application(env, start_response)  # type: ignore[no-any-return]


def test_find_middleware_sees_whitenoise_and_decorators(lifecycle: Lifecycle) -> None:
    """``application`` (WhiteNoise) and ``__wrapped__`` (functools.wraps) lead to the middleware too."""
    middleware = GracefulMiddleware(hello, lifecycle=lifecycle)

    @functools.wraps(middleware)  # also copies the middleware's __dict__: an ``app`` that is ``hello``
    def decorated(env: Environ, start_response: Any) -> Iterable[bytes]:
        return middleware(env, start_response)

    assert find_middleware(WhiteNoiseLike(middleware)) is middleware
    assert find_middleware(decorated) is middleware
    assert find_middleware(WhiteNoiseLike(WhiteNoiseLike(decorated))) is middleware
    assert find_middleware(WhiteNoiseLike(hello)) is None


def test_find_middleware_asks_the_lifecycle_for_one_the_chain_hides(lifecycle: Lifecycle) -> None:
    """A middleware behind a closure is found through the lifecycle it registered on; one in the chain wins."""
    older = GracefulMiddleware(hello, lifecycle=lifecycle)
    newer = GracefulMiddleware(hello, lifecycle=lifecycle)

    def closure(env: Environ, start_response: Any) -> Iterable[bytes]:
        return older(env, start_response)

    assert find_middleware(closure) is None  # no lifecycle: only the walk
    assert find_middleware(closure, lifecycle=lifecycle) is newer  # several, none seen: the newest
    assert find_middleware(WhiteNoiseLike(older), lifecycle=lifecycle) is older
    other = Lifecycle()
    try:
        assert find_middleware(closure, lifecycle=other) is None  # built on another lifecycle
    finally:
        other.close()


def test_middlewares_are_registered_weakly(lifecycle: Lifecycle) -> None:
    """A middleware that is gone is not kept alive, nor found, by its lifecycle."""
    GracefulMiddleware(hello, lifecycle=lifecycle)
    gc.collect()
    assert lifecycle.middlewares(GracefulMiddleware) == []
    kept = GracefulMiddleware(hello, lifecycle=lifecycle)
    assert lifecycle.middlewares(GracefulMiddleware) == [kept]
