"""What a chaos run is held to, and the bookkeeping those checks need.

- **Durability.** Every write whose call returned is in the primary's store at the end, with
  its value; sequence ranges of returned writes never overlap (a reused sequence would mean
  the primary lost a durable write); after each primary restart the latest returned writes
  are read back at once.
- **At most once.** Per node, the apply log's batches never re-apply a sequence at or below
  one already applied, and each store's own counter (``applied_entries``, committed with the
  data) equals its position.
- **Monotonic positions.** A replica's ``last_applied`` and the primary's ``head_sequence``,
  sampled throughout, never move backwards, across restarts too.
- **Convergence.** Once faults stop, every replica reaches the primary's digest within a
  bound; a replica store never lacks an entry of a returned write at or below its position.
- **No leaks, bounded memory.** Every process started is gone afterwards; every node's RSS
  stays under a bound.

Keys are ``w<writer>-<n>`` (n counts up per writer, never reused) and each value is derived
from its key, so a store can be checked against the writes without keeping their data.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kevo_repl.storage.applier import Applier

log = logging.getLogger(__name__)


def key_of(writer: int, n: int) -> bytes:
    return b"w%d-%09d" % (writer, n)


#: in every value a writer writes, and nowhere in keys: the proxy's "corrupt" fault flips
#: it, so the flipped byte lands inside an entry's payload
VALUE_MARKER = b"|"


def value_of(key: bytes) -> bytes:
    return b"%s|%s|%d" % (key, key[::-1], len(key) * 7919)


def parse_key(key: bytes) -> tuple[int, int] | None:
    if not key.startswith(b"w"):
        return None
    head, sep, tail = key[1:].partition(b"-")
    if not sep or not head.isdigit() or not tail.isdigit():
        return None
    return int(head), int(tail)


@dataclass(frozen=True)
class ReturnedWrite:
    """A write whose call returned: keys ``key_of(writer, n0 .. n0 + count - 1)``."""

    writer: int
    n0: int
    count: int
    first: int
    last: int
    #: seconds after the run started
    t: float

    def describe(self) -> str:
        return (f"write of w{self.writer} keys {self.n0}..{self.n0 + self.count - 1} "
                f"(sequences {self.first}..{self.last}, returned at {self.t:.2f}s)")


class WriteLog:
    """Writes whose call returned, and counts of those that failed (thread-safe)."""

    def __init__(self, writers: int) -> None:
        self._lock = threading.Lock()
        self.returned: list[ReturnedWrite] = []
        self.failed = 0
        self.failed_entries = 0
        #: per writer: the next key index it will use (keys below it were attempted)
        self.next_n = [0] * writers

    def reserve(self, writer: int, count: int) -> int:
        with self._lock:
            n0 = self.next_n[writer]
            self.next_n[writer] = n0 + count
            return n0

    def add(self, write: ReturnedWrite) -> None:
        with self._lock:
            self.returned.append(write)

    def add_failure(self, count: int) -> None:
        with self._lock:
            self.failed += 1
            self.failed_entries += count

    def recent(self, n: int) -> list[ReturnedWrite]:
        with self._lock:
            return self.returned[-n:]

    def snapshot(self) -> list[ReturnedWrite]:
        with self._lock:
            return list(self.returned)

    @property
    def entries(self) -> int:
        with self._lock:
            return sum(w.count for w in self.returned)


@dataclass(frozen=True)
class Violation:
    #: seconds after the run started
    t: float
    #: which guarantee: durability, at-most-once, monotonic, convergence, crash, leak, memory
    check: str
    message: str

    def __str__(self) -> str:
        return f"[{self.t:8.2f}s] {self.check}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Checker:
    """Collects observations and violations during and after a run (thread-safe)."""

    def __init__(self, t0: float, rss_limit_mb: float) -> None:
        self.t0 = t0
        self.rss_limit_mb = rss_limit_mb
        self._lock = threading.Lock()
        self.violations: list[Violation] = []
        self.max_position: dict[str, int] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self._rss_reported: set[str] = set()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def violate(self, check: str, message: str) -> None:
        v = Violation(round(self.now(), 3), check, message)
        log.error("chaos violation: %s", v)
        with self._lock:
            self.violations.append(v)

    # -- during the run ----------------------------------------------------------------------

    def observe_position(self, node: str, field: str, value: int) -> None:
        """`value` of a position that may only grow (a replica's last_applied, the head)."""
        key = f"{node} {field}"
        with self._lock:
            before = self.max_position.get(key, 0)
            if value >= before:
                self.max_position[key] = value
                return
        self.violate("monotonic", f"{node}'s {field} moved backwards from {before} to {value}")

    def observe_rss(self, node: str, rss_mb: float) -> None:
        with self._lock:
            self.peak_rss_mb[node] = max(self.peak_rss_mb.get(node, 0.0), rss_mb)
            over = rss_mb > self.rss_limit_mb and node not in self._rss_reported
            if over:
                self._rss_reported.add(node)
        if over:
            self.violate("memory", f"{node} RSS is {rss_mb:.0f} MB, over the bound of "
                         f"{self.rss_limit_mb:.0f} MB")

    def check_written(self, write: ReturnedWrite) -> None:
        if write.last - write.first + 1 != write.count:
            self.violate("durability", f"{write.describe()}: {write.count} entries were "
                         f"written but the primary returned {write.last - write.first + 1} "
                         "sequences")

    # -- after the run -----------------------------------------------------------------------

    def check_sequences_unique(self, writes: Iterable[ReturnedWrite]) -> None:
        """Returned writes own disjoint sequence ranges: a sequence handed out twice means
        the primary lost a write it had acknowledged and reused its sequences."""
        ordered = sorted(writes, key=lambda w: w.first)
        for a, b in itertools.pairwise(ordered):
            if b.first <= a.last:
                self.violate("durability", f"sequences reused: {a.describe()} and "
                             f"{b.describe()} overlap")
                return

    def check_apply_log(self, path: Path) -> dict[str, int]:
        """At most once per node: every batch starts after the last one the node applied.
        Returns the number of batches per node."""
        batches: dict[str, int] = {}
        upto: dict[str, int] = {}
        reported: set[str] = set()
        try:
            text = path.read_text()
        except FileNotFoundError:
            return batches
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 4 or line.startswith("#"):
                continue  # a line cut short by SIGKILL cannot be complete, but tolerate it
            node = parts[0]
            try:
                first, last, count = int(parts[1]), int(parts[2]), int(parts[3])
            except ValueError:
                continue
            batches[node] = batches.get(node, 0) + 1
            if last - first + 1 != count and node not in reported:
                reported.add(node)
                self.violate("at-most-once", f"{node} logged batch {first}..{last} with "
                             f"{count} entries")
            before = upto.get(node, 0)
            if first <= before and node not in reported:
                reported.add(node)
                self.violate("at-most-once", f"{node} applied {first}..{last} after having "
                             f"applied up to {before}: sequences applied twice")
            upto[node] = max(before, last)
        return batches

    def check_store(
        self, node: str, store: Applier, writes: list[ReturnedWrite], next_n: list[int],
        *, all_returned: bool,
    ) -> dict[str, int]:
        """Read a stopped node's store: every value matches its key, and every returned
        write is there — all of them (`all_returned`, the primary) or those at or below the
        store's position (a replica)."""
        with store.snapshot() as snap:
            position = snap.position.sequence
            marks = [bytearray(n) for n in next_n]
            expected = 0
            for w in writes:
                if all_returned or w.last <= position:
                    marks[w.writer][w.n0:w.n0 + w.count] = b"\x01" * w.count
                    expected += w.count
            keys = bad_values = foreign = 0
            first_bad = b""
            for key, value in snap.items():
                keys += 1
                parsed = parse_key(key)
                if parsed is None:
                    foreign += 1
                    continue
                if value != value_of(key):
                    bad_values += 1
                    first_bad = first_bad or key
                writer, n = parsed
                if writer < len(marks) and n < len(marks[writer]) and marks[writer][n] == 1:
                    marks[writer][n] = 2
        missing = sum(m.count(1) for m in marks)
        if missing:
            examples = []
            for w in writes:
                if (all_returned or w.last <= position) and 1 in marks[w.writer][
                    w.n0:w.n0 + w.count
                ]:
                    examples.append(w.describe())
                    if len(examples) == 3:
                        break
            where = "" if all_returned else f" at or below its position {position}"
            self.violate("durability", f"{node}'s store lacks {missing} entries of returned "
                         f"writes{where}, e.g. the {'; the '.join(examples)}")
        if bad_values:
            self.violate("durability", f"{node}'s store holds {bad_values} wrong values "
                         f"(first at key {first_bad!r})")
        if foreign:
            self.violate("durability", f"{node}'s store holds {foreign} keys no writer wrote")
        return {"position": position, "keys": keys, "checked_entries": expected,
                "missing": missing}


def read_rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB, from /proc (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_start_ticks(pid: int) -> int | None:
    """When a process started (clock ticks since boot, /proc/PID/stat field 22), so that a
    recycled PID is not taken for the process that had it (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # the command name (field 2) may hold spaces; fields after it follow its ')'
            return int(fh.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None
