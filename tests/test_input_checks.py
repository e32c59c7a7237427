"""Inputs that used to get the wrong answer (hardening item 6), against a real primary
(in-process gRPC on 127.0.0.1:0, real LMDB store and WAL) and a real replica."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from test_replica_faults import ScriptedPrimary, _replica, _resp, entry

from kevo_repl.config import Config
from kevo_repl.errors import StoreError
from kevo_repl.node.server import Node
from kevo_repl.protocol import chain as chain_mod
from kevo_repl.protocol.codec import Op, encode
from kevo_repl.protocol.proto import node_pb2 as npb
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.transport import channel_options
from kevo_repl.replica.state import State


def _config(tmp_path: Path) -> Config:
    cfg = Config()
    cfg.node.role = "primary"
    cfg.node.data_dir = str(tmp_path / "primary")
    cfg.node.listen = "127.0.0.1:0"
    return cfg


@pytest.fixture
async def primary(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(_config(tmp_path))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def _put(key: bytes = b"k", **fields: object) -> npb.WriteRequest:
    return npb.WriteRequest(mutations=[npb.Mutation(op=npb.PUT, key=key, value=b"v")],
                            **fields)  # type: ignore[arg-type]


async def _write_code(node: Node, request: npb.WriteRequest) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(node.address, options=channel_options()) as ch:
        write = ch.unary_unary("/kevo.repl.Node/Write",
                               request_serializer=npb.WriteRequest.SerializeToString,
                               response_deserializer=npb.WriteResponse.FromString)
        try:
            await write(request)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("fields,words", [
    ({"level": 7, "wait_for": 1}, "unknown ack level 7"),
    ({"level": 7}, "unknown ack level 7"),
    ({"wait_for": 1, "timeout_s": -5.0}, "timeout_s"),
    ({"wait_for": 1, "timeout_s": float("nan")}, "timeout_s"),
    ({"wait_for": 1, "timeout_s": float("inf")}, "timeout_s"),
    ({"wait_for": 1, "on_timeout": 9}, "unknown on_timeout 9"),
])
async def test_bad_write_options_are_invalid_argument(
    primary: Node, fields: dict[str, object], words: str
) -> None:
    assert primary.primary is not None
    head = primary.primary.head
    code, details = await _write_code(primary, _put(**fields))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details, details
    assert primary.primary.head == head  # nothing was written


async def test_bad_write_options_on_a_writestream_are_answered_per_write(primary: Node) -> None:
    async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
        call = ch.stream_stream("/kevo.repl.Node/WriteStream",
                                request_serializer=npb.WriteBatch.SerializeToString,
                                response_deserializer=npb.WriteResults.FromString)
        batch = npb.WriteBatch(writes=[_put(b"a", request_id=1, level=7),  # type: ignore[arg-type]
                                       _put(b"b", request_id=2)])
        got = {r.request_id: r async for m in call(iter([batch])) for r in m.results}
    assert got[1].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert not got[2].error and got[2].last_sequence == 1


@pytest.mark.parametrize("method", [
    "/kevo.repl.Node/Write", "/kevo.repl.Node/Status",
    "/kevo.replication.WALReplicationService/Acknowledge",
])
async def test_undecodable_unary_request_is_invalid_argument(primary: Node, method: str) -> None:
    async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
        call = ch.unary_unary(method)  # raw bytes in and out
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"\xff\xff\xff\xff")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid" in (info.value.details() or "")


@pytest.mark.parametrize("method", [
    "/kevo.replication.WALReplicationService/StreamWAL",
    "/kevo.replication.WALReplicationService/Snapshot",
])
async def test_undecodable_stream_request_is_invalid_argument(primary: Node, method: str) -> None:
    async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in ch.unary_stream(method)(b"\x0a\xff\xff"):
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_undecodable_writestream_message_is_invalid_argument(primary: Node) -> None:
    async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
        call = ch.stream_stream("/kevo.repl.Node/WriteStream")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call(iter([b"\xff\xff\xff"])):
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _payload(i: int) -> bytes:
    return encode(i, Op.PUT, f"k{i:04d}".encode(), b"v")


async def test_fork_is_found_at_a_sequence_inside_a_record(primary: Node) -> None:
    p = primary.primary
    assert p is not None
    for first in (1, 11):  # two records of ten entries: 1..10 and 11..20
        await p.write([(Op.PUT, f"k{i:04d}".encode(), b"v") for i in range(first, first + 10)])
    for at in (5, 10, 15, 20):  # inside and at the end of either record
        right = chain_mod.over(chain_mod.START, [_payload(i) for i in range(1, at + 1)])
        assert p.chain_at(at) == right
        ok = rpb.WALStreamRequest(start_sequence=at + 1, history_id=p.history_id, chain=right)
        assert p.check_start(ok) is None
        forked = rpb.WALStreamRequest(start_sequence=at + 1, history_id=p.history_id,
                                      chain=right ^ 1)
        problem = p.check_start(forked)
        assert problem is not None and problem[0] == grpc.StatusCode.FAILED_PRECONDITION
        assert "forks" in problem[1]


async def test_replica_last_error_keeps_the_root_cause(tmp_path: Path) -> None:
    def script(start: int, round_no: int) -> list:
        return [_resp(*[entry(s) for s in range(start, 31)])]

    scripted = ScriptedPrimary(script)
    await scripted.server.start()
    replica = _replica(tmp_path, scripted.port)
    real_apply = replica.store.apply_columns
    failures = 0

    def full_disk(*args: object, **kwargs: object) -> object:
        nonlocal failures
        if failures < 3:  # the disk is full for a while, then has room again
            failures += 1
            # what an engine raises for its store's failure (the contract: a StoreError)
            raise StoreError(f"cannot commit: {os.strerror(errno.ENOSPC)}")
        return real_apply(*args, **kwargs)  # type: ignore[arg-type]

    replica.store.apply_columns = full_disk  # type: ignore[method-assign]
    task = asyncio.create_task(replica.run())
    errors: list[str] = []
    try:
        async with asyncio.timeout(20):
            while replica.position.sequence < 30:
                st = replica.status()
                if st["state"] == State.ERROR.value:
                    errors.append(st["last_error"])
                await asyncio.sleep(0.002)
    finally:
        await replica.stop()
        await asyncio.wait_for(task, 10)
        replica.close()
        await scripted.server.stop(None)
    assert errors, "the replica never reported the failure"
    assert all("apply failed" in e and "No space left on device" in e for e in errors), errors
    assert replica.status()["last_error"] == ""  # applying again: the failure is history
