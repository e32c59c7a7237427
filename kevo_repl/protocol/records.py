"""WAL records in wire form: one write batch of the primary as a serialized response body.

A record's body is `WALStreamResponse(entries=[...], chain=...)` serialized, so concatenated
bodies parse as one response and catch-up is a file read, not a re-encode.

A write that carries an idempotency key has it in its record, as the field
`idempotency_key` serialized FIRST: protobuf accepts fields in any order, and a body without
a key always starts with an entry, so telling keyed records apart needs no parse. A record
without a key is byte for byte what it was before keys existed.
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



#: how a body holding an idempotency key begins: the tag of field 23, length-delimited
#: ((23 << 3) | 2 = 186, as a varint)
_KEY_TAG = b"\xba\x01"


def encode_body(
    entries: Sequence[Entry], chain_before: int, idempotency_key: bytes | None = None
) -> tuple[bytes, int]:
    """The wire form of entries, as stored in a WAL record and sent to replicas, carrying the
    hash chain after the last entry (and the write's idempotency key, if given); and that
    chain value."""
    msgs = []
    payloads = []
    for e in entries:
        payload = encode(e.seq, e.op, e.key, e.value)
        payloads.append(payload)
        msgs.append(
            rpb.WALEntry(sequence_number=e.seq, payload=payload, checksum=checksum(payload))
        )
    chain_after = chain_mod.over(chain_before, payloads)
    body = bytes(rpb.WALStreamResponse(entries=msgs, chain=chain_after).SerializeToString())
    if idempotency_key:
        key_field = rpb.WALStreamResponse(idempotency_key=idempotency_key).SerializeToString()
        body = bytes(key_field) + body
    return body, chain_after


def keyed_payloads(body: bytes) -> tuple[bytes, list[bytes]] | None:
    """The idempotency key and entry payloads of a record body that carries a key, else None
    (cheap: a body without a key is not parsed)."""
    if not body.startswith(_KEY_TAG):
        return None
    resp = rpb.WALStreamResponse.FromString(body)
    return bytes(resp.idempotency_key), [bytes(e.payload) for e in resp.entries]


def chain_of(record: Record) -> int | None:
    """The hash chain after a record's last entry, as stored in its body."""
    msg = rpb.WALStreamResponse.FromString(record.body)
    return msg.chain if msg.HasField("chain") else None


def decode_body(body: bytes) -> list[Entry]:
    resp = rpb.WALStreamResponse.FromString(body)
    return [decode(e.payload, e.sequence_number) for e in resp.entries]
