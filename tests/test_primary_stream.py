"""The replication service of a real primary (in-process gRPC server on 127.0.0.1:0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kevo_repl.config import Config
from kevo_repl.node.server import Node
from kevo_repl.protocol.codec import Op, decode
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.transport import channel_options

SVC = "/kevo.replication.WALReplicationService/"


def _config(tmp_path: Path) -> Config:
    cfg = Config()
    cfg.node.role = "primary"
    cfg.node.data_dir = str(tmp_path / "primary")
    cfg.node.listen = "127.0.0.1:0"
    cfg.wal.segment_bytes = 4096  # many small segments, so pruning has something to drop
    cfg.stream.heartbeat_s = 0.2
    return cfg


@pytest.fixture
async def primary(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(_config(tmp_path))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def _stubs(channel: grpc.aio.Channel) -> tuple:
    stream = channel.unary_stream(SVC + "StreamWAL",
                                  request_serializer=rpb.WALStreamRequest.SerializeToString,
                                  response_deserializer=rpb.WALStreamResponse.FromString)
    ack = channel.unary_unary(SVC + "Acknowledge", request_serializer=rpb.Ack.SerializeToString,
                              response_deserializer=rpb.AckResponse.FromString)
    nack = channel.unary_unary(SVC + "NegativeAcknowledge",
                               request_serializer=rpb.Nack.SerializeToString,
                               response_deserializer=rpb.NackResponse.FromString)
    return stream, ack, nack


async def _write(node: Node, n: int, batch: int = 10) -> None:
    assert node.primary is not None
    for first in range(0, n, batch):
        await node.primary.write(
            [(Op.PUT, f"k{i:06d}".encode(), b"v" * 50) for i in range(first, min(n, first + batch))]
        )


async def _first_response(stream, request) -> rpb.WALStreamResponse:
    call = stream(request)
    try:
        async for resp in call:
            if resp.entries:
                return resp
        raise AssertionError("stream ended")
    finally:
        call.cancel()


async def test_stream_sends_session_header_entries_and_heartbeats(primary: Node) -> None:
    await _write(primary, 100)
    async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
        stream, ack, _ = _stubs(ch)
        call = stream(rpb.WALStreamRequest(start_sequence=42, protocol_version=1,
                                           replica_id="t1"))
        md = dict(await call.initial_metadata())
        assert md.get("session-id")
        got: list[int] = []
        heartbeat = None
        async for resp in call:
            for e in resp.entries:
                entry = decode(e.payload, e.sequence_number)
                assert entry.key == f"k{e.sequence_number - 1:06d}".encode()
                got.append(e.sequence_number)
            if not resp.entries:
                heartbeat = resp
                break
        assert got == list(range(42, 101))
        assert heartbeat is not None and heartbeat.head_sequence == 100
        assert heartbeat.primary_time_ns > 0
        resp = await ack(rpb.Ack(acknowledged_up_to=100),
                         metadata=(("session-id", md["session-id"]),))
        assert resp.success
        call.cancel()
        # a session's acks are accepted only while its stream lives
        assert primary.primary is not None
        async with asyncio.timeout(10):
            while primary.primary.sessions:
                await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ack(rpb.Ack(acknowledged_up_to=100),
                      metadata=(("session-id", md["session-id"]),))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert primary.primary is not None
    assert primary.primary.slots.slots["t1"].acked == 100


async def test_pruned_start_is_out_of_range(primary: Node) -> None:
    await _write(primary, 2000)
    assert primary.primary is not None
    wal = primary.primary.wal
    freed = wal.prune_before(1500)
    assert freed > 0 and wal.first_sequence > 1
    async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
        stream, _, _ = _stubs(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _first_response(stream, rpb.WALStreamRequest(start_sequence=1))
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "no longer retained" in err.value.details()
        resp = await _first_response(
            stream, rpb.WALStreamRequest(start_sequence=wal.first_sequence)
        )
        assert resp.entries[0].sequence_number == wal.first_sequence


async def test_bad_starts_and_unknown_sessions(primary: Node) -> None:
    await _write(primary, 10)
    async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
        stream, ack, nack = _stubs(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _first_response(stream, rpb.WALStreamRequest(start_sequence=0))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _first_response(stream, rpb.WALStreamRequest(start_sequence=50))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ahead" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _first_response(stream, rpb.WALStreamRequest(start_sequence=5,
                                                                 history_id="other-history"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ack(rpb.Ack(acknowledged_up_to=3), metadata=(("session-id", "nope"),))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await nack(rpb.Nack(missing_from_sequence=3))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # still serving after all that
        resp = await _first_response(stream, rpb.WALStreamRequest(start_sequence=1))
        assert resp.entries[0].sequence_number == 1


async def test_nack_rewinds_the_session(primary: Node) -> None:
    await _write(primary, 30)
    async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
        stream, _, nack = _stubs(ch)
        call = stream(rpb.WALStreamRequest(start_sequence=1))
        sid = dict(await call.initial_metadata())["session-id"]
        seqs: list[int] = []
        async for resp in call:
            seqs += [e.sequence_number for e in resp.entries]
            if seqs and seqs[-1] == 30:
                break
        await nack(rpb.Nack(missing_from_sequence=11), metadata=(("session-id", sid),))
        again: list[int] = []
        async with asyncio.timeout(10):
            async for resp in call:
                again += [e.sequence_number for e in resp.entries]
                if again and again[-1] == 30:
                    break
        call.cancel()
        assert seqs == list(range(1, 31))
        assert again == list(range(11, 31))


async def test_nack_for_a_pruned_sequence_is_out_of_range(primary: Node) -> None:
    await _write(primary, 2000)
    assert primary.primary is not None
    wal = primary.primary.wal
    wal.prune_before(1500)
    async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
        stream, _, nack = _stubs(ch)
        call = stream(rpb.WALStreamRequest(start_sequence=wal.first_sequence))
        sid = dict(await call.initial_metadata())["session-id"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await nack(rpb.Nack(missing_from_sequence=1), metadata=(("session-id", sid),))
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await nack(rpb.Nack(missing_from_sequence=10**9), metadata=(("session-id", sid),))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # the stream is still served
        async with asyncio.timeout(10):
            async for resp in call:
                if resp.entries:
                    assert resp.entries[0].sequence_number == wal.first_sequence
                    break
        call.cancel()
