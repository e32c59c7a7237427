"""The primary: group-committed WAL writes, its own store, and WAL streaming to replicas."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc
import pluggy

from .applier import Applier
from .codec import Entry, Op, checksum, decode, encode
from .config import Config
from .errors import KevoReplError, StoreError
from .plugins import Registry
from .proto import replication_pb2 as rpb
from .retention import Retention
from .slots import SlotTable
from .store import open_store
from .wal import WAL, Record, SequenceNotRetained

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 2
SESSION_HEADER = "session-id"


class WriteRejected(KevoReplError):
    """A write that is invalid as asked (bad key, bad op); nothing was written."""


class PrimaryUnavailable(KevoReplError):
    """The primary cannot take writes (its WAL failed); it must be restarted."""


def encode_body(entries: Sequence[Entry]) -> bytes:
    """The wire form of entries, as stored in a WAL record and sent to replicas."""
    msgs = []
    for e in entries:
        payload = encode(e.seq, e.op, e.key, e.value)
        msgs.append(
            rpb.WALEntry(sequence_number=e.seq, payload=payload, checksum=checksum(payload))
        )
    return bytes(rpb.WALStreamResponse(entries=msgs).SerializeToString())


def decode_body(body: bytes) -> list[Entry]:
    resp = rpb.WALStreamResponse.FromString(body)
    return [decode(e.payload, e.sequence_number) for e in resp.entries]


@dataclass
class Session:
    session_id: str
    replica_id: str
    peer: str
    start: int
    sent: int = 0
    rewind: int | None = None
    superseded_by: str | None = None  # peer of a newer stream with the same replica id
    opened_at: float = field(default_factory=time.time)


@dataclass
class _Pending:
    record: Record
    entries: list[Entry]
    future: asyncio.Future[tuple[int, int]]


class Primary:
    def __init__(self, cfg: Config, registry: Registry, pm: pluggy.PluginManager) -> None:
        self.cfg = cfg
        self.pm = pm
        data_dir = cfg.data_dir
        self.store: Applier = open_store(cfg, registry, durable=False)
        try:
            self.wal = WAL(data_dir / "wal", segment_bytes=cfg.wal.segment_bytes)
        except BaseException:
            self.store.close()
            raise
        self.history_id = self.wal.history_id
        self.slots = SlotTable(data_dir / "slots.json")
        self.sessions: dict[str, Session] = {}
        self._next_seq = self.wal.last_sequence + 1
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._broken: str | None = None
        self._advanced: asyncio.Condition | None = None
        self._replay_store()
        # WAL retention for the slots, within the caps, and snapshots for bootstrapping replicas
        self.retention = Retention(self)

    # -- start-up ----------------------------------------------------------------------------

    def _replay_store(self) -> None:
        """Bring the local store up to the WAL: it is applied without sync, so after a crash it
        may be behind the WAL, never ahead of it."""
        pos = self.store.position()
        last = self.wal.last_sequence
        if pos.sequence > last:
            raise StoreError(
                f"the primary's store is at sequence {pos.sequence} but its WAL ends at {last}: "
                "the WAL lost acknowledged records; refusing to start"
            )
        if pos.history_id and pos.history_id != self.history_id:
            raise StoreError(
                f"the primary's store belongs to history {pos.history_id}, its WAL to "
                f"{self.history_id}; refusing to start"
            )
        if pos.sequence == last:
            return
        replayed = 0
        for record in self.wal.iter_records(pos.sequence + 1):
            entries = decode_body(record.body)
            self.store.apply(entries, self.history_id)
            replayed += len(entries)
        self.store.sync()
        log.info("replayed %d WAL entries into the store (now at %d)", replayed, last)

    # -- writes ------------------------------------------------------------------------------

    @property
    def head(self) -> int:
        return self.wal.last_sequence

    def _condition(self) -> asyncio.Condition:
        if self._advanced is None:
            self._advanced = asyncio.Condition()
        return self._advanced

    async def write(self, mutations: Sequence[tuple[int, bytes, bytes]]) -> tuple[int, int]:
        """Write one batch atomically; return its (first, last) sequence once durable."""
        if self._broken is not None:
            raise PrimaryUnavailable(self._broken)
        if not mutations:
            raise WriteRejected("a write needs at least one mutation")
        max_key = self.store.max_key_size
        for op, key, _ in mutations:
            if op not in (Op.PUT, Op.DELETE, Op.MERGE):
                raise WriteRejected(f"unknown op {op}")
            if not key:
                raise WriteRejected("keys must not be empty")
            if len(key) > max_key:
                raise WriteRejected(
                    f"key of {len(key)} bytes is longer than the store's maximum of {max_key}"
                )
        first = self._next_seq
        self._next_seq += len(mutations)
        entries = [
            Entry(first + i, op, key, b"" if op == Op.DELETE else value)
            for i, (op, key, value) in enumerate(mutations)
        ]
        record = Record(first, len(entries), encode_body(entries))
        future: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(record, entries, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # shield: a caller that goes away must not cancel the group commit of others
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            group, self._pending = self._pending, []
            try:
                # one WAL fsync for every write that queued up meanwhile (group commit)
                await _run_to_completion(loop, self._commit, group)
            except Exception as exc:
                self._broken = f"the primary's WAL or store failed: {exc}; restart the primary"
                log.error("write failed, refusing further writes: %s", exc)
                for p in (*group, *self._pending):
                    if not p.future.done():
                        p.future.set_exception(PrimaryUnavailable(self._broken))
                self._pending = []
                return
            for p in group:
                if not p.future.done():
                    p.future.set_result((p.record.first_seq, p.record.last_seq))
            cond = self._condition()
            async with cond:
                cond.notify_all()
            first, last = group[0].record.first_seq, group[-1].record.last_seq
            try:
                self.pm.hook.kevo_repl_batch_applied(
                    node="primary", first_seq=first, last_seq=last, count=last - first + 1
                )
            except Exception:
                log.exception("a batch_applied hook failed")

    def _commit(self, group: list[_Pending]) -> None:
        self.retention.before_append(sum(len(p.record.body) for p in group), len(group))
        self.wal.append([p.record for p in group])
        entries = [e for p in group for e in p.entries]
        self.store.apply(entries, self.history_id)

    # -- streaming ---------------------------------------------------------------------------

    def check_start(self, request: rpb.WALStreamRequest) -> tuple[grpc.StatusCode, str] | None:
        start = request.start_sequence
        if start < 1:
            return grpc.StatusCode.INVALID_ARGUMENT, "start_sequence must be at least 1"
        if request.history_id and request.history_id != self.history_id and start > 1:
            return (
                grpc.StatusCode.FAILED_PRECONDITION,
                f"replica position belongs to history {request.history_id}, this primary's "
                f"history is {self.history_id}: the replica diverged and must be rebuilt",
            )
        if start > self.head + 1:
            return (
                grpc.StatusCode.FAILED_PRECONDITION,
                f"replica wants sequence {start} but this primary's log ends at {self.head}: "
                "the replica is ahead of the primary (diverged)",
            )
        if start < self.wal.first_sequence:
            return (
                grpc.StatusCode.OUT_OF_RANGE,
                f"sequence {start} is no longer retained (first retained: "
                f"{self.wal.first_sequence})",
            )
        return None

    def trailer(self, *, first: bool = False) -> bytes:
        """Fields appended to a response: protobuf merges concatenated messages."""
        msg = rpb.WALStreamResponse(head_sequence=self.head, primary_time_ns=time.time_ns())
        if first:
            msg.history_id = self.history_id
        return bytes(msg.SerializeToString())

    async def stream(
        self, request: rpb.WALStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        problem = self.check_start(request)
        if problem is not None:
            log.warning(
                "refused stream for replica %r from %s: %s",
                request.replica_id,
                context.peer(),
                problem[1],
            )
            await context.abort(problem[0], problem[1])
        session = Session(
            uuid.uuid4().hex, request.replica_id or context.peer(), context.peer(),
            request.start_sequence,
        )
        for old in self.sessions.values():
            if request.replica_id and old.replica_id == session.replica_id:
                # the newer stream wins: the old one is a zombie or a misconfigured twin
                old.superseded_by = session.peer
        self.sessions[session.session_id] = session
        if any(s.superseded_by for s in self.sessions.values()):
            cond = self._condition()
            async with cond:
                cond.notify_all()
        if request.replica_id:
            self.slots.get(request.replica_id)
        await context.send_initial_metadata(((SESSION_HEADER, session.session_id),))
        log.info(
            "replica %r (%s) streaming from %d, session %s",
            session.replica_id, session.peer, session.start, session.session_id,
        )
        pos = request.start_sequence
        cap = self.cfg.stream.max_batch_bytes
        heartbeat = self.cfg.stream.heartbeat_s
        cond = self._condition()
        first = True
        try:
            while True:
                if session.superseded_by is not None:
                    log.warning(
                        "session %s of replica %r superseded by a newer stream from %s",
                        session.session_id, session.replica_id, session.superseded_by,
                    )
                    await context.abort(
                        grpc.StatusCode.ABORTED,
                        f"superseded by a newer stream for replica_id {session.replica_id!r} "
                        f"from {session.superseded_by}",
                    )
                if session.rewind is not None:
                    log.info("session %s rewinds to %d", session.session_id, session.rewind)
                    pos, session.rewind = session.rewind, None
                if pos <= self.head:
                    try:
                        records = await asyncio.to_thread(self.wal.read, pos, cap)
                    except SequenceNotRetained as exc:
                        await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
                    yield b"".join(r.body for r in records) + self.trailer(first=first)
                    first = False
                    pos = records[-1].last_seq + 1
                    session.sent = records[-1].last_seq
                    continue
                ready = functools.partial(self._has_work, session, pos)
                async with cond:
                    try:
                        await asyncio.wait_for(cond.wait_for(ready), heartbeat)
                    except TimeoutError:
                        pass
                if not self._has_work(session, pos):
                    yield self.trailer(first=first)  # heartbeat: head and clock, no entries
                    first = False
        finally:
            self.sessions.pop(session.session_id, None)
            log.info("session %s of replica %r ended", session.session_id, session.replica_id)

    def _has_work(self, session: Session, pos: int) -> bool:
        return (
            self.head >= pos or session.rewind is not None or session.superseded_by is not None
        )

    def _session_of(self, context: grpc.aio.ServicerContext) -> Session | None:
        for key, value in context.invocation_metadata() or ():
            if key == SESSION_HEADER:
                return self.sessions.get(str(value))
        return None

    async def acknowledge(
        self, request: rpb.Ack, context: grpc.aio.ServicerContext
    ) -> rpb.AckResponse:
        session = self._session_of(context)
        if session is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown or missing session-id")
            raise AssertionError("unreachable")
        seq = request.acknowledged_up_to
        if seq > self.head:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"ack of {seq} is past this primary's head {self.head}",
            )
        self.slots.ack(session.replica_id, seq)
        return rpb.AckResponse(success=True)

    async def negative_acknowledge(
        self, request: rpb.Nack, context: grpc.aio.ServicerContext
    ) -> rpb.NackResponse:
        session = self._session_of(context)
        if session is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown or missing session-id")
            raise AssertionError("unreachable")
        seq = request.missing_from_sequence
        if seq < self.wal.first_sequence:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"sequence {seq} is no longer retained (first: {self.wal.first_sequence})",
            )
        if seq > self.head + 1:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"nack of {seq} is past head {self.head}"
            )
        log.info("replica %r asks for a re-send from %d", session.replica_id, seq)
        session.rewind = seq
        cond = self._condition()
        async with cond:
            cond.notify_all()
        return rpb.NackResponse(success=True)

    # -- shutdown ----------------------------------------------------------------------------

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher
        await self.retention.close()
        await self.slots.close()
        self.wal.close()
        self.store.sync()
        self.store.close()


async def _run_to_completion(loop: asyncio.AbstractEventLoop, fn: object, *args: object) -> None:
    """Run blocking `fn` in a thread; if the caller is cancelled, still wait for the thread,
    so a store or WAL is never closed under a running commit."""
    assert callable(fn)
    fut = loop.run_in_executor(None, fn, *args)
    try:
        await asyncio.shield(fut)
    except asyncio.CancelledError:
        await fut
        raise
