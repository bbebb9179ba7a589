"""Not tests: the plain WSGI app that test_gunicorn*.py serve with real gunicorn processes.

It is deliberately *not* wrapped in GracefulMiddleware: the graceful worker classes must wrap it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

_FILE_BODY = b"0123456789" * 1000


def _number(env: Environ, name: str, default: float) -> float:
    values = parse_qs(env.get("QUERY_STRING", "")).get(name)
    return min(float(values[0]), 60.0) if values else default


def app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """/fast, /slow?seconds=S, /stream?chunks=N&interval=S, /boom, /boom-body, /file, /pid."""
    path = env.get("PATH_INFO", "")
    if path == "/boom":
        raise RuntimeError("boom at call")
    if path == "/boom-body":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _boom_body()
    if path == "/slow":
        time.sleep(_number(env, "seconds", 1.0))
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream(int(_number(env, "chunks", 10)), _number(env, "interval", 0.1))
    if path == "/file":
        handle = tempfile.TemporaryFile()  # noqa: SIM115 - the server closes it via file_wrapper.close()
        handle.write(_FILE_BODY)
        handle.seek(0)
        start_response(
            "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(_FILE_BODY)))]
        )
        return env["wsgi.file_wrapper"](handle, 8192)  # type: ignore[no-any-return]
    body = f"{path} from {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _boom_body() -> Iterator[bytes]:
    yield b"partial"
    raise RuntimeError("boom in body")


def _stream(chunks: int, interval: float) -> Iterator[bytes]:
    for number in range(chunks):
        yield f"{number}\n".encode()
        time.sleep(interval)
    yield b"end\n"
