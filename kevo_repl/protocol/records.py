"""WAL records in wire form: one write batch of the primary as a serialized response body.

A record's body is a serialized `WALStreamResponse` carrying the batch and the hash chain
after it, so concatenated bodies parse as one response and catch-up is a file read, not a
re-encode. Two forms: `blocks=[one ColumnBlock]` (written since columnar blocks,
`protocol/blocks.py`; served as is to replicas that asked for blocks) and `entries=[...]`
(KevoDB payloads; older records, and what peers that did not ask for blocks are sent).
A block body starts with `blocks.BLOCK_BODY_TAG`, an entries body never does.

A write that carries an idempotency key has it in its record (`idempotency_key`, field 24),
so that a restarted primary remembers it. In an entries body the key is serialized FIRST (a
body without a key always starts with an entry, so keyed records show without a parse); in a
block body it comes LAST, after the chain, so that the body still starts with the block tag.
Protobuf accepts fields in any order; a record without a key is byte for byte what it was
before keys existed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kevo_repl.protocol import blocks
from kevo_repl.protocol import chain as chain_mod
from kevo_repl.protocol.codec import Entry, checksum, columns_of, decode, encode
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



#: how an entries body holding an idempotency key begins: the tag of field 24,
#: length-delimited ((24 << 3) | 2 = 194, as a varint)
_KEY_TAG = b"\xc2\x01"


def _key_field(idempotency_key: bytes) -> bytes:
    return bytes(rpb.WALStreamResponse(idempotency_key=idempotency_key).SerializeToString())


def encode_body(
    entries: Sequence[Entry], chain_before: int, idempotency_key: bytes | None = None
) -> tuple[bytes, int]:
    """The entries form of a record body (what the primary wrote before column blocks, and
    what peers that do not take blocks are sent), carrying the hash chain after the last
    entry (and the write's idempotency key, if given); and that chain value."""
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
        body = _key_field(idempotency_key) + body
    return body, chain_after


def keyed_payloads(body: bytes) -> tuple[bytes, list[bytes]] | None:
    """The idempotency key and entry payloads of a record body that carries a key, else None
    (an entries body without a key is not parsed; a block body is, its columns are not
    copied unless it has a key)."""
    if body.startswith(_KEY_TAG):
        resp = rpb.WALStreamResponse.FromString(body)
        return bytes(resp.idempotency_key), [bytes(e.payload) for e in resp.entries]
    if not blocks.is_block_body(body):
        return None
    msg = rpb.WALStreamResponse.FromString(body)
    if not msg.idempotency_key:
        return None
    return bytes(msg.idempotency_key), payloads_through(body, _LAST)


#: "through the last entry", for payloads_through
_LAST = 2**64 - 1


def encode_block_body(
    entries: Sequence[Entry], chain_before: int, idempotency_key: bytes | None = None
) -> tuple[bytes, int]:
    """The block form of entries (contiguous, from entries[0].seq on) as a WAL record body
    (with the write's idempotency key last, if given), and the hash chain after the last
    entry."""
    block = blocks.encode_block(columns_of(entries, entries[0].seq), chain_before)
    body = blocks.block_body(block)
    if idempotency_key:
        body += _key_field(idempotency_key)
    return body, block.chain_after


def entries_body(body: bytes) -> bytes:
    """A record body in entries form (a block body converted; an entries body as it is)."""
    if not blocks.is_block_body(body):
        return body
    msg = rpb.WALStreamResponse.FromString(body)
    out = rpb.WALStreamResponse(entries=[e for b in msg.blocks for e in blocks.to_entries(b)])
    if msg.HasField("chain"):
        out.chain = msg.chain
    return bytes(out.SerializeToString())


def trim_body(body: bytes, from_seq: int) -> bytes | None:
    """A block body cut to start at `from_seq` (its chain after unchanged); None for a body
    in entries form."""
    if not blocks.is_block_body(body):
        return None
    msg = rpb.WALStreamResponse.FromString(body)
    if len(msg.blocks) != 1:
        raise blocks.BlockError(f"a record body holds {len(msg.blocks)} blocks, not one")
    return blocks.block_body(blocks.trim(msg.blocks[0], from_seq))


def payloads_through(body: bytes, sequence: int) -> list[bytes]:
    """The KevoDB payloads of a record's entries up to `sequence`, in either form."""
    msg = rpb.WALStreamResponse.FromString(body)
    out = [e.payload for e in msg.entries if e.sequence_number <= sequence]
    for b in msg.blocks:
        c = blocks.decode_block(b)
        k = max(0, min(c.size, sequence - c.first_seq + 1))
        out += blocks.payloads(c.first_seq, c.ops[:k], c.keys[:k], c.values[:k])
    return out


def chain_of(record: Record) -> int | None:
    """The hash chain after a record's last entry, as stored in its body."""
    msg = rpb.WALStreamResponse.FromString(record.body)
    return msg.chain if msg.HasField("chain") else None


def decode_body(body: bytes) -> list[Entry]:
    resp = rpb.WALStreamResponse.FromString(body)
    out = [decode(e.payload, e.sequence_number) for e in resp.entries]
    for b in resp.blocks:
        c = blocks.decode_block(b)
        out += map(Entry, range(c.first_seq, c.last_seq + 1), c.ops, c.keys, c.values)
    return out
