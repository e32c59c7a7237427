"""The ``memory`` applier: a store that lives in the process's memory.

It meets the applier contract except for durability: nothing survives the process, so a
restarted node starts from an empty store at position 0 (a replica then streams everything
again from its primary). That makes it handy for tests and demos, and a compact reference
for plugin authors; use ``lmdb`` or ``leveldb`` for anything that must outlive the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kevo_repl.errors import StoreError
from kevo_repl.plugin.engine import ApplierFactory, Position
from kevo_repl.protocol.codec import Entry, Op

from .options import DEFAULT_MAX_KEY_SIZE, parse_options

log = logging.getLogger(__name__)


class MemorySnapshot:
    """A frozen copy of the data and its position, taken under the store's lock."""

    def __init__(self, data: dict[bytes, bytes], position: Position) -> None:
        self._data = data
        self._position = position
        self._open = True

    @property
    def position(self) -> Position:
        return self._position

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        if not self._open:
            raise StoreError("memory snapshot used after its with-block ended")
        pairs = sorted(self._data.items())  # bytes sort bytewise
        if after is not None:
            pairs = [(k, v) for k, v in pairs if k > after]
        return iter(pairs)


class MemoryApplier:
    """A dict and a position behind one lock: each apply swaps both in one step."""

    name = "memory"

    def __init__(self, max_key_size: int = DEFAULT_MAX_KEY_SIZE) -> None:
        self.max_key_size = max_key_size
        self._lock = threading.Lock()
        self._data: dict[bytes, bytes] = {}
        self._position = Position()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the memory store is closed")

    def position(self) -> Position:
        with self._lock:
            self._check_open()
            return self._position

    def apply(self, entries: Sequence[Entry], history_id: str, chain: int = 0) -> Position:
        with self._lock:
            self._check_open()
            if not entries:
                return self._position
            current = self._position
            first = current.sequence + 1
            if [e.seq for e in entries] != list(range(first, first + len(entries))):
                raise StoreError(
                    f"memory applier expected entries {first}.. in order but got "
                    f"{entries[0].seq}..{entries[-1].seq}; nothing was applied"
                )
            # Build the changes aside and only then publish them: a bad entry anywhere in
            # the batch leaves data and position as they were.
            changes: dict[bytes, bytes | None] = {}
            for entry in entries:
                if not entry.key or len(entry.key) > self.max_key_size:
                    raise StoreError(
                        f"memory applier: entry {entry.seq} has a {len(entry.key)}-byte key; "
                        f"keys must be 1..{self.max_key_size} bytes; nothing was applied"
                    )
                if entry.op == Op.DELETE:
                    changes[entry.key] = None
                elif entry.op in (Op.PUT, Op.MERGE):  # no merge operator: merge is a put
                    changes[entry.key] = entry.value
                else:
                    raise StoreError(f"memory applier: entry {entry.seq} has unknown op {entry.op}")
            for key, value in changes.items():
                if value is None:
                    self._data.pop(key, None)
                else:
                    self._data[key] = value
            self._position = Position(
                entries[-1].seq, history_id, current.applied_entries + len(entries), chain
            )
            return self._position

    def sync(self) -> None:
        self.position()  # nothing to flush; still an error on a closed store

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            self._check_open()
            return self._data.get(key)

    @contextmanager
    def snapshot(self) -> Iterator[MemorySnapshot]:
        with self._lock:
            self._check_open()
            snap = MemorySnapshot(dict(self._data), self._position)
        try:
            yield snap
        finally:
            snap._open = False

    def load(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        with self._lock:
            self._check_fresh()
            pairs = list(items)
            last = max(self._data) if self._data else None
            for key, _ in pairs:
                if not key or len(key) > self.max_key_size:
                    raise StoreError(
                        f"memory applier: a {len(key)}-byte snapshot key; keys must be "
                        f"1..{self.max_key_size} bytes; nothing of this load was loaded"
                    )
                if last is not None and key <= last:
                    raise StoreError(
                        "memory applier: snapshot keys must be strictly ascending; nothing "
                        "of this load was loaded"
                    )
                last = key
            self._data.update(pairs)
            return len(pairs)

    def set_position(self, position: Position) -> None:
        with self._lock:
            self._check_fresh()
            if position.sequence < 1:
                raise StoreError(f"memory applier: cannot set position {position.sequence}")
            self._position = position

    def _check_fresh(self) -> None:
        self._check_open()
        if self._position != Position():
            raise StoreError(
                "memory applier: only a fresh store (position 0) takes snapshot data"
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._data = {}


def open_applier(path: Path, options: Mapping[str, Any], durable: bool) -> MemoryApplier:
    """The factory kevo-repl calls. `path` and `durable` are unused: nothing is stored on disk."""
    max_key_size = parse_options(options).max_key_size
    log.info("opened an in-memory store (nothing is written under %s)", path)
    return MemoryApplier(max_key_size)


# mypy checks here that MemoryApplier meets the Applier protocol.
_factory: ApplierFactory = open_applier
