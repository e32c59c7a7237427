"""The applier contract: what a store plugin provides.

An applier owns one local embedded store. Its one hard rule: the entries of a batch and the
position they lead to are written in ONE atomic store transaction, so that after any crash
the stored position names exactly the entries the store holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kevo_repl.errors import ConfigError, StoreError
from kevo_repl.protocol.codec import Entry


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


class StoreSnapshot(Protocol):
    """A consistent, read-only view of a store at one position."""

    @property
    def position(self) -> Position: ...

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every live key and value, in bytewise key order; with `after`, only the keys
        greater than it (where a resumed snapshot transfer picks up)."""
        ...


@runtime_checkable
class Applier(Protocol):
    name: str
    #: longest key the store accepts
    max_key_size: int

    def position(self) -> Position:
        """The durable position, as last committed."""
        ...

    def apply(self, entries: Sequence[Entry], history_id: str, chain: int = 0) -> Position:
        """Apply `entries` (contiguous, ascending, starting right after the current position)
        and the new position in one atomic transaction; return the new position.

        When the applier was opened with `durable=True` the transaction is durable (the store's
        own sync) when this returns. Merge entries are applied as Put unless the store has a
        merge operator. `chain`, the hash chain after the last entry, is stored with the
        position (0: unknown).
        """
        ...

    def sync(self) -> None:
        """Make every applied transaction durable (a no-op when apply already syncs)."""
        ...

    def get(self, key: bytes) -> bytes | None: ...

    def snapshot(self) -> AbstractContextManager[StoreSnapshot]:
        """A consistent view: position and data read at one instant."""
        ...

    def load(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Bulk-write `items` into a store being built from a snapshot; return how many.

        Only for a store at position 0 (a fresh one): anything else is a StoreError and
        nothing is written. Keys must be strictly ascending (bytewise), within one call and
        across calls; a key out of order, empty or too long fails the call with StoreError,
        and nothing of that call is written. One call is one transaction. The position is
        not touched; durability comes with `sync()`.
        """
        ...

    def set_position(self, position: Position) -> None:
        """Finish an install: set the position (sequence, history_id, applied_entries) of a
        store filled with `load`, in one transaction. Only for a store at position 0; the
        position must have a positive sequence. Durable after `sync()`."""
        ...

    def close(self) -> None: ...


_seq_of = itemgetter(0)


def check_sequences(entries: Sequence[Entry], current: int, store: str) -> None:
    """Raise StoreError unless `entries` run current+1, current+2, ... without a gap: an
    applier calls this before writing anything, so nothing is applied out of order."""
    first = entries[0][0]
    if first != current + 1:
        raise StoreError(
            f"{store} applier expected entry {current + 1} next but the batch starts at "
            f"{first}; nothing was applied"
        )
    seqs = list(map(_seq_of, entries))  # C-level: this runs on every applied batch
    if seqs != list(range(first, first + len(seqs))):
        # only on failure: find the first break to report it
        for i, seq in enumerate(seqs):
            if seq != first + i:
                raise StoreError(
                    f"{store} applier got a non-contiguous batch: entry {first + i} expected "
                    f"at index {i} but found {seq}; nothing was applied"
                )


def refuse_foreign_directory(path: Path, owns: Callable[[str], bool], store: str) -> None:
    """Refuse a store directory holding files `store` did not write (another applier's store):
    opening it would silently present an empty store. A missing directory is fine."""
    if not path.exists():
        return
    if not path.is_dir():
        raise StoreError(f"the {store} store path {path} exists and is not a directory")
    foreign = sorted(p.name for p in path.iterdir() if not owns(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise StoreError(
            f"{path} is not a {store} store (it holds {shown}); it was probably created by "
            "another applier: open it with that applier or use an empty directory"
        )


def reject_unknown_options(options: Mapping[str, Any], valid: Sequence[str], applier: str) -> None:
    """ConfigError naming every option in `options` that is not in `valid`, listing those."""
    unknown = sorted(str(k) for k in options if k not in valid)
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise ConfigError(
            f"unknown {applier} applier option{'s' if len(unknown) > 1 else ''} {names} "
            f"in [applier.options]; valid options: {', '.join(valid)}"
        )


#: An applier factory: open (creating if needed) the store at `path`.
#: `options` come from the `[applier.options]` table; unknown options must raise ConfigError.
ApplierFactory = Callable[[Path, Mapping[str, Any], bool], Applier]
