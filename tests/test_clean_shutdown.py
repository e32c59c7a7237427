"""A primary's clean shutdown drains its replication streams before the server's GOAWAY, and
its replicas wait (with jitter) before they reconnect: no replica is setting up a connection
when the GOAWAY goes out (gRPC's GOAWAY memory growth, docs/DESIGN.md)."""

from __future__ import annotations

from helpers import load, wait_caught_up
from kevo_repl_tools.launcher import wait_until

from kevo_repl.protocol.constants import SHUTDOWN_DETAILS


def test_replicas_are_told_and_pause_before_reconnecting(cluster) -> None:
    primary = cluster.primary()
    replicas = [cluster.replica(primary, f"r{i}", replica_id=f"r{i}") for i in (1, 2)]
    load(primary.address, 300)
    wait_caught_up(primary, *replicas)
    assert primary.terminate(timeout=15) == 0, primary.log_tail()
    assert "streams still open" not in primary.log_file.read_text()
    pauses = []
    for r in replicas:
        wait_until(lambda r=r: SHUTDOWN_DETAILS in r.status()["last_error"], 10,
                   "the replica to hear the primary is shutting down")
        delays = r.status()["backoff_history_s"]
        assert delays and 1.0 <= delays[-1] <= 2.0, delays
        pauses.append(delays[-1])
    assert pauses[0] != pauses[1]  # jittered: the replicas do not come back at one instant
    primary.start()
    load(primary.address, 300, start=300)
    wait_caught_up(primary, *replicas)  # and they do come back
