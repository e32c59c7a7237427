"""Catch-up baselines: the bare store's own API, and our applier, in synced batches.

`bare_store_rate` is the physical limit a replica is compared against: py-lmdb ``putmulti``,
a plyvel ``WriteBatch`` or sqlite3 ``executemany``, each batch one synced transaction, with
none of our code in between. `applier_rate` is the same load through our core applier
(`Applier.apply_columns`, the replica's path: checks, position, one commit per batch), so the
two side by side show what the applier itself costs. Only the store calls are timed; building
the keys and values is not.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from kevo_repl.errors import KevoReplError
from kevo_repl.plugin.manager import build_registry
from kevo_repl.protocol.codec import Columns, Op
from kevo_repl.storage.applier import open_registered

_LMDB_MAP_SIZE = 4 << 30

#: a batch: its first sequence (1-based), keys and values
Batch = tuple[int, list[bytes], list[bytes]]
#: writes one batch durably
_Writer = Callable[[list[bytes], list[bytes]], None]


def key_of(i: int) -> bytes:
    return b"%016d" % i


_FILLER = b"x" * 100


def value_of(i: int, size: int = 100) -> bytes:
    return (b"%016d" % i + _FILLER)[:size]


def batches(count: int, batch: int) -> Iterator[Batch]:
    """Entries 1..count (key/value of i-1) in `batch`-entry batches."""
    for first in range(1, count + 1, batch):
        n = min(batch, count + 1 - first)
        yield first, [key_of(s - 1) for s in range(first, first + n)], [
            value_of(s - 1) for s in range(first, first + n)
        ]


def _timed(count: int, batch: int, write: _Writer) -> float:
    spent = 0.0
    for _first, keys, values in batches(count, batch):
        started = time.perf_counter()
        write(keys, values)
        spent += time.perf_counter() - started
    return spent


def _lmdb(path: Path, count: int, batch: int) -> float:
    import lmdb

    path.mkdir(parents=True, exist_ok=True)
    # sync=True: every commit is fsynced, as on a replica
    env = lmdb.open(str(path), map_size=_LMDB_MAP_SIZE, sync=True, metasync=True)
    try:

        def write(keys: list[bytes], values: list[bytes]) -> None:
            with env.begin(write=True) as txn:
                txn.cursor().putmulti(zip(keys, values, strict=True), overwrite=True)

        return _timed(count, batch, write)
    finally:
        env.close()


def _leveldb(path: Path, count: int, batch: int) -> float:
    import plyvel

    db = plyvel.DB(str(path), create_if_missing=True)
    try:

        def write(keys: list[bytes], values: list[bytes]) -> None:
            wb = db.write_batch(sync=True)
            deque(map(wb.put, keys, values), maxlen=0)
            wb.write()

        return _timed(count, batch, write)
    finally:
        db.close()


def _sqlite(path: Path, count: int, batch: int) -> float:
    import sqlite3

    path.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path / "raw.sqlite3"), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # every commit fsynced
        conn.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")

        def write(keys: list[bytes], values: list[bytes]) -> None:
            conn.execute("BEGIN")
            rows = zip(keys, values, strict=True)
            conn.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", rows)
            conn.execute("COMMIT")

        return _timed(count, batch, write)
    finally:
        conn.close()


_BARE: dict[str, Callable[[Path, int, int], float]] = {
    "lmdb": _lmdb,
    "leveldb": _leveldb,
    "sqlite": _sqlite,
}


def has_bare_store(applier: str) -> bool:
    return applier in _BARE


def bare_store_rate(applier: str, count: int, batch: int, path: Path) -> dict[str, float]:
    """`count` entries through the bare store's own API in synced `batch`-entry batches."""
    if applier not in _BARE:
        raise KevoReplError(f"no bare-store baseline for {applier!r} ({', '.join(_BARE)} have one)")
    spent = _BARE[applier](path, count, batch)
    return {"raw_seconds": spent, "raw_entries_per_s": count / spent if spent else 0.0}


def applier_rate(applier: str, count: int, batch: int, path: Path) -> dict[str, float]:
    """`count` entries through our durable applier's `apply_columns`, `batch` per call."""
    store = open_registered(build_registry(), applier, path, {}, True)
    try:
        spent = 0.0
        for first, keys, values in batches(count, batch):
            cols = Columns(first, [Op.PUT] * len(keys), keys, values)
            started = time.perf_counter()
            store.apply_columns(cols, "bench")
            store.sync()
            spent += time.perf_counter() - started
        if store.position().sequence != count:
            raise KevoReplError(f"applier baseline store ends at {store.position().sequence}")
    finally:
        store.close()
    return {"applier_seconds": spent, "applier_entries_per_s": count / spent if spent else 0.0}
