"""Scripted KevoDB peers for the interoperability tests: a primary and a replica that behave as
KevoDB's Go server (v1.4.2, commit a0bcdda) was observed to behave (issue 15). Test helpers,
not product code: real gRPC on 127.0.0.1, nothing faked on our side.

The primary, `KevoDBPrimary`:
- refuses a StreamWAL without `listener_address` (INVALID_ARGUMENT);
- flags every batch `compressed = true, codec = ZSTD`: a zstd session gets the payloads raw,
  any other compressed session an empty message (its decompress-the-raw-bytes bug); a session
  that asks for no compression gets plain, unflagged batches;
- sends no heartbeats, no history id, no hash chain, checksum 0;
- starts a session's acked position at `start_sequence`, so it skips the first entry after
  every (re)connect; each Acknowledge sets that position;
- re-sends the unacknowledged window every 100 ms;
- a NegativeAcknowledge while writes flow deadlocks the real server: here it is recorded in
  `nacks_during_writes` and freezes streams and writes, so the test fails.

The replica, `kevodb_replica_batch`: no replica id, never acknowledges, one stream per batch.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from kevo_repl.protocol.codec import Entry, Op, decode, encode
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.transport import channel_options
from kevo_repl.storage.store import Bucket

SVC = "kevo.replication.WALReplicationService"
#: KevoDB's re-send timer
RESEND_INTERVAL_S = 0.1
#: entries per response, and most entries one re-send of the unacked window carries
BATCH_ENTRIES = 200
MAX_RESEND_ENTRIES = 5_000


@dataclass
class _Session:
    session_id: str
    codec: int  # what the replica asked for (NONE when it did not ask for compression)
    acked: int  # KevoDB's bug: starts at start_sequence, not start_sequence - 1
    sent: int
    last_resend: float = field(default_factory=time.monotonic)


class KevoDBPrimary:
    """A KevoDB-like primary on 127.0.0.1 (`port` 0 = a free one)."""

    def __init__(
        self, port: int = 0, log: list[bytes] | None = None,
        resend_interval_s: float = RESEND_INTERVAL_S,
    ) -> None:
        self.resend_interval_s = resend_interval_s
        self.log: list[bytes] = log if log is not None else []  # payload of sequence i + 1
        self.requests: list[rpb.WALStreamRequest] = []
        self.refused: list[str] = []
        self.acks: list[int] = []
        self.nacks: list[int] = []
        self.nacks_during_writes: list[int] = []
        self.resends = 0
        #: set by the test while it writes: a nack then deadlocks the real server
        self.writing = False
        self.frozen = False
        self.sessions: dict[str, _Session] = {}
        self._changed: asyncio.Condition | None = None
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SVC, {
            "StreamWAL": grpc.unary_stream_rpc_method_handler(
                self._stream, request_deserializer=rpb.WALStreamRequest.FromString,
                response_serializer=rpb.WALStreamResponse.SerializeToString),
            "Acknowledge": grpc.unary_unary_rpc_method_handler(
                self._ack, request_deserializer=rpb.Ack.FromString,
                response_serializer=rpb.AckResponse.SerializeToString),
            "NegativeAcknowledge": grpc.unary_unary_rpc_method_handler(
                self._nack, request_deserializer=rpb.Nack.FromString,
                response_serializer=rpb.NackResponse.SerializeToString),
        }),))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port, f"cannot listen on 127.0.0.1:{port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def head(self) -> int:
        return len(self.log)

    async def start(self) -> None:
        self._changed = asyncio.Condition()
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop(None)

    # -- writes and the expected state ------------------------------------------------------

    async def write(self, count: int, *, batch: int = 50, pause_s: float = 0.0) -> None:
        """Put `count` entries (keys k000000..., values derived from the sequence)."""
        for first in range(0, count, batch):
            assert not self.frozen, "the KevoDB primary deadlocked on a nack during writes"
            for _ in range(min(batch, count - first)):
                seq = self.head + 1
                self.log.append(encode(seq, Op.PUT, b"k%06d" % (seq % 3_000),
                                       b"value-%d-" % seq * 3))
            assert self._changed is not None
            async with self._changed:
                self._changed.notify_all()
            if pause_s:
                await asyncio.sleep(pause_s)

    def digest(self) -> str:
        """SHA-256 of the store these entries make, as kevo_repl.storage.store digests one."""
        state: dict[bytes, bytes] = {}
        for seq, payload in enumerate(self.log, 1):
            e = decode(payload, seq)
            if e.op == Op.DELETE:
                state.pop(e.key, None)
            else:
                state[e.key] = e.value
        bucket = Bucket(b"")
        for key in sorted(state):
            bucket.add(key, state[key])
        return bucket.digest

    # -- the service --------------------------------------------------------------------------

    def _response(self, session: _Session, first: int, last: int) -> rpb.WALStreamResponse:
        entries = [rpb.WALEntry(sequence_number=s, payload=self.log[s - 1])  # checksum 0
                   for s in range(first, last + 1)]
        if session.codec == rpb.NONE:
            return rpb.WALStreamResponse(entries=entries)
        if session.codec == rpb.ZSTD:  # flagged compressed, sent raw
            return rpb.WALStreamResponse(entries=entries, compressed=True, codec=rpb.ZSTD)
        return rpb.WALStreamResponse(compressed=True, codec=rpb.ZSTD)  # the empty message

    async def _stream(
        self, request: rpb.WALStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpb.WALStreamResponse]:
        self.requests.append(request)
        if not request.listener_address:
            self.refused.append(context.peer())
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "listener_address is required")
        codec = int(request.preferred_codec) if request.compression_supported else rpb.NONE
        start = request.start_sequence
        session = _Session(uuid.uuid4().hex, codec, acked=start, sent=start)
        self.sessions[session.session_id] = session
        await context.send_initial_metadata((("session-id", session.session_id),))
        assert self._changed is not None
        try:
            while True:
                while self.frozen:  # deadlocked: nothing moves any more
                    await asyncio.sleep(1)
                now = time.monotonic()
                due = now - session.last_resend >= self.resend_interval_s
                if session.acked < session.sent and due:
                    session.last_resend = now
                    self.resends += 1
                    end = min(session.sent, session.acked + MAX_RESEND_ENTRIES)
                    for first in range(session.acked + 1, end + 1, BATCH_ENTRIES):
                        yield self._response(session, first, min(end, first + BATCH_ENTRIES - 1))
                if session.sent < self.head:
                    last = min(self.head, session.sent + BATCH_ENTRIES)
                    resp = self._response(session, session.sent + 1, last)
                    session.sent = last
                    yield resp
                    continue
                # idle: no heartbeat, only the re-send timer
                async with self._changed:
                    try:
                        await asyncio.wait_for(
                            self._changed.wait_for(lambda: self.head > session.sent),
                            min(self.resend_interval_s, 1.0))
                    except TimeoutError:
                        pass
        finally:
            self.sessions.pop(session.session_id, None)

    def _session(self, context: grpc.aio.ServicerContext) -> _Session | None:
        for key, value in context.invocation_metadata() or ():
            if key == "session-id":
                return self.sessions.get(str(value))
        return None

    async def _ack(self, request: rpb.Ack, context: grpc.aio.ServicerContext) -> rpb.AckResponse:
        self.acks.append(request.acknowledged_up_to)
        session = self._session(context)
        if session is None:
            return rpb.AckResponse(success=False, message="unknown session")
        session.acked = request.acknowledged_up_to
        return rpb.AckResponse(success=True)

    async def _nack(
        self, request: rpb.Nack, context: grpc.aio.ServicerContext
    ) -> rpb.NackResponse:
        self.nacks.append(request.missing_from_sequence)
        if self.writing:
            # the real server takes its replication lock, then the WAL lock: writers hold them
            # the other way round
            self.nacks_during_writes.append(request.missing_from_sequence)
            self.frozen = True
            return rpb.NackResponse(success=False, message="deadlocked")
        session = self._session(context)
        if session is None:
            return rpb.NackResponse(success=False, message="unknown session")
        session.sent = request.missing_from_sequence - 1
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()
        return rpb.NackResponse(success=True)


@dataclass
class KevoDBReplicaRun:
    """What one stream of the scripted KevoDB replica got."""

    session_id: str
    entries: list[Entry]


async def kevodb_replica_batch(
    target: str, start: int, listener_address: str, *, timeout: float = 30.0
) -> KevoDBReplicaRun:
    """One stream as KevoDB's replica opens it: protocol 1, no replica id, a listener address;
    it takes the first response that carries entries and closes the stream, never acking."""
    async with grpc.aio.insecure_channel(target, options=channel_options()) as ch:
        stream = ch.unary_stream(f"/{SVC}/StreamWAL",
                                 request_serializer=rpb.WALStreamRequest.SerializeToString,
                                 response_deserializer=rpb.WALStreamResponse.FromString)
        call = stream(rpb.WALStreamRequest(start_sequence=start, protocol_version=1,
                                           listener_address=listener_address))
        session_id = str(dict(await call.initial_metadata())["session-id"])
        async with asyncio.timeout(timeout):
            async for resp in call:
                if resp.entries:
                    entries = [decode(e.payload, e.sequence_number) for e in resp.entries]
                    call.cancel()
                    return KevoDBReplicaRun(session_id, entries)
        raise AssertionError("the stream ended without entries")
