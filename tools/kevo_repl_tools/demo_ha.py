"""`kevo-repl demo --ha`: etcd and three `kevo-repl ha` nodes on loopback; the primary is
killed, the election is shown, the promoted node takes writes, the old primary comes back as
a replica, and the run ends with equal digests (exit 0) or says what differs (exit 1)."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from kevo_repl.client.client import Client, SemiSync
from kevo_repl.client.discover import discover
from kevo_repl.errors import KevoReplError
from kevo_repl.protocol.codec import Op
from kevo_repl_tools.etcd_server import EtcdServer
from kevo_repl_tools.ha_launcher import HANode

MARKER = ".kevo-demo-ha"
TTL_S = 2
BATCH = 100


def _say(text: str) -> None:
    print(text, flush=True)


def _write(target: str, first: int, count: int) -> int:
    """Semi-sync batches (wait_for=1, durable) to the primary etcd names; entries written.
    A batch refused while a new primary is still starting is sent again (bounded)."""
    done = 0
    for start in range(first, first + count, BATCH):
        n = min(BATCH, first + count - start)
        batch = [(Op.PUT, b"ha%010d" % i, b"v%d" % i) for i in range(start, start + n)]
        deadline = time.monotonic() + 60.0
        while True:
            try:
                with Client.discover(target, timeout=30.0) as c:
                    c.write_full(batch, SemiSync(wait_for=1, durable=True, timeout_s=10.0))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        done += n
    return done


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except Exception:  # a node that is restarting answers nothing for a moment
            pass
        time.sleep(0.1)
    raise KevoReplError(f"timed out after {timeout:g}s waiting for {what}")


def run_ha_demo(args: argparse.Namespace) -> int:
    work = Path(args.dir)
    if work.exists() and not args.keep:
        if any(work.iterdir()) and not (work / MARKER).exists():
            raise KevoReplError(f"{work} exists and was not made by the demo; pass another --dir")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("made by kevo-repl demo --ha; safe to delete\n")
    count = max(BATCH, min(args.count, 20_000))
    etcd = EtcdServer(work / "etcd")
    nodes: list[HANode] = []
    try:
        etcd.start()
        _say(f"etcd on {etcd.address} (pid {etcd.proc.pid if etcd.proc else 0})")
        for i in range(3):
            node = HANode(f"n{i}", work / f"n{i}", etcd=etcd.address, cluster="demo",
                          ttl_s=TTL_S)
            node.start()
            nodes.append(node)
            _say(f"node {node.name} on {node.address} (agent pid "
                 f"{node.proc.pid if node.proc else 0})")
        target = f"etcd://{etcd.address}/demo"
        first, epoch = discover(target, 30.0)
        old = next(n for n in nodes if n.address == first)
        _say(f"primary: {old.name} at {first}, epoch {epoch}")
        _say(f"wrote {_write(target, 0, count)} entries (semi-sync, wait_for=1, durable)")
        killed = time.monotonic()
        old.kill()
        _say(f"SIGKILL {old.name} (the primary)")
        _wait(lambda: discover(target, 1.0)[0] != first, 60, "a new primary")
        new, new_epoch = discover(target, 1.0)
        leader = next(n for n in nodes if n.address == new)
        _say(f"elected: {leader.name} at {new}, epoch {new_epoch}, "
             f"{time.monotonic() - killed:.1f}s after the kill")
        _say(f"the promoted node took {_write(target, count, count)} entries")
        old.start()
        _say(f"{old.name} started again")
        _wait(lambda: old.status()["role"] == "replica", 60, f"{old.name} to rejoin")
        for report in sorted(old.data_dir.glob("discarded-epoch-*/discarded.json")):
            data = json.loads(report.read_text())
            _say(f"{old.name} rejoined as a replica: fork point {data['fork_point']}, "
                 f"{data['discarded_entries']} entries discarded")
        head = leader.status()["head_sequence"]
        _wait(lambda: all(n.status()["last_applied"] >= head for n in nodes), 120,
              "every node to catch up")
        digests = {n.name: n.digest() for n in nodes}
        for name, d in digests.items():
            _say(f"{name}: sequence {d['sequence']}, {d['keys']} keys, digest {d['digest']}")
        same = len({d["digest"] for d in digests.values()}) == 1
        total = {d["keys"] for d in digests.values()} == {2 * count}
        _say("RESULT: OK" if same and total else "RESULT: FAILED (digests or key counts differ)")
        return 0 if same and total else 1
    finally:
        pids = [n.proc.pid for n in nodes if n.proc is not None]
        for n in nodes:
            n.stop()
        etcd.stop()
        _say(f"stopped node processes: {' '.join(map(str, pids))}")
