"""Snapshot bootstrap: the Snapshot RPC of a real primary (in-process, 127.0.0.1:0), the
install's crash recovery on real stores, and real replica processes that fall too far behind
and bootstrap — stopped, new, killed with SIGKILL mid-install, cut off mid-snapshot, and
across appliers."""

from __future__ import annotations

import asyncio
import time
import zlib
from pathlib import Path

import grpc
import pytest
from helpers import assert_same_digest, load, wait_caught_up
from kevo_repl_tools.launcher import wait_until
from proxy import FaultProxy

from kevo_repl.config import Config
from kevo_repl.errors import StoreError
from kevo_repl.node.server import Node
from kevo_repl.plugin.manager import build_registry, get_plugin_manager
from kevo_repl.protocol.codec import Op
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.snapshot_chunks import ChunkError, decode_records, encode_records
from kevo_repl.protocol.transport import channel_options
from kevo_repl.replica.bootstrap import BOOTSTRAP_DIR, MARKER, OLD_DIR, recover_install
from kevo_repl.replica.replica import Replica
from kevo_repl.replica.state import State
from kevo_repl.storage.applier import open_registered
from kevo_repl.storage.position import Position
from kevo_repl.storage.store import STORE_DIR, write_file_atomically

SNAPSHOT = "/kevo.replication.WALReplicationService/Snapshot"

#: a primary that keeps little WAL: 256 KiB segments, at most 2 MiB of them
SMALL_WAL = "[wal]\nsegment_bytes = 262144\n[retention]\nmax_retained_bytes = 2097152\n"


def _toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# chunk records
# ---------------------------------------------------------------------------------------------


def test_chunk_records_round_trip_and_reject_damage() -> None:
    pairs = [(b"a", b""), (b"b" * 511, b"x" * 70_000), (b"c", b"3")]
    data = encode_records(pairs)
    assert decode_records(data, 3) == pairs
    assert decode_records(b"", 0) == []
    with pytest.raises(ChunkError):
        decode_records(data, 2)  # bytes left over
    with pytest.raises(ChunkError):
        decode_records(data, 4)  # a record missing
    with pytest.raises(ChunkError):
        decode_records(data[:-1], 3)  # truncated value
    with pytest.raises(ChunkError):
        decode_records(data[:6], 1)  # truncated length


# ---------------------------------------------------------------------------------------------
# the Snapshot RPC of an in-process primary
# ---------------------------------------------------------------------------------------------


def _primary_config(tmp_path: Path, applier: str) -> Config:
    cfg = Config()
    cfg.node.role = "primary"
    cfg.node.data_dir = str(tmp_path / "primary")
    cfg.node.listen = "127.0.0.1:0"
    cfg.applier.name = applier
    cfg.snapshot.hold_s = 0.5
    return cfg


def _key(i: int) -> bytes:
    return f"k{i:06d}".encode()


async def _write(node: Node, first: int, count: int, tag: bytes) -> None:
    assert node.primary is not None
    for start in range(first, first + count, 100):
        end = min(first + count, start + 100)
        await node.primary.write([(Op.PUT, _key(i), tag + b"%d" % i) for i in range(start, end)])


async def test_snapshot_rpc_is_consistent_while_writes_go_on_and_resumes(
    tmp_path: Path, applier: str
) -> None:
    node = Node(_primary_config(tmp_path, applier))
    await node.start()
    try:
        await _write(node, 0, 3000, b"v")
        assert node.primary is not None
        async with grpc.aio.insecure_channel(node.address, options=channel_options()) as ch:
            snapshot = ch.unary_stream(
                SNAPSHOT,
                request_serializer=rpb.SnapshotRequest.SerializeToString,
                response_deserializer=rpb.SnapshotChunk.FromString,
            )
            chunks: list[rpb.SnapshotChunk] = []
            call = snapshot(rpb.SnapshotRequest(replica_id="t1", max_chunk_bytes=1024))
            async for chunk in call:
                chunks.append(chunk)
                if len(chunks) == 1:
                    # the primary takes writes while the snapshot is held and streamed:
                    # overwrites, new keys and deletes the snapshot must not show
                    await _write(node, 1000, 3000, b"new")
                    await node.primary.write([(Op.DELETE, _key(5), b"")])
                if len(chunks) == 10:
                    break
            call.cancel()

            # resume where the first stream stopped: the next chunk, after the last key
            last_key = decode_records(chunks[-1].data, chunks[-1].count)[-1][0]
            resumed = snapshot(rpb.SnapshotRequest(
                replica_id="t1", snapshot_id=chunks[0].snapshot_id, next_index=10,
                after_key=last_key, max_chunk_bytes=1024,
            ))
            chunks += [chunk async for chunk in resumed]

            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in snapshot(rpb.SnapshotRequest(snapshot_id="no-such-snapshot")):
                    pass
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert {(c.snapshot_id, c.sequence, c.history_id) for c in chunks} == {
            (chunks[0].snapshot_id, 3000, node.primary.history_id)
        }
        assert chunks[-1].last and not any(c.last for c in chunks[:-1])
        assert all(zlib.crc32(c.data) == c.checksum for c in chunks)
        assert all(len(c.data) < 1024 + 64 for c in chunks)  # bounded: one record past 1 KiB
        pairs = [kv for c in chunks for kv in decode_records(c.data, c.count)]
        assert pairs == [(_key(i), b"v%d" % i) for i in range(3000)]  # the store at 3000
        assert chunks[0].total_keys == 3000
        assert chunks[0].total_bytes == sum(8 + len(k) + len(v) for k, v in pairs)
        assert node.primary.head == 6001  # the writes went on meanwhile
        # an unused snapshot is released after [snapshot] hold_s
        async with asyncio.timeout(30):
            while node.primary.retention.snapshots.held:
                await asyncio.sleep(0.05)
    finally:
        await node.stop()


async def test_snapshot_of_an_empty_store_is_one_empty_last_chunk(tmp_path: Path) -> None:
    node = Node(_primary_config(tmp_path, "lmdb"))
    await node.start()
    try:
        async with grpc.aio.insecure_channel(node.address, options=channel_options()) as ch:
            snapshot = ch.unary_stream(
                SNAPSHOT,
                request_serializer=rpb.SnapshotRequest.SerializeToString,
                response_deserializer=rpb.SnapshotChunk.FromString,
            )
            chunks = [c async for c in snapshot(rpb.SnapshotRequest(replica_id="t"))]
        assert len(chunks) == 1
        assert chunks[0].last and chunks[0].count == 0 and chunks[0].sequence == 0
    finally:
        await node.stop()


# ---------------------------------------------------------------------------------------------
# a real replica (in-process) against a scripted primary that misbehaves on purpose
# ---------------------------------------------------------------------------------------------


class ScriptedSnapshotPrimary:
    """Refuses every stream below `sequence` with OUT_OF_RANGE; serves a two-chunk snapshot
    whose second chunk is damaged in the first attempt (or no Snapshot RPC at all)."""

    def __init__(self, *, snapshots: bool = True) -> None:
        self.sequence = 50
        self.requests: list[rpb.SnapshotRequest] = []
        pairs = [(_key(i), b"%d" % i) for i in range(20)]
        self.parts = [encode_records(pairs[:10]), encode_records(pairs[10:])]
        handlers = {
            "StreamWAL": grpc.unary_stream_rpc_method_handler(
                self.stream, request_deserializer=rpb.WALStreamRequest.FromString,
                response_serializer=rpb.WALStreamResponse.SerializeToString),
        }
        if snapshots:
            handlers["Snapshot"] = grpc.unary_stream_rpc_method_handler(
                self.snapshot, request_deserializer=rpb.SnapshotRequest.FromString,
                response_serializer=rpb.SnapshotChunk.SerializeToString)
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "kevo.replication.WALReplicationService", handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def stream(self, request, context):
        if request.start_sequence <= self.sequence:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, "not retained")
        while True:
            yield rpb.WALStreamResponse(head_sequence=self.sequence, history_id="h-scripted")
            await asyncio.sleep(0.05)

    def _chunk(self, index: int, damaged: bool) -> rpb.SnapshotChunk:
        data = self.parts[index]
        return rpb.SnapshotChunk(
            snapshot_id="s1", sequence=self.sequence, history_id="h-scripted", index=index,
            data=data, checksum=zlib.crc32(data) ^ (1 if damaged else 0), count=10,
            last=index == 1, total_keys=20, total_bytes=sum(map(len, self.parts)),
        )

    async def snapshot(self, request, context):
        self.requests.append(request)
        if len(self.requests) == 1:
            yield self._chunk(0, False)
            yield self._chunk(1, True)  # damaged on the way
        else:
            yield self._chunk(request.next_index, False)


def _in_process_replica(tmp_path: Path, port: int) -> Replica:
    cfg = Config()
    cfg.node.role = "replica"
    cfg.node.data_dir = str(tmp_path / "replica")
    cfg.replica.primary = f"127.0.0.1:{port}"
    cfg.replica.backoff_initial_s = 0.01
    pm = get_plugin_manager()
    return Replica(cfg, build_registry(pm), pm)


async def _run_until(replica: Replica, done, timeout: float = 20) -> None:
    task = asyncio.create_task(replica.run())
    try:
        async with asyncio.timeout(timeout):
            while not done() and not task.done():
                await asyncio.sleep(0.01)
    finally:
        await replica.stop()
        await asyncio.wait_for(task, 10)


async def test_damaged_chunk_is_not_loaded_and_the_snapshot_resumes(tmp_path: Path) -> None:
    primary = ScriptedSnapshotPrimary()
    await primary.server.start()
    replica = _in_process_replica(tmp_path, primary.port)
    try:
        await _run_until(replica, lambda: replica.position.sequence == 50)
        assert [(r.snapshot_id, r.next_index) for r in primary.requests] == [("", 0), ("s1", 1)]
        assert primary.requests[1].after_key == _key(9)  # the last key loaded
        assert replica.position == Position(50, "h-scripted", 50)
        assert replica.store.get(_key(19)) == b"19" and replica.store.get(_key(20)) is None
        assert replica.bootstrap.status()["bootstrap_chunks"] == 2
        states = [t.new for t in replica.sm.history]
        assert State.BOOTSTRAPPING in states
        # every attempt ends in CONNECTING (installed) or ERROR (failed, to be resumed)
        after = [states[i + 1] for i, st in enumerate(states[:-1]) if st is State.BOOTSTRAPPING]
        assert after == [State.ERROR, State.CONNECTING]
        assert replica.fatal is None
    finally:
        replica.bootstrap.close()
        replica.close()
        await primary.server.stop(None)


async def test_primary_without_snapshots_is_a_clear_fatal_error(tmp_path: Path) -> None:
    primary = ScriptedSnapshotPrimary(snapshots=False)
    await primary.server.start()
    replica = _in_process_replica(tmp_path, primary.port)
    try:
        await _run_until(replica, lambda: replica.fatal is not None)
        assert "cannot send a snapshot" in (replica.fatal or "")
        assert "UNIMPLEMENTED" in (replica.fatal or "")
        assert replica.sm.state is State.ERROR and replica.position.sequence == 0
    finally:
        replica.bootstrap.close()
        replica.close()
        await primary.server.stop(None)


# ---------------------------------------------------------------------------------------------
# recovery of an install cut short, on real stores
# ---------------------------------------------------------------------------------------------


def _store(applier: str, path: Path, items: int, position: int | None) -> None:
    """A real store at `path` with `items` keys; with `position`, finished as an install."""
    store = open_registered(build_registry(), applier, path, {}, False)
    try:
        store.load([(_key(i), b"%d" % i) for i in range(items)])
        if position is not None:
            store.set_position(Position(position, "h", position))
        store.sync()
    finally:
        store.close()


def _open(applier: str, path: Path) -> tuple[Position, int]:
    store = open_registered(build_registry(), applier, path, {}, True)
    try:
        with store.snapshot() as snap:
            return snap.position, sum(1 for _ in snap.items())
    finally:
        store.close()


LIVE = (Position(7, "h", 7), 7)  # the old, live store: 7 keys at position 7
NEW = (Position(500, "h", 500), 500)  # the installed snapshot: 500 keys at 500

# Each state a crash can leave, and what the next start-up must make of it:
# (live store, half-built or complete install, old store, completion marker) -> live store
PHASES = {
    "loading": ("store", "partial", None, False, LIVE),
    "loaded-not-committed": ("store", "complete", None, False, LIVE),
    "committed": ("store", "complete", None, True, NEW),
    "live-moved-aside": (None, "complete", "store", True, NEW),
    "switched": ("new", None, "store", True, NEW),
    "old-half-deleted": ("new", None, "partial-old", True, NEW),
    "marker-removed": ("new", None, "store", False, NEW),
}


@pytest.mark.parametrize("phase", PHASES.keys())
def test_recover_install_finishes_or_discards(tmp_path: Path, applier: str, phase: str) -> None:
    live, install, old, marker, expected = PHASES[phase]
    data = tmp_path / "data"
    data.mkdir()
    kinds = {
        "store": (7, 7), "new": (500, 500), "partial": (300, None), "complete": (500, 500),
        "partial-old": (3, None),
    }
    for name, kind in ((STORE_DIR, live), (BOOTSTRAP_DIR, install), (OLD_DIR, old)):
        if kind is not None:
            _store(applier, data / name, *kinds[kind])
    if marker:
        write_file_atomically(
            data / MARKER, b'{"sequence": 500, "history_id": "h", "applied_entries": 500}'
        )
    installed = recover_install(data)
    assert installed == (NEW[0] if marker else None)
    assert sorted(p.name for p in data.iterdir()) == [STORE_DIR]
    assert _open(applier, data / STORE_DIR) == expected
    assert recover_install(data) is None  # and a second start-up finds nothing to do


def test_recover_install_refuses_an_unreadable_marker(tmp_path: Path) -> None:
    (tmp_path / MARKER).write_text("{")
    with pytest.raises(StoreError, match="unreadable"):
        recover_install(tmp_path)


# ---------------------------------------------------------------------------------------------
# replicas that fall too far behind (real processes)
# ---------------------------------------------------------------------------------------------


def _slot(primary, replica_id: str = "r1") -> dict:
    return next(s for s in primary.status()["replicas"] if s["replica_id"] == replica_id)


def test_stopped_replica_catches_up_by_snapshot_200k(
    cluster, tmp_path: Path, record_property
) -> None:
    primary = cluster.primary(config=_toml(tmp_path / "p.toml", SMALL_WAL))
    replica = cluster.replica(primary)
    load(primary.address, 10_000)
    wait_caught_up(primary, replica)
    replica.kill()

    load(primary.address, 200_000, start=10_000)
    st = primary.status()
    assert st["first_sequence"] > 10_001, "the cap should have pruned what r1 needed"
    assert st["wal_bytes"] <= 2 * 1024**2
    assert _slot(primary)["slot_state"] == "lost" and st["lost_slots"] == 1

    started = time.monotonic()
    replica.start()
    wait_caught_up(primary, replica, timeout=300)
    elapsed = time.monotonic() - started
    record_property("bootstrap_and_catch_up_s", round(elapsed, 3))

    digest = assert_same_digest(primary, replica)
    assert digest["sequence"] == 210_000 and digest["keys"] == 210_000
    st = replica.status()
    assert st["bootstraps"] == 1 and st["bootstrap_state"] == "INSTALLED"
    assert st["bootstrap_keys"] == st["bootstrap_total_keys"] == 210_000
    assert st["bootstrap_percent"] == 100.0
    # applied_entries is set to the snapshot's sequence, so exactly-once stays checkable
    assert st["applied_entries"] == st["last_applied"] == 210_000
    wait_until(lambda: _slot(primary)["slot_state"] == "active", 30, "r1's slot to hold again")
    assert not (replica.data_dir / BOOTSTRAP_DIR).exists()
    assert not (replica.data_dir / OLD_DIR).exists()

    # and from there it streams as usual
    load(primary.address, 1_000, start=210_000)
    wait_caught_up(primary, replica)
    assert_same_digest(primary, replica)
    assert replica.status()["applied_entries"] == 211_000


def test_new_empty_replica_joins_a_pruned_primary(cluster, tmp_path: Path) -> None:
    # r1 keeps up, so its slot lets the primary prune everything it has acknowledged
    primary = cluster.primary(config=_toml(tmp_path / "p.toml", "[wal]\nsegment_bytes = 65536\n"))
    r1 = cluster.replica(primary, name="r1", replica_id="r1")
    load(primary.address, 20_000)
    wait_caught_up(primary, r1)
    wait_until(lambda: primary.status()["first_sequence"] > 1, 30, "the primary to prune")

    r2 = cluster.replica(primary, name="r2", replica_id="r2")
    wait_caught_up(primary, r1, r2)
    assert r2.status()["bootstraps"] == 1
    digest = assert_same_digest(primary, r1, r2)
    assert digest["keys"] == 20_000
    assert r2.status()["applied_entries"] == 20_000
    assert r1.status()["bootstraps"] == 0  # r1 never fell behind


@pytest.mark.crash
def test_sigkill_mid_install_then_restart_converges(cluster, tmp_path: Path) -> None:
    primary = cluster.primary(config=_toml(tmp_path / "p.toml", SMALL_WAL))
    # 1 KiB chunks: thousands of them, so that the kill lands inside the install
    slow = _toml(tmp_path / "r.toml", "[replica]\nsnapshot_chunk_bytes = 1024\n")
    replica = cluster.replica(primary, config=slow)
    load(primary.address, 1_000)
    wait_caught_up(primary, replica)
    replica.kill()
    load(primary.address, 60_000, start=1_000)

    replica.start()

    def installing() -> bool:
        st = replica.status()
        return st["bootstrap_state"] == "RECEIVING" and st["bootstrap_chunks"] >= 20

    wait_until(installing, 60, "the install to be under way", interval=0.01)
    replica.kill()
    # killed mid-install: the half-built store is there, the live one untouched
    assert (replica.data_dir / BOOTSTRAP_DIR).exists()
    assert not (replica.data_dir / MARKER).exists()

    replica.start()
    st = replica.status()
    assert st["last_applied"] in (1_000, 61_000)  # the old store, or the new one if finished
    wait_caught_up(primary, replica, timeout=120)
    digest = assert_same_digest(primary, replica)
    assert digest["keys"] == 61_000
    assert replica.status()["applied_entries"] == 61_000
    assert "did not complete" in replica.log_file.read_text()


def test_cut_connection_resumes_the_snapshot(cluster, tmp_path: Path) -> None:
    primary = cluster.primary(config=_toml(tmp_path / "p.toml", SMALL_WAL))
    proxy = FaultProxy(primary.address)
    proxy.start()
    try:
        slow = _toml(
            tmp_path / "r.toml",
            "[replica]\nsnapshot_chunk_bytes = 1024\nbackoff_max_s = 0.2\n",
        )
        replica = cluster.replica(primary, config=slow)
        load(primary.address, 1_000)
        wait_caught_up(primary, replica)
        replica.kill()
        load(primary.address, 60_000, start=1_000)
        replica.primary = proxy.address
        replica.start()
        wait_until(
            lambda: replica.status()["bootstrap_chunks"] >= 20, 60, "the snapshot to stream",
            interval=0.01,
        )
        snapshot_id = replica.status()["bootstrap_snapshot_id"]
        proxy.cut()
        wait_until(lambda: replica.status()["bootstrap_state"] == "FAILED", 30, "the cut")
        chunks = replica.status()["bootstrap_chunks"]
        proxy.resume()
        wait_caught_up(primary, replica, timeout=120)
        st = replica.status()
        assert st["bootstraps"] == 1
        assert st["bootstrap_chunks"] > chunks  # it went on from where it was cut
        assert f"resuming {snapshot_id}" in replica.log_file.read_text()
        assert_same_digest(primary, replica)
        assert st["applied_entries"] == 61_000
    finally:
        proxy.close()


@pytest.mark.parametrize(
    ("applier", "replica_applier"),
    [("lmdb", "leveldb"), ("leveldb", "lmdb"), ("lmdb", "sqlite"), ("sqlite", "leveldb")],
)
def test_bootstrap_across_appliers(cluster, tmp_path: Path, replica_applier: str) -> None:
    primary = cluster.primary(config=_toml(tmp_path / "p.toml", SMALL_WAL))
    replica = cluster.replica(primary, applier=replica_applier)
    load(primary.address, 1_000)
    wait_caught_up(primary, replica)
    replica.kill()
    load(primary.address, 40_000, start=1_000)
    with primary.client() as c:  # deletes travel through the snapshot too
        for i in range(0, 41_000, 1_000):
            c.delete(f"key{i:013d}".encode())
    replica.start()
    wait_caught_up(primary, replica, timeout=120)
    digest = assert_same_digest(primary, replica)
    assert digest["keys"] == 41_000 - 41
    st = replica.status()
    assert st["bootstraps"] == 1 and st["applier"] == replica_applier
    assert st["applied_entries"] == st["last_applied"]


def test_bootstrap_disabled_keeps_out_of_range_fatal(cluster, tmp_path: Path) -> None:
    primary = cluster.primary(config=_toml(tmp_path / "p.toml", SMALL_WAL))
    load(primary.address, 40_000)
    assert primary.status()["first_sequence"] > 1
    off = _toml(tmp_path / "r.toml", "[replica]\nbootstrap = false\n")
    replica = cluster.replica(primary, config=off)
    wait_until(lambda: "OUT_OF_RANGE" in replica.status()["last_error"], 30, "the refusal")
    st = replica.status()
    assert st["state"] == "ERROR" and st["last_applied"] == 0 and st["bootstraps"] == 0
