"""The replica's state machine: KevoDB's seven states plus BOOTSTRAPPING, with validated
transitions."""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class State(enum.Enum):
    CONNECTING = "CONNECTING"
    STREAMING_ENTRIES = "STREAMING_ENTRIES"
    APPLYING_ENTRIES = "APPLYING_ENTRIES"
    FSYNC_PENDING = "FSYNC_PENDING"
    ACKNOWLEDGING = "ACKNOWLEDGING"
    WAITING_FOR_DATA = "WAITING_FOR_DATA"
    ERROR = "ERROR"
    #: kevo-repl's own: installing a snapshot of the primary's store (its position was no
    #: longer retained), into a fresh store next to the live one
    BOOTSTRAPPING = "BOOTSTRAPPING"


S = State
# Receive and apply overlap, so after an ack the replica may find more entries already
# received (back to APPLYING) or none yet (WAITING). ERROR is reachable from everywhere and
# leads only back to CONNECTING. BOOTSTRAPPING is entered when the primary answers
# OUT_OF_RANGE, which can happen in any state but ERROR (at connect, or mid-stream when the
# WAL was pruned under a cap); it ends in CONNECTING (installed) or ERROR (failed).
_B = S.BOOTSTRAPPING
TRANSITIONS: dict[State, frozenset[State]] = {
    S.CONNECTING: frozenset({S.STREAMING_ENTRIES, S.WAITING_FOR_DATA, S.ERROR, _B}),
    S.STREAMING_ENTRIES: frozenset({S.APPLYING_ENTRIES, S.WAITING_FOR_DATA, S.ERROR, _B}),
    S.APPLYING_ENTRIES: frozenset({S.FSYNC_PENDING, S.ERROR, _B}),
    S.FSYNC_PENDING: frozenset({S.ACKNOWLEDGING, S.ERROR, _B}),
    S.ACKNOWLEDGING: frozenset(
        {S.STREAMING_ENTRIES, S.APPLYING_ENTRIES, S.WAITING_FOR_DATA, S.ERROR, _B}
    ),
    S.WAITING_FOR_DATA: frozenset({S.STREAMING_ENTRIES, S.APPLYING_ENTRIES, S.ERROR, _B}),
    S.ERROR: frozenset({S.CONNECTING}),
    S.BOOTSTRAPPING: frozenset({S.CONNECTING, S.ERROR}),
}


class InvalidTransition(ValueError):
    pass


@dataclass(frozen=True)
class Transition:
    old: State
    new: State
    reason: str
    at: float


class StateMachine:
    """Current state plus a bounded history; each change is reported to `on_change`."""

    def __init__(
        self,
        on_change: Callable[[State, State, str], None] | None = None,
        history: int = 256,
    ) -> None:
        self.state = State.CONNECTING
        self.history: deque[Transition] = deque(maxlen=history)
        self._on_change = on_change

    def move(self, new: State, reason: str = "") -> None:
        old = self.state
        if new == old:
            return
        if new not in TRANSITIONS[old]:
            raise InvalidTransition(f"{old.value} -> {new.value} is not a valid transition")
        self.state = new
        self.history.append(Transition(old, new, reason, time.time()))
        log.debug("state %s -> %s (%s)", old.value, new.value, reason)
        if self._on_change is not None:
            self._on_change(old, new, reason)
