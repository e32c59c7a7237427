"""The core's replication rules (kevo_repl.storage.applier) on every engine named in APPLIERS.

Engines come from the plugin registry (never by importing a plugin module), and every test
uses real store files under tmp_path. The engines' own contract is checked by the conformance
suite (tests/test_engine_conformance.py).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from damage_files import damage_leveldb, damage_lmdb, damage_sqlite

from kevo_repl.errors import ConfigError, StoreDamaged, StoreError
from kevo_repl.plugin.manager import build_registry
from kevo_repl.protocol.codec import Entry, Op
from kevo_repl.storage.applier import Applier, open_registered
from kevo_repl.storage.position import Position
from kevo_repl.storage.store import digest

#: opens a store through the core: (path, options, durable) -> Applier
ApplierFactory = Callable[[Path, Mapping[str, Any], bool], Applier]

#: Applier plugins under test.
APPLIERS = ["lmdb", "leveldb", "sqlite"]

#: Per applier: options it must accept, and one known option with a value of the wrong type.
VALID_OPTIONS: dict[str, dict[str, Any]] = {
    "lmdb": {"map_size": 1 << 30, "max_readers": 16},
    "leveldb": {
        "write_buffer_size": 1 << 20,
        "lru_cache_size": 1 << 20,
        "max_open_files": 64,
        "block_size": 8192,
        "bloom_filter_bits": 0,
        "compression": "none",
        "paranoid_checks": True,
    },
    "sqlite": {"cache_size": 1 << 20, "wal_autocheckpoint": 100, "max_readers": 2,
               "reader_wait_s": 0.5},
}
WRONG_TYPED_OPTIONS: dict[str, list[tuple[str, Any]]] = {
    "lmdb": [("map_size", "64GiB"), ("map_size", True), ("map_size", 0), ("max_readers", 1.5)],
    "leveldb": [
        ("write_buffer_size", "32MiB"),
        ("write_buffer_size", True),
        ("lru_cache_size", 0),
        ("max_open_files", 1.5),
        ("block_size", -1),
        ("bloom_filter_bits", -1),
        ("bloom_filter_bits", False),
        ("compression", "zstd"),
        ("compression", 1),
        ("paranoid_checks", "yes"),
    ],
    "sqlite": [("cache_size", "64MiB"), ("cache_size", 1023), ("wal_autocheckpoint", 0),
               ("max_readers", 0), ("max_readers", 1025), ("reader_wait_s", 0)],
}

HISTORY = "history-a"


# ---------------------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=APPLIERS)
def applier_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def factory(applier_name: str) -> ApplierFactory:
    return functools.partial(open_registered, build_registry(), applier_name)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(factory: ApplierFactory, store_path: Path) -> Iterator[Applier]:
    applier = factory(store_path, {}, True)
    try:
        yield applier
    finally:
        applier.close()


def put(seq: int, key: bytes, value: bytes) -> Entry:
    return Entry(seq, Op.PUT, key, value)


def delete(seq: int, key: bytes) -> Entry:
    return Entry(seq, Op.DELETE, key, b"")


def puts(first: int, count: int, prefix: str = "key") -> list[Entry]:
    return [
        put(s, f"{prefix}{s:06d}".encode(), f"value-{s}".encode())
        for s in range(first, first + count)
    ]


def state(applier: Applier) -> tuple[Position, list[tuple[bytes, bytes]]]:
    """The position and every item, read in one snapshot."""
    with applier.snapshot() as snap:
        return snap.position, list(snap.items())


# ---------------------------------------------------------------------------------------------
# basic behaviour
# ---------------------------------------------------------------------------------------------


def test_meets_the_protocol(store: Applier, applier_name: str) -> None:
    assert isinstance(store, Applier)
    assert store.name == applier_name
    assert store.max_key_size > 0


def test_fresh_store_is_at_zero(store: Applier) -> None:
    assert store.position() == Position(0, "", 0)
    assert store.get(b"anything") is None
    assert state(store) == (Position(0, "", 0), [])


def test_apply_get_position_round_trip(store: Applier) -> None:
    entries = [put(1, b"b", b"2"), put(2, b"a", b"1"), put(3, b"c", b"")]
    returned = store.apply(entries, HISTORY)
    assert returned == Position(3, HISTORY, 3)
    assert store.position() == returned
    assert store.get(b"a") == b"1"
    assert store.get(b"b") == b"2"
    assert store.get(b"c") == b""  # an empty value is a value, not a missing key
    assert store.get(b"d") is None


def test_later_put_overwrites(store: Applier) -> None:
    store.apply([put(1, b"k", b"old"), put(2, b"k", b"new")], HISTORY)
    assert store.get(b"k") == b"new"
    store.apply([put(3, b"k", b"newer")], HISTORY)
    assert store.get(b"k") == b"newer"


def test_deletes(store: Applier) -> None:
    store.apply([put(1, b"a", b"1"), put(2, b"b", b"2"), put(3, b"c", b"3")], HISTORY)
    pos = store.apply([delete(4, b"b"), delete(5, b"never-written"), put(6, b"d", b"4")], HISTORY)
    assert pos == Position(6, HISTORY, 6)
    assert store.get(b"b") is None
    assert state(store)[1] == [(b"a", b"1"), (b"c", b"3"), (b"d", b"4")]
    # put, delete and put again of one key inside a single batch: the last one wins
    store.apply(
        [put(7, b"x", b"1"), delete(8, b"x"), put(9, b"x", b"2"), delete(10, b"a")], HISTORY
    )
    assert store.get(b"x") == b"2"
    assert store.get(b"a") is None


def test_merge_is_applied_as_put(store: Applier) -> None:
    store.apply([put(1, b"k", b"base"), Entry(2, Op.MERGE, b"k", b"merged")], HISTORY)
    assert store.get(b"k") == b"merged"
    store.apply([Entry(3, Op.MERGE, b"fresh", b"m")], HISTORY)
    assert store.get(b"fresh") == b"m"


def test_applied_entries_counts_every_entry(store: Applier) -> None:
    store.apply(puts(1, 10), HISTORY)
    store.apply([delete(11, b"key000001")], HISTORY)
    pos = store.apply(puts(12, 5), "history-b")
    assert pos == Position(16, "history-b", 16)
    assert store.position() == pos


def test_empty_batch_changes_nothing(store: Applier) -> None:
    assert store.apply([], HISTORY) == Position(0, "", 0)
    store.apply(puts(1, 3), HISTORY)
    before = state(store)
    assert store.apply([], "another-history") == before[0]
    assert state(store) == before


def test_position_and_data_survive_reopen(factory: ApplierFactory, store_path: Path) -> None:
    first = factory(store_path, {}, True)
    first.apply(puts(1, 100), HISTORY)
    first.apply([delete(101, b"key000050")], HISTORY)
    expected = state(first)
    first.close()
    first.close()  # idempotent

    second = factory(store_path, {}, True)
    try:
        assert state(second) == expected
        assert second.position() == Position(101, HISTORY, 101)
        assert second.get(b"key000050") is None
        assert second.get(b"key000051") == b"value-51"
        # and it carries on from where it stopped
        assert second.apply(puts(102, 1), HISTORY) == Position(102, HISTORY, 102)
    finally:
        second.close()


def test_valid_options_are_accepted(
    factory: ApplierFactory, applier_name: str, store_path: Path
) -> None:
    applier = factory(store_path, VALID_OPTIONS[applier_name], True)
    try:
        applier.apply(puts(1, 3), HISTORY)
        assert applier.position() == Position(3, HISTORY, 3)
    finally:
        applier.close()


# ---------------------------------------------------------------------------------------------
# sequence checks: nothing is applied out of order
# ---------------------------------------------------------------------------------------------

BAD_SEQUENCES = {
    "starts-too-far": [12, 13, 14],
    "replays-applied": [10, 11, 12],
    "starts-too-early": [5, 6],
    "gap": [11, 12, 14],
    "out-of-order": [11, 13, 12],
    "duplicate": [11, 11, 12],
}


@pytest.mark.parametrize("seqs", BAD_SEQUENCES.values(), ids=BAD_SEQUENCES.keys())
def test_bad_sequences_are_rejected(store: Applier, seqs: list[int]) -> None:
    store.apply(puts(1, 10), HISTORY)
    before = state(store)
    batch = [put(s, f"new{i}".encode(), b"x") for i, s in enumerate(seqs)]
    with pytest.raises(StoreError):
        store.apply(batch, "other-history")
    assert state(store) == before
    assert store.position() == Position(10, HISTORY, 10)


def test_fresh_store_must_start_at_one(store: Applier) -> None:
    with pytest.raises(StoreError):
        store.apply(puts(2, 3), HISTORY)
    assert state(store) == (Position(0, "", 0), [])
    assert store.apply(puts(1, 3), HISTORY) == Position(3, HISTORY, 3)


# ---------------------------------------------------------------------------------------------
# atomicity of one batch
# ---------------------------------------------------------------------------------------------


def _bad_key(store: Applier, kind: str) -> bytes:
    return b"" if kind == "empty" else b"k" * (store.max_key_size + 1)


@pytest.mark.parametrize("kind", ["empty", "too-long"])
@pytest.mark.parametrize("op", [Op.PUT, Op.MERGE, Op.DELETE])
def test_invalid_entry_mid_batch_applies_nothing(store: Applier, kind: str, op: Op) -> None:
    store.apply(puts(1, 10), HISTORY)
    before = state(store)
    batch = [
        put(11, b"key000001", b"overwritten"),
        delete(12, b"key000002"),
        put(13, b"brand-new", b"x"),
        Entry(14, op, _bad_key(store, kind), b"bad"),
        put(15, b"after", b"y"),
        delete(16, b"key000003"),
    ]
    with pytest.raises(StoreError):
        store.apply(batch, "other-history")
    assert state(store) == before
    assert store.position() == Position(10, HISTORY, 10)
    # the store is still usable, from the same sequence
    assert store.apply(puts(11, 2, prefix="ok"), HISTORY) == Position(12, HISTORY, 12)


def test_longest_key_is_accepted(store: Applier) -> None:
    key = b"m" * store.max_key_size
    store.apply([put(1, key, b"v")], HISTORY)
    assert store.get(key) == b"v"
    store.apply([delete(2, key)], HISTORY)
    assert store.get(key) is None


# ---------------------------------------------------------------------------------------------
# snapshots
# ---------------------------------------------------------------------------------------------


def test_snapshot_is_consistent_while_writes_continue(store: Applier) -> None:
    first = [put(1, b"m", b"1"), put(2, b"c", b"2"), put(3, b"x", b"3"), put(4, b"a", b"4")]
    store.apply(first, HISTORY)
    expected_items = [(b"a", b"4"), (b"c", b"2"), (b"m", b"1"), (b"x", b"3")]
    with store.snapshot() as snap:
        assert snap.position == Position(4, HISTORY, 4)
        store.apply([put(5, b"m", b"changed"), delete(6, b"a"), put(7, b"b", b"new")], HISTORY)
        store.apply(puts(8, 50), "history-b")
        assert store.position() == Position(57, "history-b", 57)
        # the snapshot still shows the old instant, and iterates more than once
        assert snap.position == Position(4, HISTORY, 4)
        assert list(snap.items()) == expected_items
        assert list(snap.items()) == expected_items
    position, items = state(store)
    assert position == Position(57, "history-b", 57)
    keys = [k for k, _ in items]
    assert keys == sorted(keys)
    assert dict(items)[b"m"] == b"changed"
    assert b"a" not in dict(items)
    assert len(items) == 3 + 1 + 50


def test_snapshot_items_are_in_bytewise_key_order(store: Applier) -> None:
    keys = [b"\xff", b"b", b"a\x00", b"a", b"\x00", b"B", b"ab"]
    store.apply([put(i + 1, k, k) for i, k in enumerate(keys)], HISTORY)
    with store.snapshot() as snap:
        assert [k for k, _ in snap.items()] == sorted(keys)


def test_snapshot_items_after_a_key(store: Applier) -> None:
    keys = [b"a", b"ab", b"b", b"c\x00", b"c\xff", b"d"]
    store.apply([put(i + 1, k, k.upper()) for i, k in enumerate(keys)], HISTORY)
    with store.snapshot() as snap:
        assert [k for k, _ in snap.items(after=None)] == keys
        assert list(snap.items(after=b"b")) == [(k, k.upper()) for k in keys[3:]]
        assert [k for k, _ in snap.items(after=b"a")] == keys[1:]  # a key in the store
        assert [k for k, _ in snap.items(after=b"bb")] == keys[3:]  # a key not in it
        assert [k for k, _ in snap.items(after=b"\x00")] == keys  # before everything
        assert list(snap.items(after=b"d")) == []  # the last key
        assert list(snap.items(after=b"zzz")) == []  # past the end
        # resuming from where each prefix of the iteration stopped gives the rest, exactly
        for n in range(len(keys)):
            assert [k for k, _ in snap.items(after=keys[n])] == keys[n + 1 :]


# ---------------------------------------------------------------------------------------------
# installing a snapshot: load and set_position
# ---------------------------------------------------------------------------------------------


def test_load_and_set_position_build_a_store(
    factory: ApplierFactory, store_path: Path
) -> None:
    source = factory(store_path.with_name("source"), {}, True)
    try:
        source.apply(puts(1, 500), HISTORY)
        source.apply([delete(501, b"key000007"), put(502, b"key000008", b"changed")], HISTORY)
        with source.snapshot() as snap:
            expected_items = list(snap.items())
            position = snap.position
    finally:
        source.close()

    target = factory(store_path, {}, False)  # an install is not synced per transaction
    try:
        assert target.load(expected_items[:100]) == 100
        assert target.load([]) == 0
        assert target.load(iter(expected_items[100:])) == len(expected_items) - 100
        assert target.position() == Position()  # load never touches the position
        target.set_position(Position(position.sequence, HISTORY, position.sequence))
        target.sync()
        assert target.position() == Position(502, HISTORY, 502)
        # once it has a position the store is live: no more snapshot data, no second position
        with pytest.raises(StoreError):
            target.load([(b"zzz", b"late")])
        with pytest.raises(StoreError):
            target.set_position(Position(600, HISTORY, 600))
        target.apply(puts(503, 2), HISTORY)  # and it carries on from the snapshot's position
    finally:
        target.close()

    reopened = factory(store_path, {}, True)
    try:
        position, items = state(reopened)
        assert position == Position(504, HISTORY, 504)
        assert items == sorted([*expected_items, *((e.key, e.value) for e in puts(503, 2))])
        assert reopened.get(b"key000007") is None
        assert reopened.get(b"key000008") == b"changed"
    finally:
        reopened.close()


def test_load_refuses_a_store_with_a_position(store: Applier) -> None:
    store.apply(puts(1, 3), HISTORY)
    before = state(store)
    with pytest.raises(StoreError, match="position"):
        store.load([(b"zzz", b"v")])
    with pytest.raises(StoreError):
        store.set_position(Position(10, HISTORY, 10))
    assert state(store) == before


@pytest.mark.parametrize(
    "second",
    [
        [(b"b", b"2"), (b"a", b"1")],  # descending within a call
        [(b"c", b"3"), (b"c", b"4")],  # a duplicate within a call
        [(b"a", b"9")],  # not after the last key of an earlier call
        [(b"m", b"1"), (b"", b"2")],  # an empty key
        [(b"m", b"1"), (b"n" * 10_000, b"2")],  # a key too long for any shipped store
    ],
    ids=["descending", "duplicate", "behind-earlier-call", "empty-key", "long-key"],
)
def test_load_refuses_bad_keys_and_writes_nothing_of_the_call(
    factory: ApplierFactory, store_path: Path, second: list[tuple[bytes, bytes]]
) -> None:
    target = factory(store_path, {}, False)
    try:
        target.load([(b"a", b"1"), (b"b", b"2")])
        with pytest.raises(StoreError):
            target.load(second)
        with target.snapshot() as snap:
            assert list(snap.items()) == [(b"a", b"1"), (b"b", b"2")]
        assert target.load([(b"z", b"26")]) == 1  # still usable
    finally:
        target.close()


def test_set_position_needs_a_sequence(store: Applier) -> None:
    with pytest.raises(StoreError):
        store.set_position(Position(0, HISTORY, 0))
    assert store.position() == Position()


# ---------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------


def test_unknown_option_is_a_config_error(
    factory: ApplierFactory, applier_name: str, store_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        factory(store_path, {"no_such_option": 1}, True)
    message = str(info.value)
    assert "no_such_option" in message
    for valid in VALID_OPTIONS[applier_name]:
        assert valid in message  # lists what would have been accepted


def test_wrong_typed_option_is_a_config_error(
    factory: ApplierFactory, applier_name: str, store_path: Path
) -> None:
    for option, value in WRONG_TYPED_OPTIONS[applier_name]:
        with pytest.raises(ConfigError, match=option):
            factory(store_path, {option: value}, True)


# ---------------------------------------------------------------------------------------------
# the store directory and the store's lifetime
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("applier_name", "other"), [(a, b) for a in APPLIERS for b in APPLIERS if a != b]
)
def test_directory_of_another_applier_is_refused(
    factory: ApplierFactory, store_path: Path, other: str
) -> None:
    made_by_other = open_registered(build_registry(), other, store_path, {}, True)
    made_by_other.apply(puts(1, 5), HISTORY)
    expected = state(made_by_other)
    made_by_other.close()

    with pytest.raises(StoreError, match="another applier"):
        factory(store_path, {}, True)
    # and the refusal left the other store untouched
    reopened = open_registered(build_registry(), other, store_path, {}, True)
    try:
        assert state(reopened) == expected
    finally:
        reopened.close()


def test_closed_store_raises_store_error(factory: ApplierFactory, store_path: Path) -> None:
    applier = factory(store_path, {}, True)
    applier.apply(puts(1, 3), HISTORY)
    applier.close()
    for call in (
        applier.position,
        lambda: applier.get(b"key000001"),
        lambda: applier.apply(puts(4, 1), HISTORY),
        lambda: applier.snapshot().__enter__(),
    ):
        with pytest.raises(StoreError):
            call()


MIXED_KEYS = 500


def mixed_entry(seq: int) -> Entry:
    """Entry `seq` of a workload of every op over MIXED_KEYS keys (readers replay the rule)."""
    key = f"k{seq % MIXED_KEYS}".encode()
    if seq % 7 == 0:
        return Entry(seq, Op.DELETE, key, b"")
    op = Op.MERGE if seq % 11 == 0 else Op.PUT
    return Entry(seq, op, key, f"v{seq}:".encode() * (1 + seq % 5))


def expected_after(sequence: int) -> dict[bytes, bytes]:
    data: dict[bytes, bytes] = {}
    for seq in range(1, sequence + 1):
        entry = mixed_entry(seq)
        if entry.op == Op.DELETE:
            data.pop(entry.key, None)
        else:
            data[entry.key] = entry.value
    return data


def test_reads_and_snapshots_from_other_threads_while_applying(store: Applier) -> None:
    """A node applies in one worker thread and serves gets and digests from others."""
    batches, batch_size = 60, 50
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for b in range(batches):
                first = b * batch_size + 1
                store.apply([mixed_entry(s) for s in range(first, first + batch_size)], HISTORY)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                position, items = state(store)
                # every snapshot is a whole number of batches, with exactly their data
                assert position.sequence % batch_size == 0
                assert dict(items) == expected_after(position.sequence)
                store.get(b"k1")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not errors, errors
    assert store.position() == Position(batches * batch_size, HISTORY, batches * batch_size)
    assert dict(state(store)[1]) == expected_after(batches * batch_size)


# ---------------------------------------------------------------------------------------------
# durability
# ---------------------------------------------------------------------------------------------


def test_non_durable_store_after_sync_reopens_with_everything(
    factory: ApplierFactory, store_path: Path
) -> None:
    applier = factory(store_path, {}, False)
    for first in range(1, 1001, 100):
        applier.apply(puts(first, 100), HISTORY)
    applier.apply([delete(1001, b"key000007")], HISTORY)
    applier.sync()
    expected = state(applier)
    applier.close()

    reopened = factory(store_path, {}, False)
    try:
        assert state(reopened) == expected
        assert reopened.position() == Position(1001, HISTORY, 1001)
        assert reopened.get(b"key000007") is None
    finally:
        reopened.close()


# ---------------------------------------------------------------------------------------------
# damaged files: one error type, reported once
# ---------------------------------------------------------------------------------------------


def test_damaged_files_are_store_damaged_and_reported_once(
    factory: ApplierFactory, applier_name: str, store_path: Path
) -> None:
    store = factory(store_path, {}, True)
    store.apply(puts(1, 5000), HISTORY)
    store.close()
    if applier_name == "leveldb":
        factory(store_path, {}, True).close()  # its log becomes a table (.ldb)
        assert damage_leveldb(store_path) > 0
        # LevelDB finds a damaged table as it opens
        with pytest.raises(StoreDamaged, match=re.escape(f"the leveldb store at {store_path}")):
            factory(store_path, {}, True)
        return
    assert {"lmdb": damage_lmdb, "sqlite": damage_sqlite}[applier_name](store_path) > 0
    store = factory(store_path, {}, True)
    seen: list[StoreDamaged] = []
    store.damage_listener = seen.append
    try:
        assert store.damage is None  # the metadata is intact: it opens
        with pytest.raises(StoreDamaged, match=re.escape(
                f"the {applier_name} store at {store_path} is damaged (reading a snapshot")):
            digest(store)
        with pytest.raises(StoreDamaged, match=re.escape("damaged (applying entries 5001")):
            store.apply(puts(5001, 10), HISTORY)
        assert seen == [store.damage] and store.damage is not None  # reported once
        assert store.position().sequence == 5000  # nothing of the failed batch applied
    finally:
        store.close()


def test_a_full_store_is_not_damaged(factory: ApplierFactory, applier_name: str,
                                     store_path: Path) -> None:
    if applier_name != "lmdb":
        pytest.skip("only LMDB has a size cap to fill")
    store = factory(store_path, {"map_size": 1 << 20}, True)
    try:
        with pytest.raises(StoreError, match="map is full") as info:
            store.apply([put(1, b"big", b"x" * (4 << 20))], HISTORY)
        assert not isinstance(info.value, StoreDamaged) and store.damage is None
    finally:
        store.close()
