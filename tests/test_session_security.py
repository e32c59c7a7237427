"""Attacks on a real primary's replication service (in-process gRPC server on 127.0.0.1:0):
hijacking a live replica's slot, impossible acknowledgements, invalid replica ids, a client-API
token used for replication, and replica ids bound to client certificates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from kevo_repl.config import Config
from kevo_repl.node.server import Node
from kevo_repl.protocol.codec import Op
from kevo_repl.protocol.proto import node_pb2 as npb
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.transport import channel_options

SVC = "/kevo.replication.WALReplicationService/"
NODE = "/kevo.repl.Node/"


def _config(tmp_path: Path, **server: object) -> Config:
    cfg = Config()
    cfg.node.role = "primary"
    cfg.node.data_dir = str(tmp_path / "primary")
    cfg.node.listen = "127.0.0.1:0"
    cfg.stream.heartbeat_s = 0.2
    for key, value in server.items():
        setattr(cfg.server, key, value)
    return cfg


async def _started(cfg: Config) -> Node:
    node = Node(cfg)
    await node.start()
    return node


@pytest.fixture
async def primary(tmp_path: Path) -> AsyncIterator[Node]:
    node = await _started(_config(tmp_path))
    try:
        yield node
    finally:
        await node.stop()


class Stubs:
    def __init__(self, ch: grpc.aio.Channel) -> None:
        self.stream = ch.unary_stream(
            SVC + "StreamWAL", request_serializer=rpb.WALStreamRequest.SerializeToString,
            response_deserializer=rpb.WALStreamResponse.FromString)
        self.ack = ch.unary_unary(
            SVC + "Acknowledge", request_serializer=rpb.Ack.SerializeToString,
            response_deserializer=rpb.AckResponse.FromString)
        self.nack = ch.unary_unary(
            SVC + "NegativeAcknowledge", request_serializer=rpb.Nack.SerializeToString,
            response_deserializer=rpb.NackResponse.FromString)
        self.snapshot = ch.unary_stream(
            SVC + "Snapshot", request_serializer=rpb.SnapshotRequest.SerializeToString,
            response_deserializer=rpb.SnapshotChunk.FromString)
        self.write = ch.unary_unary(
            NODE + "Write", request_serializer=npb.WriteRequest.SerializeToString,
            response_deserializer=npb.WriteResponse.FromString)


async def _write(node: Node, n: int, value_bytes: int = 50, batch: int = 10) -> None:
    assert node.primary is not None
    for first in range(0, n, batch):
        await node.primary.write(
            [(Op.PUT, f"k{i:06d}".encode(), b"v" * value_bytes)
             for i in range(first, min(n, first + batch))]
        )


async def _read_to(call: Any, last: int) -> list[int]:
    """Sequences of `call` until `last` arrived (bounded in time)."""
    seqs: list[int] = []
    async with asyncio.timeout(20):
        async for resp in call:
            seqs += [e.sequence_number for e in resp.entries]
            if seqs and seqs[-1] >= last:
                return seqs
    raise AssertionError(f"stream ended at {seqs[-1:]}")


async def _code_of(awaitable: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await awaitable
    return err.value.code(), err.value.details() or ""


async def _stream_code(call: Any) -> tuple[grpc.StatusCode, str]:
    async def drain() -> None:
        async with asyncio.timeout(10):
            async for _ in call:
                pass

    return await _code_of(drain())


# -- hijacking a live replica's slot ----------------------------------------------------------


async def test_second_stream_for_a_live_replica_id_is_refused(primary: Node) -> None:
    await _write(primary, 20)
    async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as real_ch, \
            grpc.aio.insecure_channel(primary.address, options=channel_options()) as evil_ch:
        real, evil = Stubs(real_ch), Stubs(evil_ch)
        call = real.stream(rpb.WALStreamRequest(start_sequence=1, replica_id="r1"))
        sid = dict(await call.initial_metadata())["session-id"]
        assert await _read_to(call, 20) == list(range(1, 21))
        assert primary.primary is not None
        real_peer = next(iter(primary.primary.sessions.values())).peer

        code, details = await _stream_code(
            evil.stream(rpb.WALStreamRequest(start_sequence=1, replica_id="r1")))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert "'r1'" in details and real_peer in details

        # the live one goes on: it gets new entries and its acks count
        await _write(primary, 5)
        assert await _read_to(call, 25) == list(range(21, 26))
        reply = await real.ack(rpb.Ack(acknowledged_up_to=25, received_up_to=25),
                               metadata=(("session-id", sid),))
        assert reply.success
        assert primary.primary.slots.slots["r1"].acked == 25
        assert [s.session_id for s in primary.primary.sessions.values()] == [sid]

        # once the old session is dead, a new stream takes over the slot
        call.cancel()
        async with asyncio.timeout(10):
            while primary.primary.live_session("r1") is not None:
                await asyncio.sleep(0.01)
        taken = evil.stream(rpb.WALStreamRequest(start_sequence=26, replica_id="r1"))
        await _write(primary, 1)
        assert await _read_to(taken, 26) == [26]
        taken.cancel()


# -- impossible acknowledgements --------------------------------------------------------------


async def test_acks_beyond_what_the_session_was_sent_are_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg.stream.max_batch_bytes = 64 * 1024  # one response holds ~60 of the entries below
    node = await _started(cfg)
    try:
        await _write(node, 20, value_bytes=1000)
        # no window growth: a replica that stops reading stops the primary's sending
        opts = [*channel_options(), ("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(node.address, options=opts) as ch:
            stubs = Stubs(ch)
            call = stubs.stream(rpb.WALStreamRequest(start_sequence=1, replica_id="r1"))
            sid = dict(await call.initial_metadata())["session-id"]
            md = (("session-id", sid),)
            assert await _read_to(call, 20) == list(range(1, 21))
            # the replica stops reading; the primary's log grows far past what it can send
            await _write(node, 2_000, value_bytes=1000, batch=20)
            assert node.primary is not None
            [session] = node.primary.sessions.values()
            async with asyncio.timeout(10):
                while session.sent < 60:  # the primary sends what flow control lets through
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            sent, head = session.sent, node.primary.head
            assert sent < head - 500, (sent, head)  # the precondition of the attack

            for bad in (
                rpb.Ack(acknowledged_up_to=head, received_up_to=head),  # durable past sent
                rpb.Ack(acknowledged_up_to=sent + 1),  # v1 form: durable implies received
                rpb.Ack(acknowledged_up_to=20, received_up_to=sent + 1),
                rpb.Ack(acknowledged_up_to=20, received_up_to=2**63),
                rpb.Ack(acknowledged_up_to=20, received_up_to=10),  # received < durable
            ):
                code, details = await _code_of(stubs.ack(bad, metadata=md))
                assert code == grpc.StatusCode.INVALID_ARGUMENT, bad
                assert "sent only up to" in details or "received" in details
                # ...and changes nothing
                assert node.primary.slots.slots["r1"].acked == 0
                assert session.received == 0
                assert node.primary.acked_by(21, durable=False) == []

            # a received-level semi-sync write is not "acked by r1" on a forged ack
            resp = await stubs.write(npb.WriteRequest(
                mutations=[npb.Mutation(op=npb.PUT, key=b"x", value=b"y")], wait_for=1,
                level=npb.ACK_RECEIVED, timeout_s=0.5, on_timeout=npb.ON_TIMEOUT_DEGRADE))
            assert resp.degraded and list(resp.acked_by) == []

            # honest acks of what arrived are taken
            reply = await stubs.ack(rpb.Ack(acknowledged_up_to=20, received_up_to=sent),
                                    metadata=md)
            assert reply.success
            assert node.primary.slots.slots["r1"].acked == 20
            assert node.primary.acked_by(sent, durable=False) == ["r1"]
            assert node.primary.acked_by(sent + 1, durable=False) == []
            call.cancel()
    finally:
        await node.stop()


async def test_v1_ack_without_received_level_is_checked_against_sent(primary: Node) -> None:
    await _write(primary, 30)
    async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
        stubs = Stubs(ch)
        # start at 11: the replica holds 1..10 by its own account, so 10 may be acked at once
        call = stubs.stream(rpb.WALStreamRequest(start_sequence=11, protocol_version=1))
        md = (("session-id", dict(await call.initial_metadata())["session-id"]),)
        assert (await stubs.ack(rpb.Ack(acknowledged_up_to=10), metadata=md)).success
        assert await _read_to(call, 30) == list(range(11, 31))
        assert (await stubs.ack(rpb.Ack(acknowledged_up_to=30), metadata=md)).success
        await _write(primary, 1)  # head 31; whether it was sent yet or not, 32 never was
        code, _ = await _code_of(stubs.ack(rpb.Ack(acknowledged_up_to=32), metadata=md))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        call.cancel()


# -- replica ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a" * 129, "r 1", "r1/..", "réplica", "r1\n", "*"])
async def test_invalid_replica_ids_are_refused(primary: Node, bad: str) -> None:
    await _write(primary, 10)
    async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
        stubs = Stubs(ch)
        code, details = await _stream_code(
            stubs.stream(rpb.WALStreamRequest(start_sequence=1, replica_id=bad)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "replica id" in details
        code, details = await _stream_code(stubs.snapshot(rpb.SnapshotRequest(replica_id=bad)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "replica id" in details
        assert primary.primary is not None
        assert not primary.primary.slots.slots and not primary.primary.sessions
        assert not primary.primary.retention.snapshots.held
        # the longest valid id, every allowed character
        good = ("Az09._-" * 19)[:128]
        call = stubs.stream(rpb.WALStreamRequest(start_sequence=1, replica_id=good))
        assert await _read_to(call, 10) == list(range(1, 11))
        assert list(primary.primary.slots.slots) == [good]
        call.cancel()


# -- replication is a role --------------------------------------------------------------------


async def test_client_token_cannot_replicate(tmp_path: Path) -> None:
    node = await _started(_config(tmp_path, token="client-s3cret", replication_token="repl-s3cret"))
    client = (("authorization", "Bearer client-s3cret"),)
    repl = (("authorization", "Bearer repl-s3cret"),)
    try:
        await _write(node, 10)
        assert node.primary is not None
        async with grpc.aio.insecure_channel(node.address, options=channel_options()) as ch:
            stubs = Stubs(ch)
            for metadata, want in (
                (client, grpc.StatusCode.PERMISSION_DENIED),
                ((), grpc.StatusCode.UNAUTHENTICATED),
                ((("authorization", "Bearer guess"),), grpc.StatusCode.UNAUTHENTICATED),
            ):
                code, details = await _stream_code(stubs.stream(
                    rpb.WALStreamRequest(start_sequence=1, replica_id="r1"), metadata=metadata))
                assert code == want, details
                code, _ = await _stream_code(stubs.snapshot(
                    rpb.SnapshotRequest(replica_id="r1"), metadata=metadata))
                assert code == want
            # nothing was created for those calls
            assert not node.primary.slots.slots and not node.primary.sessions
            assert not node.primary.retention.snapshots.held

            call = stubs.stream(rpb.WALStreamRequest(start_sequence=1, replica_id="r1"),
                                metadata=repl)
            sid = dict(await call.initial_metadata())["session-id"]
            assert await _read_to(call, 10) == list(range(1, 11))
            # a client token that learnt the session id still cannot ack or nack for it
            session = (("session-id", sid),)
            code, _ = await _code_of(stubs.ack(rpb.Ack(acknowledged_up_to=10),
                                               metadata=(*session, *client)))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            code, _ = await _code_of(stubs.nack(rpb.Nack(missing_from_sequence=1),
                                                metadata=(*session, *client)))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert node.primary.slots.slots["r1"].acked == 0
            assert (await stubs.ack(rpb.Ack(acknowledged_up_to=10),
                                    metadata=(*session, *repl))).success
            assert node.primary.slots.slots["r1"].acked == 10
            call.cancel()

            # and the replication token is no client-API credential
            put = npb.WriteRequest(mutations=[npb.Mutation(op=npb.PUT, key=b"a", value=b"1")])
            code, _ = await _code_of(stubs.write(put, metadata=repl))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert (await stubs.write(put, metadata=client)).last_sequence == 11
    finally:
        await node.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    # CN "replica-cn", SAN "replica-san"
    client = ca.issue_cert("replica-san", common_name="replica-cn")
    d = tmp_path_factory.mktemp("pki")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    return {
        "dir": str(d).encode(),
        "ca": ca.cert_pem.bytes(),
        "client.key": client.private_key_pem.bytes(),
        "client.pem": client.cert_chain_pems[0].bytes(),
    }


async def test_replica_id_bound_to_client_certificate(
    tmp_path: Path, pki: dict[str, bytes]
) -> None:
    d = Path(pki["dir"].decode())
    node = await _started(_config(
        tmp_path, tls_cert=str(d / "server.pem"), tls_key=str(d / "server.key"),
        tls_client_ca=str(d / "ca.pem"), replica_id_from_cert=True))
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"],
                                         private_key=pki["client.key"],
                                         certificate_chain=pki["client.pem"])
    try:
        await _write(node, 10)
        assert node.primary is not None
        async with grpc.aio.secure_channel(node.address, creds,
                                           options=channel_options()) as ch:
            stubs = Stubs(ch)
            code, details = await _stream_code(
                stubs.stream(rpb.WALStreamRequest(start_sequence=1, replica_id="r1")))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert "'r1'" in details and "replica-cn" in details
            code, _ = await _stream_code(stubs.snapshot(rpb.SnapshotRequest(replica_id="r1")))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert not node.primary.slots.slots
            for name in ("replica-cn", "replica-san"):
                call = stubs.stream(rpb.WALStreamRequest(start_sequence=1, replica_id=name))
                assert await _read_to(call, 10) == list(range(1, 11))
                call.cancel()
                async with asyncio.timeout(10):
                    while node.primary.sessions:
                        await asyncio.sleep(0.01)
            # a KevoDB v1 peer names no id: its certificate's common name is its id
            call = stubs.stream(rpb.WALStreamRequest(start_sequence=1, protocol_version=1))
            await call.initial_metadata()
            assert [s.replica_id for s in node.primary.sessions.values()] == ["replica-cn"]
            # and it cannot open a second stream under its certificate's name
            code, _ = await _stream_code(
                stubs.stream(rpb.WALStreamRequest(start_sequence=1, replica_id="replica-cn")))
            assert code == grpc.StatusCode.ALREADY_EXISTS
            call.cancel()
            assert sorted(node.primary.slots.slots) == ["replica-cn", "replica-san"]
    finally:
        await node.stop()
