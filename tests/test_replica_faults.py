"""A real replica (in-process, real LMDB store) against a scripted primary: a real gRPC server
on 127.0.0.1:0 that misbehaves on purpose — gaps, duplicates, corrupt payloads, KevoDB-style
checksum 0 — and honours NegativeAcknowledge the way a primary must."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from kevo_repl.config import Config
from kevo_repl.plugin.manager import build_registry, get_plugin_manager
from kevo_repl.protocol.codec import Op, checksum, encode
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.replica.replica import Replica
from kevo_repl.replica.state import State

HISTORY = "h-test"


def entry(seq: int, *, crc: bool = True, corrupt: bool = False) -> rpb.WALEntry:
    payload = encode(seq, Op.PUT, f"k{seq}".encode(), f"v{seq}".encode())
    crc_value = checksum(payload) if crc else 0
    if corrupt:
        payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])
    return rpb.WALEntry(sequence_number=seq, payload=payload, checksum=crc_value)


class ScriptedPrimary:
    """Sends `script(start)` responses for each stream; a nack re-streams from its sequence."""

    def __init__(self, script: Callable[[int, int], list[rpb.WALStreamResponse]]) -> None:
        self.script = script
        self.nacks: list[int] = []
        self.acks: list[int] = []
        self.starts: list[int] = []
        self._rewind: asyncio.Queue[int] = asyncio.Queue()
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "kevo.replication.WALReplicationService",
            {
                "StreamWAL": grpc.unary_stream_rpc_method_handler(
                    self.stream, request_deserializer=rpb.WALStreamRequest.FromString,
                    response_serializer=rpb.WALStreamResponse.SerializeToString),
                "Acknowledge": grpc.unary_unary_rpc_method_handler(
                    self.ack, request_deserializer=rpb.Ack.FromString,
                    response_serializer=rpb.AckResponse.SerializeToString),
                "NegativeAcknowledge": grpc.unary_unary_rpc_method_handler(
                    self.nack, request_deserializer=rpb.Nack.FromString,
                    response_serializer=rpb.NackResponse.SerializeToString),
            }),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def stream(
        self, request: rpb.WALStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpb.WALStreamResponse]:
        await context.send_initial_metadata((("session-id", uuid.uuid4().hex),))
        self.starts.append(request.start_sequence)
        round_no = 0
        start = request.start_sequence
        while True:
            for i, resp in enumerate(self.script(start, round_no)):
                if i == 0:
                    resp.history_id = HISTORY
                yield resp
            round_no += 1
            start = await self._rewind.get()  # idle until a nack, like a caught-up primary

    async def ack(self, request: rpb.Ack, context) -> rpb.AckResponse:
        self.acks.append(request.acknowledged_up_to)
        return rpb.AckResponse(success=True)

    async def nack(self, request: rpb.Nack, context) -> rpb.NackResponse:
        self.nacks.append(request.missing_from_sequence)
        await self._rewind.put(request.missing_from_sequence)
        return rpb.NackResponse(success=True)


def _replica(tmp_path: Path, port: int) -> Replica:
    cfg = Config()
    cfg.node.role = "replica"
    cfg.node.data_dir = str(tmp_path / "replica")
    cfg.replica.primary = f"127.0.0.1:{port}"
    cfg.replica.backoff_initial_s = 0.01
    cfg.replica.max_corrupt_retries = 2
    pm = get_plugin_manager()
    return Replica(cfg, build_registry(pm), pm)


async def _run_until(replica: Replica, done: Callable[[], bool], timeout: float = 20) -> None:
    task = asyncio.create_task(replica.run())
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.01)
    finally:
        await replica.stop()
        await asyncio.wait_for(task, 10)


def _resp(*entries: rpb.WALEntry) -> rpb.WALStreamResponse:
    return rpb.WALStreamResponse(entries=list(entries))


async def test_gap_is_renacked_and_duplicates_skipped(tmp_path: Path) -> None:
    def script(start: int, round_no: int) -> list[rpb.WALStreamResponse]:
        if round_no == 0:
            # 1-5, then 3-5 again (duplicates), then 7-10: a gap at 6
            return [_resp(*[entry(s) for s in range(start, 6)]),
                    _resp(*[entry(s) for s in range(3, 6)]),
                    _resp(*[entry(s) for s in range(7, 11)])]
        return [_resp(*[entry(s) for s in range(start, 11)])]

    primary = ScriptedPrimary(script)
    await primary.server.start()
    replica = _replica(tmp_path, primary.port)
    try:
        await _run_until(replica, lambda: replica.position.sequence >= 10)
        assert replica.position.sequence == 10
        assert replica.position.applied_entries == 10  # each applied once
        assert replica.position.history_id == HISTORY
        assert primary.nacks == [6]
        assert replica.stats.duplicates_skipped >= 3
        assert replica.stats.gaps >= 1
        assert replica.store.get(b"k6") == b"v6"
    finally:
        replica.close()
        await primary.server.stop(None)


async def test_corrupt_payload_is_never_applied_and_rerequested(tmp_path: Path) -> None:
    def script(start: int, round_no: int) -> list[rpb.WALStreamResponse]:
        if round_no == 0:
            return [_resp(*[entry(s, corrupt=(s == 4)) for s in range(start, 8)])]
        return [_resp(*[entry(s) for s in range(start, 8)])]

    primary = ScriptedPrimary(script)
    await primary.server.start()
    replica = _replica(tmp_path, primary.port)
    try:
        await _run_until(replica, lambda: replica.position.sequence >= 7)
        assert primary.nacks == [4]
        assert replica.stats.corrupt_entries == 1
        assert replica.position.applied_entries == 7
        assert replica.store.get(b"k4") == b"v4"
    finally:
        replica.close()
        await primary.server.stop(None)


async def test_repeated_corruption_ends_in_error_naming_the_sequence(tmp_path: Path) -> None:
    def script(start: int, round_no: int) -> list[rpb.WALStreamResponse]:
        return [_resp(*[entry(s, corrupt=(s == 3)) for s in range(start, 6)])]

    primary = ScriptedPrimary(script)
    await primary.server.start()
    replica = _replica(tmp_path, primary.port)
    try:
        await _run_until(replica, lambda: replica.fatal is not None)
        assert replica.sm.state is State.ERROR
        assert "entry 3" in (replica.fatal or "")
        assert replica.position.sequence == 2  # everything before the corrupt entry, nothing after
        assert replica.store.get(b"k3") is None
    finally:
        replica.close()
        await primary.server.stop(None)


async def test_kevodb_style_checksum_zero_is_accepted(tmp_path: Path) -> None:
    def script(start: int, round_no: int) -> list[rpb.WALStreamResponse]:
        return [_resp(*[entry(s, crc=False) for s in range(start, 21)])]

    primary = ScriptedPrimary(script)
    await primary.server.start()
    replica = _replica(tmp_path, primary.port)
    try:
        await _run_until(replica, lambda: replica.position.sequence >= 20
                         and bool(primary.acks) and primary.acks[-1] == 20)
        assert replica.position.applied_entries == 20
        assert primary.acks == sorted(primary.acks)  # acks only move forward
    finally:
        replica.close()
        await primary.server.stop(None)


async def test_resumes_from_stored_position_after_restart(tmp_path: Path) -> None:
    def script(start: int, round_no: int) -> list[rpb.WALStreamResponse]:
        return [_resp(*[entry(s) for s in range(start, 31)])]

    primary = ScriptedPrimary(script)
    await primary.server.start()
    try:
        replica = _replica(tmp_path, primary.port)
        await _run_until(replica, lambda: replica.position.sequence >= 30)
        replica.close()
        replica = _replica(tmp_path, primary.port)
        assert replica.position.sequence == 30
        await _run_until(replica, lambda: len(primary.starts) >= 2)
        replica.close()
        assert primary.starts == [1, 31]
    finally:
        await primary.server.stop(None)


def test_backoff_is_exponential_jittered_and_capped(tmp_path: Path) -> None:
    replica = _replica(tmp_path, 1)
    try:
        cfg = replica.cfg.replica
        cfg.backoff_initial_s, cfg.backoff_max_s = 0.1, 2.0
        for attempt in range(10):
            base = min(2.0, 0.1 * 2**attempt)
            delays = [replica._backoff(attempt) for _ in range(50)]
            assert all(base * 0.5 <= d <= base for d in delays)
            assert len(set(delays)) > 1  # jitter
    finally:
        replica.close()


@pytest.mark.parametrize("code", [grpc.StatusCode.FAILED_PRECONDITION])
async def test_refused_stream_is_fatal_with_the_primarys_reason(tmp_path: Path, code) -> None:
    server = grpc.aio.server()

    async def refuse(request, context):
        await context.abort(code, "replica is ahead of the primary (diverged)")
        yield rpb.WALStreamResponse()  # pragma: no cover

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "kevo.replication.WALReplicationService",
        {"StreamWAL": grpc.unary_stream_rpc_method_handler(
            refuse, request_deserializer=rpb.WALStreamRequest.FromString,
            response_serializer=rpb.WALStreamResponse.SerializeToString)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    replica = _replica(tmp_path, port)
    try:
        await _run_until(replica, lambda: replica.fatal is not None)
        assert "diverged" in (replica.fatal or "") and code.name in (replica.fatal or "")
        assert replica.status()["state"] == "ERROR"
    finally:
        replica.close()
        await server.stop(None)
