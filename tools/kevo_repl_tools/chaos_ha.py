"""Chaos with automatic failover: a real etcd, three `kevo-repl ha` nodes, semi-sync writes
without pause, and seeded faults:

- `primary_kill_failover`: SIGKILL the primary's agent (its node dies with it), wait for a
  new primary, start the old one again (it rejoins as a replica);
- `primary_partition`: cut the primary from etcd (its etcd connection runs through a fault
  proxy; clients still reach it), wait for a new primary, heal;
- `etcd_restart`: SIGKILL etcd, keep it down for a while, start it again on its data.

The checker:
- single writer per epoch: every epoch etcd ever named has one primary, and no sequence
  number was acknowledged to two writes (a second writer in one history would reuse them);
- no semi-sync-acknowledged write (wait_for=1, durable) lost: each is on the final primary;
- every node converges on the final primary's digest;
- every old primary's discarded entries are exactly the range it reports past the fork
  point, and no acknowledged write was among them.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kevo_repl.client.client import Client, SemiSync
from kevo_repl.client.discover import discover
from kevo_repl.errors import KevoReplError
from kevo_repl.protocol.codec import Op
from kevo_repl_tools.etcd_server import EtcdServer
from kevo_repl_tools.faultproxy import FaultProxy
from kevo_repl_tools.ha_launcher import HANode

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


class _Writer:
    """Semi-sync writes to whatever primary etcd names; every ack is kept."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.acked: dict[bytes, tuple[int, str]] = {}
        self.acked_at: list[tuple[float, str]] = []
        self.seq_owner: dict[int, bytes] = {}
        self.double_acked: list[int] = []
        self.refused = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        client: Client | None = None
        i = 0
        while not self.stop.is_set():
            key = b"chaos-ha-%010d" % i
            i += 1
            try:
                if client is None:
                    client = Client.discover(self.target, timeout=3.0)
                resp = client.write_full(
                    [(Op.PUT, key, key)], SemiSync(wait_for=1, durable=True, timeout_s=1.0)
                )
            except Exception:  # refused, timed out, no primary: counted, then retried
                self.refused += 1
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.05)
                continue
            with self.lock:
                seq = resp.last_sequence
                if seq in self.seq_owner:
                    self.double_acked.append(seq)
                self.seq_owner[seq] = key
                self.acked[key] = (seq, client.target)
                self.acked_at.append((time.monotonic(), client.target))
        if client is not None:
            client.close()

    def first_ack_after(self, when: float, not_by: str) -> float | None:
        with self.lock:
            return next((t for t, a in self.acked_at if t > when and a != not_by), None)


class _LeaderWatch:
    """Every (epoch, node address) etcd names as primary, polled without pause."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: dict[int, set[str]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                address, epoch = discover(self.target, 1.0)
            except (KevoReplError, Exception):
                continue
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
    writer, watch = _Writer(target), _LeaderWatch(target)
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
    proxies: list[FaultProxy], writer: _Writer, target: str, result: HAChaosResult,
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
    result: HAChaosResult, nodes: list[HANode], writer: _Writer, watch: _LeaderWatch,
    target: str,
) -> None:
    result.acknowledged = len(writer.acked)
    result.refused = writer.refused
    v = result.violations
    v += single_writer_violations(watch.seen, writer.double_acked)
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
    for node in nodes:
        for report_file in sorted(node.data_dir.glob("discarded-epoch-*/discarded.json")):
            report = json.loads(report_file.read_text())
            result.discarded_entries += report["discarded_entries"]
            problem = discarded_violation(report)
            if problem is not None:
                v.append(f"{report_file}: {problem}")
