"""The replica: stream the primary's WAL, apply it durably with its position, acknowledge.

Three tasks form a pipeline so that the next response arrives while the current batch is
being applied:

  receive  — reads responses, verifies checksum/layout/order, queues batches (bounded queue:
             when it is full, gRPC flow control holds the primary back)
  apply    — takes everything queued (up to a cap), applies it and the new position in ONE
             store transaction with the store's own sync, in a worker thread
  ack      — reports the durable position; acks coalesce (one in flight, the newest wins)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import zlib
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from operator import attrgetter
from typing import Any

import grpc
import pluggy

from kevo_repl.config import Config
from kevo_repl.errors import PluginError, ReplicationError, StoreDamaged
from kevo_repl.plugin.guards import call_guarded, open_channel_guarded
from kevo_repl.plugin.manager import Registry
from kevo_repl.protocol import blocks
from kevo_repl.protocol import chain as chain_mod
from kevo_repl.protocol.codec import (
    CodecError,
    Columns,
    Entry,
    checksum,
    columns_of,
    decode,
    decode_columns,
)
from kevo_repl.protocol.compression import CODEC_NONE
from kevo_repl.protocol.constants import PROTOCOL_VERSION, SESSION_HEADER, SHUTDOWN_DETAILS
from kevo_repl.protocol.methods import ACKNOWLEDGE, NEGATIVE_ACKNOWLEDGE, STREAM_WAL
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.transport import MAX_MESSAGE_BYTES, call_metadata
from kevo_repl.protocol.wire import Unpacker, UnpackError
from kevo_repl.replica.bootstrap import Bootstrap, BootstrapError, Installed, recover_install
from kevo_repl.replica.damage_policy import DamagePolicy
from kevo_repl.replica.digest_barrier import DigestBarrier
from kevo_repl.replica.epochs import EpochTracker
from kevo_repl.replica.primary_profile import NackPacer, PrimaryProfile
from kevo_repl.replica.read_gate import ReadGate
from kevo_repl.replica.replica_id import stored_replica_id
from kevo_repl.replica.state import TRANSITIONS, State, StateMachine
from kevo_repl.storage.applier import Applier
from kevo_repl.storage.position import Position
from kevo_repl.storage.store import open_store
from kevo_repl.tasks import Supervisor, run_blocking

log = logging.getLogger(__name__)

_seq_of = attrgetter("sequence_number")
_payload_of = attrgetter("payload")
_checksum_of = attrgetter("checksum")
_fragment_of = attrgetter("fragment_type")
# A re-send the primary has not started this many seconds after a nack ends the session
# (a reconnect from the durable position repairs it too).
_NACK_PATIENCE_S = 5.0
# How long a new stream may take to start (its response headers) before it is abandoned.
_CONNECT_TIMEOUT_S = 10.0
#: least pause before reconnecting to a primary that said it is shutting down (times 1-2)
_SHUTDOWN_PAUSE_S = 1.0


class _RestartSession(Exception):
    """The stream is no longer usable; reconnect from the durable position."""


@dataclass
class ReplicaStats:
    reconnects: int = 0
    corrupt_entries: int = 0
    gaps: int = 0
    duplicates_skipped: int = 0
    head_sequence: int = 0
    last_error: str = ""
    backoff_history: deque[float] = field(default_factory=lambda: deque(maxlen=10))


async def _responses(call: Any, first: list[Any]) -> Any:
    """The stream's messages, those in `first` (already read) included: one reading API for
    the whole call, since gRPC forbids mixing read() and iteration."""
    for resp in first:
        yield resp
    while True:
        resp = await call.read()
        if resp is grpc.aio.EOF:
            return
        yield resp


class Replica:
    def __init__(self, cfg: Config, registry: Registry, pm: pluggy.PluginManager) -> None:
        self.cfg = cfg
        self.pm = pm
        # no default id: a shared one would take over another replica's slot
        self.replica_id = cfg.replica.replica_id or stored_replica_id(cfg.data_dir)
        recover_install(cfg.data_dir)  # finish, or discard, a snapshot install cut short
        # a damaged store is answered by [replica] on_damage (kevo_repl.replica.damage_policy)
        self.damage = DamagePolicy(
            cfg.data_dir, cfg.replica.on_damage, cfg.replica.max_damaged_copies
        )
        self._damage_found: StoreDamaged | None = None  # to be moved aside, then reinstalled
        self._reinstall = False  # the store was moved aside: install a snapshot, then stream
        self._loop: asyncio.AbstractEventLoop | None = None  # where damage reports go
        self.store: Applier = self._open_store(cfg, registry)
        self.connector = registry.get("connector", cfg.connector.name)
        self.epochs = EpochTracker(cfg.data_dir)
        # replication is a role: its own token when the primary requires one
        self._auth = call_metadata(
            replace(cfg.connector, token=cfg.replica.replication_token or cfg.connector.token)
        )
        # how errors name the plugins this replica calls
        self._applier_label = registry.label("applier", cfg.applier.name)
        self._connector_label = registry.label("connector", cfg.connector.name)
        # for when our position is not retained: a phase of its own that hands back a store
        self.bootstrap = Bootstrap(cfg, registry, self.connector, self._auth, self.replica_id)
        # apply and ack run as owned tasks: one that fails stops the replica (ERROR)
        self._tasks = Supervisor(f"replica {self.replica_id}", self._task_failed)
        self._ack_forced = False  # the next ack goes out even if it repeats the last one
        self.position: Position = self.store.position()
        self.stats = ReplicaStats()
        #: the last apply failure, kept until an apply succeeds: the root cause of restarts
        self._apply_failure = ""
        self.sm = StateMachine(on_change=self._state_changed)
        self.fatal: str | None = None
        # last sequence handed to the apply queue (>= position.sequence)
        self._received = self.position.sequence
        self._queue: asyncio.Queue[Columns] = asyncio.Queue(cfg.replica.queue_batches)
        #: a queued batch not contiguous with the one before it, applied on its own next
        self._held: Columns | None = None
        #: verify's digest at an exact sequence: apply stops there while it is taken
        self.digest_barrier = DigestBarrier()
        self._split_rest: Columns | None = None  # the part of a batch past the barrier
        self._durable_changed = asyncio.Event()
        self.read_gate = ReadGate(lambda: self.position.sequence)  # Get(min_sequence=)
        self._session_id = ""
        self._channel: Any = None
        self._session_task: asyncio.Task[Any] | None = None  # a session, or a bootstrap
        self._corrupt_at: tuple[int, int] = (0, 0)  # (sequence, times seen corrupt)
        self._primary_history = self.position.history_id
        self._resync = False  # an apply failed: re-stream from the durable position
        self._stopping = False
        compressors = registry.compressors_by_id()
        self._codec_id = int(registry.get("compressor", cfg.compressor.name).codec_id)
        self._unpacker = Unpacker(compressors, MAX_MESSAGE_BYTES)
        # what the primary speaks; a protocol-1 (KevoDB) primary is treated as it works
        self._profile = PrimaryProfile()
        self._pacer = NackPacer(cfg.replica.v1_resend_wait_s)
        #: sent as listener_address (KevoDB's primary requires it); the node sets the bound
        #: address once it serves
        self.listener_address = cfg.node.advertise or cfg.node.listen
        # for lag and stall reporting (monotonic clock unless said otherwise)
        self._connected = False
        self._last_message_at: float | None = None
        self._started_at = time.monotonic()
        self._last_ack_at = 0.0  # when an ack was last delivered
        self._last_progress_at = time.monotonic()
        self._behind_since_primary_ns: int | None = None  # primary clock: head passed us
        self._clock_offset_ns = 0  # primary clock minus ours, from the latest response
        # (when, position) after recent applies: the apply rate
        self._progress_log: deque[tuple[float, int]] = deque(maxlen=64)
        # the log's hash chain after the last received entry (0: unknown, e.g. right after a
        # snapshot install: then the primary's value is adopted), and after each queued batch
        self._recv_chain = self.position.chain
        self._chain_after: dict[int, int] = {}
        self._batch_payloads: list[bytes] = []  # payloads of the entries _verify last accepted
        self._block_chain = 0  # the chain after what _verify_blocks last accepted

    # -- events --------------------------------------------------------------------------------

    def _state_changed(self, old: State, new: State, reason: str) -> None:
        if new is State.ERROR:
            log.warning("replica %s: ERROR: %s", self.replica_id, reason)
        try:
            self.pm.hook.kevo_repl_state_changed(
                node=self.replica_id, old=old.value, new=new.value, reason=reason
            )
        except Exception:
            log.exception("a state_changed hook failed")

    def _move(self, new: State, reason: str = "") -> None:
        """A move of the connection side (connect, error, reconnect): always valid."""
        self.sm.move(new, reason)

    def _progress(self, new: State, reason: str = "") -> None:
        """A move of the apply side. The connection's state dominates: when a reconnect has
        reset the machine meanwhile, the apply side's progress does not move it."""
        if new in TRANSITIONS[self.sm.state]:
            self.sm.move(new, reason)

    # -- a damaged store -------------------------------------------------------------------------

    def _open_store(self, cfg: Config, registry: Registry) -> Applier:
        """The store; one found damaged as it opens is answered by the on_damage policy."""
        try:
            store = open_store(cfg, registry, durable=True)
        except StoreDamaged as exc:
            self.damage.events += 1
            refusal = self.damage.refusal(exc)
            if refusal is not None:
                raise StoreDamaged(refusal, exc.store) from exc
            self.damage.move_aside(exc)
            self._reinstall = True
            store = open_store(cfg, registry, durable=True)
        store.damage_listener = self._store_damaged
        return store

    def _store_damaged(self, exc: StoreDamaged) -> None:
        """The store found itself damaged (in any thread): handled on the event loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_damage, exc)

    def _on_damage(self, exc: StoreDamaged) -> None:
        """Stop (ERROR, no more acks), or end the session so that run() moves the store aside
        and installs a snapshot."""
        if self.fatal is not None or self._damage_found is not None or self._stopping:
            return
        self.damage.events += 1
        refusal = self.damage.refusal(exc)
        if refusal is not None:
            self.fail(refusal)
            return
        self._damage_found = exc
        self._error(f"store damaged: {exc}; moving it aside and installing a snapshot")
        if self._session_task is not None:
            self._session_task.cancel()

    async def _set_damaged_store_aside(self, exc: StoreDamaged) -> bool:
        """Close the damaged store, rename it, and continue from a fresh one (position 0)
        until the install replaces it; False when that failed (the replica stops)."""
        await run_blocking(self.store.close)
        try:
            kept = await run_blocking(self.damage.move_aside, exc)
            fresh = await run_blocking(
                lambda: open_store(self.cfg, self.bootstrap.registry, durable=True)
            )
        except Exception as failed:
            self._fatal(f"store damaged: {exc}; moving it aside failed: {failed}")
            return False
        self._adopt(Installed(fresh, fresh.position()))
        self._reinstall = True
        # until a stream starts again (after the install), this is what status says
        self.stats.last_error = f"store damaged: {exc}; moved it aside to {kept}"
        return True

    # -- main loop -----------------------------------------------------------------------------

    def _start_pipeline(self) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
        return (
            self._tasks.spawn(self._apply_loop(), "replica-apply"),
            self._tasks.spawn(self._ack_loop(), "replica-ack"),
        )

    def _task_failed(self, name: str, exc: BaseException) -> None:
        """A pipeline task died: stop replicating, visibly (ERROR, last_error), instead of
        streaming on into a queue nobody empties."""
        self.fail(f"{name} failed: {type(exc).__name__}: {exc}")

    def fail(self, reason: str) -> None:
        """Stop replicating because of `reason`: ERROR with last_error, run() returns."""
        if self.fatal is None:
            self._fatal(reason)
        self._stopping = True
        if self._session_task is not None:
            self._session_task.cancel()

    async def run(self) -> None:
        """Replicate until stop() or a fatal error (divergence, repeated corruption)."""
        self._loop = asyncio.get_running_loop()
        apply_task, ack_task = self._start_pipeline()
        attempt = 0
        try:
            while not self._stopping and self.fatal is None:
                made_progress = False
                before = self.position.sequence
                bootstrap = False
                primary_stopping = False
                try:
                    if self._reinstall or self._damage_found is not None:
                        bootstrap = True  # a damaged store: install before streaming again
                    else:
                        self._session_task = asyncio.create_task(self._session())
                        await self._session_task
                        self._error("the primary ended the stream")
                except _RestartSession as exc:
                    self._error(str(exc))
                except grpc.aio.AioRpcError as exc:
                    fatal, reason = self._explain(exc)
                    if fatal:
                        self._fatal(reason)
                        return
                    bootstrap = self.bootstrap.wanted(exc)
                    primary_stopping = SHUTDOWN_DETAILS in (exc.details() or "")
                    if not bootstrap:
                        self._error(reason)
                except (ReplicationError, PluginError) as exc:
                    # a plugin bug fails the same way again: stop and say which plugin
                    self._fatal(str(exc))
                    return
                except asyncio.CancelledError:
                    me = asyncio.current_task()
                    if me is not None and me.cancelling():
                        raise  # run() itself is being cancelled: never swallow that
                    if self._stopping or self.fatal:
                        break  # stop() ended the session, or the apply loop failed fatally
                    # an apply failure restarted it: that is the cause to report
                    self._error(self._apply_failure or "session restarted")
                finally:
                    self._connected = False
                    self._pacer.cancel()
                    await self._close_channel()
                if self._resync:
                    # the session is over, so nothing can queue behind this reset
                    self._resync = False
                    self._drain_queue()
                    self._received = self.position.sequence
                    self._recv_chain = self.position.chain
                    self._chain_after.clear()
                bootstrap = bootstrap or self._damage_found is not None
                if bootstrap and not self._stopping:
                    await self._tasks.cancel(apply_task, ack_task)  # a commit runs to its end
                    self._drain_queue()
                    if self.fatal is None:  # the pipeline may have failed as it stopped
                        await self._bootstrap()
                    if self.fatal:
                        return
                    apply_task, ack_task = self._start_pipeline()
                made_progress = self.position.sequence > before or self._received > before
                if self._stopping:
                    break
                attempt = 0 if made_progress else attempt + 1
                self.stats.reconnects += 1
                delay = self._backoff(attempt)
                if primary_stopping:
                    # not connecting while its server sends GOAWAY; jittered, so that the
                    # replicas of a restarted primary do not all reconnect at one instant
                    delay = max(delay, _SHUTDOWN_PAUSE_S * random.uniform(1.0, 2.0))
                self.stats.backoff_history.append(delay)
                await asyncio.sleep(delay)
                if self._stopping or self.fatal is not None:
                    break  # a task failed meanwhile: stay in ERROR
                self._move(State.CONNECTING, "reconnecting")
        finally:
            await self._tasks.cancel(apply_task, ack_task)

    async def _bootstrap(self) -> None:
        """Run the bootstrap phase (the pipeline is stopped) and adopt the store it hands
        back; a failed attempt is reported (ERROR), to be resumed by the next OUT_OF_RANGE."""
        damaged, self._damage_found = self._damage_found, None
        if damaged is not None and not await self._set_damaged_store_aside(damaged):
            return
        if self._reinstall:
            if self.sm.state is State.ERROR:  # ERROR leads back only through CONNECTING
                self._move(State.CONNECTING, "the damaged store was moved aside")
            self._move(State.BOOTSTRAPPING, "the store was damaged")
        else:
            self._move(State.BOOTSTRAPPING, "the primary no longer retains our position")
        self._session_task = asyncio.create_task(
            self.bootstrap.install(self.store), name="replica-bootstrap"
        )
        try:
            installed = await self._session_task
        except BootstrapError as exc:
            if exc.fatal:
                self._fatal(str(exc))
            else:
                self._error(str(exc))
            return
        except asyncio.CancelledError:
            # a switch runs to its end even when cancelled: its store is ours now
            switched = self.bootstrap.take_switched()
            if switched is not None:
                self._adopt(switched)
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise  # run() itself is being cancelled
            return  # stop() ended the install
        self.bootstrap.take_switched()
        self._adopt(installed)
        self._reinstall = False
        self._move(State.CONNECTING, "snapshot installed")

    def _adopt(self, installed: Installed) -> None:
        """Continue from an installed snapshot's store and position."""
        self.store = installed.store
        self.store.damage_listener = self._store_damaged
        self.position = installed.position
        self._received = installed.position.sequence
        # a snapshot carries no hash chain: the next response's chain value is adopted
        self._recv_chain = installed.position.chain
        self._chain_after.clear()
        self._primary_history = installed.position.history_id
        self.stats.head_sequence = max(self.stats.head_sequence, installed.position.sequence)
        self._last_progress_at = time.monotonic()

    def _explain(self, exc: grpc.aio.AioRpcError) -> tuple[bool, str]:
        """Whether a failed stream is fatal, and a message an operator can act on."""
        code, details = exc.code(), exc.details() or ""
        primary = self.cfg.replica.primary
        if code == grpc.StatusCode.OUT_OF_RANGE and self.bootstrap.enabled:
            return False, f"primary no longer retains our position ({details}); bootstrapping"
        if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE):
            return True, f"primary refused the stream: {code.name}: {details}"
        if code == grpc.StatusCode.ALREADY_EXISTS:
            # our own previous session until the primary notices it is dead (keepalive), or a
            # twin with the same id: retry, never take over a live slot
            return False, (
                f"primary {primary} refused the stream (ALREADY_EXISTS: {details}); retrying "
                f"(is another replica configured with id {self.replica_id!r}?)"
            )
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return False, (
                f"primary {primary} denied replication (PERMISSION_DENIED: {details}); check "
                "[replica] replication_token, the client certificate and replica_id"
            )
        if code == grpc.StatusCode.INVALID_ARGUMENT and "replica id" in details:
            return True, f"primary refused our replica id: {details}"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return False, (
                f"primary {primary} refused our credentials ({details}); "
                "check [connector] token"
            )
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return False, (
                f"{primary} does not speak kevo-repl's replication protocol ({details}); "
                "is --primary the primary's address and port?"
            )
        lowered = details.lower()
        if code == grpc.StatusCode.UNAVAILABLE and any(
            w in lowered for w in ("ssl", "handshake", "certificate", "tls")
        ):
            return False, (
                f"TLS handshake with {primary} failed ({details}); check [connector] tls_ca, "
                "tls_cert/tls_key and tls_server_name"
            )
        return False, f"stream from {primary} failed: {code.name}: {details}"

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter, capped; attempt 0 is the first retry."""
        cap = self.cfg.replica.backoff_max_s
        base = min(cap, self.cfg.replica.backoff_initial_s * (2.0**attempt))
        return base * random.uniform(0.5, 1.0)

    def _error(self, reason: str) -> None:
        self.stats.last_error = reason
        self._move(State.ERROR, reason)

    def _fatal(self, reason: str) -> None:
        self.fatal = reason
        self._error(reason)
        log.error("replica %s stopped replicating: %s", self.replica_id, reason)

    def repoint(self, primary: str) -> str:
        """Follow `primary` from now on; return the previous one. The current session ends
        (a snapshot install runs to its end) and the next one connects there."""
        previous, self.cfg.replica.primary = self.cfg.replica.primary, primary
        task = self._session_task
        if (previous != primary and task is not None and not task.done()
                and self.sm.state != State.BOOTSTRAPPING):
            task.cancel()
        log.warning("replica %s repointed from %s to %s", self.replica_id, previous, primary)
        return previous

    async def stop(self) -> None:
        self._stopping = True
        if self._session_task is not None:
            self._session_task.cancel()

    def close(self) -> None:
        self.store.close()

    async def _close_channel(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    # -- one connection ------------------------------------------------------------------------

    async def _session(self) -> None:
        self._channel = open_channel_guarded(
            self.connector, self._connector_label, self.cfg.replica.primary,
            asdict(self.cfg.connector),
        )
        stream = self._channel.unary_stream(
            STREAM_WAL,
            request_serializer=rpb.WALStreamRequest.SerializeToString,
            response_deserializer=rpb.WALStreamResponse.FromString,
        )
        start = self._received + 1
        # a KevoDB primary mislabels compressed payloads: ask it for none
        codec = CODEC_NONE if self._profile.legacy else self._codec_id
        request = rpb.WALStreamRequest(
            start_sequence=start,
            protocol_version=PROTOCOL_VERSION,
            replica_id=self.replica_id,
            history_id=self.position.history_id,
            compression_supported=codec != CODEC_NONE,
            preferred_codec=codec,  # type: ignore[arg-type]  # enum fields take ints
            block_compression=True,
            column_blocks=True,
            listener_address=self.listener_address,
        )
        if self._recv_chain:
            request.chain = self._recv_chain
        self._unpacker.reset()
        call = stream(request, metadata=(*self._auth, self.epochs.header()))
        try:
            # a deadline on the stream's start: a connection that never completes its set-up
            # (seen with a GOAWAY arriving mid-handshake) is abandoned and the channel closed
            metadata = await asyncio.wait_for(call.initial_metadata(), _CONNECT_TIMEOUT_S)
        except TimeoutError:
            call.cancel()
            raise _RestartSession(
                f"the stream from {self.cfg.replica.primary} did not start within "
                f"{_CONNECT_TIMEOUT_S:g}s"
            ) from None
        self.epochs.observe(metadata, self.cfg.replica.primary)
        self._session_id = ""
        for key, value in metadata or ():
            if key == SESSION_HEADER:
                self._session_id = str(value)
        first: list[Any] = []  # a message read before the loop (None: it did not parse)
        if not self._session_id:
            # no session header: either the stream failed before it started (reading raises
            # its error) or a peer that sends none; connected only once a message arrived
            first.append(await call.read())
            if first[0] is grpc.aio.EOF:
                raise _RestartSession(
                    f"{self.cfg.replica.primary} ended the stream before it started"
                )
        log.info(
            "replica %s connected to %s, streaming from %d (session %s)",
            self.replica_id, self.cfg.replica.primary, start, self._session_id,
        )
        self._connected = True
        # connected again: an earlier failure is history, unless applying still fails
        self.stats.last_error = self._apply_failure
        self._last_message_at = self._last_progress_at = time.monotonic()
        self._move(State.STREAMING_ENTRIES, f"connected, streaming from {start}")
        # a new session (say, after the primary restarted, or after a snapshot install) learns
        # our durable position at once, not with the next write: the slot's acked position is
        # true while idle, and a slot lost before an install holds WAL again from there
        self._durable_changed.set()
        loop = asyncio.get_running_loop()
        nacked: tuple[int, float] | None = None  # (sequence asked for, when)
        renegotiate, is_first = False, True
        async for resp in _responses(call, first):
            if resp is None:
                # gRPC hands over None for a message that does not parse (damaged in flight)
                self._count_corrupt(self._received + 1)
                raise _RestartSession("a response from the primary did not parse; reconnecting")
            if is_first:
                renegotiate, is_first = self._learn_primary(resp, codec), False
            else:
                self._profile.observe(resp)
            if resp.history_id:
                self._check_history(resp.history_id)
            self._observe(resp)
            corrupt_before = self.stats.corrupt_entries
            batch: Columns | None = None
            problem: str | None = None
            try:
                plain = self._unpacker.unpack(resp)
            except UnpackError as exc:
                self._count_corrupt(self._received + 1)
                problem = f"corrupt response: {exc}"
            else:
                if plain is not None and plain.blocks:
                    batch, problem = self._verify_blocks(plain)
                elif plain is not None and plain.entries:
                    batch, problem = self._verify(plain)
            if problem is not None:
                self._unpacker.reset()  # a re-send starts at a batch boundary
            if batch is not None and batch.size:
                nacked = None
                if self.sm.state is State.WAITING_FOR_DATA:
                    self._progress(State.STREAMING_ENTRIES, "entries arrived")
                assert plain is not None
                chain_after = (self._block_chain if plain.blocks
                               else self._extend_chain(plain, batch))
                self._chain_after[batch.last_seq] = chain_after
                await self._queue.put(batch)
                self._received = batch.last_seq
                self._recv_chain = chain_after
                if resp.want_received_acks:  # a semi-sync writer waits for receipt
                    self._durable_changed.set()
            expected = self._received + 1
            if problem is not None and self._profile.legacy:
                # it re-sends its unacknowledged window by itself, and a nack can deadlock it
                self._pacer.problem(expected, problem, lambda: self._received, self._paced_nack)
            elif problem is not None and (
                # a corrupt entry is asked for every time (bounded by max_corrupt_retries);
                # a gap once: what was already in flight before the re-send shows the same gap
                self.stats.corrupt_entries > corrupt_before
                or nacked is None
                or nacked[0] != expected
            ):
                await self._nack(expected, problem)
                nacked = (expected, loop.time())
            elif nacked is not None and loop.time() - nacked[1] > _NACK_PATIENCE_S:
                raise _RestartSession(
                    f"the primary did not re-send from {nacked[0]}; reconnecting"
                )
            if renegotiate:
                raise _RestartSession(
                    "the primary speaks protocol 1 (KevoDB), which mislabels compressed "
                    "payloads; reconnecting with codec none"
                )

    def _learn_primary(self, resp: rpb.WALStreamResponse, asked_codec: int) -> bool:
        """Take the primary's protocol from a stream's first response; True when the stream
        must be reopened with codec none (a KevoDB primary asked for compression)."""
        self._profile.first_response(resp)
        self._unpacker.accept_mislabelled = self._profile.legacy
        renegotiate = self._profile.legacy and asked_codec != CODEC_NONE
        if self._profile.legacy and not renegotiate:
            # tell it our position, even if the stream's start already did: the ack that
            # counts is one its session knows, and its re-send window starts there
            self._ack_forced = True
            self._durable_changed.set()
        return renegotiate

    async def _paced_nack(self, sequence: int, reason: str) -> None:
        """A nack from the pacer's timer: a failure ends the session, as inline nacks do."""
        if self._channel is None:
            return
        try:
            await self._nack(sequence, reason)
        except _RestartSession as exc:
            self.stats.last_error = str(exc)
            if self._session_task is not None:
                self._session_task.cancel()

    def _extend_chain(self, plain: rpb.WALStreamResponse, batch: Columns) -> int:
        """The hash chain after `batch`, checked against the primary's where the response
        carries it: a mismatch means this replica's log and the primary's differ."""
        entries = plain.entries
        payloads = self._batch_payloads  # what _verify accepted, in order
        assert len(payloads) == batch.size
        value = self._recv_chain
        if value:
            value = chain_mod.over(value, payloads)
        if plain.HasField("chain") and batch.last_seq == entries[-1].sequence_number:
            if value and value != plain.chain:
                raise ReplicationError(
                    f"divergence: after sequence {batch.last_seq} this replica's hash chain is "
                    f"{value:016x} but the primary's is {plain.chain:016x}; entries "
                    f"{batch.first_seq}..{batch.last_seq} were not applied"
                )
            value = plain.chain
        return value

    def _check_history(self, history_id: str) -> None:
        mine = self.position.history_id
        if mine and mine != history_id and self.position.sequence > 0:
            raise ReplicationError(
                f"primary history {history_id} differs from this replica's {mine}: diverged"
            )
        self._primary_history = history_id

    def _verify_blocks(self, resp: rpb.WALStreamResponse) -> tuple[Columns | None, str | None]:
        """Column blocks (protocol 2): checked and sliced with no per-entry Python code."""
        got = blocks.receive(resp.blocks, self._received + 1, self._recv_chain)
        self.stats.duplicates_skipped += got.skipped
        if got.corrupt:
            self._count_corrupt(self._received + 1 + (got.columns.size if got.columns else 0))
        elif got.problem is not None:
            self.stats.gaps += 1
        self._block_chain = got.chain
        return got.columns, got.problem

    def _verify(self, resp: rpb.WALStreamResponse) -> tuple[Columns | None, str | None]:
        """The entries of `resp` that continue the received sequence, decoded once into
        columns, and the first problem."""
        expected = self._received + 1
        if resp.compressed and resp.codec != rpb.NONE:
            return None, f"compressed payloads (codec {resp.codec}) were not negotiated"
        fast = self._verify_fast(resp.entries, expected)
        if fast is not None:
            return fast, None
        entries, problem = self._verify_each(resp.entries, expected)
        return columns_of(entries, expected), problem

    def _verify_fast(self, entries: Any, expected: int) -> Columns | None:
        """The whole response at batch level (C-level maps, no per-entry Python code) when
        it is clean: contiguous from at most `expected`, unfragmented, checksums and layout
        right. None when anything is off; _verify_each then finds and reports it."""
        entries = list(entries)  # one wrapper object per entry, reused by every map below
        n = len(entries)
        seqs = list(map(_seq_of, entries))
        first = seqs[0]
        if first > expected or seqs != list(range(first, first + n)):
            return None
        skip = expected - first
        if skip >= n:
            self.stats.duplicates_skipped += n
            return Columns(expected, [], [], [])
        if skip:
            entries = entries[skip:]
            seqs = seqs[skip:]
        if list(map(_fragment_of, entries)).count(rpb.FULL) != len(seqs):
            return None
        payloads = list(map(_payload_of, entries))
        crcs = list(map(_checksum_of, entries))
        if crcs != list(map(zlib.crc32, payloads)) and crcs.count(0) != len(crcs):
            return None  # a mismatch, or a mix of set and unset checksums
        out = decode_columns(payloads, expected)
        if out is not None:
            self.stats.duplicates_skipped += skip
            self._batch_payloads = payloads  # for the hash chain, without another pass
        return out

    def _verify_each(self, entries: Any, expected: int) -> tuple[list[Entry], str | None]:
        out: list[Entry] = []
        payloads: list[bytes] = []
        self._batch_payloads = payloads
        for e in entries:
            seq = e.sequence_number
            if seq < expected:
                self.stats.duplicates_skipped += 1
                continue
            if seq > expected:
                self.stats.gaps += 1
                return out, f"gap: expected sequence {expected}, got {seq}"
            if e.fragment_type != rpb.FULL:
                return out, f"fragmented entry {seq} is not supported yet"
            payload = e.payload
            try:
                if e.checksum and checksum(payload) != e.checksum:
                    raise CodecError(f"checksum mismatch in entry {seq}")
                entry = decode(payload, seq)
            except CodecError as exc:
                self._count_corrupt(seq)
                return out, f"corrupt entry: {exc}"
            out.append(entry)
            payloads.append(payload)
            expected += 1
        return out, None

    def _count_corrupt(self, seq: int) -> None:
        self.stats.corrupt_entries += 1
        times = self._corrupt_at[1] + 1 if self._corrupt_at[0] == seq else 1
        self._corrupt_at = (seq, times)
        log.warning("replica %s: entry %d is corrupt (%d times)", self.replica_id, seq, times)
        if times > self.cfg.replica.max_corrupt_retries:
            raise ReplicationError(
                f"entry {seq} arrived corrupt {times} times; giving up on this primary"
            )

    async def _nack(self, sequence: int, reason: str) -> None:
        log.info("replica %s: %s; asking for a re-send from %d", self.replica_id, reason, sequence)
        nack = self._channel.unary_unary(
            NEGATIVE_ACKNOWLEDGE,
            request_serializer=rpb.Nack.SerializeToString,
            response_deserializer=rpb.NackResponse.FromString,
        )
        try:
            await nack(
                rpb.Nack(missing_from_sequence=sequence),
                metadata=((SESSION_HEADER, self._session_id), *self._auth),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            raise _RestartSession(f"nack failed ({exc.code().name}), reconnecting") from exc

    # -- apply -----------------------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        cap = self.cfg.replica.max_apply_entries
        while True:
            batch = await self._next_batch(cap)
            await self.digest_barrier.hold(self.position.sequence)
            # After a failed apply the queue may still hold entries from before the reset:
            # apply only what continues the durable position, exactly once.
            done = self.position.sequence
            if batch.first_seq <= done:
                skipped = min(batch.size, done - batch.first_seq + 1)
                self.stats.duplicates_skipped += skipped
                batch = Columns(
                    done + 1, batch.ops[skipped:], batch.keys[skipped:], batch.values[skipped:]
                )
            if not batch.size or batch.first_seq != done + 1:
                continue
            # the barrier's sequence becomes a batch boundary (its stored chain: 0 = unknown)
            batch, self._split_rest = self.digest_barrier.split(batch)
            self._progress(State.APPLYING_ENTRIES, f"{batch.size} entries")
            history = self._primary_history or self.position.history_id
            # apply and sync in one trip to the worker thread: a second trip would wait for
            # the event loop (busy verifying the next response) while the store sits idle
            chain = self._chain_after.pop(batch.last_seq, 0)
            for seq in [s for s in self._chain_after if s < batch.last_seq]:
                del self._chain_after[seq]
            try:
                # a cancel waits for a running commit: never one under a closing store
                new_pos, sync_error = await run_blocking(
                    self._apply_durably, batch, history, chain,
                    finished_under_cancel=self._durable_under_cancel,
                )
            except PluginError as exc:
                # a bug in the applier, not a store failure: retrying repeats it
                self._drain_queue()
                self._stop_on_plugin_failure(str(exc))
                return
            except StoreDamaged as exc:
                # nothing of it applied; never retried into a damaged store (on_damage)
                self._drain_queue()
                self._on_damage(exc)
                return
            except Exception as exc:
                # Nothing of this batch is applied (one transaction); drop what is queued
                # and re-stream from the durable position.
                log.error("replica %s: apply failed: %s", self.replica_id, exc)
                self._drain_queue()
                self._resync = True
                self._apply_failure = self.stats.last_error = f"apply failed: {exc}"
                if self._session_task is not None:
                    self._session_task.cancel()
                continue
            self._progress(State.FSYNC_PENDING, f"committed through {new_pos.sequence}")
            if isinstance(sync_error, StoreDamaged):
                self._drain_queue()  # committed, maybe not durable: never acknowledged
                self._on_damage(sync_error)
                return
            if sync_error is not None:
                # committed but maybe not durable: never acknowledge it, never re-apply it
                self._drain_queue()
                reason = (str(sync_error) if isinstance(sync_error, PluginError)
                          else f"{self._applier_label} failed in sync: {sync_error}")
                self._stop_on_plugin_failure(
                    f"{reason} (entries through {new_pos.sequence} are committed, not acknowledged)"
                )
                return
            self.position = new_pos
            if self._apply_failure:  # applying works again: the failure is history
                if self.stats.last_error == self._apply_failure:
                    self.stats.last_error = ""
                self._apply_failure = ""
            self._last_progress_at = time.monotonic()
            self._progress_log.append((self._last_progress_at, new_pos.sequence))
            self._progress(State.ACKNOWLEDGING, f"durable through {new_pos.sequence}")
            self._durable_changed.set()
            self.read_gate.advanced()
            try:
                self.pm.hook.kevo_repl_batch_applied(
                    node=self.replica_id,
                    first_seq=batch.first_seq,
                    last_seq=batch.last_seq,
                    count=batch.size,
                )
            except Exception:
                log.exception("a batch_applied hook failed")
            if self._queue.empty():
                self._progress(State.WAITING_FOR_DATA, "caught up with what was received")
            else:
                self._progress(State.APPLYING_ENTRIES, "more entries queued")

    def _stop_on_plugin_failure(self, reason: str) -> None:
        """The apply side cannot go on: ERROR with the reason, and end the session so that
        run() returns instead of reconnecting into the same failure."""
        self._fatal(reason)
        if self._session_task is not None:
            self._session_task.cancel()

    async def _next_batch(self, cap: int) -> Columns:
        """The next queued batch, joined with every contiguous one queued behind it (up to
        `cap` entries): what queued up while the last commit ran goes into one transaction."""
        if self._split_rest is not None:  # ahead of anything held or queued; on its own
            rest, self._split_rest = self._split_rest, None
            return rest
        first = self._held if self._held is not None else await self._queue.get()
        self._held = None
        parts = [first]
        size = first.size
        while size < cap and not self._queue.empty():
            part = self._queue.get_nowait()
            if part.first_seq != parts[-1].last_seq + 1:
                self._held = part  # not contiguous (queued before a reset): on its own
                break
            parts.append(part)
            size += part.size
        if len(parts) == 1:
            return first
        return Columns(
            first.first_seq,
            list(itertools.chain.from_iterable(p.ops for p in parts)),
            list(itertools.chain.from_iterable(p.keys for p in parts)),
            list(itertools.chain.from_iterable(p.values for p in parts)),
        )

    def _apply_durably(
        self, batch: Columns, history: str, chain: int
    ) -> tuple[Position, BaseException | None]:
        """In a worker thread: apply (raising if that fails), then sync; a failed sync is
        returned, for the apply loop to stop on."""
        label = self._applier_label
        new_pos = call_guarded(
            label, "apply", self.store.apply_columns, batch, history, chain, returns=Position
        )
        try:
            call_guarded(label, "sync", self.store.sync)
        except Exception as exc:
            return new_pos, exc
        return new_pos, None

    def _durable_under_cancel(self, result: tuple[Position, BaseException | None]) -> None:
        """A commit that ran to its end while the apply task was cancelled: if it was synced,
        its position is ours (status must not claim less than the store holds)."""
        new_pos, sync_error = result
        if sync_error is None:
            self.position = new_pos

    def _drain_queue(self) -> None:
        self._held = None
        self._split_rest = None
        while not self._queue.empty():
            self._queue.get_nowait()

    # -- ack -------------------------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        """One ack in flight at a time, always the newest positions: acks coalesce and never
        hold up receive or apply. Each session is told our position once at its start."""
        sent: tuple[str, int, int] = ("", 0, 0)  # (session, durable, received) delivered
        while True:
            await self._durable_changed.wait()
            self._durable_changed.clear()
            durable = self.position.sequence
            received = max(self._received, durable)
            session = self._session_id
            if self._channel is None or not session or self.fatal is not None:
                continue  # a stopped replica (say, its store is damaged) acks nothing more
            if self._damage_found is not None or self._reinstall:
                continue
            stale = time.monotonic() - self._last_ack_at >= self.cfg.stream.heartbeat_s
            forced, self._ack_forced = self._ack_forced, False
            if (sent[0] == session and durable <= sent[1] and received <= sent[2]
                    and not stale and not forced):
                continue
            ack = self._channel.unary_unary(
                ACKNOWLEDGE,
                request_serializer=rpb.Ack.SerializeToString,
                response_deserializer=rpb.AckResponse.FromString,
            )
            try:
                await ack(
                    rpb.Ack(acknowledged_up_to=durable, received_up_to=received),
                    metadata=((SESSION_HEADER, session), *self._auth),
                    timeout=10,
                )
                sent = (session, durable, received)
                self._last_ack_at = time.monotonic()
            except (grpc.aio.AioRpcError, RuntimeError) as exc:
                # the next batch (or the next session) acks again
                log.info("replica %s: ack of %d not delivered: %s", self.replica_id, durable, exc)
            except asyncio.CancelledError:
                # grpc.aio cancels a call in flight when its channel closes (a session ended):
                # that ends this ack, not the ack loop, unless the loop itself is cancelled
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                log.info("replica %s: ack of %d cancelled with its channel", self.replica_id,
                         durable)

    # -- observation -----------------------------------------------------------------------------

    def _observe(self, resp: rpb.WALStreamResponse) -> None:
        """Head and clock from a response (heartbeats included): the basis of lag."""
        now = time.monotonic()
        self._last_message_at = now
        if now - self._last_ack_at >= self.cfg.stream.heartbeat_s:
            # idle: a heartbeat is answered with an ack, so the primary's view of this
            # replica (last_ack_age_s) stays fresh
            self._durable_changed.set()
        if resp.primary_time_ns:
            self._clock_offset_ns = resp.primary_time_ns - time.time_ns()
        if resp.head_sequence:
            self.stats.head_sequence = resp.head_sequence
            if resp.head_sequence <= self.position.sequence:
                self._behind_since_primary_ns = None
            elif self._behind_since_primary_ns is None:
                self._behind_since_primary_ns = resp.primary_time_ns or (
                    time.time_ns() + self._clock_offset_ns
                )

    def lag(self) -> tuple[int, float, bool]:
        """(entries behind, seconds behind on the primary's clock, stalled)."""
        head = max(self.stats.head_sequence, self.position.sequence)
        entries = head - self.position.sequence
        now = time.monotonic()
        stall_after = self.cfg.stream.stall_after_s
        # a connection that delivers not even heartbeats hides how far behind we are
        # (not from a primary known to send no heartbeats: KevoDB's is silent whenever idle)
        silent = (
            not (self._profile.legacy and not self._profile.heartbeats)
            and self._last_message_at is not None
            and now - self._last_message_at > max(stall_after, 3 * self.cfg.stream.heartbeat_s)
        )
        if not self._connected:
            # no news from the primary: entries are as last heard (a floor), and seconds
            # grow at least with the silence, since we cannot know we are current
            heard = self._last_message_at or self._started_at
            return entries, max(self._seconds_behind(), now - heard), False
        if entries == 0:
            self._behind_since_primary_ns = None
            return 0, 0.0, silent
        seconds = self._seconds_behind()
        stuck = now - self._last_progress_at > stall_after
        return entries, seconds, stuck or silent

    def _seconds_behind(self) -> float:
        if self._behind_since_primary_ns is None:
            return 0.0
        primary_now = time.time_ns() + self._clock_offset_ns
        return max(0.0, (primary_now - self._behind_since_primary_ns) / 1e9)

    def apply_rate(self, window_s: float = 5.0) -> float:
        """Entries applied per second over the last `window_s` seconds."""
        now = time.monotonic()
        recent = [(t, s) for t, s in self._progress_log if now - t <= window_s]
        if not recent:
            return 0.0
        t0, s0 = recent[0]
        if len(recent) == 1 or now - t0 <= 0:
            return 0.0
        return (self.position.sequence - s0) / (now - t0)

    def status(self) -> dict[str, Any]:
        lag_entries, lag_seconds, stalled = self.lag()
        return {
            "role": "replica",
            "state": self.sm.state.value,
            "last_applied": self.position.sequence,
            "head_sequence": max(self.stats.head_sequence, self.position.sequence),
            "history_id": self.position.history_id,
            "applied_entries": self.position.applied_entries,
            "primary": self.cfg.replica.primary,
            "replica_id": self.replica_id,
            "last_error": self.fatal or self.stats.last_error,
            "reconnects": self.stats.reconnects,
            "corrupt_entries": self.stats.corrupt_entries,
            "gaps": self.stats.gaps,
            "duplicates_skipped": self.stats.duplicates_skipped,
            "lag_entries": lag_entries,
            "lag_seconds": lag_seconds,
            "stalled": stalled,
            "connected": self._connected,
            "last_message_age_s": (
                time.monotonic() - self._last_message_at if self._last_message_at else -1.0
            ),
            "backoff_history_s": list(self.stats.backoff_history),
            "received_sequence": max(self._received, self.position.sequence),
            "apply_rate": self.apply_rate(),
            "mislabelled_payloads": self._unpacker.mislabelled,
            "store_damage_events": self.damage.events,
            **self._profile.status(),
        }
