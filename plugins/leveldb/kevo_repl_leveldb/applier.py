"""The LevelDB applier: one database, user data and replication metadata under two prefixes.

User keys are stored as ``b"d" + key`` and the position as ``b"m" + name``, so bookkeeping can
never collide with data, and the data range iterates in the same bytewise order as the user
keys. Every ``apply`` puts the batch and the new position into ONE ``WriteBatch``; LevelDB
applies a write batch atomically (one log record), so after a crash at any instant the stored
position names exactly the entries the store holds.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import pairwise
from operator import itemgetter
from pathlib import Path
from typing import Any

import plyvel

from kevo_repl.errors import StoreError
from kevo_repl.plugin.engine import (
    ApplierFactory,
    Position,
    check_sequences,
    refuse_foreign_directory,
)
from kevo_repl.protocol.codec import Entry, Op

from .options import LevelDBOptions, parse_options

log = logging.getLogger(__name__)

DATA_PREFIX = b"d"
META_PREFIX = b"m"
#: the first key past the data range
_DATA_END = bytes([DATA_PREFIX[0] + 1])
_META_POSITION = META_PREFIX + b"position"
_META_HISTORY = META_PREFIX + b"history_id"
_META_APPLIED = META_PREFIX + b"applied_entries"
_META_CHAIN = META_PREFIX + b"chain"
_U64 = struct.Struct("<Q")

#: LevelDB itself takes keys of any length, but a primary only accepts keys its own store
#: takes (`max_key_size`), and its replicas may run another applier. 511 is LMDB's limit, so
#: LMDB and LevelDB nodes can replicate to each other in either direction.
MAX_KEY_SIZE = 511

#: How long close() waits for reads and writes in other threads to finish before it leaves
#: the database to be closed by whichever of them ends last.
CLOSE_WAIT_S = 30.0

#: The files LevelDB keeps in its directory; anything else means another store made it.
_LEVELDB_FILE_NAMES = ("CURRENT", "LOCK", "LOG", "LOG.old")
_LEVELDB_FILE_PREFIXES = ("MANIFEST-",)
_LEVELDB_FILE_SUFFIXES = (".log", ".ldb", ".sst", ".dbtmp")

_PUT = int(Op.PUT)
_DELETE = int(Op.DELETE)
_MERGE = int(Op.MERGE)

# C-level accessors keep per-entry Python work out of the hot path.
_op_of = itemgetter(1)
_key_of = itemgetter(2)
_value_of = itemgetter(3)
_data_key = DATA_PREFIX.__add__


def _u64(raw: bytes | None, name: str) -> int:
    if raw is None:
        return 0
    if len(raw) != _U64.size:
        raise StoreError(f"LevelDB meta key {name!r} holds {len(raw)} bytes, expected {_U64.size}")
    value: int = _U64.unpack(raw)[0]
    return value


def _read_position(get: Callable[[bytes], bytes | None]) -> Position:
    """The position as `get` (a database's or a snapshot's) sees it."""
    sequence = _u64(get(_META_POSITION), "position")
    applied = _u64(get(_META_APPLIED), "applied_entries")
    chain = _u64(get(_META_CHAIN), "chain")
    raw_history = get(_META_HISTORY)
    try:
        history = raw_history.decode("utf-8") if raw_history is not None else ""
    except UnicodeDecodeError as exc:
        raise StoreError(f"LevelDB meta key 'history_id' is not UTF-8: {exc}") from exc
    return Position(sequence, history, applied, chain)


def _owned_by_leveldb(name: str) -> bool:
    return (
        name in _LEVELDB_FILE_NAMES
        or name.startswith(_LEVELDB_FILE_PREFIXES)
        or name.endswith(_LEVELDB_FILE_SUFFIXES)
    )


def _check_directory(path: Path) -> None:
    refuse_foreign_directory(path, _owned_by_leveldb, "LevelDB")


class LevelDBSnapshot:
    """A LevelDB snapshot's view: the position and the data as of one instant."""

    def __init__(self, snap: Any, position: Position) -> None:
        self._snap = snap
        self._position = position
        self._open = True

    @property
    def position(self) -> Position:
        return self._position

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every user key and value in bytewise key order (the prefix keeps that order);
        with `after`, only the keys greater than it."""
        if not self._open:
            raise StoreError("LevelDB snapshot used after its with-block ended")
        return self._iterate(after)

    def _iterate(self, after: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        skip = len(DATA_PREFIX)
        if after is None:
            it = self._snap.iterator(prefix=DATA_PREFIX)
        else:
            it = self._snap.iterator(
                start=DATA_PREFIX + after, include_start=False, stop=_DATA_END
            )
        with it:
            for key, value in it:
                yield key[skip:], value

    def _close(self) -> None:
        self._open = False
        self._snap.close()


class LevelDBApplier:
    """A LevelDB database at `path` (a directory) that applies replicated batches.

    Thread-safe: the node applies in one worker thread while serving reads in others.
    Writers are serialized by a lock (the sequence check and the write must not interleave);
    reads go straight to LevelDB, which is safe for concurrent use.
    """

    name = "leveldb"
    max_key_size = MAX_KEY_SIZE

    def __init__(self, path: Path, options: LevelDBOptions, durable: bool) -> None:
        self.path = path
        self.durable = durable
        _check_directory(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the directory for the LevelDB store {path}: {exc}"
            ) from exc
        try:
            db = plyvel.DB(str(path), create_if_missing=True, **options.plyvel_kwargs())
        except plyvel.Error as exc:
            raise StoreError(f"cannot open the LevelDB database at {path}: {exc}") from exc
        try:
            position = _read_position(db.get)
        except BaseException:
            db.close()
            raise
        self._db: Any = db
        #: guards _db and _users; close() waits on it for in-flight operations
        self._state = threading.Condition()
        self._users = 0
        #: serializes apply() and sync(): check, write, and advance _position as one step
        self._write_lock = threading.Lock()
        #: what the database holds; only apply() changes it, under _write_lock
        self._position = position
        #: the greatest key load() wrote (found on first use), under _write_lock
        self._loaded_last: bytes | None = None
        log.info(
            "opened LevelDB store at %s (durable=%s, position=%d, %s)",
            path,
            durable,
            position.sequence,
            options,
        )

    # -- keeping the database open while it is used --------------------------------------------

    def _acquire(self) -> Any:
        with self._state:
            db = self._db
            if db is None:
                raise StoreError(f"the LevelDB store at {self.path} is closed")
            self._users += 1
            return db

    def _release(self) -> None:
        with self._state:
            self._users -= 1
            if self._users == 0:
                self._state.notify_all()

    # -- the Applier contract -----------------------------------------------------------------

    def _require_open(self) -> None:
        if self._db is None:
            raise StoreError(f"the LevelDB store at {self.path} is closed")

    def position(self) -> Position:
        self._require_open()
        return self._position

    def apply(self, entries: Sequence[Entry], history_id: str, chain: int = 0) -> Position:
        if not entries:
            return self.position()
        db = self._acquire()
        try:
            with self._write_lock:
                current = self._position
                check_sequences(entries, current.sequence, "LevelDB")
                n = len(entries)
                last = entries[0][0] + n - 1
                applied = current.applied_entries + n
                batch = db.write_batch(sync=self.durable)
                self._fill(batch, entries)
                batch.put(_META_POSITION, _U64.pack(last))
                batch.put(_META_HISTORY, history_id.encode("utf-8"))
                batch.put(_META_APPLIED, _U64.pack(applied))
                batch.put(_META_CHAIN, _U64.pack(chain))
                try:
                    batch.write()
                except plyvel.Error as exc:
                    raise StoreError(
                        f"LevelDB applier could not apply entries {entries[0][0]}..{last}: "
                        f"{type(exc).__name__}: {exc}; nothing was applied; the position stays "
                        f"at {current.sequence}"
                    ) from exc
                self._position = Position(last, history_id, applied, chain)
                return self._position
        finally:
            self._release()

    def _fill(self, batch: Any, entries: Sequence[Entry]) -> None:
        """Add the entries' puts and deletes to `batch`, or raise StoreError (and the batch,
        never written, is dropped)."""
        keys = list(map(_key_of, entries))
        lengths = list(map(len, keys))
        if min(lengths) == 0 or max(lengths) > MAX_KEY_SIZE:
            bad = next(e for e in entries if not e[2] or len(e[2]) > MAX_KEY_SIZE)
            raise StoreError(
                f"LevelDB applier could not apply entries {entries[0][0]}..{entries[-1][0]}: "
                f"entry {bad[0]} has a {len(bad[2])}-byte key, but keys must be "
                f"1..{MAX_KEY_SIZE} bytes; nothing was applied"
            )
        ops = list(map(_op_of, entries))
        puts = ops.count(_PUT) + ops.count(_MERGE)
        if puts == len(ops):
            # The common case, a batch of only puts (merge is applied as put): the loop runs
            # in C, one WriteBatch.put per entry.
            deque(map(batch.put, map(_data_key, keys), map(_value_of, entries)), maxlen=0)
            return
        if puts + ops.count(_DELETE) != len(ops):
            bad = next(e for e in entries if e[1] not in (_PUT, _DELETE, _MERGE))
            raise StoreError(f"LevelDB applier got entry {bad[0]} with unknown op {bad[1]}")
        put = batch.put
        delete = batch.delete
        for _seq, op, key, value in entries:
            if op == _DELETE:
                delete(DATA_PREFIX + key)
            else:
                put(DATA_PREFIX + key, value)

    def sync(self) -> None:
        if self.durable:
            self._require_open()  # every write was already synced
            return
        db = self._acquire()
        try:
            with self._write_lock:
                # LevelDB's log is append-only: one synced write makes every earlier write
                # durable too. Rewriting the position with its own value changes nothing else.
                db.put(_META_POSITION, _U64.pack(self._position.sequence), sync=True)
        except plyvel.Error as exc:
            raise StoreError(f"cannot sync the LevelDB store at {self.path}: {exc}") from exc
        finally:
            self._release()

    def load(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Write ascending keys into a fresh store in one WriteBatch."""
        db = self._acquire()
        try:
            with self._write_lock:
                self._check_fresh("load snapshot data into")
                pairs = list(items)
                if not pairs:
                    return 0
                keys = [k for k, _ in pairs]
                if min(map(len, keys)) == 0 or max(map(len, keys)) > MAX_KEY_SIZE:
                    raise StoreError(
                        f"LevelDB applier: a snapshot key is empty or longer than "
                        f"{MAX_KEY_SIZE} bytes; nothing of this load was loaded"
                    )
                last = self._last_loaded_key(db)
                if (last is not None and keys[0] <= last) or any(
                    a >= b for a, b in pairwise(keys)
                ):
                    raise StoreError(
                        "LevelDB applier: snapshot keys must be strictly ascending; nothing "
                        "of this load was loaded"
                    )
                batch = db.write_batch(sync=self.durable)
                deque(map(batch.put, map(_data_key, keys), (v for _, v in pairs)), maxlen=0)
                try:
                    batch.write()
                except plyvel.Error as exc:
                    raise StoreError(
                        f"LevelDB applier could not load snapshot data at {self.path}: {exc}; "
                        "nothing of this load was loaded"
                    ) from exc
                self._loaded_last = keys[-1]
                return len(pairs)
        finally:
            self._release()

    def _last_loaded_key(self, db: Any) -> bytes | None:
        if self._loaded_last is None:
            with db.iterator(
                reverse=True, start=DATA_PREFIX, stop=_DATA_END, include_value=False
            ) as it:
                for key in it:
                    self._loaded_last = key[len(DATA_PREFIX) :]
                    break
        return self._loaded_last

    def set_position(self, position: Position) -> None:
        if position.sequence < 1:
            raise StoreError(f"LevelDB applier: cannot set position {position.sequence}")
        db = self._acquire()
        try:
            with self._write_lock:
                self._check_fresh("set the position of")
                batch = db.write_batch(sync=self.durable)
                batch.put(_META_POSITION, _U64.pack(position.sequence))
                batch.put(_META_HISTORY, position.history_id.encode("utf-8"))
                batch.put(_META_APPLIED, _U64.pack(position.applied_entries))
                batch.put(_META_CHAIN, _U64.pack(position.chain))
                try:
                    batch.write()
                except plyvel.Error as exc:
                    raise StoreError(
                        f"LevelDB applier could not set the position at {self.path}: {exc}"
                    ) from exc
                self._position = position
        finally:
            self._release()

    def _check_fresh(self, what: str) -> None:
        if self._position != Position():
            raise StoreError(
                f"LevelDB applier: cannot {what} the store at {self.path}: it is at position "
                f"{self._position.sequence}, and only a fresh store (position 0) takes a "
                "snapshot"
            )

    def get(self, key: bytes) -> bytes | None:
        if not key or len(key) > MAX_KEY_SIZE:
            self._require_open()
            return None  # never stored: apply refuses such keys
        db = self._acquire()
        try:
            value: bytes | None = db.get(DATA_PREFIX + key)
            return value
        except plyvel.Error as exc:
            raise StoreError(f"cannot read from the LevelDB store at {self.path}: {exc}") from exc
        finally:
            self._release()

    @contextmanager
    def snapshot(self) -> Iterator[LevelDBSnapshot]:
        db = self._acquire()
        try:
            try:
                snap = db.snapshot()
                # Read in the snapshot itself so position and data agree.
                position = _read_position(snap.get)
            except plyvel.Error as exc:
                raise StoreError(
                    f"cannot open a snapshot of the LevelDB store at {self.path}: {exc}"
                ) from exc
            view = LevelDBSnapshot(snap, position)
            try:
                yield view
            finally:
                view._close()
        finally:
            self._release()

    def close(self) -> None:
        with self._state:
            db, self._db = self._db, None
            if db is None:
                return
            idle = self._state.wait_for(lambda: self._users == 0, timeout=CLOSE_WAIT_S)
        if not idle:
            # Closing under a running read would free memory it still uses; plyvel closes the
            # database itself once the last of them drops its reference.
            log.warning(
                "LevelDB store at %s still in use after %.0fs; it closes when the last "
                "reader finishes",
                self.path,
                CLOSE_WAIT_S,
            )
            return
        db.close()
        log.info("closed LevelDB store at %s", self.path)


def open_applier(path: Path, options: Mapping[str, Any], durable: bool) -> LevelDBApplier:
    """Open (creating if needed) the LevelDB store at `path`; the ApplierFactory of this plugin."""
    return LevelDBApplier(Path(path), parse_options(options), durable)


# mypy checks here that LevelDBApplier meets the Applier protocol.
_factory: ApplierFactory = open_applier
