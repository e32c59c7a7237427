"""A store's replication position, and its encoding into the engine's opaque metadata blob."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kevo_repl.errors import StoreDamaged


@dataclass(frozen=True)
class Position:
    """Where a store stands: its last applied sequence within one primary history.

    `applied_entries` counts every entry the store has applied since it was created; it is
    written in the same transaction, so it proves (or disproves) exactly-once application.
    `chain` is the log's hash chain after `sequence` (see kevo_repl.protocol.chain); 0 = unknown.
    """

    sequence: int = 0
    history_id: str = ""
    applied_entries: int = 0
    chain: int = 0


#: magic, format version, sequence, applied entries, chain; then the history id (UTF-8)
_META = struct.Struct("<4sBQQQ")
_MAGIC = b"KVRP"
_FORMAT = 1


def encode_position(position: Position) -> bytes:
    """The metadata blob an engine stores with a batch."""
    return (
        _META.pack(
            _MAGIC, _FORMAT, position.sequence, position.applied_entries, position.chain
        )
        + position.history_id.encode("utf-8")
    )


def decode_position(meta: bytes | None, store: str) -> Position:
    """The position in a blob read back from an engine (None: a store never committed to).
    A damaged blob is StoreDamaged naming the field: the store is refused, never guessed at."""
    if meta is None:
        return Position()
    if len(meta) < _META.size:
        raise StoreDamaged(
            f"the {store} store's replication metadata is damaged: truncated ({len(meta)} "
            f"bytes, at least {_META.size} expected); refusing to use it",
            store,
        )
    magic, fmt, sequence, applied, chain = _META.unpack_from(meta)
    if magic != _MAGIC or fmt != _FORMAT:
        field = "magic" if magic != _MAGIC else "format version"
        raise StoreDamaged(
            f"the {store} store's replication metadata is not kevo-repl's ({field}: magic "
            f"{magic!r}, format {fmt}); refusing to use it",
            store,
        )
    try:
        history = meta[_META.size :].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreDamaged(
            f"the {store} store's replication metadata is damaged: its history_id is not "
            f"UTF-8 ({exc})",
            store,
        ) from exc
    return Position(sequence, history, applied, chain)
