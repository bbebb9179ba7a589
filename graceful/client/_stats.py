"""A transport's counters: what it did, for logs and for Prometheus (graceful.metrics).

One ``Stats`` per transport, shared by its calls and its balancer. Counting is a dict update
under a lock: a few per call, next to a network round trip.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter


@dataclasses.dataclass(frozen=True)
class StatsSnapshot:
    """The counters at one moment (monotonic since the transport was made)."""

    calls: int
    #: Calls that ended on an error (a response, even a 503, is not an error).
    failed_calls: int
    attempts: int
    #: Retries by the failure they followed: "never_sent", "no_response", "timeout", "status".
    retries: dict[str, int]
    #: Of those, retries that did not count toward max_attempts (refused, shed).
    transparent_retries: int
    hedges: int
    #: Retries and hedges the budget refused.
    budget_refusals: int
    ejections: int


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._retries: Counter[str] = Counter()

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def count_retry(self, reason: str, transparent: bool) -> None:
        with self._lock:
            self._retries[reason] += 1
            if transparent:
                self._counts["transparent_retries"] += 1

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            counts = self._counts
            return StatsSnapshot(
                calls=counts["calls"],
                failed_calls=counts["failed_calls"],
                attempts=counts["attempts"],
                retries=dict(self._retries),
                transparent_retries=counts["transparent_retries"],
                hedges=counts["hedges"],
                budget_refusals=counts["budget_refusals"],
                ejections=counts["ejections"],
            )
