"""The primary: group-committed WAL writes, its own store, and WAL streaming to replicas."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import pluggy

from kevo_repl.config import Config
from kevo_repl.errors import KevoReplError, StoreError
from kevo_repl.identity import bound_replica_id, check_replica_id
from kevo_repl.plugin.manager import Registry
from kevo_repl.primary import epochs as epochs_mod
from kevo_repl.primary import kevodb_peers, store_failure
from kevo_repl.primary.idempotency import IdempotencyWindow, content_digest, key_problem
from kevo_repl.primary.retention import Retention
from kevo_repl.primary.slots import SlotTable, TooManySlots
from kevo_repl.primary.stream_holds import StreamHolds
from kevo_repl.protocol import chain as chain_mod
from kevo_repl.protocol import wire
from kevo_repl.protocol.codec import Entry, Op
from kevo_repl.protocol.constants import SESSION_HEADER, SHUTDOWN_DETAILS
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.records import (
    Record,
    chain_of,
    decode_body,
    encode_block_body,
    payloads_through,
)
from kevo_repl.protocol.rpc_abort import abort
from kevo_repl.storage import epochs as epoch_history
from kevo_repl.storage.applier import Applier
from kevo_repl.storage.store import open_store
from kevo_repl.storage.wal import WAL, SequenceNotRetained
from kevo_repl.tasks import Supervisor, run_blocking

log = logging.getLogger(__name__)

class WriteRejected(KevoReplError):
    """A write that is invalid as asked (bad key, bad op); nothing was written."""


class PrimaryUnavailable(KevoReplError):
    """The primary cannot take writes now: its WAL failed (it must be restarted), or its
    store cannot apply (writes resume by themselves once it can)."""


#: how often a primary whose store could not apply tries again
STORE_RETRY_S = 1.0


class PrimaryFenced(PrimaryUnavailable):
    """A newer epoch exists: this primary accepts no more writes."""


@dataclass
class Session:
    session_id: str
    replica_id: str
    peer: str
    start: int
    #: the highest sequence handed to this stream; the replica holds start - 1 already
    sent: int = 0
    rewind: int | None = None
    received: int = 0  # what the replica reported received (not yet durable), for semi-sync
    #: the StreamWAL call; once it is done the session is dead even before its cleanup ran
    context: grpc.aio.ServicerContext | None = None
    opened_at: float = field(default_factory=time.time)


@dataclass
class _Pending:
    record: Record
    entries: list[Entry]
    #: None for all but the last write of a write_many call
    future: asyncio.Future[tuple[int, int]] | None
    #: the hash chain after the record's last entry
    chain: int = 0


class Primary:
    def __init__(self, cfg: Config, registry: Registry, pm: pluggy.PluginManager) -> None:
        self.cfg = cfg
        self.pm = pm
        self.registry = registry
        data_dir = cfg.data_dir
        self.store: Applier = open_store(cfg, registry, durable=False)
        # the primary's background tasks; one that fails stops writes (ERROR, last_error)
        self.tasks = Supervisor("primary", self._task_failed)
        try:
            self.slots = SlotTable(
                data_dir / "slots.json", spawn=self.tasks.spawn,
                max_slots=cfg.retention.max_slots,
            )
            # What the store applied and replicas acknowledged was acknowledged to a client:
            # WAL recovery must not cut a tail holding it, or its sequences would be reused.
            acknowledged = max(
                [self.store.position().sequence, *(s.acked for s in self.slots.slots.values())]
            )
            self.wal = WAL(
                data_dir / "wal",
                segment_bytes=cfg.wal.segment_bytes,
                acknowledged=acknowledged,
            )
        except BaseException:
            self.store.close()
            raise
        self.history_id = self.wal.history_id
        #: the terms of this history (storage/epochs.py); the last one is this primary's
        self.epochs = epoch_history.load(data_dir / "wal")
        #: set once a replica shows a newer epoch: this primary then refuses writes
        self.fenced: str | None = None
        self.sessions: dict[str, Session] = {}
        #: digest holds: a replica is sent nothing past a sequence for a while
        self.holds = StreamHolds(self._wake_streams_soon)
        #: set by drain(): streams end and new ones are refused before a clean shutdown
        self.draining = False
        self._next_seq = self.wal.last_sequence + 1
        self._chain = self._chain_at_head()
        #: the idempotency keys of the last writes, as the WAL's tail holds them
        self.idempotency = IdempotencyWindow(cfg.primary.idempotency_window)
        self._rebuild_idempotency()
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._broken: str | None = None
        #: the store could not apply what the WAL holds: new writes wait until it can
        self.store_failure: str | None = None
        self._store_retry: asyncio.Task[None] | None = None
        #: a commit and the store's catch-up never run at once
        self._commit_lock: asyncio.Lock | None = None
        self._advanced: asyncio.Condition | None = None
        self._acks_changed: asyncio.Condition | None = None
        self._ack_waiters = 0
        #: writes that will wait for "received" acks: replicas are asked to ack on receipt
        self.received_waiters = 0
        self.semisync_degraded = 0
        self._replay_store()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        # WAL retention for the slots, within the caps, and snapshots for bootstrapping replicas
        self.retention = Retention(
            cfg.retention, cfg.snapshot, self.wal, self.store, self.slots, self.connected_replicas,
            replica_id_from_cert=cfg.server.replica_id_from_cert,
            window_start=lambda: self.idempotency.oldest_sequence,
        )

    # -- start-up ----------------------------------------------------------------------------

    def connected_replicas(self) -> set[str]:
        """The ids of the replicas streaming now."""
        return {s.replica_id for s in list(self.sessions.values())}

    def _task_failed(self, name: str, exc: BaseException) -> None:
        if self._broken is None:
            self._broken = f"{name} failed: {type(exc).__name__}: {exc}; restart the primary"
            log.error("refusing further writes: %s", self._broken)

    @property
    def broken(self) -> str | None:
        """Why the primary refuses writes (its WAL or store failed), or None."""
        return self._broken

    def _chain_at_head(self) -> int:
        if self.wal.last_sequence == 0:
            return chain_mod.START
        if self.wal.first_sequence > self.wal.last_sequence:
            # a promoted replica's WAL, still empty: the epoch records the chain it starts on
            value = self.chain_at(self.wal.last_sequence)
            if value is None:
                raise StoreError("an empty WAL whose epoch history does not give its chain")
            return value
        [last] = self.wal.read(self.wal.last_sequence, 1)
        value = chain_of(last)
        if value is None:
            raise StoreError("the WAL's last record carries no hash chain value")
        return value

    def chain_at(self, sequence: int) -> int | None:
        """The hash chain after `sequence`, at any retained sequence (also inside a record);
        None when the WAL cannot tell (not retained, or inside the first retained record)."""
        if sequence == 0:
            return chain_mod.START
        for epoch in self.epochs:
            if epoch.start == sequence + 1 and sequence + 1 == self.wal.first_sequence:
                return epoch.chain
        if not self.wal.first_sequence <= sequence <= self.wal.last_sequence:
            return None
        first = self.wal.record_start(sequence)
        [record] = self.wal.read(first, 1)
        if record.last_seq == sequence:
            return chain_of(record)
        # inside a record: the chain before it, extended over its entries up to `sequence`
        known = first == 1 or first - 1 >= self.wal.first_sequence
        before = self.chain_at(first - 1) if known else None
        if before is None:
            return None
        return chain_mod.over(before, payloads_through(record.body, sequence))

    def _rebuild_idempotency(self) -> None:
        """Read the keys of the last writes back from the WAL (the last `window` records)."""
        start = self.wal.start_of_last_records(self.idempotency.size)
        if start is not None:
            self.idempotency.rebuild(self.wal.iter_records(start))
            log.info("idempotency window: %d keys remembered from the WAL", len(self.idempotency))

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
            self.store.apply(entries, self.history_id, chain_of(record) or 0)
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
        future = self._enqueue(mutations, want_future=True)
        assert future is not None
        # shield: a caller that goes away must not cancel the group commit of others
        return await asyncio.shield(future)

    async def write_once(
        self, mutations: Sequence[tuple[int, bytes, bytes]], idempotency_key: bytes
    ) -> tuple[int, int, bool]:
        """An idempotent write: (first, last, False) once durable; or, when a write with this
        key is in the window, that write's (first, last, True) once IT is durable, with
        nothing written now. KeyReused if that write had other mutations."""
        problem = key_problem(idempotency_key)
        if problem is not None:
            raise WriteRejected(problem)
        for op, _, _ in mutations:  # the digest takes an op as one byte, as payloads do
            if op not in (Op.PUT, Op.DELETE, Op.MERGE):
                raise WriteRejected(f"unknown op {op}")
        digest = content_digest(mutations)
        # the window before the availability checks: a committed write stays committed
        known = self.idempotency.lookup(idempotency_key, digest)
        if known is None:
            future = self._enqueue(
                mutations, want_future=True, idempotency_key=idempotency_key, digest=digest
            )
            assert future is not None
            first, last = await asyncio.shield(future)
            return first, last, False
        await self._durable(known.last)
        return known.first, known.last, True

    async def _durable(self, sequence: int) -> None:
        """Wait until the WAL is durable through `sequence` (a write still in flight);
        PrimaryUnavailable if the WAL failed first."""
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self.head >= sequence or self._broken is not None)
        if self.head < sequence:
            raise PrimaryUnavailable(self._broken or "the WAL failed")

    async def write_many(
        self, writes: Sequence[Sequence[tuple[int, bytes, bytes]]]
    ) -> list[tuple[int, int] | WriteRejected]:
        """Several independent write batches at once (each atomic, each its own sequences):
        the (first, last) of each once all are durable, or the rejection of an invalid one.
        Cheaper per write than `write`: one future for all of them."""
        out: list[tuple[int, int] | WriteRejected] = []
        last: _Pending | None = None
        for mutations in writes:
            try:
                self._enqueue(mutations, want_future=False)
            except WriteRejected as exc:
                out.append(exc)
                continue
            last = self._pending[-1]
            out.append((last.record.first_seq, last.record.last_seq))
        if last is not None:
            # groups commit in order: once this call's last write is durable, all of its
            # writes are
            last.future = asyncio.get_running_loop().create_future()
            await asyncio.shield(last.future)
        return out

    def _enqueue(
        self, mutations: Sequence[tuple[int, bytes, bytes]], *, want_future: bool,
        idempotency_key: bytes | None = None, digest: bytes = b"",
    ) -> asyncio.Future[tuple[int, int]] | None:
        """Validate, assign sequences, encode, and queue one write for the group commit."""
        if self._broken is not None:
            raise PrimaryUnavailable(self._broken)
        if self.fenced is not None:
            raise PrimaryFenced(self.fenced)
        if self.store_failure is not None:
            raise PrimaryUnavailable(
                f"the primary's store cannot apply: {self.store_failure}; writes are refused "
                "until it can (they resume by themselves), nothing of this write was applied"
            )
        if not mutations:
            raise WriteRejected("a write needs at least one mutation")
        max_key = self.store.max_key_size
        max_entry = self.cfg.stream.max_entry_bytes
        total = 0
        for op, key, value in mutations:
            if op not in (Op.PUT, Op.DELETE, Op.MERGE):
                raise WriteRejected(f"unknown op {op}")
            if not key:
                raise WriteRejected("keys must not be empty")
            if len(key) > max_key:
                raise WriteRejected(
                    f"key of {len(key)} bytes is longer than the store's maximum of {max_key}"
                )
            size = len(key) + len(value) + 17  # the payload's framing
            total += size
            if size > max_entry:
                raise WriteRejected(
                    f"entry of {size} bytes exceeds [stream] max_entry_bytes ({max_entry})"
                )
        if total > max_entry:
            raise WriteRejected(
                f"write batch of {total} bytes exceeds [stream] max_entry_bytes ({max_entry})"
            )
        first = self._next_seq
        self._next_seq += len(mutations)
        entries = [
            Entry(first + i, op, key, b"" if op == Op.DELETE else value)
            for i, (op, key, value) in enumerate(mutations)
        ]
        # block form: served as is to replicas that take blocks (docs/DESIGN.md)
        body, self._chain = encode_block_body(entries, self._chain, idempotency_key)
        record = Record(first, len(entries), body)
        self.idempotency.count_write(first, record.last_seq, idempotency_key, digest)
        future = asyncio.get_running_loop().create_future() if want_future else None
        self._pending.append(_Pending(record, entries, future, self._chain))
        if self._flusher is None or self._flusher.done():
            self._flusher = self.tasks.spawn(self._flush(), "primary-commit")
        return future

    async def _committing(self, fn: Callable[[], None]) -> None:
        """Run `fn` in a worker thread, never at once with another commit or the store's
        catch-up; waits for the thread even when cancelled (the store is closed after it)."""
        if self._commit_lock is None:
            self._commit_lock = asyncio.Lock()
        async with self._commit_lock:
            await run_blocking(fn)

    async def _flush(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            try:
                # one WAL fsync for every write that queued up meanwhile (group commit)
                await self._committing(functools.partial(self._append, group))
            except Exception as exc:
                self._broken = f"the primary's WAL failed: {exc}; restart the primary"
                log.error("write failed, refusing further writes: %s", exc)
                for p in (*group, *self._pending):
                    if p.future is not None and not p.future.done():
                        p.future.set_exception(PrimaryUnavailable(self._broken))
                self._pending = []
                cond = self._condition()
                async with cond:  # retries waiting for an idempotent write: it failed
                    cond.notify_all()
                return
            # durable in the WAL: committed, whatever the store does next
            for p in group:
                if p.future is not None and not p.future.done():
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

    def _append(self, group: list[_Pending]) -> None:
        """In a worker thread: append a group to the WAL (raises if that fails), then apply
        it to the store; a store failure is kept in store_failure, not raised."""
        self.retention.before_append(sum(len(p.record.body) for p in group), len(group))
        self.wal.append([p.record for p in group])
        if self.store_failure is not None:
            return  # the store catches up from the WAL once it can
        entries = [e for p in group for e in p.entries]
        try:
            self.store.apply(entries, self.history_id, group[-1].chain)
        except Exception as exc:
            self._store_failed(exc)

    def _store_failed(self, exc: BaseException) -> None:
        """In a worker thread: the store could not apply; refuse writes, retry in the
        background."""
        self.store_failure = store_failure.describe(exc, self.cfg.data_dir)
        log.error(
            "the primary's store cannot apply (%s): refusing new writes until it can; what "
            "the WAL holds stays committed", self.store_failure,
        )
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._start_store_retry)

    def _start_store_retry(self) -> None:
        if self._store_retry is None or self._store_retry.done():
            self._store_retry = self.tasks.spawn(self._retry_store(), "primary-store-retry")

    async def _retry_store(self) -> None:
        """Apply what the WAL holds beyond the store, every STORE_RETRY_S until it works;
        then writes are taken again."""
        while self.store_failure is not None and self._broken is None:
            await asyncio.sleep(STORE_RETRY_S)
            try:
                await self._committing(self._catch_up_store)
            except Exception as exc:
                self.store_failure = store_failure.describe(exc, self.cfg.data_dir)
                log.warning("the primary's store still cannot apply: %s", self.store_failure)
                continue
            # no await since the catch-up: no commit ran in between that skipped the store
            log.info("the primary's store applies again (at %d); writes resume", self.head)
            self.store_failure = None

    def _catch_up_store(self) -> None:
        """In a worker thread: apply every WAL record the store does not have yet."""
        for record in self.wal.iter_records(self.store.position().sequence + 1):
            self.store.apply(decode_body(record.body), self.history_id, chain_of(record) or 0)

    @contextlib.asynccontextmanager
    async def quiesced(self) -> AsyncIterator[int]:
        """Inside, no commit runs: yields the WAL head, which the store has applied unless
        `store_failure` is set (a digest hold picks its position here; keep it short)."""
        if self._commit_lock is None:
            self._commit_lock = asyncio.Lock()
        async with self._commit_lock:
            yield self.head

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
        if request.HasField("chain") and start > 1:
            mine = self.chain_at(start - 1)
            if mine is None and start - 1 >= self.wal.first_sequence:
                return (
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"sequence {start - 1} lies inside the first retained WAL record, so this "
                    "primary cannot check the replica's history there; bootstrap from a "
                    "snapshot",
                )
            if mine is not None and mine != request.chain:
                return (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the replica's history forks from this primary's at or before sequence "
                    f"{start - 1} (hash chain {request.chain:016x}, primary's {mine:016x}): "
                    "the replica diverged and must be rebuilt",
                )
        return None

    def _check_epochs(
        self, request: rpb.WALStreamRequest, context: grpc.aio.ServicerContext
    ) -> tuple[grpc.StatusCode, str] | None:
        try:
            theirs = epochs_mod.replica_epochs(context.invocation_metadata())
        except KevoReplError as exc:
            return grpc.StatusCode.INVALID_ARGUMENT, f"bad epoch header: {exc}"
        refusal = epochs_mod.check_replica(self.epochs, theirs, request.start_sequence)
        if refusal is None:
            return None
        code, message, fenced = refusal
        if fenced and self.fenced is None:
            self.fenced = message
            log.error("fenced: %s", message)
        return code, message

    def trailer(self, *, first: bool = False) -> bytes:
        """Fields appended to a response: protobuf merges concatenated messages."""
        msg = rpb.WALStreamResponse(head_sequence=self.head, primary_time_ns=time.time_ns())
        if self.received_waiters:
            msg.want_received_acks = True
        if first:
            msg.history_id = self.history_id
        return bytes(msg.SerializeToString())

    async def stream(
        self, request: rpb.WALStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        # epochs first: a replica of a newer epoch must not bootstrap from a fenced primary
        problem = self._check_epochs(request, context) or self.check_start(request)
        if self.draining:
            problem = (grpc.StatusCode.UNAVAILABLE, SHUTDOWN_DETAILS)
        if problem is not None:
            log.warning(
                "refused stream for replica %r from %s: %s",
                request.replica_id,
                context.peer(),
                problem[1],
            )
            await context.abort(problem[0], problem[1])
        from_cert = self.cfg.server.replica_id_from_cert
        problem = check_replica_id(request.replica_id, context, from_cert)
        if problem is not None:
            log.warning("refused stream from %s: %s", context.peer(), problem[1])
            await context.abort(problem[0], problem[1])
        replica_id = bound_replica_id(request.replica_id, context, from_cert)
        named = bool(request.replica_id) or from_cert  # else a v1 peer, named after its address
        live = self.live_session(replica_id) if named else None
        if live is not None:
            # the live stream keeps its slot; a dead one is freed by keepalive, then a new
            # stream may take over
            message = (
                f"replica id {replica_id!r} is already streaming from {live.peer} (for "
                f"{time.time() - live.opened_at:.0f}s); a second stream is refused while that "
                "session is alive"
            )
            log.warning("refused stream from %s: %s", context.peer(), message)
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, message)
        no_room = self._admission(replica_id if named else None, request.start_sequence)
        if no_room is not None:
            log.warning("refused stream from %s: %s", context.peer(), no_room)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, no_room)
        session = Session(
            uuid.uuid4().hex,
            replica_id if named else kevodb_peers.session_name(request, context.peer()),
            context.peer(), request.start_sequence,
            sent=request.start_sequence - 1, context=context,
        )
        self.sessions[session.session_id] = session
        if not named:
            kevodb_peers.stream_opened(self, request)  # a slot keyed by its address
        await context.send_initial_metadata(
            ((SESSION_HEADER, session.session_id), epochs_mod.header(self.epochs))
        )
        log.info(
            "replica %r (%s) streaming from %d, session %s, protocol %d, %s",
            session.replica_id, session.peer, session.start, session.session_id,
            request.protocol_version,
            wire.negotiate(request, self.registry.compressors_by_id()).describe(),
        )
        pos = request.start_sequence
        cap = self.cfg.stream.max_batch_bytes
        neg = wire.negotiate(request, self.registry.compressors_by_id())
        heartbeat = self.cfg.stream.heartbeat_s
        cond = self._condition()
        first = True
        try:
            while True:
                if self.draining:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_DETAILS)
                if session.rewind is not None:
                    log.info("session %s rewinds to %d", session.session_id, session.rewind)
                    pos, session.rewind = session.rewind, None
                if pos <= self.head and not self.holds.blocks(session.replica_id, pos):
                    try:
                        records = await asyncio.to_thread(self.wal.read, pos, cap)
                    except SequenceNotRetained as exc:
                        await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
                    # a digest hold set during the read: nothing past it goes out
                    records = self.holds.trim(session.replica_id, records)
                    if not records:
                        continue
                    # before the yield: the replica may ack what it got before we resume
                    session.sent = max(session.sent, records[-1].last_seq)
                    for msg in wire.shape(records, neg, cap):
                        yield msg + self.trailer(first=first)
                        first = False
                    pos = records[-1].last_seq + 1
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
            kevodb_peers.stream_ended(self, session)
            log.info("session %s of replica %r ended", session.session_id, session.replica_id)

    def _admission(self, replica_id: str | None, start: int) -> str | None:
        """Why a new stream is refused for lack of room (streams, slots), or None; creates
        the slot of a named replica."""
        cap = self.cfg.stream.max_streams
        live = sum(
            1 for s in self.sessions.values() if not (s.context is not None and s.context.done())
        )
        if live >= cap:
            return f"{live} streams are being served ([stream] max_streams); try again later"
        if replica_id is not None:
            try:
                self.slots.get(replica_id, start)
            except TooManySlots as exc:
                return str(exc)
        return None

    def _has_work(self, session: Session, pos: int) -> bool:
        sendable = self.head >= pos and not self.holds.blocks(session.replica_id, pos)
        return sendable or session.rewind is not None or self.draining

    def _wake_streams_soon(self) -> None:
        """A digest hold ended: held streams send on."""
        self.tasks.spawn(self._wake_streams(), "primary-wake-streams")

    async def _wake_streams(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    def live_session(self, replica_id: str) -> Session | None:
        """The session streaming to `replica_id`, if one is alive."""
        for session in self.sessions.values():
            if session.replica_id == replica_id and not (
                session.context is not None and session.context.done()
            ):
                return session
        return None

    async def _session_of(self, context: grpc.aio.ServicerContext) -> Session:
        """The live session named by the call's session-id metadata; NOT_FOUND otherwise."""
        for key, value in context.invocation_metadata() or ():
            if key == SESSION_HEADER and str(value) in self.sessions:
                return self.sessions[str(value)]
        await abort(context, grpc.StatusCode.NOT_FOUND, "unknown or missing session-id")

    async def acknowledge(
        self, request: rpb.Ack, context: grpc.aio.ServicerContext
    ) -> rpb.AckResponse:
        session = await self._session_of(context)
        seq = request.acknowledged_up_to
        # a KevoDB v1 replica reports no received level: it has what it made durable
        received = request.received_up_to or seq
        problem = ack_problem(seq, received, session.sent)
        if problem is not None:
            log.warning(
                "refused ack from replica %r (%s): %s", session.replica_id, session.peer, problem
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            self.slots.ack(session.replica_id, seq)
        except TooManySlots as exc:  # a peer without a replica id, named after its address
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        session.received = max(session.received, received)
        if self._ack_waiters:
            cond = self._acks_condition()
            async with cond:
                cond.notify_all()
        return rpb.AckResponse(success=True)

    # -- semi-synchronous writes -----------------------------------------------------------

    def _acks_condition(self) -> asyncio.Condition:
        if self._acks_changed is None:
            self._acks_changed = asyncio.Condition()
        return self._acks_changed

    def acked_by(self, sequence: int, durable: bool) -> list[str]:
        """Replica ids that acknowledged `sequence` (durable, or at least received)."""
        ids = {rid for rid, slot in self.slots.slots.items() if slot.acked >= sequence}
        if not durable:
            ids |= {s.replica_id for s in self.sessions.values() if s.received >= sequence}
        return sorted(ids)

    async def wait_for_acks(
        self, sequence: int, count: int, durable: bool, timeout: float
    ) -> tuple[list[str], bool]:
        """Wait until `count` replicas acknowledged `sequence`; return who did, and whether
        that happened before `timeout` seconds."""
        cond = self._acks_condition()
        self._ack_waiters += 1
        try:
            async with cond:
                await asyncio.wait_for(
                    cond.wait_for(lambda: len(self.acked_by(sequence, durable)) >= count),
                    timeout,
                )
            return self.acked_by(sequence, durable), True
        except TimeoutError:
            return self.acked_by(sequence, durable), False
        finally:
            self._ack_waiters -= 1

    async def negative_acknowledge(
        self, request: rpb.Nack, context: grpc.aio.ServicerContext
    ) -> rpb.NackResponse:
        session = await self._session_of(context)
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

    async def drain(self, timeout_s: float) -> None:
        """Before a clean shutdown: end every stream with UNAVAILABLE `SHUTDOWN_DETAILS` and
        refuse new ones, and wait (at most `timeout_s`) until they are gone, so that the
        server's GOAWAY finds no replica setting up a connection."""
        self.draining = True
        self.holds.clear()
        cond = self._condition()
        async with cond:
            cond.notify_all()
        deadline = time.monotonic() + timeout_s
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.sessions:
            log.warning("%d streams still open after a %gs drain", len(self.sessions), timeout_s)

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher
        if self._store_retry is not None and not self._store_retry.done():
            self._store_retry.cancel()
            try:
                await self._store_retry
            except asyncio.CancelledError:
                pass
        await self.retention.close()
        await self.slots.close()
        self.wal.close()
        self.store.sync()
        self.store.close()


def ack_problem(durable: int, received: int, sent: int) -> str | None:
    """Why an ack is impossible for a session that was sent up to `sent` (it must hold
    durable <= received <= sent), or None."""
    if received < durable:
        return f"ack claims {durable} durable but only {received} received"
    if received > sent:
        return f"ack claims {received} received but this session was sent only up to {sent}"
    return None
