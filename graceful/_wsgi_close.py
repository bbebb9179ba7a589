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
  headers.

gunicorn and waitress need no wrapper around ``start_response``: the request is marked before
the app runs, which is also the cheapest way. The way is chosen once per kind of
``start_response`` (the class of a bound method's owner, or a function's code) and remembered.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from types import FunctionType, MethodType
from typing import Any

__all__ = ["closing_start_response"]

StartResponse = Callable[..., Callable[[bytes], object]]
Way = Callable[[Any], Any]  # start_response -> the start_response to give the app

_CLOSE = ("Connection", "close")


def closing_start_response(start_response: Any) -> Any:
    """The ``start_response`` to give the app so that the server closes the connection after it."""
    # Written for speed: this runs for every request of the drain (bench/overhead_wsgi.py).
    kind = type(start_response)
    if kind is FunctionType:
        key: object = start_response.__code__
    elif kind is MethodType:
        key = type(start_response.__self__)
    else:
        key = kind
    way = _ways.get(key)
    if way is None:
        way = _choose_way(start_response)
        if len(_ways) < _MAX_KINDS:  # a server that makes a class per request must not grow it
            _ways[key] = way
    return way(start_response)


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
    for name, _ in headers:
        if len(name) == 10 and name.lower() == "connection":  # the app set one: replace it
            headers = [(n, v) for n, v in headers if n.lower() != "connection"]
            break
    return start_response(status, [*headers, _CLOSE], exc_info)


#: start_response -> ``_start_closing`` bound to it. A method object is the cheapest wrapper to make
#: and to call (cheaper than a closure or functools.partial), and partial makes it with no frame.
_by_header: Way = partial(MethodType, _start_closing)


_MAX_KINDS = 64
_ways: dict[object, Way] = {}
