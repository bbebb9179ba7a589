"""Warm-up policies as tables and as properties (Hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graceful import Phase
from graceful._warmup import (
    Admission,
    admission,
    agent_reply,
    concurrency_cap,
    retry_after_seconds,
    warmup_share,
)

windows = st.floats(min_value=0.001, max_value=3600, allow_nan=False)
curves = st.floats(min_value=0.1, max_value=10, allow_nan=False)
min_shares = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@pytest.mark.parametrize(
    ("elapsed", "window", "curve", "min_share", "expected"),
    [
        (0, 60, 1, 0.1, 0.1),
        (30, 60, 1, 0.1, 0.5),  # linear: half way, half the traffic
        (30, 60, 2, 0.1, 0.25),  # Sermant's default curve
        (6, 60, 1, 0.1, 0.1),  # below the floor: the floor
        (60, 60, 1, 0.1, 1.0),
        (90, 60, 3, 0.1, 1.0),
        (10, 0, 1, 0.1, 1.0),  # no window: warm at once
        (15, 60, 0.5, 0.0, 0.5),  # Envoy aggression 2 -> curve 0.5
    ],
)
def test_share_table(elapsed: float, window: float, curve: float, min_share: float, expected: float) -> None:
    """The documented formula, point by point."""
    assert warmup_share(elapsed, window=window, curve=curve, min_share=min_share) == pytest.approx(expected)


@given(
    windows,
    curves,
    min_shares,
    st.floats(min_value=-10, max_value=7200),
    st.floats(min_value=0, max_value=7200),
)
def test_share_is_monotonic_and_bounded(
    window: float, curve: float, min_share: float, t1: float, dt: float
) -> None:
    """The share never falls as time passes, stays within [min_share, 1], and is 1 from the window's end."""
    earlier = warmup_share(t1, window=window, curve=curve, min_share=min_share)
    later = warmup_share(t1 + dt, window=window, curve=curve, min_share=min_share)
    assert min_share <= earlier <= later <= 1.0
    assert warmup_share(window, window=window, curve=curve, min_share=min_share) == 1.0


@given(st.floats(min_value=0, max_value=1), st.integers(min_value=1, max_value=10_000))
def test_cap_is_at_least_one_and_at_most_max(share: float, max_concurrency: int) -> None:
    """A cold instance still admits one request; a warm one admits exactly max_concurrency."""
    cap = concurrency_cap(share, max_concurrency)
    assert 1 <= cap <= max_concurrency
    assert concurrency_cap(1.0, max_concurrency) == max_concurrency


@pytest.mark.parametrize(
    ("in_flight", "cap", "queued", "queue_size", "expected"),
    [
        (0, 1, 0, 10, Admission.ADMIT),
        (1, 1, 0, 10, Admission.QUEUE),
        (0, 5, 1, 10, Admission.QUEUE),  # a free place, but someone waits: no overtaking
        (5, 5, 10, 10, Admission.SHED),
        (5, 5, 0, 0, Admission.SHED),  # no queue at all
    ],
)
def test_admission_table(in_flight: int, cap: int, queued: int, queue_size: int, expected: Admission) -> None:
    """Admit under the cap, queue behind waiters, shed only when the queue is full."""
    assert admission(in_flight=in_flight, cap=cap, queued=queued, queue_size=queue_size) is expected


@given(
    st.floats(min_value=0, max_value=30),
    st.floats(min_value=0, max_value=30),
    st.floats(min_value=0, max_value=0.999999),
)
def test_retry_after_is_a_whole_number_within_the_jitter(base: float, jitter: float, random: float) -> None:
    """Retry-After is delay-seconds (a whole number >= 1) between base and base + jitter, rounded up."""
    value = retry_after_seconds(base, jitter, random)
    assert isinstance(value, int) and value >= 1
    assert value <= max(1, int(base + jitter) + 1)


@pytest.mark.parametrize(
    ("phase", "share", "reply"),
    [
        (Phase.STARTING, 0.0, "down"),
        (Phase.WARMING, 0.1, "up 10%"),
        (Phase.WARMING, 0.004, "up 1%"),
        (Phase.READY, 1.0, "ready 100%"),
        (Phase.DRAINING, 1.0, "drain"),
        (Phase.STOPPING, 1.0, "drain"),
    ],
)
def test_agent_reply(phase: Phase, share: float, reply: str) -> None:
    """What HAProxy's agent-check reads in each phase."""
    assert agent_reply(phase, share) == reply
