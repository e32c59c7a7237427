"""The fault schedule of a chaos run: generated whole, up front, from one seed.

`generate_schedule(seed, duration)` draws every fault — when it starts, its kind, its target,
how long it lasts and its parameter — from ``random.Random(seed)`` before anything runs, so
the same seed always gives the same schedule (executing it takes a little longer or shorter
from run to run; the schedule does not change).

Faults never overlap on one resource: a node process (kill, freeze, disk errors on the
primary, retention), a replica's link to the primary (cut, stall, delay, corrupt) and a
replica's disk (disk errors). Faults on different resources overlap freely.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

NODES = ("primary", "r1", "r2")
REPLICAS = ("r1", "r2")


@dataclass(frozen=True)
class KindSpec:
    """How faults of one kind are drawn."""

    targets: tuple[str, ...]
    #: seconds the fault lasts (uniform between the two)
    duration: tuple[float, float]
    #: the kind's parameter (uniform between the two; integers when both are integers)
    param: tuple[float, float]
    #: what `param` means, for the timeline
    param_unit: str
    #: relative frequency
    weight: float
    help: str


KINDS: dict[str, KindSpec] = {
    "kill": KindSpec(NODES, (0.2, 3.0), (0, 0), "", 3.0,
                     "SIGKILL the node; restart it on its data directory after the duration"),
    "restart": KindSpec(NODES, (0.2, 2.0), (0, 0), "", 1.5,
                        "SIGTERM the node (a clean shutdown: gRPC GOAWAY to its peers); start "
                        "it again after the duration"),
    "freeze": KindSpec(NODES, (0.5, 4.0), (0, 0), "", 2.0,
                       "SIGSTOP the node (a frozen process); SIGCONT after the duration"),
    "cut": KindSpec(REPLICAS, (0.5, 4.0), (0, 0), "", 2.0,
                    "close the replica's connections to the primary and refuse new ones"),
    "stall": KindSpec(REPLICAS, (0.5, 5.0), (0, 0), "", 1.5,
                      "keep the replica's connections open but forward nothing"),
    "delay": KindSpec(REPLICAS, (1.0, 5.0), (0.005, 0.1), "s per chunk", 1.5,
                      "hold every chunk between primary and replica"),
    "corrupt": KindSpec(REPLICAS, (1.0, 4.0), (1, 4), "chunks", 2.0,
                        "flip a byte of a replicated entry's value in each of the next "
                        "chunks the primary sends (what entry checksums must catch)"),
    "corrupt_any": KindSpec(REPLICAS, (1.0, 4.0), (1, 4), "chunks", 1.0,
                            "flip any byte (HTTP/2 framing, gRPC and protobuf envelopes, "
                            "payloads) in each of the next chunks the primary sends"),
    "disk_error": KindSpec(NODES, (1.0, 4.0), (1, 4), "applies", 2.0,
                           "the node's applier fails the next applies with ENOSPC; a primary "
                           "answers what its WAL holds as committed, refuses new writes "
                           "until its store applies again, and is killed and restarted at "
                           "the end of the fault"),
    "retention": KindSpec(REPLICAS, (4.0, 8.0), (0, 0), "", 1.0,
                          "SIGKILL the replica and keep it down while writes go on until the "
                          "primary (max_retained_bytes 1 MiB) no longer retains its position, "
                          "so that it must bootstrap from a snapshot; then restart it"),
    "wal_bitflip": KindSpec(("primary",), (0.5, 2.0), (0, 0), "", 1.0,
                            "SIGKILL the primary, flip one bit inside its active WAL segment "
                            "and start it: it must refuse, naming file, offset and last good "
                            "sequence, with the segment unchanged; then undo the flip and "
                            "start it again"),
    "slot_flood": KindSpec(("primary",), (1.0, 3.0), (70, 120), "replica ids", 1.0,
                           "open and drop streams under that many new replica ids: past "
                           "[retention] max_slots they must be refused (RESOURCE_EXHAUSTED); "
                           "the flood's slots are dropped at the end"),
    "stalled_snapshot": KindSpec(("primary",), (15.0, 20.0), (4, 4), "snapshots", 1.0,
                                 "take every held snapshot, read one chunk of each and stop "
                                 "reading: before the fault ends (well past [snapshot] "
                                 "hold_s) a new snapshot must be served"),
    "rogue_replica": KindSpec(("primary",), (1.0, 3.0), (0, 0), "", 1.0,
                              "try to stream as r1 and r2 (ALREADY_EXISTS while they are "
                              "live) and send impossible acks on a session of its own "
                              "(INVALID_ARGUMENT; the slot must not move)"),
    "unread_writestream": KindSpec(("primary",), (3.0, 6.0), (0, 0), "", 1.0,
                                   "send refused writes on a WriteStream and never read the "
                                   "answers: the primary must stop reading (bounded) and its "
                                   "RSS stay under the bound"),
}

#: Kinds in a run unless asked otherwise: all of them (`restart` is back since our channels
#: avoid gRPC's GOAWAY memory growth; docs/chaos.md, known problem 2).
DEFAULT_KINDS = (
    "kill", "freeze", "restart", "cut", "stall", "delay", "corrupt", "corrupt_any",
    "disk_error", "retention",
)

#: no fault starts before this many seconds (writers and replicas get going first)
WARMUP_S = 2.0
#: seconds between the starts of two faults (uniform between the two)
GAP_S = (0.3, 2.0)


@dataclass(frozen=True)
class Fault:
    id: int
    #: seconds after the run starts
    at: float
    kind: str
    target: str
    #: seconds until the fault is healed
    duration: float
    #: kind-specific: delay per chunk, chunks to corrupt, applies to fail
    param: float = 0.0
    #: seeds anything random while the fault runs (which bytes a corruption flips)
    seed: int = 0

    @property
    def ends(self) -> float:
        return self.at + self.duration

    @property
    def resource(self) -> str:
        if self.kind in ("cut", "stall", "delay", "corrupt", "corrupt_any"):
            return f"link:{self.target}"
        if self.kind == "disk_error" and self.target != "primary":
            return f"disk:{self.target}"
        return f"node:{self.target}"

    def describe(self) -> str:
        unit = KINDS[self.kind].param_unit
        param = f" {_fmt_param(self.param)} {unit}" if unit else ""
        return f"{self.kind} {self.target} for {self.duration:.2f}s{param}"


def _fmt_param(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def generate_schedule(
    seed: int,
    duration: float,
    kinds: Sequence[str] = DEFAULT_KINDS,
    targets: Iterable[str] | None = None,
) -> list[Fault]:
    """Every fault of a run of `duration` seconds, drawn from `random.Random(seed)`.

    Each fault ends by `duration`. `targets` limits faults to some of primary, r1, r2.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(KINDS)}")
    allowed = set(NODES if targets is None else targets)
    if not allowed <= set(NODES):
        raise ValueError(f"targets must be among {', '.join(NODES)}, not {sorted(allowed)}")
    usable = [k for k in kinds if set(KINDS[k].targets) & allowed]
    rng = random.Random(seed)
    faults: list[Fault] = []
    busy_until: dict[str, float] = {}
    t = WARMUP_S
    while usable:
        t += rng.uniform(*GAP_S)
        if t >= duration - 0.5:
            break
        kind = rng.choices(usable, weights=[KINDS[k].weight for k in usable])[0]
        spec = KINDS[kind]
        lasts = round(rng.uniform(*spec.duration), 3)
        lo, hi = spec.param
        param = float(rng.randint(int(lo), int(hi))) if float(lo).is_integer() and float(
            hi
        ).is_integer() else round(rng.uniform(lo, hi), 4)
        fault_seed = rng.randrange(2**32)
        candidates = [x for x in spec.targets if x in allowed]
        target = rng.choice(candidates)
        at = round(t, 3)
        lasts = min(lasts, round(duration - at, 3))
        fault = Fault(len(faults), at, kind, target, lasts, param, fault_seed)
        if busy_until.get(fault.resource, 0.0) > at or lasts < 0.2:
            continue  # the resource is taken, or no time is left: no fault this time
        busy_until[fault.resource] = fault.ends + 0.2
        faults.append(fault)
    return faults


def schedule_to_json(faults: Sequence[Fault]) -> list[dict[str, Any]]:
    return [asdict(f) for f in faults]


def schedule_from_json(data: Iterable[dict[str, Any]]) -> list[Fault]:
    return [Fault(**d) for d in data]


def dump_schedule(faults: Sequence[Fault]) -> str:
    return json.dumps(schedule_to_json(faults), indent=1)


def format_schedule(faults: Sequence[Fault]) -> str:
    """One line per fault: start, end, what."""
    return "\n".join(
        f"  #{f.id:<3} {f.at:8.2f}s .. {f.ends:8.2f}s  {f.describe()}" for f in faults
    )
