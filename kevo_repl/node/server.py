"""A node process: one gRPC server with the replication service (primary) and the node API."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from kevo_repl.config import Config, parse_address
from kevo_repl.errors import KevoReplError, StoreDamaged
from kevo_repl.ha.discarded import discarded_entries
from kevo_repl.node import decoding
from kevo_repl.node.background_verify import BackgroundVerifier
from kevo_repl.node.decoding import Undecodable, lenient
from kevo_repl.node.digest_at import DigestRefused, digest_at, digest_response
from kevo_repl.node.memguard import MemoryGuard
from kevo_repl.node.requests import request_problem
from kevo_repl.plugin.manager import build_node_registry
from kevo_repl.protocol.methods import NODE_SERVICE, REPLICATION_SERVICE
from kevo_repl.protocol.proto import node_pb2 as npb
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.rpc_abort import abort
from kevo_repl.protocol.transport import TokenInterceptor, server_credentials, server_options
from kevo_repl.replica.read_gate import ReadGate, TooManyWaitingReads
from kevo_repl.replica.replica import Replica
from kevo_repl.storage import store as store_mod
from kevo_repl.storage.applier import Applier
from kevo_repl.storage.store import lock_data_dir, write_file_atomically
from kevo_repl.tasks import Supervisor

if TYPE_CHECKING:
    # the primary's modules load only in a primary (a replica starts faster): local imports
    from kevo_repl.primary.primary import Primary

log = logging.getLogger(__name__)

ADDRESS_FILE = "node.addr"
#: a primary's clean shutdown ends its replication streams first and waits this long at most
#: for them to close, before the server sends GOAWAY (docs/DESIGN.md, "GOAWAY growth")
DRAIN_TIMEOUT_S = 2.0


def _identity(data: bytes) -> bytes:
    return data


def replication_handler(primary: Primary) -> grpc.GenericRpcHandler:
    # StreamWAL sends bytes already in wire form (WAL records), so its serializer is the
    # identity: catch-up costs a file read, not a re-encode per entry.
    return grpc.method_handlers_generic_handler(
        REPLICATION_SERVICE,
        {
            "StreamWAL": grpc.unary_stream_rpc_method_handler(
                decoding.server_stream(primary.stream),
                request_deserializer=lenient(rpb.WALStreamRequest),
                response_serializer=_identity,
            ),
            "Acknowledge": grpc.unary_unary_rpc_method_handler(
                decoding.unary(primary.acknowledge),
                request_deserializer=lenient(rpb.Ack),
                response_serializer=rpb.AckResponse.SerializeToString,
            ),
            "NegativeAcknowledge": grpc.unary_unary_rpc_method_handler(
                decoding.unary(primary.negative_acknowledge),
                request_deserializer=lenient(rpb.Nack),
                response_serializer=rpb.NackResponse.SerializeToString,
            ),
            "Snapshot": grpc.unary_stream_rpc_method_handler(
                decoding.server_stream(primary.retention.snapshots.serve),
                request_deserializer=lenient(rpb.SnapshotRequest),
                response_serializer=rpb.SnapshotChunk.SerializeToString,
            ),
        },
    )


class RoleHandler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    """The replication service as this node's role answers it now: a live promotion swaps
    `current` from the replica's refusal to the primary's service."""

    def __init__(self, current: grpc.GenericRpcHandler) -> None:
        self.current = current

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.current.service(details)


def not_a_primary_handler(cfg: Config) -> grpc.GenericRpcHandler:
    """A replica's answer to a replica that streams from it: point it at the primary.

    UNAVAILABLE, not a refusal for good: during a failover a replica is repointed at a node
    that is still being promoted, and must retry until it serves."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"this node is a replica, not a primary; its primary is {cfg.replica.primary}: "
            f"point --primary there",
        )

    def handler(fn: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_stream_rpc_method_handler(fn, request_deserializer=_identity,
                                                     response_serializer=_identity)

    return grpc.method_handlers_generic_handler(
        "kevo.replication.WALReplicationService", {"StreamWAL": handler(refuse)},
    )


class NodeService:
    """The client/operator API, on primary and replica alike."""

    def __init__(
        self, cfg: Config, primary: Primary | None, replica: Replica | None,
        memory: MemoryGuard | None = None,
    ) -> None:
        self.memory = memory
        self.cfg = cfg
        #: set by the node: promote this replica in place (Promote)
        self.promote_self: Callable[[int | None], Awaitable[npb.PromoteResponse]] | None = None
        #: set aside by rejoins (which run while the node is stopped): read once, at start
        self.discarded_entries = discarded_entries(cfg.data_dir)
        self.primary = primary
        self.replica = replica
        assert primary is not None or replica is not None
        # a primary's position moves with its own writes; the gate polls it
        self.read_gate = (replica.read_gate if replica is not None
                          else ReadGate(lambda: self.store.position().sequence))
        #: a replica's background verification ([replica] verify_interval_s), set by Node
        self.verifier: BackgroundVerifier | None = None
        #: WriteStream results read but not yet sent, over all streams, and the peak of it
        self.write_stream_pending = 0
        self.write_stream_pending_peak = 0

    @property
    def store(self) -> Applier:
        """The node's store now: a replica switches stores when it installs a snapshot."""
        if self.replica is not None:
            return self.replica.store
        assert self.primary is not None
        return self.primary.store

    async def _write(self, request: npb.WriteRequest) -> npb.WriteResponse:
        """One write; raises _WriteFailed with the gRPC status it deserves."""
        if self.primary is None:
            raise _WriteFailed(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this node is a read-only replica; send writes to the primary at "
                f"{self.cfg.replica.primary}",
            )
        from kevo_repl.primary.idempotency import KeyReused
        from kevo_repl.primary.primary import PrimaryFenced, PrimaryUnavailable, WriteRejected

        problem = request_problem(request)
        if problem is not None:
            raise _WriteFailed(grpc.StatusCode.INVALID_ARGUMENT, problem)
        mutations = [(int(m.op), bytes(m.key), bytes(m.value)) for m in request.mutations]
        # before the write is queued, so that the response carrying it asks for receipt acks
        received = bool(request.wait_for) and request.level == npb.ACK_RECEIVED
        self.primary.received_waiters += received
        try:
            duplicate = False
            try:
                if request.HasField("idempotency_key"):
                    first, last, duplicate = await self.primary.write_once(
                        mutations, request.idempotency_key
                    )
                else:
                    first, last = await self.primary.write(mutations)
            except WriteRejected as exc:
                raise _WriteFailed(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
            except (PrimaryFenced, KeyReused) as exc:
                raise _WriteFailed(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
            except PrimaryUnavailable as exc:
                raise _WriteFailed(grpc.StatusCode.UNAVAILABLE, str(exc)) from exc
            resp = npb.WriteResponse(first_sequence=first, last_sequence=last,
                                     request_id=request.request_id, duplicate=duplicate,
                                     epoch=self.primary.epochs[-1].number)
            if request.wait_for:
                await self._wait_for_replicas(request, resp)
            return resp
        finally:
            self.primary.received_waiters -= received

    async def _wait_for_replicas(self, request: npb.WriteRequest, resp: npb.WriteResponse) -> None:
        assert self.primary is not None
        durable = request.level == npb.ACK_DURABLE
        level = "durable" if durable else "received"
        timeout = request.timeout_s or self.cfg.semisync.default_timeout_s
        acked, ok = await self.primary.wait_for_acks(
            resp.last_sequence, request.wait_for, durable, timeout
        )
        resp.acked_by.extend(acked)
        if ok:
            return
        what = (
            f"write {resp.first_sequence}-{resp.last_sequence} is durable on the primary, but "
            f"only {len(acked)} of {request.wait_for} replicas acknowledged it ({level}) within "
            f"{timeout:g}s: {', '.join(acked) or 'none'}"
        )
        if request.on_timeout == npb.ON_TIMEOUT_DEGRADE:
            self.primary.semisync_degraded += 1
            log.warning("semi-sync degraded: %s", what)
            resp.degraded = True
            return
        raise _WriteFailed(grpc.StatusCode.DEADLINE_EXCEEDED, what)

    async def Write(  # gRPC method names are CamelCase
        self, request: npb.WriteRequest, context: grpc.aio.ServicerContext
    ) -> npb.WriteResponse:
        try:
            return await self._write(request)
        except _WriteFailed as exc:
            await abort(context, exc.code, exc.message)

    async def WriteStream(
        self, batches: AsyncIterator[npb.WriteBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[npb.WriteResults]:
        """Every write runs at once (they group-commit together); answers go out as they
        complete, all that completed meanwhile in one message. Flow control: a write holds
        one of `[stream] max_write_stream_pending` places from when its request is read until
        its result is handed to gRPC, so a client that never reads its results stops the
        primary from reading its requests; memory stays bounded."""
        limit = self.cfg.stream.max_write_stream_pending
        done: asyncio.Queue[npb.WriteResponse | None] = asyncio.Queue(limit + 1)
        slots = asyncio.Semaphore(limit)
        tasks: set[asyncio.Task[None]] = set()
        held = 0  # this stream's places taken: read, not yet sent
        refused = ""  # why the stream's requests were refused (undecodable)

        async def one(request: npb.WriteRequest) -> None:
            try:
                resp = await self._write(request)
            except _WriteFailed as exc:
                resp = npb.WriteResponse(request_id=request.request_id,
                                         error_code=exc.code.value[0], error=exc.message)
            done.put_nowait(resp)  # never blocks: at most `limit` results exist

        async def many(requests: list[npb.WriteRequest]) -> None:
            # asynchronous writes of one message: enqueued together, one wait for all
            from kevo_repl.primary.primary import PrimaryFenced, PrimaryUnavailable

            assert self.primary is not None
            try:
                results = await self.primary.write_many(
                    [[(int(m.op), bytes(m.key), bytes(m.value)) for m in r.mutations]
                     for r in requests]
                )
            except PrimaryUnavailable as exc:
                # every write of the message fails the same way
                results = [exc] * len(requests)  # type: ignore[list-item]  # reported below
            for request, result in zip(requests, results, strict=True):
                if isinstance(result, tuple):
                    resp = npb.WriteResponse(first_sequence=result[0], last_sequence=result[1],
                                             request_id=request.request_id,
                                             epoch=self.primary.epochs[-1].number)
                else:
                    code = (grpc.StatusCode.FAILED_PRECONDITION
                            if isinstance(result, PrimaryFenced)
                            else grpc.StatusCode.UNAVAILABLE
                            if isinstance(result, PrimaryUnavailable)
                            else grpc.StatusCode.INVALID_ARGUMENT)
                    resp = npb.WriteResponse(request_id=request.request_id,
                                             error_code=code.value[0], error=str(result))
                done.put_nowait(resp)

        def spawn(coro: Any) -> None:
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def read_all() -> None:
            nonlocal held, refused
            async for batch in batches:
                if isinstance(batch, Undecodable):
                    refused = batch.message
                    break
                plain = []
                for request in batch.writes:
                    problem = request_problem(request)
                    await slots.acquire()
                    held += 1
                    self.write_stream_pending += 1
                    self.write_stream_pending_peak = max(
                        self.write_stream_pending_peak, self.write_stream_pending
                    )
                    if problem is not None:
                        done.put_nowait(npb.WriteResponse(
                            request_id=request.request_id,
                            error_code=grpc.StatusCode.INVALID_ARGUMENT.value[0], error=problem,
                        ))
                    elif (request.wait_for or self.primary is None
                          or request.HasField("idempotency_key")):
                        spawn(one(request))
                    else:
                        plain.append(request)
                if plain:
                    spawn(many(plain))
            await asyncio.gather(*tasks)
            done.put_nowait(None)

        reader = asyncio.create_task(read_all())
        try:
            finished = False
            while not finished:
                results = [await done.get()]
                while not done.empty():
                    results.append(done.get_nowait())
                finished = results[-1] is None
                out = [r for r in results if r is not None]
                if out:
                    yield npb.WriteResults(results=out)
                    # sent: their places go back to the reader
                    for _ in out:
                        slots.release()
                    held -= len(out)
                    self.write_stream_pending -= len(out)
            await reader
            if refused:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused)
        finally:
            reader.cancel()
            self.write_stream_pending -= held  # the stream's places go with it

    async def Get(
        self, request: npb.GetRequest, context: grpc.aio.ServicerContext
    ) -> npb.GetResponse:
        if request.min_sequence:
            await self._wait_applied(request.min_sequence, context)
        if not request.key:  # a pure wait (`kevo-repl wait`): no key is read
            return npb.GetResponse(found=False, sequence=self.store.position().sequence)
        try:
            value = await asyncio.to_thread(self.store.get, request.key)
        except StoreDamaged as exc:  # never an answer from a damaged store
            await abort(context, grpc.StatusCode.DATA_LOSS, str(exc))
        seq = self.store.position().sequence
        if value is None:
            return npb.GetResponse(found=False, sequence=seq)
        return npb.GetResponse(found=True, value=value, sequence=seq)

    async def _wait_applied(self, sequence: int, context: grpc.aio.ServicerContext) -> None:
        """Hold a read until this node applied `sequence`, within the call's deadline (less a
        margin to answer in); FAILED_PRECONDITION when it does not get there in time."""
        remaining = context.time_remaining()
        budget = _NO_DEADLINE_WAIT_S if remaining is None else max(0.0, remaining - 0.05)
        try:
            ok = await self.read_gate.wait(sequence, budget)
        except TooManyWaitingReads as exc:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if not ok:
            applied = self.store.position().sequence
            where = (f"; its primary is {self.cfg.replica.primary}" if self.replica is not None
                     else "")
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this node has applied through {applied}, not yet {sequence}, after "
                f"waiting {budget:.3g}s{where}",
            )

    async def Status(
        self, request: npb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> npb.StatusResponse:
        if self.primary is not None:  # its epoch history, for kevo-repl rejoin
            from kevo_repl.primary import epochs as primary_epochs  # a replica never loads it

            await context.send_initial_metadata((primary_epochs.header(self.primary.epochs),))
        return npb.StatusResponse(**self.status())

    def status(self) -> dict[str, Any]:
        st = self._role_status()
        st["discarded_entries"] = self.discarded_entries
        if self.memory is not None:
            st.update(self.memory.status())
        return st

    def _role_status(self) -> dict[str, Any]:
        if self.replica is not None:
            st = self.replica.status()
            st.pop("updated_at", None)
            st["applier"] = self.cfg.applier.name
            st.update(self.replica.bootstrap.status())
            if self.verifier is not None:
                st.update(self.verifier.status())
            return st
        from kevo_repl.primary import kevodb_peers

        assert self.primary is not None
        p = self.primary
        pos = p.store.position()
        live = {s.replica_id: s for s in p.sessions.values()}
        slots = []
        now = time.time()
        stall_after = self.cfg.stream.stall_after_s
        retention = p.retention.status()
        for rid, slot in sorted(p.slots.slots.items()):
            sess = live.get(rid)
            sent = kevodb_peers.sent_to(slot, p.sessions.values())
            # a replica that never acks (KevoDB's): lag from what was sent to it
            lag = max(0, p.head - (max(sent, slot.implied) if slot.never_acks else slot.acked))
            # behind, connected, and no ack (or no stream start) for stall_after_s
            quiet_since = max(slot.last_ack_at, sess.opened_at) if sess else 0.0
            slots.append(
                npb.ReplicaSlot(
                    replica_id=rid,
                    acked_sequence=slot.acked,
                    connected=sess is not None,
                    session_id=sess.session_id if sess else "",
                    peer=sess.peer if sess else "",
                    last_ack_age_s=now - slot.last_ack_at if slot.last_ack_at else -1.0,
                    lag_entries=lag,
                    stalled=sess is not None and lag > 0 and now - quiet_since > stall_after,
                    never_acks=slot.never_acks,
                    sent_sequence=sent,
                    **p.retention.slot_status(
                        slot, sess is not None, retention["oldest_segment_held_by"]
                    ),
                )
            )
        return {
            "role": "primary",
            "state": (
                "SERVING" if p.broken is None and p.store_failure is None and p.fenced is None
                else "ERROR"
            ),
            "last_applied": pos.sequence,
            "head_sequence": p.head,
            "first_sequence": p.wal.first_sequence,
            "history_id": p.history_id,
            "applier": self.cfg.applier.name,
            "applied_entries": pos.applied_entries,
            "replicas": slots,
            "last_error": p.broken or p.fenced or (
                f"store cannot apply: {p.store_failure}" if p.store_failure else ""
            ),
            "semisync_degraded": p.semisync_degraded,
            **retention,
        }

    async def DropSlot(
        self, request: npb.DropSlotRequest, context: grpc.aio.ServicerContext
    ) -> npb.DropSlotResponse:
        if self.primary is None:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"slots live on the primary ({self.cfg.replica.primary}), not on a replica"
            )
        from kevo_repl.primary.retention import SlotBusy  # a replica never loads it

        try:
            slot = self.primary.retention.drop(request.replica_id)
        except SlotBusy as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        if slot is None:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND, f"no slot for replica {request.replica_id!r}"
            )
        return npb.DropSlotResponse(acked_sequence=slot.acked)

    async def Promote(
        self, request: npb.PromoteRequest, context: grpc.aio.ServicerContext
    ) -> npb.PromoteResponse:
        if self.replica is None or self.promote_self is None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                                "this node is a primary already")
        try:
            return await self.promote_self(request.epoch or None)
        except KevoReplError as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    def become_primary(self, primary: Primary) -> None:
        """After a live promotion: serve as the primary (writes, slots, its position)."""
        self.primary, self.replica = primary, None
        self.read_gate = ReadGate(lambda: self.store.position().sequence)

    async def Repoint(
        self, request: npb.RepointRequest, context: grpc.aio.ServicerContext
    ) -> npb.RepointResponse:
        problem = self.repoint_problem(request.primary)
        if problem is not None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION
                                if self.replica is None or self.replica.fatal
                                else grpc.StatusCode.INVALID_ARGUMENT, problem)
        assert self.replica is not None
        return npb.RepointResponse(previous=self.replica.repoint(request.primary))

    def repoint_problem(self, primary: str) -> str | None:
        """Why this node cannot follow `primary` now; None when it can."""
        if self.replica is None:
            return "this node is a primary; only a replica follows another node"
        if self.replica.fatal:
            return (f"this replica stopped replicating ({self.replica.fatal}); restart it "
                    f"with the new primary")
        try:
            parse_address(primary, "primary")
        except KevoReplError as exc:
            return str(exc)
        return None

    async def Digest(
        self, request: npb.DigestRequest, context: grpc.aio.ServicerContext
    ) -> npb.DigestResponse:
        try:
            if request.hold_replica:
                d = await self._digest_and_hold(request, context)
            elif request.at_sequence:
                d = await self._digest_at(request, context)
            else:
                d = await asyncio.to_thread(
                    store_mod.digest, self.store, bytes(request.prefix), request.split
                )
        except StoreDamaged as exc:  # never a digest of a damaged store
            await abort(context, grpc.StatusCode.DATA_LOSS, str(exc))
        return digest_response(d)

    async def _digest_and_hold(
        self, request: npb.DigestRequest, context: grpc.aio.ServicerContext
    ) -> store_mod.Digest:
        from kevo_repl.primary.digest_hold import HoldUnavailable, digest_and_hold
        from kevo_repl.primary.stream_holds import HoldRefused

        if self.primary is None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                                "hold_replica is for a primary; this node is a replica")
        remaining = context.time_remaining()
        hold_s = request.hold_s or (_NO_DEADLINE_WAIT_S if remaining is None else remaining)
        try:
            return await digest_and_hold(self.primary, request.hold_replica,
                                         bytes(request.prefix), request.split, hold_s)
        except HoldRefused as exc:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except HoldUnavailable as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))

    async def ReleaseDigestHold(
        self, request: npb.ReleaseDigestHoldRequest, context: grpc.aio.ServicerContext
    ) -> npb.ReleaseDigestHoldResponse:
        if self.primary is None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                                "digest holds live on the primary, not on a replica")
        released = self.primary.holds.release(request.replica_id, request.sequence)
        return npb.ReleaseDigestHoldResponse(released=released)

    async def _digest_at(
        self, request: npb.DigestRequest, context: grpc.aio.ServicerContext
    ) -> store_mod.Digest:
        if self.replica is None:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "at_sequence is for replicas; a primary's digest is at its own position"
            )
        remaining = context.time_remaining()
        budget = _NO_DEADLINE_WAIT_S if remaining is None else max(0.0, remaining - 0.05)
        try:
            return await digest_at(self.replica, request.at_sequence, bytes(request.prefix),
                                   request.split, budget)
        except DigestRefused as exc:
            await abort(context, exc.code, exc.message)


class _WriteFailed(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: how long a read with min_sequence waits when the call has no deadline
_NO_DEADLINE_WAIT_S = 30.0



def node_handler(service: NodeService) -> grpc.GenericRpcHandler:
    def unary(fn: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            decoding.unary(fn), request_deserializer=lenient(req),
            response_serializer=resp.SerializeToString,
        )

    return grpc.method_handlers_generic_handler(
        NODE_SERVICE,
        {
            "Write": unary(service.Write, npb.WriteRequest, npb.WriteResponse),
            "WriteStream": grpc.stream_stream_rpc_method_handler(
                service.WriteStream,
                request_deserializer=lenient(npb.WriteBatch),
                response_serializer=npb.WriteResults.SerializeToString,
            ),
            "Get": unary(service.Get, npb.GetRequest, npb.GetResponse),
            "Status": unary(service.Status, npb.StatusRequest, npb.StatusResponse),
            "Digest": unary(service.Digest, npb.DigestRequest, npb.DigestResponse),
            "DropSlot": unary(service.DropSlot, npb.DropSlotRequest, npb.DropSlotResponse),
            "ReleaseDigestHold": unary(service.ReleaseDigestHold, npb.ReleaseDigestHoldRequest,
                                       npb.ReleaseDigestHoldResponse),
            "Repoint": unary(service.Repoint, npb.RepointRequest, npb.RepointResponse),
            "Promote": unary(service.Promote, npb.PromoteRequest, npb.PromoteResponse),
        },
    )


class Node:
    """Everything one `kevo-repl primary|replica` process runs."""

    def __init__(self, cfg: Config) -> None:
        cfg.validate()
        self.cfg = cfg
        # only this node's engine plugin is imported (start-up time), not every one installed
        self.pm, self.registry = build_node_registry(
            cfg.applier.name,
            {"compressor": cfg.compressor.name, "connector": cfg.connector.name},
        )
        self.primary: Primary | None = None
        self.replica: Replica | None = None
        self.server: grpc.aio.Server | None = None
        self.address = ""
        # the node's long-running tasks; one that fails puts the node in ERROR
        self._tasks = Supervisor("node", self._task_failed)
        self._replica_task: asyncio.Task[None] | None = None
        self._verify_task: asyncio.Task[None] | None = None
        #: one live promotion at a time
        self._promoting = asyncio.Lock()
        self._lock_fd: int | None = None
        self._metrics: Any = None
        self.memory: MemoryGuard | None = None
        self.metrics_address = ""

    async def start(self) -> str:
        cfg = self.cfg
        # everything that can be refused without touching the disk comes first: a node that
        # cannot start leaves no data directory behind
        self.registry.get("applier", cfg.applier.name)
        interceptors = (
            [TokenInterceptor(cfg.server.token, cfg.server.replication_token)]
            if cfg.server.token or cfg.server.replication_token else []
        )
        server = grpc.aio.server(
            options=server_options(cfg.server), interceptors=interceptors
        )
        creds = server_credentials(cfg.server)
        try:
            if creds is None:
                port = server.add_insecure_port(cfg.node.listen)
            else:
                port = server.add_secure_port(cfg.node.listen, creds)
        except RuntimeError as exc:
            raise KevoReplError(f"cannot listen on {cfg.node.listen}: {exc}") from exc
        if port == 0:
            raise KevoReplError(f"cannot listen on {cfg.node.listen} (in use?)")
        self.server = server
        try:
            await self._open(server)
        except BaseException:
            await self._abandon_start()
            raise
        host = cfg.node.listen.rpartition(":")[0]
        self.address = f"{host}:{port}"
        write_file_atomically(Path(cfg.data_dir) / ADDRESS_FILE, self.address.encode())
        log.info(
            "%s listening on %s (pid %d, %s%s%s)",
            cfg.node.role, self.address, os.getpid(),
            "mutual TLS" if cfg.server.tls_client_ca else "TLS" if creds else "plaintext",
            ", token required" if cfg.server.token else "",
            ", replication token required" if cfg.server.replication_token else "",
        )
        if self.replica is not None:
            self.replica.listener_address = cfg.node.advertise or self.address
            self._replica_task = self._tasks.spawn(self.replica.run(), "replica")
            verifier = self.service.verifier
            if verifier is not None and verifier.interval_s > 0:
                self._verify_task = self._tasks.spawn(verifier.run(), "background-verify")
        return self.address

    def _task_failed(self, name: str, exc: BaseException) -> None:
        """A task of this node raised: put the node in ERROR with last_error (Status says
        so) and stop what failed, rather than answer as if all were well."""
        reason = f"{name} failed: {type(exc).__name__}: {exc}"
        if self.replica is not None:
            self.replica.fail(reason)

    async def _open(self, server: grpc.aio.Server) -> None:
        cfg = self.cfg
        if cfg.node.metrics:
            # imported only when asked for: prometheus_client is a large part of start-up
            from kevo_repl.node.metrics import serve_metrics

            # bound now, served from status once the node exists
            self._metrics, self.metrics_address = serve_metrics(
                cfg.node.metrics, lambda: self.service.status(), cfg.node.metrics_token,
                cfg.node.metrics_tls_cert, cfg.node.metrics_tls_key,
            )
        self._lock_fd = lock_data_dir(cfg.data_dir)
        if cfg.node.role == "primary":
            from kevo_repl.primary.primary import Primary  # a replica never imports it

            self.primary = Primary(cfg, self.registry, self.pm)
        else:
            self.replica = Replica(cfg, self.registry, self.pm)
        self._replication = RoleHandler(
            replication_handler(self.primary) if self.primary is not None
            else not_a_primary_handler(cfg)
        )
        server.add_generic_rpc_handlers((self._replication,))
        self.memory = MemoryGuard(cfg.node.max_rss_mb, cfg.data_dir)
        self.memory.start()
        self.service = NodeService(cfg, self.primary, self.replica, self.memory)
        if self.replica is not None:
            self.service.verifier = BackgroundVerifier(cfg, self.replica)
        self.service.promote_self = self.promote
        server.add_generic_rpc_handlers((node_handler(self.service),))
        await server.start()

    async def promote(self, epoch: int | None) -> npb.PromoteResponse:
        """Become the primary of a new epoch in place: stop replicating, promote the data
        directory as `kevo-repl promote` does (kevo_repl.ha.promote, under the lock this
        node holds), open it as a primary and serve it on the same port. A refused promotion
        changes nothing on disk and the node replicates on."""
        from kevo_repl.ha.promote import promote
        from kevo_repl.primary.primary import Primary

        async with self._promoting:
            replica = self.replica
            if replica is None:
                raise KevoReplError("this node is a primary already")
            await replica.stop()
            if self._replica_task is not None:
                await asyncio.wait([self._replica_task])
            replica.bootstrap.close()
            replica.close()
            cfg = copy.deepcopy(self.cfg)
            try:
                result = await asyncio.to_thread(promote, cfg, self.registry, epoch=epoch,
                                                 lock_held=True)
            except KevoReplError:
                self._replicate()  # nothing changed: replicate on
                raise
            self.cfg.node.role = "primary"
            try:
                primary = Primary(self.cfg, self.registry, self.pm)
            except Exception as exc:  # the reply must say the directory is promoted already
                log.error("promoted on disk to epoch %d but not opened: %s", result.epoch, exc)
                raise KevoReplError(
                    f"the data directory is promoted (epoch {result.epoch} from sequence "
                    f"{result.position + 1}) but did not open as a primary: {exc}; restart "
                    "this node as `kevo-repl primary`"
                ) from exc
            self.primary, self.replica = primary, None
            self._replication.current = replication_handler(self.primary)
            self.service.become_primary(self.primary)
            log.warning("promoted in place: primary of epoch %d from sequence %d",
                        result.epoch, result.position + 1)
            return npb.PromoteResponse(epoch=result.epoch, position=result.position,
                                       history_id=result.history_id)

    def _replicate(self) -> None:
        """(Re)open the replica and start replicating."""
        self.replica = Replica(self.cfg, self.registry, self.pm)
        self.replica.listener_address = self.cfg.node.advertise or self.address
        self.service.replica = self.replica
        self.service.read_gate = self.replica.read_gate
        self._replica_task = self._tasks.spawn(self.replica.run(), "replica")

    async def _abandon_start(self) -> None:
        """Undo a start that failed part-way: nothing keeps running, nothing stays locked."""
        if self.memory is not None:
            self.memory.stop()
            self.memory = None
        if self._metrics is not None:
            self._metrics[0].shutdown()
            self._metrics = None
        if self.server is not None:
            await self.server.stop(None)
            self.server = None
        if self.primary is not None:
            with contextlib.suppress(Exception):
                await self.primary.close()
        if self.replica is not None:
            with contextlib.suppress(Exception):
                self.replica.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def stop(self) -> None:
        if self._verify_task is not None:
            self._verify_task.cancel()
            await asyncio.wait([self._verify_task])
        if self.replica is not None:
            await self.replica.stop()
        if self._replica_task is not None:
            await asyncio.wait([self._replica_task])  # a failure is reported by _tasks
        if self._metrics is not None:
            self._metrics[0].shutdown()
            self._metrics[0].server_close()
            self._metrics = None
        if self.primary is not None:
            await self.primary.drain(DRAIN_TIMEOUT_S)
        if self.server is not None:
            await self.server.stop(grace=1.0)
        if self.primary is not None:
            await self.primary.close()
        if self.replica is not None:
            self.replica.bootstrap.close()
            self.replica.close()
        if self.memory is not None:
            self.memory.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("%s stopped", self.cfg.node.role)


async def serve(
    cfg: Config, on_ready: Callable[[Node], None] | None = None,
    primary_from_config: Callable[[], str] | None = None,
) -> None:
    """Run a node until SIGTERM or SIGINT, then shut it down cleanly. On SIGHUP a replica
    follows the primary `primary_from_config` reads (its configuration file, again)."""
    node = Node(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if primary_from_config is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload_primary(node, primary_from_config))
    await node.start()
    if on_ready is not None:
        on_ready(node)
    try:
        await stop.wait()
        log.info("signal received, shutting down")
    finally:
        await node.stop()


def _reload_primary(node: Node, primary_from_config: Callable[[], str]) -> None:
    """SIGHUP: follow the primary the configuration names now (logged either way)."""
    try:
        primary = primary_from_config()
    except Exception as exc:  # a bad file changes nothing
        log.error("SIGHUP: the configuration does not load (%s); nothing changed", exc)
        return
    service: NodeService | None = getattr(node, "service", None)  # set once started
    if service is None or node.replica is None:
        log.warning("SIGHUP: only a running replica re-reads [replica] primary")
        return
    if primary == node.replica.cfg.replica.primary:
        log.info("SIGHUP: [replica] primary is still %s", primary)
        return
    problem = service.repoint_problem(primary)
    if problem is not None:
        log.error("SIGHUP: cannot follow %s: %s", primary, problem)
        return
    node.replica.repoint(primary)
