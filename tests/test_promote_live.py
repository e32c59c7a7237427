"""`kevo-repl promote --target R`: a running replica becomes the primary of a new epoch in
place (no restart), continuing from its durable position. Real processes; the old primary
and then the promoted node SIGKILLed."""

from __future__ import annotations

import json

import pytest
from conftest import Cluster
from helpers import assert_same_digest, cli, load, wait_caught_up
from kevo_repl_tools.launcher import NodeProcess, wait_until

from kevo_repl.client.client import SemiSync
from kevo_repl.protocol.codec import Op

pytestmark = pytest.mark.crash


def test_a_running_replica_is_promoted_in_place_and_survives_a_crash(
    cluster: Cluster,
) -> None:
    p = cluster.primary()
    r1 = cluster.replica(p, "r1", replica_id="r1")
    r2 = cluster.replica(p, "r2", replica_id="r2")
    load(p.address, 1_000, batch=50)
    acked = []
    with p.client() as c:
        for i in range(20):
            resp = c.write_full([(Op.PUT, b"acked-%d" % i, b"v")], SemiSync(wait_for=2))
            assert len(resp.acked_by) == 2 and resp.epoch == 1
            acked.append(b"acked-%d" % i)
    wait_caught_up(p, r1, r2)
    head = p.status()["head_sequence"]
    p.kill()
    pid = r1.proc.pid if r1.proc else 0
    res = cli("promote", "--target", r1.address)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["epoch"] == 2 and out["position"] == head
    st = r1.status()
    assert st["role"] == "primary" and st["state"] == "SERVING" and st["head_sequence"] == head
    assert r1.proc is not None and r1.proc.pid == pid  # the same process, the same port
    res = cli("repoint", "--target", r2.address, "--primary", r1.address)
    assert res.returncode == 0, res.stderr
    with r1.client() as c:
        written = c.write([(Op.PUT, b"after", b"v")])
        assert written.epoch == 2 and written.first == head + 1
        resp = c.write_full([(Op.PUT, b"after-sync", b"v")], SemiSync(wait_for=1))
        assert resp.acked_by == ["r2"] and resp.epoch == 2
    load(r1.address, 500, start=10_000, batch=50)
    wait_caught_up(r1, r2)
    assert_same_digest(r1, r2)
    # SIGKILL the promoted node; it restarts as a primary on its data, losing nothing
    final_head = r1.status()["head_sequence"]
    r1.kill()
    again = NodeProcess("primary", r1.data_dir, listen=r1.address, applier=r1.applier,
                        env=cluster.env())
    cluster.nodes.append(again)
    again.start()
    assert again.status()["head_sequence"] == final_head
    with again.client() as c:
        assert all(c.get(k) == b"v" for k in [*acked, b"after", b"after-sync"])
        assert c.write([(Op.PUT, b"restarted", b"v")]).epoch == 2
    wait_caught_up(again, r2)
    assert_same_digest(again, r2)


def test_promotion_in_place_refuses_what_it_cannot_do(cluster: Cluster) -> None:
    p = cluster.primary()
    r = cluster.replica(p, "r", replica_id="r")
    # a replica holding nothing has nothing to continue: refused, and it replicates on
    res = cli("promote", "--target", r.address)
    assert res.returncode != 0 and "holds nothing to continue" in res.stderr, res.stderr
    assert r.status()["role"] == "replica"
    load(p.address, 200, batch=50)
    wait_caught_up(p, r)
    assert_same_digest(p, r)
    # a primary is one already
    res = cli("promote", "--target", p.address)
    assert res.returncode != 0 and "FAILED_PRECONDITION" in res.stderr, res.stderr
    wait_until(lambda: r.status()["connected"], 10, "the replica to stream on")
