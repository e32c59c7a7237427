"""What the sqlite engine promises beyond the conformance suite: a replica readable with plain
SQL, WAL with synchronous=FULL, a bounded reader pool, failed batches rolled back, damaged
files refused."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from kevo_repl_sqlite import DB_FILE, SQLiteEngine, open_engine

from kevo_repl.errors import StoreError
from kevo_repl.plugin.engine import OP_DELETE, OP_PUT

FULL, NORMAL = 2, 1


def test_replica_is_a_plain_sql_table(tmp_path: Path) -> None:
    engine = open_engine(tmp_path, {}, True)
    try:
        engine.commit([OP_PUT, OP_PUT, OP_PUT, OP_DELETE], [b"b", b"\x00", b"a", b"b"],
                      [b"2", b"zero", b"", b""], b"blob")
    finally:
        engine.close()
    conn = sqlite3.connect(f"{(tmp_path / DB_FILE).as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT key, value FROM kv ORDER BY key").fetchall()
        assert rows == [(b"\x00", b"zero"), (b"a", b"")]
        assert conn.execute("SELECT typeof(key), typeof(value) FROM kv").fetchall() == [
            ("blob", "blob"), ("blob", "blob")]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


@pytest.mark.parametrize(("durable", "synchronous"), [(True, FULL), (False, NORMAL)])
def test_wal_journal_and_synchronous(tmp_path: Path, durable: bool, synchronous: int) -> None:
    engine = open_engine(tmp_path, {}, durable)
    try:
        assert engine.settings() == {"journal_mode": "wal", "synchronous": synchronous}
        engine.commit([OP_PUT], [b"k"], [b"v"], b"m")
        engine.sync()  # a non-durable engine syncs with one FULL commit, then returns to NORMAL
        assert engine.settings()["synchronous"] == synchronous
        assert engine.read_meta() == b"m" and engine.get(b"k") == b"v"
    finally:
        engine.close()


def test_a_failed_batch_leaves_nothing_and_the_next_one_commits(tmp_path: Path) -> None:
    engine = open_engine(tmp_path, {}, True)
    try:
        engine.commit([OP_PUT], [b"a"], [b"1"], b"m1")
        with pytest.raises(ValueError):  # columns of unequal length: fails half-way
            engine.commit([OP_PUT, OP_PUT, OP_PUT], [b"a", b"b", b"c"], [b"2", b"2"], b"m2")
        with pytest.raises(StoreError, match="commit failed"):  # SQLite refuses a NULL value
            engine.commit([OP_PUT, OP_PUT], [b"a", b"b"], [b"3", None], b"m3")  # type: ignore[list-item]
        assert engine.read_meta() == b"m1"
        with engine.snapshot() as view:
            assert list(view.items()) == [(b"a", b"1")]
        engine.commit([OP_PUT], [b"b"], [b"4"], b"m4")
        assert engine.read_meta() == b"m4" and engine.get(b"b") == b"4"
    finally:
        engine.close()


@pytest.mark.timeout(60)
def test_reader_pool_is_bounded(tmp_path: Path) -> None:
    engine = open_engine(tmp_path, {"max_readers": 2, "reader_wait_s": 0.3}, True)
    try:
        engine.commit([OP_PUT], [b"k"], [b"v"], b"m")
        with engine.snapshot(), engine.snapshot():
            started = time.monotonic()
            with pytest.raises(StoreError, match="all 2 SQLite read connections"):
                engine.get(b"k")
            assert 0.3 <= time.monotonic() - started < 5
        assert engine.get(b"k") == b"v"  # released: free again

        # a waiting read gets the connection a finished snapshot hands back
        got: list[bytes | None] = []
        with engine.snapshot():
            with engine.snapshot():
                reader = threading.Thread(target=lambda: got.append(engine.get(b"k")))
                reader.start()
                time.sleep(0.05)
            reader.join(timeout=5)
        assert got == [b"v"]
    finally:
        engine.close()


def test_abandoned_iteration_releases_the_snapshot(tmp_path: Path) -> None:
    engine = open_engine(tmp_path, {"max_readers": 1}, True)
    try:
        keys = [b"k%03d" % i for i in range(100)]
        engine.commit([OP_PUT] * 100, keys, [b"1"] * 100, b"m1")
        with engine.snapshot() as view:
            it = view.items()
            assert next(it) == (b"k000", b"1")  # left half-way
        engine.commit([OP_PUT] * 100, keys, [b"2"] * 100, b"m2")
        with engine.snapshot() as view:  # the one connection, with a fresh instant
            assert view.meta == b"m2"
            assert {v for _, v in view.items()} == {b"2"}
    finally:
        engine.close()


def test_a_damaged_database_file_is_refused_unchanged(tmp_path: Path) -> None:
    garbage = b"not an sqlite database, " * 100
    (tmp_path / DB_FILE).write_bytes(garbage)
    with pytest.raises(StoreError, match=DB_FILE):
        open_engine(tmp_path, {}, True)
    assert (tmp_path / DB_FILE).read_bytes() == garbage


def test_close_leaves_only_its_own_files(tmp_path: Path) -> None:
    engine: SQLiteEngine = open_engine(tmp_path, {}, True)
    engine.commit([OP_PUT], [b"k"], [b"v"], b"m")
    with engine.snapshot() as view:
        assert view.meta == b"m"
    engine.close()
    names = {p.name for p in tmp_path.iterdir()}
    assert DB_FILE in names and names <= {DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"}
