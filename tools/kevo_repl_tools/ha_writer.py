"""A semi-sync writer for HA runs: writes without pause to whatever primary a target names
(`etcd://HOST:PORT/CLUSTER` follows failovers), keeping every acknowledgement with the node
and the epoch that gave it. Used by `chaos-ha` and by the HA tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from kevo_repl.client.client import Client, SemiSync
from kevo_repl.protocol.codec import Op

#: each write waits for one replica's durable ack, at most this long
SEMISYNC_TIMEOUT_S = 1.0
#: acknowledgements kept; past it the writer stops writing (a run is bounded)
MAX_ACKS = 2_000_000


@dataclass(frozen=True)
class Ack:
    key: bytes
    sequence: int
    #: the node that answered, and the epoch it said it accepted the write in
    address: str
    epoch: int
    #: monotonic times the request was sent and its answer arrived
    sent_at: float
    acked_at: float


class SemiSyncWriter:
    """Single-key writes, each semi-synchronous (wait_for=1, durable); a refused or timed-out
    write is counted and retried with a fresh discovery. Run it on a thread; `stop` ends it."""

    def __init__(self, target: str, prefix: bytes = b"w", *, max_acks: int = MAX_ACKS) -> None:
        self.target = target
        self.prefix = prefix
        self.max_acks = max_acks
        #: key -> its acknowledgement, in the order they came
        self.acked: dict[bytes, Ack] = {}
        #: sequences acknowledged to two different writes (a second writer in one history)
        self.double_acked: list[int] = []
        self.refused = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self._seq_owner: dict[int, bytes] = {}

    def run(self) -> None:
        client: Client | None = None
        i = 0
        sync = SemiSync(wait_for=1, durable=True, timeout_s=SEMISYNC_TIMEOUT_S)
        while not self.stop.is_set() and len(self.acked) < self.max_acks:
            key = self.prefix + b"%010d" % i
            i += 1
            sent = time.monotonic()
            try:
                if client is None:
                    client = Client.discover(self.target, timeout=3.0)
                resp = client.write_full([(Op.PUT, key, key)], sync)
            except Exception:  # refused, timed out, no primary yet: counted, then retried
                self.refused += 1
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.05)
                continue
            ack = Ack(key, resp.last_sequence, client.target, resp.epoch, sent,
                      time.monotonic())
            with self.lock:
                if ack.sequence in self._seq_owner:
                    self.double_acked.append(ack.sequence)
                self._seq_owner[ack.sequence] = key
                self.acked[key] = ack
        if client is not None:
            client.close()

    def acks(self) -> list[Ack]:
        with self.lock:
            return list(self.acked.values())

    def first_ack_after(self, when: float, not_by: str) -> float | None:
        """When a node other than `not_by` first acknowledged a write after `when` (a new
        primary taking writes). Scans back only over the acks after `when`."""
        first = None
        with self.lock:
            for ack in reversed(self.acked.values()):
                if ack.acked_at <= when:
                    break
                if ack.address != not_by:
                    first = ack.acked_at
        return first
