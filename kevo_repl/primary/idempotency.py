"""Idempotent writes: the primary remembers the idempotency keys of its last writes.

A write may carry a key (1 to `MAX_KEY_BYTES` bytes). The key travels in the write's WAL
record (kevo_repl.protocol.records), so the window below is rebuilt from the WAL's tail on
restart and a retry finds the original whether or not the primary restarted in between.

The window covers the last `size` writes, keyed or not: a key is forgotten once `size` more
writes were assigned sequences after it. Counting every write (not only keyed ones) makes the
window the same before and after a restart while the rebuild reads only the last `size`
records. At most `size` keys are held; each costs about `BYTES_PER_KEY` bytes of memory
(tracemalloc, 64-byte keys; 360 for 16-byte keys).
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from kevo_repl.errors import KevoReplError
from kevo_repl.protocol.codec import Op
from kevo_repl.protocol.records import Record, keyed_payloads

#: the longest idempotency key a write may carry
MAX_KEY_BYTES = 64
_OP_AND_KEY_LEN = struct.Struct("<BI")
_LEN = struct.Struct("<I")
#: memory one remembered key of MAX_KEY_BYTES takes (tracemalloc, CPython 3.11)
BYTES_PER_KEY = 410


class KeyReused(KevoReplError):
    """An idempotency key the primary remembers, sent with other mutations than its write.

    FAILED_PRECONDITION, not INVALID_ARGUMENT: the request is refused because of the
    primary's state (it remembers the key), and the same request is valid once the key has
    left the window."""


def key_problem(key: bytes) -> str | None:
    """Why `key` cannot be an idempotency key, or None."""
    if not key:
        return "an idempotency key must not be empty (omit it for a write without one)"
    if len(key) > MAX_KEY_BYTES:
        return f"an idempotency key is at most {MAX_KEY_BYTES} bytes, not {len(key)}"
    return None


def content_digest(mutations: Iterable[tuple[int, bytes, bytes]]) -> bytes:
    """What identifies a write's content: its ops, keys and values, hashed as its entries'
    payloads lay them out without the sequence (op, key length, key, and for all but a
    Delete value length and value), so that the WAL's payloads give the same digest."""
    h = hashlib.blake2b(digest_size=16)
    for op, key, value in mutations:
        h.update(_OP_AND_KEY_LEN.pack(op, len(key)))
        h.update(key)
        if op != Op.DELETE:
            h.update(_LEN.pack(len(value)))
            h.update(value)
    return h.digest()


def payloads_digest(payloads: Iterable[bytes]) -> bytes:
    """content_digest of the write whose entries have these payloads (codec layout: op at
    0, the sequence at 1..8, the rest from 9 on)."""
    h = hashlib.blake2b(digest_size=16)
    for payload in payloads:
        h.update(payload[:1])
        h.update(payload[9:])
    return h.digest()


@dataclass(frozen=True, slots=True)
class Remembered:
    """A keyed write: its sequences, its content, and which write (counted) it was."""

    first: int
    last: int
    digest: bytes
    number: int


class IdempotencyWindow:
    """The keys of the last `size` writes, oldest first; see the module docstring."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"an idempotency window holds at least 1 write, not {size}")
        self.size = size
        self._keys: OrderedDict[bytes, Remembered] = OrderedDict()
        self._writes = 0  # writes counted so far (keyed or not)
        #: the first sequence of the oldest remembered keyed write: WAL retention keeps the
        #: WAL from there, so that a restart finds every key (a plain attribute, read from
        #: retention's threads)
        self.oldest_sequence: int | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def lookup(self, key: bytes, digest: bytes) -> Remembered | None:
        """The earlier write with this key, None if there is none; KeyReused if that write
        had other content."""
        known = self._keys.get(key)
        if known is None:
            return None
        if known.digest != digest:
            raise KeyReused(
                f"idempotency key {key!r} belongs to write {known.first}-{known.last}, whose "
                "mutations differ from this request's; use a new key for a new write"
            )
        return known

    def count_write(self, first: int, last: int, key: bytes | None, digest: bytes) -> None:
        """A write was assigned sequences first..last: remember its key (if any), and
        forget the keys that fell out of the window."""
        self._writes += 1
        if key is not None:
            self._keys[key] = Remembered(first, last, digest, self._writes)
            self._keys.move_to_end(key)
        oldest = self._writes - self.size
        keys = self._keys
        while keys:
            front = next(iter(keys.values()))
            if front.number > oldest:
                self.oldest_sequence = front.first
                return
            keys.popitem(last=False)
        self.oldest_sequence = None

    def rebuild(self, records: Iterable[Record]) -> None:
        """Count the records of the WAL's tail (the last `size` of them, oldest first), as
        they were written; only keyed records are parsed."""
        for record in records:
            keyed = keyed_payloads(record.body)
            if keyed is None:
                self.count_write(record.first_seq, record.last_seq, None, b"")
            else:
                key, payloads = keyed
                digest = payloads_digest(payloads)
                self.count_write(record.first_seq, record.last_seq, key, digest)
