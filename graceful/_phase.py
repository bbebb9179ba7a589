"""The one lifecycle every component shares: a phase enum and the table of allowed moves."""

from __future__ import annotations

import enum


class Phase(enum.IntEnum):
    """Where an instance is in its life. Values only ever grow: a later phase never goes back.

    STARTING  the server is starting; the startup gate is closed (readiness and startup probes fail).
    WARMING   the gate is open; the instance takes a ramping share of traffic (slow start).
    READY     fully in service.
    DRAINING  termination began: readiness fails at once, but every request is still served
              (with ``Connection: close``) while the load balancer catches up.
    STOPPING  the drain delay is over: the server closes its listeners and finishes in-flight work.
    STOPPED   nothing left to do; the process is about to exit.
    """

    STARTING = 0
    WARMING = 1
    READY = 2
    DRAINING = 3
    STOPPING = 4
    STOPPED = 5

    @property
    def is_serving(self) -> bool:
        """True while the instance should be in the load balancer's rotation."""
        return self in (Phase.WARMING, Phase.READY)

    @property
    def is_terminating(self) -> bool:
        """True from the moment termination began (SIGTERM or /shutdown)."""
        return self >= Phase.DRAINING

    @property
    def is_started(self) -> bool:
        """What the startup probe reports: the startup gate has opened at some point."""
        return self != Phase.STARTING


# Each phase may move to these. A termination can start in any phase (a pod can be deleted while
# it is still starting), and DRAINING may be skipped (drain delay 0, or a second signal).
ALLOWED_TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.WARMING, Phase.READY, Phase.DRAINING, Phase.STOPPING}),
    Phase.WARMING: frozenset({Phase.READY, Phase.DRAINING, Phase.STOPPING}),
    Phase.READY: frozenset({Phase.DRAINING, Phase.STOPPING}),
    Phase.DRAINING: frozenset({Phase.STOPPING}),
    Phase.STOPPING: frozenset({Phase.STOPPED}),
    Phase.STOPPED: frozenset(),
}


def can_move(current: Phase, target: Phase) -> bool:
    """Whether ``current -> target`` is an allowed transition (staying put is not a transition)."""
    return target in ALLOWED_TRANSITIONS[current]
