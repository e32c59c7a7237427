"""The LMDB applier: one environment, user data and replication metadata side by side.

Data lives in the named database ``data`` and the position in ``meta``, so user keys can
never collide with bookkeeping. Every ``apply`` writes the batch and the new position in one
LMDB write transaction; LMDB commits are atomic, so after a crash at any instant the stored
position names exactly the entries the store holds.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path
from typing import Any

import lmdb

from kevo_repl.errors import StoreError
from kevo_repl.plugin.engine import (
    ApplierFactory,
    Position,
    check_sequences,
    refuse_foreign_directory,
)
from kevo_repl.protocol.codec import Entry, Op

from .options import LMDBOptions, parse_options

log = logging.getLogger(__name__)

_DATA_DB = b"data"
_META_DB = b"meta"
_META_POSITION = b"position"
_META_HISTORY = b"history_id"
_META_APPLIED = b"applied_entries"
_META_CHAIN = b"chain"
_U64 = struct.Struct("<Q")
#: The files LMDB keeps in an environment directory; anything else means another store made it.
_LMDB_FILE_NAMES = frozenset({"data.mdb", "lock.mdb"})

_PUT = int(Op.PUT)
_DELETE = int(Op.DELETE)
_MERGE = int(Op.MERGE)

# C-level accessors keep per-entry Python work out of the hot path.
_op_of = itemgetter(1)
_key_value_of = itemgetter(2, 3)


def _u64(raw: bytes | None, name: str) -> int:
    if raw is None:
        return 0
    if len(raw) != _U64.size:
        raise StoreError(f"LMDB meta key {name!r} holds {len(raw)} bytes, expected {_U64.size}")
    value: int = _U64.unpack(raw)[0]
    return value


def _read_position(txn: lmdb.Transaction[bytes], meta: lmdb._Database) -> Position:
    sequence = _u64(txn.get(_META_POSITION, db=meta), "position")
    applied = _u64(txn.get(_META_APPLIED, db=meta), "applied_entries")
    chain = _u64(txn.get(_META_CHAIN, db=meta), "chain")
    raw_history = txn.get(_META_HISTORY, db=meta)
    try:
        history = raw_history.decode("utf-8") if raw_history is not None else ""
    except UnicodeDecodeError as exc:
        raise StoreError(f"LMDB meta key 'history_id' is not UTF-8: {exc}") from exc
    return Position(sequence, history, applied, chain)


def _check_directory(path: Path) -> None:
    refuse_foreign_directory(path, _LMDB_FILE_NAMES.__contains__, "LMDB")


class LMDBSnapshot:
    """A read transaction's view: the position and the data as of one instant."""

    def __init__(
        self, txn: lmdb.Transaction[bytes], data: lmdb._Database, position: Position
    ) -> None:
        self._txn = txn
        self._data = data
        self._position = position
        self._open = True

    @property
    def position(self) -> Position:
        return self._position

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every key and value of the data database in bytewise key order; with `after`,
        only the keys greater than it."""
        if not self._open:
            raise StoreError("LMDB snapshot used after its with-block ended")
        return self._iterate(after)

    def _iterate(self, after: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        with self._txn.cursor(self._data) as cursor:
            if after is None:
                yield from cursor
                return
            try:
                # the first key >= after; skip it when it is `after` itself
                found = cursor.set_range(after) if after else cursor.first()
                if found and cursor.key() == after:
                    found = cursor.next()
            except lmdb.Error as exc:
                raise StoreError(f"cannot position an LMDB snapshot after a key: {exc}") from exc
            if found:
                yield from cursor.iternext()

    def _close(self) -> None:
        self._open = False
        self._txn.abort()


class LMDBApplier:
    """An LMDB environment at `path` (a directory) that applies replicated batches."""

    name = "lmdb"

    def __init__(self, path: Path, options: LMDBOptions, durable: bool) -> None:
        self.path = path
        self.durable = durable
        _check_directory(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the LMDB directory {path}: {exc}") from exc
        try:
            # durable: LMDB fsyncs every commit, so apply() returns only once it is on disk.
            # Otherwise (a primary, whose WAL is its durability) commits skip fsync and
            # sync() flushes on demand.
            env = lmdb.open(
                str(path),
                map_size=options.map_size,
                max_readers=options.max_readers,
                max_dbs=2,
                subdir=True,
                sync=durable,
                metasync=True,
                lock=True,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the LMDB environment at {path}: {exc}") from exc
        try:
            self._data = env.open_db(_DATA_DB)
            self._meta = env.open_db(_META_DB)
        except lmdb.Error as exc:
            env.close()
            raise StoreError(f"cannot open the LMDB databases at {path}: {exc}") from exc
        self._env: lmdb.Environment | None = env
        self.max_key_size: int = env.max_key_size()
        log.info(
            "opened LMDB store at %s (durable=%s, map_size=%s, max_readers=%s)",
            path,
            durable,
            options.map_size,
            options.max_readers,
        )

    def _require_env(self) -> lmdb.Environment:
        env = self._env
        if env is None:
            raise StoreError(f"the LMDB store at {self.path} is closed")
        return env

    def position(self) -> Position:
        env = self._require_env()
        try:
            with env.begin() as txn:
                return _read_position(txn, self._meta)
        except lmdb.Error as exc:
            raise StoreError(
                f"cannot read the position of the LMDB store at {self.path}: {exc}"
            ) from exc

    def apply(self, entries: Sequence[Entry], history_id: str, chain: int = 0) -> Position:
        if not entries:
            return self.position()
        env = self._require_env()
        n = len(entries)
        first = entries[0][0]
        last = first + n - 1
        current: Position | None = None
        try:
            # The context manager commits on success and aborts on any exception, so a
            # failure anywhere below leaves data and position untouched.
            with env.begin(write=True) as txn:
                current = _read_position(txn, self._meta)
                check_sequences(entries, current.sequence, "LMDB")
                self._write_data(txn, entries)
                applied = current.applied_entries + n
                meta = self._meta
                txn.put(_META_POSITION, _U64.pack(last), db=meta)
                txn.put(_META_HISTORY, history_id.encode("utf-8"), db=meta)
                txn.put(_META_APPLIED, _U64.pack(applied), db=meta)
                txn.put(_META_CHAIN, _U64.pack(chain), db=meta)
        except lmdb.Error as exc:
            raise StoreError(self._describe_failure(entries, current, exc)) from exc
        return Position(last, history_id, applied, chain)

    def _write_data(self, txn: lmdb.Transaction[bytes], entries: Sequence[Entry]) -> None:
        data = self._data
        n = len(entries)
        ops = list(map(_op_of, entries))
        puts = ops.count(_PUT) + ops.count(_MERGE)
        cursor = txn.cursor(data)
        if puts == n:
            # The common case, a batch of only puts: one C-level call for the whole batch.
            self._put_run(cursor, entries, 0, n)
            return
        if puts + ops.count(_DELETE) != n:
            bad = next(e for e in entries if e[1] not in (_PUT, _DELETE, _MERGE))
            raise StoreError(f"LMDB applier got entry {bad[0]} with unknown op {bad[1]}")
        max_key = self.max_key_size
        start = 0
        for i, op in enumerate(ops):
            if op != _DELETE:
                continue
            if start < i:
                self._put_run(cursor, entries, start, i)
            key = entries[i][2]
            # LMDB reports a missing over-long key as "not found" rather than an error;
            # check here so a bad delete fails the batch like a bad put does.
            if not key or len(key) > max_key:
                raise lmdb.BadValsizeError(f"delete of a {len(key)}-byte key")
            txn.delete(key, db=data)
            start = i + 1
        if start < n:
            self._put_run(cursor, entries, start, n)

    @staticmethod
    def _put_run(
        cursor: lmdb.Cursor[bytes], entries: Sequence[Entry], start: int, stop: int
    ) -> None:
        run = entries if start == 0 and stop == len(entries) else entries[start:stop]
        consumed, _added = cursor.putmulti(map(_key_value_of, run), overwrite=True)
        if consumed != stop - start:
            # With overwrite=True every item must be stored; anything else is a bug.
            raise StoreError(
                f"LMDB stored {consumed} of the {stop - start} puts from entry {entries[start][0]}"
            )

    def _describe_failure(
        self, entries: Sequence[Entry], current: Position | None, exc: lmdb.Error
    ) -> str:
        first = entries[0][0]
        last = entries[-1][0]
        where = f"LMDB applier could not apply entries {first}..{last}"
        tail = "nothing was applied"
        if current is not None:
            tail += f"; the position stays at {current.sequence}"
        if isinstance(exc, lmdb.BadValsizeError):
            max_key = self.max_key_size
            for entry in entries:
                if not entry[2] or len(entry[2]) > max_key:
                    return (
                        f"{where}: entry {entry[0]} has a {len(entry[2])}-byte key, but LMDB keys "
                        f"must be 1..{max_key} bytes; {tail}"
                    )
        if isinstance(exc, lmdb.MapFullError):
            size = self._env.info()["map_size"] if self._env is not None else "?"
            return (
                f"{where}: the LMDB map is full ({size} bytes); raise map_size in "
                f"[applier.options]; {tail}"
            )
        return f"{where}: {type(exc).__name__}: {exc}; {tail}"

    def sync(self) -> None:
        env = self._require_env()
        if self.durable:
            return  # every commit was already fsynced by LMDB
        try:
            env.sync(True)
        except lmdb.Error as exc:
            raise StoreError(f"cannot sync the LMDB store at {self.path}: {exc}") from exc

    def get(self, key: bytes) -> bytes | None:
        env = self._require_env()
        if not key or len(key) > self.max_key_size:
            return None  # LMDB could never have stored it
        try:
            with env.begin(db=self._data) as txn:
                return txn.get(key)
        except lmdb.Error as exc:
            raise StoreError(f"cannot read from the LMDB store at {self.path}: {exc}") from exc

    @contextmanager
    def snapshot(self) -> Iterator[LMDBSnapshot]:
        env = self._require_env()
        try:
            txn = env.begin()
        except lmdb.Error as exc:
            raise StoreError(
                f"cannot open a snapshot of the LMDB store at {self.path}: {exc}"
            ) from exc
        try:
            # Read in the snapshot's own transaction so position and data agree.
            position = _read_position(txn, self._meta)
        except BaseException:
            txn.abort()
            raise
        snap = LMDBSnapshot(txn, self._data, position)
        try:
            yield snap
        finally:
            snap._close()

    def load(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Append ascending keys to a fresh store in one write transaction (LMDB's append
        mode: no page splits, no searches)."""
        env = self._require_env()
        try:
            with env.begin(write=True) as txn:
                self._check_fresh(txn, "load snapshot data into")
                cursor = txn.cursor(self._data)
                consumed, added = cursor.putmulti(items, overwrite=True, append=True)
                if added != consumed:
                    # append mode refuses a key not greater than the last one
                    raise StoreError(
                        f"LMDB applier: snapshot keys must be strictly ascending, and "
                        f"{consumed - added} of this load are not; nothing of it was loaded"
                    )
        except lmdb.BadValsizeError as exc:
            raise StoreError(
                f"LMDB applier: a snapshot key is empty or longer than {self.max_key_size} "
                f"bytes; nothing of this load was loaded ({exc})"
            ) from exc
        except lmdb.Error as exc:
            raise StoreError(
                f"LMDB applier could not load snapshot data at {self.path}: "
                f"{type(exc).__name__}: {exc}; nothing of this load was loaded"
            ) from exc
        loaded: int = added
        return loaded

    def set_position(self, position: Position) -> None:
        if position.sequence < 1:
            raise StoreError(f"LMDB applier: cannot set position {position.sequence}")
        env = self._require_env()
        try:
            with env.begin(write=True) as txn:
                self._check_fresh(txn, "set the position of")
                meta = self._meta
                txn.put(_META_POSITION, _U64.pack(position.sequence), db=meta)
                txn.put(_META_HISTORY, position.history_id.encode("utf-8"), db=meta)
                txn.put(_META_APPLIED, _U64.pack(position.applied_entries), db=meta)
                txn.put(_META_CHAIN, _U64.pack(position.chain), db=meta)
        except lmdb.Error as exc:
            raise StoreError(
                f"LMDB applier could not set the position at {self.path}: {exc}"
            ) from exc

    def _check_fresh(self, txn: lmdb.Transaction[bytes], what: str) -> None:
        current = _read_position(txn, self._meta)
        if current != Position():
            raise StoreError(
                f"LMDB applier: cannot {what} the store at {self.path}: it is at position "
                f"{current.sequence}, and only a fresh store (position 0) takes a snapshot"
            )

    def close(self) -> None:
        env, self._env = self._env, None
        if env is not None:
            env.close()
            log.info("closed LMDB store at %s", self.path)


def open_applier(path: Path, options: Mapping[str, Any], durable: bool) -> LMDBApplier:
    """Open (creating if needed) the LMDB store at `path`; the ApplierFactory of this plugin."""
    return LMDBApplier(Path(path), parse_options(options), durable)


# mypy checks here that LMDBApplier meets the Applier protocol.
_factory: ApplierFactory = open_applier
