"""What a replica learns about its primary's protocol, and how it treats a protocol-1 primary.

A kevo-repl primary (protocol 2) names its history on a stream's first response, puts its head
and clock on every response (empty ones while idle: heartbeats), and a hash chain after each
batch. KevoDB's primary (protocol 1) sends none of these and no checksums; it flags payloads as
zstd-compressed that are not, re-sends its unacknowledged window on a 100 ms timer, and a
NegativeAcknowledge can deadlock it. So for such a primary the replica asks for codec none,
waits for that re-send before it nacks a gap (`NackPacer`), does not call its silence a stall,
and says in status what is off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kevo_repl.protocol.proto import replication_pb2 as rpb

log = logging.getLogger(__name__)

#: protocol versions as seen from the replica (0: no response yet)
UNKNOWN, KEVODB, KEVO_REPL = 0, 1, 2


@dataclass
class PrimaryProfile:
    """The primary's protocol as its responses show it; kept across reconnects to the same
    primary, refreshed by the first response of every stream."""

    version: int = UNKNOWN
    heartbeats: bool = False  # it sent its head and clock (so its silence means something)
    chain: bool = False  # it sent a hash chain (so divergence is detected)
    checksums: bool = False  # it set entry checksums

    @property
    def legacy(self) -> bool:
        """A protocol-1 (KevoDB) primary."""
        return self.version == KEVODB

    def first_response(self, resp: rpb.WALStreamResponse) -> None:
        """The first response of a stream: a kevo-repl primary names its history on it."""
        version = KEVO_REPL if resp.history_id else KEVODB
        if version != self.version:
            log.info("primary speaks protocol %d%s", version,
                     " (KevoDB): no heartbeats, hash chain or history id" if version == 1 else "")
        self.version = version
        self.heartbeats = self.chain = self.checksums = False
        self.observe(resp)

    def observe(self, resp: rpb.WALStreamResponse) -> None:
        if resp.primary_time_ns:
            self.heartbeats = True
        if resp.HasField("chain"):
            self.chain = True
        if not self.checksums and resp.entries and resp.entries[0].checksum:
            self.checksums = True

    def lacks(self) -> list[str]:
        """What this primary does not send (only once it has been heard from)."""
        if self.version == UNKNOWN:
            return []
        missing = []
        if not self.heartbeats:
            missing.append("heartbeats")
        if self.legacy:
            missing.append("history id")
            if not self.chain:
                missing.append("hash chain")
            if not self.checksums:
                missing.append("checksums")
        return missing

    def status(self) -> dict[str, object]:
        return {
            "primary_protocol": self.version,
            "primary_lacks": self.lacks(),
            # a kevo-repl primary checks the chain at connect even before it sends one
            "divergence_detection": self.version == KEVO_REPL or self.chain,
        }


class NackPacer:
    """When to NegativeAcknowledge a gap or a bad entry from a protocol-1 primary: only once its
    own re-send timer had `wait_s` to repair it, and at most once per `wait_s`."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.nacks = 0
        self._missing = 0  # the sequence waited for; 0 = none
        self._since = 0.0
        self._last_nack: float | None = None
        self._timer: asyncio.Task[None] | None = None

    def problem(
        self,
        sequence: int,
        reason: str,
        received: Callable[[], int],
        nack: Callable[[int, str], Awaitable[None]],
    ) -> None:
        """`sequence` is missing (or arrived bad): nack it later unless it arrives meanwhile
        (`received()` reaches it)."""
        loop = asyncio.get_running_loop()
        if self._missing != sequence:
            self._missing, self._since = sequence, loop.time()
        if self._timer is None or self._timer.done():
            self._timer = loop.create_task(self._nack_when_due(received, nack, reason))

    def due_at(self) -> float:
        due = self._since + self.wait_s
        if self._last_nack is not None:
            due = max(due, self._last_nack + self.wait_s)
        return due

    async def _nack_when_due(
        self,
        received: Callable[[], int],
        nack: Callable[[int, str], Awaitable[None]],
        reason: str,
    ) -> None:
        loop = asyncio.get_running_loop()
        while self._missing and received() < self._missing:
            wait = self.due_at() - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._last_nack = loop.time()
            self.nacks += 1
            sequence, self._missing = self._missing, 0
            await nack(sequence, f"{reason}; not re-sent within {self.wait_s:g}s")
            return
        self._missing = 0

    def cancel(self) -> None:
        """A session ended: what it waited for is asked for by the next stream's start."""
        self._missing = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
