"""Client-side attacks the chaos runner performs on the primary (fault kinds slot_flood,
stalled_snapshot and unread_writestream). Each runs in a thread for its fault's duration and
reports what it saw and what it found wrong; the runner's RSS sampling checks the memory
bound meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from kevo_repl.protocol.proto import node_pb2 as npb
from kevo_repl.protocol.proto import replication_pb2 as rpb

_SVC = "/kevo.replication.WALReplicationService/"
#: the primary's [retention] max_slots in a chaos run (its default)
MAX_SLOTS = 64


@dataclass
class AttackResult:
    notes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


def _status(channel: grpc.Channel) -> npb.StatusResponse:
    status = channel.unary_unary("/kevo.repl.Node/Status",
                                 request_serializer=npb.StatusRequest.SerializeToString,
                                 response_deserializer=npb.StatusResponse.FromString)
    resp: npb.StatusResponse = status(npb.StatusRequest(), timeout=5)
    return resp


def slot_flood(address: str, fault: int, count: int, stop: threading.Event) -> AttackResult:
    """Open and drop streams under `count` new replica ids: slots past max_slots must be
    refused with RESOURCE_EXHAUSTED; then the flood's slots are dropped (the operator's
    clean-up)."""
    out = AttackResult()
    accepted: list[str] = []
    refused = 0
    with grpc.insecure_channel(address) as ch:
        stream = ch.unary_stream(_SVC + "StreamWAL",
                                 request_serializer=rpb.WALStreamRequest.SerializeToString,
                                 response_deserializer=bytes)
        head = _status(ch).head_sequence
        for i in range(count):
            if stop.is_set():
                break
            rid = f"flood-{fault}-{i}"
            call = stream(rpb.WALStreamRequest(start_sequence=head + 1, protocol_version=1,
                                               replica_id=rid), timeout=10)
            md = dict(call.initial_metadata() or ())
            if "session-id" in md:
                accepted.append(rid)
            else:
                code = call.code()
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused += 1
                elif code != grpc.StatusCode.UNAVAILABLE:  # the primary went away meanwhile
                    out.violations.append(f"slot flood stream {rid} refused with {code}, "
                                          "not RESOURCE_EXHAUSTED")
            call.cancel()
        slots = len(_status(ch).replicas)
        if slots > MAX_SLOTS:
            out.violations.append(f"the primary holds {slots} slots, over max_slots "
                                  f"{MAX_SLOTS}")
        out.notes.append(f"{len(accepted)} flood slots made, {refused} refused "
                         f"(RESOURCE_EXHAUSTED), {slots} slots in all")
        started = time.monotonic()
        drop = ch.unary_unary("/kevo.repl.Node/DropSlot",
                              request_serializer=npb.DropSlotRequest.SerializeToString,
                              response_deserializer=npb.DropSlotResponse.FromString)
        deadline = time.monotonic() + 20.0  # what is left expires (unacked_slot_expiry_s)
        for rid in accepted:  # the operator's clean-up: the flood's sessions are over
            while time.monotonic() < deadline:
                try:
                    drop(npb.DropSlotRequest(replica_id=rid), timeout=5)
                    break
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        break
                    time.sleep(0.1)
        out.notes.append(f"dropped in {time.monotonic() - started:.1f}s")
        stop.wait()
    return out


def stalled_snapshot(address: str, fault: int, count: int, hold_s: float,
                     stop: threading.Event) -> AttackResult:
    """Take `count` snapshots, read one chunk of each and stop reading: before the fault
    ends (well past hold_s) a real replica must get a snapshot."""
    out = AttackResult()
    with grpc.insecure_channel(address) as ch:
        snap = ch.unary_stream(_SVC + "Snapshot",
                               request_serializer=rpb.SnapshotRequest.SerializeToString,
                               response_deserializer=rpb.SnapshotChunk.FromString)
        calls = []
        for i in range(count):
            call = snap(rpb.SnapshotRequest(replica_id=f"stall-{fault}-{i}",
                                            max_chunk_bytes=65536), timeout=120)
            try:
                next(call)
            except (grpc.RpcError, StopIteration):
                pass
            calls.append(call)
        # each stream is cancelled hold_s after the client's HTTP/2 window stopped taking
        # chunks; a new snapshot must be served before the fault ends
        served = False
        last = ""
        while not stop.wait(1.0) and not served:
            probe = snap(rpb.SnapshotRequest(replica_id=f"probe-{fault}",
                                             max_chunk_bytes=65536), timeout=30)
            try:
                next(probe)
                served = True
            except grpc.RpcError as exc:
                last = f"{exc.code()}: {exc.details()}"
            except StopIteration:
                served = True
            probe.cancel()
        if served:
            out.notes.append(f"{count} stalled snapshot streams; a new one was served")
        else:
            out.violations.append(f"{count} stalled snapshot streams still blocked a new "
                                  f"snapshot when the fault ended ({last})")
        for call in calls:
            call.cancel()
    return out


def unread_writestream(address: str, stop: threading.Event,
                       max_consumed: int) -> AttackResult:
    """Send refused writes (an unknown ack level) on a WriteStream and never read the
    answers: the primary must stop reading after a bounded number."""
    out = AttackResult()
    consumed = 0
    batch = npb.WriteBatch(writes=[
        npb.WriteRequest(mutations=[npb.Mutation(op=npb.PUT, key=b"attack", value=b"x")],
                         request_id=i, level=7)  # type: ignore[arg-type]
        for i in range(500)
    ])

    ended = threading.Event()  # the call is over: what is pulled now reaches no primary

    def requests() -> Iterator[npb.WriteBatch]:
        nonlocal consumed
        while not stop.is_set() and not ended.is_set():
            yield batch
            consumed += len(batch.writes)

    with grpc.insecure_channel(address) as ch:
        call = ch.stream_stream("/kevo.repl.Node/WriteStream",
                                request_serializer=npb.WriteBatch.SerializeToString,
                                response_deserializer=bytes)(requests())
        call.add_done_callback(lambda _: ended.set())
        stop.wait()
        if ended.is_set() and call.code() != grpc.StatusCode.CANCELLED:
            out.notes.append(f"the call ended early: {call.code()}")
        call.cancel()
    out.notes.append(f"the primary read {consumed} unread-answer writes")
    if consumed > max_consumed:
        out.violations.append(f"the primary read {consumed} writes of a WriteStream whose "
                              f"answers were never read (bound {max_consumed})")
    return out


def rogue_replica(address: str, fault: int, victims: tuple[str, ...],
                  stop: threading.Event) -> AttackResult:
    """Try to take over live replicas' ids, and lie in acks on a session of one's own: a
    live id must be ALREADY_EXISTS, every impossible ack INVALID_ARGUMENT, a forged session
    NOT_FOUND, and the rogue's slot must not move."""
    out = AttackResult()
    rid = f"rogue-{fault}"
    with grpc.insecure_channel(address) as ch:
        stream = ch.unary_stream(_SVC + "StreamWAL",
                                 request_serializer=rpb.WALStreamRequest.SerializeToString,
                                 response_deserializer=bytes)
        ack = ch.unary_unary(_SVC + "Acknowledge", request_serializer=rpb.Ack.SerializeToString,
                             response_deserializer=rpb.AckResponse.FromString)
        head = _status(ch).head_sequence
        live = {r.replica_id for r in _status(ch).replicas if r.connected}
        refused = 0
        for victim in victims:
            call = stream(rpb.WALStreamRequest(start_sequence=head + 1, protocol_version=1,
                                               replica_id=victim), timeout=10)
            md = dict(call.initial_metadata() or ())
            code = None if "session-id" in md else call.code()
            call.cancel()
            if code == grpc.StatusCode.ALREADY_EXISTS:
                refused += 1
            elif code is None and victim in live:
                # it may have died between the status and the call: only a note then
                out.notes.append(f"{victim}'s id was free when asked (its session had ended)")
        call = stream(rpb.WALStreamRequest(start_sequence=head + 1, protocol_version=1,
                                           replica_id=rid), timeout=30)
        md = dict(call.initial_metadata() or ())
        sid = str(md.get("session-id", ""))
        lies = [
            ("past what was sent", rpb.Ack(acknowledged_up_to=head + 1000,
                                           received_up_to=head + 1000)),
            ("received below durable", rpb.Ack(acknowledged_up_to=head, received_up_to=1)),
        ]
        if sid:
            for what, lie in lies:
                try:
                    ack(lie, metadata=(("session-id", sid),), timeout=5)
                    out.violations.append(f"an ack {what} was accepted")
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                        out.violations.append(f"an ack {what} got {exc.code()}, not "
                                              "INVALID_ARGUMENT")
        try:
            ack(rpb.Ack(acknowledged_up_to=1), metadata=(("session-id", "f" * 32),), timeout=5)
            out.violations.append("an ack on a forged session id was accepted")
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                out.violations.append(f"an ack on a forged session got {exc.code()}")
        slot = [r for r in _status(ch).replicas if r.replica_id == rid]
        if slot and slot[0].acked_sequence != 0:
            out.violations.append(f"lying acks moved the rogue's slot to "
                                  f"{slot[0].acked_sequence}")
        call.cancel()
        out.notes.append(f"{refused} of {len(victims)} takeovers refused (ALREADY_EXISTS); "
                         f"{len(lies) + 1 if sid else 1} lying acks refused")
        drop = ch.unary_unary("/kevo.repl.Node/DropSlot",
                              request_serializer=npb.DropSlotRequest.SerializeToString,
                              response_deserializer=npb.DropSlotResponse.FromString)
        for _ in range(50):
            try:
                drop(npb.DropSlotRequest(replica_id=rid), timeout=5)
                break
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    break
                time.sleep(0.1)
        stop.wait()
    return out
