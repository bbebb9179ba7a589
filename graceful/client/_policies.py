"""The client's policies: frozen configs and the pure decisions made from them.

No httpx here and no hidden state: every function takes the clock reading and the randomness it
needs, so the decisions are tested as tables (tests/test_client_policies.py). The vocabulary and the
defaults are gRPC's (A6 "Client Retries": maxAttempts, initialBackoff, maxBackoff,
backoffMultiplier, retry throttling, hedgingDelay) and Finagle's retry budget.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import threading
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from graceful._settings import SettingsError, _check_number, _check_whole

#: Methods whose intended effect on the server is the same for one request or several identical
#: ones (RFC 9110 9.2.2): repeating them after an ambiguous failure does no harm.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: A request carrying this header is made idempotent by the server (IETF draft
#: "The Idempotency-Key HTTP Header Field"; Stripe's API): it may be repeated too.
IDEMPOTENCY_KEY = "idempotency-key"

MAX_ATTEMPTS_CAP = 10  # gRPC caps maxAttempts at 5 by default, 10 is its hard ceiling
MAX_SECONDS = 3600.0
MAX_TRANSPARENT_RETRIES = 100


class Failure(enum.Enum):
    """What an attempt's failure says about whether the application saw the request."""

    #: The request provably never reached the application: the connection was refused or timed
    #: out, the name did not resolve, the TLS handshake failed, no pooled connection came free, or
    #: graceful's own shed 503 answered before the app ran. Safe to retry for any method.
    NEVER_SENT = "never sent"
    #: The connection was reset or closed before any byte of the response (RFC 9112 9.3.1: a
    #: client cannot tell whether the server processed the request; the stale keep-alive race).
    NO_RESPONSE = "no response"
    #: No response within the read timeout: the application may still be working on it.
    TIMEOUT = "timeout"
    #: The response has one of the policy's retryable statuses (502, 503, 504 by default).
    STATUS = "status"
    #: An error retrying cannot fix (a malformed URL, an unsupported protocol, a local bug).
    FATAL = "fatal"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """When and how often to retry one call; gRPC A6's retryPolicy, with a deadline and pushback.

    Attempt n+1 waits ``random(0, min(initial_backoff * backoff_multiplier**(n-1), max_backoff))``
    after attempt n ("full jitter"), unless the response carried ``Retry-After``, which replaces
    the computed delay. ``deadline`` bounds the whole call, every attempt and every wait included.
    """

    #: Attempts in all, the first included (1 disables retries). At most 10.
    max_attempts: int = 3
    #: The first retry waits up to this many seconds (full jitter); 50 ms is short enough to be
    #: invisible to a user and long enough for a balancer to pick another instance.
    initial_backoff: float = 0.05
    #: No computed wait is longer than this.
    max_backoff: float = 1.0
    backoff_multiplier: float = 2.0
    #: Statuses retried for idempotent requests: a gateway or the instance says "not now".
    retry_statuses: frozenset[int] = frozenset({502, 503, 504})
    #: Seconds for the whole call, or None (then only httpx's own timeouts bound each attempt).
    #: A request can set its own with ``extensions={"graceful.deadline": seconds}``.
    deadline: float | None = None
    #: A ``Retry-After`` longer than this ends the retries (the server asked for more patience
    #: than a call should have); the response is returned as it is.
    max_pushback: float = 10.0
    #: Retries of attempts that failed fast and provably before the application saw them (the
    #: connection was refused, the name did not resolve, the TLS handshake failed, graceful's shed
    #: 503) do not count toward ``max_attempts``, up to this many per call: gRPC A6's "transparent
    #: retries", Finagle's requeues. Each waits at most ``initial_backoff`` (or the server's
    #: ``Retry-After``), takes the budget and stops at the deadline like any retry. During a
    #: rollout a third of new connections may meet a pod that is gone (endpoint lag); ten such
    #: retries make meeting it every time negligible. 0 counts them as ordinary attempts.
    transparent_retries: int = 10

    def __post_init__(self) -> None:
        _check_whole("max_attempts", self.max_attempts, 1, MAX_ATTEMPTS_CAP)
        _check_number("initial_backoff", self.initial_backoff, 0, 60, "seconds")
        _check_number("max_backoff", self.max_backoff, 0, 300, "seconds")
        _check_number("backoff_multiplier", self.backoff_multiplier, 1, 10)
        if self.max_backoff < self.initial_backoff:
            raise SettingsError(
                field="max_backoff",
                message=f"max_backoff={self.max_backoff!r} is out of range; allowed: at least "
                f"initial_backoff ({self.initial_backoff!r}) up to 300 seconds",
            )
        if self.deadline is not None:
            _check_positive_seconds("deadline", self.deadline)
        _check_number("max_pushback", self.max_pushback, 0, MAX_SECONDS, "seconds")
        _check_whole("transparent_retries", self.transparent_retries, 0, MAX_TRANSPARENT_RETRIES)
        statuses = self.retry_statuses
        if not isinstance(statuses, frozenset):  # a list or set from the caller: keep it frozen
            object.__setattr__(self, "retry_statuses", statuses := frozenset(statuses))  # type: ignore[unreachable]
        bad = sorted(
            s for s in statuses if isinstance(s, bool) or not isinstance(s, int) or not 100 <= s <= 599
        )
        if bad:
            raise SettingsError(
                field="retry_statuses",
                message=f"retry_statuses contains {bad!r}; allowed: HTTP status codes from 100 to 599",
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryBudget:
    """How many retries a transport may add to its load: Finagle's RetryBudget, gRPC's throttling.

    Over the last ``ttl`` seconds, retries (and hedges) may be at most ``ratio`` of the calls made
    plus ``min_per_second * ttl``. A dependency that fails everything then receives about
    ``1 + ratio`` times the callers' load instead of ``max_attempts`` times, while a quiet client
    (a few calls a second) still retries each failure.
    """

    ratio: float = 0.1
    min_per_second: float = 10.0
    ttl: float = 10.0

    def __post_init__(self) -> None:
        _check_number("ratio", self.ratio, 0, 1000)
        _check_number("min_per_second", self.min_per_second, 0, 1_000_000, "retries per second")
        _check_number("ttl", self.ttl, 1, 60, "seconds")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HedgePolicy:
    """Hedged requests (The Tail at Scale, Dean & Barroso 2013; gRPC A6's hedgingPolicy).

    When an idempotent request has no response headers after ``delay`` seconds, another attempt
    starts; the first usable response wins and the others are cancelled. Set ``delay`` near the
    95th percentile of the latency: about 5 % more requests for a much shorter tail.
    """

    delay: float
    #: Attempts in all, the first included.
    max_attempts: int = 2

    def __post_init__(self) -> None:
        _check_positive_seconds("delay", self.delay)
        _check_whole("max_attempts", self.max_attempts, 2, MAX_ATTEMPTS_CAP)


def _check_positive_seconds(field: str, value: object) -> None:
    _check_number(field, value, 0, MAX_SECONDS, "seconds")
    if value == 0:
        raise SettingsError(
            field=field, message=f"{field}={value!r} is out of range; allowed: more than 0 up to 3600 seconds"
        )


# -- the decisions ---------------------------------------------------------------------------------


def is_idempotent(method: str, has_idempotency_key: bool) -> bool:
    """RFC 9110 9.2.2's idempotent methods, or any request the server deduplicates by key."""
    return has_idempotency_key or method.upper() in IDEMPOTENT_METHODS


def why_not_retry(failure: Failure, *, idempotent: bool, replayable: bool) -> str | None:
    """None when an attempt that failed this way may be repeated; otherwise the reason it may not.

    | failure     | any method | idempotent (or Idempotency-Key) |
    |-------------|------------|---------------------------------|
    | NEVER_SENT  | retry      | retry                           |
    | NO_RESPONSE | no         | retry                           |
    | TIMEOUT     | no         | retry                           |
    | STATUS      | no         | retry                           |
    | FATAL       | no         | no                              |

    A body that cannot be sent again (a stream already read) is never retried, except after
    NEVER_SENT, when no byte of it was read.
    """
    if failure is Failure.FATAL:
        return "the error is not one a retry can fix"
    if failure is Failure.NEVER_SENT:
        return None
    if not idempotent:
        return (
            f"the request is not idempotent and the failure ({failure.value}) means it may have "
            "reached the application (RFC 9110 9.2.2): add an Idempotency-Key header to make it retryable"
        )
    if not replayable:
        return "the request body is a stream that was already sent and cannot be replayed"
    return None


def backoff_delay(policy: RetryPolicy, retry_number: int, random: Callable[[], float]) -> float:
    """The wait before retry ``retry_number`` (1 for the first retry): gRPC A6's full jitter.

    ``random(0, min(initial_backoff * backoff_multiplier ** (retry_number - 1), max_backoff))``;
    ``random()`` returns a float in [0, 1).
    """
    ceiling = min(
        policy.initial_backoff * policy.backoff_multiplier ** (retry_number - 1), policy.max_backoff
    )
    return random() * ceiling


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 10.2.3): delay-seconds or an HTTP-date.

    ``now`` is the wall-clock time (epoch seconds) an HTTP-date is measured from. None when the
    header is absent or unreadable (then the computed backoff applies); a date in the past is 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 5.6.7: HTTP-dates are in GMT
        return None
    return max(0.0, when.timestamp() - now)


def retry_delay(
    policy: RetryPolicy,
    retry_number: int,
    *,
    pushback: float | None,
    remaining: float,
    random: Callable[[], float],
    transparent: bool = False,
) -> tuple[float | None, str]:
    """The wait before retry ``retry_number``, or None and the reason when it must not start.

    ``retry_number`` is also the count of attempts made so far that count toward
    ``max_attempts`` (retry 1 follows attempt 1). A ``transparent`` retry (see
    ``RetryPolicy.transparent_retries``; the caller keeps their count) is not limited by
    ``max_attempts`` and waits the first backoff, ``random(0, initial_backoff)``.
    ``pushback`` is the server's ``Retry-After`` in seconds (it replaces the computed delay),
    ``remaining`` the seconds left before the deadline (``math.inf`` without one). A retry never
    starts at or after the deadline.
    """
    if not transparent and retry_number >= policy.max_attempts:
        return None, f"all {policy.max_attempts} attempts were made"
    if pushback is not None:
        if pushback > policy.max_pushback:
            return None, f"the server asked to wait {pushback:g} s (Retry-After), beyond max_pushback"
        delay = pushback
    else:
        delay = backoff_delay(policy, 1 if transparent else retry_number, random)
    if delay >= remaining:
        return None, f"the deadline is {max(remaining, 0.0):.3f} s away, the next retry waits {delay:.3f} s"
    return delay, ""


def budget_allows(budget: RetryBudget, calls: int, retries: int) -> bool:
    """May one more retry start, given the calls and retries of the last ``budget.ttl`` seconds?"""
    return retries + 1 <= budget.ratio * calls + budget.min_per_second * budget.ttl


class BudgetWindow:
    """The counts a RetryBudget is judged on, over a sliding window of ``ttl`` in 10 slices.

    Thread-safe (a sync transport is shared by threads); the clock is injected for tests.
    """

    SLICES = 10

    def __init__(self, budget: RetryBudget, clock: Callable[[], float]) -> None:
        self.budget = budget
        self._clock = clock
        self._width = budget.ttl / self.SLICES
        self._calls = [0] * self.SLICES
        self._retries = [0] * self.SLICES
        self._slice = math.floor(clock() / self._width)
        self._lock = threading.Lock()

    def _advance(self) -> int:
        """Zero the slices that fell out of the window; return the index of the current one."""
        current = math.floor(self._clock() / self._width)
        for stale in range(self._slice + 1, min(current, self._slice + self.SLICES) + 1):
            self._calls[stale % self.SLICES] = 0
            self._retries[stale % self.SLICES] = 0
        self._slice = max(self._slice, current)
        return self._slice % self.SLICES

    def record_call(self) -> None:
        with self._lock:
            self._calls[self._advance()] += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (nothing taken) when it is spent."""
        with self._lock:
            index = self._advance()
            if not budget_allows(self.budget, sum(self._calls), sum(self._retries)):
                return False
            self._retries[index] += 1
            return True

    def counts(self) -> tuple[int, int]:
        """(calls, retries) in the window now."""
        with self._lock:
            self._advance()
            return sum(self._calls), sum(self._retries)
