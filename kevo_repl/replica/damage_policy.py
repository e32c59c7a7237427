"""What a replica does when its store is found damaged: `[replica] on_damage`.

"stop" (the default): ERROR, with a last_error naming the store and what to do; nothing more
is applied or acknowledged. "rebootstrap": the damaged store is moved aside (renamed to
``DATA_DIR/store.damaged-<UTC time>``, never deleted) and a snapshot of the primary's store is
installed in its place through the bootstrap phase. At most `max_damaged_copies` such copies
are kept: with that many already there, the replica stops instead and says so.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from kevo_repl.errors import StoreDamaged
from kevo_repl.storage.store import STORE_DIR

log = logging.getLogger(__name__)

#: a damaged store moved aside is renamed to this prefix plus the UTC time
DAMAGED_PREFIX = STORE_DIR + ".damaged-"


def damaged_copies(data_dir: Path) -> list[Path]:
    """The damaged stores kept in `data_dir`, oldest first."""
    return sorted(p for p in Path(data_dir).glob(DAMAGED_PREFIX + "*") if p.is_dir())


class DamagePolicy:
    def __init__(self, data_dir: Path, on_damage: str, max_copies: int) -> None:
        self.data_dir = Path(data_dir)
        self.rebootstrap = on_damage == "rebootstrap"
        self.max_copies = max_copies
        #: times the store was found damaged since the node started
        self.events = 0

    def stop_reason(self, exc: StoreDamaged) -> str:
        """last_error for the stop policy: what is damaged, and what to do."""
        return (
            f"store damaged: {exc}. This replica stopped ([replica] on_damage = \"stop\") and "
            "acknowledges nothing more. To recover, restart it with [replica] on_damage = "
            f"\"rebootstrap\" (the store is moved aside to {self.data_dir}/"
            f"{DAMAGED_PREFIX}<time> and a snapshot of the primary installed), or stop it, "
            f"move {self.data_dir / STORE_DIR} away and start it again"
        )

    def refusal(self, exc: StoreDamaged) -> str | None:
        """Why this damage cannot be answered by a rebootstrap (None: it can)."""
        if not self.rebootstrap:
            return self.stop_reason(exc)
        copies = damaged_copies(self.data_dir)
        if len(copies) >= self.max_copies:
            return (
                f"store damaged: {exc}. Not moving it aside: {len(copies)} damaged copies are "
                f"already kept in {self.data_dir} ({', '.join(p.name for p in copies)}; "
                f"[replica] max_damaged_copies = {self.max_copies}). Inspect and remove them "
                "(a store that keeps getting damaged points at the disk), then restart"
            )
        return None

    def move_aside(self, exc: StoreDamaged) -> Path:
        """Rename the (closed) damaged store to a dated directory next to it; durable."""
        store = self.data_dir / STORE_DIR
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.data_dir / f"{DAMAGED_PREFIX}{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = self.data_dir / f"{DAMAGED_PREFIX}{stamp}-{n}"
        if store.exists():
            os.rename(store, target)
            fd = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        log.warning(
            "store damaged: %s; moved it aside to %s ([replica] on_damage = \"rebootstrap\"); "
            "installing a snapshot from the primary", exc, target,
        )
        return target
