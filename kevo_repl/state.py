"""The replica's state machine: KevoDB's seven states, with validated transitions."""

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


S = State
# Receive and apply overlap, so after an ack the replica may find more entries already
# received (back to APPLYING) or none yet (WAITING). ERROR is reachable from everywhere and
# leads only back to CONNECTING.
TRANSITIONS: dict[State, frozenset[State]] = {
    S.CONNECTING: frozenset({S.STREAMING_ENTRIES, S.WAITING_FOR_DATA, S.ERROR}),
    S.STREAMING_ENTRIES: frozenset({S.APPLYING_ENTRIES, S.WAITING_FOR_DATA, S.ERROR}),
    S.APPLYING_ENTRIES: frozenset({S.FSYNC_PENDING, S.ERROR}),
    S.FSYNC_PENDING: frozenset({S.ACKNOWLEDGING, S.ERROR}),
    S.ACKNOWLEDGING: frozenset(
        {S.STREAMING_ENTRIES, S.APPLYING_ENTRIES, S.WAITING_FOR_DATA, S.ERROR}
    ),
    S.WAITING_FOR_DATA: frozenset({S.STREAMING_ENTRIES, S.APPLYING_ENTRIES, S.ERROR}),
    S.ERROR: frozenset({S.CONNECTING}),
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
