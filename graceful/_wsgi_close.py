"""How to make a WSGI server close the connection after this response, server by server.

While draining, every response should tell its client to take the next request elsewhere
(``Connection: close``, RFC 9112 section 9.6). PEP 3333 forbids applications to send hop-by-hop
headers, and servers enforce that in different ways, so one header does not fit all:

- gunicorn drops the header (``http/wsgi.py`` ``process_headers``): graceful calls the response's
  ``force_close()``;
- waitress answers 500 (it raises ``AssertionError``): graceful calls the task's
  ``set_close_on_finish()`` after each ``start_response`` call;
- wsgiref and Django's runserver assert (a 500 unless ``python -O``): graceful sets the header on
  the handler's own headers after ``start_response``;
- werkzeug's dev server closes after every response (since 2.1) and says so: nothing to do (a
  second header would be doubled);
- others (uWSGI, cheroot, bjoern...) pass it on: graceful adds ``Connection: close`` to the app's
  headers (after any it set itself: a ``close`` option anywhere makes the client close).

The server's ``start_response`` may reach graceful wrapped by an outer middleware (Sentry's is a
``functools.partial``, others are closures or objects with ``__call__``): graceful then looks
inside the wrapper, a few levels deep, for the server's own. If it cannot find it, it adds the
header, except on waitress and wsgiref (``SERVER_SOFTWARE``), where the header would turn the
response into a 500: there the response goes out without the notice, and the client learns of
the drain when the server stops.

gunicorn needs no wrapper around ``start_response``: the request is marked before the app runs,
which is also the cheapest way. The way is chosen once per kind of ``start_response`` (the class
of a bound method's owner, or a function's code) and remembered.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from types import FunctionType, MethodType
from typing import Any

__all__ = ["closing_start_response"]

StartResponse = Callable[..., Callable[[bytes], object]]
# A way: (the start_response the app would get, the server's own inside it) -> the one to give it.
Way = Callable[[Any, Any], Any]

_CLOSE = [("Connection", "close")]  # concatenated, never changed
# Servers that turn an app's hop-by-hop header into a 500 (their SERVER_SOFTWARE prefixes):
# waitress, and wsgiref's WSGIServer (Django's runserver included).
_REFUSE_THE_HEADER = ("waitress", "WSGIServer/")
_MAX_DEPTH = 4  # wrappers inside wrappers searched for the server's start_response
_MAX_VISITS = 64

log = logging.getLogger("graceful")


def closing_start_response(start_response: Any, environ: Mapping[str, Any] | None = None) -> Any:
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
        way = _way_for(key, start_response, environ)
    if way is _by_header:  # the usual way, made without a further call
        return MethodType(_start_closing, start_response)
    if way is _through_wrapper:
        return _through_wrapper(start_response, environ)
    return way(start_response, start_response)


def _way_for(key: object, start_response: Any, environ: Mapping[str, Any] | None) -> Way:
    global _last
    way = _ways.get(key)
    if way is None:
        way = _server_way(start_response)
        if way is None:
            way = _through_wrapper if _parts(start_response) else _fallback(environ)
        if len(_ways) < _MAX_KINDS:  # a server that makes a class per request must not grow it
            _ways[key] = way
    _last = (key, way)  # one tuple, swapped whole: safe for other threads reading it
    return way


def _server_way(start_response: Any) -> Way | None:
    """The way for a server's own ``start_response``, or None if it is not one graceful knows."""
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
        if _waitress_task(start_response) is not None:
            return _by_waitress_task
    return None


def _by_force_close(start_response: Any, server_start_response: Any) -> Any:
    # gunicorn: Response.force_close() makes should_close() true, which sends Connection: close
    # and ends the keep-alive loop after this response.
    server_start_response.__self__.force_close()
    return start_response


def _waitress_task(start_response: FunctionType) -> Any:
    """waitress's task, if ``start_response`` is the closure over it (in ``WSGITask.execute``)."""
    names = start_response.__code__.co_freevars
    if "self" not in names or start_response.__closure__ is None:
        return None
    try:
        task = start_response.__closure__[names.index("self")].cell_contents
    except ValueError:  # an empty cell
        return None
    if type(task).__module__ == "waitress.task" and callable(getattr(task, "set_close_on_finish", None)):
        return task
    return None


def _by_waitress_task(start_response: Any, server_start_response: Any) -> Any:
    # set_close_on_finish() adds Connection: close to the response headers and closes the channel
    # once this response is flushed. Called after every start_response call: a second call with
    # exc_info (an error page replacing the response) clears the headers, and with them the notice.
    task = _waitress_task(server_start_response)

    def start_closing(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        write = start_response(status, headers, exc_info)
        task.set_close_on_finish()
        return write

    return start_closing


def _as_it_is(start_response: Any, server_start_response: Any) -> Any:
    return start_response


def _by_wsgiref_headers(start_response: Any, server_start_response: Any) -> Any:
    # wsgiref refuses the header in start_response but sends handler.headers later; Django's
    # runserver (a wsgiref handler with keep-alive) also ends the connection when it sees it.
    handler = server_start_response.__self__

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
    if headers.__class__ is not list:  # a tuple, say: PEP 3333 asks for a list, some apps differ
        headers = list(headers)
    return start_response(status, headers + _CLOSE, exc_info)


def _by_header(start_response: Any, server_start_response: Any = None) -> Any:
    # _start_closing bound to start_response: a method object is cheaper to make and to call than
    # a closure or functools.partial.
    return MethodType(_start_closing, start_response)


# -- start_response wrapped by an outer middleware -----------------------------------------------


def _through_wrapper(start_response: Any, environ: Mapping[str, Any] | None) -> Any:
    """Find the server's start_response inside a wrapper (per request: a wrapper holds this
    request's), and apply that server's way to the wrapper the app is given."""
    for inner in _inside(start_response):
        way = _server_way(inner)
        if way is not None:
            return way(start_response, inner)
    return _fallback(environ)(start_response, None)


def _fallback(environ: Mapping[str, Any] | None) -> Way:
    """The way for a start_response graceful does not know: the header, unless the server would
    answer 500 to it; then the response goes out without the notice."""
    software = str((environ or {}).get("SERVER_SOFTWARE", ""))
    if software.startswith(_REFUSE_THE_HEADER):
        _warn_once(software)
        return _as_it_is
    return _by_header


def _inside(start_response: Any) -> Iterator[Any]:
    """Callables held by a wrapper, breadth first, bounded in depth and count."""
    seen = {id(start_response)}
    level = [start_response]
    visits = 0
    for _ in range(_MAX_DEPTH):
        below = []
        for wrapper in level:
            for part in _parts(wrapper):
                if id(part) in seen or visits >= _MAX_VISITS:
                    continue
                seen.add(id(part))
                visits += 1
                yield part
                below.append(part)
        level = below


def _parts(wrapper: Any) -> list[Any]:
    """The callables a start_response wrapper may hold: a partial's function and arguments, a
    ``functools.wraps`` target, a closure's cells, a callable object's attributes."""
    found: list[Any] = []
    if isinstance(wrapper, functools.partial):
        found += [wrapper.func, *wrapper.args, *wrapper.keywords.values()]
    wrapped = getattr(wrapper, "__wrapped__", None)
    if wrapped is not None:
        found.append(wrapped)
    function = wrapper.__func__ if type(wrapper) is MethodType else wrapper
    if type(function) is FunctionType and function.__closure__:
        for cell in function.__closure__:
            with contextlib.suppress(ValueError):  # an empty cell
                found.append(cell.cell_contents)
    owner = wrapper.__self__ if type(wrapper) is MethodType else wrapper
    if not isinstance(owner, (FunctionType, type)) and type(owner).__module__ != "builtins":
        found += list(getattr(owner, "__dict__", {}).values())
        # A wrapper with __slots__ keeps what it wraps there (graceful's own _Noticing does).
        for name in getattr(type(owner), "__slots__", ()):
            with contextlib.suppress(AttributeError):
                found.append(getattr(owner, name))
    return [part for part in found if callable(part) and not isinstance(part, type)]


_warned: set[str] = set()


def _warn_once(software: str) -> None:
    if software not in _warned:
        _warned.add(software)
        log.warning(
            "graceful: draining, but start_response is wrapped by another middleware in a way graceful "
            "cannot see through, and %s refuses a Connection: close header from the app: responses "
            "go out without it",
            software,
        )


_MAX_KINDS = 64
_ways: dict[object, Way] = {}  # key: a bound method owner's class, a function's code, or a type
_last: tuple[object, Way] = (None, _by_header)
