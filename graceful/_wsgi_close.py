"""How to make a WSGI server close the connection after this response, server by server.

While draining, every response should tell its client to take the next request elsewhere
(``Connection: close``, RFC 9112 section 9.6). PEP 3333 forbids applications to send hop-by-hop
headers, and servers enforce that in different ways, so one header does not fit all:

- gunicorn drops the header (``http/wsgi.py`` ``process_headers``): graceful calls the response's
  ``force_close()``;
- waitress answers 500 (it raises ``AssertionError``): graceful calls the task's
  ``set_close_on_finish()``;
- wsgiref and Django's runserver assert (a 500 unless ``python -O``): graceful sets the header on
  the handler's own headers after ``start_response``;
- werkzeug's dev server closes after every response (since 2.1) and says so: nothing to do (a
  second header would be doubled);
- others (uWSGI, cheroot, bjoern...) pass it on: graceful adds ``Connection: close`` to the app's
  headers (after any it set itself: a ``close`` option anywhere makes the client close).

gunicorn and waitress need no wrapper around ``start_response``: the request is marked before
the app runs, which is also the cheapest way. The way is chosen once per kind of
``start_response`` (the class of a bound method's owner, or a function's code) and remembered.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FunctionType, MethodType
from typing import Any

__all__ = ["closing_start_response"]

StartResponse = Callable[..., Callable[[bytes], object]]
Way = Callable[[Any], Any]  # start_response -> the start_response to give the app

_CLOSE = [("Connection", "close")]  # concatenated, never changed


def closing_start_response(start_response: Any) -> Any:
    """The ``start_response`` to give the app so that the server closes the connection after it."""
    # Written for speed: this runs for every request of the drain (bench/overhead_wsgi.py).
    kind = start_response.__class__
    if kind is FunctionType:
        key: object = start_response.__code__
    elif kind is MethodType:
        key = start_response.__self__.__class__
    else:
        key = kind
    last_key, way = _last  # one process almost always runs one server: no hashing then
    if last_key is not key:
        way = _way_for(key, start_response)
    if way is _by_header:  # the usual way, made without a further call
        return MethodType(_start_closing, start_response)
    return way(start_response)


def _way_for(key: object, start_response: Any) -> Way:
    global _last
    way = _ways.get(key)
    if way is None:
        way = _choose_way(start_response)
        if len(_ways) < _MAX_KINDS:  # a server that makes a class per request must not grow it
            _ways[key] = way
    _last = (key, way)  # one tuple, swapped whole: safe for other threads reading it
    return way


def _choose_way(start_response: Any) -> Way:
    if type(start_response) is MethodType:
        owner = start_response.__self__
        if callable(getattr(owner, "force_close", None)):
            return _by_force_close
        wsgiref = sys.modules.get("wsgiref.handlers")  # not imported: cannot be a wsgiref handler
        if wsgiref is not None and isinstance(owner, wsgiref.BaseHandler):
            return _by_wsgiref_headers
    elif type(start_response) is FunctionType:
        if start_response.__module__ == "werkzeug.serving":
            return _as_it_is
        # waitress: start_response is a closure over the task (in WSGITask.execute).
        cell, owner = _closure_self(start_response)
        waitress = type(owner).__module__ == "waitress.task"
        if cell is not None and waitress and callable(getattr(owner, "set_close_on_finish", None)):
            return lambda start_response: _by_waitress_task(start_response, cell)
    return _by_header


def _by_force_close(start_response: Any) -> Any:
    # gunicorn: Response.force_close() makes should_close() true, which sends Connection: close
    # and ends the keep-alive loop after this response.
    start_response.__self__.force_close()
    return start_response


def _closure_self(start_response: FunctionType) -> tuple[int | None, object]:
    """The closure cell of a nested ``start_response`` that holds the method's ``self``, and it."""
    names = start_response.__code__.co_freevars
    if "self" not in names or start_response.__closure__ is None:
        return None, None
    index = names.index("self")
    try:
        return index, start_response.__closure__[index].cell_contents
    except ValueError:  # an empty cell
        return None, None


def _by_waitress_task(start_response: Any, cell: int) -> Any:
    # waitress (a closure in WSGITask.execute): set_close_on_finish() before the headers are
    # written adds Connection: close and closes the channel once this response is flushed.
    start_response.__closure__[cell].cell_contents.set_close_on_finish()
    return start_response


def _as_it_is(start_response: Any) -> Any:
    return start_response


def _by_wsgiref_headers(start_response: Any) -> Any:
    # wsgiref refuses the header in start_response but sends handler.headers later; Django's
    # runserver (a wsgiref handler with keep-alive) also ends the connection when it sees it.
    handler = start_response.__self__

    def start_closing(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        write = start_response(status, headers, exc_info)
        handler.headers["Connection"] = "close"
        return write

    return start_closing


def _start_closing(
    start_response: Any, status: str, headers: list[tuple[str, str]], exc_info: Any = None
) -> Any:
    # Appended, not replacing a Connection header the app set (PEP 3333 forbids apps to): a
    # "close" option anywhere in the field makes the client close (RFC 9112 section 9.6), and
    # looking for one would cost a third of this wrapper.
    return start_response(status, headers + _CLOSE, exc_info)


def _by_header(start_response: Any) -> Any:
    # _start_closing bound to start_response: a method object is cheaper to make and to call than
    # a closure or functools.partial.
    return MethodType(_start_closing, start_response)


_MAX_KINDS = 64
_ways: dict[object, Way] = {}  # key: a bound method owner's class, a function's code, or a type
_last: tuple[object, Way] = (None, _by_header)
