"""The LMDB engine: one environment, user data and the replication blob side by side.

Data lives in the named database ``data`` and the core's metadata blob in ``meta``, so user
keys can never collide with bookkeeping. A commit writes the batch and the blob in one LMDB
write transaction; LMDB commits are atomic, so after a crash either both are there or neither.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from kevo_repl.errors import StoreError
from kevo_repl.plugin.engine import OP_DELETE, EngineSpec

from .options import LMDBOptions, parse_options

log = logging.getLogger(__name__)

_DATA_DB = b"data"
_META_DB = b"meta"
_META_KEY = b"replication"
#: written by kevo-repl-lmdb before the engine contract (one key per position field)
_LEGACY_META_KEY = b"position"
#: The files LMDB keeps in an environment directory; anything else means another store made it.
_LMDB_FILE_NAMES = frozenset({"data.mdb", "lock.mdb"})


class LMDBSnapshot:
    """A read transaction: the blob and the data as of one instant."""

    def __init__(self, txn: lmdb.Transaction[bytes], data: lmdb._Database, meta: bytes | None):
        self._txn = txn
        self._data = data
        self.meta = meta

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        with self._txn.cursor(self._data) as cursor:
            if after is None:
                yield from cursor
                return
            # the first key >= after; skip it when it is `after` itself
            found = cursor.set_range(after) if after else cursor.first()
            if found and cursor.key() == after:
                found = cursor.next()
            if found:
                yield from cursor.iternext()


class LMDBEngine:
    """An LMDB environment at `path` (a directory)."""

    def __init__(self, path: Path, options: LMDBOptions, durable: bool) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            # durable: LMDB fsyncs every commit. Otherwise (a primary, whose WAL is its
            # durability) commits skip fsync and sync() flushes on demand.
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
        except (OSError, lmdb.Error) as exc:
            raise StoreError(f"cannot open the LMDB environment at {path}: {exc}") from exc
        try:
            self._data = env.open_db(_DATA_DB)
            self._meta = env.open_db(_META_DB)
            with env.begin(db=self._meta) as txn:
                legacy = txn.get(_LEGACY_META_KEY) is not None
        except lmdb.Error as exc:
            env.close()
            raise StoreError(f"cannot open the LMDB databases at {path}: {exc}") from exc
        if legacy:
            env.close()
            raise StoreError(
                f"the LMDB store at {path} was written by kevo-repl-lmdb 0.1 (before the engine "
                "contract); replicate into an empty directory instead"
            )
        self._env = env
        self.max_key_size: int = env.max_key_size()
        self.durable = durable
        log.info("opened LMDB at %s (durable=%s, %s)", path, durable, options)

    def read_meta(self) -> bytes | None:
        with self._env.begin(db=self._meta) as txn:
            return txn.get(_META_KEY)

    def commit(
        self, ops: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes], meta: bytes
    ) -> None:
        try:
            # commits on success, aborts on any exception: nothing of a failed batch stays
            with self._env.begin(write=True) as txn:
                cursor = txn.cursor(self._data)
                deletes = ops.count(OP_DELETE)
                if not deletes:
                    self._put_run(cursor, keys, values)
                else:
                    start = 0
                    for i in [i for i, op in enumerate(ops) if op == OP_DELETE]:
                        self._put_run(cursor, keys[start:i], values[start:i])
                        txn.delete(keys[i], db=self._data)
                        start = i + 1
                    self._put_run(cursor, keys[start:], values[start:])
                txn.put(_META_KEY, meta, db=self._meta)
        except lmdb.MapFullError as exc:
            size = self._env.info()["map_size"]
            raise StoreError(
                f"the LMDB map is full ({size} bytes); raise map_size in [applier.options]"
            ) from exc
        except lmdb.Error as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _put_run(
        cursor: lmdb.Cursor[bytes], keys: Sequence[bytes], values: Sequence[bytes]
    ) -> None:
        if keys:
            # LMDB's bulk put: one C-level call for the run
            consumed, _added = cursor.putmulti(zip(keys, values, strict=True), overwrite=True)
            if consumed != len(keys):
                raise StoreError(f"LMDB stored {consumed} of {len(keys)} puts")

    def sync(self) -> None:
        if not self.durable:  # a durable environment fsynced every commit already
            try:
                self._env.sync(True)
            except lmdb.Error as exc:
                raise StoreError(f"cannot sync the LMDB store at {self.path}: {exc}") from exc

    def get(self, key: bytes) -> bytes | None:
        with self._env.begin(db=self._data) as txn:
            return txn.get(key)

    @contextmanager
    def snapshot(self) -> Iterator[LMDBSnapshot]:
        txn = self._env.begin()
        try:
            # the blob is read in the view's own transaction, so it matches the data
            yield LMDBSnapshot(txn, self._data, txn.get(_META_KEY, db=self._meta))
        finally:
            txn.abort()

    def load(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """One write transaction in LMDB's append mode (no page splits, no searches)."""
        try:
            with self._env.begin(write=True) as txn:
                cursor = txn.cursor(self._data)
                cursor.putmulti(zip(keys, values, strict=True), overwrite=True, append=True)
        except lmdb.Error as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._env.close()


def open_engine(path: Path, options: Mapping[str, Any], durable: bool) -> LMDBEngine:
    """Open (creating if needed) the LMDB environment at `path`."""
    return LMDBEngine(Path(path), parse_options(options), durable)


#: LMDB's errors that mean a damaged environment (a bad page, a file that is not LMDB's),
#: not a failing one (MapFullError, DiskError, ReadersFullError are not damage)
_DAMAGE = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.InvalidError,
    lmdb.PanicError,
    lmdb.BadChecksumError,
    lmdb.IncompatibleError,
)


def is_damage(exc: BaseException) -> bool:
    """Whether an LMDB error means the environment's files are damaged."""
    return isinstance(exc, _DAMAGE)


#: what this plugin registers as ``lmdb`` (its typed `open` makes mypy check LMDBEngine
#: against the Engine protocol)
SPEC = EngineSpec(
    open=open_engine, owns_file=_LMDB_FILE_NAMES.__contains__, is_damage=is_damage
)
