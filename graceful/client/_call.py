"""One call's bookkeeping, shared by the sync and the async transport: attempts, deadline, decisions.

A ``Call`` holds no I/O: the transports do the sending and the sleeping, and ask the call what to
do after each attempt (keep the response, retry after a delay, or give up with a given error).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import httpx

from graceful.client._errors import (
    classify_error,
    classify_response,
    exhausted,
    fails_fast_unseen,
    is_replayable,
)
from graceful.client._policies import (
    IDEMPOTENCY_KEY,
    BudgetWindow,
    Failure,
    HedgePolicy,
    RetryPolicy,
    _check_positive_seconds,
    is_idempotent,
    parse_retry_after,
    retry_delay,
    why_not_retry,
)
from graceful.client._sources import Address
from graceful.client._stats import Stats

logger = logging.getLogger("graceful.client")

#: Request extensions a caller may set per request (``client.get(url, extensions={...})``).
DEADLINE_EXTENSION = "graceful.deadline"
RETRY_EXTENSION = "graceful.retry"
HEDGE_EXTENSION = "graceful.hedge"
#: Response extension with the tuple of ``Attempt`` records of the call.
ATTEMPTS_EXTENSION = "graceful.attempts"
#: A retried response body is read (so its connection is kept) only up to this size; larger: closed.
DISCARD_READ_LIMIT = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Attempt:
    """What one attempt of a call did."""

    number: int
    #: Seconds after the call began that the attempt started, and how long it took.
    started: float
    elapsed: float
    #: "200", "503", "ConnectError: [Errno 111] Connection refused", "cancelled: another attempt won".
    outcome: str
    #: None for a response that was kept; otherwise why it was not.
    failure: Failure | None
    #: Started by hedging (not after a failure).
    hedge: bool = False
    #: Failed fast and unseen (refused, shed), so its retry did not count toward max_attempts.
    transparent: bool = False
    #: The endpoint it went to, with ``Transport(endpoints=...)`` ("10.0.0.5:8000"); else "".
    endpoint: str = ""

    def __str__(self) -> str:
        kind = " hedge" if self.hedge else ""
        where = f" at {self.endpoint}" if self.endpoint else ""
        note = ", retried transparently" if self.transparent else ""
        return f"#{self.number}{kind} {self.outcome}{where} after {self.elapsed * 1000:.0f} ms{note}"


@dataclasses.dataclass(frozen=True)
class Config:
    """A transport's policies and injected clock, randomness and wall clock (for Retry-After dates)."""

    retry: RetryPolicy | None
    budget: BudgetWindow | None
    hedge: HedgePolicy | None
    clock: Callable[[], float]
    random: Callable[[], float]
    wall_clock: Callable[[], float] = time.time
    stats: Stats = dataclasses.field(default_factory=Stats)


class Call:
    """The attempts of one request and the decisions between them."""

    def __init__(self, config: Config, request: httpx.Request) -> None:
        self.config = config
        self.request = request
        extensions = request.extensions
        self.policy: RetryPolicy | None = extensions.get(RETRY_EXTENSION, config.retry)
        self.idempotent = is_idempotent(request.method, IDEMPOTENCY_KEY in request.headers)
        self.replayable = is_replayable(request)
        hedge: HedgePolicy | None = extensions.get(HEDGE_EXTENSION, config.hedge)
        # Hedging sends the same request twice at once: only for requests that tolerate that.
        self.hedge = hedge if hedge is not None and self.idempotent and self.replayable else None
        deadline: Any = extensions.get(DEADLINE_EXTENSION, self.policy.deadline if self.policy else None)
        if deadline is not None:
            _check_positive_seconds(DEADLINE_EXTENSION, deadline)
        self.started = config.clock()
        self.deadline_at = math.inf if deadline is None else self.started + deadline
        self.deadline = deadline
        self.attempts: list[Attempt] = []
        self.stop_reason = ""
        #: Did the last attempt fail fast and before any server saw it (a transparent retry's cue)?
        self.last_unseen = False
        self.transparent_used = 0
        #: With client-side balancing: the endpoints tried so far (a retry prefers another one),
        #: and which attempt went where.
        self.tried: list[Address] = []
        self.endpoint_of: dict[int, str] = {}
        if config.budget is not None:
            config.budget.record_call()
        config.stats.count("calls")

    # -- before an attempt ----------------------------------------------------------------------

    def attempt_limit(self) -> int:
        """The most attempts this call can make: max_attempts plus the transparent retries."""
        policy = self.policy
        return 1 if policy is None else policy.max_attempts + policy.transparent_retries

    def remaining(self) -> float:
        return self.deadline_at - self.config.clock()

    def went_to(self, number: int, address: Address) -> None:
        self.tried.append(address)
        self.endpoint_of[number] = str(address)

    def attempt_request(self) -> httpx.Request:
        """The request to send now: with a deadline, every httpx timeout is cut to the time left."""
        if self.deadline_at == math.inf:
            return self.request
        left = max(self.remaining(), 0.001)
        timeouts = self.request.extensions.get("timeout") or {}
        capped = {phase: min(timeouts.get(phase) or math.inf, left) for phase in _PHASES}
        request = self.request
        # Not copy.copy: httpx.Request's pickling support drops the body stream on a copy.
        return httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            stream=request.stream,
            extensions={**request.extensions, "timeout": capped},
        )

    # -- after an attempt -----------------------------------------------------------------------

    def record_response(
        self, response: httpx.Response, number: int, began: float, hedge: bool = False
    ) -> Failure | None:
        failure = classify_response(response, self.policy.retry_statuses if self.policy else frozenset())
        self._record(number, began, str(response.status_code), failure, hedge)
        self.last_unseen = failure is Failure.NEVER_SENT  # graceful's shed 503: the app never ran
        return failure

    def record_error(self, exc: Exception, number: int, began: float, hedge: bool = False) -> Failure:
        failure = classify_error(exc)
        if failure is Failure.TIMEOUT and self.remaining() <= 0:
            outcome = f"{type(exc).__name__}: the call's deadline of {self.deadline:g} s was reached"
        else:
            outcome = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._record(number, began, outcome, failure, hedge)
        self.last_unseen = fails_fast_unseen(exc)
        return failure

    def record_cancelled(self, number: int, began: float) -> None:
        self._record(number, began, "cancelled: another attempt won", None, hedge=number > 1)

    def _record(self, number: int, began: float, outcome: str, failure: Failure | None, hedge: bool) -> None:
        now = self.config.clock()
        self.config.stats.count("attempts")
        where = self.endpoint_of.get(number, "")
        self.attempts.append(
            Attempt(number, began - self.started, now - began, outcome, failure, hedge, endpoint=where)
        )

    def pushback(self, response: httpx.Response) -> float | None:
        """The server's Retry-After, in seconds from now, or None."""
        return parse_retry_after(response.headers.get("retry-after"), self.config.wall_clock())

    def may_retry(self, failure: Failure) -> bool:
        """Is repeating a request that failed this way safe? Sets ``stop_reason`` when not."""
        if self.policy is None:
            self.stop_reason = "retries are disabled"
            return False
        why = why_not_retry(failure, idempotent=self.idempotent, replayable=self.replayable)
        if why is not None:
            self.stop_reason = why
            return False
        return True

    def next_retry(self, failure: Failure, pushback: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None to end the call (``stop_reason`` says why)."""
        if not self.may_retry(failure):
            return None
        policy = self.policy
        assert policy is not None
        transparent = self.last_unseen and self.transparent_used < policy.transparent_retries
        delay, why = retry_delay(
            policy,
            len(self.attempts) - self.transparent_used,  # the attempts that count toward max_attempts
            pushback=pushback,
            remaining=self.remaining(),
            random=self.config.random,
            transparent=transparent,
        )
        if delay is None:
            if self.transparent_used:
                why += f" (besides {self.transparent_used} transparent retries)"
            self.stop_reason = why
            return None
        if not self.take_budget():
            return None
        if transparent:
            self.transparent_used += 1
            self.attempts[-1] = dataclasses.replace(self.attempts[-1], transparent=True)
        self.config.stats.count_retry(failure.name.lower(), transparent)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "graceful.client: retrying %s %s in %.3f s (attempt %d: %s)",
                self.request.method,
                self.request.url,
                delay,
                len(self.attempts),
                self.attempts[-1].outcome,
            )
        return delay

    def may_start_hedge(self, launched: int) -> bool:
        """After every running attempt failed: may another start at once (and take the budget)?"""
        hedge = self.hedge
        starts = (
            hedge is not None
            and launched < hedge.max_attempts
            and self.remaining() > 0
            and self.take_budget()
        )
        if starts:
            self.config.stats.count("hedges")
        return starts

    def take_budget(self) -> bool:
        budget = self.config.budget
        if budget is not None and not budget.try_withdraw():
            self.config.stats.count("budget_refusals")
            ratio = budget.budget
            self.stop_reason = (
                f"the retry budget is spent (at most {ratio.ratio:g} x calls + "
                f"{ratio.min_per_second:g}/s over {ratio.ttl:g} s)"
            )
            logger.debug(
                "graceful.client: no retry or hedge for %s %s: %s",
                self.request.method,
                self.request.url,
                self.stop_reason,
            )
            return False
        return True

    # -- the end --------------------------------------------------------------------------------

    def finish(self, response: httpx.Response) -> httpx.Response:
        # By number: hedged attempts finish out of order.
        response.extensions[ATTEMPTS_EXTENSION] = tuple(sorted(self.attempts, key=_by_number))
        return response

    def error(self, last: Exception) -> Exception:
        """The exception that ends the call on ``last``: ``last`` itself when nothing could help."""
        self.config.stats.count("failed_calls")
        if not isinstance(last, httpx.TransportError) or (
            len(self.attempts) == 1 and self.attempts[0].failure is Failure.FATAL
        ):
            return last
        error = exhausted(last, self.request, tuple(self.attempts), self.stop_reason or "no attempts left")
        error.__cause__ = last
        return error


_PHASES = ("connect", "read", "write", "pool")


def _by_number(attempt: Attempt) -> int:
    return attempt.number


def discard_size(response: httpx.Response) -> bool:
    """Read the body of a response being retried (small: keeps the connection), or only close it."""
    length = response.headers.get("content-length", "")
    return length.isdigit() and int(length) <= DISCARD_READ_LIMIT
