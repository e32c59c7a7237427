"""The replica's side of epochs: the history it follows, kept in `DATA_DIR/EPOCHS`.

The replica sends its history with every StreamWAL (the primary refuses a forked replica, and
fences itself when the replica knows a newer epoch) and adopts the primary's history once the
stream is accepted, durably, before anything from it is applied. It never goes back: a
primary of an older epoch than the one this replica follows is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from kevo_repl.errors import ReplicationError, StoreError
from kevo_repl.storage import epochs as epochs_mod
from kevo_repl.storage.epochs import Epoch

log = logging.getLogger(__name__)


class EpochTracker:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.epochs: tuple[Epoch, ...] = epochs_mod.load(data_dir)

    @property
    def current(self) -> int:
        return self.epochs[-1].number

    def header(self) -> tuple[str, str]:
        return (epochs_mod.EPOCHS_HEADER, epochs_mod.render(self.epochs, header=True))

    def observe(self, metadata: Sequence[tuple[str, str | bytes]] | None, primary: str) -> None:
        """Adopt the primary's history from its stream's initial metadata."""
        theirs: tuple[Epoch, ...] | None = None
        for key, value in metadata or ():
            if key == epochs_mod.EPOCHS_HEADER:
                text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
                try:
                    theirs = epochs_mod.parse(text, header=True)
                except StoreError as exc:
                    raise ReplicationError(f"{primary} sent a bad epoch history: {exc}") from exc
        if theirs is None:
            return  # an older primary, or KevoDB: epoch 1 throughout
        if theirs[-1].number < self.current:
            raise ReplicationError(
                f"primary {primary} is on epoch {theirs[-1].number}, older than this replica's "
                f"epoch {self.current}: it was replaced and must not be followed"
            )
        if theirs != self.epochs:
            epochs_mod.save(self.data_dir, theirs)
            log.info("following epoch %d of %s", theirs[-1].number, primary)
            self.epochs = theirs
