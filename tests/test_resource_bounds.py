"""Resource exhaustion attacks on a real primary (in-process gRPC on 127.0.0.1:0, a real LMDB
store and WAL): each attack is performed and the bound asserted (hardening item 3)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kevo_repl.config import Config
from kevo_repl.node.server import Node
from kevo_repl.protocol.codec import Op
from kevo_repl.protocol.proto import node_pb2 as npb
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.transport import channel_options

SVC = "/kevo.replication.WALReplicationService/"


def _config(tmp_path: Path) -> Config:
    cfg = Config()
    cfg.node.role = "primary"
    cfg.node.data_dir = str(tmp_path / "primary")
    cfg.node.listen = "127.0.0.1:0"
    cfg.stream.heartbeat_s = 0.2
    return cfg


async def _started(cfg: Config) -> Node:
    node = Node(cfg)
    await node.start()
    return node


async def _write(node: Node, n: int, value: bytes = b"v" * 50, batch: int = 10) -> None:
    assert node.primary is not None
    for first in range(0, n, batch):
        await node.primary.write(
            [(Op.PUT, f"k{i:06d}".encode(), value) for i in range(first, min(n, first + batch))]
        )


def _stream_stub(ch: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable:
    return ch.unary_stream(SVC + "StreamWAL",
                           request_serializer=rpb.WALStreamRequest.SerializeToString,
                           response_deserializer=rpb.WALStreamResponse.FromString)


async def _code(call: grpc.aio.UnaryStreamCall) -> grpc.StatusCode:
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_slot_flood_is_capped_and_a_new_slot_holds_from_its_start(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg.retention.max_slots = 5
    node = await _started(cfg)
    try:
        assert node.primary is not None
        await _write(node, 100)
        async with grpc.aio.insecure_channel(node.address, options=channel_options()) as ch:
            stream = _stream_stub(ch)
            calls = []
            for i in range(5):
                call = stream(rpb.WALStreamRequest(start_sequence=90, protocol_version=1,
                                                   replica_id=f"flood-{i}"))
                await call.initial_metadata()
                calls.append(call)
            # a new slot holds WAL from where its stream started, not from sequence 1
            needs = dict(node.primary.retention.needs())
            assert needs == {f"slot flood-{i}": 90 for i in range(5)}
            # one slot more is refused, whatever the id
            for rid in ("flood-5", "another"):
                code = await _code(stream(rpb.WALStreamRequest(
                    start_sequence=1, protocol_version=1, replica_id=rid)))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            # ids with path parts or of megabytes never make a slot
            for rid in ("a/../../b", "x" * 3_000_000):
                code = await _code(stream(rpb.WALStreamRequest(
                    start_sequence=1, protocol_version=1, replica_id=rid)))
                assert code == grpc.StatusCode.INVALID_ARGUMENT
            for call in calls:
                call.cancel()
        assert len(node.primary.slots.slots) == 5
        node.primary.slots.flush()
        assert (Path(cfg.node.data_dir) / "slots.json").stat().st_size < 4096
    finally:
        await node.stop()


async def test_slots_that_never_acked_expire(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg.retention.unacked_slot_expiry_s = 30.0
    node = await _started(cfg)
    try:
        assert node.primary is not None
        await _write(node, 50)
        primary = node.primary
        primary.slots.get("quiet", 1)
        primary.slots.get("acked", 1)
        primary.slots.ack("acked", 20)
        now = time.time()
        primary.retention.tick(now + 10)
        assert set(primary.slots.slots) == {"quiet", "acked"}  # not yet
        primary.retention.tick(now + 31)
        assert set(primary.slots.slots) == {"acked"}  # only the one that never acked goes
    finally:
        await node.stop()


async def test_concurrent_streams_are_capped(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg.stream.max_streams = 3
    node = await _started(cfg)
    try:
        assert node.primary is not None
        await _write(node, 20)
        async with grpc.aio.insecure_channel(node.address, options=channel_options()) as ch:
            stream = _stream_stub(ch)
            calls = []
            for i in range(3):
                call = stream(rpb.WALStreamRequest(start_sequence=1, protocol_version=1,
                                                   replica_id=f"s{i}"))
                await call.initial_metadata()
                calls.append(call)
            code = await _code(stream(rpb.WALStreamRequest(
                start_sequence=1, protocol_version=1, replica_id="s3")))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            calls[0].cancel()
            await asyncio.sleep(0.3)
            again = stream(rpb.WALStreamRequest(start_sequence=1, protocol_version=1,
                                                replica_id="s3"))
            async for resp in again:  # room again once one stream ended
                if resp.entries:
                    break
            again.cancel()
            for call in calls[1:]:
                call.cancel()
    finally:
        await node.stop()


async def test_unread_writestream_stops_the_primary_reading(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg.stream.max_write_stream_pending = 256
    node = await _started(cfg)
    # mostly refused writes (an unknown ack level): cheap for the primary, and each answer
    # carries an error message, so unread answers pile up fast; every 100th is a real write
    writes, per_batch = 500_000, 500
    consumed = 0

    def request(i: int) -> npb.WriteRequest:
        return npb.WriteRequest(
            mutations=[npb.Mutation(op=npb.PUT, key=b"k%07d" % i, value=b"x")],
            request_id=i, level=npb.ACK_DURABLE if i % 100 == 0 else 7,  # type: ignore[arg-type]
        )

    async def batches() -> AsyncIterator[npb.WriteBatch]:
        nonlocal consumed
        for b in range(writes // per_batch):
            yield npb.WriteBatch(writes=[request(i) for i in range(b * per_batch,
                                                                   (b + 1) * per_batch)])
            consumed = (b + 1) * per_batch

    try:
        assert node.primary is not None
        async with grpc.aio.insecure_channel(node.address, options=channel_options()) as ch:
            call = ch.stream_stream("/kevo.repl.Node/WriteStream",
                                    request_serializer=npb.WriteBatch.SerializeToString,
                                    response_deserializer=npb.WriteResults.FromString)(batches())
            # never read: the primary must stop taking requests
            seen, deadline = -1, time.monotonic() + 60
            while time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                if consumed == seen:
                    break
                seen = consumed
            assert consumed == seen, "the primary never stopped reading"
            print(f"unread WriteStream: the primary stopped after {consumed} of {writes} writes")
            # what it took is what the client's HTTP/2 window holds (about 220k such answers
            # here), not everything the client sent
            assert consumed <= writes - 200_000
            assert node.service.write_stream_pending <= 256
            assert node.service.write_stream_pending_peak <= 256
            # once read, every write is answered, once, in the end
            got: set[int] = set()
            async with asyncio.timeout(120):
                async for results in call:
                    for r in results.results:
                        assert r.request_id not in got
                        got.add(r.request_id)
                        if r.request_id % 100:
                            assert r.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
                            assert "unknown ack level 7" in r.error
                        else:
                            assert not r.error and r.last_sequence > 0
            assert got == set(range(writes))
            assert node.primary.head == writes // 100
            assert node.service.write_stream_pending == 0
    finally:
        await node.stop()


async def test_stalled_snapshot_streams_are_cancelled_and_released(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg.snapshot.hold_s = 1.0
    cfg.snapshot.max_held = 2
    node = await _started(cfg)
    try:
        assert node.primary is not None
        await _write(node, 2_000, value=b"s" * 4096, batch=100)  # about 8 MB
        snapshots = node.primary.retention.snapshots
        async with grpc.aio.insecure_channel(node.address, options=channel_options()) as ch:
            snap = ch.unary_stream(SVC + "Snapshot",
                                   request_serializer=rpb.SnapshotRequest.SerializeToString,
                                   response_deserializer=rpb.SnapshotChunk.FromString)
            stalled = []
            for i in range(2):  # every held snapshot, each read one chunk and then never
                call = snap(rpb.SnapshotRequest(replica_id=f"stall-{i}", max_chunk_bytes=1024))
                await call.read()
                stalled.append(call)
            assert len(snapshots.held) == 2
            tasks = [h.stream_task for h in snapshots.held.values()]
            async with asyncio.timeout(15):
                while snapshots.held:
                    await asyncio.sleep(0.2)
            assert snapshots.stalled == 2
            # their server-side streams were cancelled, so they hold nothing of the store
            await asyncio.sleep(0.2)
            assert all(t is not None and t.done() for t in tasks)
            # a real replica can bootstrap now: the whole snapshot arrives
            keys = 0
            async with asyncio.timeout(60):
                async for chunk in snap(rpb.SnapshotRequest(replica_id="real")):
                    keys += chunk.count
            assert keys == 2_000
            for call in stalled:
                call.cancel()
    finally:
        await node.stop()


def test_damaged_slot_files_are_refused_naming_file_and_field(tmp_path: Path) -> None:
    from kevo_repl.errors import StoreError
    from kevo_repl.primary.slots import SlotTable

    path = tmp_path / "slots.json"
    good = [{"replica_id": "r1", "acked": 5, "last_ack_at": 1.0, "lost": False,
             "lost_at": 0.0, "last_seen_at": 1.0}]
    path.write_text(json.dumps(good))
    assert SlotTable(path).slots["r1"].acked == 5
    cases = {
        json.dumps(good)[:20]: "not JSON",
        json.dumps([{**good[0], "acked": "lots"}]): "'acked'",
        json.dumps([{**good[0], "acked": -1}]): "'acked'",
        json.dumps([{**good[0], "replica_id": "a/../b"}]): "'replica_id'",
        json.dumps([{**good[0], "lost": "no"}]): "'lost'",
        json.dumps([{**good[0], "last_ack_at": "NaN"}]): "'last_ack_at'",
        json.dumps([good[0], good[0]]): "twice",
        json.dumps({"r1": 5}): "a list of slots",
    }
    for text, field in cases.items():
        path.write_text(text)
        with pytest.raises(StoreError) as info:
            SlotTable(path)
        assert str(path) in str(info.value) and field in str(info.value), str(info.value)
