"""Damaging a stopped node's store files the way a bad disk does, deterministically: the
pages (LMDB, SQLite) or tables (LevelDB) that hold user keys, never the replication
metadata, so that the store opens and the damage is found on apply, read or digest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

#: the prefix of every key `kevo-repl load` writes
KEY_PREFIX = b"key0"
#: LMDB and SQLite pages as these stores are created (their defaults)
PAGE = 4096
#: LMDB page header: pgno (8), pad (2), flags (2); P_LEAF = 0x02
_LMDB_FLAGS = 10
_LMDB_LEAF = 0x02
#: SQLite b-tree page types (the page's first byte; page 1 has its header first)
_SQLITE_BTREE = {0x02, 0x05, 0x0A, 0x0D}


def _pages_with_keys(data: bytes, first_page: int) -> list[int]:
    return [
        n for n in range(first_page, len(data) // PAGE)
        if KEY_PREFIX in data[n * PAGE:(n + 1) * PAGE]
    ]


def damage_lmdb(store: Path) -> int:
    """Flip the page-type flags of the leaf pages holding user keys in `data.mdb` (two bytes
    per page): LMDB then reports MDB_CORRUPTED on the pages' next use. Returns pages hit."""
    def holds_user_keys(data: bytearray, n: int) -> bool:
        # a leaf whose first node's key (node header: 8 bytes) is a user key
        first = n * PAGE + int.from_bytes(data[n * PAGE + 16:n * PAGE + 18], "little")
        return data[first + 8:first + 12] == KEY_PREFIX

    return _flip_lmdb_leaves(store, holds_user_keys)


def _flip_lmdb_leaves(store: Path, chosen: Callable[[bytearray, int], bool]) -> int:
    """Flip the two page-type flag bytes of every leaf page of `data.mdb` that `chosen`
    picks; returns pages hit."""
    path = store / "data.mdb"
    data = bytearray(path.read_bytes())
    hit = 0
    for n in range(2, len(data) // PAGE):  # pages 0 and 1 are LMDB's meta pages
        at = n * PAGE + _LMDB_FLAGS
        if data[at] & _LMDB_LEAF and chosen(data, n):
            data[at] ^= 0xFF
            data[at + 1] ^= 0xFF
            hit += 1
    path.write_bytes(bytes(data))
    return hit


def damage_sqlite(store: Path) -> int:
    """Flip the type byte of the b-tree pages holding user keys in the SQLite file: SQLite
    then reports "database disk image is malformed" when it reads them. Returns pages hit."""
    [path] = [p for p in store.iterdir() if p.suffix == ".sqlite"]
    data = bytearray(path.read_bytes())
    hit = 0
    for n in _pages_with_keys(bytes(data), 1):  # page 0 (SQLite's page 1) holds the schema
        at = n * PAGE
        if data[at] in _SQLITE_BTREE:
            data[at] ^= 0xFF
            hit += 1
    path.write_bytes(bytes(data))
    return hit


def damage_leveldb(store: Path) -> int:
    """Overwrite the footer (the last 48 bytes: index handle and magic number) of every
    `.ldb` table: LevelDB reports a Corruption when it opens the table for a read. Returns
    tables hit."""
    tables = sorted(store.glob("*.ldb"))
    for path in tables:
        size = path.stat().st_size
        with path.open("r+b") as fh:
            fh.seek(size - 48)
            fh.write(b"\xa5" * 48)
    return len(tables)


def damage_lmdb_everywhere(store: Path) -> int:
    """Flip the page-type flags of every leaf page in `data.mdb`, LMDB's own catalogue of
    named databases included: the environment no longer opens. Returns pages hit."""
    return _flip_lmdb_leaves(store, lambda data, n: data[n * PAGE + _LMDB_FLAGS] != 0xFF)


def damage_sqlite_header(store: Path) -> int:
    """Overwrite the SQLite file's 16-byte magic ("SQLite format 3"): SQLite refuses it as
    "not a database". Returns 1."""
    [path] = [p for p in store.iterdir() if p.suffix == ".sqlite"]
    with path.open("r+b") as fh:
        fh.write(b"\x00" * 16)
    return 1
