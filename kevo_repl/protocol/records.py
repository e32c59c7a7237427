"""WAL records in wire form: one write batch of the primary as a serialized response body.

A record's body is `WALStreamResponse(entries=[...], chain=...)` serialized, so concatenated
bodies parse as one response and catch-up is a file read, not a re-encode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kevo_repl.protocol import chain as chain_mod
from kevo_repl.protocol.codec import Entry, checksum, decode, encode
from kevo_repl.protocol.proto import replication_pb2 as rpb


@dataclass(frozen=True)
class Record:
    """One write batch of the primary: `count` entries with sequences from `first_seq` on.

    `body` is WALStreamResponse(entries=[...]).SerializeToString() of exactly those entries.
    """

    first_seq: int
    count: int
    body: bytes

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1



def encode_body(entries: Sequence[Entry], chain_before: int) -> tuple[bytes, int]:
    """The wire form of entries, as stored in a WAL record and sent to replicas, carrying the
    hash chain after the last entry; and that chain value."""
    msgs = []
    payloads = []
    for e in entries:
        payload = encode(e.seq, e.op, e.key, e.value)
        payloads.append(payload)
        msgs.append(
            rpb.WALEntry(sequence_number=e.seq, payload=payload, checksum=checksum(payload))
        )
    chain_after = chain_mod.over(chain_before, payloads)
    body = rpb.WALStreamResponse(entries=msgs, chain=chain_after).SerializeToString()
    return bytes(body), chain_after


def chain_of(record: Record) -> int | None:
    """The hash chain after a record's last entry, as stored in its body."""
    msg = rpb.WALStreamResponse.FromString(record.body)
    return msg.chain if msg.HasField("chain") else None


def decode_body(body: bytes) -> list[Entry]:
    resp = rpb.WALStreamResponse.FromString(body)
    return [decode(e.payload, e.sequence_number) for e in resp.entries]
