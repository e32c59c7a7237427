"""Chaos with automatic failover: a real etcd, three `kevo-repl ha` nodes, semi-sync writes
without pause, and seeded faults:

- `primary_kill_failover`: SIGKILL the primary's agent (its node dies with it), wait for a
  new primary, start the old one again (it rejoins as a replica);
- `primary_partition`: cut the primary from etcd (its etcd connection runs through a fault
  proxy; clients still reach it), wait for a new primary, heal;
- `etcd_restart`: SIGKILL etcd, keep it down for a while, start it again on its data.

The checker:
- single writer per epoch: every epoch has one primary, both as etcd named them and as the
  write responses say (each names the epoch it was accepted in: two nodes acknowledging
  writes in one epoch is a violation); no write sent after a newer epoch was named is
  acknowledged in an older one (an old primary writing after its lease expired); and no
  sequence number was acknowledged to two writes;
- no semi-sync-acknowledged write (wait_for=1, durable) lost: each is on the final primary;
- every node converges on the final primary's digest;
- every old primary's discarded entries are exactly the range it reports past the fork
  point, and that range is what its set-aside WAL holds past the fork point of the final
  history (what it had never replicated); every node's status reports the sum as
  `discarded_entries`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kevo_repl.client.client import Client
from kevo_repl.client.discover import discover
from kevo_repl.errors import KevoReplError
from kevo_repl.storage import epochs as epochs_mod
from kevo_repl.storage.wal_check import check_wal
from kevo_repl_tools.etcd_server import EtcdServer
from kevo_repl_tools.faultproxy import FaultProxy
from kevo_repl_tools.ha_launcher import HANode
from kevo_repl_tools.ha_writer import Ack, SemiSyncWriter

log = logging.getLogger(__name__)

HA_KINDS = ("primary_kill_failover", "primary_partition", "etcd_restart")
#: how long any one step may take before the run counts a violation and goes on
STEP_TIMEOUT_S = 60.0


@dataclass
class HAChaosResult:
    seed: int
    duration_s: float
    faults: dict[str, int] = field(default_factory=dict)
    failovers: int = 0
    #: seconds from a fault to the first write acknowledged by a new primary
    time_to_primary_s: list[float] = field(default_factory=list)
    acknowledged: int = 0
    refused: int = 0
    discarded_entries: int = 0
    violations: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        times = sorted(self.time_to_primary_s)

        def pct(p: float) -> float:
            return round(times[min(len(times) - 1, int(p * len(times)))], 2) if times else 0.0

        out = asdict(self)
        out.pop("time_to_primary_s")
        out.update(time_to_primary_p50_s=pct(0.50), time_to_primary_p99_s=pct(0.99))
        return out


class _LeaderWatch:
    """Every (epoch, node address) etcd names as primary, polled without pause."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: dict[int, set[str]] = {}
        #: epoch -> monotonic time it was first seen (after etcd created it: an upper bound)
        self.first_seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                address, epoch = discover(self.target, 1.0)
            except (KevoReplError, Exception):
                continue
            self.first_seen.setdefault(epoch, time.monotonic())
            self.seen.setdefault(epoch, set()).add(address)
            time.sleep(0.05)


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _digest(node: HANode) -> str | None:
    try:
        return json.dumps(node.digest(), sort_keys=True)
    except Exception:
        return None


def run_ha_chaos(
    root: Path, *, seed: int, duration_s: float, ttl_s: int = 2, applier: str = "lmdb",
    kinds: Sequence[str] = HA_KINDS,
) -> HAChaosResult:
    unknown = [k for k in kinds if k not in HA_KINDS]
    if unknown:
        raise KevoReplError(f"unknown HA fault kinds {unknown}; known: {', '.join(HA_KINDS)}")
    rng = random.Random(seed)
    result = HAChaosResult(seed, duration_s)
    etcd = EtcdServer(root / "etcd")
    etcd.start()
    proxies = [FaultProxy(etcd.address, seed=seed + i) for i in range(3)]
    nodes = [
        HANode(f"n{i}", root / f"n{i}", etcd=proxies[i].start(), cluster="chaos",
               ttl_s=ttl_s, applier=applier)
        for i in range(3)
    ]
    target = f"etcd://{etcd.address}/chaos"
    writer, watch = SemiSyncWriter(target, b"chaos-ha-"), _LeaderWatch(target)
    threads = [threading.Thread(target=t.run, daemon=True) for t in (writer, watch)]
    try:
        try:
            for node in nodes:
                node.start()
            discover(target, STEP_TIMEOUT_S)
            for t in threads:
                t.start()
            end = time.monotonic() + duration_s
            while time.monotonic() < end:
                time.sleep(rng.uniform(1.0, 3.0))
                kind = rng.choice(list(kinds))
                result.faults[kind] = result.faults.get(kind, 0) + 1
                _fault(kind, rng, etcd, nodes, proxies, writer, target, result)
        finally:
            writer.stop.set()
            watch.stop.set()
            for t in threads:
                if t.is_alive():
                    t.join(30)
        _check(result, nodes, writer, watch, target)
    finally:  # whatever happened, no process of the run is left behind
        for node in nodes:
            node.kill()
        for proxy in proxies:
            proxy.close()
        etcd.kill()
    return result


def _fault(
    kind: str, rng: random.Random, etcd: EtcdServer, nodes: list[HANode],
    proxies: list[FaultProxy], writer: SemiSyncWriter, target: str, result: HAChaosResult,
) -> None:
    if kind == "etcd_restart":
        etcd.kill()
        time.sleep(rng.uniform(0.5, 3.0))
        etcd.start()
        if not _wait(lambda: _primary_or_none(target) is not None, STEP_TIMEOUT_S):
            result.violations.append("no primary within a minute of an etcd restart")
        return
    found = _primary_or_none(target)
    if found is None:
        return
    address, _ = found
    index = next((i for i, n in enumerate(nodes) if n.address == address), None)
    if index is None:
        return
    at = time.monotonic()
    if kind == "primary_kill_failover":
        nodes[index].kill()
    else:
        proxies[index].cut()
    elected = _wait(lambda: writer.first_ack_after(at, address) is not None, STEP_TIMEOUT_S)
    if kind == "primary_kill_failover":
        nodes[index].start()
    else:
        proxies[index].resume()
    if not elected:
        result.violations.append(f"{kind}: no new primary took a write within a minute")
        return
    first = writer.first_ack_after(at, address)
    assert first is not None
    result.failovers += 1
    result.time_to_primary_s.append(first - at)


def _primary_or_none(target: str) -> tuple[str, int] | None:
    try:
        return discover(target, 1.0)
    except Exception:
        return None


def single_writer_violations(
    seen: dict[int, set[str]], double_acked: Sequence[int]
) -> list[str]:
    out = [f"single writer: epoch {epoch} had primaries {sorted(holders)}"
           for epoch, holders in sorted(seen.items()) if len(holders) > 1]
    if double_acked:
        out.append(f"single writer: sequences acknowledged twice: {list(double_acked[:5])}")
    return out


def epoch_violations(
    acks: Iterable[Ack], first_seen: dict[int, float], named: dict[int, set[str]] | None = None
) -> list[str]:
    """What the write responses' epochs show: two nodes acknowledging writes in one epoch
    (or one that etcd did not name for it, with `named`: epoch -> the nodes etcd named),
    a write acknowledged without an epoch, and a write sent after a newer epoch was named in
    etcd yet acknowledged in an older one (its primary's lease had expired by then: etcd
    names a new leader only once the old key is gone)."""
    named = named or {}
    holders: dict[int, set[str]] = {}
    late: list[Ack] = []
    unnamed = 0
    # for each epoch, the earliest time any newer epoch was seen
    newer_seen: dict[int, float] = {}
    soonest = float("inf")
    for epoch in sorted(first_seen, reverse=True):
        newer_seen[epoch] = soonest
        soonest = min(soonest, first_seen[epoch])
    for ack in acks:
        if not ack.epoch:
            unnamed += 1
            continue
        holders.setdefault(ack.epoch, set()).add(ack.address)
        newer = newer_seen.get(ack.epoch)
        if newer is None:  # an epoch the watch never saw: compare with every seen epoch
            newer = min((t for e, t in first_seen.items() if e > ack.epoch), default=newer)
        if newer is not None and ack.sent_at > newer:
            late.append(ack)
    # (two nodes etcd named for one epoch are single_writer_violations')
    out = [f"single writer: writes in epoch {epoch} were acknowledged by {sorted(nodes)}"
           f"{'' if epoch not in named else f'; etcd named {sorted(named[epoch])}'}"
           for epoch, nodes in sorted(holders.items())
           if len(nodes) > 1 or (epoch in named and not nodes <= named[epoch])]
    if unnamed:
        out.append(f"single writer: {unnamed} writes acknowledged without an epoch")
    if late:
        first = late[0]
        out.append(
            f"single writer: {len(late)} writes acknowledged in an epoch after a newer one was "
            f"named, first sequence {first.sequence} by {first.address} in epoch {first.epoch}"
        )
    return out


def discarded_violation(report: dict[str, Any]) -> str | None:
    """An old primary's report must name exactly the range past its fork point."""
    n = report["discarded_entries"]
    if not n:
        return None if report["discarded_first"] == report["discarded_last"] == 0 else (
            "no discarded entries, yet a discarded range")
    if report["discarded_first"] != report["fork_point"] + 1:
        return f"the discarded range starts at {report['discarded_first']}, not after the fork"
    span = report["discarded_last"] - report["discarded_first"] + 1
    if n != span:
        return f"{n} discarded entries but the range holds {span}"
    return None


def _check(
    result: HAChaosResult, nodes: list[HANode], writer: SemiSyncWriter, watch: _LeaderWatch,
    target: str,
) -> None:
    result.acknowledged = len(writer.acked)
    result.refused = writer.refused
    v = result.violations
    v += single_writer_violations(watch.seen, writer.double_acked)
    v += epoch_violations(writer.acks(), dict(watch.first_seen), watch.seen)
    if not _wait(lambda: len({_digest(n) for n in nodes} - {None}) == 1
                 and None not in {_digest(n) for n in nodes}, 180):
        v.append("convergence: the nodes' digests differ three minutes after the run")
    found = _primary_or_none(target)
    if found is None:
        v.append("no primary at the end of the run")
        return
    with Client(found[0], timeout=30.0) as c:
        lost = [k for k in writer.acked if c.get(k) != k]
    if lost:
        v.append(f"lost {len(lost)} semi-sync-acknowledged writes, first {lost[:3]}")
    with Client(found[0], timeout=30.0) as c:
        final = epochs_mod.parse(c.status_headers()[epochs_mod.EPOCHS_HEADER], header=True)
    for node in nodes:
        v += _discarded_violations(node, final, result)


def never_replicated(aside: Path, final: Sequence[epochs_mod.Epoch]) -> int:
    """What an old primary's set-aside WAL holds past its fork point from the final history:
    the entries it had written and nobody replicated into that history."""
    head = check_wal(aside).last_good_sequence
    fork = epochs_mod.fork_point(epochs_mod.load(aside / "wal"), final)
    return 0 if fork is None else max(0, head - fork)


def _discarded_violations(
    node: HANode, final: Sequence[epochs_mod.Epoch], result: HAChaosResult
) -> list[str]:
    out = []
    total = 0
    for report_file in sorted(node.data_dir.glob("discarded-epoch-*/discarded.json")):
        report = json.loads(report_file.read_text())
        total += report["discarded_entries"]
        problem = discarded_violation(report)
        if problem is not None:
            out.append(f"{report_file}: {problem}")
        if report["was"] == "primary":
            expected = never_replicated(report_file.parent, final)
            if report["discarded_entries"] != expected:
                out.append(f"{report_file}: {report['discarded_entries']} discarded, but its "
                           f"WAL held {expected} entries never replicated")
    result.discarded_entries += total
    try:
        reported = int(node.status()["discarded_entries"])
    except Exception as exc:
        return [*out, f"{node.name}: no status to compare discarded entries with: {exc}"]
    if reported != total:
        out.append(f"{node.name}: status reports {reported} discarded entries, its rejoin "
                   f"reports {total}")
    return out
