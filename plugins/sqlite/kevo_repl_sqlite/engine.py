"""The SQLite engine: one database file, a plain key/value table and the blob beside it.

User data is the table ``kv (key BLOB PRIMARY KEY, value BLOB NOT NULL)``, so an application
can read a replica with plain SQL; the core's metadata blob is the one row of ``kevo_meta``.
SQLite compares BLOBs with memcmp (a shorter prefix first), which is exactly bytewise order.

The database runs in WAL journal mode. A commit is ONE ``BEGIN IMMEDIATE`` ... ``COMMIT``
holding the batch and the blob; with ``synchronous=FULL`` (a durable engine) SQLite fsyncs the
WAL before COMMIT returns, and a transaction is atomic across crashes. Reads (get, snapshots)
use their own read-only connections from a bounded pool: in WAL mode a reader sees the last
commit before its read transaction began and never a batch being written.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import groupby
from pathlib import Path
from typing import Any

from kevo_repl.errors import StoreError
from kevo_repl.plugin.engine import OP_DELETE, EngineSpec

from .options import SQLiteOptions

log = logging.getLogger(__name__)

#: the database file in the store directory; SQLite adds the -wal and -shm files beside it
DB_FILE = "kv.sqlite"
_OWNED = frozenset({DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal"})
#: 511 bytes is what LMDB takes: an SQLite node then replicates to and from LMDB and LevelDB
#: nodes in either direction (SQLite itself takes far longer keys).
KEY_LIMIT = 511

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS kevo_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
)
_META_ROW = "replication"
_SELECT_META = "SELECT value FROM kevo_meta WHERE name = 'replication'"
#: rows a snapshot iteration fetches at a time
_FETCH_ROWS = 512
_UPSERT = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"


def _fail(what: str, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")


class _Readers:
    """At most `limit` read-only connections, handed to one thread at a time."""

    def __init__(self, uri: str, limit: int, wait_s: float) -> None:
        self._uri = uri
        self._limit = limit
        self._wait_s = wait_s
        self._idle: list[sqlite3.Connection] = []
        self._opened = 0
        self._free = threading.Condition()

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        conn = self._take()
        try:
            yield conn
        finally:
            with self._free:
                self._idle.append(conn)
                self._free.notify()

    def _take(self) -> sqlite3.Connection:
        deadline = time.monotonic() + self._wait_s
        with self._free:
            while not self._idle and self._opened >= self._limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreError(
                        f"all {self._limit} SQLite read connections stayed busy for "
                        f"{self._wait_s}s; raise max_readers in [applier.options]"
                    )
                self._free.wait(left)
            if self._idle:
                return self._idle.pop()
            self._opened += 1
        try:
            # autocommit (isolation_level None): a snapshot opens its read transaction itself
            return sqlite3.connect(self._uri, uri=True, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            with self._free:
                self._opened -= 1
                self._free.notify()
            raise _fail("cannot open an SQLite read connection", exc) from exc

    def close(self) -> None:
        with self._free:
            for conn in self._idle:
                conn.close()
            self._idle.clear()
            self._opened = 0


class SQLiteSnapshot:
    """A read transaction on its own connection: the blob and the data of one instant."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._cursors: set[sqlite3.Cursor] = set()
        # the first read fixes the instant every later read of this transaction sees
        row = conn.execute(_SELECT_META).fetchone()
        self.meta: bytes | None = None if row is None else row[0]

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        cursor = self._conn.cursor()
        self._cursors.add(cursor)
        try:
            if after is None:
                cursor.execute("SELECT key, value FROM kv ORDER BY key")
            else:
                cursor.execute("SELECT key, value FROM kv WHERE key > ? ORDER BY key", (after,))
            # fetched in lists: `yield from cursor` would close the cursor on GeneratorExit
            while rows := cursor.fetchmany(_FETCH_ROWS):
                yield from rows
        finally:
            # an iteration abandoned half-way ends here only when collected, possibly after
            # close() closed its cursor and the connection went back to the pool
            if cursor in self._cursors:
                self._cursors.discard(cursor)
                cursor.close()

    def close(self) -> None:
        for cursor in list(self._cursors):  # iterations abandoned half-way
            cursor.close()
        self._cursors.clear()


class SQLiteEngine:
    """The SQLite database `path/kv.sqlite` (`path` is a directory)."""

    max_key_size = KEY_LIMIT

    def __init__(self, path: Path, options: SQLiteOptions, durable: bool) -> None:
        self.path = path
        self.durable = durable
        self._lock = threading.Lock()  # the writing connection serves one call at a time
        file = path / DB_FILE
        try:
            path.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the SQLite database at {file}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"SQLite at {file} refused WAL journal mode (got {mode!r})")
            # durable: fsync the WAL at every COMMIT. Otherwise (a primary, whose own WAL is
            # its durability) NORMAL: commits survive a process crash; sync() forces them out.
            self._set_synchronous(conn, durable)
            conn.execute(f"PRAGMA cache_size=-{options.cache_size // 1024}")
            conn.execute(f"PRAGMA wal_autocheckpoint={options.wal_autocheckpoint}")
            for statement in _SCHEMA:
                conn.execute(statement)
        except sqlite3.Error as exc:
            conn.close()
            raise _fail(f"cannot set up the SQLite database at {file}", exc) from exc
        except StoreError:
            conn.close()
            raise
        self._conn = conn
        self._readers = _Readers(f"{file.resolve().as_uri()}?mode=ro", options.max_readers,
                                 options.reader_wait_s)
        log.info("opened SQLite at %s (durable=%s, %s)", file, durable, options)

    @staticmethod
    def _set_synchronous(conn: sqlite3.Connection, full: bool) -> None:
        conn.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")

    def settings(self) -> dict[str, str | int]:
        """journal_mode and synchronous (0 OFF, 1 NORMAL, 2 FULL) of the writing connection,
        as SQLite reports them (for operators and tests)."""
        with self._lock:
            mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
            sync = self._conn.execute("PRAGMA synchronous").fetchone()[0]
        return {"journal_mode": str(mode), "synchronous": int(sync)}

    def read_meta(self) -> bytes | None:
        with self._lock:
            row = self._conn.execute(_SELECT_META).fetchone()
        return None if row is None else bytes(row[0])

    def commit(
        self, ops: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes], meta: bytes
    ) -> None:
        with self._lock, self._transaction("commit"):
            cur = self._conn.cursor()
            if OP_DELETE not in ops:
                cur.executemany(_UPSERT, zip(keys, values, strict=True))
            else:
                # runs of equal ops in batch order: a put run is one executemany
                rows = zip(ops, keys, values, strict=True)
                for op, run in groupby(rows, key=lambda row: row[0]):
                    if op == OP_DELETE:
                        cur.executemany("DELETE FROM kv WHERE key = ?", ((k,) for _, k, _ in run))
                    else:
                        cur.executemany(_UPSERT, ((k, v) for _, k, v in run))
            cur.execute("INSERT OR REPLACE INTO kevo_meta (name, value) VALUES (?, ?)",
                        (_META_ROW, meta))

    def load(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """One transaction of ascending inserts (each lands on the B-tree's last page)."""
        with self._lock, self._transaction("bulk load"):
            self._conn.executemany("INSERT INTO kv (key, value) VALUES (?, ?)",
                                   zip(keys, values, strict=True))

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; on any failure ROLLBACK, so nothing of it is visible."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("SQLite rollback of a failed %s failed", what)
            if isinstance(exc, sqlite3.Error):
                raise _fail(f"SQLite {what} failed at {self.path}", exc) from exc
            raise

    def sync(self) -> None:
        if self.durable:
            return  # every COMMIT already fsynced the WAL
        # One FULL commit fsyncs the WAL, and with it every earlier frame in it (frames that
        # were checkpointed went to the database file, which a checkpoint fsyncs). Its
        # row is written and removed again: the store is unchanged.
        with self._lock:
            self._set_synchronous(self._conn, True)
            try:
                with self._transaction("sync"):
                    self._conn.execute("INSERT OR REPLACE INTO kevo_meta VALUES ('sync', x'')")
                    self._conn.execute("DELETE FROM kevo_meta WHERE name = 'sync'")
            finally:
                self._set_synchronous(self._conn, False)

    def get(self, key: bytes) -> bytes | None:
        try:
            with self._readers.connection() as conn:
                row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise _fail(f"SQLite read failed at {self.path}", exc) from exc
        return None if row is None else bytes(row[0])

    @contextmanager
    def snapshot(self) -> Iterator[SQLiteSnapshot]:
        with self._readers.connection() as conn:
            conn.execute("BEGIN")  # deferred: the snapshot's first read starts it
            view: SQLiteSnapshot | None = None
            try:
                view = SQLiteSnapshot(conn)
                yield view
            finally:
                if view is not None:
                    view.close()
                conn.execute("ROLLBACK")

    def close(self) -> None:
        # readers first: the last connection to close checkpoints and removes the WAL
        self._readers.close()
        with self._lock:
            self._conn.close()


def open_engine(path: Path, options: Mapping[str, Any], durable: bool) -> SQLiteEngine:
    """Open (creating if needed) the SQLite store in the directory `path` (SPEC's typed
    `open` makes mypy check SQLiteEngine against the Engine protocol)."""
    return SQLiteEngine(Path(path), SQLiteOptions.parse(options), durable)


#: what this plugin registers as ``sqlite``
#: SQLITE_CORRUPT and SQLITE_NOTADB (primary result codes)
_DAMAGE_CODES = frozenset({11, 26})


def is_damage(exc: BaseException) -> bool:
    """Whether an SQLite error means a damaged database file (not a busy or full one)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _DAMAGE_CODES
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


SPEC = EngineSpec(open=open_engine, owns_file=_OWNED.__contains__, is_damage=is_damage)
