"""A replica whose store files get damaged (hardening issue item 5: flipped bytes in an LMDB
`data.mdb`; here also a LevelDB table and an SQLite file), answered by `[replica] on_damage`.

Real node processes and real store files: the replica replicates, is stopped, its store
damaged on disk (damage_files.py), and started again. "stop": ERROR naming the store and
what to do, and its acknowledged position never passes what its store durably holds.
"rebootstrap": the damaged store is moved aside (kept), a snapshot installed, and the
replica ends equal to its primary. A damaged primary store refuses to start, naming it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from damage_files import (
    damage_leveldb,
    damage_lmdb,
    damage_lmdb_everywhere,
    damage_sqlite,
    damage_sqlite_header,
)
from helpers import assert_same_digest, cli, load, wait_caught_up
from kevo_repl_tools.launcher import NodeProcess, wait_until

from kevo_repl.errors import KevoReplError
from kevo_repl.plugin.manager import build_registry
from kevo_repl.storage.position import Position, decode_position

pytestmark = pytest.mark.crash

ENTRIES = 20_000
MORE = 1_000
WAIT_S = 60.0

DAMAGE: dict[str, Callable[[Path], int]] = {
    "lmdb": damage_lmdb, "leveldb": damage_leveldb, "sqlite": damage_sqlite,
}
#: the file each engine's damage lands in (the damaged copy must keep it byte for byte)
DAMAGED_FILES = {"lmdb": "data.mdb", "leveldb": "*.ldb", "sqlite": "*.sqlite"}


def _spec(engine: str) -> Any:
    return build_registry().get("applier", engine)


def _fingerprint(store: Path, engine: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.glob(DAMAGED_FILES[engine]))}


def _durable_position(store: Path, engine: str) -> Position:
    """What the (stopped) replica's store durably holds: its metadata blob, read directly."""
    eng = _spec(engine).open(store, {}, True)
    try:
        return decode_position(eng.read_meta(), engine)
    finally:
        eng.close()


def _acked(primary: NodeProcess, replica_id: str) -> int:
    for slot in primary.status()["replicas"]:
        if slot["replica_id"] == replica_id:
            return int(slot["acked_sequence"])
    return 0


@pytest.fixture
def nodes(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[NodeProcess, NodeProcess, str]]:
    """A primary and a replica r1 of `engine` with `[replica] on_damage = policy`."""
    engine, policy = request.param
    config = tmp_path / "replica.toml"
    config.write_text(f'[replica]\non_damage = "{policy}"\n')
    primary = NodeProcess("primary", tmp_path / "primary", applier="lmdb")
    replica = NodeProcess("replica", tmp_path / "replica", applier=engine, primary="",
                          replica_id="r1", config=config)
    try:
        yield primary, replica, policy
    finally:
        replica.kill()
        primary.kill()


def _replicate_then_damage(primary: NodeProcess, replica: NodeProcess, engine: str) -> Path:
    """ENTRIES replicated and acknowledged; the replica stopped; its store damaged."""
    primary.start()
    replica.primary = primary.address
    replica.start()
    load(primary.address, ENTRIES)
    wait_caught_up(primary, replica, timeout=WAIT_S)
    wait_until(lambda: _acked(primary, "r1") == ENTRIES, WAIT_S, "the ack of every entry")
    assert replica.terminate() == 0
    store = replica.data_dir / "store"
    if engine == "leveldb":
        _spec(engine).open(store, {}, True).close()  # its log becomes a table (.ldb)
    assert DAMAGE[engine](store) > 0
    return store


CASES = [(e, p) for e in ("lmdb", "leveldb", "sqlite") for p in ("stop", "rebootstrap")]


@pytest.mark.parametrize("nodes", CASES, ids=[f"{e}-{p}" for e, p in CASES], indirect=True)
def test_damaged_replica_store(nodes: tuple[NodeProcess, NodeProcess, str]) -> None:
    primary, replica, policy = nodes
    engine = replica.applier
    assert engine is not None
    store = _replicate_then_damage(primary, replica, engine)
    damaged = _fingerprint(store, engine)
    assert damaged

    if policy == "stop" and engine == "leveldb":
        # LevelDB finds this damage as it opens: the start is refused, disk unchanged
        with pytest.raises(KevoReplError, match="did not start"):
            replica.start(timeout=WAIT_S)
        out = replica.stderr_file.read_text()
        assert f"the leveldb store at {store} is damaged" in out, out
        assert "Corruption" in out and 'on_damage = "rebootstrap"' in out, out
        assert "Traceback" not in out, out
        assert _fingerprint(store, engine) == damaged
        assert _acked(primary, "r1") == ENTRIES
        return

    replica.start(timeout=WAIT_S)
    load(primary.address, MORE, start=ENTRIES)  # applying them meets the damage

    if policy == "stop":
        _assert_stopped(primary, replica, store, engine, damaged)
    else:
        _assert_reinstalled(primary, replica, store, engine, damaged)


def _assert_stopped(primary: NodeProcess, replica: NodeProcess, store: Path, engine: str,
                    damaged: dict[str, str]) -> None:
    wait_until(lambda: replica.status()["state"] == "ERROR", WAIT_S, "the replica's ERROR")
    st = replica.status()
    assert "store damaged" in st["last_error"], st
    assert f"the {engine} store at {store} is damaged" in st["last_error"], st
    assert 'on_damage = "rebootstrap"' in st["last_error"], st
    assert int(st["store_damage_events"]) == 1, st
    stopped_at = int(st["last_applied"])
    assert stopped_at == ENTRIES  # the batch that met the damage applied nothing
    # a digest is never answered from the damaged store
    res = cli("digest", "--target", replica.address)
    assert res.returncode == 3 and "DATA_LOSS" in res.stderr, res.stderr
    # more writes: nothing more is applied or acknowledged
    load(primary.address, MORE, start=ENTRIES + MORE)
    time.sleep(1.0)  # bounded: any ack would arrive within the replica's ack interval
    st = replica.status()
    assert (st["state"], int(st["last_applied"])) == ("ERROR", stopped_at), st
    assert _acked(primary, "r1") <= stopped_at
    replica.kill()
    durable = _durable_position(store, engine)
    assert durable.sequence == stopped_at >= _acked(primary, "r1")
    assert not list(replica.data_dir.glob("store.damaged-*"))  # stop moves nothing
    assert _fingerprint(store, engine) == damaged
    log = replica.log_file.read_text()
    assert "ERROR" in log and "stopped replicating: store damaged" in log


def _assert_reinstalled(primary: NodeProcess, replica: NodeProcess, store: Path, engine: str,
                        damaged: dict[str, str]) -> None:
    head = ENTRIES + MORE

    def reinstalled() -> bool:
        st = replica.status()
        return int(st["bootstraps"]) >= 1 and int(st["last_applied"]) >= head

    wait_until(reinstalled, WAIT_S, "the replica to install a snapshot and catch up")
    wait_caught_up(primary, replica, timeout=WAIT_S)
    st = replica.status()
    assert st["state"] != "ERROR", st
    assert int(st["store_damage_events"]) == 1, st
    assert int(st["applied_entries"]) == int(st["last_applied"])  # exactly once since
    assert_same_digest(primary, replica)
    wait_until(lambda: _acked(primary, "r1") == head, WAIT_S, "the ack of every entry")
    [copy] = replica.data_dir.glob("store.damaged-*")
    assert _fingerprint(copy, engine) == damaged  # the damaged store, kept byte for byte
    log = replica.log_file.read_text()
    assert "WARNING" in log and f"moved it aside to {copy}" in log, log[-3000:]


def test_rebootstrap_refuses_past_max_damaged_copies(tmp_path: Path) -> None:
    primary = NodeProcess("primary", tmp_path / "primary", applier="lmdb")
    config = tmp_path / "replica.toml"
    config.write_text('[replica]\non_damage = "rebootstrap"\nmax_damaged_copies = 2\n')
    replica = NodeProcess("replica", tmp_path / "replica", applier="lmdb", primary="",
                          replica_id="r1", config=config)
    try:
        store = _replicate_then_damage(primary, replica, "lmdb")
        for stamp in ("20260101T000000Z", "20260102T000000Z"):  # two kept already
            (replica.data_dir / f"store.damaged-{stamp}").mkdir()
        damaged = _fingerprint(store, "lmdb")
        replica.start(timeout=WAIT_S)
        load(primary.address, MORE, start=ENTRIES)
        wait_until(lambda: replica.status()["state"] == "ERROR", WAIT_S, "ERROR")
        st = replica.status()
        assert "2 damaged copies are already kept" in st["last_error"], st
        assert "max_damaged_copies = 2" in st["last_error"], st
        assert int(st["last_applied"]) == ENTRIES and _acked(primary, "r1") <= ENTRIES
        replica.kill()
        assert len(list(replica.data_dir.glob("store.damaged-*"))) == 2
        assert _fingerprint(store, "lmdb") == damaged  # not moved, not changed
    finally:
        replica.kill()
        primary.kill()


@pytest.mark.parametrize(
    ("engine", "damage"),
    [("lmdb", damage_lmdb_everywhere), ("sqlite", damage_sqlite_header)],
)
def test_damaged_primary_store_refuses_to_start(
    tmp_path: Path, engine: str, damage: Callable[[Path], int]
) -> None:
    primary = NodeProcess("primary", tmp_path / "primary", applier=engine)
    try:
        primary.start()
        load(primary.address, ENTRIES)
        assert primary.terminate() == 0
        store = primary.data_dir / "store"
        assert damage(store) > 0
        damaged = _fingerprint(store, engine)
        wal = {p.name: p.read_bytes() for p in sorted((primary.data_dir / "wal").iterdir())}
        with pytest.raises(KevoReplError, match="did not start"):
            primary.start(timeout=WAIT_S)
        out = primary.stderr_file.read_text()
        assert f"the {engine} store at {store} is damaged" in out, out
        assert "kevo-repl: error" in out and "Traceback" not in out, out
        assert _fingerprint(store, engine) == damaged
        assert {p.name: p.read_bytes()
                for p in sorted((primary.data_dir / "wal").iterdir())} == wal
    finally:
        primary.kill()


@pytest.mark.parametrize("nodes", [("lmdb", "stop")], ids=["lmdb-stop"], indirect=True)
def test_damage_found_by_a_digest_stops_an_idle_replica(
    nodes: tuple[NodeProcess, NodeProcess, str],
) -> None:
    """The issue's case: nothing applied since the damage, and `digest` meets it. The digest
    is refused (DATA_LOSS naming the store, never a raw engine error) and the replica stops."""
    primary, replica, _ = nodes
    store = _replicate_then_damage(primary, replica, "lmdb")
    replica.start(timeout=WAIT_S)
    wait_until(lambda: replica.status()["state"] == "WAITING_FOR_DATA"
               or replica.status()["connected"], WAIT_S, "the replica to connect")
    res = cli("digest", "--target", replica.address)
    assert res.returncode == 3, res
    assert "DATA_LOSS" in res.stderr and f"the lmdb store at {store} is damaged" in res.stderr
    assert "MDB_CORRUPTED" in res.stderr  # the engine's own words, inside ours
    wait_until(lambda: replica.status()["state"] == "ERROR", WAIT_S, "the replica's ERROR")
    st = replica.status()
    assert "reading a snapshot" in st["last_error"] and "on_damage" in st["last_error"], st
    load(primary.address, MORE, start=ENTRIES)
    time.sleep(1.0)  # bounded: an ack would come within the ack interval
    assert int(replica.status()["last_applied"]) == ENTRIES
    assert _acked(primary, "r1") == ENTRIES
