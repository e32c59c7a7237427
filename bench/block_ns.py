"""ns per entry of what column blocks change, CPU only (no store, no network, no fsync).

- replica: one ~1 MiB response (8 write batches of 1,000 entries, 16-byte keys, 100-byte
  values) from its bytes to checked columns and the hash chain after it: per-entry payloads
  (the steps of `Replica._verify_fast` and `_extend_chain`: parse, sequences, a CRC per
  payload, `decode_columns`, the chain over the payloads) against column blocks (parse,
  `blocks.receive`);
- primary: encoding one write batch into a WAL record body (`encode_body`, per-entry
  payloads, against `encode_block_body`), and converting a block record for a peer that did
  not ask for blocks (`entries_body`).

Usage: python bench/block_ns.py [ROUNDS]; prints the median and minimum of ROUNDS rounds.
"""

from __future__ import annotations

import statistics
import sys
import time
import zlib
from collections.abc import Callable
from operator import attrgetter

from kevo_repl.protocol import blocks
from kevo_repl.protocol import chain as chain_mod
from kevo_repl.protocol.codec import Entry, Op, decode_columns
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.records import encode_block_body, encode_body, entries_body

BATCH = 1000
BATCHES = 8  # per response: about 1 MiB, the default response cap
REPEAT = 20  # responses per round

_seq, _payload, _crc, _fragment = (attrgetter(n) for n in (
    "sequence_number", "payload", "checksum", "fragment_type"))


def batches() -> list[list[Entry]]:
    return [[Entry(s, Op.PUT, b"key-%012d" % s, b"v" * 100)
             for s in range(b * BATCH + 1, (b + 1) * BATCH + 1)] for b in range(BATCHES)]


def bodies(encode: Callable[[list[Entry], int], tuple[bytes, int]]) -> bytes:
    chain_value, out = chain_mod.START, []
    for batch in batches():
        body, chain_value = encode(batch, chain_value)
        out.append(body)
    return b"".join(out)


def replica_entries(raw: bytes) -> None:
    resp = rpb.WALStreamResponse.FromString(raw)
    entries = list(resp.entries)
    seqs = list(map(_seq, entries))
    assert seqs == list(range(1, len(seqs) + 1))
    assert list(map(_fragment, entries)).count(rpb.FULL) == len(seqs)
    payloads = list(map(_payload, entries))
    assert list(map(_crc, entries)) == list(map(zlib.crc32, payloads))
    cols = decode_columns(payloads, 1)
    assert cols is not None
    assert chain_mod.over(chain_mod.START, payloads) == resp.chain


def replica_blocks(raw: bytes) -> None:
    resp = rpb.WALStreamResponse.FromString(raw)
    got = blocks.receive(resp.blocks, 1, chain_mod.START)
    assert got.problem is None and got.columns is not None and got.chain == resp.chain


def ns_per_entry(step: Callable[[], None], entries: int, rounds: int) -> tuple[float, float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(REPEAT):
            step()
        out.append((time.perf_counter() - t0) / REPEAT / entries * 1e9)
    return statistics.median(out), min(out)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    plain, columnar = bodies(encode_body), bodies(encode_block_body)
    n = BATCH * BATCHES
    batch = batches()[0]
    block_body, _ = encode_block_body(batch, chain_mod.START)
    rows = [
        ("replica: per-entry payloads -> columns + chain", lambda: replica_entries(plain), n),
        ("replica: column blocks -> columns + chain", lambda: replica_blocks(columnar), n),
        ("primary: encode a batch, per-entry payloads", lambda: encode_body(batch, 1), BATCH),
        ("primary: encode a batch, column block", lambda: encode_block_body(batch, 1), BATCH),
        ("primary: block record -> entries (v1 peers)", lambda: entries_body(block_body), BATCH),
    ]
    print(f"{'path':50} {'median ns':>10} {'min ns':>8}")
    for name, step, entries in rows:
        median, least = ns_per_entry(step, entries, rounds)
        print(f"{name:50} {median:10,.0f} {least:8,.0f}")


if __name__ == "__main__":
    main()
