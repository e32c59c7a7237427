"""The engine contract, version 1: the storage primitives a store plugin provides.

An engine is a plain embedded store. It knows nothing about replication: no sequences, no
positions, no histories, no Merge. kevo-repl's core (kevo_repl.storage.applier) owns every
replication rule and hands the engine only:

- ``commit(ops, keys, values, meta)``: write one batch of puts and deletes together with an
  opaque metadata blob in ONE atomic transaction (durable on return when opened durable);
- ``read_meta()``: the blob of the last commit (None for a store never committed to);
- ``get(key)``;
- ``snapshot()``: a consistent read-only view (the blob and the data at one instant) whose
  ``items(after)`` iterates in bytewise key order and can resume after a key;
- ``load(keys, values)``: bulk-write ascending keys into a fresh store (bootstrap);
- ``sync()`` and ``close()``.

A plugin registers an :class:`EngineSpec` under a name (``register("name", EngineSpec(...))``
in ``kevo_repl_register_appliers``). The spec's ``api_version`` says which version of this
contract the engine implements; the core refuses any other. The conformance suite in
``kevo_repl.testing`` checks an engine against this contract.

Damaged files (optional, still version 1): an engine may raise
``kevo_repl.errors.StoreDamaged`` itself, or declare ``EngineSpec.is_damage``, which the core
asks about any exception an engine call raised (and the exceptions it was raised from): true
means the store's files are damaged, not merely failing (a full disk is not damage). The core
then raises StoreDamaged, which a replica answers by its ``[replica] on_damage`` policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

#: The version of the engine contract this core implements.
ENGINE_API_VERSION = 1

#: The only ops an engine receives (Merge reaches an engine as a put).
OP_PUT = 1
OP_DELETE = 2


class EngineSnapshot(Protocol):
    """A consistent, read-only view of an engine: `meta` and `items` read at one instant."""

    @property
    def meta(self) -> bytes | None:
        """The metadata blob committed with the data this view shows (None: never committed)."""
        ...

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every key and value in bytewise key order; with `after`, only the keys greater
        than it (where a resumed transfer picks up). Valid until the view is closed."""
        ...


@runtime_checkable
class Engine(Protocol):
    """One open store. The core serializes commit, load and close; get and snapshot may run
    in other threads at the same time as a commit."""

    #: longest key the store accepts (the core refuses longer ones before they get here)
    max_key_size: int

    def read_meta(self) -> bytes | None:
        """The blob the last commit wrote, or None if nothing was ever committed."""
        ...

    def commit(
        self, ops: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes], meta: bytes
    ) -> None:
        """Write `ops[i]` (OP_PUT: put keys[i] = values[i]; OP_DELETE: delete keys[i], absent
        or not; values[i] is then b"") in order, and store `meta`, all in ONE atomic
        transaction: after a crash at any instant either all of it or none of it is there.
        The columns are equally long and may be empty (only the blob changes). Keys are
        1..max_key_size bytes. Durable when this returns if the engine was opened durable.
        Raise kevo_repl.errors.StoreError if it failed (nothing of it may then be visible)."""
        ...

    def sync(self) -> None:
        """Make every earlier commit and load durable (a no-op for a durable engine)."""
        ...

    def get(self, key: bytes) -> bytes | None: ...

    def snapshot(self) -> AbstractContextManager[EngineSnapshot]:
        """A consistent view, released when the with-block ends."""
        ...

    def load(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Bulk-write a fresh store (never committed to) in one transaction. The core has
        checked the keys: valid sizes, strictly ascending within and across calls (an engine
        may use an append mode). The blob is not touched; durable after `sync()`."""
        ...

    def close(self) -> None:
        """Release the store. The core calls it once, when no other call is running."""
        ...


#: Open (creating if needed) the engine at `path`: `(path, options, durable) -> Engine`.
#: `options` is the `[applier.options]` table; unknown or ill-typed ones raise ConfigError.
EngineOpener = Callable[[Path, Mapping[str, Any], bool], Engine]


@dataclass(frozen=True)
class EngineSpec:
    """What an engine plugin registers under its name."""

    #: opens the engine
    open: EngineOpener
    #: which file names in its directory the engine writes; the core refuses to open a
    #: directory holding any other file (another engine's store would look empty).
    #: None: the engine keeps no files there (nothing to check).
    owns_file: Callable[[str], bool] | None
    #: the version of this contract the engine implements
    api_version: int = ENGINE_API_VERSION
    #: optional: whether an exception an engine call raised means damaged files (see the
    #: module doc); None: only StoreDamaged raised by the engine counts as damage
    is_damage: Callable[[BaseException], bool] | None = None
