"""The entry codec against KevoDB's golden vectors, and its rejections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kevo_repl.protocol.codec import CodecError, Op, checksum, decode, encode
from kevo_repl.protocol.proto import replication_pb2 as rpb

VECTORS = json.loads((Path(__file__).parent / "vectors" / "kevodb_payloads.json").read_text())


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_encode_matches_kevodb(v: dict) -> None:
    payload = encode(v["sequence"], v["op"], bytes.fromhex(v["key_hex"]),
                     bytes.fromhex(v["value_hex"]))
    assert payload.hex() == v["payload_hex"]
    assert checksum(payload) == v["crc32_ieee"]


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_decode_matches_kevodb(v: dict) -> None:
    entry = decode(bytes.fromhex(v["payload_hex"]), v["sequence"])
    assert (entry.seq, entry.op, entry.key.hex(), entry.value.hex()) == (
        v["sequence"], v["op"], v["key_hex"], v["value_hex"]
    )


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_wal_entry_message_matches_kevodb(v: dict) -> None:
    payload = bytes.fromhex(v["payload_hex"])
    msg = rpb.WALEntry(sequence_number=v["sequence"], payload=payload, checksum=checksum(payload))
    assert msg.SerializeToString().hex() == v["wal_entry_message_hex"]
    parsed = rpb.WALEntry.FromString(bytes.fromhex(v["wal_entry_message_hex"]))
    assert parsed.fragment_type == rpb.FULL and parsed.checksum == v["crc32_ieee"]


def test_rejects_short_payload() -> None:
    with pytest.raises(CodecError, match="shorter"):
        decode(b"\x01" * 12)


def test_rejects_unknown_op() -> None:
    with pytest.raises(CodecError, match="unknown op 9"):
        decode(b"\x09" + bytes(12))
    with pytest.raises(CodecError):
        encode(1, 9, b"k")


def test_rejects_sequence_mismatch() -> None:
    with pytest.raises(CodecError, match="differs"):
        decode(encode(5, Op.PUT, b"k", b"v"), 6)


def test_rejects_lengths_past_the_end() -> None:
    payload = encode(1, Op.PUT, b"key", b"value")
    for cut in range(13, len(payload)):
        with pytest.raises(CodecError):
            decode(payload[:cut], 1)
    with pytest.raises(CodecError, match="trailing"):
        decode(encode(1, Op.DELETE, b"k") + b"x", 1)
    with pytest.raises(CodecError):
        decode(payload + b"x", 1)


def test_absurd_key_length_does_not_allocate() -> None:
    payload = bytes([1]) + (1).to_bytes(8, "little") + (0xFFFFFFFF).to_bytes(4, "little") + b"k"
    with pytest.raises(CodecError, match="past the end"):
        decode(payload, 1)
