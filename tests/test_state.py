"""The replica state machine validates every transition and keeps a bounded history."""

from __future__ import annotations

import pytest

from kevo_repl.replica.state import TRANSITIONS, InvalidTransition, State, StateMachine


def test_happy_path_and_history() -> None:
    seen = []
    sm = StateMachine(on_change=lambda o, n, r: seen.append((o, n)), history=3)
    path = [State.STREAMING_ENTRIES, State.APPLYING_ENTRIES, State.FSYNC_PENDING,
            State.ACKNOWLEDGING, State.WAITING_FOR_DATA]
    for s in path:
        sm.move(s)
    assert sm.state is State.WAITING_FOR_DATA
    assert len(seen) == 5
    assert [t.new for t in sm.history] == path[-3:]  # bounded


@pytest.mark.parametrize("old,new", [
    (State.CONNECTING, State.APPLYING_ENTRIES),
    (State.WAITING_FOR_DATA, State.ACKNOWLEDGING),
    (State.ERROR, State.STREAMING_ENTRIES),
    (State.APPLYING_ENTRIES, State.ACKNOWLEDGING),
])
def test_invalid_transitions_are_rejected(old: State, new: State) -> None:
    sm = StateMachine()
    sm.state = old
    with pytest.raises(InvalidTransition):
        sm.move(new)
    assert sm.state is old


def test_error_reachable_from_every_state_and_leads_to_connecting() -> None:
    for s in State:
        if s is not State.ERROR:
            assert State.ERROR in TRANSITIONS[s]
    assert TRANSITIONS[State.ERROR] == frozenset({State.CONNECTING})
