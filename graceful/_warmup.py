"""Warm-up policies: pure functions of (settings values, elapsed time, a random number). No I/O.

A new instance is cold (lazy imports, empty caches, closed pools). For ``window`` seconds after its
startup gate opens it admits a ramping share of the traffic it would take when warm:

    share(t) = max(min_share, (t / window) ** curve)      for 0 <= t < window
    share(t) = 1                                           for t >= window (and when window is 0)

curve 1 ramps linearly (Dubbo, AWS ALB, HAProxy ``slowstart``), curve 2 is Sermant's default, and
Envoy's slow-start ``aggression`` a corresponds to curve = 1 / a. The share is enforced as a
concurrency cap: ``cap = max(1, ceil(share * max_concurrency))`` requests at once, the rest wait in
a short FIFO queue and are shed with ``503`` + ``Retry-After`` only when the queue is full or the
wait is too long. A cap is what an instance can enforce on its own, under any balancer.
"""

from __future__ import annotations

import enum
import math

from graceful._phase import Phase


def warmup_share(elapsed: float, *, window: float, curve: float, min_share: float) -> float:
    """The admitted share of full traffic ``elapsed`` seconds after the gate opened (see module doc)."""
    if window <= 0 or elapsed >= window:
        return 1.0
    if elapsed <= 0:
        return min_share
    return max(min_share, float((elapsed / window) ** curve))


def concurrency_cap(share: float, max_concurrency: int) -> int:
    """Requests allowed at once for a share: at least one, so a cold instance still makes progress."""
    return max(1, math.ceil(share * max_concurrency - 1e-9))


class Admission(enum.Enum):
    ADMIT = "admit"  # run now
    QUEUE = "queue"  # wait for a free place, up to the queue timeout
    SHED = "shed"  # answer 503 at once


def admission(*, in_flight: int, cap: int, queued: int, queue_size: int) -> Admission:
    """What to do with a request that arrives now.

    Arrivals never overtake waiters: while anyone is queued a newcomer queues behind them (FIFO),
    even if a place just freed up, so queued requests are served in order of arrival.
    """
    if queued == 0 and in_flight < cap:
        return Admission.ADMIT
    if queued < queue_size:
        return Admission.QUEUE
    return Admission.SHED


def retry_after_seconds(base: float, jitter: float, random: float) -> int:
    """The ``Retry-After`` delay-seconds (RFC 9110 10.2.3: a whole number) for a shed request.

    ``base + jitter * random`` rounded up: spread out so shed clients do not all return at once.
    ``random`` is a uniform number in [0, 1) from an injected source.
    """
    return max(1, math.ceil(base + jitter * random))


def agent_reply(phase: Phase, share: float) -> str:
    """The line an HAProxy agent-check reads (HAProxy configuration manual, 5.2 ``agent-check``).

    WARMING: ``up NN%`` so HAProxy weights the instance by its warm-up share (at least 1%);
    READY: ``ready 100%``; DRAINING or later: ``drain`` (no new connections, existing ones kept);
    STARTING: ``down``.
    """
    if phase is Phase.WARMING:
        return f"up {max(1, min(100, math.floor(share * 100)))}%"
    if phase is Phase.READY:
        return "ready 100%"
    if phase.is_terminating:
        return "drain"
    return "down"
