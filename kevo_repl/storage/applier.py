"""The core side of a store: every replication rule, on top of an engine's storage primitives.

An engine (kevo_repl.plugin.engine) only commits batches with an opaque blob, reads it back,
gets, snapshots and bulk-loads. Here, once for every engine:

- the position (sequence, history, applied count, hash chain) is encoded into that blob and
  committed in the same transaction as the batch it describes;
- a batch must start right after the current position; keys must be 1..max_key_size bytes;
  ops must be known; Merge is applied as Put (no engine has a merge operator);
- load and set_position only touch a fresh store (never committed to), with strictly
  ascending keys across loads;
- a directory holding another engine's files is refused before the engine opens it;
- close waits for running reads, and never closes an engine under one;
- an engine error that means damaged files (kevo_repl.storage.damage) on open, apply, read,
  snapshot or sync is raised as StoreDamaged and reported to `damage_listener` once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kevo_repl.errors import PluginError, StoreDamaged, StoreError
from kevo_repl.plugin.engine import (
    ENGINE_API_VERSION,
    OP_DELETE,
    OP_PUT,
    Engine,
    EngineSnapshot,
    EngineSpec,
)
from kevo_repl.plugin.manager import Registry
from kevo_repl.protocol.codec import Columns, Entry, Op
from kevo_repl.storage.damage import DamageTest, damaged, is_damage
from kevo_repl.storage.position import Position, decode_position, encode_position

log = logging.getLogger(__name__)

#: How long close() waits for reads in other threads before it leaves the engine to be
#: closed by whichever of them ends last.
CLOSE_WAIT_S = 30.0

_MERGE = int(Op.MERGE)
assert int(Op.PUT) == OP_PUT and int(Op.DELETE) == OP_DELETE


def _merge_as_put(op: int) -> int:
    return OP_PUT if op == _MERGE else op


def refuse_foreign_directory(path: Path, owns: Callable[[str], bool], store: str) -> None:
    """Refuse a store directory holding files `store` did not write (another engine's store):
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


class SnapshotView:
    """A consistent view of a store: the position and the data read at one instant."""

    def __init__(
        self, view: EngineSnapshot, store: str,
        on_error: Callable[[str, BaseException], StoreDamaged | None] | None = None,
    ) -> None:
        self._view = view
        self._store = store
        self._on_error = on_error
        self.position = decode_position(view.meta, store)
        self._open = True

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every live key and value, in bytewise key order; with `after`, only the keys
        greater than it (where a resumed snapshot transfer picks up)."""
        if not self._open:
            raise StoreError(f"{self._store} snapshot used after its with-block ended")
        if self._on_error is None:
            return self._view.items(after)
        return self._classified(self._view.items(after), self._on_error)

    @staticmethod
    def _classified(
        items: Iterator[tuple[bytes, bytes]],
        on_error: Callable[[str, BaseException], StoreDamaged | None],
    ) -> Iterator[tuple[bytes, bytes]]:
        try:
            yield from items
        except Exception as exc:
            found = on_error("reading a snapshot", exc)
            if found is not None and found is not exc:
                raise found from exc
            raise


class Applier:
    """One store: an engine plus the replication rules. Thread-safe: one writer at a time
    (the sequence check, the commit and the new position are one step); reads run alongside."""

    def __init__(
        self, name: str, engine: Engine, path: Path, damage_test: DamageTest | None = None
    ) -> None:
        self.name = name
        self.path = path
        self.max_key_size: int = engine.max_key_size
        self._engine: Engine | None = engine
        self._write_lock = threading.Lock()
        #: guards _engine, _users and _close_pending
        self._state = threading.Condition()
        self._users = 0
        self._close_pending = False
        self._damage_test = damage_test
        #: the first damage found (None: none yet); reported to damage_listener once
        self.damage: StoreDamaged | None = None
        #: called (in whichever thread found it) when damage is first found
        self.damage_listener: Callable[[StoreDamaged], None] | None = None
        try:
            self._position = decode_position(engine.read_meta(), name)
        except Exception as exc:
            found = self._classify("reading its replication metadata", exc)
            if found is not None and found is not exc:
                raise found from exc
            raise
        #: the greatest key load() wrote (loads must ascend across calls)
        self._loaded_last: bytes | None = None

    # -- damage --------------------------------------------------------------------------------

    def _classify(self, during: str, exc: BaseException) -> StoreDamaged | None:
        """StoreDamaged when `exc` means damaged files (recorded, and reported once), else
        None: the caller re-raises `exc` as it is."""
        if not is_damage(exc, self._damage_test):
            return None
        found = damaged(self.name, self.path, during, exc)
        with self._state:
            first = self.damage is None
            if first:
                self.damage = found
        if first:
            listener = self.damage_listener
            if listener is not None:
                listener(found)
        return found

    # -- keeping the engine open while it is used ----------------------------------------------

    def _acquire(self) -> Engine:
        with self._state:
            engine = self._engine
            if engine is None or self._close_pending:
                raise StoreError(f"the {self.name} store at {self.path} is closed")
            self._users += 1
            return engine

    def _release(self) -> None:
        with self._state:
            self._users -= 1
            if self._users:
                return
            self._state.notify_all()
            engine = self._engine if self._close_pending else None
            if engine is not None:
                self._engine = None
        if engine is not None:
            engine.close()
            log.info("closed the %s store at %s after its last reader", self.name, self.path)

    # -- position and applying -----------------------------------------------------------------

    def position(self) -> Position:
        """The durable position, as last committed."""
        with self._state:
            if self._engine is None or self._close_pending:
                raise StoreError(f"the {self.name} store at {self.path} is closed")
        return self._position

    def apply(self, entries: Sequence[Entry], history_id: str, chain: int = 0) -> Position:
        """Apply `entries` (contiguous, ascending); see apply_columns."""
        if not entries:
            return self.position()
        seqs, ops, keys, values = zip(*entries, strict=True)
        first = seqs[0]
        if list(seqs) != list(range(first, first + len(seqs))):
            for i, seq in enumerate(seqs):
                if seq != first + i:
                    raise StoreError(
                        f"{self.name} applier got a non-contiguous batch: entry {first + i} "
                        f"expected at index {i} but found {seq}; nothing was applied"
                    )
        return self.apply_columns(Columns(first, ops, keys, values), history_id, chain)

    def apply_columns(self, batch: Columns, history_id: str, chain: int = 0) -> Position:
        """Apply a columnar batch (entries first_seq, first_seq+1, ...) and the new position in
        one atomic commit; return the new position. Durable on return for a durable store.
        `chain`, the hash chain after the last entry, is stored with the position."""
        n = len(batch.ops)
        if not n:
            return self.position()
        if len(batch.keys) != n or len(batch.values) != n:
            raise StoreError(f"{self.name} applier got columns of unequal length; nothing applied")
        ops = self._engine_ops(batch)
        self._check_keys(batch.keys, batch.first_seq)
        engine = self._acquire()
        try:
            with self._write_lock:
                current = self._position
                if batch.first_seq != current.sequence + 1:
                    raise StoreError(
                        f"{self.name} applier expected entry {current.sequence + 1} next but "
                        f"the batch starts at {batch.first_seq}; nothing was applied"
                    )
                new = Position(
                    batch.first_seq + n - 1, history_id, current.applied_entries + n, chain
                )
                try:
                    engine.commit(ops, batch.keys, batch.values, encode_position(new))
                except Exception as exc:
                    found = self._classify(f"applying entries {batch.first_seq}..", exc)
                    if found is exc or (found is None and not isinstance(exc, StoreError)):
                        raise
                    if found is not None:
                        raise found from exc
                    raise StoreError(
                        f"{self.name} applier could not apply entries {batch.first_seq}.."
                        f"{new.sequence}: {exc}; nothing was applied; the position stays at "
                        f"{current.sequence}"
                    ) from exc
                self._position = new
                return new
        finally:
            self._release()

    def _engine_ops(self, batch: Columns) -> Sequence[int]:
        ops = batch.ops
        puts, deletes, merges = ops.count(OP_PUT), ops.count(OP_DELETE), ops.count(_MERGE)
        if puts + deletes + merges != len(ops):
            i = next(i for i, op in enumerate(ops) if op not in (OP_PUT, OP_DELETE, _MERGE))
            raise StoreError(
                f"{self.name} applier got entry {batch.first_seq + i} with unknown op "
                f"{ops[i]}; nothing was applied"
            )
        # no engine has a merge operator: Merge is applied as Put
        return list(map(_merge_as_put, ops)) if merges else ops

    def _check_keys(self, keys: Sequence[bytes], first_seq: int | None) -> None:
        if not keys:
            return
        lengths = list(map(len, keys))
        if min(lengths) > 0 and max(lengths) <= self.max_key_size:
            return
        i = next(i for i, n in enumerate(lengths) if n == 0 or n > self.max_key_size)
        where = f"entry {first_seq + i}" if first_seq is not None else "a snapshot key"
        raise StoreError(
            f"{self.name} applier: {where} has a {lengths[i]}-byte key, but keys must be "
            f"1..{self.max_key_size} bytes; nothing was applied"
        )

    def sync(self) -> None:
        """Make every applied transaction durable (a no-op when commits already sync)."""
        engine = self._acquire()
        try:
            with self._write_lock:
                engine.sync()
        except Exception as exc:
            found = self._classify("syncing", exc)
            if found is not None and found is not exc:
                raise found from exc
            raise
        finally:
            self._release()

    # -- reading -------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        engine = self._acquire()
        try:
            if not key or len(key) > self.max_key_size:
                return None  # never stored: apply refuses such keys
            return engine.get(key)
        except Exception as exc:
            found = self._classify("reading a key", exc)
            if found is not None and found is not exc:
                raise found from exc
            raise
        finally:
            self._release()

    @contextmanager
    def snapshot(self) -> Iterator[SnapshotView]:
        """A consistent view: position and data read at one instant."""
        engine = self._acquire()
        try:
            with engine.snapshot() as view:
                snap = SnapshotView(view, self.name, self._classify)
                try:
                    yield snap
                finally:
                    snap._open = False
        except Exception as exc:
            found = self._classify("reading a snapshot", exc)
            if found is not None and found is not exc:
                raise found from exc
            raise
        finally:
            self._release()

    # -- building a store from a snapshot ------------------------------------------------------

    def load(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Bulk-write `items` into a fresh store (position 0); return how many. Keys must be
        strictly ascending (bytewise), within one call and across calls; a key out of order,
        empty or too long fails the call with StoreError and nothing of it is written. One
        call is one transaction; the position is not touched; durable after `sync()`."""
        pairs = list(items)
        if not pairs:
            return 0
        keys, values = (list(column) for column in zip(*pairs, strict=True))
        self._check_keys(keys, None)
        engine = self._acquire()
        try:
            with self._write_lock:
                self._check_fresh("load snapshot data into")
                last = self._loaded_last
                if (last is not None and keys[0] <= last) or (
                    keys != sorted(keys) or len(set(keys)) != len(keys)
                ):
                    raise StoreError(
                        f"{self.name} applier: snapshot keys must be strictly ascending; "
                        "nothing of this load was loaded"
                    )
                try:
                    engine.load(keys, values)
                except StoreError as exc:
                    raise StoreError(
                        f"{self.name} applier could not load snapshot data at {self.path}: "
                        f"{exc}; nothing of this load was loaded"
                    ) from exc
                self._loaded_last = keys[-1]
                return len(keys)
        finally:
            self._release()

    def set_position(self, position: Position) -> None:
        """Finish an install: set the position of a store filled with `load`, in one commit.
        Only for a store at position 0; the position needs a positive sequence."""
        if position.sequence < 1:
            raise StoreError(f"{self.name} applier: cannot set position {position.sequence}")
        engine = self._acquire()
        try:
            with self._write_lock:
                self._check_fresh("set the position of")
                engine.commit([], [], [], encode_position(position))
                self._position = position
        finally:
            self._release()

    def _check_fresh(self, what: str) -> None:
        if self._position != Position():
            raise StoreError(
                f"{self.name} applier: cannot {what} the store at {self.path}: it is at "
                f"position {self._position.sequence}, and only a fresh store (position 0) "
                "takes a snapshot"
            )

    def close(self) -> None:
        """Close the store; waits (up to CLOSE_WAIT_S) for reads in other threads, else the
        last of them closes it."""
        with self._state:
            engine = self._engine
            if engine is None or self._close_pending:
                return
            self._close_pending = True
            idle = self._state.wait_for(lambda: self._users == 0, timeout=CLOSE_WAIT_S)
            if not idle:
                log.warning(
                    "%s store at %s still in use after %.0fs; it closes when the last reader "
                    "finishes",
                    self.name,
                    self.path,
                    CLOSE_WAIT_S,
                )
                return
            self._engine = None
        engine.close()
        log.info("closed the %s store at %s", self.name, self.path)


def open_applier(
    name: str, spec: Any, path: Path, options: Mapping[str, Any], durable: bool
) -> Applier:
    """Open the store at `path` with the engine `spec` registered as `name`."""
    if not isinstance(spec, EngineSpec):
        raise PluginError(
            f"applier {name!r} registered a {type(spec).__name__}, not a "
            "kevo_repl.plugin.engine.EngineSpec (see docs/plugins.md)"
        )
    if spec.api_version != ENGINE_API_VERSION:
        raise PluginError(
            f"applier {name!r} implements engine contract version {spec.api_version}, but this "
            f"kevo-repl implements version {ENGINE_API_VERSION}; install a matching plugin"
        )
    path = Path(path)
    if spec.owns_file is not None:
        refuse_foreign_directory(path, spec.owns_file, name)
    try:
        engine = spec.open(path, options, durable)
    except Exception as exc:
        if is_damage(exc, spec.is_damage):
            raise damaged(name, path, "opening it", exc) from exc
        raise
    try:
        if not isinstance(engine.max_key_size, int) or engine.max_key_size < 1:
            raise PluginError(f"applier {name!r}: max_key_size must be a positive integer")
        store = Applier(name, engine, path, spec.is_damage)
    except BaseException:
        engine.close()
        raise
    log.info("opened the %s store at %s (durable=%s)", name, path, durable)
    return store


def open_registered(
    registry: Registry, name: str, path: Path, options: Mapping[str, Any], durable: bool
) -> Applier:
    """Open the store at `path` with the engine registered as `name`."""
    return open_applier(name, registry.get("applier", name), path, options, durable)
