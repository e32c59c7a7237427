"""Digest(at_sequence=P) on a replica: the digest of its store at exactly sequence P.

The replica's apply loop stops at P (DigestBarrier) while the digest is read, so that a
replica under continuous writes can be compared with its primary's digest at P.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from kevo_repl.protocol.proto import node_pb2 as npb
from kevo_repl.replica.digest_barrier import BarrierBusy
from kevo_repl.replica.read_gate import TooManyWaitingReads
from kevo_repl.replica.replica import Replica
from kevo_repl.storage import store as store_mod

log = logging.getLogger(__name__)


class DigestRefused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _past(sequence: int, applied: int) -> DigestRefused:
    return DigestRefused(
        grpc.StatusCode.OUT_OF_RANGE,
        f"this replica has applied through {applied}, past {sequence}: ask again at a newer "
        "position",
    )


async def digest_at(
    replica: Replica, sequence: int, prefix: bytes, split: bool, budget: float
) -> store_mod.Digest:
    """The digest at exactly `sequence`, waiting at most `budget` seconds for the replica to
    get there; DigestRefused when it cannot."""
    if replica.position.sequence > sequence:
        raise _past(sequence, replica.position.sequence)
    try:
        replica.digest_barrier.arm(sequence)
    except BarrierBusy as exc:
        raise DigestRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc
    try:
        try:
            reached = await replica.read_gate.wait(sequence, budget)
        except TooManyWaitingReads as exc:
            raise DigestRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc
        applied = replica.position.sequence
        if not reached:
            raise DigestRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this replica has applied through {applied}, not yet {sequence}, after "
                f"waiting {budget:.3g}s; its primary is {replica.cfg.replica.primary}",
            )
        if applied > sequence:  # a batch that was already being applied crossed it
            raise _past(sequence, applied)
        # apply is held at `sequence` until the barrier is released below
        d = await asyncio.to_thread(store_mod.digest, replica.store, prefix, split)
    finally:
        replica.digest_barrier.release()
    if d.sequence != sequence:  # a snapshot install moved the store: never a wrong answer
        raise _past(sequence, d.sequence)
    return d


def digest_response(d: store_mod.Digest) -> npb.DigestResponse:
    return npb.DigestResponse(
        sequence=d.sequence,
        keys=d.keys,
        digest=d.digest,
        buckets=[
            npb.DigestBucket(prefix=b.prefix, keys=b.keys, digest=b.digest,
                             first_key=b.first_key, last_key=b.last_key, exact=b.exact)
            for b in d.buckets
        ],
    )
