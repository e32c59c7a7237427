"""Online verification: compare a primary and a replica at one common position, and when
they differ, narrow the difference down to key ranges with bucketed digests."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from kevo_repl.client.client import Client
from kevo_repl.errors import KevoReplError
from kevo_repl.protocol.proto import node_pb2 as npb

log = logging.getLogger(__name__)

#: a differing bucket with at most this many keys (on either side) is reported, not split
LEAF_KEYS = 16


@dataclass
class KeyRange:
    first_key: bytes
    last_key: bytes
    primary_keys: int
    replica_keys: int
    #: the digest bucket that differs: the keys starting with these bytes
    bucket: bytes = b""

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": _show(self.bucket),
            "first_key": _show(self.first_key),
            "last_key": _show(self.last_key),
            "primary_keys": self.primary_keys,
            "replica_keys": self.replica_keys,
        }


@dataclass
class VerifyResult:
    sequence: int
    equal: bool
    primary_digest: str
    replica_digest: str
    ranges: list[KeyRange] = field(default_factory=list)
    #: digests asked for again (the replica was past P, or a barrier or hold was taken)
    retries: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "retries": self.retries,
            "sequence": self.sequence,
            "equal": self.equal,
            "primary_digest": self.primary_digest,
            "replica_digest": self.replica_digest,
            "ranges": [r.as_dict() for r in self.ranges],
        }


def _show(key: bytes) -> str:
    return key.decode("utf-8", errors="backslashreplace")


#: how long to pause before asking again when the replica was already past the primary's
#: position, or another verify held the replica's barrier or the primary's hold
_RETRY_PAUSE_S = 0.02


class ReplicaDigests(Protocol):
    """Where the replica's digests come from: a Client of it, or the replica itself
    (background verification)."""

    timeout: float

    def digest_buckets(
        self, prefix: bytes, at_sequence: int = 0, timeout: float | None = None
    ) -> npb.DigestResponse: ...


def _primary_digest(
    primary: Client, prefix: bytes, replica_id: str, deadline: float
) -> npb.DigestResponse | None:
    """The primary's digest at its WAL head, holding `replica_id`'s stream there (until
    released, or the deadline); None when it has no room for the hold now."""
    if not replica_id:  # no hold asked: the primary's store position, which may move on
        return primary.digest_buckets(prefix)
    left = max(0.001, deadline - time.monotonic())
    try:
        return primary.digest_buckets(prefix, timeout=min(left, primary.timeout),
                                      hold_replica=replica_id, hold_s=left)
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
            raise
        log.debug("primary digest hold for %s: %s", replica_id, exc.details())
        return None


def _release(primary: Client, replica_id: str, sequence: int) -> None:
    if not replica_id:
        return
    try:
        primary.release_digest_hold(replica_id, sequence)
    except grpc.RpcError as exc:  # the hold expires by itself
        log.warning("could not release the digest hold of %s at %d: %s", replica_id,
                    sequence, exc.details())


@dataclass
class _Comparison:
    """One verify run: both sides, the deadline, and how often a digest was asked again."""

    primary: Client
    replica: ReplicaDigests
    replica_id: str
    deadline: float
    retries: int = 0

    def at_common_position(
        self, prefix: bytes
    ) -> tuple[npb.DigestResponse, npb.DigestResponse]:
        """The primary's digest at a position P and the replica's at exactly P: the replica
        holds its apply at P while it reads it, so this works under continuous writes. With
        a replica id, the primary also holds what it sends the replica at P (its WAL head),
        so the replica reaches P and cannot pass it: the first attempt is served."""
        primary, replica_id = self.primary, self.replica_id
        first = True
        while True:
            self.retries += not first
            first = False
            p = _primary_digest(primary, prefix, replica_id, self.deadline)
            left = self.deadline - time.monotonic()
            if left <= 0:
                if p is not None:
                    _release(primary, replica_id, p.sequence)
                raise KevoReplError(
                    "no common position with the replica before the deadline"
                    + (f" (primary at {p.sequence})" if p is not None else
                       " (the primary had no room for a digest hold)")
                )
            if p is None:
                time.sleep(_RETRY_PAUSE_S)
                continue
            try:
                r = self.replica.digest_buckets(prefix, p.sequence,
                                                min(left, self.replica.timeout))
            except grpc.RpcError as exc:
                code = exc.code()
                if code is grpc.StatusCode.FAILED_PRECONDITION:
                    raise KevoReplError(
                        f"the replica did not reach the primary's position {p.sequence} in "
                        f"time: {exc.details()}; is it replicating?"
                    ) from exc
                if code not in (grpc.StatusCode.OUT_OF_RANGE,
                                grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise
                # already past P (a primary without holds: its store lags its WAL by a
                # moment), or another verify holds the replica: ask both again
                log.debug("replica digest at %d: %s", p.sequence, exc.details())
                time.sleep(_RETRY_PAUSE_S)
                continue
            finally:
                _release(primary, replica_id, p.sequence)
            if p.sequence == r.sequence:  # at_sequence 0 (an empty primary) means "now"
                return p, r
            time.sleep(_RETRY_PAUSE_S)


def check_roles(primary: Client, replica: Client) -> str:
    """Refuse swapped roles, the same node twice, and a replica of another primary: their
    digests would differ (or agree) for reasons that have nothing to do with replication.
    Returns the replica's id (what the primary holds for a common position)."""
    p, r = primary.status(), replica.status()
    if p["role"] != "primary":
        raise KevoReplError(
            f"--primary {primary.target} is a {p['role']}"
            + (f" (its primary is {p['primary']})" if p.get("primary") else "")
        )
    if r["role"] != "replica":
        raise KevoReplError(
            f"--replica {replica.target} is a {r['role']}, not a replica"
            + (" (the same node as --primary?)" if r["history_id"] == p["history_id"] else "")
        )
    if r["history_id"] and r["history_id"] != p["history_id"]:
        raise KevoReplError(
            f"--replica {replica.target} follows history {r['history_id']} (its primary is "
            f"{r['primary']}), not {primary.target}'s {p['history_id']}"
        )
    return str(r.get("replica_id", ""))


def verify(
    primary: Client, replica: ReplicaDigests, *, replica_id: str = "", timeout: float = 60.0,
    max_ranges: int = 50,
) -> VerifyResult:
    """Compare at a common position; with `replica_id` (the replica's, as its status names
    it) the primary holds the replica's stream there while it is compared."""
    run = _Comparison(primary, replica, replica_id, time.monotonic() + timeout)
    p, r = run.at_common_position(b"")
    result = VerifyResult(p.sequence, p.digest == r.digest, p.digest, r.digest)
    frontier = [] if result.equal else [(p, r)]
    while frontier and len(result.ranges) < max_ranges:
        next_frontier = []
        for pd, rd in frontier:
            for sub, (pb, rb) in _differing_buckets(pd, rd).items():
                keys = max(pb.keys if pb else 0, rb.keys if rb else 0)
                exact = (pb.exact if pb else False) or (rb.exact if rb else False)
                if exact or keys <= LEAF_KEYS:
                    result.ranges.append(_key_range(sub, pb, rb))
                    continue
                pd2, rd2 = run.at_common_position(sub)
                if pd2.sequence != result.sequence:
                    log.info("position moved to %d while narrowing", pd2.sequence)
                next_frontier.append((pd2, rd2))
        frontier = next_frontier
    result.retries = run.retries
    return result


def _differing_buckets(
    p: npb.DigestResponse, r: npb.DigestResponse
) -> dict[bytes, tuple[npb.DigestBucket | None, npb.DigestBucket | None]]:
    pb = {b.prefix: b for b in p.buckets}
    rb = {b.prefix: b for b in r.buckets}
    out = {}
    for prefix in sorted(pb.keys() | rb.keys()):
        a, b = pb.get(prefix), rb.get(prefix)
        if a is None or b is None or a.digest != b.digest:
            out[prefix] = (a, b)
    return out


def _key_range(
    bucket: bytes, pb: npb.DigestBucket | None, rb: npb.DigestBucket | None
) -> KeyRange:
    firsts = [b.first_key for b in (pb, rb) if b is not None and b.keys]
    lasts = [b.last_key for b in (pb, rb) if b is not None and b.keys]
    return KeyRange(
        min(firsts) if firsts else b"",
        max(lasts) if lasts else b"",
        pb.keys if pb else 0,
        rb.keys if rb else 0,
        bucket,
    )
