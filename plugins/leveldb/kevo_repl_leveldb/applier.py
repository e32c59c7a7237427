"""The LevelDB engine: one database, user data and the replication blob under two prefixes.

User keys are stored as ``b"d" + key`` and the core's metadata blob as ``b"m" + b"replication"``,
so bookkeeping can never collide with data, and the data range iterates in the same bytewise
order as the user keys. A commit puts the batch and the blob into ONE ``WriteBatch``; LevelDB
applies a write batch atomically (one log record), so after a crash both are there or neither.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import plyvel

from kevo_repl.errors import StoreError
from kevo_repl.plugin.engine import OP_DELETE, EngineSpec

from .options import LevelDBOptions, parse_options

log = logging.getLogger(__name__)

DATA_PREFIX = b"d"
META_PREFIX = b"m"
#: the first key past the data range
_DATA_END = bytes([DATA_PREFIX[0] + 1])
_META_KEY = META_PREFIX + b"replication"
#: written by kevo-repl-leveldb before the engine contract (one key per position field)
_LEGACY_META_KEY = META_PREFIX + b"position"

#: LevelDB itself takes keys of any length, but a primary only accepts keys its own store
#: takes (`max_key_size`), and its replicas may run another engine. 511 is LMDB's limit, so
#: LMDB and LevelDB nodes can replicate to each other in either direction.
MAX_KEY_SIZE = 511

#: The files LevelDB keeps in its directory; anything else means another store made it.
_LEVELDB_FILE_NAMES = ("CURRENT", "LOCK", "LOG", "LOG.old")
_LEVELDB_FILE_PREFIXES = ("MANIFEST-",)
_LEVELDB_FILE_SUFFIXES = (".log", ".ldb", ".sst", ".dbtmp")

_data_key = DATA_PREFIX.__add__


def owned_by_leveldb(name: str) -> bool:
    return (
        name in _LEVELDB_FILE_NAMES
        or name.startswith(_LEVELDB_FILE_PREFIXES)
        or name.endswith(_LEVELDB_FILE_SUFFIXES)
    )


class LevelDBSnapshot:
    """A LevelDB snapshot: the blob and the data as of one instant."""

    def __init__(self, snap: Any) -> None:
        self._snap = snap
        self.meta: bytes | None = snap.get(_META_KEY)

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        if after is None:
            it = self._snap.iterator(prefix=DATA_PREFIX)
        else:
            it = self._snap.iterator(
                start=DATA_PREFIX + after, include_start=False, stop=_DATA_END
            )
        skip = len(DATA_PREFIX)
        with it:
            for key, value in it:
                yield key[skip:], value


class LevelDBEngine:
    """A LevelDB database at `path` (a directory); LevelDB is safe for concurrent reads."""

    max_key_size = MAX_KEY_SIZE

    def __init__(self, path: Path, options: LevelDBOptions, durable: bool) -> None:
        self.path = path
        self.durable = durable
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db: Any = plyvel.DB(str(path), create_if_missing=True, **options.plyvel_kwargs())
        except (OSError, plyvel.Error) as exc:
            raise StoreError(f"cannot open the LevelDB database at {path}: {exc}") from exc
        try:
            legacy = self._db.get(_LEGACY_META_KEY) is not None
        except BaseException:
            self._db.close()  # a damaged table found here: release the store's lock
            raise
        if legacy:
            self._db.close()
            raise StoreError(
                f"the LevelDB store at {path} was written by kevo-repl-leveldb 0.1 (before the "
                "engine contract); replicate into an empty directory instead"
            )
        log.info("opened LevelDB at %s (durable=%s, %s)", path, durable, options)

    def read_meta(self) -> bytes | None:
        meta: bytes | None = self._db.get(_META_KEY)
        return meta

    def commit(
        self, ops: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes], meta: bytes
    ) -> None:
        batch = self._db.write_batch(sync=self.durable)
        if not ops.count(OP_DELETE):
            # the common case, only puts: the loop runs in C, one WriteBatch.put per entry
            deque(map(batch.put, map(_data_key, keys), values), maxlen=0)
        else:
            for op, key, value in zip(ops, keys, values, strict=True):
                if op == OP_DELETE:
                    batch.delete(DATA_PREFIX + key)
                else:
                    batch.put(DATA_PREFIX + key, value)
        batch.put(_META_KEY, meta)
        try:
            batch.write()
        except plyvel.Error as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def sync(self) -> None:
        if self.durable:
            return  # every write was already synced
        try:
            # LevelDB's log is append-only: one synced write makes every earlier one durable
            # too. Rewriting the blob with its own value changes nothing else.
            meta = self.read_meta()
            if meta is not None:
                self._db.put(_META_KEY, meta, sync=True)
            else:
                self._db.put(_DATA_END, b"", sync=True)
                self._db.delete(_DATA_END, sync=True)
        except plyvel.Error as exc:
            raise StoreError(f"cannot sync the LevelDB store at {self.path}: {exc}") from exc

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(DATA_PREFIX + key)
        return value

    @contextmanager
    def snapshot(self) -> Iterator[LevelDBSnapshot]:
        snap = self._db.snapshot()
        try:
            yield LevelDBSnapshot(snap)
        finally:
            snap.close()

    def load(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        batch = self._db.write_batch(sync=self.durable)
        deque(map(batch.put, map(_data_key, keys), values), maxlen=0)
        try:
            batch.write()
        except plyvel.Error as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._db.close()


def open_engine(path: Path, options: Mapping[str, Any], durable: bool) -> LevelDBEngine:
    """Open (creating if needed) the LevelDB database at `path` (mypy checks here that
    LevelDBEngine meets the Engine protocol: SPEC's `open` is typed)."""
    return LevelDBEngine(Path(path), parse_options(options), durable)


#: what this plugin registers as ``leveldb``
def is_damage(exc: BaseException) -> bool:
    """Whether a LevelDB error means damaged files (a bad block, table or manifest)."""
    return isinstance(exc, plyvel.CorruptionError)


SPEC = EngineSpec(open=open_engine, owns_file=owned_by_leveldb, is_damage=is_damage)
