"""Shaping responses on the primary and unpacking them on the replica.

The primary keeps WAL records in wire form (a serialized column block, or entries in records
written before blocks), so a plain response is the concatenation of record bodies. Shaping
adds what a session negotiated:

- protocol version 2 peers may ask for write batches as columnar blocks (`blocks`,
  `protocol/blocks.py`), which WAL records already are: served as read; records written
  before blocks (entries form) go as entries, and block records go as entries to peers that
  did not ask for blocks, and when a record is bigger than the response cap;
- protocol version 2 peers may ask for the whole response compressed as one block
  (`compressed_entries`), which compresses small entries far better;
- version 1 peers (KevoDB) get payloads compressed one by one (`compressed` / `codec`);
- a record larger than the response cap is split over several responses marked
  `partial_batch`, and an entry larger than the cap travels as FIRST / MIDDLE / LAST
  fragments, so no message exceeds the cap by more than one entry's framing.

Compression never makes a response bigger: when it would, the plain form is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kevo_repl.protocol.blocks import is_block_body
from kevo_repl.protocol.codec import CodecError, checksum, decode
from kevo_repl.protocol.compression import CODEC_NONE, Compressor, DecompressionError
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.records import Record, entries_body

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Negotiated:
    compressor: Compressor | None = None
    block: bool = False
    #: the peer takes write batches as columnar blocks
    columns: bool = False

    @property
    def codec_id(self) -> int:
        return self.compressor.codec_id if self.compressor is not None else CODEC_NONE

    def describe(self) -> str:
        form = "column blocks" if self.columns else "entries"
        if self.compressor is None:
            return f"{form}, uncompressed"
        how = "whole-response blocks" if self.block else "per entry"
        return f"{form}, codec {self.codec_id}, {how}"


def negotiate(request: rpb.WALStreamRequest, compressors: Mapping[int, Compressor]) -> Negotiated:
    """Use the replica's preferred codec when it supports compression and the codec is known
    here; otherwise fall back to none. Column blocks for protocol 2 peers that ask."""
    columns = request.protocol_version >= 2 and request.column_blocks
    if not request.compression_supported or request.preferred_codec == CODEC_NONE:
        return Negotiated(columns=columns)
    compressor = compressors.get(int(request.preferred_codec))
    if compressor is None:
        log.info("replica asked for unknown codec %d; sending uncompressed",
                 request.preferred_codec)
        return Negotiated(columns=columns)
    return Negotiated(compressor, block=request.protocol_version >= 2
                      and request.block_compression, columns=columns)


def shape(records: Sequence[Record], neg: Negotiated, cap: int) -> list[bytes]:
    """The responses (without trailer fields) that carry `records`, in order."""
    forms = list(map(is_block_body, (r.body for r in records)))
    if neg.columns and forms.count(True) == len(forms):
        return _shape_run(records, neg, cap, blocks=True)
    if not any(forms):
        return _shape_run(records, neg, cap, blocks=False)
    out: list[bytes] = []
    for run, blocks in _runs(records, forms, neg.columns):
        out += _shape_run(run, neg, cap, blocks=blocks)
    return out


def _runs(
    records: Sequence[Record], forms: Sequence[bool], columns: bool
) -> list[tuple[list[Record], bool]]:
    """Consecutive records of one wire form (blocks, or entries), block records converted to
    entries for a peer that does not take blocks: a response never mixes the two."""
    runs: list[tuple[list[Record], bool]] = []
    for record, is_block in zip(records, forms, strict=True):
        if is_block and not columns:
            record = Record(record.first_seq, record.count, entries_body(record.body))
            is_block = False
        if runs and runs[-1][1] == is_block:
            runs[-1][0].append(record)
        else:
            runs.append(([record], is_block))
    return runs


def _shape_run(
    records: Sequence[Record], neg: Negotiated, cap: int, *, blocks: bool
) -> list[bytes]:
    """Responses for records of one form."""
    raw = b"".join(r.body for r in records)
    if len(raw) > cap and len(records) == 1 and records[0].count >= 1:
        record = records[0]
        if blocks:  # too big for one response: as entries, split and fragmented
            record = Record(record.first_seq, record.count, entries_body(record.body))
        return _split(record, cap)
    if neg.compressor is None:
        return [raw]
    if blocks and not neg.block:
        return [raw]  # per-entry compression is for entries (KevoDB); a block goes plain
    if neg.block:
        block = neg.compressor.compress(raw)
        if len(block) + 16 >= len(raw):
            return [raw]
        msg = rpb.WALStreamResponse(compressed_entries=block)
        msg.codec = neg.codec_id  # type: ignore[assignment]  # enum fields take ints
        return [bytes(msg.SerializeToString())]
    resp = rpb.WALStreamResponse.FromString(raw)
    compress = neg.compressor.compress
    for e in resp.entries:
        e.payload = compress(e.payload)
    resp.compressed = True
    resp.codec = neg.codec_id
    packed = bytes(resp.SerializeToString())
    return [packed] if len(packed) < len(raw) else [raw]


def _split(record: Record, cap: int) -> list[bytes]:
    """A record bigger than the cap: several responses, all but the last `partial_batch`,
    entries bigger than the cap as fragments. The chain field, if the record carries one,
    goes on the last response."""
    whole = rpb.WALStreamResponse.FromString(record.body)
    out: list[rpb.WALStreamResponse] = []
    current = rpb.WALStreamResponse()
    size = 0
    for e in whole.entries:
        entry_size = len(e.payload) + 32
        if entry_size <= cap:
            if size + entry_size > cap and current.entries:
                out.append(current)
                current, size = rpb.WALStreamResponse(), 0
            current.entries.append(e)
            size += entry_size
            continue
        if current.entries:
            out.append(current)
            current, size = rpb.WALStreamResponse(), 0
        payload = e.payload
        if len(payload) <= cap:  # too big to share a response, small enough for one
            out.append(rpb.WALStreamResponse(entries=[e]))
            continue
        pieces = range(0, len(payload), cap)
        for i, start in enumerate(pieces):
            kind = rpb.FIRST if i == 0 else rpb.LAST if i == len(pieces) - 1 else rpb.MIDDLE
            out.append(rpb.WALStreamResponse(entries=[rpb.WALEntry(
                sequence_number=e.sequence_number, payload=payload[start:start + cap],
                fragment_type=kind, checksum=e.checksum)]))
    if current.entries:
        out.append(current)
    for resp in out[:-1]:
        resp.partial_batch = True
    if whole.HasField("chain"):
        out[-1].chain = whole.chain
    return [bytes(r.SerializeToString()) for r in out]


class UnpackError(Exception):
    """A response that cannot be turned into entries: treated like a corrupt entry."""


class Unpacker:
    """Turns responses back into plain FULL entries, in order, a whole write batch at a time:
    decompresses, reassembles fragments, and holds back a batch until it is complete."""

    def __init__(self, compressors: dict[int, Compressor], max_bytes: int) -> None:
        self.compressors = compressors
        self.max_bytes = max_bytes
        self._held: list[rpb.WALEntry] = []
        self._held_bytes = 0
        self._fragment: rpb.WALEntry | None = None
        self._fragment_parts: list[bytes] = []
        #: KevoDB's primary flags plain payloads as zstd-compressed: with this set, a flagged
        #: payload that does not decompress but is a valid plain entry of its own sequence
        #: (and checksum, when set) is taken as it is, and counted
        self.accept_mislabelled = False
        self.mislabelled = 0

    def reset(self) -> None:
        """Drop anything half-received (a gap, a corrupt entry, a new session)."""
        self._held, self._held_bytes = [], 0
        self._fragment, self._fragment_parts = None, []

    @property
    def holding(self) -> bool:
        return bool(self._held) or self._fragment is not None

    def unpack(self, resp: rpb.WALStreamResponse) -> rpb.WALStreamResponse | None:
        """A response whose entries are plain and FULL, or one holding only column blocks,
        or None while a batch is still incomplete. Raises UnpackError for undecodable
        compression, broken fragments, or blocks mixed with entries or partial batches."""
        inner: rpb.WALStreamResponse | None = None
        if resp.compressed_entries:
            inner = self._decompressed(resp)
        blocks = inner.blocks if inner is not None else resp.blocks
        if blocks:
            # a block is a whole write batch: never inside a partial batch, never with entries
            mixed = bool(resp.entries) or resp.partial_batch or self.holding or (
                inner is not None and (bool(inner.entries) or bool(resp.blocks)))
            if mixed:
                raise UnpackError("column blocks arrived mixed with entries or a partial batch")
            if inner is None:
                return resp
            out = rpb.WALStreamResponse(blocks=blocks)
            if inner.HasField("chain"):
                out.chain = inner.chain
            return out
        simple = (
            not resp.compressed_entries and not resp.compressed and not resp.partial_batch
            and not self.holding
        )
        # fragments stand at a response's ends (the primary sends each in its own response);
        # the replica's verification still checks every entry's type
        entries = resp.entries
        if simple and (
            not entries
            or (entries[0].fragment_type == rpb.FULL and entries[-1].fragment_type == rpb.FULL)
        ):
            return resp
        entries = self._plain_entries(resp, inner)
        for e in entries:
            if e.fragment_type == rpb.FULL:
                if self._fragment is not None:
                    raise UnpackError(
                        f"entry {e.sequence_number} arrived inside fragmented entry "
                        f"{self._fragment.sequence_number}")
                self._hold(e)
            else:
                self._add_fragment(e)
        if resp.partial_batch or self._fragment is not None:
            return None
        out = rpb.WALStreamResponse(entries=self._held)
        if resp.HasField("chain"):
            out.chain = resp.chain
        self._held, self._held_bytes = [], 0
        return out

    def _decompressed(self, resp: rpb.WALStreamResponse) -> rpb.WALStreamResponse:
        """The response inside `compressed_entries`."""
        compressor = self._compressor(resp.codec)
        try:
            raw = compressor.decompress(resp.compressed_entries, self.max_bytes)
            inner: rpb.WALStreamResponse = rpb.WALStreamResponse.FromString(raw)
        except (DecompressionError, ValueError) as exc:
            raise UnpackError(f"compressed block does not decode: {exc}") from exc
        return inner

    def _plain_entries(
        self, resp: rpb.WALStreamResponse, inner: rpb.WALStreamResponse | None
    ) -> Sequence[rpb.WALEntry]:
        if inner is not None:
            return list(inner.entries) + list(resp.entries)
        if resp.compressed and resp.codec != CODEC_NONE:
            compressor = self._compressor(resp.codec)
            out = []
            for e in resp.entries:
                try:
                    payload = compressor.decompress(e.payload, self.max_bytes)
                except DecompressionError as exc:
                    if not self._is_plain(e):
                        raise UnpackError(
                            f"payload of entry {e.sequence_number} does not decompress: {exc}"
                        ) from exc
                    payload = e.payload
                    self.mislabelled += 1
                out.append(rpb.WALEntry(sequence_number=e.sequence_number, payload=payload,
                                        fragment_type=e.fragment_type, checksum=e.checksum))
            return out
        return list(resp.entries)

    def _is_plain(self, e: rpb.WALEntry) -> bool:
        """A payload flagged compressed that is in fact a whole plain entry of its sequence."""
        if not self.accept_mislabelled or e.fragment_type != rpb.FULL:
            return False
        if e.checksum and checksum(e.payload) != e.checksum:
            return False
        try:
            decode(e.payload, e.sequence_number)
        except CodecError:
            return False
        return True

    def _compressor(self, codec: int) -> Compressor:
        compressor = self.compressors.get(int(codec))
        if compressor is None:
            raise UnpackError(f"response uses codec {codec}, which this replica does not have")
        return compressor

    def _hold(self, e: rpb.WALEntry) -> None:
        self._held_bytes += len(e.payload)
        if self._held_bytes > self.max_bytes:
            raise UnpackError(f"write batch exceeds {self.max_bytes} bytes")
        self._held.append(e)

    def _add_fragment(self, e: rpb.WALEntry) -> None:
        seq = e.sequence_number
        if e.fragment_type == rpb.FIRST:
            if self._fragment is not None:
                raise UnpackError(f"fragment FIRST of {seq} before the LAST of "
                                  f"{self._fragment.sequence_number}")
            self._fragment, self._fragment_parts = e, [e.payload]
        else:
            if self._fragment is None or self._fragment.sequence_number != seq:
                raise UnpackError(f"fragment of entry {seq} without its FIRST")
            self._fragment_parts.append(e.payload)
        if sum(map(len, self._fragment_parts)) > self.max_bytes:
            raise UnpackError(f"fragmented entry {seq} exceeds {self.max_bytes} bytes")
        if e.fragment_type == rpb.LAST:
            whole = rpb.WALEntry(sequence_number=seq, payload=b"".join(self._fragment_parts),
                                 checksum=self._fragment.checksum)
            self._fragment, self._fragment_parts = None, []
            self._hold(whole)
