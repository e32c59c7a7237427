"""Manual failover with real processes killed by SIGKILL: promote a replica, repoint the
others, rejoin a forked replica and the old primary, fence an old primary."""

from __future__ import annotations

import json

import pytest
from conftest import Cluster
from helpers import assert_same_digest, cli, load, wait_caught_up
from kevo_repl_tools.launcher import NodeProcess, wait_until

from kevo_repl.client.client import SemiSync
from kevo_repl.client.loadgen import load_keys
from kevo_repl.protocol.codec import Op
from kevo_repl.storage import epochs

pytestmark = pytest.mark.crash

#: `kevo-repl load`'s default key size
KEY_SIZE = 16


def _promote(node: NodeProcess) -> dict[str, object]:
    res = cli("promote", "--data-dir", str(node.data_dir))
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout)
    return out


def _rejoin(node: NodeProcess, primary: NodeProcess) -> dict[str, object]:
    res = cli("rejoin", "--data-dir", str(node.data_dir), "--primary", primary.address)
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout)
    return out


def _as(cluster: Cluster, role: str, old: NodeProcess, primary: NodeProcess | None = None,
        replica_id: str | None = None) -> NodeProcess:
    """The same data directory and address, started in `role`."""
    node = NodeProcess(role, old.data_dir, listen=old.address, applier=old.applier,
                       env=cluster.env(), primary=primary.address if primary else None,
                       replica_id=replica_id)
    cluster.nodes.append(node)
    node.start()
    return node


def _key(i: int) -> bytes:
    """The key `kevo-repl load` writes for index i (default key size)."""
    return next(load_keys(1, i, KEY_SIZE, 0, 1))[0][1]


def _missing(node: NodeProcess, keys: list[bytes]) -> list[bytes]:
    with node.client() as c:
        return [k for k in keys if c.get(k) is None]


def test_promote_repoint_and_old_primary_rejoins_losing_nothing(cluster: Cluster) -> None:
    primary = cluster.primary()
    r1 = cluster.replica(primary, "r1", replica_id="r1")
    r2 = cluster.replica(primary, "r2", replica_id="r2")
    load(primary.address, 2_000, batch=50)
    # semi-sync writes: acknowledged by both replicas durably
    acked = []
    with primary.client() as c:
        for i in range(20):
            key = f"acked-{i}".encode()
            resp = c.write_full([(Op.PUT, key, b"v")], sync=SemiSync(wait_for=2, durable=True))
            assert len(resp.acked_by) == 2
            acked.append(key)
    head = primary.status()["head_sequence"]
    primary.kill()
    r1.kill()
    promoted = _promote(r1)
    assert promoted["epoch"] == 2 and promoted["position"] == head

    new = _as(cluster, "primary", r1)
    st = new.status()
    assert st["role"] == "primary" and st["head_sequence"] == head
    assert _missing(new, acked) == []
    # repoint r2 by restarting it against the new primary: same position, same history
    r2.kill()
    r2 = _as(cluster, "replica", r2, new, "r2")
    load(new.address, 1_000, start=10_000, batch=50)
    wait_caught_up(new, r2)
    assert epochs.load(r2.data_dir)[-1].number == 2  # it adopted the new epoch, durably
    assert new.status()["head_sequence"] == head + 1_000

    # the old primary: everything it had was replicated, nothing is discarded
    rejoined = _rejoin(primary, new)
    assert rejoined["fork_point"] == head and rejoined["discarded_entries"] == 0
    assert rejoined["store_kept"] is True
    old = _as(cluster, "replica", primary, new, "old-primary")
    wait_caught_up(new, r2, old)
    digest = assert_same_digest(new, r2, old)
    assert digest["sequence"] == head + 1_000
    assert _missing(old, acked) == []


def test_forked_replica_and_old_primary_report_exactly_what_they_discard(
    cluster: Cluster,
) -> None:
    primary = cluster.primary()
    r1 = cluster.replica(primary, "r1", replica_id="r1")
    r2 = cluster.replica(primary, "r2", replica_id="r2")
    load(primary.address, 1_000, batch=10)
    wait_caught_up(primary, r1, r2)
    fork = primary.status()["head_sequence"]
    r1.kill()
    load(primary.address, 500, start=5_000, batch=10)  # r2 gets these, r1 does not
    wait_caught_up(primary, r2)
    r2_position = r2.status()["last_applied"]
    r2.kill()
    load(primary.address, 300, start=9_000, batch=10)  # no replica has these
    old_head = primary.status()["head_sequence"]
    primary.kill()

    assert _promote(r1)["position"] == fork
    new = _as(cluster, "primary", r1)
    load(new.address, 200, start=20_000, batch=10)

    # r2 holds 500 entries of epoch 1 past the fork: refused, naming the exact fork point
    r2 = _as(cluster, "replica", r2, new, "r2")
    wait_until(lambda: "fork point" in r2.status()["last_error"], 30, "r2 to be refused")
    error = r2.status()["last_error"]
    assert f"fork point {fork}" in error and f"{fork + 1}..{r2_position}" in error, error
    r2.kill()
    report = _rejoin(r2, new)
    assert report == {
        "was": "replica", "fork_point": fork, "discarded_entries": r2_position - fork,
        "discarded_first": fork + 1, "discarded_last": r2_position, "store_kept": False,
        "new_epoch": 2, "kept_in": str(r2.data_dir / "discarded-epoch-1"),
    }
    assert (r2.data_dir / "discarded-epoch-1" / "store").is_dir()  # set aside, not deleted
    r2 = _as(cluster, "replica", r2, new, "r2")

    # the old primary: what it never replicated is counted from its own WAL
    report = _rejoin(primary, new)
    assert report["fork_point"] == fork
    assert report["discarded_entries"] == old_head - fork == 800
    assert (report["discarded_first"], report["discarded_last"]) == (fork + 1, old_head)
    aside = primary.data_dir / "discarded-epoch-1"
    assert json.loads((aside / "discarded.json").read_text())["discarded_entries"] == 800
    assert (aside / "wal").is_dir()
    old = _as(cluster, "replica", primary, new, "old-primary")
    wait_caught_up(new, r2, old, timeout=120)
    digest = assert_same_digest(new, r2, old)
    assert digest["sequence"] == fork + 200
    with old.client() as c:  # the discarded writes are gone, the new epoch's are there
        assert c.get(_key(9_000)) is None
    assert _missing(old, [_key(20_000)]) == []


def test_an_old_primary_is_fenced_by_a_replica_of_the_newer_epoch(cluster: Cluster) -> None:
    primary = cluster.primary()
    r1 = cluster.replica(primary, "r1", replica_id="r1")
    r2 = cluster.replica(primary, "r2", replica_id="r2")
    load(primary.address, 300, batch=10)
    wait_caught_up(primary, r1, r2)
    primary.kill()
    r1.kill()
    _promote(r1)
    new = _as(cluster, "primary", r1)
    r2.kill()
    r2 = _as(cluster, "replica", r2, new, "r2")
    load(new.address, 10, start=1_000, batch=10)
    wait_caught_up(new, r2)

    # the old primary comes back as a primary (by mistake) and takes a write
    old = _as(cluster, "primary", primary)
    res = cli("put", "--target", old.address, "before", "fence")
    assert res.returncode == 0, res.stderr
    # a replica of epoch 2 pointed at it: the old primary learns of the newer epoch
    r2.kill()
    stray = _as(cluster, "replica", r2, old, "r2")
    wait_until(lambda: old.status()["state"] == "ERROR", 30, "the old primary to be fenced")
    assert "fenced" in old.status()["last_error"]
    res = cli("put", "--target", old.address, "after", "fence")
    assert res.returncode != 0 and "FAILED_PRECONDITION" in res.stderr, res.stderr
    # and the replica refuses to follow it: it never applies a write of the old epoch
    wait_until(lambda: stray.status()["state"] == "ERROR", 30, "the replica to refuse")
    assert "fenced" in stray.status()["last_error"]
    assert stray.digest() == new.digest()


def test_a_primary_elected_again_records_the_new_epoch_after_its_head(cluster: Cluster) -> None:
    from kevo_repl.config import Config
    from kevo_repl.ha.promote import new_term
    from kevo_repl.plugin.manager import build_registry

    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 500, batch=50)
    head = primary.status()["head_sequence"]
    primary.kill()
    cfg = Config()
    cfg.node.data_dir = str(primary.data_dir)
    cfg.applier.name = primary.applier or "lmdb"
    assert new_term(cfg, build_registry(), 3) == head + 1
    history = epochs.load(primary.data_dir / "wal")
    assert [(e.number, e.start) for e in history] == [(1, 1), (3, head + 1)]
    restarted = _as(cluster, "primary", primary)
    load(restarted.address, 100, start=1_000, batch=50)
    wait_caught_up(restarted, replica)
    assert epochs.load(replica.data_dir)[-1].number == 3  # the replica follows it into epoch 3
    assert_same_digest(restarted, replica)
