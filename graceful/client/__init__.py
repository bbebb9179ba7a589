"""graceful.client: httpx transports that make calls survive rollouts and faults.

``httpx.Client(transport=Transport())`` retries what is safe to retry (docs/client.md has the
table): anything that provably never reached the application, and idempotent requests after a
502/503/504, a connection closed before the response, or a read timeout; with gRPC's backoff,
``Retry-After`` pushback, one deadline per call and a retry budget per transport. ``HedgePolicy``
adds hedged requests. ``Transport(endpoints=...)`` balances over a set of endpoints itself:
hears graceful's drain notice, ejects outliers, warms newcomers (``BalancePolicy``). Needs the
``client`` extra (httpx).
"""

from __future__ import annotations

from graceful.client._async import AsyncTransport
from graceful.client._balancing import BalancePolicy, EndpointView, OutlierPolicy, SlowStart
from graceful.client._call import (
    ATTEMPTS_EXTENSION,
    DEADLINE_EXTENSION,
    HEDGE_EXTENSION,
    RETRY_EXTENSION,
    Attempt,
)
from graceful.client._errors import RetriesExhausted
from graceful.client._policies import IDEMPOTENT_METHODS, Failure, HedgePolicy, RetryBudget, RetryPolicy
from graceful.client._stats import StatsSnapshot
from graceful.client._sync import Transport

__all__ = [
    "ATTEMPTS_EXTENSION",
    "DEADLINE_EXTENSION",
    "HEDGE_EXTENSION",
    "IDEMPOTENT_METHODS",
    "RETRY_EXTENSION",
    "AsyncTransport",
    "Attempt",
    "BalancePolicy",
    "EndpointView",
    "Failure",
    "HedgePolicy",
    "OutlierPolicy",
    "RetriesExhausted",
    "RetryBudget",
    "RetryPolicy",
    "SlowStart",
    "StatsSnapshot",
    "Transport",
]
