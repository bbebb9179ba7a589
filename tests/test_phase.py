"""The lifecycle's phase table."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from graceful import ALLOWED_TRANSITIONS, Phase, StateBoard
from graceful._phase import can_move


def test_every_phase_has_a_row() -> None:
    """The transition table names every phase, so no phase is a dead end by omission."""
    assert set(ALLOWED_TRANSITIONS) == set(Phase)


def test_moves_only_go_forward() -> None:
    """No allowed move returns to an earlier phase: readiness can never come back after a drain."""
    for current, targets in ALLOWED_TRANSITIONS.items():
        assert all(target > current for target in targets), current


def test_termination_can_start_in_any_serving_or_starting_phase() -> None:
    """A pod can be deleted while starting or warming: DRAINING is reachable from all of them."""
    for phase in (Phase.STARTING, Phase.WARMING, Phase.READY):
        assert can_move(phase, Phase.DRAINING)
        assert can_move(phase, Phase.STOPPING)
    assert not can_move(Phase.STOPPED, Phase.READY)
    assert not can_move(Phase.READY, Phase.READY)


def test_probe_semantics_per_phase() -> None:
    """Readiness is WARMING or READY; startup is past STARTING; terminating from DRAINING on."""
    assert [p for p in Phase if p.is_serving] == [Phase.WARMING, Phase.READY]
    assert [p for p in Phase if not p.is_started] == [Phase.STARTING]
    assert [p for p in Phase if p.is_terminating] == [Phase.DRAINING, Phase.STOPPING, Phase.STOPPED]


@given(st.lists(st.sampled_from(list(Phase)), max_size=20))
def test_board_phase_never_goes_back(targets: list[Phase]) -> None:
    """Whatever sequence of moves is asked of the board, its phase only grows and drains at most once."""
    board = StateBoard.create(slots=1, now=0.0)
    try:
        seen = [board.phase]
        for step, target in enumerate(targets):
            left = board.move_to(target, now=float(step))
            if left is None:
                assert board.phase == seen[-1]
            else:
                assert board.phase == target and left == seen[-1]
            seen.append(board.phase)
        assert seen == sorted(seen)
        assert board.drains == (1 if board.phase.is_terminating else 0)
    finally:
        board.close()
