"""Online verification: compare a primary and a replica at one common position, and when
they differ, narrow the difference down to key ranges with bucketed digests."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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

    def as_dict(self) -> dict[str, Any]:
        return {
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "equal": self.equal,
            "primary_digest": self.primary_digest,
            "replica_digest": self.replica_digest,
            "ranges": [r.as_dict() for r in self.ranges],
        }


def _show(key: bytes) -> str:
    return key.decode("utf-8", errors="backslashreplace")


def _at_common_position(
    fetch: Callable[[Client], Any], primary: Client, replica: Client, deadline: float
) -> tuple[Any, Any]:
    """Fetch from both until they answer at the same sequence (the replica may need to
    catch up; the primary may move on meanwhile)."""
    while True:
        p = fetch(primary)
        r = fetch(replica)
        if p.sequence == r.sequence:
            return p, r
        if time.monotonic() > deadline:
            raise KevoReplError(
                f"no common position before the deadline (primary at {p.sequence}, replica at "
                f"{r.sequence}); is the replica replicating, or is the primary written too fast?"
            )
        time.sleep(0.05)


def check_roles(primary: Client, replica: Client) -> None:
    """Refuse swapped roles, the same node twice, and a replica of another primary: their
    digests would differ (or agree) for reasons that have nothing to do with replication."""
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


def verify(
    primary: Client, replica: Client, *, timeout: float = 60.0, max_ranges: int = 50
) -> VerifyResult:
    deadline = time.monotonic() + timeout
    p, r = _at_common_position(lambda c: c.digest_buckets(b""), primary, replica, deadline)
    result = VerifyResult(p.sequence, p.digest == r.digest, p.digest, r.digest)
    if result.equal:
        return result
    frontier = [(p, r)]
    while frontier and len(result.ranges) < max_ranges:
        next_frontier = []
        for pd, rd in frontier:
            for sub, (pb, rb) in _differing_buckets(pd, rd).items():
                keys = max(pb.keys if pb else 0, rb.keys if rb else 0)
                exact = (pb.exact if pb else False) or (rb.exact if rb else False)
                if exact or keys <= LEAF_KEYS:
                    result.ranges.append(_key_range(pb, rb))
                    continue
                pd2, rd2 = _at_common_position(
                    functools.partial(Client.digest_buckets, prefix=sub),
                    primary, replica, deadline,
                )
                if pd2.sequence != result.sequence:
                    log.info("position moved to %d while narrowing", pd2.sequence)
                next_frontier.append((pd2, rd2))
        frontier = next_frontier
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


def _key_range(pb: npb.DigestBucket | None, rb: npb.DigestBucket | None) -> KeyRange:
    firsts = [b.first_key for b in (pb, rb) if b is not None and b.keys]
    lasts = [b.last_key for b in (pb, rb) if b is not None and b.keys]
    return KeyRange(
        min(firsts) if firsts else b"",
        max(lasts) if lasts else b"",
        pb.keys if pb else 0,
        rb.keys if rb else 0,
    )
