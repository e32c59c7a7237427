"""Replicas that do not name themselves: KevoDB's replica sends no `replica_id`, never
acknowledges, and reopens its stream after every batch.

Such a replica gets a slot keyed by the `listener_address` of its requests, which stays the
same across its reconnects. It never acks, so its slot holds WAL from the position its latest
request implies it already has (`start_sequence - 1`), within the retention caps like any
slot; its lag is taken from what was sent to it. A request with neither a replica id nor a
listener address gets no slot (its session is named after the peer address), and neither does
one past the bounds below: anyone who can connect can invent addresses, and the slot table is
durable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Protocol

from kevo_repl.primary.slots import Slot, SlotTable
from kevo_repl.protocol.proto import replication_pb2 as rpb


class _Retention(Protocol):
    def request_check(self) -> None: ...


class PrimaryView(Protocol):
    """What these rules need of the primary (it passes itself): its slots and retention."""

    @property
    def slots(self) -> SlotTable: ...
    @property
    def retention(self) -> _Retention: ...


class SessionView(Protocol):
    """What these rules need of a streaming session."""

    @property
    def replica_id(self) -> str: ...
    @property
    def sent(self) -> int: ...

log = logging.getLogger(__name__)

#: most slots kept for replicas without a replica id, and the longest address that keys one
MAX_NAMELESS_SLOTS = 64
MAX_ADDRESS_BYTES = 256


def session_name(request: rpb.WALStreamRequest, peer: str) -> str:
    """What a stream's session (and slot, if any) is called."""
    return request.replica_id or request.listener_address or peer


def stream_opened(primary: PrimaryView, request: rpb.WALStreamRequest) -> None:
    """A stream was accepted: make sure its replica has a slot, and for a nameless one record
    the position its request implies."""
    if request.replica_id:
        primary.slots.get(request.replica_id, request.start_sequence)
        return
    key = request.listener_address
    if not key:
        return
    table = primary.slots
    slot = table.slots.get(key)
    if slot is None:
        nameless = sum(1 for s in table.slots.values() if s.never_acks)
        if nameless >= MAX_NAMELESS_SLOTS or len(key.encode()) > MAX_ADDRESS_BYTES:
            log.warning(
                "no slot for the replica at %.64s: %d slots of replicas without a replica_id "
                "exist (at most %d) or its address is longer than %d bytes; its WAL is not "
                "held", key, nameless, MAX_NAMELESS_SLOTS, MAX_ADDRESS_BYTES,
            )
            return
        slot = table.get(key, never_acks=True)  # capped above, not by max_slots
        log.info("replica at %s sends no replica_id: its slot is keyed by that address", key)
    slot.last_seen_at = time.time()
    implied = request.start_sequence - 1
    if implied > slot.implied:
        slot.implied = implied
    if slot.lost:
        # its request was accepted, so what it needs is retained again
        slot.lost, slot.lost_at = False, 0.0
        log.info("slot %r holds retention again from %d", key, request.start_sequence)
    table.mark_dirty()
    primary.retention.request_check()


def stream_ended(primary: PrimaryView, session: SessionView) -> None:
    slot = primary.slots.slots.get(session.replica_id)
    if slot is not None and slot.never_acks and session.sent > slot.sent:
        slot.sent = session.sent
        primary.slots.mark_dirty()


def sent_to(slot: Slot, sessions: Iterable[SessionView]) -> int:
    """The last sequence sent to the slot's replica, by any of its streams so far."""
    return max([slot.sent, *(s.sent for s in sessions if s.replica_id == slot.replica_id)])
