"""Bare-library raw baselines for `bench catchup`: the store's own batched durable write rate,
with no kevo-repl code in the timed path.

An engine listed in RAW_BASELINES is measured with its library alone; any other engine is
measured through the core applier (bench.raw_baseline).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

#: rows of one batch: (key, value) pairs
Batch = Sequence[tuple[bytes, bytes]]
#: (path, batches) -> seconds spent writing them durably, one synced transaction per batch
RawWriter = Callable[[Path, Iterable[Batch]], float]


def sqlite_executemany(path: Path, batches: Iterable[Batch]) -> float:
    """stdlib sqlite3 as the sqlite engine sets it up (WAL, synchronous=FULL, a WITHOUT ROWID
    BLOB table): one executemany and COMMIT per batch. Returns the seconds those took."""
    path.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path / "raw.sqlite", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")
        spent = 0.0
        for rows in batches:
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
            spent += time.perf_counter() - started
        return spent
    finally:
        conn.close()


RAW_BASELINES: dict[str, RawWriter] = {"sqlite": sqlite_executemany}
