"""The client's pure policies as tables and properties: safety, backoff, pushback, budget arithmetic."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graceful import SettingsError
from graceful.client import Failure, HedgePolicy, RetryBudget, RetryPolicy
from graceful.client._policies import (
    BudgetWindow,
    backoff_delay,
    budget_allows,
    is_idempotent,
    parse_retry_after,
    retry_delay,
    why_not_retry,
)

SAFE, UNSAFE = True, False


@pytest.mark.parametrize(
    ("failure", "idempotent", "replayable", "retry"),
    [
        (Failure.NEVER_SENT, False, True, SAFE),  # refused, DNS, TLS, graceful's shed: any method
        (Failure.NEVER_SENT, False, False, SAFE),  # not a byte of the stream was read
        (Failure.NO_RESPONSE, False, True, UNSAFE),  # a POST on a stale keep-alive connection
        (Failure.NO_RESPONSE, True, True, SAFE),
        (Failure.NO_RESPONSE, True, False, UNSAFE),  # the stream is gone
        (Failure.TIMEOUT, False, True, UNSAFE),
        (Failure.TIMEOUT, True, True, SAFE),
        (Failure.STATUS, False, True, UNSAFE),
        (Failure.STATUS, True, True, SAFE),
        (Failure.FATAL, True, True, UNSAFE),
    ],
)
def test_when_a_retry_is_safe(failure: Failure, idempotent: bool, replayable: bool, retry: bool) -> None:
    """The safety table of docs/client.md, row by row."""
    why = why_not_retry(failure, idempotent=idempotent, replayable=replayable)
    assert (why is None) is retry, why


def test_a_refused_post_names_the_way_to_make_it_retryable() -> None:
    """The reason given for a non-idempotent request says what would make it retryable."""
    why = why_not_retry(Failure.NO_RESPONSE, idempotent=False, replayable=True)
    assert why is not None and "Idempotency-Key" in why and "9.2.2" in why


@pytest.mark.parametrize(
    ("method", "key", "expected"),
    [
        ("GET", False, True),
        ("head", False, True),
        ("OPTIONS", False, True),
        ("TRACE", False, True),
        ("PUT", False, True),
        ("DELETE", False, True),
        ("POST", False, False),
        ("PATCH", False, False),
        ("POST", True, True),
        ("PATCH", True, True),
    ],
)
def test_idempotent_methods_are_rfc_9110s(method: str, key: bool, expected: bool) -> None:
    """RFC 9110 9.2.2's list, plus any request with an Idempotency-Key."""
    assert is_idempotent(method, key) is expected


def test_backoff_is_full_jitter_growing_to_the_cap() -> None:
    """Retry n waits random(0, min(initial * multiplier**(n-1), max)): with random() = 1 the ceilings."""
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.05, backoff_multiplier=2, max_backoff=1.0)
    ceilings = [backoff_delay(policy, n, lambda: 1.0) for n in range(1, 8)]
    assert ceilings == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff_delay(policy, 3, lambda: 0.0) == 0.0
    assert backoff_delay(policy, 3, lambda: 0.5) == pytest.approx(0.1)


@given(
    retry=st.integers(1, 9),
    draw=st.floats(0, 1, exclude_max=True),
    initial=st.floats(0.001, 1),
    multiplier=st.floats(1, 10),
    extra=st.floats(0, 10),
)
def test_backoff_stays_within_zero_and_the_ceiling(
    retry: int, draw: float, initial: float, multiplier: float, extra: float
) -> None:
    """Whatever the settings and the draw, 0 <= delay < min(initial * multiplier**(n-1), max)."""
    policy = RetryPolicy(
        max_attempts=10, initial_backoff=initial, backoff_multiplier=multiplier, max_backoff=initial + extra
    )
    delay = backoff_delay(policy, retry, lambda: draw)
    assert 0 <= delay <= min(initial * multiplier ** (retry - 1), policy.max_backoff)


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("1", 1.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("-1", None),  # not delay-seconds (a non-negative integer)
        ("1.5", None),
        ("soon", None),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),  # in the past: now
    ],
)
def test_retry_after_is_seconds_or_an_http_date(header: str | None, seconds: float | None) -> None:
    """RFC 9110 10.2.3: delay-seconds or an HTTP-date; anything else is ignored (backoff applies)."""
    assert parse_retry_after(header, NOW) == seconds


def test_pushback_replaces_the_backoff_and_is_bounded_by_deadline_and_max_pushback() -> None:
    """Retry-After wins over the computed delay; beyond the deadline or max_pushback: no retry."""
    policy = RetryPolicy(max_attempts=3, max_pushback=5)
    assert retry_delay(policy, 1, pushback=1.0, remaining=10, random=lambda: 0.5) == (1.0, "")
    delay, why = retry_delay(policy, 1, pushback=2.0, remaining=1.5, random=lambda: 0.5)
    assert delay is None and "deadline" in why
    delay, why = retry_delay(policy, 1, pushback=6.0, remaining=float("inf"), random=lambda: 0.5)
    assert delay is None and "max_pushback" in why
    delay, why = retry_delay(policy, 3, pushback=None, remaining=float("inf"), random=lambda: 0.5)
    assert delay is None and "all 3 attempts" in why


def test_a_retry_never_starts_at_or_after_the_deadline() -> None:
    """A backoff that would end at or after the deadline ends the call instead."""
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=0.1)
    delay, _ = retry_delay(policy, 1, pushback=None, remaining=0.05, random=lambda: 0.9)
    assert delay is None
    delay, _ = retry_delay(policy, 1, pushback=None, remaining=0.5, random=lambda: 0.9)
    assert delay == pytest.approx(0.09)


def test_a_transparent_retry_ignores_max_attempts_and_waits_the_first_backoff() -> None:
    """A transparent retry is not limited by max_attempts; it waits random(0, initial_backoff)."""
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.1, max_backoff=1.0)
    delay, why = retry_delay(policy, 5, pushback=None, remaining=10, random=lambda: 0.5, transparent=True)
    assert delay == pytest.approx(0.05) and why == ""
    # Retry-After and the deadline still rule.
    assert retry_delay(policy, 5, pushback=2.0, remaining=10, random=lambda: 0.5, transparent=True) == (
        2.0,
        "",
    )
    delay, why = retry_delay(policy, 5, pushback=None, remaining=0.01, random=lambda: 0.5, transparent=True)
    assert delay is None and "deadline" in why


@pytest.mark.parametrize(
    ("calls", "retries", "allowed"),
    [
        (0, 0, True),  # a quiet client: the floor (10/s over 10 s = 100 retries)
        (0, 99, True),
        (0, 100, False),
        (2000, 299, True),  # 0.1 * 2000 + 100
        (2000, 300, False),
    ],
)
def test_budget_arithmetic(calls: int, retries: int, allowed: bool) -> None:
    """Retries within ratio * calls + min_per_second * ttl over the window."""
    assert budget_allows(RetryBudget(), calls, retries) is allowed


def test_the_budget_window_forgets_what_is_older_than_ttl() -> None:
    """Spent in one window, the budget comes back once the window has slid past those retries."""
    now = [1000.0]
    window = BudgetWindow(RetryBudget(ratio=0.0, min_per_second=1, ttl=10), clock=lambda: now[0])
    assert sum(window.try_withdraw() for _ in range(20)) == 10  # the floor: 1/s over 10 s
    now[0] += 5
    assert not window.try_withdraw()
    now[0] += 5.01
    assert window.try_withdraw()
    assert window.counts() == (0, 1)


@given(st.lists(st.tuples(st.floats(0, 3), st.booleans()), max_size=300))
def test_the_budget_never_lets_retries_exceed_its_bound(events: list[tuple[float, bool]]) -> None:
    """However calls and retries interleave, retries granted in any window stay within the bound."""
    now = [0.0]
    budget = RetryBudget(ratio=0.1, min_per_second=1, ttl=10)
    window = BudgetWindow(budget, clock=lambda: now[0])
    for step, is_call in events:
        now[0] += step
        if is_call:
            window.record_call()
        else:
            window.try_withdraw()
        calls, retries = window.counts()
        assert retries <= budget.ratio * calls + budget.min_per_second * budget.ttl


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: RetryPolicy(max_attempts=0), "max_attempts"),
        (lambda: RetryPolicy(max_attempts=11), "max_attempts"),
        (lambda: RetryPolicy(initial_backoff=-1), "initial_backoff"),
        (lambda: RetryPolicy(initial_backoff=0.5, max_backoff=0.1), "max_backoff"),
        (lambda: RetryPolicy(backoff_multiplier=0.5), "backoff_multiplier"),
        (lambda: RetryPolicy(deadline=0), "deadline"),
        (lambda: RetryPolicy(retry_statuses=frozenset({700})), "retry_statuses"),
        (lambda: RetryPolicy(transparent_retries=-1), "transparent_retries"),
        (lambda: RetryPolicy(transparent_retries=101), "transparent_retries"),
        (lambda: RetryBudget(ratio=-0.1), "ratio"),
        (lambda: RetryBudget(ttl=0), "ttl"),
        (lambda: HedgePolicy(delay=0), "delay"),
        (lambda: HedgePolicy(delay=0.1, max_attempts=1), "max_attempts"),
    ],
)
def test_bad_policies_fail_at_construction_naming_the_field(make: object, field: str) -> None:
    """A bad value names the field, the value and the allowed range."""
    with pytest.raises(SettingsError) as caught:
        make()  # type: ignore[operator]
    assert caught.value.field == field and "allowed" in str(caught.value)


def test_retry_statuses_given_as_a_list_are_kept_frozen() -> None:
    """A list is accepted and stored as a frozenset: the policy stays hashable and immutable."""
    policy = RetryPolicy(retry_statuses=[503, 429])  # type: ignore[arg-type]
    assert policy.retry_statuses == frozenset({503, 429}) and hash(policy)
