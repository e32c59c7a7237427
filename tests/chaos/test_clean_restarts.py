"""Clean restarts of a primary never balloon its replicas' memory (issue 19).

A primary's clean shutdown sends SETTINGS and GOAWAY on every connection; grpcio 1.83-1.85
allocate memory without end when those reach a call still waiting for its connection
(tests/chaos/test_found_by_chaos.py). Here two replicas follow a primary that is restarted
cleanly (SIGTERM) 20 times. r2 reaches it through a fault proxy that, before each restart,
drops r2's connection and stalls the new one, so r2 is mid-connect by construction when the
old primary's shutdown bytes arrive (released a seeded moment after it exited, as in
`kevo-repl chaos --seed 16`). A sampler reads both replicas' RSS every 20 ms; each restart's
peak must stay under 300 MB, no replica may exit (the memory guard would), and the replicas
end equal to the primary.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from kevo_repl_tools.chaos_checker import read_rss_mb
from kevo_repl_tools.faultproxy import FaultProxy
from kevo_repl_tools.launcher import NodeProcess, wait_until

from tests.conftest import Cluster
from tests.helpers import assert_same_digest, wait_caught_up

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

RESTARTS = 20
RSS_BOUND_MB = 300.0
SEED = 19


class _RssSampler:
    """Peak RSS per node since the last reset(), read from /proc every `interval` s."""

    def __init__(self, nodes: dict[str, NodeProcess], interval: float = 0.02) -> None:
        self.nodes = nodes
        self.interval = interval
        self.peaks: dict[str, float] = {}
        self.samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, node in self.nodes.items():
                rss = read_rss_mb(node.pid) if node.running else None
                if rss is not None:
                    with self._lock:
                        self.peaks[name] = max(self.peaks.get(name, 0.0), rss)
                        self.samples += 1

    def reset(self) -> dict[str, float]:
        with self._lock:
            peaks, self.peaks = self.peaks, {}
        return peaks

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_twenty_clean_primary_restarts_keep_replica_memory_bounded(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    cluster = Cluster(tmp_path, "lmdb")
    proxy: FaultProxy | None = None
    try:
        primary = cluster.primary()
        proxy = FaultProxy(primary.address)
        proxy_address = proxy.start()
        r1 = cluster.replica(primary, "r1", replica_id="r1")
        r2 = NodeProcess("replica", tmp_path / "r2", primary=proxy_address, replica_id="r2",
                         applier="lmdb", env=cluster.env())
        cluster.nodes.append(r2)
        r2.start()
        pids = {"r1": r1.pid, "r2": r2.pid}
        peaks: list[dict[str, float]] = []
        mid_connect = 0
        with _RssSampler({"r1": r1, "r2": r2}) as sampler, primary.client() as client:
            for i in range(RESTARTS):
                client.write([(1, b"k%03d-%d" % (i, n), b"v" * 100) for n in range(200)])
                wait_caught_up(primary, r1, r2, timeout=60)
                sampler.reset()
                # r2's next connection is accepted by the proxy, connected to the primary
                # (which answers with its SETTINGS) and held: r2 is mid-connect
                before = proxy.connections
                proxy.cut_and_stall()
                wait_until(lambda b=before: proxy.connections > b, 10, "r2 to reconnect")
                mid_connect += 1
                assert primary.terminate(timeout=15) == 0, primary.log_tail()
                # the old primary's SETTINGS and GOAWAYs reach r2 a seeded moment later,
                # before or after the new primary is up
                release_after = rng.uniform(0.0, 1.0)
                restart_after = rng.uniform(0.2, 1.0)
                t0 = time.monotonic()
                released = False
                if release_after <= restart_after:
                    time.sleep(release_after)
                    proxy.resume()
                    released = True
                time.sleep(max(0.0, restart_after - (time.monotonic() - t0)))
                primary.start()
                if not released:
                    time.sleep(max(0.0, release_after - (time.monotonic() - t0)))
                    proxy.resume()
                client.close()
                client = primary.client()
                wait_caught_up(primary, r1, r2, timeout=60)
                peaks.append(sampler.reset())
                assert r1.running and r2.running, f"a replica exited in restart {i}"
        assert len(peaks) == RESTARTS and mid_connect == RESTARTS
        for i, p in enumerate(peaks):
            assert set(p) == {"r1", "r2"}, f"restart {i}: no RSS samples for {p}"
            for name, mb in p.items():
                assert mb < RSS_BOUND_MB, f"restart {i}: {name} peaked at {mb:.0f} MB"
        # no restart by the memory guard: the same processes all along, never tripped
        assert {"r1": r1.pid, "r2": r2.pid} == pids
        for r in (r1, r2):
            st = r.status()
            assert st["memory_guard_trips"] == 0 and 0 < st["rss_bytes"] < RSS_BOUND_MB * 2**20
        assert_same_digest(primary, r1, r2)
        worst = max(mb for p in peaks for mb in p.values())
        print(f"peak replica RSS over {RESTARTS} clean restarts: {worst:.0f} MB")
    finally:
        if proxy is not None:
            proxy.close()
        cluster.close()
