"""The one place that reads httpx's exceptions and responses, and the error raised when all attempts fail."""

from __future__ import annotations

import ssl

import httpx

from graceful._wire import SHED_HEADER, SHED_VALUE
from graceful.client._policies import Failure


def classify_error(exc: Exception) -> Failure:
    """What an exception from the inner transport says about whether the app saw the request.

    httpx raises ``ConnectError`` for a refused connection, a name that does not resolve and a
    failed TLS handshake, and ``ConnectTimeout``/``PoolTimeout`` before a byte of the request was
    written: NEVER_SENT. Errors after the request went out (``ReadError``, ``WriteError``,
    ``RemoteProtocolError`` such as "Server disconnected without sending a response") are
    ambiguous: the server may have acted on it.
    """
    if isinstance(exc, httpx.ConnectError):
        if _caused_by(exc, ssl.SSLCertVerificationError):
            return Failure.FATAL  # the next attempt meets the same certificate
        return Failure.NEVER_SENT
    if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)):
        return Failure.NEVER_SENT
    if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout)):
        return Failure.TIMEOUT
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.CloseError)):
        return Failure.NO_RESPONSE
    return Failure.FATAL  # LocalProtocolError, UnsupportedProtocol, bugs: the same again


def fails_fast_unseen(exc: Exception) -> bool:
    """Did the attempt fail at once and before any server saw it (refused, no name, TLS)?

    Those are the failures retried transparently (``RetryPolicy.transparent_retries``). A connect
    or pool timeout is never-sent too, but took a whole timeout: it counts as an attempt.
    """
    return isinstance(exc, httpx.ConnectError) and classify_error(exc) is Failure.NEVER_SENT


def classify_response(response: httpx.Response, retry_statuses: frozenset[int]) -> Failure | None:
    """None for a response to keep; NEVER_SENT for graceful's shed 503; STATUS for a retryable status."""
    if response.status_code == 503 and response.headers.get(SHED_HEADER) == SHED_VALUE:
        return Failure.NEVER_SENT
    if response.status_code in retry_statuses:
        return Failure.STATUS
    return None


def is_replayable(request: httpx.Request) -> bool:
    """Can the request's body be sent again? In-memory bodies can; generators and files read once."""
    return isinstance(request.stream, httpx.ByteStream)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # httpx -> httpcore -> ssl: a short chain; bounded against cycles
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


#: An error message lists this many attempts at most; ``RetriesExhausted.attempts`` has them all.
MESSAGE_ATTEMPTS = 6


class RetriesExhausted(httpx.TransportError):
    """Every attempt of a call failed, or the failure could not be retried; the message says each.

    Raised as a subclass of the last attempt's own error class too, so ``except httpx.ConnectError``
    and ``except httpx.TimeoutException`` keep catching what they caught without the transport.
    ``attempts`` has the record of each attempt; ``__cause__`` is the last attempt's error.
    """

    attempts: tuple[object, ...] = ()


_EXHAUSTED_CLASSES: dict[type[httpx.TransportError], type[RetriesExhausted]] = {}


def _exhausted_class(base: type[httpx.TransportError]) -> type[RetriesExhausted]:
    """``RetriesExhausted`` and ``base`` in one class (one per base, made once)."""
    if issubclass(base, RetriesExhausted):
        return base
    made = _EXHAUSTED_CLASSES.get(base)
    if made is None:
        made = type(base.__name__, (RetriesExhausted, base), {"__module__": "graceful.client"})
        _EXHAUSTED_CLASSES[base] = made
    return made


def exhausted(
    last: httpx.TransportError, request: httpx.Request, attempts: tuple[object, ...], why: str
) -> RetriesExhausted:
    """The error for a call that ends on ``last``: its class, plus RetriesExhausted, and every attempt."""
    count = len(attempts)
    shown = [str(attempt) for attempt in attempts]
    if count > MESSAGE_ATTEMPTS:  # ten transparent retries of a refusal: the first and the last say it
        shown = [*shown[:2], f"... {count - 4} more ...", *shown[-2:]]
    lines = "; ".join(shown)
    plural = "attempt" if count == 1 else "attempts"
    message = f"{request.method} {request.url} failed after {count} {plural} ({lines}); not retried: {why}"
    error = _exhausted_class(type(last))(message, request=request)
    error.attempts = attempts
    return error
